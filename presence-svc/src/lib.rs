//! presence-svc: who is connected, with which status, and who wants to know.
//!
//! Edges report every session open and close and renew a lease; users set
//! their status; edges say which users their sockets watch and receive
//! those users' updates on one stream per edge. The rules (online while any
//! session is open, offline after a grace window, invisible shown as
//! offline, one update per user per interval with the last state always
//! delivered, a silent edge's users going offline) live in [`hub::Hub`] as
//! pure logic. It also keeps the per-user rate limits of every class of write
//! ([`limits`]).
//!
//! State is in memory (the `confab dev` default: [`state::MemoryState`],
//! [`limits::MemoryLimiter`]), or with `--redis-url` in Redis
//! ([`redis_state`], [`redis_limits`]), where any number of replicas share
//! it. Which edges watch whom is each replica's own: an edge keeps its
//! watch stream and its watch list on one replica.

pub mod hub;
pub mod limits;
pub mod redis_limits;
pub mod redis_link;
pub mod redis_state;
pub mod state;
pub mod unavailable;

use confab_common::grpc::{Listeners, RpcMetrics};
use confab_common::telemetry::metrics::Metrics;
use confab_common::{time::now_ms, Shutdown};
use confab_proto::v1 as pb;
use confab_proto::v1::presence_server::{Presence as PresenceRpc, PresenceServer};
use hub::{Seen, Windows};
use limits::{Acquired, Limiter, MemoryLimiter};
use state::{MemoryState, SessionChange, State};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// Configuration of a presence-svc process.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// A user goes offline this long after their last socket closes.
    #[arg(long = "offline-grace-ms", env = "CONFAB_PRESENCE_OFFLINE_GRACE_MS", default_value_t = 5000)]
    pub offline_grace_ms: i64,
    /// At most one presence update per user per this long.
    #[arg(long = "presence-interval-ms", env = "CONFAB_PRESENCE_INTERVAL_MS", default_value_t = 2000)]
    pub update_interval_ms: i64,
    /// An edge that does not renew its lease for this long loses its users.
    #[arg(long = "edge-lease-ms", env = "CONFAB_PRESENCE_EDGE_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: i64,
    /// How often the clocks above are checked.
    #[arg(long = "presence-tick-ms", env = "CONFAB_PRESENCE_TICK_MS", default_value_t = 100)]
    pub tick_ms: u64,
    /// Keeps presence state and the rate-limit windows in this Redis
    /// (`redis://[:password@]host:port/db`, `rediss://` for TLS), shared by
    /// every replica; without it, in memory.
    #[arg(long = "redis-url", env = "CONFAB_REDIS_URL")]
    pub redis_url: Option<String>,
    /// With `rediss://`, trust only the CA certificate (PEM) in this file
    /// instead of the system's roots.
    #[arg(long = "redis-ca-file", env = "CONFAB_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// How long one Redis call may take before it fails as UNAVAILABLE.
    #[arg(long = "redis-timeout-ms", env = "CONFAB_REDIS_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        let w = Windows::default();
        Self {
            offline_grace_ms: w.offline_grace_ms,
            update_interval_ms: w.update_interval_ms,
            lease_ms: w.lease_ms,
            tick_ms: 100,
            redis_url: None,
            redis_ca_file: None,
            redis_timeout_ms: 1000,
        }
    }
}

/// Updates queued towards one edge before new ones are dropped.
const EDGE_QUEUE: usize = 4096;

#[derive(Default)]
struct Watches {
    streams: HashMap<String, mpsc::Sender<Result<pb::PresenceState, Status>>>,
    /// user -> edges watching it
    by_user: HashMap<String, HashSet<String>>,
    /// edge -> users it watches
    by_edge: HashMap<String, HashSet<String>>,
}

