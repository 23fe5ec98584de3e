//! The edge's side of the router streams: one long-lived bidirectional gRPC
//! stream per router (opened through the [`Routers`] of [`LinkOptions`]),
//! requests matched to replies by id, deliveries handed to the local rooms.
//!
//! A request is queued synchronously (so two sends from one socket reach
//! the router in the order they were emitted) and its reply awaited with a
//! deadline. A router that is down, or that says it does not own the chat,
//! is retried, after jittered exponential pauses, until the deadline: by then the ring has usually moved the
//! chat to a live router. Sends are idempotent by clientId, so a retry never
//! stores a message twice.
//!
//! Liveness: a router whose stream has been down for the detection window
//! leaves the ring; when it comes back it rejoins. When a chat with local
//! sockets changes owner, or a stream reconnects, the edge subscribes again
//! and the rooms fill any gap from the store.
//!
//! Draining ([`crate::drain`]): failed requests are no longer retried, and
//! at the end of the window those still waiting are answered UNAVAILABLE.

use crate::rooms::Rooms;
use crate::transport::WriteBatch;
use confab_api::placement::{Detection, Discovery, Ring};
use confab_api::router::{RouterError, RouterFrames, Routers};
use confab_common::backoff::Backoff;
use confab_common::{ChatId, Shutdown};
use confab_proto::v1 as pb;
use futures::{FutureExt, StreamExt};
use opentelemetry::metrics::Counter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// What the edge may get back for a request.
pub type ReplyResult = pb::reply::Result;

/// Runs in the link's reader, before any later frame is handled: used to
/// add a socket to a local room exactly at the point of its join, or to
/// ack a send in the same write as its delivery (packets go out when the
/// reader's batch ends). It may run again when the request is retried.
pub type OnReply = Arc<dyn Fn(&ReplyResult, &mut WriteBatch) + Send + Sync>;

/// Router frames fanned out as one batch at most (see [`WriteBatch`]).
const BATCH_FRAMES: usize = 64;
/// Why a router stream ended.
type StreamEnd = Box<dyn std::error::Error + Send + Sync>;
/// Pauses between two tries of a request (or of a re-subscribe): 50 ms
/// doubling to 1 s, with full jitter, so an outage costs the router and the
/// store a handful of tries per request, not one every 100 ms.
fn retry_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(1))
}

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
    /// Since when the stream is down (the link's start counts as down).
    down_since: Mutex<Option<Instant>>,
    ids: Arc<AtomicU64>,
    lost: Counter<u64>,
}

/// Every router link, and the ring of live ones that picks one per chat.
pub struct Links {
    discovery: Discovery,
    detection: Detection,
    ring: RwLock<Arc<Ring>>,
    links: RwLock<HashMap<String, Arc<Link>>>,
    ids: Arc<AtomicU64>,
    lost: Counter<u64>,
    timeout: Duration,
    queue: usize,
    dialer: Arc<dyn Routers>,
    edge_id: String,
    rooms: Arc<Rooms>,
    /// The edge is draining: a failed request is answered, not retried.
    draining: AtomicBool,
    /// Cancelled at the end of the drain window: every request still
    /// waiting is answered UNAVAILABLE.
    abandoned: tokio_util::sync::CancellationToken,
}

fn unavailable(msg: &str) -> ReplyResult {
    ReplyResult::Error(pb::Error {
        code: pb::ErrorCode::Unavailable as i32,
        message: msg.to_string(),
        retry_after_ms: None,
    })
}

