//! Client events (CONTRACT §5): validation, then the router (ordered
//! operations) or the store (reads), then the ack.
//!
//! A handler checks its payload and queues its router request before it
//! returns, so the events of one socket reach the router in the order they
//! were emitted; only the wait for the reply runs in a task. Writes take a
//! slot of their rate limit first ([`crate::limits`]): they queue one after
//! another per socket, so they keep the emitted order among themselves.

use crate::attachments;
use crate::error::{self, ApiError};
use crate::limits::{self, RateClass};
use crate::link::ReplyResult;
use crate::session::{self, EioSocket};
use crate::socketio::packet as sio;
use crate::transport::WriteBatch;
use crate::validate::{self, Obj};
use crate::{metrics, wire, Edge};
use confab_common::telemetry::SPANS;
use confab_common::ErrorCode;
use confab_common::{ChatId, UserId};
use confab_proto::v1 as pb;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;
use tracing::Instrument;

/// Longest chat id accepted from a client.
pub const MAX_ID: usize = 128;

pub fn dispatch(edge: &Arc<Edge>, socket: &Arc<EioSocket>, name: &str, payload: Option<Value>, ack: Option<u64>) {
    let started = Instant::now();
    let label = metrics::event_label(name);
    // The event's span: its handler runs inside it (so a router request
    // carries its context) and so does the wait for the answer.
    let span = tracing::info_span!(
        target: SPANS,
        "event",
        otel.name = label,
        otel.kind = "server",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty
    );
    let span = confab_common::telemetry::traces::with_ids(span);
    let queued = span.in_scope(|| handle(edge, socket, name, payload.as_ref(), ack));
    let answered = {
        let edge = edge.clone();
        move |error: Option<ErrorCode>| edge.metrics.outcome(label, error, started)
    };
    let Some(ack_id) = ack else {
        // Fire-and-forget: the work still runs, the outcome is not reported.
        match queued {
            Ok(Pending::Later(fut) | Pending::Sent(fut)) => {
                edge.shutdown.spawn(
                    async move {
                        let result = fut.await;
                        answered(result.err().map(|e| e.code));
                    }
                    .instrument(span),
                );
            }
            Ok(Pending::Now(_)) => answered(None),
            Err(e) => answered(Some(e.code)),
        }
        return;
    };
    let event = name.to_string();
    match queued {
        Ok(Pending::Now(data)) => {
            socket.send(sio::ack(ack_id, &error::ok(data)));
            answered(None);
        }
        Err(e) => {
            span.in_scope(|| socket.send(sio::ack(ack_id, &e.ack(&event))));
            answered(Some(e.code));
        }
        Ok(Pending::Later(fut)) => {
            let socket = socket.clone();
            edge.shutdown.spawn(
                async move {
                    let (payload, error) = match fut.await {
                        Ok(data) => (error::ok(data), None),
                        Err(e) => (e.ack(&event), Some(e.code)),
                    };
                    socket.send(sio::ack(ack_id, &payload));
                    answered(error);
                }
                .instrument(span),
            );
        }
        Ok(Pending::Sent(fut)) => {
            let socket = socket.clone();
            edge.shutdown.spawn(
                async move {
                    let error = match fut.await {
                        Err(e) => {
                            socket.send(sio::ack(ack_id, &e.ack(&event)));
                            Some(e.code)
                        }
                        Ok(_) => None,
                    };
                    answered(error);
                }
                .instrument(span),
            );
        }
    }
}

fn handle(
    edge: &Arc<Edge>,
    socket: &Arc<EioSocket>,
    name: &str,
    payload: Option<&Value>,
    ack: Option<u64>,
) -> Result<Pending, ApiError> {
    let user = socket.data.session.get().map(|s| s.user_id.clone()).unwrap_or_default();
    match name {
        "room:join" => room_join(edge, socket, &user, payload),
        "room:leave" => room_leave(edge, socket, payload),
        "message:send" => message_send(edge, socket, &user, payload, ack),
        "message:history" => message_history(edge, &user, payload),
        "auth:refresh" => auth_refresh(edge, socket, payload),
        "message:edit" => message_edit(edge, socket, &user, payload),
        "message:delete" => message_delete(edge, socket, &user, payload),
        "reaction:add" => reaction(edge, socket, &user, payload, true),
        "reaction:remove" => reaction(edge, socket, &user, payload, false),
        "receipt:read" => receipt_read(edge, socket, &user, payload),
        "presence:set" => presence_set(edge, &user, payload),
        "presence:subscribe" => presence_subscribe(edge, socket, &user, payload),
        "presence:unsubscribe" => presence_unsubscribe(edge, socket, payload),
        "presence:ping" => Ok(Pending::Now(crate::presence::server_time())),
        "room:members" => room_members(edge, &user, payload),
        "typing:start" => typing(edge, socket, &user, payload, true),
        "typing:stop" => typing(edge, socket, &user, payload, false),
        _ => Err(ApiError::validation(format!("unknown event {name:?}"))),
    }
}

