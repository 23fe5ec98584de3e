//! The writes the writer thread applies: each `Write`, its checks and the
//! index entries it keeps.

use super::schema::{decode_chat, read_message};
use super::schema::{
    CHATS, CLIENT_IDS, CURSORS, DELETED, DM_PAIRS, LAST_SEQ, MESSAGES, MESSAGE_IDS, OWNERS, PROFILES, SENT, USER_CHATS,
};
use super::writer::{Logged, Wtx};
use super::{dm_pairs, internal, AppendBatch, Appended, NewChat, StoreError};
use confab_proto::v1::{Chat, Message, Profile};
use prost::Message as _;
use redb::{ReadableTable, ReadableTableMetadata};
use tokio::sync::oneshot;

pub(super) enum Write {
    CreateChat(NewChat, oneshot::Sender<Result<(Chat, bool), StoreError>>),
    Append(AppendBatch, oneshot::Sender<Result<Appended, StoreError>>),
    Put(Message, Option<u64>, oneshot::Sender<Result<u64, StoreError>>),
    Claim(String, String, oneshot::Sender<Result<u64, StoreError>>),
    SetCursor(String, String, u64, oneshot::Sender<Result<u64, StoreError>>),
    SaveChat(Chat, Vec<String>, bool, Option<u64>, oneshot::Sender<Result<u64, StoreError>>),
    PutProfiles(Vec<(String, Profile)>, oneshot::Sender<Result<u64, StoreError>>),
}

/// A write's reply and what it would answer if its batch is logged.
pub(super) enum Outcome {
    Chat(oneshot::Sender<Result<(Chat, bool), StoreError>>, Result<(Chat, bool), StoreError>),
    Seq(oneshot::Sender<Result<u64, StoreError>>, Result<u64, StoreError>),
    Append(oneshot::Sender<Result<Appended, StoreError>>, Result<Appended, StoreError>),
}

impl Outcome {
    /// A write that was not applied.
    pub(super) fn failed(write: Write, err: StoreError) -> Self {
        match write {
            Write::CreateChat(_, reply) => Outcome::Chat(reply, Err(err)),
            Write::Append(_, reply) => Outcome::Append(reply, Err(err)),
            Write::Put(_, _, reply)
            | Write::Claim(_, _, reply)
            | Write::SetCursor(_, _, _, reply)
            | Write::SaveChat(_, _, _, _, reply)
            | Write::PutProfiles(_, reply) => Outcome::Seq(reply, Err(err)),
        }
    }

    /// Sends the answer, or the batch's error when it was not logged.
    pub(super) fn answer(self, batch: &Result<(), StoreError>) {
        let failed = |e: &StoreError| StoreError::Unavailable(e.to_string());
        match (self, batch) {
            (Outcome::Chat(reply, r), Ok(())) => drop(reply.send(r)),
            (Outcome::Seq(reply, r), Ok(())) => drop(reply.send(r)),
            (Outcome::Append(reply, r), Ok(())) => drop(reply.send(r)),
            (Outcome::Chat(reply, _), Err(e)) => drop(reply.send(Err(failed(e)))),
            (Outcome::Seq(reply, _), Err(e)) => drop(reply.send(Err(failed(e)))),
            (Outcome::Append(reply, _), Err(e)) => drop(reply.send(Err(failed(e)))),
        }
    }
}

/// Applies one write to the writer's transaction.
pub(super) fn apply(tx: &Wtx, write: Write) -> Outcome {
    match write {
        Write::CreateChat(chat, reply) => Outcome::Chat(reply, apply_create_chat(tx, chat)),
        Write::Append(b, reply) => Outcome::Append(reply, apply_append(tx, &b)),
        Write::Put(m, epoch, reply) => {
            Outcome::Seq(reply, check_epoch(tx, &m.chat_id, epoch).and_then(|()| apply_put(tx, &m)))
        }
        Write::Claim(chat, owner, reply) => Outcome::Seq(reply, apply_claim(tx, &chat, &owner)),
        Write::SetCursor(chat, user, seq, reply) => Outcome::Seq(reply, apply_cursor(tx, &chat, &user, seq)),
        Write::SaveChat(chat, removed, delete, epoch, reply) => {
            let r = check_epoch(tx, &chat.id, epoch).and_then(|()| apply_save_chat(tx, &chat, &removed, delete));
            Outcome::Seq(reply, r.map(|()| 0))
        }
        Write::PutProfiles(profiles, reply) => Outcome::Seq(reply, apply_profiles(tx, &profiles).map(|()| 0)),
    }
}

