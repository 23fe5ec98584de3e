//! The gRPC client of presence-svc, itself a [`Presence`].

use super::{Acquired, Limit, Presence, PresenceError, RateClass, Updates, Watching};
use confab_common::{EdgeId, UserId};
use confab_proto::v1 as pb;
use confab_proto::v1::presence_client::PresenceClient;
use futures::StreamExt;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A [`Presence`] reached over gRPC. Every call has a deadline (for
/// [`Presence::watch`], until the stream is open).
#[derive(Clone)]
pub struct RemotePresence {
    client: PresenceClient<Channel>,
}

impl RemotePresence {
    /// Connects lazily to `url` (`http://host:port`); calls fail with
    /// `Unavailable` while presence-svc is unreachable.
    pub fn connect_lazy(url: &str, timeout: Duration) -> Result<Self, PresenceError> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| PresenceError::Invalid(format!("bad presence url {url}: {e}")))?
            .connect_timeout(timeout)
            .timeout(timeout);
        Ok(Self { client: PresenceClient::new(endpoint.connect_lazy()) })
    }
}

fn strings(ids: &[UserId]) -> Vec<String> {
    ids.iter().map(|u| u.to_string()).collect()
}

#[async_trait::async_trait]
impl Presence for RemotePresence {
    async fn sessions(&self, changes: Vec<pb::SessionChange>) -> Result<(), PresenceError> {
        self.client.clone().sessions(pb::SessionBatch { changes }).await?;
        Ok(())
    }

    async fn heartbeat(&self, edge: &EdgeId) -> Result<(), PresenceError> {
        self.client.clone().heartbeat(pb::HeartbeatRequest { edge_id: edge.to_string() }).await?;
        Ok(())
    }

    async fn set_status(&self, user: &UserId, status: &str) -> Result<pb::PresenceState, PresenceError> {
        let req = pb::SetStatusRequest { user_id: user.to_string(), status: status.to_string() };
        Ok(self.client.clone().set_status(req).await?.into_inner())
    }

    async fn get_many(
        &self,
        users: &[UserId],
        viewer: Option<&UserId>,
    ) -> Result<Vec<pb::PresenceState>, PresenceError> {
        let viewer = viewer.map(|v| v.to_string()).unwrap_or_default();
        let req = pb::GetManyRequest { user_ids: strings(users), viewer };
        let states = self.client.clone().get_many(req).await?.into_inner().states;
        if states.len() != users.len() {
            return Err(PresenceError::Internal("presence returned a state per user of another request".into()));
        }
        Ok(states)
    }

    async fn watching(&self, edge: &EdgeId, change: Watching) -> Result<(), PresenceError> {
        let req = pb::WatchingRequest {
            edge_id: edge.to_string(),
            add: strings(&change.add),
            remove: strings(&change.remove),
            reset: change.reset,
        };
        self.client.clone().watching(req).await?;
        Ok(())
    }

    async fn watch(&self, edge: &EdgeId) -> Result<Updates, PresenceError> {
        let stream = self.client.clone().watch(pb::WatchRequest { edge_id: edge.to_string() }).await?.into_inner();
        Ok(stream.map(|update| update.map_err(PresenceError::from)).boxed())
    }

    async fn acquire(
        &self,
        user: &UserId,
        class: RateClass,
        limit: Limit,
        count: u32,
    ) -> Result<Acquired, PresenceError> {
        let req = pb::AcquireRequest {
            key: user.to_string(),
            limit: limit.limit,
            window_ms: limit.window_ms,
            count,
            class: pb::RateClass::from(class) as i32,
        };
        Ok(self.client.clone().acquire(req).await?.into_inner().into())
    }

    async fn release(&self, user: &UserId, class: RateClass, slot_ms: i64, count: u32) -> Result<(), PresenceError> {
        let req =
            pb::ReleaseRequest { key: user.to_string(), slot_ms, count, class: pb::RateClass::from(class) as i32 };
        self.client.clone().release(req).await?;
        Ok(())
    }
}
