//! Sends: checking each against membership and idempotency, appending the
//! waiting ones as one batch, then delivering and acking them.

use super::{
    error, forbidden, not_found, reply, store_error, write_error, AppendBatch, Appended, ChatState, Cmd, Op, Store,
};
use crate::edges::EdgeConn;
use confab_common::telemetry::SPANS;
use confab_common::time::now_ms;
use confab_common::UserId;
use confab_proto::v1 as pb;
use confab_proto::v1::reply::Result as ReplyResult;
use std::sync::Arc;
use tracing::Instrument;

/// The span of one append: a child of the first send's request span,
/// linked to the others' (one batch serves several traces).
fn append_span(fresh: &[NewMessage]) -> tracing::Span {
    let Some(first) = fresh.first() else { return tracing::Span::none() };
    let span = tracing::info_span!(target: SPANS, parent: &first.span, "chat.append", batch = fresh.len());
    for other in &fresh[1..] {
        span.follows_from(&other.span);
    }
    span
}

/// How long a client id is remembered (CONTRACT §5).
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// Recently seen client ids kept in memory before asking the store.
const RECENT_CLIENT_IDS: usize = 4096;

/// A send that is new so far, with the requests it answers.
struct NewMessage {
    message: pb::Message,
    sender: (EdgeConn, u64),
    /// The sender's request span.
    span: tracing::Span,
    /// Later requests of the same batch with the same client id.
    repeats: Vec<(EdgeConn, u64)>,
}

/// What a send is, before the store has seen it.
enum Check {
    New,
    /// Repeats the batch's send at this index.
    InBatch(usize),
    /// Repeats a send this writer appended before.
    Repeat(Box<pb::Message>),
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

impl ChatState {
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
            return Ok(Check::Repeat(Box::new(m.clone())));
        }
        if let Some(retry_after_ms) = op.rate_limited_retry_ms {
            // A repeat is answered even while rate limited (CONTRACT rule 22).
            let not_before = now_ms() - IDEMPOTENCY_WINDOW_MS;
            match store.find_by_client_id(&self.chat_id, &UserId::from(user), &op.client_id, not_before).await {
                Ok(Some(m)) => return Ok(Check::Repeat(Box::new(m))),
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
    pub(super) async fn flush(&mut self, batch: &mut Vec<Cmd>, store: &Arc<dyn Store>) {
        let mut fresh: Vec<NewMessage> = Vec::with_capacity(batch.len());
        for cmd in batch.drain(..) {
            let Op::Send(op) = cmd.op else { continue };
            match self.check_send(store, &fresh, &cmd.user, &op).await {
                Err(e) => reply(&cmd.edge, cmd.req_id, e),
                Ok(Check::InBatch(i)) => fresh[i].repeats.push((cmd.edge, cmd.req_id)),
                Ok(Check::Repeat(m)) => answer_send(&cmd.edge, cmd.req_id, *m, true),
                Ok(Check::New) => {
                    let message = pb::Message {
                        chat_id: self.chat_id.to_string(),
                        id: uuid::Uuid::now_v7().to_string(),
                        sender_id: cmd.user,
                        body: op.body,
                        created_at_ms: now_ms(),
                        client_id: op.client_id,
                        reply_to: op.reply_to,
                        attachments: op.attachments,
                        attachments_json: op.attachments_json,
                        sender: op.sender,
                        ..Default::default()
                    };
                    let span = cmd.span;
                    fresh.push(NewMessage { message, sender: (cmd.edge, cmd.req_id), span, repeats: Vec::new() });
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
            let span = append_span(&fresh);
            self.metrics.batch.record(fresh.len() as u64, &[]);
            let started = std::time::Instant::now();
            let appended = store.append(append).instrument(span.clone()).await;
            self.metrics.append.record(started.elapsed().as_secs_f64(), &[]);
            match appended {
                Ok(Appended::Written(last)) => {
                    self.last_seq = last;
                    let started = std::time::Instant::now();
                    let _fanout = tracing::info_span!(target: SPANS, parent: &span, "chat.fanout").entered();
                    for f in &fresh {
                        self.remember(&f.message);
                        self.tail.push(&f.message);
                        self.deliver(&f.message);
                    }
                    self.metrics.fanout.record(started.elapsed().as_secs_f64(), &[]);
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
                    self.metrics.store_error(e.kind_name());
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
}