type BoxFut = std::pin::Pin<Box<dyn Future<Output = Result<Value, ApiError>> + Send>>;

/// What a handler leaves behind: an answer now, or one to wait for.
pub enum Pending {
    Now(Value),
    Later(BoxFut),
    /// The success ack goes out from the router link's reader as the reply
    /// arrives; an error from the future still needs one.
    Sent(BoxFut),
}

fn later(f: impl Future<Output = Result<Value, ApiError>> + Send + 'static) -> Result<Pending, ApiError> {
    Ok(Pending::Later(Box::pin(f)))
}

fn chat_id(o: Obj<'_>) -> Result<String, ApiError> {
    validate::string(o, "chatId", 1, MAX_ID)
}

fn room_join(
    edge: &Arc<Edge>,
    socket: &Arc<EioSocket>,
    user: &str,
    payload: Option<&Value>,
) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let chat_id = chat_id(o)?;
    let since_seq = validate::optional_u64(o, "sinceSeq")?;
    let op = pb::JoinOp { since_seq, limit: edge.config.join_missed_limit };
    // The socket enters the local room in the link's reader, right where the
    // router subscribed the edge: no message falls between the two.
    let (edge2, socket2, room) = (edge.clone(), socket.clone(), chat_id.clone());
    let on_reply: crate::link::OnReply = Arc::new(move |r: &ReplyResult, _: &mut WriteBatch| {
        if let ReplyResult::Join(j) = r {
            session::join_chat(&edge2, &socket2, &room, j.last_seq);
        }
    });
    let fut = edge.links.request(&chat_id, user, pb::request::Op::Join(op), Some(on_reply));
    later(async move {
        match error::from_reply(fut.await)? {
            ReplyResult::Join(j) => Ok(wire::join_ack(&chat_id, &j)),
            _ => Err(ApiError::new(confab_common::ErrorCode::Internal, "unexpected router reply")),
        }
    })
}

fn room_leave(edge: &Arc<Edge>, socket: &Arc<EioSocket>, payload: Option<&Value>) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let chat_id = match o.get("chatId") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::validation("chatId must be a string")),
        None => return Err(ApiError::validation("chatId is required")),
    };
    session::leave_chat(edge, socket, &chat_id);
    Ok(Pending::Now(json!({})))
}

/// Puts a rate-limited write of a socket behind the socket's previous one:
/// writes pass the limiter one after another, so they still reach the
/// router in the order emitted. Returns what to wait for before taking a
/// slot, and what to drop once the write is queued.
fn chain(order: Option<&EioSocket>) -> (Option<oneshot::Receiver<()>>, Option<oneshot::Sender<()>>) {
    match order {
        Some(socket) => {
            let (tx, rx) = oneshot::channel::<()>();
            let prev = socket.data.send_chain.lock().unwrap_or_else(|p| p.into_inner()).replace(rx);
            (prev, Some(tx))
        }
        None => (None, None),
    }
}

/// Checks a send and queues it; shared by the socket event and HTTP.
///
/// Sends of one socket pass the rate limit in the order emitted (see
/// [`chain`]). A sender over the limit is still forwarded, flagged: the
/// router answers a repeated clientId with the stored message (CONTRACT
/// §8.22) and refuses anything new with RATE_LIMITED. A repeat gives its
/// slot back (§8.14).
pub fn queue_send(
    edge: &Arc<Edge>,
    user: &str,
    sender: pb::Profile,
    o: Obj<'_>,
    chat_id: String,
    order: Option<&EioSocket>,
    on_reply: Option<crate::link::OnReply>,
) -> Result<impl Future<Output = Result<(pb::Message, bool), ApiError>> + Send + 'static, ApiError> {
    let attachments_json = attachments::parse(o)?;
    let body = validate::body(o, edge.config.max_body_chars, !attachments_json.is_empty())?;
    let client_id = validate::string(o, "clientId", 1, 64)?;
    let reply_to = validate::optional_string(o, "replyTo", 1, MAX_ID)?;
    let (previous, done) = chain(order);
    let (edge, user) = (edge.clone(), user.to_string());
    Ok(async move {
        if let Some(prev) = previous {
            let _ = prev.await; // resolves (or is dropped) once the previous write is queued
        }
        let slot = limits::acquire(&edge, &user, RateClass::Messages).await;
        let rate_limited_retry_ms = match slot {
            limits::Slot::Refused(ms) => Some(ms),
            _ => None,
        };
        let op = pb::SendOp {
            body,
            client_id,
            reply_to,
            rate_limited_retry_ms,
            attachments_json,
            sender: Some(sender),
            ..Default::default()
        };
        let fut = edge.links.request(&chat_id, &user, pb::request::Op::Send(op), on_reply);
        drop(done);
        match error::from_reply(fut.await)? {
            ReplyResult::Send(pb::SendResult { message: Some(m), duplicate }) => {
                if duplicate {
                    limits::release(&edge, &user, slot);
                }
                Ok((m, duplicate))
            }
            _ => Err(ApiError::outcome_unknown("unexpected router reply")),
        }
    })
}

