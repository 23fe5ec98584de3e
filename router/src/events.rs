//! The JSON of the chat events a writer broadcasts (CONTRACT §6). The edge
//! passes them to sockets as they are, encoded once per edge.

use confab_common::time::iso8601;
use confab_proto::v1 as pb;
use serde_json::{json, Map, Value};

pub(crate) fn counts(m: &pb::Message) -> Value {
    let mut o = Map::new();
    for r in &m.reactions {
        o.insert(r.emoji.clone(), json!(r.user_ids.len()));
    }
    Value::Object(o)
}

pub(crate) fn message_updated(m: &pb::Message) -> (&'static str, Value) {
    let edited = iso8601(m.edited_at_ms.unwrap_or(m.created_at_ms));
    (
        "message:updated",
        json!({ "chatId": m.chat_id, "messageId": m.id, "seq": m.seq, "body": m.body, "editedAt": edited }),
    )
}

pub(crate) fn edit_ack(m: &pb::Message) -> Value {
    json!({ "messageId": m.id, "editedAt": iso8601(m.edited_at_ms.unwrap_or(m.created_at_ms)) })
}

pub(crate) fn message_deleted(m: &pb::Message) -> (&'static str, Value) {
    ("message:deleted", json!({ "chatId": m.chat_id, "messageId": m.id, "seq": m.seq }))
}

pub(crate) fn reaction_update(m: &pb::Message, emoji: &str, user: &str, add: bool) -> (&'static str, Value) {
    let action = if add { "add" } else { "remove" };
    let payload = json!({
        "chatId": m.chat_id, "messageId": m.id, "emoji": emoji, "userId": user, "action": action, "counts": counts(m),
    });
    ("reaction:update", payload)
}

pub(crate) fn typing(chat_id: &str, user: &str, start: bool) -> (&'static str, Value) {
    let state = if start { "start" } else { "stop" };
    ("typing:update", json!({ "chatId": chat_id, "userId": user, "state": state }))
}

pub(crate) fn receipt_update(chat_id: &str, user: &str, m: &pb::Message, read_at_ms: i64) -> (&'static str, Value) {
    let payload =
        json!({ "chatId": chat_id, "userId": user, "messageId": m.id, "seq": m.seq, "readAt": iso8601(read_at_ms) });
    ("receipt:update", payload)
}

pub(crate) fn read_ack(last_read_seq: u64, read_at_ms: i64) -> Value {
    json!({ "lastReadSeq": last_read_seq, "readAt": iso8601(read_at_ms) })
}
