//! JSON shapes of the client contract (CONTRACT §5, §6, §7): the one place
//! that renders them. Routers and stores answer in typed protobuf; what a
//! client reads is written here, from those types.

use crate::attachments;
use confab_common::time::iso8601;
use confab_proto::v1 as pb;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// `Message` (CONTRACT §6), written straight from the router's protobuf.
/// Its attachments are the JSON the sender's edge rendered when it checked
/// them, copied in as they are; only messages stored by the first 1.1
/// builds carry them as typed fields instead.
pub struct Message<'a>(&'a pb::Message);

pub fn message(m: &pb::Message) -> Message<'_> {
    Message(m)
}

impl Serialize for Message<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        let mut o = s.serialize_map(None)?;
        o.serialize_entry("chatId", &m.chat_id)?;
        o.serialize_entry("id", &m.id)?;
        o.serialize_entry("seq", &m.seq)?;
        o.serialize_entry("senderId", &m.sender_id)?;
        o.serialize_entry("body", &m.body)?;
        o.serialize_entry("createdAt", &iso8601(m.created_at_ms))?;
        o.serialize_entry("clientId", &m.client_id)?;
        if let Some(r) = &m.reply_to {
            o.serialize_entry("replyTo", r)?;
        }
        if let Some(at) = m.edited_at_ms {
            o.serialize_entry("editedAt", &iso8601(at))?;
        }
        if m.deleted {
            o.serialize_entry("deleted", &true)?;
        }
        if !m.reactions.is_empty() {
            o.serialize_entry("reactions", &Counts(&m.reactions))?;
        }
        let profile = m.sender.as_ref();
        o.serialize_entry(
            "sender",
            &Sender {
                id: &m.sender_id,
                name: profile.and_then(|p| p.name.as_deref()),
                avatar_url: profile.and_then(|p| p.avatar_url.as_deref()),
            },
        )?;
        // Always present, empty when none (CONTRACT §10.2).
        o.serialize_entry("attachments", &Attachments(m))?;
        o.end()
    }
}

/// `sender { id, name, avatarUrl }` (CONTRACT §10.2), `null` where the
/// token had no claim.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Sender<'a> {
    id: &'a str,
    name: Option<&'a str>,
    avatar_url: Option<&'a str>,
}

struct Attachments<'a>(&'a pb::Message);

impl Serialize for Attachments<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        if m.attachments_json.is_empty() {
            return s.collect_seq(m.attachments.iter().map(attachments::Attachment::stored));
        }
        match serde_json::from_slice::<&RawValue>(&m.attachments_json) {
            Ok(raw) => raw.serialize(s),
            Err(e) => {
                // Only a damaged record could hold this: read as none.
                tracing::warn!(chat = %m.chat_id, seq = m.seq, "stored attachments are not JSON: {e}");
                s.collect_seq(std::iter::empty::<()>())
            }
        }
    }
}

/// `{ [emoji]: number }` (CONTRACT rule 6): how many users hold each emoji.
struct Counts<'a>(&'a [pb::Reaction]);

impl Serialize for Counts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|r| (&r.emoji, r.user_ids.len())))
    }
}

fn counts(reactions: &[pb::Reaction]) -> Value {
    json!(Counts(reactions))
}

pub fn messages(ms: &[pb::Message]) -> Vec<Message<'_>> {
    ms.iter().map(message).collect()
}

/// The ack data of `message:send` and the body of `POST …/messages`.
pub fn send_ack(m: &pb::Message) -> Value {
    json!({ "clientId": m.client_id, "serverId": m.id, "seq": m.seq, "createdAt": iso8601(m.created_at_ms) })
}

/// The ack data of `room:join`.
pub fn join_ack(chat_id: &str, j: &pb::JoinResult) -> Value {
    json!({
        "chatId": chat_id,
        "lastSeq": j.last_seq,
        "lastReadSeq": j.last_read_seq,
        "missed": messages(&j.missed),
        "hasMore": j.has_more,
    })
}

