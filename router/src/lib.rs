//! router: owns chats. Each chat is placed on one router by consistent hash
//! (confab-api's `placement::Ring`, which edges build too); for the chats it owns, a router runs the single writer that
//! checks membership and idempotency, assigns gap-free seqs, appends through
//! store-svc and fans each message out once per subscribed edge. What it
//! sends edges is typed protobuf (events, replies, errors with their code);
//! it writes no client JSON.
//!
//! Edges talk to a router over one long-lived bidirectional gRPC stream
//! (`confab.v1.Router/EdgeStream`). The router keeps nothing that the store
//! cannot rebuild: a chat's writer loads its state on first use.
//!
//! Not here: sockets and client validation (edge), durable state (store-svc),
//! presence (presence-svc).

mod chat;
mod edges;
mod health;
mod metrics;
mod tail;

use chat::{ChatSettings, Cmd, Op};
use confab_api::placement::{Detection, Discovery, Membership};
use confab_api::store::{RemoteStore, Store};
use confab_common::grpc::{Listeners, RpcMetrics};
use confab_common::{ChatId, Shutdown};
use confab_proto::v1 as pb;
use confab_proto::v1::router_server::{Router as RouterRpc, RouterServer};
use edges::{EdgeConn, EdgeRegistry};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Configuration of a router process.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// This router's address as listed in `--routers` (how edges dial it).
    #[arg(long = "advertise", env = "CONFAB_ADVERTISE_URL")]
    pub advertise: String,
    /// Every router of the cluster, comma separated; or `dns:NAME:PORT` to
    /// resolve them (a Kubernetes headless Service), re-resolved at every probe.
    #[arg(long = "routers", env = "CONFAB_ROUTERS", value_delimiter = ',')]
    pub routers: Vec<String>,
    /// store-svc address.
    #[arg(long = "store-url", env = "CONFAB_STORE_URL", default_value = "http://127.0.0.1:7003")]
    pub store_url: String,
    /// Deadline of every store call, in milliseconds.
    #[arg(long = "store-timeout-ms", env = "CONFAB_STORE_TIMEOUT_MS", default_value_t = 5000)]
    pub store_timeout_ms: u64,
    /// Frames queued towards one edge before it is cut off as too slow.
    #[arg(long = "edge-queue", env = "CONFAB_ROUTER_EDGE_QUEUE", default_value_t = 65536)]
    pub edge_queue: usize,
    /// Commands queued for one chat before new ones get UNAVAILABLE.
    #[arg(long = "chat-queue", env = "CONFAB_ROUTER_CHAT_QUEUE", default_value_t = 1024)]
    pub chat_queue: usize,
    /// Seconds a chat writer with no subscriber and no command stays loaded.
    #[arg(long = "chat-idle-secs", env = "CONFAB_ROUTER_CHAT_IDLE_SECS", default_value_t = 300)]
    pub chat_idle_secs: u64,
    /// How often other routers are probed, in milliseconds.
    #[arg(long = "probe-ms", env = "CONFAB_ROUTER_PROBE_MS", default_value_t = 250)]
    pub probe_ms: u64,
    /// A router silent this long leaves the ring (failover detection), in milliseconds.
    #[arg(long = "detect-ms", env = "CONFAB_FAILOVER_DETECT_MS", default_value_t = 1500)]
    pub detect_ms: u64,
    /// Typing stops this many milliseconds after the last start.
    #[arg(long = "typing-ttl-ms", env = "CONFAB_TYPING_TTL_MS", default_value_t = 5000)]
    pub typing_ttl_ms: u64,
    /// A typing start within this many milliseconds of the last broadcast one is not re-broadcast.
    #[arg(long = "typing-debounce-ms", env = "CONFAB_TYPING_DEBOUNCE_MS", default_value_t = 2000)]
    pub typing_debounce_ms: u64,
}

