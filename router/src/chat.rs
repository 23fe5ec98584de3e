//! The single writer of one chat.
//!
//! Every command for a chat goes through one bounded queue to one task, so
//! seq assignment needs no lock and ordering is the order of that queue.
//! Sends that are waiting together are appended as one batch (one store
//! round trip, one fsync); the task then delivers each message once per
//! subscribed edge and answers each sender. Nothing is delivered or acked
//! before the store has said it is durable. Edits, deletes, reactions,
//! receipts and typing go through the same task, so every subscriber sees a
//! chat's events in one order.

use crate::edges::{EdgeConn, EdgeRegistry};
use crate::events;
use crate::tail::Tail;
use confab_api::store::{AppendBatch, Appended, Store, StoreError};
use confab_common::time::now_ms;
use confab_proto::v1 as pb;
use confab_proto::v1::{reply::Result as ReplyResult, router_frame::Kind};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a client id is remembered (CONTRACT §5).
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// Recently seen client ids kept in memory before asking the store.
const RECENT_CLIENT_IDS: usize = 4096;
/// Messages a chat writer keeps for joins with `sinceSeq`, at most, and
/// their encoded bytes at most.
const TAIL_MESSAGES: usize = 256;
const TAIL_BYTES: usize = 256 * 1024;
/// Sends appended in one store call at most.
const MAX_SEND_BATCH: usize = 128;

pub(crate) struct Cmd {
    pub req_id: u64,
    pub user: String,
    pub edge: EdgeConn,
    pub op: Op,
}

pub(crate) enum Op {
    Send(pb::SendOp),
    Join(pb::JoinOp),
    Subscribe,
    Unsubscribe,
    Announce,
    Edit(pb::EditOp),
    Delete(pb::DeleteOp),
    React(pb::ReactOp),
    Typing(pb::TypingOp),
    Read(pb::ReadOp),
    Manage(pb::ManageOp),
    /// The edge stream `Cmd::edge` ended.
    EdgeGone,
}

/// Subscriptions outlive a writer that a newer claim fenced: if the chat
/// comes back to this router, its next writer delivers to the same edges.
#[derive(Clone, Default)]
pub(crate) struct Parked(Arc<std::sync::Mutex<HashMap<String, HashMap<u64, EdgeConn>>>>);

impl Parked {
    fn take(&self, chat_id: &str) -> HashMap<u64, EdgeConn> {
        let mut parked = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut subs = parked.remove(chat_id).unwrap_or_default();
        subs.retain(|_, e| e.is_open());
        subs
    }

    fn put(&self, chat_id: &str, subs: HashMap<u64, EdgeConn>) {
        let mut parked = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Drop what no stream can use any more, so the map stays small.
        parked.retain(|_, s| {
            s.retain(|_, e| e.is_open());
            !s.is_empty()
        });
        if !subs.is_empty() {
            parked.entry(chat_id.to_string()).or_default().extend(subs);
        }
    }
}

/// Timing rules of a chat writer (CONTRACT §5, §9).
#[derive(Clone)]
pub(crate) struct ChatSettings {
    pub store: Arc<dyn Store>,
    /// This router, as recorded with each claim.
    pub owner: String,
    /// Every edge stream attached to this router.
    pub edges: EdgeRegistry,
    /// Subscribers of writers that stopped, for the next writer of the chat.
    pub parked: Parked,
    /// A writer with no subscriber and no command for this long stops.
    pub idle: Duration,
    /// Typing stops this long after the last start.
    pub typing_ttl: Duration,
    /// A start within this long of the last broadcast one is not re-broadcast.
    pub typing_debounce: Duration,
}

struct Typing {
    last_broadcast: Instant,
    expires: Instant,
}

struct ChatState {
    chat_id: String,
    /// Our ownership epoch: every write carries it (see `Store::claim`).
    epoch: u64,
    /// A newer owner claimed the chat: this writer stops.
    fenced: bool,
    chat: pb::Chat,
    last_seq: u64,
    subscribers: HashMap<u64, EdgeConn>,
    recent: HashMap<(String, String), pb::Message>,
    recent_order: VecDeque<(String, String)>,
    /// The last messages, for joins with `sinceSeq`.
    tail: Tail,
    cursors: HashMap<String, u64>,
    typing: HashMap<String, Typing>,
}

type OpResult = Result<ReplyResult, ReplyResult>;

fn error(code: pb::ErrorCode, message: impl Into<String>) -> ReplyResult {
    ReplyResult::Error(pb::Error { code: code as i32, message: message.into(), retry_after_ms: None })
}

fn forbidden(message: &str) -> ReplyResult {
    error(pb::ErrorCode::Forbidden, message)
}

