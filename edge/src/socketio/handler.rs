//! The handler of Socket.IO packets: what comes in on a transport
//! connection is parsed ([`super::packet`]) and handed to the [`App`]
//! above; namespaces other than `/` are refused here.

use super::packet::{self, Incoming};
use super::socket::Socket;
use crate::transport::{self, Conn, DisconnectReason};
use serde_json::Value;
use std::sync::Arc;

/// A packet the contract refuses although it parsed; the app answers its
/// ack with the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {
    /// An EVENT holding a lone UTF-16 surrogate escape (a cut emoji).
    LoneSurrogate,
    /// BINARY_EVENT or BINARY_ACK.
    Binary,
}

/// The layer above Socket.IO: what a socket's packets mean.
pub trait App: Send + Sync + 'static {
    /// What the app keeps for each socket.
    type Data: Default + Send + Sync + 'static;

    /// A transport connection opened (before any Socket.IO CONNECT).
    fn opened(self: &Arc<Self>, socket: &Arc<Socket<Self::Data>>);

    /// CONNECT to the default namespace, with its auth payload.
    fn connect(self: &Arc<Self>, socket: &Arc<Socket<Self::Data>>, auth: Option<Value>);

    /// EVENT `name` on the default namespace: its first argument, and its
    /// ack id if the client wants one.
    fn event(
        self: &Arc<Self>,
        socket: &Arc<Socket<Self::Data>>,
        name: String,
        payload: Option<Value>,
        ack: Option<u64>,
    );

    /// A refused packet that asked for ack `ack` (`event` is its name, or
    /// `"binary"`).
    fn unsupported(self: &Arc<Self>, socket: &Arc<Socket<Self::Data>>, event: &str, ack: u64, what: Unsupported);

    /// The transport connection ended.
    fn closed(self: &Arc<Self>, socket: &Arc<Socket<Self::Data>>, reason: DisconnectReason);
}

/// The Socket.IO layer over both transports: every socket of this edge goes
/// through it.
pub struct Layer<A>(Arc<A>);

impl<A> Layer<A> {
    pub fn new(app: Arc<A>) -> Self {
        Self(app)
    }
}

impl<A: App> transport::Handler for Layer<A> {
    type State = Socket<A::Data>;

    fn state(&self, conn: Arc<Conn>) -> Arc<Socket<A::Data>> {
        Arc::new(Socket::new(conn))
    }

    fn opened(&self, socket: &Arc<Socket<A::Data>>) {
        self.0.opened(socket);
    }

    fn closed(&self, socket: &Arc<Socket<A::Data>>, reason: DisconnectReason) {
        tracing::debug!(sid = %socket.id, ?reason, "socket closed");
        self.0.closed(socket, reason);
    }

    /// One Engine.IO message: a Socket.IO packet.
    fn message(&self, socket: &Arc<Socket<A::Data>>, msg: &str) {
        match packet::parse(msg) {
            Ok(Incoming::Connect { nsp, auth }) => {
                if nsp != "/" {
                    socket.send(packet::connect_error(&nsp, "Invalid namespace", None));
                    return;
                }
                self.0.connect(socket, auth);
            }
            Ok(Incoming::Disconnect { .. }) => socket.close(DisconnectReason::TransportClose),
            Ok(Incoming::Event { nsp, name, args, ack }) => {
                if nsp != "/" {
                    return; // never connected to another namespace
                }
                self.0.event(socket, name, args.into_iter().next(), ack);
            }
            Ok(Incoming::Ack) => {}
            Ok(Incoming::LoneSurrogate { nsp, name, ack }) => {
                if let (Some(id), "/") = (ack, nsp.as_str()) {
                    self.0.unsupported(socket, &name, id, Unsupported::LoneSurrogate);
                }
            }
            Ok(Incoming::Binary { ack }) => {
                if let Some(id) = ack {
                    self.0.unsupported(socket, "binary", id, Unsupported::Binary);
                }
            }
            Err(e) => {
                // Like the reference server: a packet that cannot be decoded
                // ends this connection, and only this one.
                let correlation_id = uuid::Uuid::new_v4().to_string();
                tracing::info!(sid = %socket.id, correlation_id, error = %e, "malformed packet: closing connection");
                socket.close(DisconnectReason::PacketParsingError);
            }
        }
    }
}