impl Config {
    pub fn for_test(advertise: String, routers: Vec<String>, store_url: String) -> Self {
        Self {
            advertise,
            routers,
            store_url,
            store_timeout_ms: 5000,
            edge_queue: 65536,
            chat_queue: 1024,
            chat_idle_secs: 300,
            probe_ms: 250,
            detect_ms: 1500,
            typing_ttl_ms: 5000,
            typing_debounce_ms: 2000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("router server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

struct Inner {
    advertise: String,
    membership: Arc<Membership>,
    discovery: Discovery,
    chats: Mutex<HashMap<String, mpsc::Sender<Cmd>>>,
    edges: EdgeRegistry,
    chat_settings: ChatSettings,
    config: Config,
    shutdown: Shutdown,
    next_stream: AtomicU64,
    metrics: metrics::Metrics,
}

/// The `confab.v1.Router` service.
#[derive(Clone)]
pub struct RouterService {
    inner: Arc<Inner>,
}

impl RouterService {
    pub fn new(config: Config, store: Arc<dyn Store>, shutdown: Shutdown) -> Result<Self, Error> {
        let discovery = Discovery::parse(&config.routers);
        if let Discovery::Static(list) = &discovery {
            if !list.contains(&config.advertise) {
                return Err(Error::Config(format!(
                    "--advertise {} is not in --routers {:?}",
                    config.advertise, config.routers
                )));
            }
        }
        let initial = match &discovery {
            Discovery::Static(list) => list.clone(),
            Discovery::Dns { .. } => vec![config.advertise.clone()],
        };
        let membership = Membership::new(config.advertise.clone(), initial);
        let edges = EdgeRegistry::default();
        let metrics = metrics::Metrics::new().map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                advertise: config.advertise.clone(),
                membership,
                discovery,
                chats: Mutex::new(HashMap::new()),
                edges: edges.clone(),
                chat_settings: ChatSettings {
                    store,
                    owner: config.advertise.clone(),
                    edges,
                    parked: Default::default(),
                    idle: Duration::from_secs(config.chat_idle_secs),
                    typing_ttl: Duration::from_millis(config.typing_ttl_ms),
                    typing_debounce: Duration::from_millis(config.typing_debounce_ms),
                    metrics: metrics.clone(),
                },
                config,
                shutdown,
                next_stream: AtomicU64::new(1),
                metrics,
            }),
        })
    }

    /// Hands a command to the chat's writer, starting it if needed. A full
    /// queue is answered with UNAVAILABLE rather than waited on.
    fn dispatch(&self, chat_id: &str, cmd: Cmd) {
        let inner = &self.inner;
        let mut chats = inner.chats.lock().unwrap_or_else(|p| p.into_inner());
        let mut cmd = cmd;
        for _ in 0..2 {
            let tx = chats.entry(chat_id.to_string()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(inner.config.chat_queue);
                inner.shutdown.spawn(chat::run_chat(chat_id.into(), rx, inner.chat_settings.clone()));
                tx
            });
            match tx.try_send(cmd) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(c)) => {
                    return chat::refuse(c, unavailable("chat is overloaded, retry"));
                }
                Err(mpsc::error::TrySendError::Closed(c)) => {
                    // The writer went idle and stopped: start a new one.
                    chats.remove(chat_id);
                    cmd = c;
                }
            }
        }
        chat::refuse(cmd, unavailable("chat writer unavailable"));
    }

    fn handle_request(&self, r: pb::Request, edge: &EdgeConn, subscribed: &mut HashSet<String>) {
        let pb::Request { id, chat_id, user_id, op, trace_parent } = r;
        let reply_error = |code: pb::ErrorCode, message: &str| {
            let err = pb::Error { code: code as i32, message: message.into(), retry_after_ms: None };
            edge.send(pb::router_frame::Kind::Reply(pb::Reply { id, result: Some(pb::reply::Result::Error(err)) }));
        };
        if self.inner.membership.ring().owner(&ChatId::from(&chat_id)) != Some(self.inner.advertise.as_str()) {
            return reply_error(pb::ErrorCode::NotOwner, "not the owner of this chat");
        }
        use pb::request::Op as P;
        let name = match &op {
            Some(P::Send(_)) => "send",
            Some(P::Join(_)) => "join",
            Some(P::Subscribe(_)) => "subscribe",
            Some(P::Unsubscribe(_)) => "unsubscribe",
            Some(P::Announce(_)) => "announce",
            Some(P::Edit(_)) => "edit",
            Some(P::Delete(_)) => "delete",
            Some(P::React(_)) => "react",
            Some(P::Typing(_)) => "typing",
            Some(P::Read(_)) => "read",
            Some(P::Manage(_)) => "manage",
            None => "none",
        };
        self.inner.metrics.request(name);
        let span = confab_common::telemetry::propagation::remote_child(name, &trace_parent);
        let op = match op {
            Some(P::Send(op)) => Op::Send(op),
            Some(P::Join(op)) => {
                subscribed.insert(chat_id.clone());
                Op::Join(op)
            }
            Some(P::Subscribe(_)) => {
                subscribed.insert(chat_id.clone());
                Op::Subscribe
            }
            Some(P::Unsubscribe(_)) => {
                subscribed.remove(&chat_id);
                Op::Unsubscribe
            }
            Some(P::Announce(_)) => Op::Announce,
            Some(P::Edit(op)) => Op::Edit(op),
            Some(P::Delete(op)) => Op::Delete(op),
            Some(P::React(op)) => Op::React(op),
            Some(P::Typing(op)) => Op::Typing(op),
            Some(P::Read(op)) => Op::Read(op),
            Some(P::Manage(op)) => Op::Manage(op),
            None => return reply_error(pb::ErrorCode::Validation, "request without op"),
        };
        self.dispatch(&chat_id, Cmd { req_id: id, user: user_id, edge: edge.clone(), op, span });
    }
}