/// Worth another try at the (maybe new) owner.
fn retryable(r: &ReplyResult) -> bool {
    match r {
        ReplyResult::Error(e) => {
            e.code == pb::ErrorCode::NotOwner as i32 || e.code == pb::ErrorCode::Unavailable as i32
        }
        _ => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the links run.
pub struct LinkOptions {
    pub detection: Detection,
    /// Frames queued per router.
    pub queue: usize,
    /// Deadline of a request, retries included.
    pub timeout: Duration,
    /// Opens the stream to a router.
    pub dialer: Arc<dyn Routers>,
    /// Counts streams lost (`confab_edge_router_reconnects_total`).
    pub lost: Counter<u64>,
}

impl Links {
    /// Starts one link per router and the task that keeps the ring live.
    pub async fn start(
        routers: &[String],
        options: LinkOptions,
        edge_id: &str,
        rooms: Arc<Rooms>,
        shutdown: &Shutdown,
    ) -> Arc<Self> {
        let LinkOptions { detection, queue, timeout, dialer, lost } = options;
        let discovery = Discovery::parse(routers);
        let initial = discovery.resolve().await;
        let links = Arc::new(Self {
            discovery,
            detection,
            ring: RwLock::new(Arc::new(Ring::new(initial.clone()))),
            links: RwLock::new(HashMap::new()),
            ids: Arc::new(AtomicU64::new(1)),
            timeout,
            queue,
            dialer,
            lost,
            edge_id: edge_id.to_string(),
            rooms,
            draining: AtomicBool::new(false),
            abandoned: tokio_util::sync::CancellationToken::new(),
        });
        for addr in initial {
            links.add_link(&addr, shutdown);
        }
        shutdown.spawn(links.clone().keep_ring(shutdown.clone()));
        links
    }

    fn add_link(self: &Arc<Self>, addr: &str, shutdown: &Shutdown) {
        let (out_tx, out_rx) = mpsc::channel(self.queue);
        let link = Arc::new(Link {
            addr: addr.to_string(),
            out_tx,
            pending: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(false),
            down_since: Mutex::new(Some(Instant::now())),
            ids: self.ids.clone(),
            lost: self.lost.clone(),
        });
        self.links.write().unwrap_or_else(|p| p.into_inner()).insert(addr.to_string(), link.clone());
        let dialer = self.dialer.clone();
        shutdown.spawn(run_link(link, out_rx, dialer, self.edge_id.clone(), self.rooms.clone(), shutdown.clone()));
    }

    /// From now on a failed request is answered at once, not retried.
    pub fn stop_retrying(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Answers every request still waiting UNAVAILABLE, now.
    pub fn abandon(&self) {
        self.stop_retrying();
        self.abandoned.cancel();
    }

    pub fn any_connected(&self) -> bool {
        self.links.read().unwrap_or_else(|p| p.into_inner()).values().any(|l| l.connected.load(Ordering::Relaxed))
    }

    fn ring(&self) -> Arc<Ring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn link_for(&self, chat_id: &str) -> Option<Arc<Link>> {
        let ring = self.ring();
        let owner = ring.owner(&ChatId::from(chat_id))?;
        self.links.read().unwrap_or_else(|p| p.into_inner()).get(owner).cloned()
    }

    /// Queues a request now; the returned future waits for its reply,
    /// retrying at the owner of the moment, until the configured deadline.
    pub fn request(
        self: &Arc<Self>,
        chat_id: &str,
        user_id: &str,
        op: pb::request::Op,
        on_reply: Option<OnReply>,
    ) -> impl std::future::Future<Output = ReplyResult> + Send + 'static {
        let deadline = Instant::now() + self.timeout;
        let mut attempt = self.queue(chat_id, user_id, op.clone(), on_reply.clone());
        let (this, chat_id, user_id) = (self.clone(), chat_id.to_string(), user_id.to_string());
        async move {
            let mut backoff = retry_backoff();
            loop {
                let result = match attempt {
                    Ok((link, id, rx)) => tokio::select! {
                        replied = tokio::time::timeout_at(deadline, rx) => match replied {
                            Ok(Ok(r)) => r,
                            Ok(Err(_)) => unavailable("router stream closed"),
                            Err(_) => {
                                lock(&link.pending).remove(&id);
                                return unavailable("router did not answer in time");
                            }
                        },
                        () = this.abandoned.cancelled() => {
                            lock(&link.pending).remove(&id);
                            return unavailable("the edge is shutting down; retry on another");
                        }
                    },
                    Err(why) => unavailable(why),
                };
                let pause = backoff.next_pause();
                let draining = this.draining.load(Ordering::Relaxed);
                if !retryable(&result) || draining || Instant::now() + pause >= deadline {
                    return result;
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = this.abandoned.cancelled() => return unavailable("the edge is shutting down; retry on another"),
                }
                attempt = this.queue(&chat_id, &user_id, op.clone(), on_reply.clone());
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
        let link = self.link_for(chat_id).ok_or("no router available")?;
        if !link.connected.load(Ordering::Relaxed) {
            return Err("router unreachable");
        }
        let (id, rx) = link.send_request(chat_id, user_id, op, on_reply)?;
        Ok((link, id, rx))
    }

    /// Queues a request that gets no reply (typing); dropped when the
    /// router is unreachable or its queue is full.
    pub fn send_only(&self, chat_id: &str, user_id: &str, op: pb::request::Op) {
        let Some(link) = self.link_for(chat_id) else { return };
        let request = pb::Request {
            id: 0,
            chat_id: chat_id.to_string(),
            user_id: user_id.to_string(),
            op: Some(op),
            trace_parent: confab_common::telemetry::propagation::current_traceparent(),
        };
        let frame = pb::EdgeFrame { kind: Some(pb::edge_frame::Kind::Request(request)) };
        if link.connected.load(Ordering::Relaxed) && link.out_tx.try_send(frame).is_err() {
            tracing::debug!(chat.id = chat_id, "router queue full: dropped a fire-and-forget request");
        }
    }

    /// Fire-and-forget unsubscribe (the reply is ignored).
    pub fn unsubscribe(self: &Arc<Self>, chat_id: &str) {
        let fut = self.request(chat_id, "", pb::request::Op::Unsubscribe(pb::UnsubscribeOp {}), None);
        tokio::spawn(async move {
            let _ = fut.await;
        });
    }

    /// Follows discovery and liveness; when a chat with local sockets moves
    /// to another router, subscribes there and lets the room catch up.
    async fn keep_ring(self: Arc<Self>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.detection.probe);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.triggered() => return,
            }
            let configured = self.discovery.resolve().await;
            let known: Vec<String> = self.links.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
            for addr in configured.iter().filter(|a| !known.contains(a)) {
                self.add_link(addr, &shutdown);
            }
            let live: Vec<String> = {
                let links = self.links.read().unwrap_or_else(|p| p.into_inner());
                links
                    .values()
                    .filter(|l| configured.contains(&l.addr))
                    .filter(|l| {
                        l.connected.load(Ordering::Relaxed)
                            || lock(&l.down_since).is_some_and(|t| t.elapsed() < self.detection.window)
                    })
                    .map(|l| l.addr.clone())
                    .collect()
            };
            let old = self.ring();
            let Some(ring) = old.changed(live) else { continue };
            let ring = Arc::new(ring);
            tracing::info!(routers = ?ring.routers(), "router ring changed");
            *self.ring.write().unwrap_or_else(|p| p.into_inner()) = ring.clone();
            for chat_id in self.rooms.chats() {
                let id = ChatId::from(&chat_id);
                if old.owner(&id) != ring.owner(&id) {
                    self.resubscribe(&chat_id);
                }
            }
        }
    }

    /// Subscribes again at the chat's owner and lets the room catch up to
    /// the owner's last seq.
    fn resubscribe(self: &Arc<Self>, chat_id: &str) {
        let (rooms, chat) = (self.rooms.clone(), chat_id.to_string());
        let on_reply: OnReply = Arc::new(move |r: &ReplyResult, _: &mut WriteBatch| {
            if let ReplyResult::Join(j) = r {
                rooms.note_head(&chat, j.last_seq);
            }
        });
        let (this, chat) = (self.clone(), chat_id.to_string());
        // Keep trying while the chat has local sockets: routers may still
        // disagree about the ring for a moment.
        tokio::spawn(async move {
            let mut backoff = retry_backoff();
            loop {
                let op = pb::request::Op::Subscribe(pb::SubscribeOp {});
                let result = this.request(&chat, "", op, Some(on_reply.clone())).await;
                if !retryable(&result) || !this.rooms.has(&chat) {
                    return;
                }
                tokio::time::sleep(backoff.next_pause()).await;
            }
        });
    }
}

impl Link {
    fn send_request(
        &self,
        chat_id: &str,
        user_id: &str,
        op: pb::request::Op,
        on_reply: Option<OnReply>,
    ) -> Result<(u64, oneshot::Receiver<ReplyResult>), &'static str> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, Pending { tx, on_reply });
        let request = pb::Request {
            id,
            chat_id: chat_id.to_string(),
            user_id: user_id.to_string(),
            op: Some(op),
            trace_parent: confab_common::telemetry::propagation::current_traceparent(),
        };
        let frame = pb::EdgeFrame { kind: Some(pb::edge_frame::Kind::Request(request)) };
        if self.out_tx.try_send(frame).is_err() {
            lock(&self.pending).remove(&id);
            return Err("router queue full");
        }
        Ok((id, rx))
    }

    fn fail_pending(&self, why: &str) {
        let drained: Vec<Pending> = lock(&self.pending).drain().map(|(_, v)| v).collect();
        for p in drained {
            let _ = p.tx.send(unavailable(why));
        }
    }
}

