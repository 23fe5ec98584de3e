//! The life of one client connection: Engine.IO underneath (engineioxide,
//! or the lean WebSocket path of [`crate::transport::ws`]; see [`crate::transport::conn`]),
//! Socket.IO packets on top (see [`crate::socketio::packet`]), the CONNECT handshake with
//! its JWT, `session:ready`, and clean-up on disconnect.

use crate::auth::{pick_token, AuthError};
use crate::error::ApiError;
use crate::socketio::packet::{self as sio, Incoming};
use crate::transport::conn::{Conn, EmitError, EngineData, EngineSocket, Packet};
use crate::{events, Edge};
use confab_common::log_limit::{self, LogLimit};
use confab_proto::v1 as pb;
use engineioxide::handler::EngineIoHandler;
use engineioxide::{DisconnectReason, Str};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Who is on a socket, once its CONNECT was accepted.
#[derive(Debug)]
pub struct Session {
    pub user_id: String,
    pub session_id: String,
    /// The token's `exp` (seconds); moved on by `auth:refresh`.
    expires_at: AtomicI64,
}

impl Session {
    pub fn expires_at(&self) -> i64 {
        self.expires_at.load(Ordering::Acquire)
    }

    pub fn set_expires_at(&self, exp: i64) {
        self.expires_at.store(exp, Ordering::Release);
    }
}

/// Per-socket state of the edge.
#[derive(Default)]
pub struct SocketData {
    pub session: OnceLock<Session>,
    connecting: AtomicBool,
    /// Chats this socket receives. Changed together with the local rooms,
    /// under this lock, so a disconnect racing a join leaves nothing behind.
    pub chats: Mutex<HashSet<String>>,
    disconnected: AtomicBool,
    released: AtomicBool,
    /// Its queue overflowed: it is being closed (logged once).
    overflowed: AtomicBool,
    /// Chats this socket has sent `typing:start` in (stopped on disconnect).
    typing: Mutex<HashSet<String>>,
    /// Resolves when this socket's latest rate-limited write has been
    /// queued to its router: the next waits for it, keeping the emitted order.
    pub send_chain: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    /// Users whose presence this socket watches.
    pub watching: Mutex<HashSet<String>>,
}

/// Remembers where a socket is typing, so its disconnect can stop it.
pub fn note_typing(socket: &EioSocket, chat_id: &str, start: bool) {
    let mut typing = socket.data.typing.lock().unwrap_or_else(|p| p.into_inner());
    if start {
        typing.insert(chat_id.to_string());
    } else {
        typing.remove(chat_id);
    }
}

impl SocketData {
    pub fn is_disconnected(&self) -> bool {
        self.disconnected.load(Ordering::Acquire)
    }

    /// A CONNECT is being checked or its session started.
    pub fn is_connecting(&self) -> bool {
        self.connecting.load(Ordering::Acquire)
    }
}

/// Adds a socket to a chat's local room; true when the edge must subscribe
/// to the chat (its first local socket).
pub fn join_chat(edge: &Edge, socket: &Arc<EioSocket>, chat_id: &str, last_seq: u64) -> bool {
    edge.rooms.join_socket(chat_id, socket, last_seq)
}

/// Removes a socket from a chat's local room, unsubscribing the edge when it
/// was the last local socket.
pub fn leave_chat(edge: &Edge, socket: &EioSocket, chat_id: &str) {
    let mut chats = socket.data.chats.lock().unwrap_or_else(|p| p.into_inner());
    chats.remove(chat_id);
    if edge.rooms.leave(chat_id, socket.id) {
        edge.links.unsubscribe(chat_id);
    }
}

