//! The edge's HTTP server: accepts TCP connections and serves each with
//! hyper (HTTP/1.1 with upgrades, or HTTP/2), within read deadlines.
//!
//! - **Headers**: a request's headers must arrive within `header_timeout_ms`
//!   of the connection starting to wait for them (an idle keep-alive
//!   connection too), or the connection is closed: no request, no answer.
//! - **Body**: a request's whole body must arrive within `body_timeout_ms`
//!   of its headers, or it gets 408 and the connection is closed. A byte a
//!   second does not keep it alive.
//! - **Declared size**: a `Content-Length` over `max_payload` gets 413 at
//!   once, without reading the body.
//!
//! The answer to both is the app's ([`Settings::reject`] renders a
//! [`Rejection`]). Requests carry the shared socket ([`ConnectInfo`] of
//! [`Socket`], for the lean WebSocket path) and the peer's address
//! ([`Peer`]). At the shutdown signal the server stops accepting and asks
//! every connection to finish its request and close, within
//! [`Settings::drain`].

use super::listener::{Peer, Socket};
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use http::{header, HeaderValue, Request};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// A pause after a failed `accept` (out of file descriptors, say), so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The server's deadlines and limits.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_payload: usize,
    /// How long a connection may take to finish once asked to close.
    pub drain: Duration,
    /// The answer to a request the server refuses itself.
    pub reject: fn(Rejection) -> Response,
}

/// Why the server answered a request without the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Its `Content-Length` is over `max_payload` (413).
    TooLarge,
    /// Its body did not arrive within this (408).
    BodyTimeout(Duration),
}

/// Serves `app` on `listener` until `stop` is cancelled; the connections
/// are tracked by `conns`, which outlive this call while they finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: Settings,
    stop: CancellationToken,
    conns: TaskTracker,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(settings.header_timeout);
    builder.http2().timer(TokioTimer::new());
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        // Nagle would hold a socket's next frame until the client acks the
        // last one, and clients delay their acks (up to 40 ms on Linux).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let socket = Socket(Arc::new(tcp));
        let io = TokioIo::new(socket.clone());
        let (app, builder, stop) = (app.clone(), builder.clone(), stop.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (app, socket) = (app.clone(), socket.clone());
            async move { Ok::<_, Infallible>(handle(app, socket, peer, settings, req).await) }
        });
        conns.spawn(async move {
            let conn = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            let served = tokio::select! {
                served = conn.as_mut() => served,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(settings.drain, conn).await {
                        Ok(served) => served,
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = served {
                let timed_out = e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout);
                if timed_out {
                    // Debug: an idle keep-alive connection ends this way too.
                    tracing::debug!(client.addr = %peer, "request headers not received in time: connection closed");
                } else {
                    tracing::debug!(client.addr = %peer, error = %e, "HTTP connection ended");
                }
            }
        });
    }
}

/// One request: its size and body deadline, then the app.
async fn handle(app: Router, socket: Socket, peer: SocketAddr, settings: Settings, req: Request<Incoming>) -> Response {
    let close = req.version() <= http::Version::HTTP_11;
    if declared_length(req.headers()).is_some_and(|n| n > settings.max_payload as u64) {
        return closing((settings.reject)(Rejection::TooLarge), close);
    }
    let unbounded = !req.body().is_end_stream();
    let received = Arc::new(AtomicBool::new(!unbounded));
    let mut req = req.map(|body| Body::new(Watched { body, received: received.clone() }));
    req.extensions_mut().insert(ConnectInfo(socket));
    req.extensions_mut().insert(Peer(peer));
    let answer = app.oneshot(req);
    if !unbounded {
        return answer.await.unwrap_or_else(|e| match e {});
    }
    tokio::pin!(answer);
    tokio::select! {
        res = answer.as_mut() => res.unwrap_or_else(|e| match e {}),
        () = tokio::time::sleep(settings.body_timeout) => {
            if received.load(Ordering::Acquire) {
                // The body came in time; the answer may take what it needs.
                return answer.await.unwrap_or_else(|e| match e {});
            }
            tracing::info!(client.addr = %peer, "request body not received in time");
            closing((settings.reject)(Rejection::BodyTimeout(settings.body_timeout)), close)
        }
    }
}

/// The request's `Content-Length`, if it declares one that parses.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Marks an HTTP/1 response as the connection's last: the rest of the
/// request's body is not read.
fn closing(mut res: Response, http1: bool) -> Response {
    if http1 {
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// A request body that notes when it has been received in full.
struct Watched {
    body: Incoming,
    received: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.body.is_end_stream() {
            self.received.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
