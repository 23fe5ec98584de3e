//! The lean WebSocket transport: Engine.IO v4 for clients that open a
//! WebSocket directly (`/socket.io/?EIO=4&transport=websocket`, no `sid`).
//!
//! Polling sessions and their upgrades stay with engineioxide. A direct
//! WebSocket is its TCP socket (shared by [`super::listener`], so it can be
//! written to without hyper once upgraded) and one task:
//! - **writes** go straight to the socket from whoever emits: a packet's
//!   WebSocket frame is encoded once per edge ([`Packet`]) and copied into
//!   the socket's [`Outbox`], which writes it at once with a non-blocking
//!   `write`. Inside [`batched`] (the fan-out of whatever the router sent
//!   together) a socket gets one `write` for all its packets, at the end.
//!   Only when the socket would block does its task take over, waiting for
//!   the socket to drain, with a deadline;
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

use super::conn::{Conn, EmitError, Handshake, Packet};
use super::listener::Socket;
use super::Handler;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engineioxide::DisconnectReason;
use futures::StreamExt;
use http::{header, HeaderValue, StatusCode};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bytes read from a socket at a time at first; larger packets grow it.
const READ_BUFFER: usize = 512;
/// A batch touching more sockets than this is written by several tasks when
/// the runtime has several workers.
const BATCH_CHUNK: usize = 256;

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

/// A direct WebSocket's socket and the bytes waiting to go out on it.
pub struct Outbox {
    tcp: Socket,
    state: Mutex<OutState>,
    /// Wakes the connection's task: the socket would block, broke, or the
    /// connection is to close.
    wake: Notify,
    /// Packets a connection may have waiting before it counts as too slow.
    capacity: usize,
}

#[derive(Default)]
struct OutState {
    /// Encoded frames not yet written; `buf[sent..]` is what is left.
    buf: Vec<u8>,
    sent: usize,
    /// Packets in `buf` since it was last empty.
    packets: usize,
    closing: Option<DisconnectReason>,
    broken: bool,
    /// The socket would block: the connection's task writes the rest.
    waiting: bool,
    /// In the current [`batched`] scope's list: written when it ends.
    batched: bool,
}

impl OutState {
    /// Adds bytes to write, in a spare buffer if the socket holds none.
    fn queue(&mut self, bytes: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf = spare_buffer();
        }
        self.buf.extend_from_slice(bytes);
    }
}

