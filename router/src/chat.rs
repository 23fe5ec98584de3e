//! The single writer of one chat.
//!
//! Every command for a chat goes through one bounded queue to one task, so
//! seq assignment needs no lock and ordering is the order of that queue.
//! Sends that are waiting together are appended as one batch (one store
//! round trip, one fsync); the task then delivers each message once per
//! subscribed edge and answers each sender. Nothing is delivered or acked
//! before the store has said it is durable.

use crate::edges::EdgeConn;
use confab_common::time::now_ms;
use confab_proto::v1 as pb;
use confab_proto::v1::{reply::Result as ReplyResult, router_frame::Kind};
use confab_store::{AppendBatch, Store, StoreError};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a client id is remembered (CONTRACT §5).
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// Recently seen client ids kept in memory before asking the store.
const RECENT_CLIENT_IDS: usize = 4096;
/// Sends appended in one store call at most.
const MAX_SEND_BATCH: usize = 128;

pub(crate) enum ChatCmd {
    Send {
        req_id: u64,
        user: String,
        op: pb::SendOp,
        edge: EdgeConn,
    },
    Join {
        req_id: u64,
        user: String,
        op: pb::JoinOp,
        edge: EdgeConn,
    },
    Subscribe {
        req_id: u64,
        user: String,
        edge: EdgeConn,
    },
    Unsubscribe {
        req_id: u64,
        edge: EdgeConn,
    },
    Announce {
        req_id: u64,
        edge: EdgeConn,
    },
    EdgeGone {
        edge_key: u64,
    },
}

pub(crate) struct ChatSettings {
    pub store: Arc<dyn Store>,
    /// Every edge stream attached to this router.
    pub edges: crate::edges::EdgeRegistry,
    pub idle: Duration,
}

struct PendingSend {
    req_id: u64,
    user: String,
    op: pb::SendOp,
    edge: EdgeConn,
}

struct ChatState {
    chat_id: String,
    chat: pb::Chat,
    last_seq: u64,
    subscribers: HashMap<u64, EdgeConn>,
    recent: HashMap<(String, String), pb::Message>,
    recent_order: VecDeque<(String, String)>,
}

fn error(code: pb::ErrorCode, message: impl Into<String>) -> ReplyResult {
    ReplyResult::Error(pb::Error {
        code: code as i32,
        message: message.into(),
    })
}

fn store_error(e: &StoreError) -> ReplyResult {
    match e {
        StoreError::NotFound => error(pb::ErrorCode::NotFound, "no such chat"),
        StoreError::Invalid(m) => error(pb::ErrorCode::Validation, m.clone()),
        StoreError::SeqConflict { .. } | StoreError::Unavailable(_) => error(
            pb::ErrorCode::Unavailable,
            "storage unavailable, retry with the same clientId",
        ),
        StoreError::Internal(_) => error(pb::ErrorCode::Internal, "storage error"),
    }
}

fn reply(edge: &EdgeConn, id: u64, result: ReplyResult) {
    edge.send(Kind::Reply(pb::Reply {
        id,
        result: Some(result),
    }));
}

/// Runs the writer of `chat_id` until it has been idle (no command and no
/// subscriber) for `settings.idle`, or its queue closes.
pub(crate) async fn run_chat(chat_id: String, mut rx: mpsc::Receiver<ChatCmd>, settings: ChatSettings) {
    let store = settings.store.clone();
    let mut state = match store.get_chat(&chat_id).await {
        Ok((chat, last_seq)) => ChatState {
            chat_id: chat_id.clone(),
            chat,
            last_seq,
            subscribers: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
        },
        Err(e) => {
            // Answer what is queued, then stop: the next command starts afresh.
            rx.close();
            while let Ok(cmd) = rx.try_recv() {
                refuse(cmd, store_error(&e));
            }
            return;
        }
    };
    let mut batch: Vec<PendingSend> = Vec::new();
    loop {
        let cmd = if batch.is_empty() {
            match tokio::time::timeout(settings.idle, rx.recv()).await {
                Ok(Some(cmd)) => cmd,
                Ok(None) => return,
                Err(_) if state.subscribers.is_empty() => {
                    rx.close();
                    // Anything that raced in is still served before stopping.
                    while let Ok(cmd) = rx.try_recv() {
                        state.handle_now(cmd, &mut batch, &settings).await;
                    }
                    state.flush(&mut batch, &settings.store).await;
                    return;
                }
                Err(_) => continue,
            }
        } else {
            match rx.try_recv() {
                Ok(cmd) if batch.len() < MAX_SEND_BATCH => cmd,
                Ok(cmd) => {
                    state.flush(&mut batch, &settings.store).await;
                    cmd
                }
                Err(_) => {
                    state.flush(&mut batch, &settings.store).await;
                    continue;
                }
            }
        };
        state.handle_now(cmd, &mut batch, &settings).await;
    }
}

