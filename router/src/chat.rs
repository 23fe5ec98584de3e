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
//!
//! The writer loop, its state and the dispatch of commands are here; each
//! kind of command is served by a submodule: `send` (batched sends and
//! idempotency), `members` (creation, title, members and roles), `edits`
//! (edit, delete, react), `receipts` (read cursors) and `typing`.

mod edits;
mod members;
mod receipts;
mod send;
mod typing;

use crate::edges::{EdgeConn, EdgeRegistry};
use crate::metrics::Metrics;
use crate::tail::Tail;
use confab_api::store::{AppendBatch, Appended, Store, StoreError};
use confab_common::ChatId;
use confab_proto::v1 as pb;
use confab_proto::v1::{reply::Result as ReplyResult, router_frame::Kind};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

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
    /// The request's span (disabled unless the edge sent trace context):
    /// what the writer does for it happens inside it.
    pub span: tracing::Span,
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
    pub metrics: Metrics,
}

struct ChatState {
    chat_id: ChatId,
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
    typing: HashMap<String, typing::Typing>,
    metrics: Metrics,
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

/// The client's error for a store failure (see [`StoreError::client_error`]).
fn store_error(e: &StoreError) -> ReplyResult {
    ReplyResult::Error(e.client_error())
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

/// Runs the writer of `chat_id` until it has been idle (no command, no
/// subscriber, no one typing) for `settings.idle`, or its queue closes.
pub(crate) async fn run_chat(chat_id: ChatId, rx: mpsc::Receiver<Cmd>, settings: ChatSettings) {
    settings.metrics.chats.add(1, &[]);
    let metrics = settings.metrics.clone();
    serve_chat(chat_id, rx, settings).await;
    metrics.chats.add(-1, &[]);
}

async fn serve_chat(chat_id: ChatId, mut rx: mpsc::Receiver<Cmd>, settings: ChatSettings) {
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
            metrics: settings.metrics.clone(),
        },
        Err(e) => {
            settings.metrics.store_error(e.kind_name());
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
            state.metrics.queue_depth.record(rx.len() as u64, &[]);
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
        let Cmd { req_id, user, edge, op, span } = cmd;
        let Some(result) = self.apply(op, &user, &edge, settings).instrument(span).await else { return };
        reply(&edge, req_id, result.unwrap_or_else(|e| e));
    }

    /// Applies one command other than a send; `None` for those answered
    /// otherwise (typing, a gone edge).
    async fn apply(&mut self, op: Op, user: &str, edge: &EdgeConn, settings: &ChatSettings) -> Option<OpResult> {
        let store = &settings.store;
        let result = match op {
            Op::Send(_) => return None,
            Op::Join(op) => self.join(store, user, edge, op).await,
            Op::Subscribe => {
                // An empty user is the edge re-subscribing after a reconnect.
                if !user.is_empty() && !self.is_member(user) {
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
                return None;
            }
            Op::Announce => self.announce(store, &settings.edges).await,
            Op::Edit(op) => self.edit(store, user, op).await,
            Op::Delete(op) => self.delete(store, user, op).await,
            Op::React(op) => self.react(store, user, op).await,
            Op::Read(op) => self.read(store, user, op).await,
            Op::Manage(op) => self.manage(store, &settings.edges, user, op).await,
            Op::Typing(op) => {
                self.typing(user, op.start, Instant::now(), settings);
                return None;
            }
        };
        Some(result)
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

    /// Sends one event of this chat to every subscribed edge.
    fn send_all(&mut self, event: pb::delivery::Event) {
        let frame = Kind::Delivery(pb::Delivery { chat_id: self.chat_id.to_string(), event: Some(event) });
        self.subscribers.retain(|_, edge| edge.send(frame.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_api::store::NewChat;
    use confab_common::time::now_ms;
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
            metrics: Metrics::new().unwrap(),
        }
    }

    fn counters() -> Arc<crate::edges::StreamCounters> {
        Metrics::new().unwrap().streams
    }

    fn send(client_id: &str, edge: &EdgeConn, req_id: u64) -> Cmd {
        let op = pb::SendOp { body: format!("body {client_id}"), client_id: client_id.into(), ..Default::default() };
        Cmd { req_id, user: "alice".into(), edge: edge.clone(), op: Op::Send(op), span: tracing::Span::none() }
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
        let batch = AppendBatch {
            chat_id: chat.id.clone().into(),
            messages: vec![earlier],
            epoch: None,
            repeats_since_ms: None,
        };
        store.append(batch).await.unwrap();

        let (frames_tx, mut frames) = mpsc::channel(16);
        let edge = EdgeConn::new(1, frames_tx, tokio_util::sync::CancellationToken::new(), counters());
        let (tx, rx) = mpsc::channel(16);
        // Queued before the writer starts, so they form one batch.
        tx.send(send("c2", &edge, 10)).await.unwrap();
        tx.send(send("c1", &edge, 11)).await.unwrap();
        tx.send(send("c2", &edge, 12)).await.unwrap();
        let writer = tokio::spawn(run_chat(chat.id.clone().into(), rx, settings(&store)));

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
        let history = store.history(&ChatId::from(&chat.id), None, None, 10).await.unwrap();
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
        let edge = EdgeConn::new(1, frames_tx, tokio_util::sync::CancellationToken::new(), counters());
        let (tx, rx) = mpsc::channel(16);
        let writer = tokio::spawn(run_chat(chat.id.clone().into(), rx, settings(&store)));
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
        let cmd = Cmd {
            req_id: 10,
            user: "alice".into(),
            edge: edge.clone(),
            op: Op::Edit(edit),
            span: tracing::Span::none(),
        };
        assert!(matches!(reply(cmd).await, ReplyResult::Edit(_)));
        let join = pb::JoinOp { since_seq: Some(1), limit: 100 };
        let cmd =
            Cmd { req_id: 11, user: "bob".into(), edge: edge.clone(), op: Op::Join(join), span: tracing::Span::none() };
        let ReplyResult::Join(joined) = reply(cmd).await else { panic!("join failed") };
        let stored = store.history(&ChatId::from(&chat.id), Some(1), None, 100).await.unwrap();
        assert_eq!(joined.missed, stored.messages);
        let bodies: Vec<&str> = joined.missed.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, vec!["edited", "body c3"]);
        assert!(!joined.has_more);
        drop(tx);
        writer.await.unwrap();
    }
}