/// With an ack id, the ack is written by the router link's reader when the
/// reply arrives, inside the same batch as the message's delivery to this
/// very socket (the router sends that first): the sender gets its own copy
/// and the ack in one write. Only a failure is acked from the task.
fn message_send(
    edge: &Arc<Edge>,
    socket: &Arc<EioSocket>,
    user: &str,
    payload: Option<&Value>,
    ack: Option<u64>,
) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let chat_id = chat_id(o)?;
    let profile = socket.data.session.get().map(|s| s.profile()).unwrap_or_default();
    let Some(ack_id) = ack else {
        let fut = queue_send(edge, user, profile, o, chat_id, Some(socket), None)?;
        return later(async move { fut.await.map(|(m, _)| wire::send_ack(&m)) });
    };
    // Whoever claims it acks: the reader on success, the task on failure
    // (a reply racing the request's deadline must not be acked twice).
    let acked = Arc::new(AtomicBool::new(false));
    let (sender, claimed) = (socket.clone(), acked.clone());
    let ack_now: crate::link::OnReply = Arc::new(move |r: &ReplyResult, batch: &mut WriteBatch| {
        if let ReplyResult::Send(pb::SendResult { message: Some(m), .. }) = r {
            if !claimed.swap(true, Ordering::AcqRel) {
                sender.send_in(sio::ack(ack_id, &error::ok(wire::send_ack(m))), batch);
            }
        }
    });
    let fut = queue_send(edge, user, profile, o, chat_id, Some(socket), Some(ack_now))?;
    Ok(Pending::Sent(Box::pin(async move {
        match fut.await {
            Err(e) if !acked.swap(true, Ordering::AcqRel) => Err(e),
            _ => Ok(Value::Null),
        }
    })))
}

/// Reads a page of history after checking membership; shared with HTTP.
pub async fn history(
    edge: &Edge,
    user: &str,
    chat_id: &str,
    after_seq: Option<u64>,
    before_seq: Option<u64>,
    limit: u64,
) -> Result<Value, ApiError> {
    let timeout = edge.config.request_timeout();
    let chat_id = ChatId::from(chat_id);
    let (chat, _) = tokio::time::timeout(timeout, edge.store.get_chat(&chat_id))
        .await
        .map_err(|_| ApiError::unavailable("store did not answer in time"))??;
    if !chat.members.iter().any(|m| m.user_id == user) {
        return Err(ApiError::forbidden("not a member of this chat"));
    }
    let page = tokio::time::timeout(timeout, edge.store.history(&chat_id, after_seq, before_seq, limit as usize))
        .await
        .map_err(|_| ApiError::unavailable("store did not answer in time"))??;
    Ok(json!({ "messages": wire::messages(&page.messages), "hasMore": page.has_more }))
}

fn message_history(edge: &Arc<Edge>, user: &str, payload: Option<&Value>) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let chat_id = chat_id(o)?;
    let before_seq = validate::optional_u64(o, "beforeSeq")?;
    let after_seq = validate::optional_u64(o, "afterSeq")?;
    let limit = validate::limit(o, edge.config.history_default_limit, edge.config.history_max_limit)?;
    let (edge, user) = (edge.clone(), user.to_string());
    later(async move { history(&edge, &user, &chat_id, after_seq, before_seq, limit).await })
}

