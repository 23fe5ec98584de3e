//! The edge's side of the router streams: one long-lived bidirectional gRPC
//! stream per router, requests matched to replies by id, deliveries handed
//! to the local rooms.
//!
//! A request is queued synchronously (so two sends from one socket reach
//! the router in the order they were emitted) and its reply awaited with a
//! deadline. If the stream breaks, every request in flight on it fails with
//! UNAVAILABLE (the client retries with the same clientId) and the link
//! reconnects with backoff, re-subscribing the chats that have local sockets.

use crate::rooms::Rooms;
use confab_common::Shutdown;
use confab_proto::v1 as pb;
use confab_proto::v1::router_client::RouterClient;
use confab_router::Ring;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Endpoint;

/// What the edge may get back for a request.
pub type ReplyResult = pb::reply::Result;

/// Runs in the link's reader, before any later frame is handled: used to
/// add a socket to a local room exactly at the point of its join.
pub type OnReply = Box<dyn FnOnce(&ReplyResult) + Send>;

struct Pending {
    tx: oneshot::Sender<ReplyResult>,
    on_reply: Option<OnReply>,
}

/// One router.
pub struct Link {
    addr: String,
    out_tx: mpsc::Sender<pb::EdgeFrame>,
    pending: Mutex<HashMap<u64, Pending>>,
    connected: AtomicBool,
}

/// Every router link, and the ring that picks one per chat.
pub struct Links {
    ring: Ring,
    links: HashMap<String, Arc<Link>>,
    next_id: AtomicU64,
    timeout: Duration,
}

fn unavailable(msg: &str) -> ReplyResult {
    ReplyResult::Error(pb::Error {
        code: pb::ErrorCode::Unavailable as i32,
        message: msg.to_string(),
        retry_after_ms: None,
    })
}

impl Links {
    /// Starts one link task per router.
    pub fn start(
        routers: &[String],
        edge_id: &str,
        rooms: Arc<Rooms>,
        queue: usize,
        timeout: Duration,
        shutdown: &Shutdown,
    ) -> Arc<Self> {
        let ring = Ring::new(routers.iter().cloned());
        let mut links = HashMap::new();
        for addr in ring.routers() {
            let (out_tx, out_rx) = mpsc::channel(queue);
            let link = Arc::new(Link {
                addr: addr.clone(),
                out_tx,
                pending: Mutex::new(HashMap::new()),
                connected: AtomicBool::new(false),
            });
            shutdown.spawn(run_link(link.clone(), out_rx, edge_id.to_string(), rooms.clone(), shutdown.clone()));
            links.insert(addr.clone(), link);
        }
        Arc::new(Self { ring, links, next_id: AtomicU64::new(1), timeout })
    }

    pub fn any_connected(&self) -> bool {
        self.links.values().any(|l| l.connected.load(Ordering::Relaxed))
    }

    fn link_for(&self, chat_id: &str) -> Option<&Arc<Link>> {
        self.ring.owner(chat_id).and_then(|a| self.links.get(a))
    }

    /// Queues a request now; the returned future waits for its reply (at
    /// most the configured deadline).
    pub fn request(
        &self,
        chat_id: &str,
        user_id: &str,
        op: pb::request::Op,
        on_reply: Option<OnReply>,
    ) -> impl std::future::Future<Output = ReplyResult> + Send + 'static {
        let timeout = self.timeout;
        let queued = self.queue(chat_id, user_id, op, on_reply);
        async move {
            let (link, id, rx) = match queued {
                Ok(q) => q,
                Err(why) => return unavailable(why),
            };
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => unavailable("router stream closed"),
                Err(_) => {
                    link.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    unavailable("router did not answer in time")
                }
            }
        }
    }

    fn queue(
        &self,
        chat_id: &str,
        user_id: &str,
        op: pb::request::Op,
        on_reply: Option<OnReply>,
    ) -> Result<(Arc<Link>, u64, oneshot::Receiver<ReplyResult>), &'static str> {
        let link = self.link_for(chat_id).ok_or("no router configured")?.clone();
        if !link.connected.load(Ordering::Relaxed) {
            return Err("router unreachable");
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        link.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Pending { tx, on_reply });
        let frame = pb::EdgeFrame {
            kind: Some(pb::edge_frame::Kind::Request(pb::Request {
                id,
                chat_id: chat_id.to_string(),
                user_id: user_id.to_string(),
                op: Some(op),
            })),
        };
        if link.out_tx.try_send(frame).is_err() {
            link.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err("router queue full");
        }
        Ok((link, id, rx))
    }

    /// Queues a request that gets no reply (typing); dropped when the
    /// router is unreachable or its queue is full.
    pub fn send_only(&self, chat_id: &str, user_id: &str, op: pb::request::Op) {
        let Some(link) = self.link_for(chat_id) else { return };
        let request = pb::Request { id: 0, chat_id: chat_id.to_string(), user_id: user_id.to_string(), op: Some(op) };
        let frame = pb::EdgeFrame { kind: Some(pb::edge_frame::Kind::Request(request)) };
        if link.connected.load(Ordering::Relaxed) && link.out_tx.try_send(frame).is_err() {
            tracing::debug!(chat.id = chat_id, "router queue full: dropped a fire-and-forget request");
        }
    }

    /// Fire-and-forget unsubscribe (the reply is ignored).
    pub fn unsubscribe(&self, chat_id: &str) {
        let fut = self.request(chat_id, "", pb::request::Op::Unsubscribe(pb::UnsubscribeOp {}), None);
        tokio::spawn(async move {
            let _ = fut.await;
        });
    }
}