/// The `confab.v1.Presence` service.
#[derive(Clone)]
pub struct PresenceService {
    state: Arc<dyn State>,
    watches: Arc<Mutex<Watches>>,
    limiter: Arc<dyn Limiter>,
    /// Set at shutdown: no new Watch stream is opened.
    closing: Arc<AtomicBool>,
}

fn state(s: Seen) -> pb::PresenceState {
    pb::PresenceState {
        user_id: s.user_id,
        status: s.status.to_string(),
        last_seen_ms: s.last_seen_ms,
        since_ms: s.since_ms,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PresenceService {
    /// A service on `state`, with its rate-limit windows in `limiter`.
    pub fn new(state: Arc<dyn State>, limiter: Arc<dyn Limiter>) -> Self {
        Self { state, watches: Arc::default(), limiter, closing: Arc::default() }
    }

    /// Sends updates to the edges watching their users.
    fn publish(&self, updates: Vec<Seen>) {
        if updates.is_empty() {
            return;
        }
        let watches = lock(&self.watches);
        for s in updates {
            let Some(edges) = watches.by_user.get(&s.user_id) else {
                continue;
            };
            let update = state(s);
            for edge in edges {
                if let Some(tx) = watches.streams.get(edge) {
                    if tx.try_send(Ok(update.clone())).is_err() {
                        tracing::warn!(edge.id = %edge, "presence stream full or gone: update dropped");
                    }
                }
            }
        }
    }

    /// Delivers what a change caused, unless the backend delivers it to
    /// every replica itself.
    fn caused(&self, updates: Vec<Seen>) {
        if !self.state.delivers_updates() {
            self.publish(updates);
        }
    }

    /// Ends every edge's Watch stream so that each edge watches again and
    /// re-announces its sessions (after Redis was lost: it may be empty).
    fn restart_streams(&self) {
        lock(&self.watches).streams.clear();
    }

    /// Ends every edge's Watch stream (at shutdown).
    fn end_streams(&self) {
        let mut watches = lock(&self.watches);
        self.closing.store(true, Ordering::Release);
        watches.streams.clear();
    }

    /// Runs the clocks until shutdown (every replica does: a tick is
    /// atomic, and one replica's tick leaves nothing for the next).
    pub async fn run_clock(self, every: Duration, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.triggered() => return,
            }
            match self.state.tick(now_ms()).await {
                Ok(updates) => self.caused(updates),
                Err(e) => tracing::warn!(error = %e, "presence clock: tick failed"),
            }
        }
    }

    /// Hands updates other replicas (or this one) published to the edges
    /// watching on this replica.
    pub async fn deliver(self, mut updates: mpsc::Receiver<Seen>) {
        while let Some(update) = updates.recv().await {
            self.publish(vec![update]);
        }
    }
}

fn check_session(r: &pb::SessionRequest) -> Result<(), Status> {
    if r.user_id.is_empty() || r.edge_id.is_empty() || r.session_id.is_empty() {
        return Err(Status::invalid_argument("user_id, edge_id and session_id are required"));
    }
    Ok(())
}

/// The limiter's key of one user's window of one class of write.
fn window_key(class: i32, key: &str) -> Result<String, Status> {
    let class = pb::RateClass::try_from(class).map_err(|_| Status::invalid_argument("unknown rate class"))?;
    Ok(format!("{}:{key}", class.as_str_name()))
}

type WatchStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::PresenceState, Status>> + Send>>;

#[tonic::async_trait]
impl PresenceRpc for PresenceService {
    type WatchStream = WatchStream;