impl Outbox {
    fn new(tcp: Socket, capacity: usize) -> Self {
        Self { tcp, state: Mutex::default(), wake: Notify::new(), capacity: capacity.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one packet and writes it now, or at the end of the current
    /// [`batched`] scope; never waits.
    pub fn push(self: &Arc<Self>, packet: &Packet) -> Result<(), EmitError> {
        let mut state = self.lock();
        if state.closing.is_some() || state.broken {
            return Err(EmitError::Closed);
        }
        if state.packets >= self.capacity {
            return Err(EmitError::Full);
        }
        state.queue(packet.ws_frame());
        state.packets += 1;
        if state.waiting || state.batched {
            return Ok(());
        }
        if BATCH.with(|b| b.borrow_mut().as_mut().map(|list| list.push(self.clone())).is_some()) {
            state.batched = true;
        } else {
            self.write_locked(&mut state);
        }
        Ok(())
    }

    /// Raw bytes from tungstenite (pongs, the close frame), in order with
    /// the packets.
    fn push_raw(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.lock();
        if state.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        state.queue(bytes);
        if !state.waiting && !state.batched {
            self.write_locked(&mut state);
        }
        Ok(bytes.len())
    }

    pub fn close(&self, reason: DisconnectReason) {
        let mut state = self.lock();
        if state.closing.is_none() {
            state.closing = Some(reason);
            self.wake.notify_one();
        }
    }

    /// Writes what is queued until done or the socket would block (then the
    /// connection's task is woken to finish it).
    fn write_locked(&self, state: &mut OutState) {
        while state.sent < state.buf.len() {
            match self.tcp.0.try_write(&state.buf[state.sent..]) {
                Ok(0) => return self.broke(state),
                Ok(n) => state.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !state.waiting {
                        state.waiting = true;
                        self.wake.notify_one();
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.broke(state),
            }
        }
        // Nothing kept: an idle connection holds no write buffer.
        give_back(std::mem::take(&mut state.buf));
        state.sent = 0;
        state.packets = 0;
    }

    fn broke(&self, state: &mut OutState) {
        state.broken = true;
        state.buf = Vec::new();
        state.sent = 0;
        self.wake.notify_one();
    }

    /// Ends a batch for this socket: writes what the batch queued.
    fn end_batch(&self) {
        let mut state = self.lock();
        state.batched = false;
        if !state.waiting && !state.broken {
            self.write_locked(&mut state);
        }
    }

    /// The connection's task: writes what is left as the socket drains, until
    /// nothing is, within `deadline`. False if it broke or timed out.
    async fn drain(&self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            {
                let mut state = self.lock();
                if state.broken {
                    return false;
                }
                state.waiting = false;
                self.write_locked(&mut state);
                if !state.waiting {
                    return !state.broken;
                }
            }
            match tokio::time::timeout_at(until, self.tcp.0.writable()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    /// Whether the task has anything to do: (socket would block, broken,
    /// closing).
    fn status(&self) -> (bool, bool, Option<DisconnectReason>) {
        let state = self.lock();
        (state.waiting, state.broken, state.closing.clone())
    }
}

thread_local! {
    /// The sockets written to in the current [`batched`] scope on this thread.
    static BATCH: RefCell<Option<Vec<Arc<Outbox>>>> = const { RefCell::new(None) };
    /// Emptied write buffers, for the next socket that queues a packet: a
    /// busy edge neither allocates nor grows a buffer per socket and batch.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// The capacity of a new write buffer: a batch's worth of packets for one
/// socket, without growing.
const SPARE_CAPACITY: usize = 4096;
/// Spare buffers kept per thread, each at most 2 × [`SPARE_CAPACITY`]
/// (8 MiB in all): enough for a fan-out to a thousand sockets.
const SPARE_BUFFERS: usize = 1024;

fn spare_buffer() -> Vec<u8> {
    SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(SPARE_CAPACITY))
}

/// Keeps an emptied buffer for reuse unless the thread has enough or it
/// grew large.
fn give_back(mut buf: Vec<u8>) {
    if !(SPARE_CAPACITY..=2 * SPARE_CAPACITY).contains(&buf.capacity()) {
        return;
    }
    buf.clear();
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    });
}

/// Runs `f` (synchronous) with this thread's socket writes held: every
/// direct WebSocket that `f` emits to gets one `write` at the end for all
/// of its packets. Nested scopes join the outer one.
pub fn batched<R>(f: impl FnOnce() -> R) -> R {
    /// Ends the scope even if `f` panics.
    struct Scope;
    impl Drop for Scope {
        fn drop(&mut self) {
            let list = BATCH.with(|b| b.borrow_mut().take()).unwrap_or_default();
            write_all(list);
        }
    }
    let outer = BATCH.with(|b| {
        let mut b = b.borrow_mut();
        b.is_some() || {
            *b = Some(Vec::new());
            false
        }
    });
    if outer {
        return f();
    }
    let _scope = Scope;
    f()
}

/// Writes a batch's sockets; a large batch is split over the runtime's
/// workers, so a multi-core edge writes in parallel.
fn write_all(mut list: Vec<Arc<Outbox>>) {
    let workers = tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
    if workers > 1 && list.len() > BATCH_CHUNK {
        let per = list.len().div_ceil(workers).max(BATCH_CHUNK);
        while list.len() > per {
            let chunk = list.split_off(list.len() - per);
            tokio::spawn(async move { chunk.iter().for_each(|o| o.end_batch()) });
        }
    }
    list.iter().for_each(|o| o.end_batch());
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
    if outbox.push(&Packet::engine(format!("0{open}"))).is_err() {
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
                        let _ = conn.emit(&Packet::engine("3".to_string()));
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
                let _ = conn.emit(&Packet::engine("2".to_string()));
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

    /// A connected pair: the edge's side as an outbox, and the client's.
    async fn pair(capacity: usize) -> (Arc<Outbox>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(Outbox::new(Socket(Arc::new(server)), capacity)), client)
    }

    /// Reads exactly `n` bytes from the client's side, with a deadline.
    async fn read_n(client: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0; n];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf)).await.unwrap().unwrap();
        buf
    }