/// The ack data of `message:edit`.
pub fn edit_ack(r: &pb::EditResult) -> Value {
    json!({ "messageId": r.message_id, "editedAt": iso8601(r.edited_at_ms) })
}

/// The ack data of `message:delete`.
pub fn delete_ack(r: &pb::DeleteResult) -> Value {
    json!({ "messageId": r.message_id })
}

/// The ack data of `reaction:add` and `reaction:remove`.
pub fn reaction_ack() -> Value {
    json!({})
}

/// The ack data of `receipt:read`.
pub fn read_ack(r: &pb::ReadResult) -> Value {
    json!({ "lastReadSeq": r.last_read_seq, "readAt": iso8601(r.read_at_ms) })
}

/// A chat event from its router as the client's event: the name and the
/// payload (CONTRACT §6). `None` for the two that rooms deliver by rules of
/// their own: `message:new` in seq order (see [`message`]) and `chat:update`
/// to the members' personal rooms (see [`chat_update`]).
pub fn chat_event(chat_id: &str, event: &pb::delivery::Event) -> Option<(&'static str, Value)> {
    use pb::delivery::Event as E;
    Some(match event {
        E::MessageNew(_) | E::ChatUpdate(_) => return None,
        E::MessageUpdated(u) => (
            "message:updated",
            json!({
                "chatId": chat_id,
                "messageId": u.message_id,
                "seq": u.seq,
                "body": u.body,
                "editedAt": iso8601(u.edited_at_ms),
            }),
        ),
        E::MessageDeleted(d) => {
            ("message:deleted", json!({ "chatId": chat_id, "messageId": d.message_id, "seq": d.seq }))
        }
        E::ReactionUpdate(r) => (
            "reaction:update",
            json!({
                "chatId": chat_id,
                "messageId": r.message_id,
                "emoji": r.emoji,
                "userId": r.user_id,
                "action": if r.add { "add" } else { "remove" },
                "counts": counts(&r.reactions),
            }),
        ),
        E::TypingUpdate(t) => (
            "typing:update",
            json!({ "chatId": chat_id, "userId": t.user_id, "state": if t.start { "start" } else { "stop" } }),
        ),
        E::ReceiptUpdate(r) => (
            "receipt:update",
            json!({
                "chatId": chat_id,
                "userId": r.user_id,
                "messageId": r.message_id,
                "seq": r.seq,
                "readAt": iso8601(r.read_at_ms),
            }),
        ),
    })
}

