//! The gRPC client of store-svc, itself a [`Store`].

use super::{AppendBatch, Appended, History, NewChat, Store, StoreError};
use confab_common::telemetry::propagation::{traced, TracedChannel};
use confab_common::{ChatId, UserId};
use confab_proto::v1 as pb;
use confab_proto::v1::store_client::StoreClient;
use std::time::Duration;
use tonic::transport::Endpoint;

/// A [`Store`] reached over gRPC. Every call has a deadline.
#[derive(Clone)]
pub struct RemoteStore {
    client: StoreClient<TracedChannel>,
}

/// Calls one client has in flight to the store at once.
const CALLS_IN_FLIGHT: usize = 256;

impl RemoteStore {
    /// Connects lazily to `url` (`http://host:port`); calls fail with
    /// `Unavailable` while the store is unreachable.
    pub fn connect_lazy(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| StoreError::Invalid(format!("bad store url {url}: {e}")))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true)
            // A storm of calls (thousands of reconnects at once) waits here
            // rather than opening thousands of HTTP/2 streams whose timeouts
            // and resets made the connection fail for every caller.
            .concurrency_limit(CALLS_IN_FLIGHT);
        Ok(Self { client: StoreClient::new(traced(endpoint.connect_lazy())) })
    }
}

#[async_trait::async_trait]
impl Store for RemoteStore {
    async fn create_chat(&self, chat: NewChat) -> Result<(pb::Chat, bool), StoreError> {
        let r = self
            .client
            .clone()
            .create_chat(pb::CreateChatRequest {
                kind: chat.kind,
                title: chat.title,
                created_by: chat.created_by.into(),
                member_ids: chat.member_ids.into_iter().map(String::from).collect(),
            })
            .await?
            .into_inner();
        let chat = r.chat.ok_or_else(|| StoreError::Internal("store returned no chat".into()))?;
        Ok((chat, r.created))
    }

    async fn get_chat(&self, chat_id: &ChatId) -> Result<(pb::Chat, u64), StoreError> {
        let r = self.client.clone().get_chat(pb::GetChatRequest { chat_id: chat_id.to_string() }).await?.into_inner();
        let chat = r.chat.ok_or(StoreError::NotFound)?;
        Ok((chat, r.last_seq))
    }

    async fn list_user_chats(&self, user_id: &UserId, limit: usize) -> Result<Vec<pb::ChatSummary>, StoreError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let r = self
            .client
            .clone()
            .list_user_chats(pb::ListUserChatsRequest { user_id: user_id.to_string(), limit })
            .await?
            .into_inner();
        Ok(r.chats)
    }

    async fn list_users_chats(
        &self,
        user_ids: &[UserId],
        limit: usize,
    ) -> Result<Vec<Vec<pb::ChatSummary>>, StoreError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let req = pb::ListUsersChatsRequest { user_ids: user_ids.iter().map(|u| u.to_string()).collect(), limit };
        let r = self.client.clone().list_users_chats(req).await?.into_inner();
        if r.lists.len() != user_ids.len() {
            return Err(StoreError::Internal("store returned a list per user of another request".into()));
        }
        Ok(r.lists.into_iter().map(|l| l.chats).collect())
    }

    async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        let request = pb::AppendRequest {
            chat_id: batch.chat_id.into(),
            messages: batch.messages,
            epoch: batch.epoch,
            repeats_since_ms: batch.repeats_since_ms,
        };
        let r = self.client.clone().append(request).await?.into_inner();
        Ok(if r.repeats.is_empty() { Appended::Written(r.last_seq) } else { Appended::Repeats(r.repeats) })
    }

    async fn find_by_client_id(
        &self,
        chat_id: &ChatId,
        sender_id: &UserId,
        client_id: &str,
        not_before_ms: i64,
    ) -> Result<Option<pb::Message>, StoreError> {
        let r = self
            .client
            .clone()
            .find_by_client_id(pb::FindByClientIdRequest {
                chat_id: chat_id.to_string(),
                sender_id: sender_id.to_string(),
                client_id: client_id.to_string(),
                not_before_ms,
            })
            .await?
            .into_inner();
        Ok(r.message)
    }

    async fn get_message(
        &self,
        chat_id: &ChatId,
        message_id: &str,
        seq: u64,
    ) -> Result<Option<pb::Message>, StoreError> {
        let req = pb::GetMessageRequest { chat_id: chat_id.to_string(), message_id: message_id.to_string(), seq };
        Ok(self.client.clone().get_message(req).await?.into_inner().message)
    }

    async fn put_message(&self, message: pb::Message, epoch: Option<u64>) -> Result<(), StoreError> {
        self.client.clone().put_message(pb::PutMessageRequest { message: Some(message), epoch }).await?;
        Ok(())
    }

    async fn claim(&self, chat_id: &ChatId, owner: &str) -> Result<u64, StoreError> {
        let req = pb::ClaimRequest { chat_id: chat_id.to_string(), owner: owner.to_string() };
        Ok(self.client.clone().claim(req).await?.into_inner().epoch)
    }

    async fn save_chat(
        &self,
        chat: pb::Chat,
        removed: Vec<UserId>,
        delete: bool,
        epoch: Option<u64>,
    ) -> Result<(), StoreError> {
        let removed_user_ids = removed.into_iter().map(String::from).collect();
        let req = pb::SaveChatRequest { chat: Some(chat), removed_user_ids, delete, epoch };
        self.client.clone().save_chat(req).await?;
        Ok(())
    }

    async fn get_cursor(&self, chat_id: &ChatId, user_id: &UserId) -> Result<u64, StoreError> {
        let req = pb::CursorRequest { chat_id: chat_id.to_string(), user_id: user_id.to_string() };
        Ok(self.client.clone().get_cursor(req).await?.into_inner().seq)
    }

    async fn set_cursor(&self, chat_id: &ChatId, user_id: &UserId, seq: u64) -> Result<u64, StoreError> {
        let req = pb::SetCursorRequest { chat_id: chat_id.to_string(), user_id: user_id.to_string(), seq };
        Ok(self.client.clone().set_cursor(req).await?.into_inner().seq)
    }

    async fn put_profiles(&self, profiles: Vec<(UserId, pb::Profile)>) -> Result<(), StoreError> {
        let profiles = profiles
            .into_iter()
            .map(|(user, p)| pb::UserProfile { user_id: user.to_string(), profile: Some(p) })
            .collect();
        self.client.clone().put_profiles(pb::PutProfilesRequest { profiles }).await?;
        Ok(())
    }

    async fn profiles(&self, users: &[UserId]) -> Result<Vec<(UserId, pb::Profile)>, StoreError> {
        let req = pb::GetProfilesRequest { user_ids: users.iter().map(ToString::to_string).collect() };
        let found = self.client.clone().get_profiles(req).await?.into_inner().profiles;
        Ok(found.into_iter().map(|p| (UserId::from(p.user_id), p.profile.unwrap_or_default())).collect())
    }

    async fn history(
        &self,
        chat_id: &ChatId,
        after_seq: Option<u64>,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<History, StoreError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let r = self
            .client
            .clone()
            .history(pb::HistoryRequest { chat_id: chat_id.to_string(), after_seq, before_seq, limit })
            .await?
            .into_inner();
        Ok(History { messages: r.messages, has_more: r.has_more })
    }
}