impl Link {
    fn fail_pending(&self, why: &str) {
        let drained: Vec<Pending> = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.drain().map(|(_, v)| v).collect()
        };
        for p in drained {
            let _ = p.tx.send(unavailable(why));
        }
    }
}

async fn run_link(
    link: Arc<Link>,
    mut out_rx: mpsc::Receiver<pb::EdgeFrame>,
    edge_id: String,
    rooms: Arc<Rooms>,
    shutdown: Shutdown,
) {
    let mut backoff = Duration::from_millis(50);
    while !shutdown.is_triggered() {
        match connect_once(&link, &mut out_rx, &edge_id, &rooms, &shutdown).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => tracing::warn!(router = %link.addr, error = %e, "router stream failed"),
        }
        link.connected.store(false, Ordering::Relaxed);
        // What was queued for the broken stream is dropped and failed: the
        // clients retry (sends with the same clientId are idempotent).
        while out_rx.try_recv().is_ok() {}
        link.fail_pending("router stream broke; retry");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.triggered() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn connect_once(
    link: &Arc<Link>,
    out_rx: &mut mpsc::Receiver<pb::EdgeFrame>,
    edge_id: &str,
    rooms: &Arc<Rooms>,
    shutdown: &Shutdown,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = Endpoint::from_shared(link.addr.clone())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut client = RouterClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    // Frames to the router: first a hello and the re-subscriptions, then
    // whatever the edge queues.
    let (stream_tx, stream_rx) = mpsc::channel::<pb::EdgeFrame>(1024);
    stream_tx
        .send(pb::EdgeFrame { kind: Some(pb::edge_frame::Kind::Hello(pb::Hello { edge_id: edge_id.to_string() })) })
        .await?;
    let mut inbound = client.edge_stream(tokio_stream::wrappers::ReceiverStream::new(stream_rx)).await?.into_inner();
    link.connected.store(true, Ordering::Relaxed);
    tracing::info!(router = %link.addr, "router stream up");
    // Chats with local sockets are subscribed again on the new stream.
    for chat_id in rooms.chats() {
        let frame = pb::EdgeFrame {
            kind: Some(pb::edge_frame::Kind::Request(pb::Request {
                id: 0,
                chat_id,
                user_id: String::new(),
                op: Some(pb::request::Op::Subscribe(pb::SubscribeOp {})),
            })),
        };
        stream_tx.send(frame).await?;
    }
    loop {
        tokio::select! {
            frame = out_rx.recv() => {
                let Some(frame) = frame else { return Ok(()) };
                stream_tx.send(frame).await?;
            }
            msg = inbound.message() => {
                match msg? {
                    Some(frame) => handle_frame(link, rooms, frame),
                    None => return Err("router closed the stream".into()),
                }
            }
            () = shutdown.triggered() => return Ok(()),
        }
    }
}

fn handle_frame(link: &Link, rooms: &Rooms, frame: pb::RouterFrame) {
    match frame.kind {
        Some(pb::router_frame::Kind::Reply(reply)) => {
            let pending = link.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&reply.id);
            let Some(pending) = pending else { return };
            let result = reply.result.unwrap_or_else(|| unavailable("empty reply"));
            if let Some(f) = pending.on_reply {
                f(&result);
            }
            let _ = pending.tx.send(result);
        }
        // The owner subscribed this edge when it announced the chat; with no
        // member socket here, the edge unsubscribes again.
        Some(pb::router_frame::Kind::Delivery(pb::Delivery {
            chat_id,
            event: Some(pb::delivery::Event::ChatUpdate(update)),
        })) if !rooms.apply_chat_update(&update) => {
            let op = pb::request::Op::Unsubscribe(pb::UnsubscribeOp {});
            let frame = pb::Request { id: 0, chat_id, user_id: String::new(), op: Some(op) };
            let frame = pb::EdgeFrame { kind: Some(pb::edge_frame::Kind::Request(frame)) };
            if link.out_tx.try_send(frame).is_err() {
                tracing::warn!("router queue full: unsubscribe dropped");
            }
        }
        Some(pb::router_frame::Kind::Delivery(pb::Delivery {
            event: Some(pb::delivery::Event::ChatUpdate(_)),
            ..
        })) => {}
        Some(pb::router_frame::Kind::Delivery(d)) => rooms.deliver(d),
        None => {}
    }
}
