//! One client connection, whichever transport carries it.
//!
//! Two transports reach the same Socket.IO layer ([`crate::socket`]):
//! - engineioxide, for long-polling and for WebSockets upgraded from a
//!   polling session (what `socket.io-client` does by default);
//! - the edge's own lean WebSocket path ([`crate::ws`]) for clients that open
//!   a WebSocket directly (`transports: ["websocket"]`, most mobile and
//!   server clients): one task per connection, no per-socket channel, and
//!   every packet queued while the task was busy goes out in one write.
//!
//! Packets are encoded once per edge as [`Packet`] and shared by every
//! socket they go to.

use crate::socket::SocketData;
use crate::ws::Outbox;
use axum::extract::ws::Utf8Bytes;
use engineioxide::{socket::Sid, DisconnectReason, Str};
use std::sync::{Mutex, Weak};

/// An engineioxide socket; its data points back at our [`Conn`].
pub type EngineSocket = engineioxide::Socket<EngineData>;

/// What engineioxide keeps beside each of its sockets.
#[derive(Default)]
pub struct EngineData(pub std::sync::OnceLock<std::sync::Arc<Conn>>);

/// A Socket.IO packet, encoded once per edge in both forms its transports
/// send, and shared (reference counted) by every socket it goes to: no
/// per-socket copy or UTF-8 check.
#[derive(Clone, Debug)]
pub struct Packet {
    /// The Engine.IO message text, `4` included: the lean path's frame.
    frame: Utf8Bytes,
    /// The Socket.IO packet alone (engineioxide adds the `4` itself).
    sio: Str,
}

impl Packet {
    /// Frames one Socket.IO packet (as built by [`crate::sio`]).
    pub fn new(sio: &str) -> Self {
        let mut s = String::with_capacity(sio.len() + 1);
        s.push('4');
        s.push_str(sio);
        Self { frame: Utf8Bytes::from(s), sio: Str::copy_from_slice(sio) }
    }

    /// An Engine.IO packet other than a message (`2` ping, `3` pong); the
    /// lean path only.
    pub(crate) fn raw(eio: &'static str) -> Self {
        Self { frame: Utf8Bytes::from_static(eio), sio: Str::from("") }
    }

    /// The WebSocket text frame.
    pub fn frame(&self) -> Utf8Bytes {
        self.frame.clone()
    }
}

/// Why an emit did not queue its packet.
#[derive(Debug, PartialEq, Eq)]
pub enum EmitError {
    /// The socket's queue is full: the client reads too slowly.
    Full,
    Closed,
}

enum Transport {
    Engine(Weak<EngineSocket>),
    Ws(Outbox),
}

/// What the handshake request carried that CONNECT may need (CONTRACT §2:
/// the token may come in a header or the query). Taken at CONNECT.
#[derive(Default)]
pub struct Handshake {
    pub authorization: Option<String>,
    pub query: Option<String>,
}

impl Handshake {
    pub fn of(parts: &http::request::Parts) -> Self {
        let authorization =
            parts.headers.get(http::header::AUTHORIZATION).and_then(|h| h.to_str().ok()).map(str::to_string);
        Self { authorization, query: parts.uri.query().map(str::to_string) }
    }
}

/// A client connection.
pub struct Conn {
    pub id: Sid,
    pub data: SocketData,
    transport: Transport,
    handshake: Mutex<Option<Handshake>>,
}

impl Conn {
    pub fn engine(socket: &std::sync::Arc<EngineSocket>) -> Self {
        Self {
            id: socket.id,
            data: SocketData::default(),
            transport: Transport::Engine(std::sync::Arc::downgrade(socket)),
            handshake: Mutex::new(Some(Handshake::of(&socket.req_parts))),
        }
    }

    pub fn ws(outbox: Outbox, handshake: Handshake) -> Self {
        Self {
            id: Sid::new(),
            data: SocketData::default(),
            transport: Transport::Ws(outbox),
            handshake: Mutex::new(Some(handshake)),
        }
    }

    /// The handshake's token sources, once (CONNECT is accepted only once).
    pub fn take_handshake(&self) -> Handshake {
        self.handshake.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default()
    }

    /// The queue of a connection on the lean WebSocket path.
    pub(crate) fn outbox(&self) -> Option<&Outbox> {
        match &self.transport {
            Transport::Ws(outbox) => Some(outbox),
            Transport::Engine(_) => None,
        }
    }

    /// Queues a packet; never waits.
    pub fn emit(&self, packet: &Packet) -> Result<(), EmitError> {
        match &self.transport {
            Transport::Engine(socket) => {
                let socket = socket.upgrade().ok_or(EmitError::Closed)?;
                socket.emit(packet.sio.clone()).map_err(|e| match e {
                    tokio::sync::mpsc::error::TrySendError::Full(_) => EmitError::Full,
                    tokio::sync::mpsc::error::TrySendError::Closed(_) => EmitError::Closed,
                })
            }
            Transport::Ws(outbox) => outbox.push(packet),
        }
    }

    /// Closes the connection; packets queued before still go out on the
    /// lean WebSocket path.
    pub fn close(&self, reason: DisconnectReason) {
        match &self.transport {
            Transport::Engine(socket) => {
                if let Some(socket) = socket.upgrade() {
                    socket.close(reason);
                }
            }
            Transport::Ws(outbox) => outbox.close(reason),
        }
    }
}
