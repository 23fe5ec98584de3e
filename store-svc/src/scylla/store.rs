//! [`ScyllaStore`]: confab's [`Store`] over the [`Tables`] of a ScyllaDB
//! keyspace. Stateless: any number of store-svc replicas may serve one
//! keyspace, as every rule is kept by the tables themselves (the claim's
//! lightweight transaction, the fenced write timestamps) and by the check
//! each fenced write makes after it.

use super::fence::{self, buckets, timestamp};
use super::tables::{ChatRow, ClientKey, Head, MessageRow, NewRows, Owner, Tables};
use confab_api::store::{AppendBatch, Appended, History, NewChat, Store, StoreError};
use confab_common::{ChatId, UserId};
use confab_proto::v1::{Chat, ChatSummary, Message, Profile};
use futures::{StreamExt, TryStreamExt};
use prost::Message as _;
use std::future::Future;
use std::time::Duration;

/// How many claims may lose to a concurrent one before a claim gives up.
const CLAIM_ATTEMPTS: usize = 8;
/// Chats of one user read at once for the chat list.
const LIST_CONCURRENCY: usize = 16;
/// Rows an unread count reads at most per chat; past it, the rest of the
/// range counts as unread.
pub const UNREAD_SCAN: u64 = 10_000;

/// The ScyllaDB backend.
pub struct ScyllaStore<T> {
    tables: T,
    /// Every call ends by this deadline (the one routers and edges give
    /// their store calls): its outcome is then unknown, UNAVAILABLE.
    deadline: Duration,
}

fn decode_message(row: &MessageRow) -> Result<Message, StoreError> {
    Message::decode(row.msg.as_slice()).map_err(|e| StoreError::Internal(format!("message {}: {e}", row.seq)))
}

impl<T: Tables> ScyllaStore<T> {
    pub fn new(tables: T, deadline: Duration) -> Self {
        Self { tables, deadline }
    }