fn unavailable(message: &str) -> pb::reply::Result {
    pb::reply::Result::Error(pb::Error {
        code: pb::ErrorCode::Unavailable as i32,
        message: message.into(),
        retry_after_ms: None,
    })
}

/// What a router sends an edge.
pub type FrameStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::RouterFrame, Status>> + Send>>;

#[tonic::async_trait]
impl RouterRpc for RouterService {
    type EdgeStreamStream = FrameStream;

    async fn ping(&self, _req: Request<pb::Empty>) -> Result<Response<pb::Empty>, Status> {
        // A draining router counts as gone, so its peers move its chats.
        if self.inner.shutdown.is_triggered() {
            return Err(Status::unavailable("shutting down"));
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn edge_stream(&self, req: Request<Streaming<pb::EdgeFrame>>) -> Result<Response<FrameStream>, Status> {
        Ok(Response::new(self.attach(req.into_inner())))
    }
}

impl RouterService {
    /// Attaches one edge stream: `inbound` is what the edge sends, the
    /// returned stream what the router sends back.
    fn attach(&self, mut inbound: Streaming<pb::EdgeFrame>) -> FrameStream {
        let key = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.inner.config.edge_queue);
        let kill = CancellationToken::new();
        let edge = EdgeConn::new(key, tx, kill.clone(), self.inner.metrics.streams.clone());
        self.inner.metrics.edge_streams.add(1, &[]);
        self.inner.edges.insert(edge.clone());
        let this = self.clone();
        let shutdown = self.inner.shutdown.clone();
        let reader_kill = kill.clone();
        self.inner.shutdown.spawn(async move {
            let mut subscribed = HashSet::new();
            loop {
                let frame = tokio::select! {
                    f = inbound.next() => f,
                    () = reader_kill.cancelled() => break,
                    () = shutdown.triggered() => break,
                };
                match frame {
                    Some(Ok(pb::EdgeFrame { kind: Some(pb::edge_frame::Kind::Request(r)) })) => {
                        this.handle_request(r, &edge, &mut subscribed);
                    }
                    Some(Ok(pb::EdgeFrame { kind: Some(pb::edge_frame::Kind::Hello(h)) })) => {
                        tracing::info!(edge.id = %h.edge_id, stream = key, "edge attached");
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            reader_kill.cancel();
            this.inner.edges.remove(key);
            this.inner.metrics.edge_streams.add(-1, &[]);
            for chat_id in subscribed {
                let cmd = Cmd {
                    req_id: 0,
                    user: String::new(),
                    edge: edge.clone(),
                    op: Op::EdgeGone,
                    span: tracing::Span::none(),
                };
                this.dispatch(&chat_id, cmd);
            }
            tracing::info!(stream = key, "edge detached");
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx).take_until(kill.cancelled_owned()))
    }
}

/// Joins the membership and serves the router on `listeners` until
/// `shutdown` fires, with store-svc at `config.store_url`, and the gRPC
/// health service beside it (see `health`).
pub async fn run(config: Config, listeners: impl Into<Listeners>, shutdown: Shutdown) -> Result<(), Error> {
    let timeout = Duration::from_millis(config.store_timeout_ms);
    let store: Arc<dyn Store> =
        Arc::new(RemoteStore::connect_lazy(&config.store_url, timeout).map_err(|e| Error::Config(e.to_string()))?);
    let detection = Detection {
        probe: Duration::from_millis(config.probe_ms.max(10)),
        window: Duration::from_millis(config.detect_ms.max(10)),
    };
    let store_url = config.store_url.clone();
    let service = RouterService::new(config, store, shutdown.clone())?;
    let metrics = service.inner.metrics.clone();
    let listener = listeners.into().serve_metrics(&metrics.registry, &shutdown);
    let membership = service.inner.membership.clone();
    shutdown.spawn(membership.clone().run(service.inner.discovery.clone(), detection, shutdown.clone()));
    shutdown.spawn(metrics.clone().watch_ring(membership.clone(), detection.probe, shutdown.clone()));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    shutdown.spawn(health::report(reporter, membership, store_url, detection.probe, shutdown.clone()));
    let incoming = confab_common::grpc::incoming(listener);
    tracing::info!(node.id = %service.inner.advertise, "router serving");
    tonic::transport::Server::builder()
        .trace_fn(confab_common::telemetry::propagation::server_span)
        .layer(RpcMetrics::new(&metrics.registry, "confab.router"))
        .add_service(health_service)
        .add_service(RouterServer::new(service))
        .serve_with_incoming_shutdown(incoming, async move { shutdown.triggered().await })
        .await?;
    Ok(())
}
