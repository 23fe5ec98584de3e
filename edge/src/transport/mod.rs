//! The transport: the bottom layer of the edge. It accepts TCP connections
//! and serves HTTP ([`server`], [`listener`]), carries Engine.IO v4 over
//! the lean WebSocket path ([`ws`]) and over engineioxide's polling
//! sessions ([`engine`]), and writes packets ([`frame`]) to sockets ([`conn`],
//! [`outbox`]), one write per socket per [`WriteBatch`].
//!
//! It knows nothing of Socket.IO or of chats: the layer above implements
//! [`Handler`] and gets each connection's opening, messages and end.

pub mod conn;
pub mod engine;
pub mod frame;
pub mod listener;
pub mod outbox;
pub mod server;
pub mod ws;

pub use conn::{Conn, Handshake};
pub use engineioxide::{socket::Sid, DisconnectReason};
pub use frame::Packet;
pub use outbox::{EmitError, WriteBatch};

use std::sync::Arc;

/// The layer above the transport: what happens to each connection, on
/// either transport.
pub trait Handler: Send + Sync + 'static {
    /// What the layer above keeps for each connection.
    type State: Send + Sync + 'static;

    /// The state of a connection that just opened, made once, before
    /// [`Handler::opened`].
    fn state(&self, conn: Arc<Conn>) -> Arc<Self::State>;

    /// A connection opened (its Engine.IO handshake is done).
    fn opened(&self, state: &Arc<Self::State>);

    /// One Engine.IO message from the client.
    fn message(&self, state: &Arc<Self::State>, msg: &str);

    /// The connection ended.
    fn closed(&self, state: &Arc<Self::State>, reason: DisconnectReason);
}
