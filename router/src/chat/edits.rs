//! Changes to a stored message: edit, delete and reactions.

use super::{forbidden, not_found, store_error, write_error, ChatState, OpResult, Store};
use confab_common::time::now_ms;
use confab_proto::v1 as pb;
use confab_proto::v1::delivery::Event;
use confab_proto::v1::reply::Result as ReplyResult;
use std::sync::Arc;

impl ChatState {
    /// A live (not deleted) message of this chat, for a member.
    async fn live_message(
        &self,
        store: &Arc<dyn Store>,
        user: &str,
        message_id: &str,
    ) -> Result<pb::Message, ReplyResult> {
        if !self.is_member(user) {
            return Err(forbidden("not a member of this chat"));
        }
        match store.get_message(&self.chat_id, message_id, 0).await {
            Ok(Some(m)) if !m.deleted => Ok(m),
            Ok(_) => Err(not_found("no such message")),
            Err(e) => Err(store_error(&e)),
        }
    }

    pub(super) async fn edit(&mut self, store: &Arc<dyn Store>, user: &str, op: pb::EditOp) -> OpResult {
        let mut m = self.live_message(store, user, &op.message_id).await?;
        if m.sender_id != user {
            return Err(forbidden("only the sender may edit a message"));
        }
        // The edge let a blank body through: only a message with
        // attachments may have one (CONTRACT §10.1).
        if op.body.chars().all(char::is_whitespace) && m.attachments.is_empty() && m.attachments_json.is_empty() {
            return Err(super::error(
                pb::ErrorCode::Validation,
                "body must contain a non-whitespace character, or the message an attachment",
            ));
        }
        let edited_at_ms = now_ms();
        m.body = op.body;
        m.edited_at_ms = Some(edited_at_ms);
        store.put_message(m.clone(), Some(self.epoch)).await.map_err(|e| self.fenced_by(e)).map_err(write_error)?;
        self.tail.update(&m);
        self.send_all(Event::MessageUpdated(pb::MessageUpdated {
            message_id: m.id.clone(),
            seq: m.seq,
            body: m.body,
            edited_at_ms,
        }));
        Ok(ReplyResult::Edit(pb::EditResult { message_id: m.id, edited_at_ms }))
    }

    pub(super) async fn delete(&mut self, store: &Arc<dyn Store>, user: &str, op: pb::DeleteOp) -> OpResult {
        let Some(member) = self.member(user) else {
            return Err(forbidden("not a member of this chat"));
        };
        let admin = member.role == "admin";
        let mut m = match store.get_message(&self.chat_id, &op.message_id, 0).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(not_found("no such message")),
            Err(e) => return Err(store_error(&e)),
        };
        if m.sender_id != user && !admin {
            return Err(forbidden("only the sender or a chat admin may delete a message"));
        }
        if !m.deleted {
            m.deleted = true;
            m.body.clear();
            m.reactions.clear();
            m.attachments.clear();
            m.attachments_json.clear();
            store.put_message(m.clone(), Some(self.epoch)).await.map_err(|e| self.fenced_by(e)).map_err(write_error)?;
            self.tail.update(&m);
            self.send_all(Event::MessageDeleted(pb::MessageDeleted { message_id: m.id.clone(), seq: m.seq }));
        }
        Ok(ReplyResult::Delete(pb::DeleteResult { message_id: m.id }))
    }

    pub(super) async fn react(&mut self, store: &Arc<dyn Store>, user: &str, op: pb::ReactOp) -> OpResult {
        let mut m = self.live_message(store, user, &op.message_id).await?;
        let changed = if op.add {
            match m.reactions.iter_mut().find(|r| r.emoji == op.emoji) {
                Some(r) if r.user_ids.iter().any(|u| u == user) => false,
                Some(r) => {
                    r.user_ids.push(user.to_string());
                    true
                }
                None => {
                    m.reactions.push(pb::Reaction { emoji: op.emoji.clone(), user_ids: vec![user.to_string()] });
                    true
                }
            }
        } else {
            let before: usize = m.reactions.iter().map(|r| r.user_ids.len()).sum();
            for r in &mut m.reactions {
                if r.emoji == op.emoji {
                    r.user_ids.retain(|u| u != user);
                }
            }
            m.reactions.retain(|r| !r.user_ids.is_empty());
            m.reactions.iter().map(|r| r.user_ids.len()).sum::<usize>() != before
        };
        if changed {
            store.put_message(m.clone(), Some(self.epoch)).await.map_err(|e| self.fenced_by(e)).map_err(write_error)?;
            self.tail.update(&m);
            self.send_all(Event::ReactionUpdate(pb::ReactionUpdate {
                message_id: m.id,
                emoji: op.emoji,
                user_id: user.to_string(),
                add: op.add,
                reactions: m.reactions,
            }));
        }
        Ok(ReplyResult::Ok(pb::Empty {}))
    }
}
