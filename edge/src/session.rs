//! The session of one client socket, above the Socket.IO layer
//! ([`crate::socketio`]): the CONNECT handshake with its JWT, the auto-join
//! and `session:ready`, what the socket holds while it lives (rooms, typing,
//! watches, its user's slot), and clean-up on disconnect.

use crate::admission::{AwaitingConnect, ConnectState, Permit};
use crate::auth::{pick_token, AuthError};
use crate::error::ApiError;
use crate::socketio::packet as sio;
use crate::socketio::Socket;
use crate::transport::{DisconnectReason, Sid, WriteBatch};
use crate::Edge;
use confab_proto::v1 as pb;
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
    /// The token's name and picture, carried by the messages this socket
    /// sends; replaced by `auth:refresh` (CONTRACT §10.2).
    profile: Mutex<pb::Profile>,
}

impl Session {
    pub fn expires_at(&self) -> i64 {
        self.expires_at.load(Ordering::Acquire)
    }

    pub fn set_expires_at(&self, exp: i64) {
        self.expires_at.store(exp, Ordering::Release);
    }

    pub fn profile(&self) -> pb::Profile {
        self.profile.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_profile(&self, profile: pb::Profile) {
        *self.profile.lock().unwrap_or_else(|p| p.into_inner()) = profile;
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
    /// The user's session slot (see [`crate::admission`]), while held.
    user_slot: Mutex<Option<Permit>>,
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

    /// Keeps the user's session slot until [`SocketData::release_user_slot`]
    /// or the socket is dropped.
    fn hold_user_slot(&self, permit: Permit) {
        *self.user_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(permit);
    }

    fn release_user_slot(&self) {
        drop(self.user_slot.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

/// A socket of this edge, with its session's data.
pub type EioSocket = Socket<SocketData>;

impl AwaitingConnect for EioSocket {
    fn sid(&self) -> Sid {
        self.id
    }

    fn connect_state(&self) -> ConnectState {
        if self.data.is_disconnected() || self.data.session.get().is_some() {
            ConnectState::Settled
        } else if self.data.is_connecting() {
            ConnectState::Checking
        } else {
            ConnectState::Waiting
        }
    }

    fn close(&self, reason: DisconnectReason) {
        Socket::close(self, reason);
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
    edge.metrics.sessions.add(-1, &[]);
    let edge2 = edge.clone();
    let req = pb::SessionRequest {
        user_id: session.user_id.clone(),
        edge_id: edge.edge_id.to_string(),
        session_id: session.session_id.clone(),
    };
    edge.shutdown.spawn(async move { session_change(&edge2, req, false).await });
}

/// A transport connection opened (before any Socket.IO CONNECT).
pub fn opened(edge: &Edge, socket: &Arc<EioSocket>) {
    edge.metrics.connections.add(1, &[]);
    let awaiting: Arc<dyn AwaitingConnect> = socket.clone();
    edge.admission.watch_connect(&awaiting);
    edge.drain.register(socket.conn());
}

/// A transport connection ended: leave every room, close the session.
pub fn closed(edge: &Arc<Edge>, socket: &Arc<EioSocket>) {
    edge.metrics.connections.add(-1, &[]);
    if socket.is_slow_consumer() {
        edge.metrics.slow_consumers.add(1, &[]);
    }
    socket.data.disconnected.store(true, Ordering::Release);
    socket.data.release_user_slot();
    edge.drain.unregister(socket.id);
    release(edge, socket);
}

/// A CONNECT to the default namespace: checks its token and the user's
/// slot, then starts the session in a task.
pub fn connect(edge: &Arc<Edge>, socket: &Arc<EioSocket>, auth: Option<&Value>) {
    if socket.data.session.get().is_some() || socket.data.connecting.swap(true, Ordering::AcqRel) {
        return; // a repeated CONNECT is ignored
    }
    let started = std::time::Instant::now();
    let handshake = socket.take_handshake();
    let identity = pick_token(auth, handshake.authorization.as_deref(), handshake.query.as_deref())
        .and_then(|t| edge.verifier.verify(&t));
    let identity = match identity {
        Ok(i) => i,
        Err(e) => {
            edge.metrics.outcome("connect", Some(confab_common::ErrorCode::Unauthorized), started);
            refuse(socket, e);
            return;
        }
    };
    if edge.drain.is_draining() {
        socket.close(DisconnectReason::ClosingServer);
        return;
    }
    match edge.admission.admit_user(&identity.user_id) {
        Ok(slot) => socket.data.hold_user_slot(slot),
        Err(refused) => {
            let data = crate::admission::connect_refusal(&refused);
            socket.send(sio::connect_error("/", confab_common::ErrorCode::RateLimited.as_str(), Some(&data)));
            socket.data.connecting.store(false, Ordering::Release);
            return;
        }
    }
    let (edge2, socket) = (edge.clone(), socket.clone());
    let span = tracing::info_span!(
        target: confab_common::telemetry::SPANS,
        "connect",
        otel.kind = "server",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty
    );
    let span = confab_common::telemetry::traces::with_ids(span);
    let session = async move {
        let started_session = start_session(&edge2, &socket, identity).await;
        edge2.metrics.outcome("connect", started_session.as_ref().err().map(|e| e.code), started);
        if let Err(e) = started_session {
            socket.data.release_user_slot();
            // The message (a transport error, an address) goes to the
            // log with the correlation id; the client gets neither.
            let body = e.body("connect");
            let data = json!({
                "code": e.code.as_str(),
                "reason": UNAVAILABLE_REASON,
                "correlationId": body["correlationId"],
            });
            socket.send(sio::connect_error("/", e.code.as_str(), Some(&data)));
            socket.data.connecting.store(false, Ordering::Release);
        }
    };
    edge.shutdown.spawn(tracing::Instrument::instrument(session, span));
}

fn refuse(socket: &EioSocket, e: AuthError) {
    tracing::info!(sid = %socket.id, reason = e.reason(), "handshake refused");
    let data = json!({ "code": "UNAUTHORIZED", "reason": e.reason() });
    socket.send(sio::connect_error("/", "UNAUTHORIZED", Some(&data)));
    socket.data.connecting.store(false, Ordering::Release);
}

/// The `reason` of a CONNECT_ERROR refused for a backend that is down (the
/// only way a good token is refused): the client learns to retry, not how
/// the cluster is wired.
const UNAVAILABLE_REASON: &str = "service_unavailable";

/// Queues the profile of a token the edge accepted for saving: the session
/// does not wait for it. One this edge saved in the last minute is not
/// queued again (a reconnect). A full queue (the store far behind) drops
/// it with a warning; the user's next token saves it again.
pub fn save_profile(edge: &Edge, identity: &crate::auth::Identity) {
    let profile = identity.profile();
    if !edge.saved_profiles.claim(&identity.user_id, &profile, std::time::Instant::now()) {
        return;
    }
    if !edge.profile_puts.try_queue((identity.user_id.clone(), profile)) {
        edge.saved_profiles.forget([identity.user_id.as_str()]);
        tracing::warn!(user.id = %identity.user_id, "profile not saved: the queue of profiles to save is full");
    }
}

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
        profile: Mutex::new(identity.profile()),
    });
    save_profile(edge, &identity);
    edge.metrics.sessions.add(1, &[]);
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
        sio::event("session:ready", &ready)
    };
    let sent = {
        let mut batch = WriteBatch::new();
        socket.send_in(sio::connect_ok("/", &socket.id.to_string()), &mut batch);
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
        let sent = waits.is_empty();
        if sent {
            socket.send_in(ready(&listed), &mut batch);
        }
        batch.flush();
        sent
    };
    if !sent {
        for r in futures::future::join_all(waits).await {
            if let Err(e) = crate::error::from_reply(r) {
                tracing::warn!(user.id = %user_id, error = %e.message, "auto-join subscribe failed");
            }
        }
        socket.send(ready(&listed));
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
