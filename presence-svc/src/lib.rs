//! presence-svc: which users are connected, on which edges, and when each was
//! last seen. Edges report every session open and close; anyone may ask for a
//! user's state.
//!
//! The state sits behind the narrow [`PresenceStore`] trait;
//! [`MemoryPresence`] is the default (and the test double). A Redis backend
//! is the production swap. Status beyond online/offline, subscriptions, grace
//! windows and edge leases build on this lifecycle.

pub mod limits;

use confab_common::{time::now_ms, Shutdown};
use confab_proto::v1 as pb;
use confab_proto::v1::presence_server::{Presence as PresenceRpc, PresenceServer};
use limits::{Acquired, MemoryLimiter};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// Configuration of a presence-svc process.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Config {}

/// A user's presence as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPresence {
    pub online: bool,
    pub last_seen_ms: Option<i64>,
}

/// Where presence lives.
pub trait PresenceStore: Send + Sync + 'static {
    /// Records a session; returns the user's state after it.
    fn open(&self, user: &str, edge: &str, session: &str) -> UserPresence;
    /// Forgets a session; returns the user's state after it.
    fn close(&self, user: &str, edge: &str, session: &str) -> UserPresence;
    fn get(&self, user: &str) -> UserPresence;
}

#[derive(Default)]
struct Entry {
    sessions: HashSet<(String, String)>,
    last_seen_ms: Option<i64>,
}

/// In-memory presence: the `confab dev` default.
#[derive(Default)]
pub struct MemoryPresence {
    users: Mutex<HashMap<String, Entry>>,
}

impl MemoryPresence {
    fn state(entry: Option<&Entry>) -> UserPresence {
        match entry {
            Some(e) if !e.sessions.is_empty() => UserPresence {
                online: true,
                last_seen_ms: Some(now_ms()),
            },
            Some(e) => UserPresence {
                online: false,
                last_seen_ms: e.last_seen_ms,
            },
            None => UserPresence {
                online: false,
                last_seen_ms: None,
            },
        }
    }
}

impl PresenceStore for MemoryPresence {
    fn open(&self, user: &str, edge: &str, session: &str) -> UserPresence {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let entry = users.entry(user.to_string()).or_default();
        entry.sessions.insert((edge.to_string(), session.to_string()));
        entry.last_seen_ms = Some(now_ms());
        Self::state(Some(entry))
    }

    fn close(&self, user: &str, edge: &str, session: &str) -> UserPresence {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let entry = users.entry(user.to_string()).or_default();
        if entry.sessions.remove(&(edge.to_string(), session.to_string())) {
            entry.last_seen_ms = Some(now_ms());
        }
        Self::state(Some(entry))
    }

    fn get(&self, user: &str) -> UserPresence {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        Self::state(users.get(user))
    }
}

/// Serves a [`PresenceStore`] as the `confab.v1.Presence` gRPC service.
pub struct PresenceService {
    store: Arc<dyn PresenceStore>,
    limiter: MemoryLimiter,
}

impl PresenceService {
    pub fn new(store: Arc<dyn PresenceStore>) -> Self {
        Self {
            store,
            limiter: MemoryLimiter::default(),
        }
    }
}

fn reply(user_id: String, p: UserPresence) -> Response<pb::PresenceState> {
    Response::new(pb::PresenceState {
        user_id,
        status: if p.online { "online" } else { "offline" }.to_string(),
        last_seen_ms: p.last_seen_ms,
    })
}

fn check(r: &pb::SessionRequest) -> Result<(), Status> {
    if r.user_id.is_empty() || r.edge_id.is_empty() || r.session_id.is_empty() {
        return Err(Status::invalid_argument("user_id, edge_id and session_id are required"));
    }
    Ok(())
}

#[tonic::async_trait]
impl PresenceRpc for PresenceService {
    async fn session_open(&self, req: Request<pb::SessionRequest>) -> Result<Response<pb::PresenceState>, Status> {
        let r = req.into_inner();
        check(&r)?;
        let p = self.store.open(&r.user_id, &r.edge_id, &r.session_id);
        tracing::debug!(user.id = %r.user_id, edge.id = %r.edge_id, "session open");
        Ok(reply(r.user_id, p))
    }

    async fn session_close(&self, req: Request<pb::SessionRequest>) -> Result<Response<pb::PresenceState>, Status> {
        let r = req.into_inner();
        check(&r)?;
        let p = self.store.close(&r.user_id, &r.edge_id, &r.session_id);
        tracing::debug!(user.id = %r.user_id, edge.id = %r.edge_id, "session close");
        Ok(reply(r.user_id, p))
    }

    async fn acquire(&self, req: Request<pb::AcquireRequest>) -> Result<Response<pb::AcquireResponse>, Status> {
        let r = req.into_inner();
        if r.key.is_empty() || r.limit == 0 || r.window_ms == 0 {
            return Err(Status::invalid_argument("key, limit and window_ms are required"));
        }
        let answer = match self.limiter.acquire(&r.key, r.limit, r.window_ms, now_ms()) {
            Acquired::Allowed { slot_ms } => pb::AcquireResponse {
                allowed: true,
                retry_after_ms: 0,
                slot_ms,
            },
            Acquired::Refused { retry_after_ms } => pb::AcquireResponse {
                allowed: false,
                retry_after_ms,
                slot_ms: 0,
            },
        };
        Ok(Response::new(answer))
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        self.limiter.release(&r.key, r.slot_ms);
        Ok(Response::new(pb::Empty {}))
    }

    async fn get(&self, req: Request<pb::GetPresenceRequest>) -> Result<Response<pb::PresenceState>, Status> {
        let user_id = req.into_inner().user_id;
        let p = self.store.get(&user_id);
        Ok(reply(user_id, p))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("presence-svc failed: {0}")]
pub struct Error(#[from] tonic::transport::Error);

/// Serves presence over gRPC on `listener` until `shutdown` fires.
pub async fn run(_config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
    let store: Arc<dyn PresenceStore> = Arc::new(MemoryPresence::default());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tracing::info!("presence-svc serving");
    tonic::transport::Server::builder()
        .add_service(PresenceServer::new(PresenceService::new(store)))
        .serve_with_incoming_shutdown(incoming, async move { shutdown.triggered().await })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_while_any_session_is_open() {
        let p = MemoryPresence::default();
        assert_eq!(
            p.get("u"),
            UserPresence {
                online: false,
                last_seen_ms: None
            }
        );
        assert!(p.open("u", "e1", "s1").online);
        assert!(p.open("u", "e2", "s2").online);
        assert!(p.close("u", "e1", "s1").online);
        let after = p.close("u", "e2", "s2");
        assert!(!after.online);
        assert!(after.last_seen_ms.is_some());
        // Closing an unknown session changes nothing.
        assert_eq!(p.close("u", "e9", "s9"), after);
    }
}