fn auth_refresh(edge: &Arc<Edge>, socket: &Arc<EioSocket>, payload: Option<&Value>) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let token = match o.get("token") {
        Some(Value::String(t)) => t,
        _ => return Err(ApiError::validation("token must be a string")),
    };
    let unauthorized = |why: &str| ApiError::new(confab_common::ErrorCode::Unauthorized, why.to_string());
    let identity = edge.verifier.verify(token).map_err(|e| unauthorized(&format!("token refused: {}", e.reason())))?;
    let session = socket.data.session.get().ok_or_else(|| unauthorized("no session"))?;
    if identity.user_id != session.user_id {
        return Err(unauthorized("the token names another user"));
    }
    session.set_expires_at(identity.expires_at);
    session.set_profile(identity.profile());
    session::save_profile(edge, &identity);
    edge.expiry.watch(identity.expires_at, socket);
    Ok(Pending::Now(json!({ "expiresAt": confab_common::time::iso8601(identity.expires_at * 1000) })))
}

/// Queues a write once the user's rate limit of `class` allows it (behind
/// the socket's earlier writes, see [`chain`]); over the limit it is
/// refused with RATE_LIMITED. `ack` renders the router's reply as the
/// client's ack data (`None`: not the reply this write gets).
fn limited_op(
    edge: &Arc<Edge>,
    socket: &EioSocket,
    chat_id: String,
    user: &str,
    class: RateClass,
    op: pb::request::Op,
    ack: fn(ReplyResult) -> Option<Value>,
) -> Result<Pending, ApiError> {
    let (previous, done) = chain(Some(socket));
    let (edge, user) = (edge.clone(), user.to_string());
    later(async move {
        if let Some(prev) = previous {
            let _ = prev.await;
        }
        let queued = limits::check(&edge, &user, class).await.map(|()| edge.links.request(&chat_id, &user, op, None));
        drop(done);
        ack(error::from_reply(queued?.await)?).ok_or_else(|| ApiError::outcome_unknown("unexpected router reply"))
    })
}

fn message_id(o: Obj<'_>) -> Result<String, ApiError> {
    validate::string(o, "messageId", 1, MAX_ID)
}

fn message_edit(
    edge: &Arc<Edge>,
    socket: &EioSocket,
    user: &str,
    payload: Option<&Value>,
) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let chat_id = chat_id(o)?;
    let message_id = message_id(o)?;
    let body = validate::body(o, edge.config.max_body_chars, true)?;
    let op = pb::request::Op::Edit(pb::EditOp { message_id, body });
    limited_op(edge, socket, chat_id, user, RateClass::Edits, op, |r| match r {
        ReplyResult::Edit(e) => Some(wire::edit_ack(&e)),
        _ => None,
    })
}

fn message_delete(
    edge: &Arc<Edge>,
    socket: &EioSocket,
    user: &str,
    payload: Option<&Value>,
) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let chat_id = chat_id(o)?;
    let message_id = message_id(o)?;
    let op = pb::request::Op::Delete(pb::DeleteOp { message_id });
    limited_op(edge, socket, chat_id, user, RateClass::Edits, op, |r| match r {
        ReplyResult::Delete(d) => Some(wire::delete_ack(&d)),
        _ => None,
    })
}

fn reaction(
    edge: &Arc<Edge>,
    socket: &EioSocket,
    user: &str,
    payload: Option<&Value>,
    add: bool,
) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let chat_id = chat_id(o)?;
    let message_id = message_id(o)?;
    let emoji = validate::string(o, "emoji", 1, 16)?;
    if emoji.chars().all(char::is_whitespace) {
        return Err(ApiError::validation("emoji must not be blank"));
    }
    let op = pb::request::Op::React(pb::ReactOp { message_id, emoji, add });
    limited_op(edge, socket, chat_id, user, RateClass::Edits, op, |r| match r {
        ReplyResult::Ok(_) => Some(wire::reaction_ack()),
        _ => None,
    })
}

fn receipt_read(
    edge: &Arc<Edge>,
    socket: &EioSocket,
    user: &str,
    payload: Option<&Value>,
) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let chat_id = chat_id(o)?;
    let message_id = validate::optional_string(o, "messageId", 1, MAX_ID)?;
    let seq = validate::optional_u64(o, "seq")?;
    let op = match (message_id, seq) {
        (Some(message_id), _) => pb::ReadOp { message_id, seq: None },
        (None, Some(seq)) => pb::ReadOp { message_id: String::new(), seq: Some(seq) },
        (None, None) => return Err(ApiError::validation("messageId or seq is required")),
    };
    limited_op(edge, socket, chat_id, user, RateClass::Receipts, pb::request::Op::Read(op), |r| match r {
        ReplyResult::Read(r) => Some(wire::read_ack(&r)),
        _ => None,
    })
}

