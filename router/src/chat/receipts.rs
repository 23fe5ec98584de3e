//! Read receipts: each member's read cursor, cached by the writer.

use super::{error, forbidden, json, not_found, store_error, write_error, ChatState, OpResult, Store};
use crate::events;
use confab_common::time::now_ms;
use confab_common::UserId;
use confab_proto::v1 as pb;
use confab_proto::v1::reply::Result as ReplyResult;
use std::sync::Arc;

impl ChatState {
    pub(super) async fn cursor(&mut self, store: &Arc<dyn Store>, user: &str) -> Result<u64, ReplyResult> {
        if let Some(c) = self.cursors.get(user) {
            return Ok(*c);
        }
        let c = store.get_cursor(&self.chat_id, &UserId::from(user)).await.map_err(|e| store_error(&e))?;
        self.cursors.insert(user.to_string(), c);
        Ok(c)
    }

    pub(super) async fn read(&mut self, store: &Arc<dyn Store>, user: &str, op: pb::ReadOp) -> OpResult {
        if !self.is_member(user) {
            return Err(forbidden("not a member of this chat"));
        }
        let target = if op.message_id.is_empty() {
            let seq = op.seq.unwrap_or(0);
            if seq > self.last_seq {
                return Err(error(pb::ErrorCode::Validation, "seq is beyond the chat's last message"));
            }
            match store.get_message(&self.chat_id, "", seq).await {
                Ok(Some(m)) => m,
                Ok(None) => pb::Message { seq, ..Default::default() },
                Err(e) => return Err(store_error(&e)),
            }
        } else {
            match store.get_message(&self.chat_id, &op.message_id, 0).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(not_found("no such message")),
                Err(e) => return Err(store_error(&e)),
            }
        };
        let current = self.cursor(store, user).await?;
        let read_at = now_ms();
        if target.seq <= current {
            return Ok(json(events::read_ack(current, read_at)));
        }
        let now_at = store.set_cursor(&self.chat_id, &UserId::from(user), target.seq).await.map_err(write_error)?;
        self.cursors.insert(user.to_string(), now_at);
        self.broadcast(events::receipt_update(&self.chat_id, user, &target, read_at), None);
        Ok(json(events::read_ack(now_at, read_at)))
    }
}
