//! router: owns chats. Each chat is placed on one router by consistent hash
//! ([`Ring`]); for the chats it owns, a router runs the single writer that
//! checks membership and idempotency, assigns gap-free seqs, appends through
//! store-svc and fans each message out once per subscribed edge.
//!
//! Edges talk to a router over one long-lived bidirectional gRPC stream
//! (`confab.v1.Router/EdgeStream`). The router keeps nothing that the store
//! cannot rebuild: a chat's writer loads its state on first use.
//!
//! Not here: sockets and client validation (edge), durable state (store-svc),
//! presence (presence-svc).

mod chat;
mod edges;
pub mod ring;

pub use ring::Ring;

use chat::{ChatCmd, ChatSettings};
use confab_common::Shutdown;
use confab_proto::v1 as pb;
use confab_proto::v1::router_server::{Router as RouterRpc, RouterServer};
use confab_store::{RemoteStore, Store};
use edges::{EdgeConn, EdgeRegistry};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Configuration of a router process.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// This router's address as listed in `--routers` (how edges dial it).
    #[arg(long = "advertise", env = "CONFAB_ADVERTISE_URL")]
    pub advertise: String,
    /// Every router of the cluster, comma separated.
    #[arg(long = "routers", env = "CONFAB_ROUTERS", value_delimiter = ',')]
    pub routers: Vec<String>,
    /// store-svc address.
    #[arg(
        long = "store-url",
        env = "CONFAB_STORE_URL",
        default_value = "http://127.0.0.1:7003"
    )]
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
    ring: Ring,
    store: Arc<dyn Store>,
    chats: Mutex<HashMap<String, mpsc::Sender<ChatCmd>>>,
    edges: EdgeRegistry,
    config: Config,
    shutdown: Shutdown,
    next_stream: AtomicU64,
}

/// The `confab.v1.Router` service.
#[derive(Clone)]
pub struct RouterService {
    inner: Arc<Inner>,
}