/// Typing is fire and forget: no ack, and bad payloads are dropped.
fn typing(
    edge: &Arc<Edge>,
    socket: &Arc<EioSocket>,
    user: &str,
    payload: Option<&Value>,
    start: bool,
) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let chat_id = chat_id(o)?;
    session::note_typing(socket, &chat_id, start);
    edge.links.send_only(&chat_id, user, pb::request::Op::Typing(pb::TypingOp { start }));
    Ok(Pending::Now(json!({})))
}

fn presence_set(edge: &Arc<Edge>, user: &str, payload: Option<&Value>) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let status = validate::string(o, "status", 1, 16)?;
    if !["online", "away", "busy", "invisible"].contains(&status.as_str()) {
        return Err(ApiError::validation("status must be online, away, busy or invisible"));
    }
    let (edge, user) = (edge.clone(), UserId::from(user));
    later(async move {
        tokio::time::timeout(edge.config.request_timeout(), edge.presence.set_status(&user, &status))
            .await
            .map_err(|_| ApiError::unavailable("presence did not answer in time"))??;
        Ok(json!({ "status": status }))
    })
}

fn presence_subscribe(
    edge: &Arc<Edge>,
    socket: &Arc<EioSocket>,
    user: &str,
    payload: Option<&Value>,
) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let ids = validate::user_ids(o, "userIds", edge.config.presence_subscribe_max)?;
    let (edge, socket, user) = (edge.clone(), socket.clone(), user.to_string());
    later(async move {
        let visible = crate::presence::visible_to(&edge, &user).await?;
        let watch: Vec<String> = ids.iter().filter(|u| visible.contains(*u)).cloned().collect();
        // Watch first, then read: an update racing the snapshot is not lost.
        let fresh = edge.watchers.add(&socket, &watch);
        crate::presence::report(&edge, fresh, Vec::new());
        let presence = crate::presence::visible_snapshot(&edge, &user, &ids).await?;
        for (id, shown) in ids.iter().zip(&presence) {
            if id != &user && visible.contains(id) {
                edge.watchers.note(id, shown["status"].as_str().unwrap_or_default());
            }
        }
        Ok(json!({ "presence": presence }))
    })
}

fn presence_unsubscribe(
    edge: &Arc<Edge>,
    socket: &Arc<EioSocket>,
    payload: Option<&Value>,
) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let ids = validate::user_ids(o, "userIds", edge.config.presence_subscribe_max)?;
    let gone = edge.watchers.remove(socket, Some(&ids));
    crate::presence::report(edge, Vec::new(), gone);
    Ok(Pending::Now(json!({})))
}

fn room_members(edge: &Arc<Edge>, user: &str, payload: Option<&Value>) -> Result<Pending, ApiError> {
    let o = validate::object(payload)?;
    let chat_id = chat_id(o)?;
    let (edge, user) = (edge.clone(), user.to_string());
    later(async move {
        let (chat, _) = tokio::time::timeout(edge.config.request_timeout(), edge.store.get_chat(&chat_id.into()))
            .await
            .map_err(|_| ApiError::unavailable("store did not answer in time"))??;
        if !chat.members.iter().any(|m| m.user_id == user) {
            return Err(ApiError::forbidden("not a member of this chat"));
        }
        let ids: Vec<String> = chat.members.iter().map(|m| m.user_id.clone()).collect();
        let states = crate::presence::states(&edge, &user, &ids).await?;
        let users: Vec<UserId> = ids.iter().map(UserId::from).collect();
        let profiles = tokio::time::timeout(edge.config.request_timeout(), edge.store.profiles(&users))
            .await
            .map_err(|_| ApiError::unavailable("store did not answer in time"))??;
        let profiles: std::collections::HashMap<String, pb::Profile> =
            profiles.into_iter().map(|(user, p)| (user.to_string(), p)).collect();
        let members: Vec<Value> = chat
            .members
            .iter()
            .zip(states.iter())
            .map(|(m, s)| {
                let mut v = crate::presence::snapshot(s);
                v["role"] = json!(m.role);
                let profile = profiles.get(&m.user_id);
                v["name"] = json!(profile.and_then(|p| p.name.as_deref()));
                v["avatarUrl"] = json!(profile.and_then(|p| p.avatar_url.as_deref()));
                v
            })
            .collect();
        Ok(json!({ "members": members }))
    })
}