fn not_found(message: &str) -> ReplyResult {
    error(pb::ErrorCode::NotFound, message)
}

fn json(v: serde_json::Value) -> ReplyResult {
    ReplyResult::Json(v.to_string())
}

fn store_error(e: &StoreError) -> ReplyResult {
    match e {
        StoreError::NotFound => not_found("no such chat"),
        StoreError::Invalid(m) => error(pb::ErrorCode::Validation, m.clone()),
        StoreError::SeqConflict { .. } | StoreError::Unavailable(_) | StoreError::Fenced => {
            error(pb::ErrorCode::Unavailable, "storage unavailable, retry with the same ids")
        }
        StoreError::Internal(_) => error(pb::ErrorCode::Internal, "storage error"),
    }
}

/// A failed write (or a writer that could not start, so the commands
/// queued for it were never applied): see [`StoreError::of_write`].
fn write_error(e: StoreError) -> ReplyResult {
    store_error(&e.of_write())
}

fn reply(edge: &EdgeConn, id: u64, result: ReplyResult) {
    edge.send(Kind::Reply(pb::Reply { id, result: Some(result) }));
}

/// Answers a command that will not be served (typing gets no answer).
pub(crate) fn refuse(cmd: Cmd, result: ReplyResult) {
    match cmd.op {
        Op::Typing(_) | Op::EdgeGone => {}
        Op::Unsubscribe => reply(&cmd.edge, cmd.req_id, ReplyResult::Ok(pb::Empty {})),
        _ => reply(&cmd.edge, cmd.req_id, result),
    }
}

/// A send that is new so far, with the requests it answers.
struct NewMessage {
    message: pb::Message,
    sender: (EdgeConn, u64),
    /// Later requests of the same batch with the same client id.
    repeats: Vec<(EdgeConn, u64)>,
}

/// What a send is, before the store has seen it.
enum Check {
    New,
    /// Repeats the batch's send at this index.
    InBatch(usize),
    /// Repeats a send this writer appended before.
    Repeat(pb::Message),
}

fn answer_send(edge: &EdgeConn, req_id: u64, message: pb::Message, duplicate: bool) {
    reply(edge, req_id, ReplyResult::Send(pb::SendResult { message: Some(message), duplicate }));
}

fn fail_sends(fresh: Vec<NewMessage>, result: &ReplyResult) {
    for f in fresh {
        for (edge, req_id) in f.repeats.into_iter().chain([f.sender]) {
            reply(&edge, req_id, result.clone());
        }
    }
}

/// Runs the writer of `chat_id` until it has been idle (no command, no
/// subscriber, no one typing) for `settings.idle`, or its queue closes.
pub(crate) async fn run_chat(chat_id: String, mut rx: mpsc::Receiver<Cmd>, settings: ChatSettings) {
    // Claim first, then read: whatever an older owner wrote before the claim
    // is in what we read, and nothing it writes after the claim is accepted.
    let loaded = match settings.store.claim(&chat_id, &settings.owner).await {
        Ok(epoch) => settings.store.get_chat(&chat_id).await.map(|(chat, last)| (epoch, chat, last)),
        Err(e) => Err(e),
    };
    let mut state = match loaded {
        Ok((epoch, chat, last_seq)) => ChatState {
            chat_id: chat_id.clone(),
            epoch,
            fenced: false,
            chat,
            last_seq,
            // Edges subscribed to an earlier writer of this chat stay subscribed.
            subscribers: settings.parked.take(&chat_id),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            tail: Tail::new(TAIL_MESSAGES, TAIL_BYTES),
            cursors: HashMap::new(),
            typing: HashMap::new(),
        },
        Err(e) => {
            // Answer what is queued, then stop: the next command starts afresh.
            rx.close();
            let refused = write_error(e);
            while let Ok(cmd) = rx.try_recv() {
                refuse(cmd, refused.clone());
            }
            return;
        }
    };
    let mut batch: Vec<Cmd> = Vec::new();
    let mut last_command = Instant::now();
    loop {
        if state.fenced {
            // Another router owns the chat now: hand everything queued back,
            // and keep the subscribers for the next writer here.
            rx.close();
            settings.parked.put(&chat_id, std::mem::take(&mut state.subscribers));
            for cmd in batch.drain(..).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                refuse(cmd, error(pb::ErrorCode::Unavailable, "the chat moved to another router, retry"));
            }
            return;
        }
        if !batch.is_empty() {
            match rx.try_recv() {
                Ok(cmd) if batch.len() < MAX_SEND_BATCH => state.handle(cmd, &mut batch, &settings).await,
                Ok(cmd) => {
                    state.flush(&mut batch, &settings.store).await;
                    state.handle(cmd, &mut batch, &settings).await;
                }
                Err(_) => state.flush(&mut batch, &settings.store).await,
            }
            continue;
        }
        let idle_at = last_command + settings.idle;
        let wake = state.typing.values().map(|t| t.expires).min().map_or(idle_at, |t| t.min(idle_at));
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => {
                    last_command = Instant::now();
                    state.handle(cmd, &mut batch, &settings).await;
                }
                None => return,
            },
            () = tokio::time::sleep_until(wake) => {
                state.expire_typing(Instant::now());
                if Instant::now() >= idle_at && state.subscribers.is_empty() && state.typing.is_empty() {
                    rx.close();
                    // Anything that raced in is still served before stopping.
                    while let Ok(cmd) = rx.try_recv() {
                        state.handle(cmd, &mut batch, &settings).await;
                    }
                    state.flush(&mut batch, &settings.store).await;
                    return;
                }
            }
        }
    }
}

