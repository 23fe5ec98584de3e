//! Who may hold a connection, and for how long without saying who they are.
//!
//! - **Per client IP**: at most `max_connections_per_ip` Engine.IO sessions
//!   (direct WebSockets and polling sessions) at a time. The handshake over
//!   the cap gets HTTP 429 with the contract's `RATE_LIMITED` body, before
//!   any upgrade. The client IP is the TCP peer's, or with
//!   `trusted_proxy_hops = N > 0` the N-th address from the right of
//!   `X-Forwarded-For` (what the N proxies in front of the edge saw). IPv6
//!   clients count per /64, the block one host usually holds.
//! - **Per user**: at most `max_sessions_per_user` accepted Socket.IO
//!   sessions of one user on this edge (a per-edge count: an edge knows its
//!   own sockets without asking anyone). A CONNECT over it gets a
//!   CONNECT_ERROR `RATE_LIMITED`.
//! - **CONNECT deadline**: a connection with no Socket.IO session
//!   `connect_timeout_ms` after it opened is closed.
//!
//! A cap of 0 means no cap. A slot is held by a permit and given back when
//! the permit is dropped, whatever ends the connection.

use crate::error::ApiError;
use crate::transport::listener::Peer;
use crate::transport::{DisconnectReason, Sid};
use crate::Edge;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use confab_common::ErrorCode;
use opentelemetry::metrics::Counter;
use opentelemetry::KeyValue;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The retry hint given with a refusal: a slot frees only when one of the
/// client's connections ends, so this is a polite pace, not a promise.
pub const RETRY_AFTER_MS: u64 = 5_000;

/// Open connections per key, each held by a [`Permit`].
struct Counts<K: Eq + Hash> {
    cap: usize,
    open: Mutex<HashMap<K, usize>>,
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Counts<K> {
    fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self { cap, open: Mutex::default() })
    }

    /// A slot for `key`, or `None` when it holds `cap` already.
    fn take(self: &Arc<Self>, key: K) -> Option<Permit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key.clone()).or_insert(0);
        if self.cap > 0 && *n >= self.cap {
            return None;
        }
        *n += 1;
        let counts = self.clone();
        Some(Permit(Some(Box::new(move || counts.give_back(&key)))))
    }

    fn give_back(&self, key: &K) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                open.remove(key);
            }
        }
    }

    #[cfg(test)]
    fn held(&self, key: &K) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied().unwrap_or(0)
    }
}

/// One connection's slot; dropping it gives the slot back.
pub struct Permit(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(give_back) = self.0.take() {
            give_back();
        }
    }
}

/// An Engine.IO session's per-IP slot, carried in the handshake request's
/// extensions (engineioxide keeps them with its socket, so the slot lives
/// as long as the session).
#[derive(Clone)]
pub struct IpPermit(#[allow(dead_code)] Arc<Permit>);

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many connections from this address (at most {0})")]
    Ip(usize),
    #[error("too many sessions of this user on this edge (at most {0})")]
    User(usize),
}

/// The caps of one edge.
pub struct Admission {
    per_ip: Arc<Counts<IpAddr>>,
    per_user: Arc<Counts<String>>,
    trusted_hops: usize,
    deadlines: ConnectDeadlines,
    /// Refusals and closes, by reason (`confab_edge_refused_total`).
    refused: Counter<u64>,
}

impl Admission {
    pub fn new(config: &crate::Config, refused: Counter<u64>) -> Self {
        Self {
            per_ip: Counts::new(config.max_connections_per_ip),
            per_user: Counts::new(config.max_sessions_per_user),
            trusted_hops: config.trusted_proxy_hops,
            deadlines: ConnectDeadlines::new(Duration::from_millis(config.connect_timeout_ms)),
            refused,
        }
    }

    /// A slot for one more Engine.IO session from `ip`.
    pub fn admit_ip(&self, ip: IpAddr) -> Result<IpPermit, Refused> {
        let key = ip_key(ip);
        let permit = self.per_ip.take(key).map(|p| IpPermit(Arc::new(p)));
        if permit.is_none() {
            self.refused.add(1, &[KeyValue::new("reason", "per_ip")]);
        }
        permit.ok_or(Refused::Ip(self.per_ip.cap))
    }

