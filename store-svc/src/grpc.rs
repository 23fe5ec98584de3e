//! The store over gRPC: [`StoreService`] serves any [`Store`];
//! [`RemoteStore`] is the client side, itself a [`Store`].

use crate::store::{AppendBatch, Appended, History, NewChat, Store, StoreError};
use confab_proto::v1 as pb;
use confab_proto::v1::store_client::StoreClient;
use confab_proto::v1::store_server::{Store as StoreRpc, StoreServer};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// Serves a [`Store`] as the `confab.v1.Store` gRPC service.
pub struct StoreService {
    store: Arc<dyn Store>,
}

impl StoreService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub fn into_server(self) -> StoreServer<Self> {
        StoreServer::new(self)
    }
}

#[tonic::async_trait]
impl StoreRpc for StoreService {
    async fn create_chat(
        &self,
        req: Request<pb::CreateChatRequest>,
    ) -> Result<Response<pb::CreateChatResponse>, Status> {
        let r = req.into_inner();
        let (chat, created) = self
            .store
            .create_chat(NewChat { kind: r.kind, title: r.title, created_by: r.created_by, member_ids: r.member_ids })
            .await?;
        Ok(Response::new(pb::CreateChatResponse { chat: Some(chat), created }))
    }

    async fn get_chat(&self, req: Request<pb::GetChatRequest>) -> Result<Response<pb::GetChatResponse>, Status> {
        match self.store.get_chat(&req.into_inner().chat_id).await {
            Ok((chat, last_seq)) => Ok(Response::new(pb::GetChatResponse { chat: Some(chat), last_seq })),
            Err(StoreError::NotFound) => Ok(Response::new(pb::GetChatResponse { chat: None, last_seq: 0 })),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_user_chats(
        &self,
        req: Request<pb::ListUserChatsRequest>,
    ) -> Result<Response<pb::ListUserChatsResponse>, Status> {
        let r = req.into_inner();
        let chats = self.store.list_user_chats(&r.user_id, r.limit as usize).await?;
        Ok(Response::new(pb::ListUserChatsResponse { chats }))
    }

    async fn list_users_chats(
        &self,
        req: Request<pb::ListUsersChatsRequest>,
    ) -> Result<Response<pb::ListUsersChatsResponse>, Status> {
        let r = req.into_inner();
        let lists = self.store.list_users_chats(&r.user_ids, r.limit as usize).await?;
        let lists = lists.into_iter().map(|chats| pb::ListUserChatsResponse { chats }).collect();
        Ok(Response::new(pb::ListUsersChatsResponse { lists }))
    }

    async fn append(&self, req: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        let r = req.into_inner();
        let batch = AppendBatch {
            chat_id: r.chat_id,
            messages: r.messages,
            epoch: r.epoch,
            repeats_since_ms: r.repeats_since_ms,
        };
        let response = match self.store.append(batch).await? {
            Appended::Written(last_seq) => pb::AppendResponse { last_seq, repeats: Vec::new() },
            Appended::Repeats(repeats) => pb::AppendResponse { last_seq: 0, repeats },
        };
        Ok(Response::new(response))
    }

    async fn find_by_client_id(
        &self,
        req: Request<pb::FindByClientIdRequest>,
    ) -> Result<Response<pb::FindByClientIdResponse>, Status> {
        let r = req.into_inner();
        let message = self.store.find_by_client_id(&r.chat_id, &r.sender_id, &r.client_id, r.not_before_ms).await?;
        Ok(Response::new(pb::FindByClientIdResponse { message }))
    }

    async fn get_message(
        &self,
        req: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        let r = req.into_inner();
        let message = self.store.get_message(&r.chat_id, &r.message_id, r.seq).await?;
        Ok(Response::new(pb::GetMessageResponse { message }))
    }

    async fn claim(&self, req: Request<pb::ClaimRequest>) -> Result<Response<pb::ClaimResponse>, Status> {
        let r = req.into_inner();
        let epoch = self.store.claim(&r.chat_id, &r.owner).await?;
        Ok(Response::new(pb::ClaimResponse { epoch }))
    }

    async fn put_message(&self, req: Request<pb::PutMessageRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        let m = r.message.ok_or_else(|| Status::invalid_argument("message is required"))?;
        self.store.put_message(m, r.epoch).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn save_chat(&self, req: Request<pb::SaveChatRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        let chat = r.chat.ok_or_else(|| Status::invalid_argument("chat is required"))?;
        self.store.save_chat(chat, r.removed_user_ids, r.delete, r.epoch).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn get_cursor(&self, req: Request<pb::CursorRequest>) -> Result<Response<pb::CursorResponse>, Status> {
        let r = req.into_inner();
        let seq = self.store.get_cursor(&r.chat_id, &r.user_id).await?;
        Ok(Response::new(pb::CursorResponse { seq }))
    }

    async fn set_cursor(&self, req: Request<pb::SetCursorRequest>) -> Result<Response<pb::CursorResponse>, Status> {
        let r = req.into_inner();
        let seq = self.store.set_cursor(&r.chat_id, &r.user_id, r.seq).await?;
        Ok(Response::new(pb::CursorResponse { seq }))
    }

    async fn history(&self, req: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let r = req.into_inner();
        let h = self.store.history(&r.chat_id, r.after_seq, r.before_seq, r.limit as usize).await?;
        Ok(Response::new(pb::HistoryResponse { messages: h.messages, has_more: h.has_more }))
    }
}

/// A [`Store`] reached over gRPC. Every call has a deadline.
#[derive(Clone)]
pub struct RemoteStore {
    client: StoreClient<Channel>,
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
        Ok(Self { client: StoreClient::new(endpoint.connect_lazy()) })
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
                created_by: chat.created_by,
                member_ids: chat.member_ids,
            })
            .await?
            .into_inner();
        let chat = r.chat.ok_or_else(|| StoreError::Internal("store returned no chat".into()))?;
        Ok((chat, r.created))
    }

    async fn get_chat(&self, chat_id: &str) -> Result<(pb::Chat, u64), StoreError> {
        let r = self.client.clone().get_chat(pb::GetChatRequest { chat_id: chat_id.to_string() }).await?.into_inner();
        let chat = r.chat.ok_or(StoreError::NotFound)?;
        Ok((chat, r.last_seq))
    }

    async fn list_user_chats(&self, user_id: &str, limit: usize) -> Result<Vec<pb::ChatSummary>, StoreError> {
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
        user_ids: &[String],
        limit: usize,
    ) -> Result<Vec<Vec<pb::ChatSummary>>, StoreError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let req = pb::ListUsersChatsRequest { user_ids: user_ids.to_vec(), limit };
        let r = self.client.clone().list_users_chats(req).await?.into_inner();
        if r.lists.len() != user_ids.len() {
            return Err(StoreError::Internal("store returned a list per user of another request".into()));
        }
        Ok(r.lists.into_iter().map(|l| l.chats).collect())
    }