async fn run_link(
    link: Arc<Link>,
    mut out_rx: mpsc::Receiver<pb::EdgeFrame>,
    dialer: Arc<dyn Routers>,
    edge_id: String,
    rooms: Arc<Rooms>,
    shutdown: Shutdown,
) {
    let mut backoff = Duration::from_millis(50);
    while !shutdown.is_triggered() {
        match connect_once(&link, &mut out_rx, dialer.as_ref(), &edge_id, &rooms, &shutdown).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => tracing::debug!(router = %link.addr, error = %e, "router stream failed"),
        }
        if link.connected.swap(false, Ordering::Relaxed) {
            tracing::warn!(router = %link.addr, "router stream lost");
            link.lost.add(1, &[]);
            *lock(&link.down_since) = Some(Instant::now());
        }
        // What was queued for the broken stream is dropped and failed: the
        // callers retry (sends with the same clientId are idempotent).
        while out_rx.try_recv().is_ok() {}
        link.fail_pending("router stream broke; retry");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.triggered() => return,
        }
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

async fn connect_once(
    link: &Arc<Link>,
    out_rx: &mut mpsc::Receiver<pb::EdgeFrame>,
    dialer: &dyn Routers,
    edge_id: &str,
    rooms: &Arc<Rooms>,
    shutdown: &Shutdown,
) -> Result<(), StreamEnd> {
    // Frames to the router: first a hello, then whatever the edge queues.
    let (stream_tx, stream_rx) = mpsc::channel::<pb::EdgeFrame>(1024);
    let hello = pb::Hello { edge_id: edge_id.to_string() };
    stream_tx.send(pb::EdgeFrame { kind: Some(pb::edge_frame::Kind::Hello(hello)) }).await?;
    let mut inbound = dialer.open(&link.addr, stream_rx).await?;
    link.connected.store(true, Ordering::Relaxed);
    *lock(&link.down_since) = None;
    tracing::info!(router = %link.addr, "router stream up");
    // Chats with local sockets are subscribed again on the new stream (those
    // this router does not own get NOT_OWNER, harmlessly); each room then
    // catches up to the owner's last seq.
    for chat_id in rooms.chats() {
        let (rooms2, chat) = (rooms.clone(), chat_id.clone());
        let on_reply: OnReply = Arc::new(move |r: &ReplyResult, _: &mut WriteBatch| {
            if let ReplyResult::Join(j) = r {
                rooms2.note_head(&chat, j.last_seq);
            }
        });
        let _ = link.send_request(&chat_id, "", pb::request::Op::Subscribe(pb::SubscribeOp {}), Some(on_reply));
    }
    loop {
        tokio::select! {
            frame = out_rx.recv() => {
                let Some(frame) = frame else { return Ok(()) };
                stream_tx.send(frame).await?;
            }
            msg = inbound.next() => {
                if let Some(e) = fan_out(link, rooms, msg, &mut inbound) {
                    return Err(e);
                }
            }
            () = shutdown.triggered() => return Ok(()),
        }
    }
}