    #[tokio::test]
    async fn a_batch_writes_each_socket_once_at_its_end() {
        let (outbox, mut client) = pair(8).await;
        let (a, b) = (Packet::new("2[\"a\"]"), Packet::new("2[\"b\"]"));
        batched(|| {
            outbox.push(&a).unwrap();
            outbox.push(&b).unwrap();
            // Held until the scope ends: nothing on the wire yet.
            let state = outbox.lock();
            assert!(state.batched && state.sent == 0 && state.packets == 2);
        });
        let mut want = a.ws_frame().to_vec();
        want.extend_from_slice(b.ws_frame());
        assert_eq!(read_n(&mut client, want.len()).await, want);
        assert_eq!(&want[..2], &[0x81, 7]);
        assert_eq!(&want[2..9], b"42[\"a\"]");
        // Outside a batch a packet goes out at once, and nothing is kept.
        outbox.push(&a).unwrap();
        assert_eq!(read_n(&mut client, a.ws_frame().len()).await, a.ws_frame());
        assert_eq!(outbox.lock().buf.capacity(), 0);
    }

    #[tokio::test]
    async fn an_emptied_buffer_is_reused_by_the_next_socket() {
        let (first, mut client) = pair(8).await;
        let (second, _client) = pair(8).await;
        let p = Packet::new("2[\"a\"]");
        first.push(&p).unwrap();
        assert_eq!(read_n(&mut client, p.ws_frame().len()).await, p.ws_frame());
        let kept = SPARE.with(|s| s.borrow().last().map(|b| (b.as_ptr(), b.capacity(), b.len())));
        assert_eq!(kept.map(|k| (k.1, k.2)), Some((SPARE_CAPACITY, 0)));
        batched(|| {
            second.push(&p).unwrap();
            assert_eq!(Some(second.lock().buf.as_ptr()), kept.map(|k| k.0));
        });
        // Bounded: no more than SPARE_BUFFERS kept, and no large ones.
        for _ in 0..SPARE_BUFFERS + 10 {
            give_back(Vec::with_capacity(SPARE_CAPACITY));
        }
        give_back(Vec::with_capacity(4 * SPARE_CAPACITY));
        SPARE.with(|s| {
            let spare = s.borrow();
            assert_eq!(spare.len(), SPARE_BUFFERS);
            assert!(spare.iter().all(|b| b.capacity() == SPARE_CAPACITY));
        });
    }

    #[tokio::test]
    async fn the_outbox_is_bounded_and_closes() {
        let (outbox, _client) = pair(2).await;
        let p = Packet::new("2[\"x\",{}]");
        batched(|| {
            assert_eq!(outbox.push(&p), Ok(()));
            assert_eq!(outbox.push(&p), Ok(()));
            assert_eq!(outbox.push(&p), Err(EmitError::Full));
        });
        outbox.close(DisconnectReason::TransportClose);
        assert_eq!(outbox.push(&p), Err(EmitError::Closed));
        assert_eq!(outbox.status().2, Some(DisconnectReason::TransportClose));
    }

    #[tokio::test]
    async fn a_socket_that_would_block_is_left_to_its_task() {
        let (outbox, mut client) = pair(1_000_000).await;
        let big = Packet::new(&"x".repeat(60_000));
        // The client reads nothing until the kernel's buffers are full.
        let mut pushed = 0;
        while !outbox.status().0 {
            outbox.push(&big).unwrap();
            pushed += 1;
            assert!(pushed < 10_000, "the socket never filled");
        }
        // Later packets wait behind the blocked write, in order.
        let last = Packet::new("2[\"last\"]");
        outbox.push(&last).unwrap();
        // The task's drain finishes once the client reads; with no reader it
        // times out.
        assert!(!outbox.drain(Duration::from_millis(50)).await);
        let total = pushed * big.ws_frame().len() + last.ws_frame().len();
        let reader = tokio::spawn(async move { read_n(&mut client, total).await });
        assert!(outbox.drain(Duration::from_secs(5)).await);
        let got = reader.await.unwrap();
        assert!(got.ends_with(last.ws_frame()));
        assert!(!outbox.status().0);
    }
}
