//! One client connection, whichever transport carries it.
//!
//! Two transports reach the same layer above ([`super::Handler`]):
//! - engineioxide, for long-polling and for WebSockets upgraded from a
//!   polling session (what `socket.io-client` does by default; see
//!   [`super::engine`]);
//! - the edge's own lean WebSocket path ([`super::ws`]) for clients that open
//!   a WebSocket directly (`transports: ["websocket"]`, most mobile and
//!   server clients): packets are written to the socket by whoever emits
//!   them, one write per socket per fan-out batch.

use super::frame::Packet;
use super::outbox::{EmitError, Outbox, WriteBatch};
use engineioxide::{socket::Sid, DisconnectReason, Str};
use std::sync::{Arc, Mutex, Weak};

/// An engineioxide socket, whatever data the layer above keeps beside it.
trait EngineSink: Send + Sync {
    fn emit(&self, msg: Str) -> Result<(), EmitError>;
    fn close(&self, reason: DisconnectReason);
}

impl<D: Default + Send + Sync + 'static> EngineSink for engineioxide::Socket<D> {
    fn emit(&self, msg: Str) -> Result<(), EmitError> {
        engineioxide::Socket::emit(self, msg).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => EmitError::Full,
            tokio::sync::mpsc::error::TrySendError::Closed(_) => EmitError::Closed,
        })
    }

    fn close(&self, reason: DisconnectReason) {
        engineioxide::Socket::close(self, reason);
    }
}

enum Transport {
    Engine(Weak<dyn EngineSink>),
    Ws(Arc<Outbox>),
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
    transport: Transport,
    handshake: Mutex<Option<Handshake>>,
}

impl Conn {
    pub fn engine<D: Default + Send + Sync + 'static>(socket: &Arc<engineioxide::Socket<D>>) -> Self {
        let sink: Weak<dyn EngineSink> = Arc::downgrade(socket) as Weak<dyn EngineSink>;
        Self {
            id: socket.id,
            transport: Transport::Engine(sink),
            handshake: Mutex::new(Some(Handshake::of(&socket.req_parts))),
        }
    }

    pub fn ws(outbox: Arc<Outbox>, handshake: Handshake) -> Self {
        Self { id: Sid::new(), transport: Transport::Ws(outbox), handshake: Mutex::new(Some(handshake)) }
    }

    /// The handshake's token sources, once (CONNECT is accepted only once).
    pub fn take_handshake(&self) -> Handshake {
        self.handshake.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default()
    }

    /// Queues a packet; never waits. On the lean WebSocket path it is
    /// written now, or when `batch` ends if one is given (engineioxide's
    /// sockets have a queue and a writer task of their own).
    pub fn emit(&self, packet: &Packet, batch: Option<&mut WriteBatch>) -> Result<(), EmitError> {
        match &self.transport {
            Transport::Engine(socket) => {
                let socket = socket.upgrade().ok_or(EmitError::Closed)?;
                socket.emit(packet.engine_message())
            }
            Transport::Ws(outbox) => outbox.push(packet, batch),
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