/// Takes a closed socket out of every room, and out of presence once.
/// Safe to call more than once, and before the session exists.
fn release(edge: &Arc<Edge>, socket: &Arc<EioSocket>) {
    {
        let mut chats = socket.data.chats.lock().unwrap_or_else(|p| p.into_inner());
        for chat_id in chats.drain() {
            if edge.rooms.leave(&chat_id, socket.id) {
                edge.links.unsubscribe(&chat_id);
            }
        }
    }
    let Some(session) = socket.data.session.get() else {
        return;
    };
    edge.rooms.leave_user(&session.user_id, socket.id);
    if socket.data.released.swap(true, Ordering::AcqRel) {
        return;
    }
    let typing: Vec<String> = socket.data.typing.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
    for chat_id in typing {
        let op = pb::request::Op::Typing(pb::TypingOp { start: false });
        edge.links.send_only(&chat_id, &session.user_id, op);
    }
    edge.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
    let edge2 = edge.clone();
    let req = pb::SessionRequest {
        user_id: session.user_id.clone(),
        edge_id: edge.edge_id.to_string(),
        session_id: session.session_id.clone(),
    };
    edge.shutdown.spawn(async move { session_change(&edge2, req, false).await });
}

pub type EioSocket = Conn;

/// Queues a packet on a socket; a full queue disconnects it (slow consumer).
pub fn send(socket: &EioSocket, packet: String) {
    emit(socket, &Packet::new(&packet));
}

/// Queues a packet encoded once for many sockets; a full queue disconnects
/// the socket (slow consumer): it reconnects and recovers with `sinceSeq`.
pub fn emit(socket: &EioSocket, packet: &Packet) {
    if socket.emit(packet) == Err(EmitError::Full) {
        // Packets keep coming until the close takes effect: one line per
        // socket, and at most one per interval for all sockets together.
        static QUEUE_FULL: LogLimit = LogLimit::new(log_limit::DEFAULT_INTERVAL);
        if !socket.data.overflowed.swap(true, Ordering::AcqRel) {
            if let Some(suppressed) = QUEUE_FULL.allow() {
                tracing::warn!(sid = %socket.id, suppressed, "socket queue full: disconnecting slow consumer");
            }
        }
        socket.close(DisconnectReason::TransportError);
    }
}

/// The Socket.IO layer over both transports: every socket of this edge goes
/// through it.
#[derive(Debug, Clone)]
pub struct Handler {
    pub(crate) edge: Arc<Edge>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge").field("id", &self.edge_id).finish()
    }
}

impl EngineIoHandler for Handler {
    type Data = EngineData;

    fn on_connect(self: Arc<Self>, socket: Arc<EngineSocket>) {
        let conn = Arc::new(Conn::engine(&socket));
        let _ = socket.data.0.set(conn.clone());
        self.opened(&conn);
    }

    fn on_disconnect(&self, socket: Arc<EngineSocket>, reason: DisconnectReason) {
        if let Some(conn) = socket.data.0.get() {
            self.closed(conn, reason);
        }
    }

    fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<EngineSocket>) {
        if let Some(conn) = socket.data.0.get() {
            self.message(conn, &msg);
        }
    }

    fn on_binary(self: &Arc<Self>, _data: bytes::Bytes, _socket: Arc<EngineSocket>) {
        // Attachments of refused binary packets: dropped.
    }
}

impl Handler {
    /// A transport connection opened (before any Socket.IO CONNECT).
    pub fn opened(&self, conn: &Arc<Conn>) {
        self.edge.metrics.engine_connections.fetch_add(1, Ordering::Relaxed);
        self.edge.admission.watch_connect(conn);
        self.edge.drain.register(conn);
    }

    /// A transport connection ended: leave every room, close the session.
    pub fn closed(&self, socket: &Arc<EioSocket>, reason: DisconnectReason) {
        self.edge.metrics.engine_connections.fetch_sub(1, Ordering::Relaxed);
        socket.data.disconnected.store(true, Ordering::Release);
        socket.release_user_slot();
        self.edge.drain.unregister(socket.id);
        tracing::debug!(sid = %socket.id, ?reason, "socket closed");
        release(&self.edge, socket);
    }