fn apply_profiles(tx: &Wtx, profiles: &[(String, Profile)]) -> Result<(), StoreError> {
    let mut table = tx.open(PROFILES)?;
    for (user, profile) in profiles {
        table.insert(user.as_str(), profile.encode_to_vec().as_slice())?;
    }
    Ok(())
}

/// Fills the unread indexes (`SENT`, `DELETED`) from the messages of a
/// store written before they existed; a no-op once they are filled.
pub(super) fn index_existing_messages(tx: &Wtx) -> Result<(), StoreError> {
    let mut sent = tx.open(SENT)?;
    let mut deleted = tx.open(DELETED)?;
    let messages = tx.open(MESSAGES)?;
    if !sent.is_empty().map_err(internal)? || messages.is_empty().map_err(internal)? {
        return Ok(());
    }
    for entry in messages.iter().map_err(internal)? {
        let (_, v) = entry.map_err(internal)?;
        let m = Message::decode(v.value()).map_err(internal)?;
        index_message(&mut sent, &mut deleted, &m)?;
    }
    Ok(())
}

fn index_message(
    sent: &mut Logged<'_, (&'static str, &'static str, u64), ()>,
    deleted: &mut Logged<'_, (&'static str, u64), &'static str>,
    m: &Message,
) -> Result<(), StoreError> {
    sent.insert((m.chat_id.as_str(), m.sender_id.as_str(), m.seq), ())?;
    if m.deleted {
        deleted.insert((m.chat_id.as_str(), m.seq), m.sender_id.as_str())?;
    }
    Ok(())
}

fn apply_create_chat(tx: &Wtx, new: NewChat) -> Result<(Chat, bool), StoreError> {
    let mut chats = tx.open(CHATS)?;
    let dm = if new.kind == "dm" {
        if new.member_ids.len() != 2 {
            return Err(StoreError::Invalid("a dm has exactly two members".into()));
        }
        let key = dm_pairs::key(&new.member_ids[0], &new.member_ids[1]);
        let pairs = tx.open(DM_PAIRS)?;
        let existing = pairs.get(key.as_str()).map_err(internal)?.map(|v| v.value().to_string());
        if let Some(id) = existing {
            if let Some(bytes) = chats.get(id.as_str()).map_err(internal)? {
                return Ok((decode_chat(bytes.value())?, false));
            }
        }
        Some((pairs, key))
    } else {
        None
    };
    let now = confab_common::time::now_ms();
    let id = confab_common::ChatId::generate().to_string();
    let chat = crate::records::new_chat(id.clone(), new, now);
    chats.insert(id.as_str(), chat.encode_to_vec().as_slice())?;
    if let Some((mut pairs, key)) = dm {
        pairs.insert(key.as_str(), id.as_str())?;
    }
    let mut user_chats = tx.open(USER_CHATS)?;
    for m in &chat.members {
        user_chats.insert((m.user_id.as_str(), id.as_str()), ())?;
    }
    tx.open(LAST_SEQ)?.insert(id.as_str(), 0)?;
    Ok((chat, true))
}

/// The fence: a write with an epoch must carry the chat's current one.
fn check_epoch(tx: &Wtx, chat_id: &str, epoch: Option<u64>) -> Result<(), StoreError> {
    let Some(epoch) = epoch else { return Ok(()) };
    let owners = tx.open(OWNERS)?;
    let current = owners.get(chat_id).map_err(internal)?.map_or(0, |v| v.value().0);
    if current == epoch {
        Ok(())
    } else {
        Err(StoreError::Fenced)
    }
}

fn apply_claim(tx: &Wtx, chat_id: &str, owner: &str) -> Result<u64, StoreError> {
    if tx.open(CHATS)?.get(chat_id).map_err(internal)?.is_none() {
        return Err(StoreError::NotFound);
    }
    let mut owners = tx.open(OWNERS)?;
    let next = owners.get(chat_id).map_err(internal)?.map_or(0, |v| v.value().0) + 1;
    owners.insert(chat_id, (next, owner))?;
    Ok(next)
}