    async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        let request = pb::AppendRequest {
            chat_id: batch.chat_id,
            messages: batch.messages,
            epoch: batch.epoch,
            repeats_since_ms: batch.repeats_since_ms,
        };
        let r = self.client.clone().append(request).await?.into_inner();
        Ok(if r.repeats.is_empty() { Appended::Written(r.last_seq) } else { Appended::Repeats(r.repeats) })
    }

    async fn find_by_client_id(
        &self,
        chat_id: &str,
        sender_id: &str,
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

    async fn get_message(&self, chat_id: &str, message_id: &str, seq: u64) -> Result<Option<pb::Message>, StoreError> {
        let req = pb::GetMessageRequest { chat_id: chat_id.to_string(), message_id: message_id.to_string(), seq };
        Ok(self.client.clone().get_message(req).await?.into_inner().message)
    }

    async fn put_message(&self, message: pb::Message, epoch: Option<u64>) -> Result<(), StoreError> {
        self.client.clone().put_message(pb::PutMessageRequest { message: Some(message), epoch }).await?;
        Ok(())
    }

    async fn claim(&self, chat_id: &str, owner: &str) -> Result<u64, StoreError> {
        let req = pb::ClaimRequest { chat_id: chat_id.to_string(), owner: owner.to_string() };
        Ok(self.client.clone().claim(req).await?.into_inner().epoch)
    }

    async fn save_chat(
        &self,
        chat: pb::Chat,
        removed: Vec<String>,
        delete: bool,
        epoch: Option<u64>,
    ) -> Result<(), StoreError> {
        let req = pb::SaveChatRequest { chat: Some(chat), removed_user_ids: removed, delete, epoch };
        self.client.clone().save_chat(req).await?;
        Ok(())
    }

    async fn get_cursor(&self, chat_id: &str, user_id: &str) -> Result<u64, StoreError> {
        let req = pb::CursorRequest { chat_id: chat_id.to_string(), user_id: user_id.to_string() };
        Ok(self.client.clone().get_cursor(req).await?.into_inner().seq)
    }

    async fn set_cursor(&self, chat_id: &str, user_id: &str, seq: u64) -> Result<u64, StoreError> {
        let req = pb::SetCursorRequest { chat_id: chat_id.to_string(), user_id: user_id.to_string(), seq };
        Ok(self.client.clone().set_cursor(req).await?.into_inner().seq)
    }

    async fn history(
        &self,
        chat_id: &str,
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