    /// A slot for one more Socket.IO session of `user_id` on this edge.
    pub fn admit_user(&self, user_id: &str) -> Result<Permit, Refused> {
        let permit = self.per_user.take(user_id.to_string());
        if permit.is_none() {
            self.refused.add(1, &[KeyValue::new("reason", "per_user")]);
        }
        permit.ok_or(Refused::User(self.per_user.cap))
    }

    /// The client's address: the TCP peer, or the trusted proxies' word.
    pub fn client_ip(&self, headers: &http::HeaderMap, peer: IpAddr) -> IpAddr {
        client_ip(headers, peer, self.trusted_hops)
    }

    /// Closes `conn` if it has no Socket.IO session when its CONNECT
    /// deadline passes.
    pub fn watch_connect(&self, conn: &Arc<dyn AwaitingConnect>) {
        self.deadlines.watch(conn);
    }
}

/// A connection as its CONNECT deadline sees it (a socket of the session
/// layer, which implements this).
pub trait AwaitingConnect: Send + Sync {
    fn sid(&self) -> Sid;
    fn connect_state(&self) -> ConnectState;
    fn close(&self, reason: DisconnectReason);
}

/// Where a connection's CONNECT stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectState {
    /// None came yet: the deadline closes the connection.
    Waiting,
    /// One is being checked: it gets another deadline's time to finish.
    Checking,
    /// It has a session, or has closed: the deadline is moot.
    Settled,
}

/// IPv6 clients count per /64; IPv4 (mapped or not) per address.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// With `hops` trusted proxies in front, the address the outermost of them
/// saw: the `hops`-th entry from the right of `X-Forwarded-For` (every
/// header line, in order). Entries further left were written by the client
/// and are not trusted. With fewer entries than hops, the leftmost one;
/// with none, or one that is not an address, the TCP peer.
pub fn client_ip(headers: &http::HeaderMap, peer: IpAddr, hops: usize) -> IpAddr {
    if hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let Some(entry) = entries.len().checked_sub(hops).map(|i| entries[i]).or(entries.first().copied()) else {
        return peer;
    };
    entry.parse::<IpAddr>().or_else(|_| entry.parse::<std::net::SocketAddr>().map(|a| a.ip())).unwrap_or_else(|_| {
        tracing::debug!(entry, "X-Forwarded-For entry is not an address: using the TCP peer");
        peer
    })
}

/// True for an Engine.IO handshake: a request on the Socket.IO path with
/// no session id yet (a polling open or a direct WebSocket).
fn is_engine_handshake(req: &Request) -> bool {
    let path = req.uri().path();
    if path != "/socket.io/" && path != "/socket.io" {
        return false;
    }
    !req.uri().query().unwrap_or("").split('&').any(|pair| pair.starts_with("sid="))
}

/// Middleware in front of both transports: an Engine.IO handshake takes a
/// per-IP slot (kept in the request's extensions for the session), or is
/// refused with 429.
pub async fn admit(State(edge): State<Arc<Edge>>, mut req: Request, next: Next) -> Response {
    if !is_engine_handshake(&req) {
        return next.run(req).await;
    }
    let Some(Peer(peer)) = req.extensions().get::<Peer>().copied() else {
        return next.run(req).await;
    };
    let ip = edge.admission.client_ip(req.headers(), peer.ip());
    match edge.admission.admit_ip(ip) {
        Ok(permit) => {
            req.extensions_mut().insert(permit);
            next.run(req).await
        }
        Err(refused) => {
            tracing::info!(client.ip = %ip, "{refused}");
            rate_limited(&refused).into_response()
        }
    }
}

fn rate_limited(refused: &Refused) -> ApiError {
    ApiError { retry_after_ms: Some(RETRY_AFTER_MS), ..ApiError::new(ErrorCode::RateLimited, refused.to_string()) }
}

/// The CONNECT_ERROR `data` of a refused CONNECT (CONTRACT §2's shape:
/// `{ code, reason }`, with §3's `retryAfterMs` for RATE_LIMITED).
pub fn connect_refusal(refused: &Refused) -> Value {
    tracing::info!("CONNECT refused: {refused}");
    json!({ "code": ErrorCode::RateLimited.as_str(), "reason": "too_many_sessions", "retryAfterMs": RETRY_AFTER_MS })
}

