//! JSON shapes of the client contract (CONTRACT §6, §7).

use confab_common::time::iso8601;
use confab_proto::v1 as pb;
use serde_json::{json, Map, Value};

/// `Message` (CONTRACT §6).
pub fn message(m: &pb::Message) -> Value {
    let mut o = Map::with_capacity(8);
    o.insert("chatId".into(), Value::String(m.chat_id.clone()));
    o.insert("id".into(), Value::String(m.id.clone()));
    o.insert("seq".into(), json!(m.seq));
    o.insert("senderId".into(), Value::String(m.sender_id.clone()));
    o.insert("body".into(), Value::String(m.body.clone()));
    o.insert("createdAt".into(), Value::String(iso8601(m.created_at_ms)));
    o.insert("clientId".into(), Value::String(m.client_id.clone()));
    if let Some(r) = &m.reply_to {
        o.insert("replyTo".into(), Value::String(r.clone()));
    }
    if let Some(at) = m.edited_at_ms {
        o.insert("editedAt".into(), Value::String(iso8601(at)));
    }
    if m.deleted {
        o.insert("deleted".into(), Value::Bool(true));
    }
    if !m.reactions.is_empty() {
        let counts: Map<String, Value> =
            m.reactions.iter().map(|r| (r.emoji.clone(), json!(r.user_ids.len()))).collect();
        o.insert("reactions".into(), Value::Object(counts));
    }
    Value::Object(o)
}

pub fn messages(ms: &[pb::Message]) -> Value {
    Value::Array(ms.iter().map(message).collect())
}

/// The ack data of `message:send` and the body of `POST …/messages`.
pub fn send_ack(m: &pb::Message) -> Value {
    json!({ "clientId": m.client_id, "serverId": m.id, "seq": m.seq, "createdAt": iso8601(m.created_at_ms) })
}

/// `Chat` (CONTRACT §6 `chat:update`, §8.27).
pub fn chat(c: &pb::Chat) -> Value {
    let member_ids: Vec<&str> = c.members.iter().map(|m| m.user_id.as_str()).collect();
    let admin_ids: Vec<&str> = c.members.iter().filter(|m| m.role == "admin").map(|m| m.user_id.as_str()).collect();
    json!({
        "id": c.id,
        "type": c.kind,
        "title": c.title,
        "memberIds": member_ids,
        "adminIds": admin_ids,
        "createdBy": c.created_by,
        "createdAt": iso8601(c.created_at_ms),
        "updatedAt": iso8601(c.updated_at_ms),
    })
}

/// A chat with the caller's counters, for `GET /v1/chats`.
pub fn chat_summary(s: &pb::ChatSummary) -> Value {
    let mut v = s.chat.as_ref().map(chat).unwrap_or_else(|| json!({}));
    if let Value::Object(o) = &mut v {
        o.insert("lastSeq".into(), json!(s.last_seq));
        o.insert("lastReadSeq".into(), json!(s.last_read_seq));
        o.insert("unread".into(), json!(s.unread));
    }
    v
}