/// Handles `msg` and whatever else has already arrived (up to
/// [`BATCH_FRAMES`]) as one batch: one socket write per client for all of
/// them. Why the stream ended, if it did.
fn fan_out(
    link: &Link,
    rooms: &Rooms,
    mut msg: Option<Result<pb::RouterFrame, RouterError>>,
    inbound: &mut RouterFrames,
) -> Option<StreamEnd> {
    let mut batch = WriteBatch::new();
    let mut handled = 0;
    loop {
        match msg {
            Some(Ok(frame)) => handle_frame(link, rooms, frame, &mut batch),
            Some(Err(e)) => return Some(e.into()),
            None => return Some("router closed the stream".into()),
        }
        handled += 1;
        if handled == BATCH_FRAMES {
            break;
        }
        match inbound.next().now_or_never() {
            Some(next) => msg = next,
            None => break,
        }
    }
    batch.flush();
    None
}

fn handle_frame(link: &Link, rooms: &Rooms, frame: pb::RouterFrame, batch: &mut WriteBatch) {
    match frame.kind {
        Some(pb::router_frame::Kind::Reply(reply)) => {
            let Some(pending) = lock(&link.pending).remove(&reply.id) else { return };
            let result = reply.result.unwrap_or_else(|| unavailable("empty reply"));
            if let Some(f) = &pending.on_reply {
                f(&result, batch);
            }
            let _ = pending.tx.send(result);
        }
        // The owner subscribed this edge when it announced the chat; with no
        // member socket here, the edge unsubscribes again.
        Some(pb::router_frame::Kind::Delivery(pb::Delivery {
            chat_id,
            event: Some(pb::delivery::Event::ChatUpdate(update)),
        })) if !rooms.apply_chat_update(&update, batch) => {
            let op = pb::request::Op::Unsubscribe(pb::UnsubscribeOp {});
            let frame =
                pb::Request { id: 0, chat_id, user_id: String::new(), op: Some(op), trace_parent: String::new() };
            let frame = pb::EdgeFrame { kind: Some(pb::edge_frame::Kind::Request(frame)) };
            if link.out_tx.try_send(frame).is_err() {
                tracing::warn!("router queue full: unsubscribe dropped");
            }
        }
        Some(pb::router_frame::Kind::Delivery(d)) => rooms.deliver(d, batch),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_api::router::{RouterError, RouterFrames};

    /// A router in memory: it answers every request FORBIDDEN, naming the
    /// edge of the stream's hello, the request's chat and user, and the
    /// address it was dialed at.
    struct Refuser;

    #[async_trait::async_trait]
    impl Routers for Refuser {
        async fn open(
            &self,
            addr: &str,
            mut frames: mpsc::Receiver<pb::EdgeFrame>,
        ) -> Result<RouterFrames, RouterError> {
            let Some(pb::edge_frame::Kind::Hello(hello)) = frames.recv().await.and_then(|f| f.kind) else {
                return Err(RouterError::Invalid("no hello".into()));
            };
            let (tx, rx) = futures::channel::mpsc::unbounded();
            let addr = addr.to_string();
            tokio::spawn(async move {
                while let Some(frame) = frames.recv().await {
                    let Some(pb::edge_frame::Kind::Request(r)) = frame.kind else { continue };
                    let error = pb::Error {
                        code: pb::ErrorCode::Forbidden as i32,
                        message: format!("{} {} {} {addr}", hello.edge_id, r.chat_id, r.user_id),
                        retry_after_ms: None,
                    };
                    let reply = pb::Reply { id: r.id, result: Some(ReplyResult::Error(error)) };
                    let _ = tx.unbounded_send(Ok(pb::RouterFrame { kind: Some(pb::router_frame::Kind::Reply(reply)) }));
                }
            });
            Ok(rx.boxed())
        }
    }

    #[tokio::test]
    async fn requests_go_through_the_dialer_and_replies_come_back_by_id() {
        let shutdown = Shutdown::new();
        let options = LinkOptions {
            detection: Detection { probe: Duration::from_millis(50), window: Duration::from_secs(5) },
            queue: 16,
            lost: opentelemetry::global::meter("test").u64_counter("lost").build(),
            timeout: Duration::from_secs(10),
            dialer: Arc::new(Refuser),
        };
        let routers = ["http://router-a:7002".to_string()];
        let links = Links::start(&routers, options, "edge-1", Arc::default(), &shutdown).await;
        let op = || pb::request::Op::Subscribe(pb::SubscribeOp {});
        // Until the stream is open the request is retried; then answered.
        let (first, second) =
            tokio::join!(links.request("c1", "alice", op(), None), links.request("c2", "bob", op(), None));
        for (reply, expected) in
            [(first, "edge-1 c1 alice http://router-a:7002"), (second, "edge-1 c2 bob http://router-a:7002")]
        {
            match reply {
                ReplyResult::Error(e) => {
                    assert_eq!((e.code, e.message.as_str()), (pb::ErrorCode::Forbidden as i32, expected));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(links.any_connected());
        shutdown.trigger();
    }
}
