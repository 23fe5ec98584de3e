//! The read queries, each within one read transaction.

use super::open::SKIPPED;
use super::schema::PROFILES;
use super::schema::{decode_chat, read_message};
use super::schema::{CHATS, CLIENT_IDS, CURSORS, DELETED, LAST_SEQ, MESSAGES, MESSAGE_IDS, SENT, USER_CHATS};
use super::{internal, History, StoreError};
use confab_proto::v1::{Chat, ChatSummary, Message, Profile};
use prost::Message as _;

/// A user's chats, most recently active first, at most `limit`.
pub(super) fn user_chats(
    tx: &redb::ReadTransaction,
    user_id: &str,
    limit: usize,
) -> Result<Vec<ChatSummary>, StoreError> {
    let user_chats = tx.open_table(USER_CHATS).map_err(internal)?;
    let cursors = tx.open_table(CURSORS).map_err(internal)?;
    let messages = tx.open_table(MESSAGES).map_err(internal)?;
    let sent = tx.open_table(SENT).map_err(internal)?;
    let deleted = tx.open_table(DELETED).map_err(internal)?;
    let skipped = tx.open_table(SKIPPED).map_err(internal)?;
    let mut out = Vec::new();
    for entry in user_chats.range((user_id, "")..).map_err(internal)? {
        let (key, _) = entry.map_err(internal)?;
        let (user, chat_id) = key.value();
        if user != user_id {
            break;
        }
        let Some((chat, last_seq)) = read_chat(tx, chat_id)? else {
            continue;
        };
        let last_read_seq = cursors.get((chat_id, user_id)).map_err(internal)?.map_or(0, |v| v.value());
        // Unread (CONTRACT §8.7): the messages after the cursor, less
        // the user's own and the deleted ones, counted from the
        // indexes, so the cost follows those, not the backlog.
        let mut unread = last_seq.saturating_sub(last_read_seq);
        if unread > 0 {
            let own = (chat_id, user_id, last_read_seq + 1)..=(chat_id, user_id, last_seq);
            for entry in sent.range(own).map_err(internal)? {
                entry.map_err(internal)?;
                unread -= 1;
            }
            for entry in deleted.range((chat_id, last_read_seq + 1)..=(chat_id, last_seq)).map_err(internal)? {
                let (_, sender) = entry.map_err(internal)?;
                if sender.value() != user_id {
                    unread = unread.saturating_sub(1);
                }
            }
            // Seqs a salvage skipped hold no message.
            for entry in skipped.range((chat_id, 0)..=(chat_id, last_seq)).map_err(internal)? {
                let (from, to) = entry.map_err(internal)?;
                let (from, to) = (from.value().1.max(last_read_seq + 1), to.value().min(last_seq));
                unread = unread.saturating_sub((to + 1).saturating_sub(from));
            }
        }
        // The newest message (the last seq may be one a salvage skipped).
        let newest = messages.range((chat_id, 1)..=(chat_id, last_seq)).map_err(internal)?.next_back();
        let activity = match newest.transpose().map_err(internal)? {
            Some((_, m)) => Message::decode(m.value()).map_err(internal)?.created_at_ms,
            None => chat.created_at_ms,
        };
        out.push((activity, ChatSummary { chat: Some(chat), last_seq, last_read_seq, unread }));
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.0));
    Ok(out.into_iter().take(limit).map(|(_, s)| s).collect())
}

pub(super) fn read_chat(tx: &redb::ReadTransaction, chat_id: &str) -> Result<Option<(Chat, u64)>, StoreError> {
    let chats = tx.open_table(CHATS).map_err(internal)?;
    let Some(bytes) = chats.get(chat_id).map_err(internal)? else {
        return Ok(None);
    };
    let chat = decode_chat(bytes.value())?;
    let last = tx.open_table(LAST_SEQ).map_err(internal)?.get(chat_id).map_err(internal)?.map_or(0, |v| v.value());
    Ok(Some((chat, last)))
}

