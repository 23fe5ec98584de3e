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
//!
//! Packets are encoded once per edge as [`Packet`], WebSocket frame header
//! included, and shared by every socket they go to.

use super::ws::Outbox;
use bytes::Bytes;
use engineioxide::{socket::Sid, DisconnectReason, Str};
use std::sync::{Arc, Mutex, Weak};

/// A Socket.IO packet, encoded once per edge in both forms its transports
/// send, and shared (reference counted) by every socket it goes to: no
/// per-socket encoding or UTF-8 check.
#[derive(Clone, Debug)]
pub struct Packet {
    /// The whole WebSocket text frame (header, `4`, the packet): what the
    /// lean path copies into a socket's outbox.
    ws: Bytes,
    /// The Socket.IO packet alone (engineioxide adds the `4` itself).
    sio: Str,
}

impl Packet {
    /// Frames one Socket.IO packet (its text, as the layer above encodes it).
    pub fn new(sio: &str) -> Self {
        Self { ws: ws_text_frame(&["4", sio]), sio: Str::copy_from_slice(sio) }
    }

    /// An Engine.IO packet other than a message (`0` open, `2` ping, `3`
    /// pong); the lean path only.
    pub(crate) fn engine(eio: String) -> Self {
        Self { ws: ws_text_frame(&[&eio]), sio: Str::from("") }
    }

    /// The WebSocket frame, header included.
    pub fn ws_frame(&self) -> &[u8] {
        &self.ws
    }
}

/// An unmasked, final WebSocket text frame (RFC 6455 §5.2) holding `parts`
/// one after the other.
fn ws_text_frame(parts: &[&str]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut frame = Vec::with_capacity(len + 10);
    frame.push(0x81); // FIN, text
    if len < 126 {
        frame.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        frame.push(126);
        frame.extend_from_slice(&len.to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    for p in parts {
        frame.extend_from_slice(p.as_bytes());
    }
    Bytes::from(frame)
}

/// Why an emit did not queue its packet.
#[derive(Debug, PartialEq, Eq)]
pub enum EmitError {
    /// The socket's queue is full: the client reads too slowly.
    Full,
    Closed,
}

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

    /// Queues a packet; never waits.
    pub fn emit(&self, packet: &Packet) -> Result<(), EmitError> {
        match &self.transport {
            Transport::Engine(socket) => {
                let socket = socket.upgrade().ok_or(EmitError::Closed)?;
                socket.emit(packet.sio.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_length_in_the_form_its_size_needs() {
        // RFC 6455 §5.2: 7 bits up to 125, then 16 bits, then 64 bits.
        for (len, header) in
            [(125, vec![0x81, 125]), (126, vec![0x81, 126, 0, 126]), (65_535, vec![0x81, 126, 255, 255])]
        {
            let frame = ws_text_frame(&[&"a".repeat(len)]);
            assert_eq!(&frame[..header.len()], &header[..], "len {len}");
            assert_eq!(frame.len(), header.len() + len);
        }
        let frame = ws_text_frame(&["4", &"b".repeat(65_535)]);
        assert_eq!(&frame[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(&frame[10..12], b"4b");
        let p = Packet::new("0");
        assert_eq!(p.ws_frame(), &[0x81, 2, b'4', b'0']);
        assert_eq!(&*p.sio, "0");
    }
}
