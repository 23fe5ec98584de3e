//! edge: where clients connect. It terminates Socket.IO and the HTTP API
//! (axum), checks JWTs and payloads, forwards ordered work to the owning
//! router on a long-lived gRPC stream per router, reads history and chat
//! lists from store-svc directly, reports sessions to presence-svc, and fans
//! deliveries out to its own sockets. It reaches those services only through
//! the traits of confab-api (`Store`, `Presence`, `Routers`), built here over
//! their gRPC clients. Routers and the store answer in typed
//! protobuf; `wire` alone renders the contract's JSON from it, and `error`
//! maps every failure to the client's error code once.
//!
//! Its modules form three layers, each importing only from the ones below
//! it (`scripts/check-layers.mjs` fails otherwise, and on any import
//! circle):
//! - `transport/`: the HTTP server and its accepted sockets, Engine.IO v4
//!   on a lean WebSocket path of its own (direct WebSockets) and through
//!   engineioxide (long-polling and the WebSockets upgraded from it), the
//!   sockets' outboxes, and the `WriteBatch` that gives each socket one
//!   write per fan-out. It hands each connection up through its `Handler`
//!   trait.
//! - `socketio/`: our own thin Socket.IO v5 packet layer and its sockets;
//!   it hands CONNECT and events up through its `App` trait.
//! - the domain, the other modules: `app` (the edge's `App`), `session`
//!   (CONNECT and a socket's life), `events`, `rooms`, `presence`, `link`
//!   (the router streams), `recovery`, `expiry`, `http`, and what they
//!   share (`error`, `validate`, `wire`, `limits`, `admission`, `drain`,
//!   `batch`). This file holds the edge's state and wires the layers
//!   together.
//!
//! An edge keeps nothing that outlives a connection: kill it and its clients
//! reconnect elsewhere and recover with `room:join { sinceSeq }`. Stopped
//! by its signal, it answers what is in flight and closes every socket
//! within its drain window (see `drain`). What a client may hold, and for
//! how long before it authenticates, is bounded by `admission` and
//! `server`.

mod admission;
mod app;
mod attachments;
pub mod auth;
mod batch;
mod drain;
mod error;
mod events;
mod expiry;
mod http;
mod limits;
mod link;
mod metrics;
mod presence;
mod profiles;
mod recovery;
mod rooms;
mod session;
mod socketio;
mod transport;
mod validate;
mod wire;

pub use limits::RateLimits;

use confab_api::presence::{Presence, RemotePresence};
use confab_api::router::RemoteRouters;
use confab_api::store::{RemoteStore, Store};
use confab_common::{EdgeId, Shutdown, UserId};
use confab_proto::v1 as pb;
use engineioxide::config::EngineIoConfig;
use engineioxide::layer::EngineIoLayer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Session changes and chat lists waiting for their batched call, and the
/// most one call carries (see [`batch`]).
const BATCH_QUEUE: usize = 16_384;
const MAX_BATCH: usize = 512;
/// Chat-list calls in flight at once: they are reads, order does not
/// matter, and CONNECT waits for them (session changes go one at a time).
const LIST_CALLS: usize = 4;

/// A user's chats for the auto-join, or why the store could not say.
pub(crate) type ChatList = Result<Vec<pb::ChatSummary>, String>;

