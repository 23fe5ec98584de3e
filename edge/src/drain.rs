//! Draining: what an edge does between its shutdown signal and its exit,
//! all within `drain_ms`.
//!
//! 1. It stops accepting connections (`/readyz` already answers 503) and
//!    asks every HTTP connection to finish its request and close.
//! 2. Requests in flight are answered: the edge waits for their replies
//!    until one second before the window ends (at most half of it), then
//!    answers the rest `UNAVAILABLE`. Events arriving meanwhile get
//!    `UNAVAILABLE` at once, and a failed router call is not retried.
//! 3. Every socket is closed: what is queued for it goes out first, then
//!    the WebSocket close. The transport is closed rather than sent a
//!    Socket.IO DISCONNECT, which would tell `socket.io-client` not to
//!    reconnect; a closed transport makes it reconnect, to another edge.
//! 4. Sessions are reported closed to presence, the router streams and
//!    background tasks stop, and the edge's `run` returns.
//!
//! Until the signal the edge keeps a registry of its connections (every
//! transport, with or without a session) so step 3 can reach them all.

use crate::transport::Conn;
use crate::Edge;
use confab_common::Shutdown;
use engineioxide::{socket::Sid, DisconnectReason};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Time kept at the end of the window for closing sockets, at most half of
/// the window.
const CLOSE_MARGIN: Duration = Duration::from_secs(1);
/// How long request tasks get to send their acks once the remaining
/// router calls were answered `UNAVAILABLE` (they only need scheduling).
const ABANDON_GRACE: Duration = Duration::from_millis(100);

/// The edge's open connections and whether it is draining.
pub struct Drain {
    /// Cancelled by the shutdown signal.
    signal: CancellationToken,
    window: Duration,
    conns: Mutex<HashMap<Sid, Weak<Conn>>>,
    open: watch::Sender<usize>,
}

impl Drain {
    pub fn new(signal: CancellationToken, window: Duration) -> Self {
        Self { signal, window, conns: Mutex::default(), open: watch::Sender::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Sid, Weak<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once the shutdown signal came.
    pub fn is_draining(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Notes an opened connection; one opening while the edge drains is
    /// closed at once.
    pub fn register(&self, conn: &Arc<Conn>) {
        let n = {
            let mut conns = self.lock();
            conns.insert(conn.id, Arc::downgrade(conn));
            conns.len()
        };
        self.open.send_replace(n);
        if self.is_draining() {
            conn.close(DisconnectReason::ClosingServer);
        }
    }

    pub fn unregister(&self, id: Sid) {
        let n = {
            let mut conns = self.lock();
            conns.remove(&id);
            conns.len()
        };
        self.open.send_replace(n);
    }

    fn close_all(&self) {
        let conns: Vec<Weak<Conn>> = self.lock().values().cloned().collect();
        for conn in conns.iter().filter_map(Weak::upgrade) {
            conn.close(DisconnectReason::ClosingServer);
        }
    }

    /// Resolves once every registered connection has closed.
    async fn all_closed(&self) {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }
}

/// Runs steps 2 to 4 (the caller has stopped accepting): `http` tracks the
/// HTTP connections, `background` the edge's long-lived tasks.
pub async fn drain(edge: &Arc<Edge>, http: &TaskTracker, background: &Shutdown) {
    let window = edge.drain.window;
    let deadline = Instant::now() + window;
    let close_at = deadline - CLOSE_MARGIN.min(window / 2);
    tracing::info!(window_ms = window.as_millis() as u64, "draining");
    edge.links.stop_retrying();
    // Request tasks run on the edge's own tracker: the wait ends when the
    // last in-flight request has been answered.
    let requests = edge.shutdown.tracker();
    requests.close();
    if tokio::time::timeout_at(close_at, requests.wait()).await.is_err() {
        let left = requests.len();
        edge.links.abandon();
        let _ = tokio::time::timeout(ABANDON_GRACE, requests.wait()).await;
        tracing::warn!(left, "requests still in flight at the end of the drain window: answered UNAVAILABLE");
    }
    edge.drain.close_all();
    if tokio::time::timeout_at(deadline, edge.drain.all_closed()).await.is_err() {
        tracing::warn!(open = *edge.drain.open.borrow(), "connections still open at the end of the drain window");
    }
    http.close();
    let _ = tokio::time::timeout_at(deadline, http.wait()).await;
    // Session closes going to presence.
    let _ = tokio::time::timeout_at(deadline, requests.wait()).await;
    edge.shutdown.trigger();
    background.trigger();
    background.tracker().close();
    let _ = tokio::time::timeout_at(deadline, background.tracker().wait()).await;
    tracing::info!("drained");
}