/// Connections waiting for their CONNECT, in the order they opened: every
/// deadline is the same length, so the oldest is always first. One task
/// per edge closes the late ones ([`run_connect_deadlines`]).
struct ConnectDeadlines {
    after: Duration,
    queue: Mutex<VecDeque<(Instant, Weak<dyn AwaitingConnect>)>>,
    wake: Notify,
}

impl ConnectDeadlines {
    fn new(after: Duration) -> Self {
        Self { after, queue: Mutex::default(), wake: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, Weak<dyn AwaitingConnect>)>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watch(&self, conn: &Arc<dyn AwaitingConnect>) {
        let mut queue = self.lock();
        queue.push_back((Instant::now() + self.after, Arc::downgrade(conn)));
        if queue.len() == 1 {
            self.wake.notify_one();
        }
    }

    /// The entries due at `now`, and when the next one is.
    fn take_due(&self, now: Instant) -> (Vec<Weak<dyn AwaitingConnect>>, Option<Instant>) {
        let mut queue = self.lock();
        let mut due = Vec::new();
        while let Some((at, _)) = queue.front() {
            if *at > now {
                return (due, Some(*at));
            }
            if let Some((_, conn)) = queue.pop_front() {
                due.push(conn);
            }
        }
        (due, None)
    }
}

/// Closes connections still without a session at their CONNECT deadline,
/// until the edge stops. A CONNECT being checked at that moment gets
/// another deadline's time to finish.
pub async fn run_connect_deadlines(edge: Arc<Edge>) {
    let deadlines = &edge.admission.deadlines;
    loop {
        let (due, next) = deadlines.take_due(Instant::now());
        for conn in due.iter().filter_map(Weak::upgrade) {
            match conn.connect_state() {
                ConnectState::Settled => continue,
                ConnectState::Checking => {
                    deadlines.watch(&conn);
                    continue;
                }
                ConnectState::Waiting => {}
            }
            tracing::info!(sid = %conn.sid(), "no CONNECT before the deadline: closing connection");
            edge.admission.refused.add(1, &[KeyValue::new("reason", "connect_deadline")]);
            conn.close(DisconnectReason::TransportClose);
        }
        let wait = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => deadlines.wake.notified().await,
            }
        };
        tokio::select! {
            () = wait => {}
            () = edge.shutdown.triggered() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_client_ip_comes_from_trusted_hops_only() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let h = xff(&["6.6.6.6, 1.2.3.4", "10.0.0.9"]);
        // No trusted proxy: the header is the client's own words.
        assert_eq!(client_ip(&h, peer, 0), peer);
        // One proxy: what it saw, the rightmost entry.
        assert_eq!(client_ip(&h, peer, 1), "10.0.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(&h, peer, 2), "1.2.3.4".parse::<IpAddr>().unwrap());
        // Fewer entries than hops: the leftmost; none: the peer.
        assert_eq!(client_ip(&h, peer, 9), "6.6.6.6".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(&http::HeaderMap::new(), peer, 1), peer);
        assert_eq!(client_ip(&xff(&["garbage"]), peer, 1), peer);
        assert_eq!(client_ip(&xff(&["[2001:db8::1]:443"]), peer, 1), "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn caps_count_open_permits_per_key() {
        let counts = Counts::<IpAddr>::new(2);
        let ip: IpAddr = "1.2.3.4".parse().unwrap();
        let (a, b) = (counts.take(ip).unwrap(), counts.take(ip).unwrap());
        assert!(counts.take(ip).is_none());
        assert!(counts.take("1.2.3.5".parse().unwrap()).is_some());
        drop(a);
        let c = counts.take(ip).unwrap();
        drop((b, c));
        assert_eq!(counts.held(&ip), 0);
        assert!(counts.open.lock().unwrap().is_empty(), "no entry is kept for a key with nothing open");
        // 0: no cap.
        let unlimited = Counts::<String>::new(0);
        let held: Vec<Permit> = (0..1000).filter_map(|_| unlimited.take("u".into())).collect();
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_eq!(ip_key("::ffff:1.2.3.4".parse().unwrap()), "1.2.3.4".parse::<IpAddr>().unwrap());
    }
}
