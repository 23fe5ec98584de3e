//! Read receipts: each member's read cursor, cached by the writer.

use super::{error, forbidden, not_found, store_error, write_error, ChatState, OpResult, Store};
use confab_common::time::now_ms;
use confab_proto::v1 as pb;
use confab_proto::v1::delivery::Event;
use confab_proto::v1::reply::Result as ReplyResult;
use std::sync::Arc;

impl ChatState {
    pub(super) async fn cursor(&mut self, store: &Arc<dyn Store>, user: &str) -> Result<u64, ReplyResult> {
        if let Some(c) = self.cursors.get(user) {
            return Ok(*c);
        }
        let c = store.get_cursor(&self.chat_id, user).await.map_err(|e| store_error(&e))?;
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
        let read_at_ms = now_ms();
        if target.seq <= current {
            return Ok(ReplyResult::Read(pb::ReadResult { last_read_seq: current, read_at_ms }));
        }
        let now_at = store.set_cursor(&self.chat_id, user, target.seq).await.map_err(write_error)?;
        self.cursors.insert(user.to_string(), now_at);
        self.send_all(Event::ReceiptUpdate(pb::ReceiptUpdate {
            user_id: user.to_string(),
            message_id: target.id,
            seq: target.seq,
            read_at_ms,
        }));
        Ok(ReplyResult::Read(pb::ReadResult { last_read_seq: now_at, read_at_ms }))
    }
}
