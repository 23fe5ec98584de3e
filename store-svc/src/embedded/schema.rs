//! The tables of the embedded store, how a log record names them, and the
//! decoding of what they hold.

use super::open::SKIPPED;
use super::writer::redo_change;
use super::{internal, StoreError};
use crate::wal;
use confab_proto::v1::{Chat, Message};
use prost::Message as _;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

pub(super) const CHATS: TableDefinition<&str, &[u8]> = TableDefinition::new("chats");
pub(super) const USER_CHATS: TableDefinition<(&str, &str), ()> = TableDefinition::new("user_chats");
pub(crate) const LAST_SEQ: TableDefinition<&str, u64> = TableDefinition::new("last_seq");
pub(super) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// (chat, sender, client id) -> (seq, created at ms)
pub(super) const CLIENT_IDS: TableDefinition<(&str, &str, &str), (u64, i64)> = TableDefinition::new("client_ids");
/// the pair of users (see [`super::dm_pairs::key`]) -> chat id
pub(super) const DM_PAIRS: TableDefinition<&str, &str> = TableDefinition::new("dm_pairs");
/// (chat, message id) -> seq
pub(super) const MESSAGE_IDS: TableDefinition<(&str, &str), u64> = TableDefinition::new("message_ids");
/// chat -> (ownership epoch, owner)
pub(super) const OWNERS: TableDefinition<&str, (u64, &str)> = TableDefinition::new("owners");
/// (chat, user) -> last read seq
pub(super) const CURSORS: TableDefinition<(&str, &str), u64> = TableDefinition::new("cursors");
/// (chat, sender, seq): who sent what, so unread counts need not read messages.
pub(super) const SENT: TableDefinition<(&str, &str, u64), ()> = TableDefinition::new("sent");
/// (chat, seq) → sender of each deleted message.
pub(super) const DELETED: TableDefinition<(&str, u64), &str> = TableDefinition::new("deleted");

/// user → `Profile` (protobuf) from the user's most recent token.
pub(super) const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");

/// Applies one log record's changes again.
pub(super) fn redo(tx: &WriteTransaction, record: &[u8]) -> Result<(), StoreError> {
    for change in wal::decode(record).map_err(|e| internal(format!("store log: {e}")))? {
        match change.table {
            "chats" => redo_change(tx, CHATS, &change)?,
            "user_chats" => redo_change(tx, USER_CHATS, &change)?,
            "last_seq" => redo_change(tx, LAST_SEQ, &change)?,
            "messages" => redo_change(tx, MESSAGES, &change)?,
            "client_ids" => redo_change(tx, CLIENT_IDS, &change)?,
            "dm_pairs" => redo_change(tx, DM_PAIRS, &change)?,
            "message_ids" => redo_change(tx, MESSAGE_IDS, &change)?,
            "owners" => redo_change(tx, OWNERS, &change)?,
            "cursors" => redo_change(tx, CURSORS, &change)?,
            "sent" => redo_change(tx, SENT, &change)?,
            "deleted" => redo_change(tx, DELETED, &change)?,
            "skipped" => redo_change(tx, SKIPPED, &change)?,
            "profiles" => redo_change(tx, PROFILES, &change)?,
            other => return Err(internal(format!("store log names an unknown table {other:?}"))),
        }
    }
    Ok(())
}

pub(super) fn decode_chat(bytes: &[u8]) -> Result<Chat, StoreError> {
    Chat::decode(bytes).map_err(internal)
}

pub(super) fn read_message(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    chat_id: &str,
    seq: u64,
) -> Result<Option<Message>, StoreError> {
    match table.get((chat_id, seq)).map_err(internal)? {
        Some(v) => Ok(Some(Message::decode(v.value()).map_err(internal)?)),
        None => Ok(None),
    }
}
