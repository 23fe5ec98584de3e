//! The edge's accepted sockets: each is shared (`Arc`), so the lean
//! WebSocket path ([`super::ws`]) can write to it directly once hyper has
//! upgraded the connection. Requests carry the socket as a
//! [`ConnectInfo`](axum::extract::ConnectInfo) of [`Socket`] and the
//! peer's address as [`Peer`] (see [`super::server`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An accepted socket, shared between hyper and the lean WebSocket path.
#[derive(Clone)]
pub struct Socket(pub Arc<TcpStream>);

/// The TCP peer of the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Waits for readiness with `ready`, then runs the non-blocking `op`, again
/// while it would block (readiness can be stale).
fn when_ready<T>(
    cx: &mut Context<'_>,
    ready: impl Fn(&mut Context<'_>) -> Poll<io::Result<()>>,
    mut op: impl FnMut() -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        ready!(ready(cx))?;
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return Poll::Ready(done),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let tcp = &self.0;
        // Into the buffer's unfilled part as it is: `try_read` would need it
        // zeroed first, on every read, however little arrives.
        ready!(when_ready(cx, |cx| tcp.poll_read_ready(cx), || tcp.try_read_buf(buf)))?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        when_ready(cx, |cx| self.0.poll_write_ready(cx), || self.0.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        when_ready(cx, |cx| self.0.poll_write_ready(cx), || self.0.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown(std::net::Shutdown::Write))
    }
}

impl Socket {
    /// Shuts the socket down now, whoever else still holds it.
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        socket2::SockRef::from(&*self.0).shutdown(how)
    }
}