pub(crate) fn refuse(cmd: ChatCmd, result: ReplyResult) {
    match cmd {
        ChatCmd::Send { req_id, edge, .. }
        | ChatCmd::Join { req_id, edge, .. }
        | ChatCmd::Subscribe { req_id, edge, .. } => reply(&edge, req_id, result),
        ChatCmd::Unsubscribe { req_id, edge } => reply(&edge, req_id, ReplyResult::Ok(pb::Empty {})),
        ChatCmd::Announce { req_id, edge } => reply(&edge, req_id, result),
        ChatCmd::EdgeGone { .. } => {}
    }
}

impl ChatState {
    fn is_member(&self, user: &str) -> bool {
        self.chat.members.iter().any(|m| m.user_id == user)
    }

    async fn handle_now(&mut self, cmd: ChatCmd, batch: &mut Vec<PendingSend>, settings: &ChatSettings) {
        let store = &settings.store;
        match cmd {
            ChatCmd::Send { req_id, user, op, edge } => {
                batch.push(PendingSend { req_id, user, op, edge });
            }
            other => {
                // Anything else sees the effect of every send queued before it.
                self.flush(batch, store).await;
                self.handle_other(other, settings).await;
            }
        }
    }

    async fn handle_other(&mut self, cmd: ChatCmd, settings: &ChatSettings) {
        let store = &settings.store;
        match cmd {
            // Sends never get here: handle_now batches them.
            ChatCmd::Send { req_id, user, op, edge } => {
                let mut one = vec![PendingSend { req_id, user, op, edge }];
                self.flush(&mut one, store).await;
            }
            ChatCmd::Join { req_id, user, op, edge } => {
                if !self.is_member(&user) {
                    return reply(
                        &edge,
                        req_id,
                        error(pb::ErrorCode::Forbidden, "not a member of this chat"),
                    );
                }
                let (missed, has_more) = match op.since_seq {
                    Some(since) if since < self.last_seq => {
                        let limit = op.limit.clamp(1, 1000) as usize;
                        match store
                            .history(&self.chat_id, Some(since), Some(self.last_seq + 1), limit)
                            .await
                        {
                            Ok(h) => (h.messages, h.has_more),
                            Err(e) => return reply(&edge, req_id, store_error(&e)),
                        }
                    }
                    _ => (Vec::new(), false),
                };
                self.subscribers.insert(edge.key(), edge.clone());
                reply(
                    &edge,
                    req_id,
                    ReplyResult::Join(pb::JoinResult {
                        last_seq: self.last_seq,
                        last_read_seq: 0,
                        missed,
                        has_more,
                    }),
                );
            }
            ChatCmd::Subscribe { req_id, user, edge } => {
                // An empty user is the edge re-subscribing after a reconnect.
                if !user.is_empty() && !self.is_member(&user) {
                    return reply(
                        &edge,
                        req_id,
                        error(pb::ErrorCode::Forbidden, "not a member of this chat"),
                    );
                }
                self.subscribers.insert(edge.key(), edge.clone());
                reply(
                    &edge,
                    req_id,
                    ReplyResult::Join(pb::JoinResult {
                        last_seq: self.last_seq,
                        last_read_seq: 0,
                        missed: Vec::new(),
                        has_more: false,
                    }),
                );
            }
            ChatCmd::Unsubscribe { req_id, edge } => {
                self.subscribers.remove(&edge.key());
                reply(&edge, req_id, ReplyResult::Ok(pb::Empty {}));
            }
            ChatCmd::EdgeGone { edge_key } => {
                self.subscribers.remove(&edge_key);
            }
            ChatCmd::Announce { req_id, edge } => {
                match store.get_chat(&self.chat_id).await {
                    Ok((chat, _)) => self.chat = chat,
                    Err(e) => return reply(&edge, req_id, store_error(&e)),
                }
                let frame = Kind::Delivery(pb::Delivery {
                    chat_id: self.chat_id.clone(),
                    event: Some(pb::delivery::Event::ChatUpdate(self.chat.clone())),
                });
                // Every edge is subscribed before it hears of the chat, so no
                // message can slip between; edges with no member sockets
                // unsubscribe again.
                for other in settings.edges.all() {
                    if other.send(frame.clone()) {
                        self.subscribers.insert(other.key(), other);
                    }
                }
                reply(&edge, req_id, ReplyResult::Ok(pb::Empty {}));
            }
        }
    }

