//! The lean WebSocket transport: Engine.IO v4 for clients that open a
//! WebSocket directly (`/socket.io/?EIO=4&transport=websocket`, no `sid`).
//!
//! Polling sessions and their upgrades stay with engineioxide. A direct
//! WebSocket costs one task: it reads frames, answers the heartbeat, and
//! writes whatever was queued in its [`Outbox`] while it was busy as one
//! batch (one `write` for many packets when deliveries come fast). There is
//! no per-socket channel or writer task, and the buffers start small, so an
//! idle connection costs a few kilobytes (see BENCHMARKS.md).
//!
//! Limits: a packet over `max_payload` closes the connection; a client that
//! does not read gets its queue filled and is cut off (slow consumer), and a
//! write that cannot finish within the ping timeout ends the connection.

use crate::conn::{Conn, EmitError, Handshake, Packet};
use crate::socket::Handler;
use crate::Edge;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engineioxide::DisconnectReason;
use futures::SinkExt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Bytes read from a socket at a time at first; larger packets grow it.
const READ_BUFFER: usize = 512;
/// Queued frames are written once this many bytes are waiting, at the latest.
const WRITE_BUFFER: usize = 64 * 1024;

/// Packets waiting for a connection's task.
pub struct Outbox {
    state: Mutex<OutState>,
    wake: Notify,
    capacity: usize,
}

#[derive(Default)]
struct OutState {
    queue: VecDeque<Packet>,
    closed: Option<DisconnectReason>,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self { state: Mutex::default(), wake: Notify::new(), capacity: capacity.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, packet: &Packet) -> Result<(), EmitError> {
        let mut state = self.lock();
        if state.closed.is_some() {
            return Err(EmitError::Closed);
        }
        if state.queue.len() >= self.capacity {
            return Err(EmitError::Full);
        }
        state.queue.push_back(packet.clone());
        if state.queue.len() == 1 {
            self.wake.notify_one();
        }
        Ok(())
    }

    pub fn close(&self, reason: DisconnectReason) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.closed = Some(reason);
            self.wake.notify_one();
        }
    }

    /// Everything queued, and whether the connection is to close after it.
    fn take(&self) -> (VecDeque<Packet>, Option<DisconnectReason>) {
        let mut state = self.lock();
        (std::mem::take(&mut state.queue), state.closed.clone())
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
    let upgrade = req.headers().get(http::header::UPGRADE).and_then(|h| h.to_str().ok());
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

/// Middleware in front of engineioxide: takes direct WebSockets, passes the
/// rest on.
pub async fn intercept(State(handler): State<Arc<Handler>>, req: Request, next: Next) -> Response {
    if !is_direct_websocket(&req) {
        return next.run(req).await;
    }
    let (mut parts, _body) = req.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let handshake = Handshake::of(&parts);
    let max = handler.edge.config.max_payload;
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |ws| serve(handler, ws, handshake))
}

/// The life of one direct WebSocket.
async fn serve(handler: Arc<Handler>, mut ws: WebSocket, handshake: Handshake) {
    let edge: &Arc<Edge> = &handler.edge;
    let config = &edge.config;
    let ping_interval = Duration::from_millis(config.ping_interval_ms);
    let ping_timeout = Duration::from_millis(config.ping_timeout_ms);
    let conn = Arc::new(Conn::ws(Outbox::new(config.socket_queue), handshake));
    let open = serde_json::json!({
        "sid": conn.id.to_string(),
        "upgrades": [],
        "pingInterval": config.ping_interval_ms,
        "pingTimeout": config.ping_timeout_ms,
        "maxPayload": config.max_payload,
    });
    let opened = tokio::time::timeout(ping_timeout, ws.send(Message::Text(format!("0{open}").into()))).await;
    if !matches!(opened, Ok(Ok(()))) {
        return;
    }
    handler.opened();
    let reason = run(&handler, &conn, &mut ws, ping_interval, ping_timeout).await;
    conn.close(reason.clone());
    let _ = tokio::time::timeout(Duration::from_secs(1), SinkExt::close(&mut ws)).await;
    handler.closed(&conn, reason);
}

/// Reads, writes and keeps the heartbeat until the connection ends.
async fn run(
    handler: &Arc<Handler>,
    conn: &Arc<Conn>,
    ws: &mut WebSocket,
    ping_interval: Duration,
    ping_timeout: Duration,
) -> DisconnectReason {
    let Some(outbox) = conn.outbox() else { return DisconnectReason::TransportError };
    // One timer: the next ping, or the deadline of the pong we wait for.
    let timer = tokio::time::sleep(ping_interval);
    tokio::pin!(timer);
    let mut awaiting_pong = false;
    loop {
        tokio::select! {
            () = outbox.wake.notified() => {
                let (packets, closing) = outbox.take();
                if !packets.is_empty() {
                    let write = async {
                        for p in packets {
                            ws.feed(Message::Text(p.frame())).await?;
                        }
                        ws.flush().await
                    };
                    let mut write = std::pin::pin!(write);
                    // Most writes finish at once: only one that has to wait
                    // for the socket gets a deadline (and a timer).
                    let written = match futures::poll!(write.as_mut()) {
                        std::task::Poll::Ready(r) => Some(r),
                        std::task::Poll::Pending => tokio::time::timeout(ping_timeout, write).await.ok(),
                    };
                    match written {
                        Some(Ok(())) => {}
                        Some(Err(_)) => return DisconnectReason::TransportError,
                        None => {
                            tracing::info!(sid = %conn.id, "write timed out: closing slow connection");
                            return DisconnectReason::TransportError;
                        }
                    }
                }
                if let Some(reason) = closing {
                    return reason;
                }
            }
            msg = ws.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => return DisconnectReason::TransportClose,
                    Some(Ok(_)) => continue, // binary attachments are refused; pings are answered by tungstenite
                    Some(Err(_)) => return DisconnectReason::TransportError,
                };
                match text.as_bytes().first() {
                    Some(b'4') => handler.message(conn, &text[1..]),
                    Some(b'3') => {
                        awaiting_pong = false;
                        timer.as_mut().reset(Instant::now() + ping_interval);
                    }
                    // A v3-style ping from the client: answer it.
                    Some(b'2') => {
                        let _ = outbox.push(&Packet::raw("3"));
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
                let _ = outbox.push(&Packet::raw("2"));
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

    #[test]
    fn outbox_is_bounded_and_closes() {
        let outbox = Outbox::new(2);
        let p = Packet::new("2[\"x\",{}]");
        assert_eq!(outbox.push(&p), Ok(()));
        assert_eq!(outbox.push(&p), Ok(()));
        assert_eq!(outbox.push(&p), Err(EmitError::Full));
        let (queued, closing) = outbox.take();
        assert_eq!(queued.len(), 2);
        assert!(closing.is_none());
        assert_eq!(queued[0].frame().as_str(), "42[\"x\",{}]");
        outbox.close(DisconnectReason::TransportClose);
        assert_eq!(outbox.push(&p), Err(EmitError::Closed));
        assert_eq!(outbox.take().1, Some(DisconnectReason::TransportClose));
    }
}
