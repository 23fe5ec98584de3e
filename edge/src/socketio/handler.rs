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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::listener::Socket as Tcp;
    use crate::transport::outbox::Outbox;
    use crate::transport::{Handler as _, Handshake, Packet};
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    /// An app that notes what reaches it.
    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl Seen {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
        fn note(&self, what: String) {
            self.0.lock().unwrap().push(what);
        }
    }

    impl App for Seen {
        type Data = ();
        fn opened(self: &Arc<Self>, _: &Arc<Socket<()>>) {
            self.note("opened".into());
        }
        fn connect(self: &Arc<Self>, _: &Arc<Socket<()>>, auth: Option<Value>) {
            self.note(format!("connect {auth:?}"));
        }
        fn event(self: &Arc<Self>, _: &Arc<Socket<()>>, name: String, payload: Option<Value>, ack: Option<u64>) {
            self.note(format!("event {name} {payload:?} {ack:?}"));
        }
        fn unsupported(self: &Arc<Self>, _: &Arc<Socket<()>>, event: &str, ack: u64, what: Unsupported) {
            self.note(format!("unsupported {event} {ack} {what:?}"));
        }
        fn closed(self: &Arc<Self>, _: &Arc<Socket<()>>, reason: DisconnectReason) {
            self.note(format!("closed {reason:?}"));
        }
    }

    /// A socket on a direct WebSocket's outbox, and the client's end.
    async fn socket(layer: &Layer<Seen>) -> (Arc<Socket<()>>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let outbox = Arc::new(Outbox::new(Tcp(Arc::new(server)), 8));
        (layer.state(Arc::new(Conn::ws(outbox, Handshake::default()))), client)
    }

    #[tokio::test]
    async fn the_app_gets_the_default_namespace_and_refused_packets_only() {
        let app = Arc::new(Seen::default());
        let layer = Layer::new(app.clone());
        let (socket, mut client) = socket(&layer).await;
        layer.opened(&socket);
        // Another namespace: refused by this layer, unseen by the app.
        layer.message(&socket, r#"0/admin,{"token":"x"}"#);
        layer.message(&socket, r#"2/admin,["a",{}]"#);
        let refusal = Packet::new(&packet::connect_error("/admin", "Invalid namespace", None));
        let mut got = vec![0; refusal.ws_frame().len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, refusal.ws_frame());
        assert_eq!(app.take(), ["opened"]);
        layer.message(&socket, r#"0{"token":"x"}"#);
        layer.message(&socket, r#"21["room:join",{"chatId":"c"}]"#);
        layer.message(&socket, r#"2["typing:start"]"#);
        layer.message(&socket, "3");
        layer.message(&socket, r#"51-3["x",{"_placeholder":true,"num":0}]"#);
        layer.message(&socket, r#"27["message:send",{"body":"\ud83d"}]"#);
        layer.closed(&socket, DisconnectReason::TransportClose);
        assert_eq!(
            app.take(),
            [
                r#"connect Some(Object {"token": String("x")})"#,
                r#"event room:join Some(Object {"chatId": String("c")}) Some(1)"#,
                "event typing:start None None",
                "unsupported binary 3 Binary",
                "unsupported message:send 7 LoneSurrogate",
                "closed TransportClose",
            ]
        );
    }
}