/// The message `sender_id` sent with `client_id`, if it was created at or
/// after `not_before_ms`.
pub(super) fn find_by_client_id(
    tx: &redb::ReadTransaction,
    chat_id: &str,
    sender_id: &str,
    client_id: &str,
    not_before_ms: i64,
) -> Result<Option<Message>, StoreError> {
    let ids = tx.open_table(CLIENT_IDS).map_err(internal)?;
    let Some(v) = ids.get((chat_id, sender_id, client_id)).map_err(internal)? else {
        return Ok(None);
    };
    let (seq, created) = v.value();
    if created < not_before_ms {
        return Ok(None);
    }
    let messages = tx.open_table(MESSAGES).map_err(internal)?;
    read_message(&messages, chat_id, seq)
}

/// A message by id, or by `seq` when `message_id` is empty.
pub(super) fn get_message(
    tx: &redb::ReadTransaction,
    chat_id: &str,
    message_id: &str,
    seq: u64,
) -> Result<Option<Message>, StoreError> {
    let seq = if message_id.is_empty() {
        seq
    } else {
        let ids = tx.open_table(MESSAGE_IDS).map_err(internal)?;
        match ids.get((chat_id, message_id)).map_err(internal)? {
            Some(v) => v.value(),
            None => return Ok(None),
        }
    };
    let messages = tx.open_table(MESSAGES).map_err(internal)?;
    read_message(&messages, chat_id, seq)
}

/// A user's read cursor in a chat (0 before any read).
pub(super) fn get_cursor(tx: &redb::ReadTransaction, chat_id: &str, user_id: &str) -> Result<u64, StoreError> {
    let cursors = tx.open_table(CURSORS).map_err(internal)?;
    Ok(cursors.get((chat_id, user_id)).map_err(internal)?.map_or(0, |v| v.value()))
}

/// The stored profiles of `users`; a data directory from before profiles
/// has none.
pub(super) fn profiles(tx: &redb::ReadTransaction, users: &[String]) -> Result<Vec<(String, Profile)>, StoreError> {
    let table = match tx.open_table(PROFILES) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(internal(e)),
    };
    let mut out = Vec::new();
    for user in users {
        if let Some(v) = table.get(user.as_str()).map_err(internal)? {
            out.push((user.clone(), Profile::decode(v.value()).map_err(internal)?));
        }
    }
    Ok(out)
}

/// A page of at most `limit` of a chat's messages between `after_seq` and
/// `before_seq` (both left out), oldest first: the oldest of them when
/// `after_seq` is given, else the newest.
pub(super) fn history(
    tx: &redb::ReadTransaction,
    chat_id: &str,
    after_seq: Option<u64>,
    before_seq: Option<u64>,
    limit: usize,
) -> Result<History, StoreError> {
    let (_, last_seq) = read_chat(tx, chat_id)?.ok_or(StoreError::NotFound)?;
    let lo = after_seq.map_or(1, |s| s.saturating_add(1));
    let hi = before_seq.map_or(last_seq, |s| s.saturating_sub(1).min(last_seq));
    if lo > hi || limit == 0 {
        return Ok(History::default());
    }
    let messages = tx.open_table(MESSAGES).map_err(internal)?;
    let range = messages.range((chat_id, lo)..=(chat_id, hi)).map_err(internal)?;
    let mut out = Vec::with_capacity(limit.min(128));
    let has_more;
    if after_seq.is_some() {
        for m in range.take(limit + 1) {
            let (_, v) = m.map_err(internal)?;
            out.push(Message::decode(v.value()).map_err(internal)?);
        }
        has_more = out.len() > limit;
        out.truncate(limit);
    } else {
        for m in range.rev().take(limit + 1) {
            let (_, v) = m.map_err(internal)?;
            out.push(Message::decode(v.value()).map_err(internal)?);
        }
        has_more = out.len() > limit;
        out.truncate(limit);
        out.reverse();
    }
    Ok(History { messages: out, has_more })
}