impl ChatState {
    /// Notes a fencing error: this writer stops after the current command.
    fn fenced_by(&mut self, e: StoreError) -> StoreError {
        if matches!(e, StoreError::Fenced) {
            tracing::info!(chat.id = %self.chat_id, epoch = self.epoch, "a newer owner claimed the chat: stopping");
            self.fenced = true;
        }
        e
    }

    fn member(&self, user: &str) -> Option<&pb::Member> {
        self.chat.members.iter().find(|m| m.user_id == user)
    }

    fn is_member(&self, user: &str) -> bool {
        self.member(user).is_some()
    }

    /// Sends are batched; anything else first sees every send queued before it.
    async fn handle(&mut self, cmd: Cmd, batch: &mut Vec<Cmd>, settings: &ChatSettings) {
        if self.chat.members.is_empty() {
            // The group was deleted when its last member left.
            return refuse(cmd, not_found("no such chat"));
        }
        if matches!(cmd.op, Op::Send(_)) {
            batch.push(cmd);
            return;
        }
        self.flush(batch, &settings.store).await;
        let Cmd { req_id, user, edge, op } = cmd;
        let store = &settings.store;
        let result: OpResult = match op {
            Op::Send(_) => return,
            Op::Join(op) => self.join(store, &user, &edge, op).await,
            Op::Subscribe => {
                // An empty user is the edge re-subscribing after a reconnect.
                if !user.is_empty() && !self.is_member(&user) {
                    Err(forbidden("not a member of this chat"))
                } else {
                    self.subscribers.insert(edge.key(), edge.clone());
                    Ok(ReplyResult::Join(pb::JoinResult { last_seq: self.last_seq, ..Default::default() }))
                }
            }
            Op::Unsubscribe => {
                self.subscribers.remove(&edge.key());
                Ok(ReplyResult::Ok(pb::Empty {}))
            }
            Op::EdgeGone => {
                self.subscribers.remove(&edge.key());
                return;
            }
            Op::Announce => self.announce(store, &settings.edges).await,
            Op::Edit(op) => self.edit(store, &user, op).await,
            Op::Delete(op) => self.delete(store, &user, op).await,
            Op::React(op) => self.react(store, &user, op).await,
            Op::Read(op) => self.read(store, &user, op).await,
            Op::Manage(op) => self.manage(store, &settings.edges, &user, op).await,
            Op::Typing(op) => {
                self.typing(&user, op.start, Instant::now(), settings);
                return;
            }
        };
        reply(&edge, req_id, result.unwrap_or_else(|e| e));
    }

    async fn join(&mut self, store: &Arc<dyn Store>, user: &str, edge: &EdgeConn, op: pb::JoinOp) -> OpResult {
        if !self.is_member(user) {
            return Err(forbidden("not a member of this chat"));
        }
        let (missed, has_more) = match op.since_seq {
            Some(since) if since < self.last_seq => {
                let limit = op.limit.clamp(1, 1000) as usize;
                match self.tail.since(since, self.last_seq, limit) {
                    Some(found) => found,
                    None => {
                        let h = store
                            .history(&self.chat_id, Some(since), Some(self.last_seq + 1), limit)
                            .await
                            .map_err(|e| store_error(&e))?;
                        (h.messages, h.has_more)
                    }
                }
            }
            _ => (Vec::new(), false),
        };
        let last_read_seq = self.cursor(store, user).await?;
        self.subscribers.insert(edge.key(), edge.clone());
        Ok(ReplyResult::Join(pb::JoinResult { last_seq: self.last_seq, last_read_seq, missed, has_more }))
    }

    /// Reloads the chat (just created) and tells every edge.
    async fn announce(&mut self, store: &Arc<dyn Store>, edges: &EdgeRegistry) -> OpResult {
        let (chat, _) = store.get_chat(&self.chat_id).await.map_err(|e| store_error(&e))?;
        self.chat = chat;
        let added = self.chat.members.iter().map(|m| m.user_id.clone()).collect();
        self.publish_chat(edges, added, Vec::new());
        Ok(ReplyResult::Ok(pb::Empty {}))
    }

