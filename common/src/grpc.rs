//! Serving gRPC on a listener the service bound itself.

use tokio::net::TcpListener;

/// The accepted sockets of `listener`, with TCP_NODELAY set. tonic ignores
/// `Server::tcp_nodelay` for a stream of sockets it is handed, and without
/// it every small reply waits for the peer's next packet (Nagle).
pub fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
