//! A Socket.IO socket: one transport connection, what the layer above keeps
//! for it (`D`), and the slow-consumer policy of every packet sent to it.

use crate::transport::{Conn, DisconnectReason, EmitError, Handshake, Packet, Sid, WriteBatch};
use confab_common::log_limit::{self, LogLimit};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A socket of this edge, with the data `D` of the layer above.
pub struct Socket<D> {
    pub id: Sid,
    pub data: D,
    conn: Arc<Conn>,
    /// Its queue overflowed: it is being closed (logged once).
    overflowed: AtomicBool,
}

impl<D: Default> Socket<D> {
    pub fn new(conn: Arc<Conn>) -> Self {
        Self { id: conn.id, data: D::default(), conn, overflowed: AtomicBool::new(false) }
    }
}

impl<D> Socket<D> {
    /// The transport connection under the socket.
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    /// The handshake's token sources, once (CONNECT is accepted only once).
    pub fn take_handshake(&self) -> Handshake {
        self.conn.take_handshake()
    }

    /// Queues one Socket.IO packet (as built by [`super::packet`]); a full
    /// queue disconnects the socket (slow consumer).
    pub fn send(&self, packet: String) {
        self.emit(&Packet::new(&packet));
    }

    /// [`Socket::send`], written when `batch` ends.
    pub fn send_in(&self, packet: String, batch: &mut WriteBatch) {
        self.emit_in(&Packet::new(&packet), batch);
    }

    /// Queues a packet encoded once for many sockets; a full queue
    /// disconnects the socket (slow consumer): it reconnects and recovers
    /// with `sinceSeq`.
    pub fn emit(&self, packet: &Packet) {
        self.queued(self.conn.emit(packet, None));
    }

    /// [`Socket::emit`], written when `batch` ends: one write per socket
    /// for all it gets in a fan-out.
    pub fn emit_in(&self, packet: &Packet, batch: &mut WriteBatch) {
        self.queued(self.conn.emit(packet, Some(batch)));
    }

    fn queued(&self, queued: Result<(), EmitError>) {
        if queued == Err(EmitError::Full) {
            self.overflowed();
        }
    }

    /// Whether it was closed for reading too slowly.
    pub fn is_slow_consumer(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    fn overflowed(&self) {
        // Packets keep coming until the close takes effect: one line per
        // socket, and at most one per interval for all sockets together.
        static QUEUE_FULL: LogLimit = LogLimit::new(log_limit::DEFAULT_INTERVAL);
        if !self.overflowed.swap(true, Ordering::AcqRel) {
            if let Some(suppressed) = QUEUE_FULL.allow() {
                tracing::warn!(sid = %self.id, suppressed, "socket queue full: disconnecting slow consumer");
            }
        }
        self.close(DisconnectReason::TransportError);
    }

    /// Closes the transport; what was queued before still goes out on the
    /// lean WebSocket path.
    pub fn close(&self, reason: DisconnectReason) {
        self.conn.close(reason);
    }
}