    /// Sends `chat:update` through every edge. Every edge is subscribed
    /// before it hears of the change, so no message can slip between; edges
    /// with no member sockets unsubscribe again.
    fn publish_chat(&mut self, edges: &EdgeRegistry, added: Vec<String>, removed: Vec<String>) {
        let frame = Kind::Delivery(pb::Delivery {
            chat_id: self.chat_id.clone(),
            event: Some(pb::delivery::Event::ChatUpdate(pb::ChatUpdate {
                chat: Some(self.chat.clone()),
                last_seq: self.last_seq,
                added_user_ids: added,
                removed_user_ids: removed,
            })),
        });
        for other in edges.all() {
            if other.send(frame.clone()) {
                self.subscribers.insert(other.key(), other);
            }
        }
    }

    /// Title, members and roles (CONTRACT §7, §8.10, §8.27).
    async fn manage(&mut self, store: &Arc<dyn Store>, edges: &EdgeRegistry, user: &str, op: pb::ManageOp) -> OpResult {
        use pb::manage_op::Change;
        let validation = |m: &str| error(pb::ErrorCode::Validation, m);
        let caller_admin = match self.member(user) {
            Some(m) => m.role == "admin",
            None => return Err(forbidden("not a member of this chat")),
        };
        let mut chat = self.chat.clone();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let now = now_ms();
        match op.change {
            None => return Err(validation("no change given")),
            Some(Change::Title(title)) => {
                if !caller_admin {
                    return Err(forbidden("only an admin may rename the chat"));
                }
                if chat.title.as_deref() == Some(title.as_str()) {
                    return Ok(ReplyResult::Chat(chat));
                }
                chat.title = Some(title);
            }
            Some(Change::AddMembers(ids)) => {
                if !caller_admin {
                    return Err(forbidden("only an admin may add members"));
                }
                if chat.kind == "dm" {
                    return Err(validation("a dm's members cannot change"));
                }
                for id in ids.user_ids {
                    if !chat.members.iter().any(|m| m.user_id == id) {
                        chat.members.push(pb::Member { user_id: id.clone(), role: "member".into(), joined_at_ms: now });
                        added.push(id);
                    }
                }
                if added.is_empty() {
                    return Ok(ReplyResult::Chat(chat));
                }
            }
            Some(Change::RemoveMember(target)) => {
                if target != user && !caller_admin {
                    return Err(forbidden("only an admin may remove another member"));
                }
                if chat.kind == "dm" {
                    return Err(validation("a dm's members cannot change"));
                }
                let Some(i) = chat.members.iter().position(|m| m.user_id == target) else {
                    return Err(not_found("not a member of this chat"));
                };
                chat.members.remove(i);
                removed.push(target);
                // The longest-standing member inherits a group left without an admin.
                if !chat.members.is_empty() && !chat.members.iter().any(|m| m.role == "admin") {
                    chat.members[0].role = "admin".into();
                }
            }
            Some(Change::SetRole(change)) => {
                if !caller_admin {
                    return Err(forbidden("only an admin may change roles"));
                }
                if change.role != "admin" && change.role != "member" {
                    return Err(validation("role must be admin or member"));
                }
                let admins = chat.members.iter().filter(|m| m.role == "admin").count();
                let Some(m) = chat.members.iter_mut().find(|m| m.user_id == change.user_id) else {
                    return Err(not_found("not a member of this chat"));
                };
                if m.role == change.role {
                    return Ok(ReplyResult::Chat(chat));
                }
                if m.role == "admin" && admins == 1 {
                    return Err(validation("the last admin cannot be demoted"));
                }
                m.role = change.role;
            }
        }
        chat.updated_at_ms = now;
        let delete = chat.members.is_empty();
        store
            .save_chat(chat.clone(), removed.clone(), delete, Some(self.epoch))
            .await
            .map_err(|e| self.fenced_by(e))
            .map_err(write_error)?;
        self.chat = chat;
        self.publish_chat(edges, added, removed);
        Ok(ReplyResult::Chat(self.chat.clone()))
    }

    /// A live (not deleted) message of this chat, for a member.
    async fn live_message(
        &self,
        store: &Arc<dyn Store>,
        user: &str,
        message_id: &str,
    ) -> Result<pb::Message, ReplyResult> {
        if !self.is_member(user) {
            return Err(forbidden("not a member of this chat"));
        }
        match store.get_message(&self.chat_id, message_id, 0).await {
            Ok(Some(m)) if !m.deleted => Ok(m),
            Ok(_) => Err(not_found("no such message")),
            Err(e) => Err(store_error(&e)),
        }
    }