    /// Looks a client id up in memory, then in the store.
    async fn known(
        &self,
        store: &Arc<dyn Store>,
        user: &str,
        client_id: &str,
    ) -> Result<Option<pb::Message>, StoreError> {
        if let Some(m) = self.recent.get(&(user.to_string(), client_id.to_string())) {
            if m.created_at_ms >= now_ms() - IDEMPOTENCY_WINDOW_MS {
                return Ok(Some(m.clone()));
            }
            return Ok(None);
        }
        store
            .find_by_client_id(&self.chat_id, user, client_id, now_ms() - IDEMPOTENCY_WINDOW_MS)
            .await
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

    /// Appends the waiting sends as one batch, then delivers and acks them.
    async fn flush(&mut self, batch: &mut Vec<PendingSend>, store: &Arc<dyn Store>) {
        if batch.is_empty() {
            return;
        }
        // (send, message, whether the message is a repeat of an earlier one)
        let mut answers: Vec<(PendingSend, pb::Message, bool)> = Vec::with_capacity(batch.len());
        let mut fresh: Vec<pb::Message> = Vec::with_capacity(batch.len());
        for send in batch.drain(..) {
            if !self.is_member(&send.user) {
                reply(
                    &send.edge,
                    send.req_id,
                    error(pb::ErrorCode::Forbidden, "not a member of this chat"),
                );
                continue;
            }
            // A repeat inside this batch is answered with the batch's message.
            if let Some(m) = fresh
                .iter()
                .find(|m| m.sender_id == send.user && m.client_id == send.op.client_id)
            {
                let m = m.clone();
                answers.push((send, m, true));
                continue;
            }
            match self.known(store, &send.user, &send.op.client_id).await {
                Ok(Some(m)) => {
                    reply(
                        &send.edge,
                        send.req_id,
                        ReplyResult::Send(pb::SendResult {
                            message: Some(m),
                            duplicate: true,
                        }),
                    );
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    reply(&send.edge, send.req_id, store_error(&e));
                    continue;
                }
            }
            let message = pb::Message {
                chat_id: self.chat_id.clone(),
                id: uuid::Uuid::now_v7().to_string(),
                seq: self.last_seq + 1 + fresh.len() as u64,
                sender_id: send.user.clone(),
                body: send.op.body.clone(),
                created_at_ms: now_ms(),
                client_id: send.op.client_id.clone(),
                reply_to: send.op.reply_to.clone(),
            };
            fresh.push(message.clone());
            answers.push((send, message, false));
        }
        if fresh.is_empty() {
            return;
        }
        match store
            .append(AppendBatch {
                chat_id: self.chat_id.clone(),
                messages: fresh.clone(),
            })
            .await
        {
            Ok(last) => {
                self.last_seq = last;
                for m in &fresh {
                    self.remember(m);
                    self.deliver(m);
                }
                for (send, m, duplicate) in answers {
                    reply(
                        &send.edge,
                        send.req_id,
                        ReplyResult::Send(pb::SendResult {
                            message: Some(m),
                            duplicate,
                        }),
                    );
                }
            }
            Err(e) => {
                tracing::warn!(chat.id = %self.chat_id, error = %e, "append failed");
                // Whatever happened, continue from what the store holds.
                if let Ok((_, last)) = store.get_chat(&self.chat_id).await {
                    self.last_seq = last;
                }
                let result = store_error(&e);
                for (send, _, _) in answers {
                    reply(&send.edge, send.req_id, result.clone());
                }
            }
        }
    }

    /// One delivery per subscribed edge; an edge whose queue is full is cut
    /// off (it reconnects and recovers from the store).
    fn deliver(&mut self, m: &pb::Message) {
        let frame = Kind::Delivery(pb::Delivery {
            chat_id: self.chat_id.clone(),
            event: Some(pb::delivery::Event::MessageNew(m.clone())),
        });
        self.subscribers.retain(|_, edge| edge.send(frame.clone()));
    }
}