impl RouterService {
    pub fn new(config: Config, store: Arc<dyn Store>, shutdown: Shutdown) -> Result<Self, Error> {
        let ring = Ring::new(config.routers.clone());
        if !ring.routers().contains(&config.advertise) {
            return Err(Error::Config(format!(
                "--advertise {} is not in --routers {:?}",
                config.advertise, config.routers
            )));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                advertise: config.advertise.clone(),
                ring,
                store,
                chats: Mutex::new(HashMap::new()),
                edges: EdgeRegistry::default(),
                config,
                shutdown,
                next_stream: AtomicU64::new(1),
            }),
        })
    }

    /// Hands a command to the chat's writer, starting it if needed. A full
    /// queue is answered with UNAVAILABLE rather than waited on.
    fn dispatch(&self, chat_id: &str, cmd: ChatCmd) {
        let inner = &self.inner;
        let mut chats = inner.chats.lock().unwrap_or_else(|p| p.into_inner());
        let mut cmd = cmd;
        for _ in 0..2 {
            let tx = chats.entry(chat_id.to_string()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(inner.config.chat_queue);
                let settings = ChatSettings {
                    store: inner.store.clone(),
                    edges: inner.edges.clone(),
                    idle: Duration::from_secs(inner.config.chat_idle_secs),
                };
                inner.shutdown.spawn(chat::run_chat(chat_id.to_string(), rx, settings));
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
        let pb::Request {
            id,
            chat_id,
            user_id,
            op,
        } = r;
        if self.inner.ring.owner(&chat_id) != Some(self.inner.advertise.as_str()) {
            let err = pb::Error {
                code: pb::ErrorCode::NotOwner as i32,
                message: "not the owner of this chat".into(),
            };
            edge.send(pb::router_frame::Kind::Reply(pb::Reply {
                id,
                result: Some(pb::reply::Result::Error(err)),
            }));
            return;
        }
        let edge = edge.clone();
        let cmd = match op {
            Some(pb::request::Op::Send(op)) => ChatCmd::Send {
                req_id: id,
                user: user_id,
                op,
                edge,
            },
            Some(pb::request::Op::Join(op)) => {
                subscribed.insert(chat_id.clone());
                ChatCmd::Join {
                    req_id: id,
                    user: user_id,
                    op,
                    edge,
                }
            }
            Some(pb::request::Op::Subscribe(_)) => {
                subscribed.insert(chat_id.clone());
                ChatCmd::Subscribe {
                    req_id: id,
                    user: user_id,
                    edge,
                }
            }
            Some(pb::request::Op::Unsubscribe(_)) => {
                subscribed.remove(&chat_id);
                ChatCmd::Unsubscribe { req_id: id, edge }
            }
            Some(pb::request::Op::Announce(_)) => ChatCmd::Announce { req_id: id, edge },
            None => {
                let err = pb::Error {
                    code: pb::ErrorCode::Validation as i32,
                    message: "request without op".into(),
                };
                edge.send(pb::router_frame::Kind::Reply(pb::Reply {
                    id,
                    result: Some(pb::reply::Result::Error(err)),
                }));
                return;
            }
        };
        self.dispatch(&chat_id, cmd);
    }
}

fn unavailable(message: &str) -> pb::reply::Result {
    pb::reply::Result::Error(pb::Error {
        code: pb::ErrorCode::Unavailable as i32,
        message: message.into(),
    })
}

type FrameStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::RouterFrame, Status>> + Send>>;

#[tonic::async_trait]
impl RouterRpc for RouterService {
    type EdgeStreamStream = FrameStream;

    async fn edge_stream(&self, req: Request<Streaming<pb::EdgeFrame>>) -> Result<Response<FrameStream>, Status> {
        let mut inbound = req.into_inner();
        let key = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.inner.config.edge_queue);
        let kill = CancellationToken::new();
        let edge = EdgeConn::new(key, tx, kill.clone());
        self.inner.edges.insert(edge.clone());
        let this = self.clone();
        let shutdown = self.inner.shutdown.clone();
        let reader_kill = kill.clone();
        self.inner.shutdown.spawn(async move {
            let mut subscribed = HashSet::new();
            loop {
                let frame = tokio::select! {
                    f = inbound.message() => f,
                    () = reader_kill.cancelled() => break,
                    () = shutdown.triggered() => break,
                };
                match frame {
                    Ok(Some(pb::EdgeFrame {
                        kind: Some(pb::edge_frame::Kind::Request(r)),
                    })) => {
                        this.handle_request(r, &edge, &mut subscribed);
                    }
                    Ok(Some(pb::EdgeFrame {
                        kind: Some(pb::edge_frame::Kind::Hello(h)),
                    })) => {
                        tracing::info!(edge.id = %h.edge_id, stream = key, "edge attached");
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            reader_kill.cancel();
            this.inner.edges.remove(key);
            for chat_id in subscribed {
                this.dispatch(&chat_id, ChatCmd::EdgeGone { edge_key: key });
            }
            tracing::info!(stream = key, "edge detached");
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx).take_until(kill.cancelled_owned());
        Ok(Response::new(Box::pin(out)))
    }
}

/// Serves the router on `listener` until `shutdown` fires.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
    let timeout = Duration::from_millis(config.store_timeout_ms);
    let store: Arc<dyn Store> =
        Arc::new(RemoteStore::connect_lazy(&config.store_url, timeout).map_err(|e| Error::Config(e.to_string()))?);
    let service = RouterService::new(config, store, shutdown.clone())?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tracing::info!(node.id = %service.inner.advertise, "router serving");
    tonic::transport::Server::builder()
        .add_service(RouterServer::new(service))
        .serve_with_incoming_shutdown(incoming, async move { shutdown.triggered().await })
        .await?;
    Ok(())
}