    async fn edit(&mut self, store: &Arc<dyn Store>, user: &str, op: pb::EditOp) -> OpResult {
        let mut m = self.live_message(store, user, &op.message_id).await?;
        if m.sender_id != user {
            return Err(forbidden("only the sender may edit a message"));
        }
        m.body = op.body;
        m.edited_at_ms = Some(now_ms());
        store.put_message(m.clone(), Some(self.epoch)).await.map_err(|e| self.fenced_by(e)).map_err(write_error)?;
        self.tail.update(&m);
        self.broadcast(events::message_updated(&m), None);
        Ok(json(events::edit_ack(&m)))
    }

    async fn delete(&mut self, store: &Arc<dyn Store>, user: &str, op: pb::DeleteOp) -> OpResult {
        let Some(member) = self.member(user) else {
            return Err(forbidden("not a member of this chat"));
        };
        let admin = member.role == "admin";
        let mut m = match store.get_message(&self.chat_id, &op.message_id, 0).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(not_found("no such message")),
            Err(e) => return Err(store_error(&e)),
        };
        if m.sender_id != user && !admin {
            return Err(forbidden("only the sender or a chat admin may delete a message"));
        }
        if !m.deleted {
            m.deleted = true;
            m.body.clear();
            m.reactions.clear();
            store.put_message(m.clone(), Some(self.epoch)).await.map_err(|e| self.fenced_by(e)).map_err(write_error)?;
            self.tail.update(&m);
            self.broadcast(events::message_deleted(&m), None);
        }
        Ok(json(serde_json::json!({ "messageId": m.id })))
    }

    async fn react(&mut self, store: &Arc<dyn Store>, user: &str, op: pb::ReactOp) -> OpResult {
        let mut m = self.live_message(store, user, &op.message_id).await?;
        let changed = if op.add {
            match m.reactions.iter_mut().find(|r| r.emoji == op.emoji) {
                Some(r) if r.user_ids.iter().any(|u| u == user) => false,
                Some(r) => {
                    r.user_ids.push(user.to_string());
                    true
                }
                None => {
                    m.reactions.push(pb::Reaction { emoji: op.emoji.clone(), user_ids: vec![user.to_string()] });
                    true
                }
            }
        } else {
            let before: usize = m.reactions.iter().map(|r| r.user_ids.len()).sum();
            for r in &mut m.reactions {
                if r.emoji == op.emoji {
                    r.user_ids.retain(|u| u != user);
                }
            }
            m.reactions.retain(|r| !r.user_ids.is_empty());
            m.reactions.iter().map(|r| r.user_ids.len()).sum::<usize>() != before
        };
        if changed {
            store.put_message(m.clone(), Some(self.epoch)).await.map_err(|e| self.fenced_by(e)).map_err(write_error)?;
            self.tail.update(&m);
            self.broadcast(events::reaction_update(&m, &op.emoji, user, op.add), None);
        }
        Ok(json(serde_json::json!({})))
    }

    async fn cursor(&mut self, store: &Arc<dyn Store>, user: &str) -> Result<u64, ReplyResult> {
        if let Some(c) = self.cursors.get(user) {
            return Ok(*c);
        }
        let c = store.get_cursor(&self.chat_id, user).await.map_err(|e| store_error(&e))?;
        self.cursors.insert(user.to_string(), c);
        Ok(c)
    }

    async fn read(&mut self, store: &Arc<dyn Store>, user: &str, op: pb::ReadOp) -> OpResult {
        if !self.is_member(user) {
            return Err(forbidden("not a member of this chat"));
        }
        let target = if op.message_id.is_empty() {
            let seq = op.seq.unwrap_or(0);
            if seq > self.last_seq {
                return Err(error(pb::ErrorCode::Validation, "seq is beyond the chat's last message"));
            }
            match store.get_message(&self.chat_id, "", seq).await {
                Ok(Some(m)) => m,
                Ok(None) => pb::Message { seq, ..Default::default() },
                Err(e) => return Err(store_error(&e)),
            }
        } else {
            match store.get_message(&self.chat_id, &op.message_id, 0).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(not_found("no such message")),
                Err(e) => return Err(store_error(&e)),
            }
        };
        let current = self.cursor(store, user).await?;
        let read_at = now_ms();
        if target.seq <= current {
            return Ok(json(events::read_ack(current, read_at)));
        }
        let now_at = store.set_cursor(&self.chat_id, user, target.seq).await.map_err(write_error)?;
        self.cursors.insert(user.to_string(), now_at);
        self.broadcast(events::receipt_update(&self.chat_id, user, &target, read_at), None);
        Ok(json(events::read_ack(now_at, read_at)))
    }

    /// Typing (CONTRACT §5, §8.12): non-members are ignored silently; a start
    /// within the debounce window is not re-broadcast but renews the expiry.
    fn typing(&mut self, user: &str, start: bool, now: Instant, settings: &ChatSettings) {
        if !self.is_member(user) {
            return;
        }
        if !start {
            if self.typing.remove(user).is_some() {
                self.broadcast(events::typing(&self.chat_id, user, false), Some(user));
            }
            return;
        }
        let expires = now + settings.typing_ttl;
        match self.typing.get_mut(user) {
            Some(t) if now < t.last_broadcast + settings.typing_debounce => t.expires = expires,
            _ => {
                self.typing.insert(user.to_string(), Typing { last_broadcast: now, expires });
                self.broadcast(events::typing(&self.chat_id, user, true), Some(user));
            }
        }
    }

    fn expire_typing(&mut self, now: Instant) {
        let expired: Vec<String> =
            self.typing.iter().filter(|(_, t)| t.expires <= now).map(|(u, _)| u.clone()).collect();
        for user in expired {
            self.typing.remove(&user);
            self.broadcast(events::typing(&self.chat_id, &user, false), Some(&user));
        }
    }

    /// A repeat of a send this writer saw recently (memory only: the store
    /// checks the rest within the append, see [`AppendBatch::repeats_since_ms`]).
    fn recently_sent(&self, user: &str, client_id: &str) -> Option<&pb::Message> {
        let m = self.recent.get(&(user.to_string(), client_id.to_string()))?;
        (m.created_at_ms >= now_ms() - IDEMPOTENCY_WINDOW_MS).then_some(m)
    }

    fn remember(&mut self, m: &pb::Message) {
        let key = (m.sender_id.clone(), m.client_id.clone());
        if self.recent.insert(key.clone(), m.clone()).is_none() {
            self.recent_order.push_back(key);
        }
        while self.recent_order.len() > RECENT_CLIENT_IDS {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    /// Checks one send against the chat and the sends before it.
    async fn check_send(
        &self,
        store: &Arc<dyn Store>,
        fresh: &[NewMessage],
        user: &str,
        op: &pb::SendOp,
    ) -> Result<Check, ReplyResult> {
        if !self.is_member(user) {
            return Err(forbidden("not a member of this chat"));
        }
        if let Some(i) = fresh.iter().position(|f| f.message.sender_id == user && f.message.client_id == op.client_id) {
            return Ok(Check::InBatch(i));
        }
        if let Some(m) = self.recently_sent(user, &op.client_id) {
            return Ok(Check::Repeat(m.clone()));
        }
        if let Some(retry_after_ms) = op.rate_limited_retry_ms {
            // A repeat is answered even while rate limited (CONTRACT rule 22).
            let not_before = now_ms() - IDEMPOTENCY_WINDOW_MS;
            match store.find_by_client_id(&self.chat_id, user, &op.client_id, not_before).await {
                Ok(Some(m)) => return Ok(Check::Repeat(m)),
                Ok(None) => {}
                Err(e) => return Err(store_error(&e)),
            }
            return Err(ReplyResult::Error(pb::Error {
                code: pb::ErrorCode::RateLimited as i32,
                message: "too many messages, retry later".into(),
                retry_after_ms: Some(retry_after_ms),
            }));
        }
        if let Some(target) = &op.reply_to {
            if !fresh.iter().any(|f| &f.message.id == target) {
                match store.get_message(&self.chat_id, target, 0).await {
                    Ok(Some(m)) if !m.deleted => {}
                    Ok(_) => return Err(not_found("replyTo names no message of this chat")),
                    Err(e) => return Err(store_error(&e)),
                }
            }
        }
        Ok(Check::New)
    }

    /// Appends the waiting sends as one batch, then delivers and acks them.
    /// Sends the store finds to repeat earlier ones are answered with those
    /// and left out, and the rest is appended again.
    async fn flush(&mut self, batch: &mut Vec<Cmd>, store: &Arc<dyn Store>) {
        let mut fresh: Vec<NewMessage> = Vec::with_capacity(batch.len());
        for cmd in batch.drain(..) {
            let Op::Send(op) = cmd.op else { continue };
            match self.check_send(store, &fresh, &cmd.user, &op).await {
                Err(e) => reply(&cmd.edge, cmd.req_id, e),
                Ok(Check::InBatch(i)) => fresh[i].repeats.push((cmd.edge, cmd.req_id)),
                Ok(Check::Repeat(m)) => answer_send(&cmd.edge, cmd.req_id, m, true),
                Ok(Check::New) => {
                    let message = pb::Message {
                        chat_id: self.chat_id.clone(),
                        id: uuid::Uuid::now_v7().to_string(),
                        sender_id: cmd.user,
                        body: op.body,
                        created_at_ms: now_ms(),
                        client_id: op.client_id,
                        reply_to: op.reply_to,
                        ..Default::default()
                    };
                    fresh.push(NewMessage { message, sender: (cmd.edge, cmd.req_id), repeats: Vec::new() });
                }
            }
        }
        // Each round either writes or leaves out at least one repeat.
        while !fresh.is_empty() {
            for (i, f) in fresh.iter_mut().enumerate() {
                f.message.seq = self.last_seq + 1 + i as u64;
            }
            let append = AppendBatch {
                chat_id: self.chat_id.clone(),
                messages: fresh.iter().map(|f| f.message.clone()).collect(),
                epoch: Some(self.epoch),
                repeats_since_ms: Some(now_ms() - IDEMPOTENCY_WINDOW_MS),
            };
            match store.append(append).await {
                Ok(Appended::Written(last)) => {
                    self.last_seq = last;
                    for f in &fresh {
                        self.remember(&f.message);
                        self.tail.push(&f.message);
                        self.deliver(&f.message);
                    }
                    for f in fresh {
                        for (edge, req_id) in f.repeats {
                            answer_send(&edge, req_id, f.message.clone(), true);
                        }
                        answer_send(&f.sender.0, f.sender.1, f.message, false);
                    }
                    return;
                }
                Ok(Appended::Repeats(stored)) => {
                    let before = fresh.len();
                    for earlier in stored {
                        let same = |f: &NewMessage| {
                            f.message.sender_id == earlier.sender_id && f.message.client_id == earlier.client_id
                        };
                        if let Some(i) = fresh.iter().position(same) {
                            let f = fresh.remove(i);
                            for (edge, req_id) in f.repeats.into_iter().chain([f.sender]) {
                                answer_send(&edge, req_id, earlier.clone(), true);
                            }
                            self.remember(&earlier);
                        }
                    }
                    if fresh.len() == before {
                        tracing::error!(chat.id = %self.chat_id, "the store named repeats that are not in the batch");
                        // Whatever the store did, it can't be told from this answer.
                        let result =
                            error(pb::ErrorCode::Unavailable, "storage answer unclear, retry with the same ids");
                        return fail_sends(fresh, &result);
                    }
                }
                Err(e) => {
                    let e = self.fenced_by(e);
                    // An outage fails every send of every chat: one line per interval.
                    use confab_common::log_limit::{LogLimit, DEFAULT_INTERVAL};
                    static APPEND_FAILED: LogLimit = LogLimit::new(DEFAULT_INTERVAL);
                    if let Some(suppressed) = APPEND_FAILED.allow() {
                        tracing::warn!(chat.id = %self.chat_id, error = %e, suppressed, "append failed");
                    }
                    // Whatever happened, continue from what the store holds.
                    self.tail.clear();
                    if let Ok((_, last)) = store.get_chat(&self.chat_id).await {
                        self.last_seq = last;
                    }
                    return fail_sends(fresh, &write_error(e));
                }
            }
        }
    }

    /// One delivery per subscribed edge; an edge whose queue is full is cut
    /// off (it reconnects and recovers from the store).
    fn deliver(&mut self, m: &pb::Message) {
        self.send_all(pb::delivery::Event::MessageNew(m.clone()));
    }

    fn broadcast(&mut self, (name, payload): (&'static str, serde_json::Value), except_user: Option<&str>) {
        self.send_all(pb::delivery::Event::ChatEvent(pb::Event {
            name: name.to_string(),
            json: payload.to_string(),
            except_user: except_user.map(str::to_string),
        }));
    }

    fn send_all(&mut self, event: pb::delivery::Event) {
        let frame = Kind::Delivery(pb::Delivery { chat_id: self.chat_id.clone(), event: Some(event) });
        self.subscribers.retain(|_, edge| edge.send(frame.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_api::store::NewChat;
    use confab_store::EmbeddedStore;

    /// A group chat of alice and bob.
    async fn group_chat(store: &Arc<dyn Store>) -> pb::Chat {
        let new = NewChat {
            kind: "group".into(),
            title: None,
            created_by: "alice".into(),
            member_ids: vec!["alice".into(), "bob".into()],
        };
        store.create_chat(new).await.unwrap().0
    }

    fn settings(store: &Arc<dyn Store>) -> ChatSettings {
        ChatSettings {
            store: store.clone(),
            owner: "router-test".into(),
            edges: EdgeRegistry::default(),
            parked: Parked::default(),
            idle: Duration::from_secs(60),
            typing_ttl: Duration::from_secs(5),
            typing_debounce: Duration::from_secs(2),
        }
    }

    fn send(client_id: &str, edge: &EdgeConn, req_id: u64) -> Cmd {
        let op = pb::SendOp { body: format!("body {client_id}"), client_id: client_id.into(), ..Default::default() };
        Cmd { req_id, user: "alice".into(), edge: edge.clone(), op: Op::Send(op) }
    }

    /// A send that an earlier owner of the chat stored is answered with the
    /// stored message; the new sends of the same batch are still written.
    #[tokio::test]
    async fn the_store_finds_repeats_this_writer_never_saw() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let chat = group_chat(&store).await;
        let earlier = pb::Message {
            chat_id: chat.id.clone(),
            id: "earlier".into(),
            seq: 1,
            sender_id: "alice".into(),
            created_at_ms: now_ms(),
            client_id: "c1".into(),
            ..Default::default()
        };
        let batch =
            AppendBatch { chat_id: chat.id.clone(), messages: vec![earlier], epoch: None, repeats_since_ms: None };
        store.append(batch).await.unwrap();

        let (frames_tx, mut frames) = mpsc::channel(16);
        let edge = EdgeConn::new(1, frames_tx, tokio_util::sync::CancellationToken::new());
        let (tx, rx) = mpsc::channel(16);
        // Queued before the writer starts, so they form one batch.
        tx.send(send("c2", &edge, 10)).await.unwrap();
        tx.send(send("c1", &edge, 11)).await.unwrap();
        tx.send(send("c2", &edge, 12)).await.unwrap();
        let writer = tokio::spawn(run_chat(chat.id.clone(), rx, settings(&store)));

        let mut acks = HashMap::new();
        while acks.len() < 3 {
            let frame = tokio::time::timeout(Duration::from_secs(5), frames.recv()).await.unwrap().unwrap().unwrap();
            if let Some(Kind::Reply(pb::Reply { id, result: Some(ReplyResult::Send(r)) })) = frame.kind {
                let m = r.message.unwrap();
                acks.insert(id, (m.client_id, m.seq, r.duplicate));
            }
        }
        assert_eq!(acks[&10], ("c2".to_string(), 2, false));
        assert_eq!(acks[&11], ("c1".to_string(), 1, true));
        assert_eq!(acks[&12], ("c2".to_string(), 2, true));
        let history = store.history(&chat.id, None, None, 10).await.unwrap();
        let stored: Vec<_> = history.messages.iter().map(|m| (m.seq, m.client_id.as_str())).collect();
        assert_eq!(stored, vec![(1, "c1"), (2, "c2")]);
        drop(tx);
        writer.await.unwrap();
    }

    /// A join with `sinceSeq` is answered from the writer's tail: the same
    /// messages the store holds, an edit included.
    #[tokio::test]
    async fn a_join_since_a_seq_sees_what_the_store_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let chat = group_chat(&store).await;
        let (frames_tx, mut frames) = mpsc::channel(64);
        let edge = EdgeConn::new(1, frames_tx, tokio_util::sync::CancellationToken::new());
        let (tx, rx) = mpsc::channel(16);
        let writer = tokio::spawn(run_chat(chat.id.clone(), rx, settings(&store)));
        let mut reply = async |cmd: Cmd| {
            let id = cmd.req_id;
            tx.send(cmd).await.unwrap();
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(5), frames.recv()).await.unwrap().unwrap();
                if let Some(Kind::Reply(r)) = frame.unwrap().kind {
                    if r.id == id {
                        return r.result.unwrap();
                    }
                }
            }
        };
        let mut ids = Vec::new();
        for i in 1..=3 {
            match reply(send(&format!("c{i}"), &edge, i)).await {
                ReplyResult::Send(r) => ids.push(r.message.unwrap().id),
                other => panic!("send: {other:?}"),
            }
        }
        let edit = pb::EditOp { message_id: ids[1].clone(), body: "edited".into() };
        let cmd = Cmd { req_id: 10, user: "alice".into(), edge: edge.clone(), op: Op::Edit(edit) };
        assert!(matches!(reply(cmd).await, ReplyResult::Json(_)));
        let join = pb::JoinOp { since_seq: Some(1), limit: 100 };
        let cmd = Cmd { req_id: 11, user: "bob".into(), edge: edge.clone(), op: Op::Join(join) };
        let ReplyResult::Join(joined) = reply(cmd).await else { panic!("join failed") };
        let stored = store.history(&chat.id, Some(1), None, 100).await.unwrap();
        assert_eq!(joined.missed, stored.messages);
        let bodies: Vec<&str> = joined.missed.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, vec!["edited", "body c3"]);
        assert!(!joined.has_more);
        drop(tx);
        writer.await.unwrap();
    }
}
