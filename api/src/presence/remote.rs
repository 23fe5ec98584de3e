//! The gRPC client of presence-svc, itself a [`Presence`].

use super::{Acquired, Limit, Presence, PresenceError, RateClass, Updates, Watching};
use crate::placement::Discovery;
use confab_common::telemetry::propagation::{traced, TracedChannel};
use confab_common::{EdgeId, UserId};
use confab_proto::v1 as pb;
use confab_proto::v1::presence_client::PresenceClient;
use futures::StreamExt;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Endpoint;
use tonic::Code;

/// A [`Presence`] reached over gRPC, on one of several replicas (presence
/// on Redis: any replica answers alike), listed or found by DNS. Calls go
/// to one replica; when a call cannot reach it (a transport failure or a
/// timeout, not an error the replica answered), the next call goes to the
/// next one, and a [`Presence::watch`] stream on the old one ends, so that
/// the edge watches and re-announces its sessions on the new one. Every
/// call has a deadline (for [`Presence::watch`], until the stream is open).
#[derive(Clone)]
pub struct RemotePresence {
    discovery: Discovery,
    timeout: Duration,
    replicas: Arc<RwLock<Arc<[Replica]>>>,
    /// The replica calls go to now.
    current: Arc<watch::Sender<usize>>,
}

struct Replica {
    url: String,
    client: PresenceClient<TracedChannel>,
}