/// Configuration of an edge process. Every limit has the contract's default.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Router addresses, comma separated (they form the ring).
    #[arg(long = "routers", env = "CONFAB_ROUTERS", value_delimiter = ',', default_value = "http://127.0.0.1:7002")]
    pub routers: Vec<String>,
    /// store-svc address (history and chat reads).
    #[arg(long = "store-url", env = "CONFAB_STORE_URL", default_value = "http://127.0.0.1:7003")]
    pub store_url: String,
    /// presence-svc address; replicas on one Redis comma separated (or
    /// `dns:NAME:PORT`), used in order, moving on when one cannot be reached.
    #[arg(long = "presence-url", env = "CONFAB_PRESENCE_URL", default_value = "http://127.0.0.1:7004")]
    pub presence_url: String,
    /// HS256 secret that client tokens are signed with.
    #[arg(long = "jwt-secret", env = "CONFAB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256 or ES256 tokens (the algorithm follows the key).
    #[arg(long = "jwt-public-key-file", env = "CONFAB_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// Required `iss` claim.
    #[arg(long = "jwt-issuer", env = "CONFAB_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long = "jwt-audience", env = "CONFAB_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Leeway for `exp` and `nbf`, in seconds.
    #[arg(long = "jwt-leeway-secs", env = "CONFAB_JWT_LEEWAY_SECS", default_value_t = 0)]
    pub jwt_leeway_secs: u64,
    /// Largest packet or HTTP body, in bytes.
    #[arg(long = "max-payload", env = "CONFAB_MAX_PAYLOAD", default_value_t = 1024 * 1024)]
    pub max_payload: usize,
    /// Longest message body, in Unicode characters.
    #[arg(long = "max-body-chars", env = "CONFAB_MAX_BODY_CHARS", default_value_t = 8000)]
    pub max_body_chars: usize,
    /// Chats a new socket is subscribed to (most recently active first).
    #[arg(long = "auto-join-limit", env = "CONFAB_AUTO_JOIN_LIMIT", default_value_t = 1000)]
    pub auto_join_limit: usize,
    /// Most messages returned in `room:join.missed`.
    #[arg(long = "join-missed-limit", env = "CONFAB_JOIN_MISSED_LIMIT", default_value_t = 100)]
    pub join_missed_limit: u32,
    #[arg(long = "history-default-limit", env = "CONFAB_HISTORY_DEFAULT_LIMIT", default_value_t = 50)]
    pub history_default_limit: u64,
    #[arg(long = "history-max-limit", env = "CONFAB_HISTORY_MAX_LIMIT", default_value_t = 100)]
    pub history_max_limit: u64,
    /// Most user ids in one `presence:subscribe`.
    #[arg(long = "presence-subscribe-max", env = "CONFAB_PRESENCE_SUBSCRIBE_MAX", default_value_t = 500)]
    pub presence_subscribe_max: usize,
    /// Most members given when creating a chat.
    #[arg(long = "max-members", env = "CONFAB_MAX_MEMBERS", default_value_t = 1000)]
    pub max_members: usize,
    /// Deadline of every call to another service, in milliseconds.
    #[arg(long = "request-timeout-ms", env = "CONFAB_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// Per-user rate limits of every class of write.
    #[command(flatten)]
    pub rate_limits: RateLimits,
    /// How often this edge renews its presence lease, in milliseconds.
    #[arg(long = "presence-heartbeat-ms", env = "CONFAB_PRESENCE_HEARTBEAT_MS", default_value_t = 10_000)]
    pub presence_heartbeat_ms: u64,
    /// How often the router list is refreshed and liveness checked, in milliseconds.
    #[arg(long = "router-probe-ms", env = "CONFAB_ROUTER_PROBE_MS", default_value_t = 250)]
    pub router_probe_ms: u64,
    /// A router whose stream is down this long leaves the ring (failover detection), in milliseconds.
    #[arg(long = "detect-ms", env = "CONFAB_FAILOVER_DETECT_MS", default_value_t = 1500)]
    pub detect_ms: u64,
    /// How often sessions are checked for an expired token, in milliseconds.
    #[arg(long = "expiry-check-ms", env = "CONFAB_EXPIRY_CHECK_MS", default_value_t = 1000)]
    pub expiry_check_ms: u64,
    /// Engine.IO ping interval and timeout, in milliseconds.
    #[arg(long = "ping-interval-ms", env = "CONFAB_PING_INTERVAL_MS", default_value_t = 25000)]
    pub ping_interval_ms: u64,
    #[arg(long = "ping-timeout-ms", env = "CONFAB_PING_TIMEOUT_MS", default_value_t = 20000)]
    pub ping_timeout_ms: u64,
    /// Packets queued towards one socket before it is cut off as too slow.
    #[arg(long = "socket-queue", env = "CONFAB_SOCKET_QUEUE", default_value_t = 256)]
    pub socket_queue: usize,
    /// Requests queued towards one router before new ones get UNAVAILABLE.
    #[arg(long = "router-queue", env = "CONFAB_ROUTER_QUEUE", default_value_t = 65536)]
    pub router_queue: usize,
    /// A connection without a Socket.IO session this long after it opened is closed, in milliseconds.
    #[arg(long = "connect-timeout-ms", env = "CONFAB_CONNECT_TIMEOUT_MS", default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// A request's headers must arrive within this many milliseconds, or the connection is closed.
    #[arg(long = "header-timeout-ms", env = "CONFAB_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// A request's whole body must arrive within this many milliseconds of its headers (else 408).
    #[arg(long = "body-timeout-ms", env = "CONFAB_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,
    /// Engine.IO sessions one client IP may hold at a time (0: no cap).
    #[arg(long = "max-connections-per-ip", env = "CONFAB_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,
    /// Socket.IO sessions one user may hold on this edge at a time (0: no cap).
    #[arg(long = "max-sessions-per-user", env = "CONFAB_MAX_SESSIONS_PER_USER", default_value_t = 32)]
    pub max_sessions_per_user: usize,
    /// Proxies in front of the edge whose X-Forwarded-For entries are trusted (0: the TCP peer is the client).
    #[arg(long = "trusted-proxy-hops", env = "CONFAB_TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: usize,
    /// At shutdown: time to answer requests in flight and close every socket, in milliseconds.
    #[arg(long = "drain-ms", env = "CONFAB_DRAIN_MS", default_value_t = 5000)]
    pub drain_ms: u64,
}