/// The payload of `chat:update` (CONTRACT §6).
pub fn chat_update(c: &pb::Chat) -> Value {
    json!({ "chat": chat(c) })
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

#[cfg(test)]
mod tests {
    use super::*;
    use pb::delivery::Event;

    /// 2026-01-01T00:00:00.000Z.
    const NEW_YEAR_MS: i64 = 1_767_225_600_000;

    fn reaction(emoji: &str, users: &[&str]) -> pb::Reaction {
        pb::Reaction { emoji: emoji.into(), user_ids: users.iter().map(|u| u.to_string()).collect() }
    }

    fn event(e: Event) -> (&'static str, Value) {
        chat_event("c1", &e).expect("a chat event")
    }

    #[test]
    fn message_new_is_the_contracts_message() {
        let mut m = pb::Message {
            chat_id: "c1".into(),
            id: "m1".into(),
            seq: 3,
            sender_id: "alice".into(),
            body: "hi".into(),
            created_at_ms: NEW_YEAR_MS,
            client_id: "k1".into(),
            ..Default::default()
        };
        assert_eq!(
            json!(message(&m)),
            json!({
                "chatId": "c1", "id": "m1", "seq": 3, "senderId": "alice", "body": "hi",
                "createdAt": "2026-01-01T00:00:00.000Z", "clientId": "k1", "attachments": [],
                "sender": { "id": "alice", "name": null, "avatarUrl": null },
            })
        );
        m.sender =
            Some(pb::Profile { name: Some("Alice".into()), avatar_url: Some("https://cdn.example/a.png".into()) });
        assert_eq!(
            json!(message(&m))["sender"],
            json!({ "id": "alice", "name": "Alice", "avatarUrl": "https://cdn.example/a.png" })
        );
        m.attachments = vec![
            pb::Attachment {
                url: "https://cdn.example/a.png".into(),
                r#type: "image/png".into(),
                name: Some("a.png".into()),
                size: Some(1234),
                width: Some(640),
                height: Some(480),
                thumbnail_url: Some("https://cdn.example/a-small.png".into()),
            },
            pb::Attachment { url: "https://cdn.example/b".into(), r#type: "text/plain".into(), ..Default::default() },
        ];
        assert_eq!(
            json!(message(&m))["attachments"],
            json!([
                { "url": "https://cdn.example/a.png", "type": "image/png", "name": "a.png", "size": 1234,
                  "width": 640, "height": 480, "thumbnailUrl": "https://cdn.example/a-small.png" },
                { "url": "https://cdn.example/b", "type": "text/plain" },
            ])
        );
        // What today's edges send: the JSON they rendered, copied in as it
        // is, ahead of typed ones a router of the first 1.1 builds kept.
        let rendered = r#"[{"url":"https://cdn.example/c.pdf","type":"application/pdf","size":5}]"#;
        m.attachments_json = rendered.as_bytes().to_vec().into();
        assert_eq!(
            json!(message(&m))["attachments"],
            json!([{ "url": "https://cdn.example/c.pdf", "type": "application/pdf", "size": 5 }])
        );
        let text = crate::socketio::packet::event("message:new", &message(&m));
        assert!(text.contains(&format!(r#""attachments":{rendered}"#)), "{text}");
        m.attachments_json = "[{broken".as_bytes().to_vec().into();
        assert_eq!(json!(message(&m))["attachments"], json!([]), "a damaged record reads as none");
        m.reply_to = Some("m0".into());
        m.edited_at_ms = Some(NEW_YEAR_MS + 1500);
        m.reactions = vec![reaction("👍", &["alice", "bob"]), reaction("🎉", &["bob"])];
        let v = json!(message(&m));
        assert_eq!(v["replyTo"], "m0");
        assert_eq!(v["editedAt"], "2026-01-01T00:00:01.500Z");
        assert_eq!(v["reactions"], json!({ "👍": 2, "🎉": 1 }));
        assert_eq!(v.get("deleted"), None);
        let tombstone = pb::Message { deleted: true, body: String::new(), reactions: vec![], ..m };
        assert_eq!(json!(message(&tombstone))["deleted"], true);
        assert_eq!(chat_event("c1", &Event::MessageNew(tombstone)), None);
    }

    #[test]
    fn message_updated() {
        let u =
            pb::MessageUpdated { message_id: "m1".into(), seq: 3, body: "edited".into(), edited_at_ms: NEW_YEAR_MS };
        let (name, payload) = event(Event::MessageUpdated(u));
        assert_eq!(name, "message:updated");
        assert_eq!(
            payload,
            json!({ "chatId": "c1", "messageId": "m1", "seq": 3, "body": "edited", "editedAt": "2026-01-01T00:00:00.000Z" })
        );
        // The bytes a client reads: keys in one fixed order.
        assert_eq!(
            payload.to_string(),
            r#"{"body":"edited","chatId":"c1","editedAt":"2026-01-01T00:00:00.000Z","messageId":"m1","seq":3}"#
        );
    }

    #[test]
    fn message_deleted() {
        let (name, payload) = event(Event::MessageDeleted(pb::MessageDeleted { message_id: "m1".into(), seq: 3 }));
        assert_eq!(name, "message:deleted");
        assert_eq!(payload, json!({ "chatId": "c1", "messageId": "m1", "seq": 3 }));
    }

    #[test]
    fn reaction_update_counts_the_holders_after_the_change() {
        let added = pb::ReactionUpdate {
            message_id: "m1".into(),
            emoji: "👍".into(),
            user_id: "bob".into(),
            add: true,
            reactions: vec![reaction("👍", &["alice", "bob"]), reaction("🎉", &["carol"])],
        };
        let (name, payload) = event(Event::ReactionUpdate(added.clone()));
        assert_eq!(name, "reaction:update");
        assert_eq!(
            payload,
            json!({
                "chatId": "c1", "messageId": "m1", "emoji": "👍", "userId": "bob", "action": "add",
                "counts": { "👍": 2, "🎉": 1 },
            })
        );
        // The last holder gone: the emoji leaves the counts.
        let removed = pb::ReactionUpdate { add: false, reactions: vec![], ..added };
        let (_, payload) = event(Event::ReactionUpdate(removed));
        assert_eq!(payload["action"], "remove");
        assert_eq!(payload["counts"], json!({}));
    }

    #[test]
    fn typing_update() {
        let (name, payload) = event(Event::TypingUpdate(pb::TypingUpdate { user_id: "bob".into(), start: true }));
        assert_eq!(name, "typing:update");
        assert_eq!(payload, json!({ "chatId": "c1", "userId": "bob", "state": "start" }));
        let (_, payload) = event(Event::TypingUpdate(pb::TypingUpdate { user_id: "bob".into(), start: false }));
        assert_eq!(payload["state"], "stop");
    }

    #[test]
    fn receipt_update() {
        let r = pb::ReceiptUpdate { user_id: "bob".into(), message_id: "m1".into(), seq: 3, read_at_ms: NEW_YEAR_MS };
        let (name, payload) = event(Event::ReceiptUpdate(r));
        assert_eq!(name, "receipt:update");
        assert_eq!(
            payload,
            json!({ "chatId": "c1", "userId": "bob", "messageId": "m1", "seq": 3, "readAt": "2026-01-01T00:00:00.000Z" })
        );
    }

    #[test]
    fn chat_update() {
        let c = pb::Chat {
            id: "c1".into(),
            kind: "group".into(),
            title: Some("team".into()),
            members: vec![
                pb::Member { user_id: "alice".into(), role: "admin".into(), joined_at_ms: NEW_YEAR_MS },
                pb::Member { user_id: "bob".into(), role: "member".into(), joined_at_ms: NEW_YEAR_MS },
            ],
            created_by: "alice".into(),
            created_at_ms: NEW_YEAR_MS,
            updated_at_ms: NEW_YEAR_MS + 1,
        };
        assert_eq!(
            super::chat_update(&c),
            json!({ "chat": {
                "id": "c1", "type": "group", "title": "team", "memberIds": ["alice", "bob"], "adminIds": ["alice"],
                "createdBy": "alice", "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.001Z",
            } })
        );
        assert_eq!(chat_event("c1", &Event::ChatUpdate(pb::ChatUpdate::default())), None);
    }

    #[test]
    fn acks() {
        let m = pb::Message {
            id: "m1".into(),
            seq: 3,
            client_id: "k1".into(),
            created_at_ms: NEW_YEAR_MS,
            ..Default::default()
        };
        assert_eq!(
            send_ack(&m),
            json!({ "clientId": "k1", "serverId": "m1", "seq": 3, "createdAt": "2026-01-01T00:00:00.000Z" })
        );
        let joined = pb::JoinResult { last_seq: 4, last_read_seq: 2, missed: vec![m.clone()], has_more: false };
        assert_eq!(
            join_ack("c1", &joined),
            json!({ "chatId": "c1", "lastSeq": 4, "lastReadSeq": 2, "missed": [message(&m)], "hasMore": false })
        );
        let edited = pb::EditResult { message_id: "m1".into(), edited_at_ms: NEW_YEAR_MS };
        assert_eq!(edit_ack(&edited), json!({ "messageId": "m1", "editedAt": "2026-01-01T00:00:00.000Z" }));
        assert_eq!(delete_ack(&pb::DeleteResult { message_id: "m1".into() }), json!({ "messageId": "m1" }));
        assert_eq!(reaction_ack(), json!({}));
        let read = pb::ReadResult { last_read_seq: 3, read_at_ms: NEW_YEAR_MS };
        assert_eq!(read_ack(&read), json!({ "lastReadSeq": 3, "readAt": "2026-01-01T00:00:00.000Z" }));
    }
}