    /// One Engine.IO message: a Socket.IO packet.
    pub fn message(self: &Arc<Self>, socket: &Arc<EioSocket>, msg: &str) {
        let socket = socket.clone();
        match sio::parse(msg) {
            Ok(Incoming::Connect { nsp, auth }) => self.connect(socket, &nsp, auth.as_ref()),
            Ok(Incoming::Disconnect { .. }) => socket.close(DisconnectReason::TransportClose),
            Ok(Incoming::Event { nsp, name, args, ack }) => {
                if nsp != "/" {
                    return; // never connected to another namespace
                }
                if socket.data.session.get().is_none() {
                    if let Some(id) = ack {
                        let e = ApiError::new(confab_common::ErrorCode::Unauthorized, "connect first");
                        send(&socket, sio::ack(id, &e.ack(&name)));
                    }
                    return;
                }
                if self.edge.drain.is_draining() {
                    if let Some(id) = ack {
                        let e = ApiError::unavailable("the edge is shutting down; retry on another");
                        send(&socket, sio::ack(id, &e.ack(&name)));
                    }
                    return;
                }
                self.edge.metrics.events.fetch_add(1, Ordering::Relaxed);
                events::dispatch(&self.edge, &socket, &name, args.into_iter().next(), ack);
            }
            Ok(Incoming::Ack) => {}
            Ok(Incoming::LoneSurrogate { nsp, name, ack }) => {
                if let (Some(id), "/") = (ack, nsp.as_str()) {
                    let e = ApiError::validation(
                        "payload holds a lone UTF-16 surrogate escape (a cut emoji?): send well-formed Unicode",
                    );
                    send(&socket, sio::ack(id, &e.ack(&name)));
                }
            }
            Ok(Incoming::Binary { ack }) => {
                if let Some(id) = ack {
                    let e = ApiError::validation("binary payloads are not supported");
                    send(&socket, sio::ack(id, &e.ack("binary")));
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

    fn connect(self: &Arc<Self>, socket: Arc<EioSocket>, nsp: &str, auth: Option<&Value>) {
        if nsp != "/" {
            send(&socket, sio::connect_error(nsp, "Invalid namespace", None));
            return;
        }
        if socket.data.session.get().is_some() || socket.data.connecting.swap(true, Ordering::AcqRel) {
            return; // a repeated CONNECT is ignored
        }
        let handshake = socket.take_handshake();
        let identity = pick_token(auth, handshake.authorization.as_deref(), handshake.query.as_deref())
            .and_then(|t| self.edge.verifier.verify(&t));
        let identity = match identity {
            Ok(i) => i,
            Err(e) => {
                refuse(&socket, e);
                return;
            }
        };
        if self.edge.drain.is_draining() {
            socket.close(DisconnectReason::ClosingServer);
            return;
        }
        match self.edge.admission.admit_user(&identity.user_id) {
            Ok(slot) => socket.hold_user_slot(slot),
            Err(refused) => {
                let data = crate::admission::connect_refusal(&refused);
                send(&socket, sio::connect_error("/", confab_common::ErrorCode::RateLimited.as_str(), Some(&data)));
                socket.data.connecting.store(false, Ordering::Release);
                return;
            }
        }
        let edge = self.edge.clone();
        self.edge.shutdown.spawn(async move {
            if let Err(e) = start_session(&edge, &socket, identity).await {
                socket.release_user_slot();
                // The message (a transport error, an address) goes to the
                // log with the correlation id; the client gets neither.
                let body = e.body("connect");
                let data = json!({
                    "code": e.code.as_str(),
                    "reason": UNAVAILABLE_REASON,
                    "correlationId": body["correlationId"],
                });
                send(&socket, sio::connect_error("/", e.code.as_str(), Some(&data)));
                socket.data.connecting.store(false, Ordering::Release);
            }
        });
    }
}

fn refuse(socket: &EioSocket, e: AuthError) {
    tracing::info!(sid = %socket.id, reason = e.reason(), "handshake refused");
    let data = json!({ "code": "UNAUTHORIZED", "reason": e.reason() });
    send(socket, sio::connect_error("/", "UNAUTHORIZED", Some(&data)));
    socket.data.connecting.store(false, Ordering::Release);
}

/// The `reason` of a CONNECT_ERROR refused for a backend that is down (the
/// only way a good token is refused): the client learns to retry, not how
/// the cluster is wired.
const UNAVAILABLE_REASON: &str = "service_unavailable";

/// Accepts the CONNECT: auto-joins the user's chats, then `session:ready`.
async fn start_session(
    edge: &Arc<Edge>,
    socket: &Arc<EioSocket>,
    identity: crate::auth::Identity,
) -> Result<(), ApiError> {
    let listed = tokio::time::timeout(edge.config.request_timeout(), edge.chat_lists.call(identity.user_id.clone()));
    let chats = match listed.await {
        Ok(Some(Ok(chats))) => chats,
        Ok(Some(Err(why))) => return Err(ApiError::unavailable(why)),
        Ok(None) => return Err(ApiError::unavailable("the edge is shutting down")),
        Err(_) => return Err(ApiError::unavailable("store did not answer in time")),
    };
    let session_id = uuid::Uuid::new_v4().to_string();
    let user_id = identity.user_id.clone();
    let _ = socket.data.session.set(Session {
        user_id: user_id.clone(),
        session_id: session_id.clone(),
        expires_at: AtomicI64::new(identity.expires_at),
    });
    edge.metrics.sessions.fetch_add(1, Ordering::Relaxed);
    edge.rooms.join_user(&user_id, socket);
    edge.expiry.watch(identity.expires_at, socket);
    // Subscribe this edge to the chats it had no socket of yet. The CONNECT
    // ack goes first; when no subscribe is needed, `session:ready` goes in
    // the same write.
    let mut waits = Vec::new();
    let mut listed = Vec::with_capacity(chats.len());
    let ready = |listed: &[Value]| {
        let ready = json!({
            "userId": user_id,
            "sessionId": session_id,
            "serverTime": confab_common::time::iso8601(confab_common::time::now_ms()),
            "chats": listed,
        });
        send(socket, sio::event("session:ready", &ready));
    };
    let sent = crate::transport::ws::batched(|| {
        send(socket, sio::connect_ok("/", &socket.id.to_string()));
        for s in &chats {
            let Some(chat) = &s.chat else { continue };
            if join_chat(edge, socket, &chat.id, s.last_seq) {
                let op = pb::request::Op::Subscribe(pb::SubscribeOp {});
                waits.push(edge.links.request(&chat.id, &user_id, op, None));
            }
            listed.push(
                json!({ "chatId": chat.id, "lastSeq": s.last_seq, "lastReadSeq": s.last_read_seq, "unread": s.unread }),
            );
        }
        if !waits.is_empty() {
            return false;
        }
        ready(&listed);
        true
    });
    if !sent {
        for r in futures::future::join_all(waits).await {
            if let Err(e) = crate::error::from_reply(r) {
                tracing::warn!(user.id = %user_id, error = %e.message, "auto-join subscribe failed");
            }
        }
        ready(&listed);
    }

    let req = pb::SessionRequest { user_id, edge_id: edge.edge_id.to_string(), session_id };
    session_change(edge, req.clone(), true).await;
    // A disconnect that raced the start saw no session (or not every
    // room): release what was set up since.
    if socket.data.disconnected.load(Ordering::Acquire) {
        release(edge, socket);
        // The close sent by an earlier release may have overtaken the open.
        session_change(edge, req, false).await;
    }
    Ok(())
}

/// The presence session of a socket while it is live: none before its
/// CONNECT was accepted, nor once it closed.
pub fn live_session(edge: &Edge, socket: &EioSocket) -> Option<pb::SessionRequest> {
    if socket.data.is_disconnected() || socket.data.released.load(Ordering::Acquire) {
        return None;
    }
    let session = socket.data.session.get()?;
    Some(pb::SessionRequest {
        user_id: session.user_id.clone(),
        edge_id: edge.edge_id.to_string(),
        session_id: session.session_id.clone(),
    })
}

/// Tells presence a session opened or closed (batched with the other
/// sockets' changes); a failure is logged, the socket goes on.
async fn session_change(edge: &Edge, session: pb::SessionRequest, open: bool) {
    let change = pb::SessionChange { session: Some(session), open };
    let what = if open { "open" } else { "close" };
    match tokio::time::timeout(edge.config.request_timeout(), edge.sessions.call(change)).await {
        Ok(Some(Ok(()))) => {}
        Ok(Some(Err(why))) => tracing::warn!(error = %why, "presence session {what} failed"),
        Ok(None) => tracing::debug!("presence session {what} dropped: shutting down"),
        Err(_) => tracing::warn!("presence session {what} timed out"),
    }
}
