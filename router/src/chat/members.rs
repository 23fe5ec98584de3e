//! Who is in a chat: announcing a new chat, and changes of title, members
//! and roles, each published to every edge as `chat:update`.

use super::{error, forbidden, not_found, store_error, write_error, ChatState, OpResult, Store};
use crate::edges::EdgeRegistry;
use confab_common::time::now_ms;
use confab_common::UserId;
use confab_proto::v1 as pb;
use confab_proto::v1::{reply::Result as ReplyResult, router_frame::Kind};
use std::sync::Arc;

impl ChatState {
    /// Reloads the chat (just created) and tells every edge.
    pub(super) async fn announce(&mut self, store: &Arc<dyn Store>, edges: &EdgeRegistry) -> OpResult {
        let (chat, _) = store.get_chat(&self.chat_id).await.map_err(|e| store_error(&e))?;
        self.chat = chat;
        let added = self.chat.members.iter().map(|m| m.user_id.clone()).collect();
        self.publish_chat(edges, added, Vec::new());
        Ok(ReplyResult::Ok(pb::Empty {}))
    }

    /// Sends `chat:update` through every edge. Every edge is subscribed
    /// before it hears of the change, so no message can slip between; edges
    /// with no member sockets unsubscribe again.
    fn publish_chat(&mut self, edges: &EdgeRegistry, added: Vec<String>, removed: Vec<String>) {
        let frame = Kind::Delivery(pb::Delivery {
            chat_id: self.chat_id.to_string(),
            event: Some(pb::delivery::Event::ChatUpdate(pb::ChatUpdate {
                chat: Some(self.chat.clone()),
                last_seq: self.last_seq,
                added_user_ids: added,
                removed_user_ids: removed,
            })),
        });
        for other in edges.all() {
            if other.send(frame.clone()) {
                self.subscribers.insert(other.key(), other);
            }
        }
    }

    /// Title, members and roles (CONTRACT §7, §8.10, §8.27).
    pub(super) async fn manage(
        &mut self,
        store: &Arc<dyn Store>,
        edges: &EdgeRegistry,
        user: &str,
        op: pb::ManageOp,
    ) -> OpResult {
        use pb::manage_op::Change;
        let validation = |m: &str| error(pb::ErrorCode::Validation, m);
        let caller_admin = match self.member(user) {
            Some(m) => m.role == "admin",
            None => return Err(forbidden("not a member of this chat")),
        };
        let mut chat = self.chat.clone();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let now = now_ms();
        match op.change {
            None => return Err(validation("no change given")),
            Some(Change::Title(title)) => {
                if !caller_admin {
                    return Err(forbidden("only an admin may rename the chat"));
                }
                if chat.title.as_deref() == Some(title.as_str()) {
                    return Ok(ReplyResult::Chat(chat));
                }
                chat.title = Some(title);
            }
            Some(Change::AddMembers(ids)) => {
                if !caller_admin {
                    return Err(forbidden("only an admin may add members"));
                }
                if chat.kind == "dm" {
                    return Err(validation("a dm's members cannot change"));
                }
                for id in ids.user_ids {
                    if !chat.members.iter().any(|m| m.user_id == id) {
                        chat.members.push(pb::Member { user_id: id.clone(), role: "member".into(), joined_at_ms: now });
                        added.push(id);
                    }
                }
                if added.is_empty() {
                    return Ok(ReplyResult::Chat(chat));
                }
            }
            Some(Change::RemoveMember(target)) => {
                if target != user && !caller_admin {
                    return Err(forbidden("only an admin may remove another member"));
                }
                if chat.kind == "dm" {
                    return Err(validation("a dm's members cannot change"));
                }
                let Some(i) = chat.members.iter().position(|m| m.user_id == target) else {
                    return Err(not_found("not a member of this chat"));
                };
                chat.members.remove(i);
                removed.push(target);
                // The longest-standing member inherits a group left without an admin.
                if !chat.members.is_empty() && !chat.members.iter().any(|m| m.role == "admin") {
                    chat.members[0].role = "admin".into();
                }
            }
            Some(Change::SetRole(change)) => {
                if !caller_admin {
                    return Err(forbidden("only an admin may change roles"));
                }
                if change.role != "admin" && change.role != "member" {
                    return Err(validation("role must be admin or member"));
                }
                let admins = chat.members.iter().filter(|m| m.role == "admin").count();
                let Some(m) = chat.members.iter_mut().find(|m| m.user_id == change.user_id) else {
                    return Err(not_found("not a member of this chat"));
                };
                if m.role == change.role {
                    return Ok(ReplyResult::Chat(chat));
                }
                if m.role == "admin" && admins == 1 {
                    return Err(validation("the last admin cannot be demoted"));
                }
                m.role = change.role;
            }
        }
        chat.updated_at_ms = now;
        let delete = chat.members.is_empty();
        store
            .save_chat(chat.clone(), removed.iter().map(UserId::from).collect(), delete, Some(self.epoch))
            .await
            .map_err(|e| self.fenced_by(e))
            .map_err(write_error)?;
        self.chat = chat;
        self.publish_chat(edges, added, removed);
        Ok(ReplyResult::Chat(self.chat.clone()))
    }
}
