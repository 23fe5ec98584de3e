//! The lean WebSocket transport: Engine.IO v4 for clients that open a
//! WebSocket directly (`/socket.io/?EIO=4&transport=websocket`, no `sid`).
//!
//! Polling sessions and their upgrades stay with engineioxide. A direct
//! WebSocket is its TCP socket (shared by [`super::listener`], so it can be
//! written to without hyper once upgraded) and one task:
//! - **writes** go straight to the socket from whoever emits, through its
//!   [`Outbox`] (one `write` per socket per [`super::WriteBatch`]); only
//!   when the socket would block does its task take over, waiting for the
//!   socket to drain, with a deadline;
//! - **reads** go through hyper's upgraded connection and tungstenite
//!   (framing, masking, fragments, control frames, size limits);
//!   tungstenite's own writes (pongs, close) join the same outbox, in order.
//!
//! No per-socket channel or writer task, no wake-up per delivery, and an
//! idle connection holds no write buffer (see BENCHMARKS.md).
//!
//! Limits: a packet over `max_payload` closes the connection; a client that
//! does not read gets its queue filled and is cut off (slow consumer), and a
//! write that cannot finish within the ping timeout ends the connection.

use super::conn::{Conn, Handshake};
use super::frame::Packet;
use super::listener::Socket;
use super::outbox::Outbox;
use super::Handler;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engineioxide::DisconnectReason;
use futures::StreamExt;
use http::{header, HeaderValue, StatusCode};
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bytes read from a socket at a time at first; larger packets grow it.
const READ_BUFFER: usize = 512;
/// The lean path's heartbeat and limits.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Packets queued towards one socket before it is cut off as too slow.
    pub queue: usize,
    /// Largest message, in bytes.
    pub max_payload: usize,
}

/// The connection as tungstenite sees it: reads from hyper's upgraded
/// connection, writes into the outbox.
struct Io {
    read: TokioIo<hyper::upgrade::Upgraded>,
    outbox: Arc<Outbox>,
}

impl AsyncRead for Io {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(self.outbox.push_raw(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// True for a direct Engine.IO v4 WebSocket (no polling session before it).
fn is_direct_websocket(req: &Request) -> bool {
    if req.method() != http::Method::GET {
        return false;
    }
    let path = req.uri().path();
    if path != "/socket.io/" && path != "/socket.io" {
        return false;
    }
    let upgrade = req.headers().get(header::UPGRADE).and_then(|h| h.to_str().ok());
    if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return false;
    }
    let (mut eio4, mut websocket, mut sid) = (false, false, false);
    for pair in req.uri().query().unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("EIO", v)) => eio4 = v == "4",
            Some(("transport", v)) => websocket = v == "websocket",
            Some(("sid", _)) => sid = true,
            _ => {}
        }
    }
    eio4 && websocket && !sid
}