    async fn sessions(&self, req: Request<pb::SessionBatch>) -> Result<Response<pb::Empty>, Status> {
        let changes = req.into_inner().changes;
        let mut sessions = Vec::with_capacity(changes.len());
        for c in changes {
            let s = c.session.ok_or_else(|| Status::invalid_argument("a session change without its session"))?;
            check_session(&s)?;
            sessions.push(SessionChange { user: s.user_id, edge: s.edge_id, session: s.session_id, open: c.open });
        }
        let updates = self.state.sessions(&sessions, now_ms()).await?;
        self.caused(updates);
        Ok(Response::new(pb::Empty {}))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::Empty>, Status> {
        self.state.heartbeat(&req.into_inner().edge_id, now_ms()).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn set_status(&self, req: Request<pb::SetStatusRequest>) -> Result<Response<pb::PresenceState>, Status> {
        let r = req.into_inner();
        let status = hub::parse_status(&r.status).ok_or_else(|| Status::invalid_argument("unknown status"))?;
        let (updates, own) = self.state.set_status(&r.user_id, status, now_ms()).await?;
        self.caused(updates);
        Ok(Response::new(state(own)))
    }

    async fn get_many(&self, req: Request<pb::GetManyRequest>) -> Result<Response<pb::GetManyResponse>, Status> {
        let r = req.into_inner();
        let seen = self.state.seen_by(&r.user_ids, &r.viewer, now_ms()).await?;
        Ok(Response::new(pb::GetManyResponse { states: seen.into_iter().map(state).collect() }))
    }

    async fn get(&self, req: Request<pb::GetPresenceRequest>) -> Result<Response<pb::PresenceState>, Status> {
        let user = req.into_inner().user_id;
        let seen = self.state.seen_by(std::slice::from_ref(&user), "", now_ms()).await?;
        let seen = seen.into_iter().next().ok_or_else(|| Status::unavailable("presence backend answered nothing"))?;
        Ok(Response::new(state(seen)))
    }

    async fn watching(&self, req: Request<pb::WatchingRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        let mut w = lock(&self.watches);
        let Watches { by_user, by_edge, .. } = &mut *w;
        let mine = by_edge.entry(r.edge_id.clone()).or_default();
        if r.reset {
            for user in mine.drain() {
                if let Some(edges) = by_user.get_mut(&user) {
                    edges.remove(&r.edge_id);
                }
            }
        }
        for user in r.remove {
            mine.remove(&user);
            if let Some(edges) = by_user.get_mut(&user) {
                edges.remove(&r.edge_id);
                if edges.is_empty() {
                    by_user.remove(&user);
                }
            }
        }
        for user in r.add {
            by_user.entry(user.clone()).or_default().insert(r.edge_id.clone());
            mine.insert(user);
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let edge = req.into_inner().edge_id;
        if edge.is_empty() {
            return Err(Status::invalid_argument("edge_id is required"));
        }
        let (tx, rx) = mpsc::channel(EDGE_QUEUE);
        let mut watches = lock(&self.watches);
        if self.closing.load(Ordering::Acquire) {
            return Err(Status::unavailable("presence-svc is shutting down"));
        }
        watches.streams.insert(edge, tx);
        drop(watches);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn acquire(&self, req: Request<pb::AcquireRequest>) -> Result<Response<pb::AcquireResponse>, Status> {
        let r = req.into_inner();
        if r.key.is_empty() || r.limit == 0 || r.window_ms == 0 {
            return Err(Status::invalid_argument("key, limit and window_ms are required"));
        }
        let key = window_key(r.class, &r.key)?;
        let answer = match self.limiter.acquire(&key, r.limit, r.window_ms, r.count).await? {
            Acquired::Allowed { slot_ms, granted } => {
                pb::AcquireResponse { allowed: true, retry_after_ms: 0, slot_ms, granted }
            }
            Acquired::Refused { retry_after_ms } => {
                pb::AcquireResponse { allowed: false, retry_after_ms, slot_ms: 0, granted: 0 }
            }
        };
        Ok(Response::new(answer))
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        self.limiter.release(&window_key(r.class, &r.key)?, r.slot_ms, r.count).await?;
        Ok(Response::new(pb::Empty {}))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("presence-svc failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("presence-svc: {0}")]
    Redis(#[from] redis_link::LinkError),
    #[error("bad configuration: {0}")]
    Config(String),
}

/// Runs presence's clocks and serves it over gRPC on `listeners` until
/// `shutdown` fires.
pub async fn run(config: Config, listeners: impl Into<Listeners>, shutdown: Shutdown) -> Result<(), Error> {
    let metrics = Metrics::new("confab-presence").map_err(|e| Error::Config(e.to_string()))?;
    let listener = listeners.into().serve_metrics(&metrics, &shutdown);
    let windows = Windows {
        offline_grace_ms: config.offline_grace_ms,
        update_interval_ms: config.update_interval_ms,
        lease_ms: config.lease_ms,
    };
    let service = match &config.redis_url {
        Some(url) => {
            let deadline = Duration::from_millis(config.redis_timeout_ms.max(1));
            let (client, redis) = redis_link::connect(url, config.redis_ca_file.as_deref(), deadline)?;
            let state = redis_state::RedisState::new(client, redis.clone(), windows);
            let service =
                PresenceService::new(Arc::new(state.clone()), Arc::new(redis_limits::RedisLimiter::new(redis)));
            let (tx, rx) = mpsc::channel(EDGE_QUEUE);
            let streams = service.clone();
            let resubscribed = move || streams.restart_streams();
            shutdown.spawn(state.updates(tx, deadline, resubscribed, shutdown.clone()));
            shutdown.spawn(service.clone().deliver(rx));
            service
        }
        None => PresenceService::new(Arc::new(MemoryState::new(windows)), Arc::new(MemoryLimiter::default())),
    };
    let tick = Duration::from_millis(config.tick_ms.max(10));
    shutdown.spawn(service.clone().run_clock(tick, shutdown.clone()));
    let incoming = confab_common::grpc::incoming(listener);
    tracing::info!("presence-svc serving");
    // The standard health service: SERVING while serving, NOT_SERVING from
    // the moment shutdown starts (a readiness probe then stops sending).
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<PresenceServer<PresenceService>>().await;
    let stopping = shutdown.clone();
    shutdown.spawn(async move {
        stopping.triggered().await;
        reporter.set_not_serving::<PresenceServer<PresenceService>>().await;
        reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    });
    // Watch streams never end by themselves: ending them lets the
    // connections close, so the server stops instead of waiting on
    // them, and the edges reconnect to whoever serves next.
    let streams = service.clone();
    let stopped = async move {
        shutdown.triggered().await;
        streams.end_streams();
    };
    tonic::transport::Server::builder()
        .trace_fn(confab_common::telemetry::propagation::server_span)
        .layer(RpcMetrics::new(&metrics, "confab.presence"))
        .add_service(health)
        .add_service(PresenceServer::new(service))
        .serve_with_incoming_shutdown(incoming, stopped)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquire(class: pb::RateClass) -> pb::AcquireRequest {
        pb::AcquireRequest { key: "u".into(), limit: 1, window_ms: 60_000, count: 1, class: class as i32 }
    }

    #[tokio::test]
    async fn each_class_of_write_has_a_window_of_its_own() {
        let state = Arc::new(MemoryState::new(Windows::default()));
        let service = PresenceService::new(state, Arc::new(MemoryLimiter::default()));
        let allowed = |r: Result<Response<pb::AcquireResponse>, Status>| r.unwrap().into_inner().allowed;
        assert!(allowed(service.acquire(Request::new(acquire(pb::RateClass::Messages))).await));
        assert!(!allowed(service.acquire(Request::new(acquire(pb::RateClass::Messages))).await));
        assert!(allowed(service.acquire(Request::new(acquire(pb::RateClass::Edits))).await));
        assert!(allowed(service.acquire(Request::new(acquire(pb::RateClass::Chats))).await));
        assert!(!allowed(service.acquire(Request::new(acquire(pb::RateClass::Chats))).await));
        let unknown = pb::AcquireRequest { class: 99, ..acquire(pb::RateClass::Edits) };
        let refused = service.acquire(Request::new(unknown)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }
}