fn replica(url: &str, timeout: Duration) -> Result<Replica, PresenceError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| PresenceError::Invalid(format!("bad presence url {url}: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout);
    Ok(Replica { url: url.to_string(), client: PresenceClient::new(traced(endpoint.connect_lazy())) })
}

impl RemotePresence {
    /// Connects lazily to `urls`: `http://host:port` replicas comma
    /// separated, tried in this order, or `dns:NAME:PORT` (every address the
    /// name resolves to, after [`RemotePresence::refresh`]). Calls fail with
    /// `Unavailable` while the replica in use is unreachable.
    pub fn connect_lazy(urls: &str, timeout: Duration) -> Result<Self, PresenceError> {
        let list: Vec<String> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
        let discovery = Discovery::parse(&list);
        let replicas = match &discovery {
            Discovery::Static(urls) if urls.is_empty() => return Err(PresenceError::Invalid("no presence url".into())),
            Discovery::Static(urls) => urls.iter().map(|u| replica(u, timeout)).collect::<Result<Vec<_>, _>>()?,
            Discovery::Dns { .. } => Vec::new(),
        };
        Ok(Self {
            discovery,
            timeout,
            replicas: Arc::new(RwLock::new(replicas.into())),
            current: Arc::new(watch::channel(0).0),
        })
    }

    /// Whether the replicas come from DNS (and so want [`Self::refresh`]).
    pub fn discovers(&self) -> bool {
        matches!(self.discovery, Discovery::Dns { .. })
    }

    /// Resolves the DNS name again and takes the replicas it names, staying
    /// on the one in use if it is still there.
    pub async fn refresh(&self) {
        let urls = self.discovery.resolve().await;
        let old = self.list();
        if urls.is_empty() || old.iter().map(|r| r.url.as_str()).eq(urls.iter().map(String::as_str)) {
            return;
        }
        let in_use = old.get(*self.current.borrow()).map(|r| r.url.clone());
        let Ok(fresh) = urls.iter().map(|u| replica(u, self.timeout)).collect::<Result<Vec<_>, _>>() else { return };
        let at = in_use.and_then(|u| fresh.iter().position(|r| r.url == u)).unwrap_or(0);
        *self.replicas.write().unwrap_or_else(|p| p.into_inner()) = fresh.into();
        self.current.send_if_modified(|c| std::mem::replace(c, at) != at);
        tracing::info!(replicas = urls.len(), "presence replicas resolved");
    }

    fn list(&self) -> Arc<[Replica]> {
        self.replicas.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The replica in use, and its index; none before DNS named any.
    fn client(&self) -> Option<(usize, PresenceClient<TracedChannel>)> {
        let list = self.list();
        let i = *self.current.borrow();
        list.get(i).map(|r| (i, r.client.clone()))
    }

    /// The replica in use, or UNAVAILABLE.
    fn using(&self) -> Result<(usize, PresenceClient<TracedChannel>), PresenceError> {
        self.client().ok_or_else(|| PresenceError::Unavailable("no presence replica resolved yet".into()))
    }

    /// Moves on from replica `i` if `status` says it could not be reached
    /// (the status came from the transport, not from the replica).
    fn failed(&self, i: usize, status: &tonic::Status) {
        let unreached = std::error::Error::source(status).is_some()
            && matches!(status.code(), Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown);
        let n = self.list().len();
        if unreached && n > 1 {
            let next = (i + 1) % n;
            let moved = self.current.send_if_modified(|c| {
                let mine = *c == i;
                if mine {
                    *c = next;
                }
                mine
            });
            if moved {
                tracing::warn!(replica = i, next, error = %status, "presence replica unreachable: moving to the next");
            }
        }
    }

    /// One unary call on the replica in use.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, PresenceError>
    where
        F: FnOnce(PresenceClient<TracedChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (i, client) = self.using()?;
        match f(client).await {
            Ok(r) => Ok(r.into_inner()),
            Err(e) => {
                self.failed(i, &e);
                Err(e.into())
            }
        }
    }
}

fn strings(ids: &[UserId]) -> Vec<String> {
    ids.iter().map(|u| u.to_string()).collect()
}

#[async_trait::async_trait]
impl Presence for RemotePresence {
    async fn sessions(&self, changes: Vec<pb::SessionChange>) -> Result<(), PresenceError> {
        self.call(|mut c| async move { c.sessions(pb::SessionBatch { changes }).await }).await?;
        Ok(())
    }

    async fn heartbeat(&self, edge: &EdgeId) -> Result<(), PresenceError> {
        let req = pb::HeartbeatRequest { edge_id: edge.to_string() };
        self.call(|mut c| async move { c.heartbeat(req).await }).await?;
        Ok(())
    }

    async fn set_status(&self, user: &UserId, status: &str) -> Result<pb::PresenceState, PresenceError> {
        let req = pb::SetStatusRequest { user_id: user.to_string(), status: status.to_string() };
        self.call(|mut c| async move { c.set_status(req).await }).await
    }

    async fn get_many(
        &self,
        users: &[UserId],
        viewer: Option<&UserId>,
    ) -> Result<Vec<pb::PresenceState>, PresenceError> {
        let viewer = viewer.map(|v| v.to_string()).unwrap_or_default();
        let req = pb::GetManyRequest { user_ids: strings(users), viewer };
        let states = self.call(|mut c| async move { c.get_many(req).await }).await?.states;
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
        self.call(|mut c| async move { c.watching(req).await }).await?;
        Ok(())
    }

    async fn watch(&self, edge: &EdgeId) -> Result<Updates, PresenceError> {
        let (i, mut client) = self.using()?;
        let stream = match client.watch(pb::WatchRequest { edge_id: edge.to_string() }).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                self.failed(i, &e);
                return Err(e.into());
            }
        };
        // Ends once calls have moved to another replica, or this one broke.
        let mut moved = self.current.subscribe();
        let moved = async move {
            let _ = moved.wait_for(|c| *c != i).await;
        };
        let this = self.clone();
        let updates = stream.map(move |update| {
            update.map_err(|e| {
                this.failed(i, &e);
                PresenceError::from(e)
            })
        });
        Ok(updates.take_until(moved).boxed())
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
        Ok(self.call(|mut c| async move { c.acquire(req).await }).await?.into())
    }

    async fn release(&self, user: &UserId, class: RateClass, slot_ms: i64, count: u32) -> Result<(), PresenceError> {
        let req =
            pb::ReleaseRequest { key: user.to_string(), slot_ms, count, class: pb::RateClass::from(class) as i32 };
        self.call(|mut c| async move { c.release(req).await }).await?;
        Ok(())
    }
}
