//! The store over gRPC: [`StoreService`] serves any [`Store`]; the client
//! side, `RemoteStore`, lives in confab-api beside the trait. The ids of a
//! request become the `confab-common` newtypes here, on their way in.

use crate::store::{AppendBatch, Appended, NewChat, Store, StoreError};
use confab_common::telemetry::metrics::{Metrics, LATENCY_BUCKETS};
use confab_common::telemetry::SPANS;
use confab_common::UserId;
use confab_proto::v1 as pb;
use confab_proto::v1::store_server::{Store as StoreRpc, StoreServer};
use opentelemetry::metrics::Histogram;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Serves a [`Store`] as the `confab.v1.Store` gRPC service.
pub struct StoreService {
    store: Arc<dyn Store>,
    appends: Appends,
}

/// How appends go, whatever the backend (`confab_store_append_*`).
#[derive(Clone)]
pub struct Appends {
    pub duration: Histogram<f64>,
    pub batch_size: Histogram<u64>,
}

impl Appends {
    pub fn new(metrics: &Metrics) -> Self {
        let m = metrics.meter("confab-store");
        Self {
            duration: m
                .f64_histogram("confab.store.append.duration")
                .with_unit("s")
                .with_description("Appends, from request to durable answer.")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            batch_size: m
                .u64_histogram("confab.store.append.batch_size")
                .with_description("Messages per append.")
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0])
                .build(),
        }
    }
}

impl StoreService {
    pub fn new(store: Arc<dyn Store>, appends: Appends) -> Self {
        Self { store, appends }
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
            .create_chat(NewChat {
                kind: r.kind,
                title: r.title,
                created_by: r.created_by.into(),
                member_ids: r.member_ids.into_iter().map(UserId::from).collect(),
            })
            .await?;
        Ok(Response::new(pb::CreateChatResponse { chat: Some(chat), created }))
    }

    async fn get_chat(&self, req: Request<pb::GetChatRequest>) -> Result<Response<pb::GetChatResponse>, Status> {
        match self.store.get_chat(&req.into_inner().chat_id.into()).await {
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
        let chats = self.store.list_user_chats(&r.user_id.into(), r.limit as usize).await?;
        Ok(Response::new(pb::ListUserChatsResponse { chats }))
    }

    async fn list_users_chats(
        &self,
        req: Request<pb::ListUsersChatsRequest>,
    ) -> Result<Response<pb::ListUsersChatsResponse>, Status> {
        let r = req.into_inner();
        let users: Vec<UserId> = r.user_ids.into_iter().map(UserId::from).collect();
        let lists = self.store.list_users_chats(&users, r.limit as usize).await?;
        let lists = lists.into_iter().map(|chats| pb::ListUserChatsResponse { chats }).collect();
        Ok(Response::new(pb::ListUsersChatsResponse { lists }))
    }

    async fn append(&self, req: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        let r = req.into_inner();
        let started = std::time::Instant::now();
        self.appends.batch_size.record(r.messages.len() as u64, &[]);
        let batch = AppendBatch {
            chat_id: r.chat_id.into(),
            messages: r.messages,
            epoch: r.epoch,
            repeats_since_ms: r.repeats_since_ms,
        };
        let appended = self.store.append(batch).instrument(tracing::info_span!(target: SPANS, "store.append")).await;
        self.appends.duration.record(started.elapsed().as_secs_f64(), &[]);
        let response = match appended? {
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
        let message =
            self.store.find_by_client_id(&r.chat_id.into(), &r.sender_id.into(), &r.client_id, r.not_before_ms).await?;
        Ok(Response::new(pb::FindByClientIdResponse { message }))
    }

    async fn get_message(
        &self,
        req: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        let r = req.into_inner();
        let message = self.store.get_message(&r.chat_id.into(), &r.message_id, r.seq).await?;
        Ok(Response::new(pb::GetMessageResponse { message }))
    }

    async fn claim(&self, req: Request<pb::ClaimRequest>) -> Result<Response<pb::ClaimResponse>, Status> {
        let r = req.into_inner();
        let epoch = self.store.claim(&r.chat_id.into(), &r.owner).await?;
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
        self.store
            .save_chat(chat, r.removed_user_ids.into_iter().map(UserId::from).collect(), r.delete, r.epoch)
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn get_cursor(&self, req: Request<pb::CursorRequest>) -> Result<Response<pb::CursorResponse>, Status> {
        let r = req.into_inner();
        let seq = self.store.get_cursor(&r.chat_id.into(), &r.user_id.into()).await?;
        Ok(Response::new(pb::CursorResponse { seq }))
    }

    async fn set_cursor(&self, req: Request<pb::SetCursorRequest>) -> Result<Response<pb::CursorResponse>, Status> {
        let r = req.into_inner();
        let seq = self.store.set_cursor(&r.chat_id.into(), &r.user_id.into(), r.seq).await?;
        Ok(Response::new(pb::CursorResponse { seq }))
    }

    async fn put_profiles(&self, req: Request<pb::PutProfilesRequest>) -> Result<Response<pb::Empty>, Status> {
        let profiles = req
            .into_inner()
            .profiles
            .into_iter()
            .map(|p| (UserId::from(p.user_id), p.profile.unwrap_or_default()))
            .collect();
        self.store.put_profiles(profiles).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn get_profiles(
        &self,
        req: Request<pb::GetProfilesRequest>,
    ) -> Result<Response<pb::GetProfilesResponse>, Status> {
        let users: Vec<UserId> = req.into_inner().user_ids.into_iter().map(UserId::from).collect();
        let found = self.store.profiles(&users).await?;
        let profiles = found
            .into_iter()
            .map(|(user, p)| pb::UserProfile { user_id: user.to_string(), profile: Some(p) })
            .collect();
        Ok(Response::new(pb::GetProfilesResponse { profiles }))
    }

    async fn history(&self, req: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let r = req.into_inner();
        let h = self.store.history(&r.chat_id.into(), r.after_seq, r.before_seq, r.limit as usize).await?;
        Ok(Response::new(pb::HistoryResponse { messages: h.messages, has_more: h.has_more }))
    }
}