    async fn within<R>(&self, call: impl Future<Output = Result<R, StoreError>>) -> Result<R, StoreError> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!("no answer from ScyllaDB within {:?}", self.deadline))),
        }
    }

    /// The fence's second half: after a write made as the owner of `epoch`,
    /// that epoch must still be the chat's. If it is, any claim after it
    /// will read what was written (see docs/operations.md).
    async fn still_owner(&self, chat_id: &str, epoch: Option<u64>) -> Result<(), StoreError> {
        let Some(epoch) = epoch else { return Ok(()) };
        match self.tables.owner(chat_id).await? {
            Some(o) if o.epoch == epoch => Ok(()),
            None if epoch == 0 => Ok(()),
            _ => Err(StoreError::Fenced),
        }
    }

    /// The epoch a write carries: the writer's, or for an unfenced write
    /// (tools) the chat's current one, so that it is not shadowed by what
    /// the owner wrote before it.
    async fn write_epoch(&self, chat_id: &str, epoch: Option<u64>) -> Result<u64, StoreError> {
        match epoch {
            Some(e) => Ok(e),
            None => Ok(self.tables.owner(chat_id).await?.map_or(0, |o| o.epoch)),
        }
    }

    /// A chat and its head; `NotFound` when there is no such chat.
    async fn chat_and_head(&self, chat_id: &str) -> Result<(ChatRow, Head), StoreError> {
        let row = self.tables.chat(chat_id).await?.ok_or(StoreError::NotFound)?;
        Ok((row, self.tables.head(chat_id).await?.unwrap_or_default()))
    }

    /// The message stored at `seq`, if the head has reached it (a deposed
    /// owner's row past the head is not history).
    async fn live_row(&self, chat_id: &str, seq: u64) -> Result<Option<MessageRow>, StoreError> {
        let head = self.tables.head(chat_id).await?.unwrap_or_default();
        if seq == 0 || seq > head.last_seq {
            return Ok(None);
        }
        self.tables.message(chat_id, seq).await
    }

    /// The message an idempotency key names, if it is that sender's send.
    async fn keyed(
        &self,
        chat_id: &str,
        sender: &str,
        client_id: &str,
        key: ClientKey,
    ) -> Result<Option<Message>, StoreError> {
        match self.live_row(chat_id, key.seq).await? {
            Some(row) if row.sender_id == sender && row.client_id == client_id => Ok(Some(decode_message(&row)?)),
            _ => Ok(None),
        }
    }

    async fn summary(&self, chat_id: String, user_id: &str) -> Result<Option<(i64, ChatSummary)>, StoreError> {
        let (row, head, cursor) = futures::try_join!(
            self.tables.chat(&chat_id),
            self.tables.head(&chat_id),
            self.tables.cursor(&chat_id, user_id)
        )?;
        let Some(row) = row else { return Ok(None) };
        let head = head.unwrap_or_default();
        let last_read_seq = cursor.unwrap_or(0).min(head.last_seq);
        let unread = self.unread(&chat_id, user_id, last_read_seq, head.last_seq).await?;
        let activity = if head.last_seq > 0 { head.last_at } else { row.chat.created_at_ms };
        Ok(Some((activity, ChatSummary { chat: Some(row.chat), last_seq: head.last_seq, last_read_seq, unread })))
    }

    /// Unread (CONTRACT §8.7): the messages after the cursor less the
    /// user's own and the deleted ones.
    async fn unread(&self, chat_id: &str, user_id: &str, cursor: u64, last: u64) -> Result<u64, StoreError> {
        if last <= cursor {
            return Ok(0);
        }
        let lo = cursor + 1;
        let scan_hi = last.min(cursor.saturating_add(UNREAD_SCAN));
        let mut unread = last - scan_hi;
        for b in buckets(lo, scan_hi) {
            for (sender, deleted) in self.tables.senders(chat_id, b, lo, scan_hi).await? {
                if sender != user_id && !deleted {
                    unread += 1;
                }
            }
        }
        Ok(unread)
    }

    async fn claim_now(&self, chat_id: &str, owner: &str) -> Result<u64, StoreError> {
        if self.tables.chat(chat_id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        for _ in 0..CLAIM_ATTEMPTS {
            let current = self.tables.owner_serial(chat_id).await?;
            let epoch = current.as_ref().map_or(0, |o| o.epoch) + 1;
            if epoch > fence::MAX_EPOCH {
                return Err(StoreError::Internal(format!("chat {chat_id} has been claimed {} times", epoch - 1)));
            }
            let new = Owner { epoch, owner: owner.to_string() };
            if self.tables.swap_owner(chat_id, current.map(|o| o.epoch), &new).await? {
                // Seal the head at the new epoch: the deposed owner can no
                // longer move it, and this owner continues from it.
                let head = self.tables.head(chat_id).await?.unwrap_or_default();
                self.tables.put_head(chat_id, head, timestamp(epoch, head.last_seq)?).await?;
                return Ok(epoch);
            }
        }
        Err(StoreError::Unavailable(format!("chat {chat_id}: {CLAIM_ATTEMPTS} claims lost to concurrent ones")))
    }

    async fn append_now(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        let chat_id = batch.chat_id.as_str();
        let (_, head) = self.chat_and_head(chat_id).await?;
        for (i, m) in batch.messages.iter().enumerate() {
            if m.chat_id != chat_id || m.seq != head.last_seq + 1 + i as u64 {
                let first_seq = batch.messages.first().map_or(0, |m| m.seq);
                return Err(StoreError::SeqConflict { last_seq: head.last_seq, first_seq });
            }
        }
        let Some(last) = batch.messages.last() else { return Ok(Appended::Written(head.last_seq)) };
        let new_head = Head { last_seq: last.seq, last_at: last.created_at_ms };
        if let Some(since) = batch.repeats_since_ms {
            // The batch's keys are read at once: one round trip, not one a message.
            let repeats = futures::future::try_join_all(batch.messages.iter().map(|m| async move {
                match self.tables.client_key(chat_id, &m.sender_id, &m.client_id).await? {
                    Some(key) if key.created_at >= since => self.keyed(chat_id, &m.sender_id, &m.client_id, key).await,
                    _ => Ok(None),
                }
            }))
            .await?;
            let repeats: Vec<Message> = repeats.into_iter().flatten().collect();
            if !repeats.is_empty() {
                return Ok(Appended::Repeats(repeats));
            }
        }
        let epoch = self.write_epoch(chat_id, batch.epoch).await?;
        let rows: Vec<NewRows> = batch
            .messages
            .iter()
            .map(|m| NewRows {
                row: MessageRow {
                    chat_id: chat_id.to_string(),
                    seq: m.seq,
                    id: m.id.clone(),
                    sender_id: m.sender_id.clone(),
                    client_id: m.client_id.clone(),
                    deleted: m.deleted,
                    version: 0,
                    msg: m.encode_to_vec(),
                },
                created_at: m.created_at_ms,
            })
            .collect();
        self.tables.put_new_messages(&rows, timestamp(epoch, 0)?).await?;
        self.tables.put_head(chat_id, new_head, timestamp(epoch, new_head.last_seq)?).await?;
        self.still_owner(chat_id, batch.epoch).await?;
        Ok(Appended::Written(new_head.last_seq))
    }

    async fn put_now(&self, message: Message, epoch: Option<u64>) -> Result<(), StoreError> {
        let chat_id = message.chat_id.clone();
        let Some(row) = self.live_row(&chat_id, message.seq).await? else { return Err(StoreError::NotFound) };
        if row.id != message.id {
            return Err(StoreError::Invalid("message id does not match its seq".into()));
        }
        let version = row.version + 1;
        let new = MessageRow { deleted: message.deleted, version, msg: message.encode_to_vec(), ..row };
        let ts = timestamp(self.write_epoch(&chat_id, epoch).await?, version)?;
        self.tables.put_message(&new, ts).await?;
        self.still_owner(&chat_id, epoch).await
    }

    async fn save_now(
        &self,
        chat: Chat,
        removed: Vec<UserId>,
        delete: bool,
        epoch: Option<u64>,
    ) -> Result<(), StoreError> {
        let id = chat.id.clone();
        let Some(row) = self.tables.chat(&id).await? else { return Err(StoreError::NotFound) };
        let version = row.version + 1;
        let ts = timestamp(self.write_epoch(&id, epoch).await?, version)?;
        for user in &removed {
            self.tables.delete_user_chat(user.as_str(), &id, ts).await?;
        }
        if delete {
            for m in &chat.members {
                self.tables.delete_user_chat(&m.user_id, &id, ts).await?;
            }
            self.tables.delete_chat(&id, ts).await?;
        } else {
            for m in &chat.members {
                self.tables.put_user_chat(&m.user_id, &id, ts).await?;
            }
            self.tables.put_chat(&ChatRow { version, chat }, ts).await?;
        }
        self.still_owner(&id, epoch).await
    }

    async fn create_now(&self, new: NewChat) -> Result<(Chat, bool), StoreError> {
        let mut id = ChatId::generate().to_string();
        if new.kind == "dm" {
            if new.member_ids.len() != 2 {
                return Err(StoreError::Invalid("a dm has exactly two members".into()));
            }
            let pair = crate::records::key(new.member_ids[0].as_str(), new.member_ids[1].as_str());
            if let Some(existing) = self.tables.claim_pair(&pair, &id).await? {
                if let Some(row) = self.tables.chat(&existing).await? {
                    return Ok((row.chat, false));
                }
                // Its creator stopped half way: finish its chat.
                id = existing;
            }
        }
        let now = confab_common::time::now_ms();
        let chat = crate::records::new_chat(id.clone(), new, now);
        let ts = timestamp(0, 0)?;
        for m in &chat.members {
            self.tables.put_user_chat(&m.user_id, &id, ts).await?;
        }
        self.tables.put_head(&id, Head { last_seq: 0, last_at: now }, ts).await?;
        // Last: a chat row is a chat whose other rows are all written.
        self.tables.put_chat(&ChatRow { version: 0, chat: chat.clone() }, ts).await?;
        Ok((chat, true))
    }

    async fn history_now(
        &self,
        chat_id: &str,
        after_seq: Option<u64>,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<History, StoreError> {
        let (_, head) = self.chat_and_head(chat_id).await?;
        let lo = after_seq.map_or(1, |s| s.saturating_add(1));
        let hi = before_seq.map_or(head.last_seq, |s| s.saturating_sub(1).min(head.last_seq));
        if lo > hi || limit == 0 {
            return Ok(History::default());
        }
        let oldest_first = after_seq.is_some();
        let order: Vec<i64> = if oldest_first { buckets(lo, hi).collect() } else { buckets(lo, hi).rev().collect() };
        let mut rows = Vec::with_capacity(limit.min(128) + 1);
        for b in order {
            let want = limit + 1 - rows.len();
            rows.extend(self.tables.messages(chat_id, b, lo, hi, !oldest_first, want).await?);
            if rows.len() > limit {
                break;
            }
        }
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        if !oldest_first {
            rows.reverse();
        }
        let messages = rows.iter().map(decode_message).collect::<Result<Vec<_>, _>>()?;
        Ok(History { messages, has_more })
    }
}

#[async_trait::async_trait]
impl<T: Tables> Store for ScyllaStore<T> {
    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, bool), StoreError> {
        self.within(self.create_now(chat)).await.map_err(StoreError::of_write)
    }

    async fn get_chat(&self, chat_id: &ChatId) -> Result<(Chat, u64), StoreError> {
        let (row, head) = self.within(self.chat_and_head(chat_id.as_str())).await?;
        Ok((row.chat, head.last_seq))
    }

    async fn list_user_chats(&self, user_id: &UserId, limit: usize) -> Result<Vec<ChatSummary>, StoreError> {
        self.within(async {
            let ids = self.tables.user_chat_ids(user_id.as_str()).await?;
            let mut found: Vec<(i64, ChatSummary)> = futures::stream::iter(ids)
                .map(|id| self.summary(id, user_id.as_str()))
                .buffer_unordered(LIST_CONCURRENCY)
                .try_filter_map(|s| async move { Ok(s) })
                .try_collect()
                .await?;
            found.sort_by_key(|s| std::cmp::Reverse(s.0));
            Ok(found.into_iter().take(limit).map(|(_, s)| s).collect())
        })
        .await
    }

    async fn claim(&self, chat_id: &ChatId, owner: &str) -> Result<u64, StoreError> {
        self.within(self.claim_now(chat_id.as_str(), owner)).await.map_err(StoreError::of_write)
    }

    async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        self.within(self.append_now(batch)).await.map_err(StoreError::of_write)
    }

    async fn find_by_client_id(
        &self,
        chat_id: &ChatId,
        sender_id: &UserId,
        client_id: &str,
        not_before_ms: i64,
    ) -> Result<Option<Message>, StoreError> {
        self.within(async {
            let (chat, sender) = (chat_id.as_str(), sender_id.as_str());
            match self.tables.client_key(chat, sender, client_id).await? {
                Some(key) if key.created_at >= not_before_ms => self.keyed(chat, sender, client_id, key).await,
                _ => Ok(None),
            }
        })
        .await
    }

    async fn get_message(&self, chat_id: &ChatId, message_id: &str, seq: u64) -> Result<Option<Message>, StoreError> {
        self.within(async {
            let chat = chat_id.as_str();
            let seq = if message_id.is_empty() {
                seq
            } else {
                match self.tables.message_seq(chat, message_id).await? {
                    Some(seq) => seq,
                    None => return Ok(None),
                }
            };
            match self.live_row(chat, seq).await? {
                Some(row) if message_id.is_empty() || row.id == message_id => Ok(Some(decode_message(&row)?)),
                _ => Ok(None),
            }
        })
        .await
    }

    async fn put_message(&self, message: Message, epoch: Option<u64>) -> Result<(), StoreError> {
        self.within(self.put_now(message, epoch)).await.map_err(StoreError::of_write)
    }

    async fn save_chat(
        &self,
        chat: Chat,
        removed: Vec<UserId>,
        delete: bool,
        epoch: Option<u64>,
    ) -> Result<(), StoreError> {
        self.within(self.save_now(chat, removed, delete, epoch)).await.map_err(StoreError::of_write)
    }

    async fn get_cursor(&self, chat_id: &ChatId, user_id: &UserId) -> Result<u64, StoreError> {
        self.within(async { Ok(self.tables.cursor(chat_id.as_str(), user_id.as_str()).await?.unwrap_or(0)) }).await
    }

    async fn set_cursor(&self, chat_id: &ChatId, user_id: &UserId, seq: u64) -> Result<u64, StoreError> {
        self.within(async {
            let (chat, user) = (chat_id.as_str(), user_id.as_str());
            self.tables.put_cursor(chat, user, seq).await?;
            Ok(self.tables.cursor(chat, user).await?.unwrap_or(seq).max(seq))
        })
        .await
        .map_err(StoreError::of_write)
    }

    async fn put_profiles(&self, profiles: Vec<(UserId, Profile)>) -> Result<(), StoreError> {
        self.within(async {
            // The futures are made first, so the stream holds no closure.
            let puts: Vec<_> = profiles.iter().map(|(user, p)| self.tables.put_profile(user.as_str(), p)).collect();
            futures::stream::iter(puts).buffer_unordered(LIST_CONCURRENCY).try_collect::<Vec<()>>().await.map(drop)
        })
        .await
        .map_err(StoreError::of_write)
    }

    async fn profiles(&self, users: &[UserId]) -> Result<Vec<(UserId, Profile)>, StoreError> {
        self.within(async {
            let reads: Vec<_> = users.iter().map(|user| self.tables.profile(user.as_str())).collect();
            let found: Vec<Option<Profile>> =
                futures::stream::iter(reads).buffered(LIST_CONCURRENCY).try_collect().await?;
            Ok(users.iter().zip(found).filter_map(|(u, p)| p.map(|p| (u.clone(), p))).collect())
        })
        .await
    }

    async fn history(
        &self,
        chat_id: &ChatId,
        after_seq: Option<u64>,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<History, StoreError> {
        self.within(self.history_now(chat_id.as_str(), after_seq, before_seq, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_row_decodes_to_its_message() {
        let m = Message { chat_id: "c".into(), seq: 3, id: "m3".into(), body: "hi".into(), ..Default::default() };
        let row = MessageRow {
            chat_id: "c".into(),
            seq: 3,
            id: "m3".into(),
            sender_id: String::new(),
            client_id: String::new(),
            deleted: false,
            version: 0,
            msg: m.encode_to_vec(),
        };
        assert_eq!(decode_message(&row).unwrap(), m);
        let broken = MessageRow { msg: vec![0xff, 0xff], ..row };
        assert!(matches!(decode_message(&broken), Err(StoreError::Internal(_))));
    }
}