/// The WebSocket handshake's checks (RFC 6455 §4.2.1) on a request already
/// known to ask for `Upgrade: websocket`; the accept key, or why not.
fn accept_key(req: &http::request::Parts) -> Result<String, &'static str> {
    if req.version != http::Version::HTTP_11 {
        return Err("a WebSocket handshake needs HTTP/1.1");
    }
    let connection = req.headers.get(header::CONNECTION).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !connection.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")) {
        return Err("Connection: upgrade is missing");
    }
    if req.headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err("Sec-WebSocket-Version must be 13");
    }
    let key = req.headers.get(header::SEC_WEBSOCKET_KEY).ok_or("Sec-WebSocket-Key is missing")?;
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// Middleware in front of engineioxide: takes direct WebSockets for
/// `handler`, passes the rest on.
pub async fn intercept<H: Handler>(
    State((handler, settings)): State<(Arc<H>, Settings)>,
    req: Request,
    next: Next,
) -> Response {
    if !is_direct_websocket(&req) {
        return next.run(req).await;
    }
    let (mut parts, _body) = req.into_parts();
    let accept = match accept_key(&parts) {
        Ok(accept) => accept,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let socket = parts.extensions.remove::<ConnectInfo<Socket>>();
    let (Some(on_upgrade), Some(ConnectInfo(socket))) = (on_upgrade, socket) else {
        return (StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded").into_response();
    };
    let handshake = Handshake::of(&parts);
    // What the request carries (a per-IP slot of the layers in front, say)
    // lives as long as the socket, as engineioxide keeps it with its own.
    let extensions = std::mem::take(&mut parts.extensions);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(handler, settings, socket, TokioIo::new(upgraded), handshake, extensions).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    match HeaderValue::from_str(&accept) {
        Ok(v) => headers.insert(header::SEC_WEBSOCKET_ACCEPT, v),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    response
}

/// The life of one direct WebSocket.
async fn serve<H: Handler>(
    handler: Arc<H>,
    settings: Settings,
    tcp: Socket,
    read: TokioIo<hyper::upgrade::Upgraded>,
    handshake: Handshake,
    _extensions: http::Extensions,
) {
    let Settings { ping_interval, ping_timeout, queue, max_payload } = settings;
    let outbox = Arc::new(Outbox::new(tcp, queue));
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_payload))
        .max_frame_size(Some(max_payload));
    let io = Io { read, outbox: outbox.clone() };
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
    let conn = Arc::new(Conn::ws(outbox.clone(), handshake));
    let open = serde_json::json!({
        "sid": conn.id.to_string(),
        "upgrades": [],
        "pingInterval": ping_interval.as_millis() as u64,
        "pingTimeout": ping_timeout.as_millis() as u64,
        "maxPayload": max_payload,
    });
    if outbox.push(&Packet::engine(format!("0{open}")), None).is_err() {
        return;
    }
    let state = handler.state(conn.clone());
    handler.opened(&state);
    let reason = run(&*handler, &state, &conn, &outbox, &mut ws, ping_interval, ping_timeout).await;
    conn.close(reason.clone());
    // What was queued before the close still goes out, then the close frame.
    let linger = Duration::from_secs(1);
    if outbox.drain(linger).await {
        let _ = tokio::time::timeout(linger, ws.close(None)).await;
        outbox.drain(linger).await;
    }
    let _ = outbox.tcp.shutdown(std::net::Shutdown::Both);
    handler.closed(&state, reason);
}

/// Reads, finishes blocked writes and keeps the heartbeat until the
/// connection ends.
async fn run<H: Handler>(
    handler: &H,
    state: &Arc<H::State>,
    conn: &Conn,
    outbox: &Outbox,
    ws: &mut WebSocketStream<Io>,
    ping_interval: Duration,
    ping_timeout: Duration,
) -> DisconnectReason {
    // One timer: the next ping, or the deadline of the pong we wait for.
    let timer = tokio::time::sleep(ping_interval);
    tokio::pin!(timer);
    let mut awaiting_pong = false;
    loop {
        tokio::select! {
            () = outbox.wake.notified() => {
                let (waiting, broken, closing) = outbox.status();
                if broken {
                    return DisconnectReason::TransportError;
                }
                if waiting && !outbox.drain(ping_timeout).await {
                    tracing::info!(sid = %conn.id, "write failed or timed out: closing slow connection");
                    return DisconnectReason::TransportError;
                }
                if let Some(reason) = closing {
                    return reason;
                }
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => return DisconnectReason::TransportClose,
                    Some(Ok(_)) => continue, // binary attachments are refused; pings are answered by tungstenite
                    Some(Err(_)) => return DisconnectReason::TransportError,
                };
                match text.as_bytes().first() {
                    Some(b'4') => handler.message(state, &text[1..]),
                    Some(b'3') => {
                        awaiting_pong = false;
                        timer.as_mut().reset(Instant::now() + ping_interval);
                    }
                    // A v3-style ping from the client: answer it.
                    Some(b'2') => {
                        let _ = conn.emit(&Packet::engine("3".to_string()), None);
                    }
                    Some(b'1') => return DisconnectReason::TransportClose,
                    Some(b'6') => {}
                    _ => {
                        tracing::info!(sid = %conn.id, "malformed Engine.IO packet: closing connection");
                        return DisconnectReason::PacketParsingError;
                    }
                }
            }
            () = &mut timer => {
                if awaiting_pong {
                    return DisconnectReason::HeartbeatTimeout;
                }
                let _ = conn.emit(&Packet::engine("2".to_string()), None);
                awaiting_pong = true;
                timer.as_mut().reset(Instant::now() + ping_timeout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, upgrade: bool) -> Request {
        let mut b = http::Request::builder().method("GET").uri(uri);
        if upgrade {
            b = b.header("upgrade", "websocket").header("connection", "upgrade");
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn takes_only_direct_v4_websockets() {
        assert!(is_direct_websocket(&req("/socket.io/?EIO=4&transport=websocket", true)));
        assert!(is_direct_websocket(&req("/socket.io/?EIO=4&transport=websocket&token=x", true)));
        // An upgrade of a polling session belongs to engineioxide.
        assert!(!is_direct_websocket(&req("/socket.io/?EIO=4&transport=websocket&sid=abc", true)));
        assert!(!is_direct_websocket(&req("/socket.io/?EIO=3&transport=websocket", true)));
        assert!(!is_direct_websocket(&req("/socket.io/?EIO=4&transport=polling", true)));
        assert!(!is_direct_websocket(&req("/socket.io/?EIO=4&transport=websocket", false)));
        assert!(!is_direct_websocket(&req("/v1/chats?EIO=4&transport=websocket", true)));
    }
}