impl Config {
    pub fn for_test(routers: Vec<String>, store_url: String, presence_url: String, jwt_secret: String) -> Self {
        Self {
            routers,
            store_url,
            presence_url,
            jwt_secret: Some(jwt_secret),
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: 0,
            expiry_check_ms: 1000,
            router_probe_ms: 250,
            detect_ms: 1500,
            presence_heartbeat_ms: 10_000,
            rate_limits: RateLimits::default(),
            max_payload: 1024 * 1024,
            max_body_chars: 8000,
            auto_join_limit: 1000,
            join_missed_limit: 100,
            history_default_limit: 50,
            history_max_limit: 100,
            max_members: 1000,
            presence_subscribe_max: 500,
            request_timeout_ms: 5000,
            ping_interval_ms: 25000,
            ping_timeout_ms: 20000,
            socket_queue: 256,
            router_queue: 65536,
            connect_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_connections_per_ip: 256,
            max_sessions_per_user: 32,
            trusted_proxy_hops: 0,
            drain_ms: 5000,
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("edge server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// State shared by every connection of one edge.
pub(crate) struct Edge {
    pub config: Config,
    pub edge_id: EdgeId,
    pub verifier: auth::Verifier,
    pub links: Arc<link::Links>,
    pub rooms: Arc<rooms::Rooms>,
    pub expiry: Arc<expiry::Expiry>,
    pub watchers: presence::Watchers,
    pub store: Arc<dyn Store>,
    pub presence: Arc<dyn Presence>,
    /// Session opens and closes, batched into one presence call at a time:
    /// a storm of connects or disconnects costs a few calls, in order.
    pub sessions: batch::Batcher<pb::SessionChange, Result<(), String>>,
    /// Chat lists for CONNECT's auto-join, batched into a few store calls
    /// at a time.
    pub chat_lists: batch::Batcher<String, ChatList>,
    /// Profiles from CONNECT and `auth:refresh` tokens, saved through the
    /// store in batches (CONTRACT §10.3: `room:members` shows them).
    pub profile_puts: batch::Batcher<(String, pb::Profile), ()>,
    /// What `profile_puts` saved lately, so a reconnect does not save again.
    pub saved_profiles: Arc<profiles::SavedProfiles>,
    /// Rate-limit slots leased from presence, spent locally.
    pub leases: limits::Leases,
    /// Per-IP and per-user caps, the CONNECT deadline.
    pub admission: admission::Admission,
    /// Open connections, and whether the edge is draining.
    pub drain: drain::Drain,
    /// The edge's own lifetime: its token stops background loops once
    /// draining is over; its tracker holds the tasks of requests and
    /// sessions, which draining waits for.
    pub shutdown: Shutdown,
    pub metrics: metrics::Metrics,
}

/// Serves Socket.IO and HTTP on `listener` until `shutdown` fires, with
/// store-svc at `config.store_url`, presence-svc at `config.presence_url`
/// and the routers of `config.routers`.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
    let metrics = metrics::Metrics::new().map_err(|e| Error::Config(e.to_string()))?;
    let store: Arc<dyn Store> = Arc::new(
        RemoteStore::connect_lazy(&config.store_url, config.request_timeout())
            .map_err(|e| Error::Config(e.to_string()))?,
    );
    let public_key_pem = match &config.jwt_public_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let verifier = auth::Verifier::new(&auth::AuthSettings {
        secret: config.jwt_secret.clone(),
        public_key_pem,
        issuer: config.jwt_issuer.clone(),
        audience: config.jwt_audience.clone(),
        leeway_secs: config.jwt_leeway_secs,
    })
    .map_err(|e| Error::Config(format!("{e} (--jwt-secret or --jwt-public-key-file)")))?;
    if config.routers.is_empty() {
        return Err(Error::Config("at least one router is required".into()));
    }
    let edge_id = EdgeId::generate();
    let timeout = config.request_timeout();
    let remote_presence =
        RemotePresence::connect_lazy(&config.presence_url, timeout).map_err(|e| Error::Config(e.to_string()))?;
    let presence: Arc<dyn Presence> = Arc::new(remote_presence.clone());
    // The signal (`shutdown`) starts draining; the edge's own tasks run
    // until draining is over: `work` for requests and sessions, and
    // `background` for router streams, batchers and loops.
    let (work, background) = (Shutdown::new(), Shutdown::new());
    let (removals_tx, removals_rx) = tokio::sync::mpsc::channel(1024);
    let (gaps_tx, gaps_rx) = tokio::sync::mpsc::channel(4096);
    let rooms = Arc::new(rooms::Rooms::new(removals_tx, gaps_tx));
    let detection = confab_api::placement::Detection {
        probe: Duration::from_millis(config.router_probe_ms.max(10)),
        window: Duration::from_millis(config.detect_ms.max(10)),
    };
    let dialer = Arc::new(RemoteRouters::new());
    let lost = metrics.router_reconnects.clone();
    let options = link::LinkOptions { detection, queue: config.router_queue, timeout, dialer, lost };
    let links = link::Links::start(&config.routers, options, edge_id.as_str(), rooms.clone(), &background).await;
    let engine_config = EngineIoConfig::builder()
        .req_path("/socket.io")
        .ping_interval(Duration::from_millis(config.ping_interval_ms))
        .ping_timeout(Duration::from_millis(config.ping_timeout_ms))
        .max_payload(config.max_payload as u64)
        .ws_max_message_size(config.max_payload)
        .ws_max_frame_size(config.max_payload)
        .max_buffer_size(config.socket_queue)
        .ws_read_buffer_size(1024)
        .build();
    let sessions = {
        let presence = presence.clone();
        batch::Batcher::start(BATCH_QUEUE, MAX_BATCH, 1, &background, move |changes: Vec<pb::SessionChange>| {
            let (presence, n) = (presence.clone(), changes.len());
            async move {
                let call = presence.sessions(changes);
                let outcome = match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("presence refused the session changes: {e}")),
                    Err(_) => Err("presence did not answer in time".to_string()),
                };
                vec![outcome; n]
            }
        })
    };
    let chat_lists = {
        let (store, limit) = (store.clone(), config.auto_join_limit);
        batch::Batcher::start(BATCH_QUEUE, MAX_BATCH, LIST_CALLS, &background, move |users: Vec<String>| {
            let (store, users): (_, Vec<UserId>) = (store.clone(), users.into_iter().map(UserId::from).collect());
            async move {
                match tokio::time::timeout(timeout, store.list_users_chats(&users, limit)).await {
                    Ok(Ok(lists)) => lists.into_iter().map(Ok).collect(),
                    Ok(Err(e)) => vec![Err(format!("store: {e}")); users.len()],
                    Err(_) => vec![Err("store did not answer in time".to_string()); users.len()],
                }
            }
        })
    };
    let saved_profiles = Arc::new(profiles::SavedProfiles::default());
    let profile_puts = {
        let (store, saved) = (store.clone(), saved_profiles.clone());
        batch::Batcher::start(BATCH_QUEUE, MAX_BATCH, 1, &background, move |puts: Vec<(String, pb::Profile)>| {
            let (store, saved) = (store.clone(), saved.clone());
            async move {
                let n = puts.len();
                let users: Vec<String> = puts.iter().map(|(u, _)| u.clone()).collect();
                // The latest token's profile wins: a batch's later put of a
                // user replaces its earlier one.
                let puts = puts.into_iter().map(|(user, p)| (UserId::from(user), p)).collect();
                let failed = match tokio::time::timeout(timeout, store.put_profiles(puts)).await {
                    Ok(Ok(())) => false,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "profiles not saved");
                        true
                    }
                    Err(_) => {
                        tracing::warn!("profiles not saved: the store did not answer in time");
                        true
                    }
                };
                if failed {
                    saved.forget(users.iter().map(String::as_str));
                }
                vec![(); n]
            }
        })
    };
    let edge = Arc::new(Edge {
        verifier,
        expiry: Arc::default(),
        watchers: presence::Watchers::default(),
        edge_id: edge_id.clone(),
        links,
        rooms,
        store,
        presence,
        sessions,
        chat_lists,
        profile_puts,
        saved_profiles,
        leases: limits::Leases::default(),
        admission: admission::Admission::new(&config, metrics.refused.clone()),
        drain: drain::Drain::new(shutdown.token().clone(), Duration::from_millis(config.drain_ms)),
        shutdown: work.clone(),
        metrics,
        config,
    });
    let heartbeat = Duration::from_millis(edge.config.presence_heartbeat_ms.max(10));
    if remote_presence.discovers() {
        // Replicas by DNS: resolved before the first call, then as often
        // as the routers' list.
        remote_presence.refresh().await;
        let every = detection.probe;
        let stop = background.clone();
        background.spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => remote_presence.refresh().await,
                    () = stop.triggered() => return,
                }
            }
        });
    }
    background.spawn(presence::run(edge.clone(), heartbeat));
    background.spawn(presence::run_rechecks(edge.clone(), removals_rx));
    background.spawn(recovery::run(edge.clone(), gaps_rx));
    background.spawn(limits::sweep(edge.clone()));
    background.spawn(admission::run_connect_deadlines(edge.clone()));
    let check = Duration::from_millis(edge.config.expiry_check_ms.max(10));
    background.spawn(edge.expiry.clone().run(check, work.clone()));
    // The layers, bottom up: the transport hands connections to the
    // Socket.IO layer, which hands packets to the edge (`app`).
    let sockets = Arc::new(socketio::Layer::new(edge.clone()));
    let lean = transport::ws::Settings {
        ping_interval: Duration::from_millis(edge.config.ping_interval_ms),
        ping_timeout: Duration::from_millis(edge.config.ping_timeout_ms),
        queue: edge.config.socket_queue,
        max_payload: edge.config.max_payload,
    };
    let app = http::router(edge.clone())
        .layer(EngineIoLayer::from_config(Arc::new(transport::engine::Engine(sockets.clone())), engine_config))
        .layer(axum::middleware::from_fn_with_state((sockets, lean), transport::ws::intercept))
        .layer(axum::middleware::from_fn_with_state(edge.clone(), admission::admit));
    let settings = transport::server::Settings {
        header_timeout: Duration::from_millis(edge.config.header_timeout_ms),
        body_timeout: Duration::from_millis(edge.config.body_timeout_ms),
        max_payload: edge.config.max_payload,
        drain: Duration::from_millis(edge.config.drain_ms),
        reject: http::reject,
    };
    tracing::info!(edge.id = %edge_id, addr = ?listener.local_addr().ok(), "edge serving");
    let http_conns = tokio_util::task::TaskTracker::new();
    transport::server::serve(listener, app, settings, shutdown.token().clone(), http_conns.clone()).await;
    drain::drain(&edge, &http_conns, &background).await;
    Ok(())
}