fn apply_append(tx: &Wtx, batch: &AppendBatch) -> Result<Appended, StoreError> {
    let chat_id = batch.chat_id.as_str();
    check_epoch(tx, chat_id, batch.epoch)?;
    let mut last_seq_table = tx.open(LAST_SEQ)?;
    let last_seq = match last_seq_table.get(chat_id).map_err(internal)? {
        Some(v) => v.value(),
        None => return Err(StoreError::NotFound),
    };
    // Validate the whole batch before writing any of it.
    for (i, m) in batch.messages.iter().enumerate() {
        if m.chat_id != chat_id || m.seq != last_seq + 1 + i as u64 {
            return Err(StoreError::SeqConflict { last_seq, first_seq: batch.messages.first().map_or(0, |m| m.seq) });
        }
    }
    let Some(new_last) = batch.messages.last().map(|m| m.seq) else {
        return Ok(Appended::Written(last_seq));
    };
    let mut messages = tx.open(MESSAGES)?;
    let mut client_ids = tx.open(CLIENT_IDS)?;
    if let Some(since) = batch.repeats_since_ms {
        let mut repeats = Vec::new();
        for m in &batch.messages {
            let Some(v) = client_ids.get((chat_id, m.sender_id.as_str(), m.client_id.as_str())).map_err(internal)?
            else {
                continue;
            };
            let (seq, created) = v.value();
            if created >= since {
                repeats.extend(read_message(&*messages, chat_id, seq)?);
            }
        }
        if !repeats.is_empty() {
            return Ok(Appended::Repeats(repeats));
        }
    }
    let mut ids = tx.open(MESSAGE_IDS)?;
    let mut sent = tx.open(SENT)?;
    let mut deleted = tx.open(DELETED)?;
    for m in &batch.messages {
        index_message(&mut sent, &mut deleted, m)?;
        ids.insert((chat_id, m.id.as_str()), m.seq)?;
        messages.insert((chat_id, m.seq), m.encode_to_vec().as_slice())?;
        client_ids.insert((chat_id, m.sender_id.as_str(), m.client_id.as_str()), (m.seq, m.created_at_ms))?;
    }
    last_seq_table.insert(chat_id, new_last)?;
    Ok(Appended::Written(new_last))
}

fn apply_put(tx: &Wtx, m: &Message) -> Result<u64, StoreError> {
    let mut messages = tx.open(MESSAGES)?;
    let key = (m.chat_id.as_str(), m.seq);
    let same = match messages.get(key).map_err(internal)? {
        Some(old) => Message::decode(old.value()).map_err(internal)?.id == m.id,
        None => return Err(StoreError::NotFound),
    };
    if !same {
        return Err(StoreError::Invalid("message id does not match its seq".into()));
    }
    messages.insert(key, m.encode_to_vec().as_slice())?;
    if m.deleted {
        tx.open(DELETED)?.insert(key, m.sender_id.as_str())?;
    }
    Ok(m.seq)
}

fn apply_save_chat(tx: &Wtx, chat: &Chat, removed: &[String], delete: bool) -> Result<(), StoreError> {
    let id = chat.id.as_str();
    let mut chats = tx.open(CHATS)?;
    if chats.get(id).map_err(internal)?.is_none() {
        return Err(StoreError::NotFound);
    }
    let mut user_chats = tx.open(USER_CHATS)?;
    for user in removed {
        user_chats.remove((user.as_str(), id))?;
    }
    if delete {
        for m in &chat.members {
            user_chats.remove((m.user_id.as_str(), id))?;
        }
        chats.remove(id)?;
        return Ok(());
    }
    for m in &chat.members {
        user_chats.insert((m.user_id.as_str(), id), ())?;
    }
    chats.insert(id, chat.encode_to_vec().as_slice())?;
    Ok(())
}

fn apply_cursor(tx: &Wtx, chat_id: &str, user_id: &str, seq: u64) -> Result<u64, StoreError> {
    let mut cursors = tx.open(CURSORS)?;
    let current = cursors.get((chat_id, user_id)).map_err(internal)?.map_or(0, |v| v.value());
    if seq > current {
        cursors.insert((chat_id, user_id), seq)?;
        return Ok(seq);
    }
    Ok(current)
}
