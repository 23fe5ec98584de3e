//! One suite of presence rules (CONTRACT §8: grace window, throttle,
//! invisible, lastSeenAt, edge leases) over both backends of presence-svc:
//! memory and Redis (a real `redis-server` per test, one over TLS). Times are passed in,
//! so nothing sleeps. Then presence-svc itself with two replicas on one
//! Redis: updates reach an edge watching on either replica, once.

use confab_presence::hub::{Seen, Windows};
use confab_presence::redis_state::RedisState;
use confab_presence::state::{MemoryState, SessionChange, State};
use confab_proto::v1 as pb;
use confab_tests::redis::RedisServer;
use futures::StreamExt;
use std::time::Duration;

const WINDOWS: Windows = Windows { offline_grace_ms: 5000, update_interval_ms: 2000, lease_ms: 30_000 };

fn change(user: &str, edge: &str, session: &str, open: bool) -> SessionChange {
    SessionChange { user: user.into(), edge: edge.into(), session: session.into(), open }
}

fn statuses(v: &[Seen]) -> Vec<(&str, &str)> {
    v.iter().map(|s| (s.user_id.as_str(), s.status)).collect()
}

async fn open(s: &dyn State, user: &str, edge: &str, session: &str, now: i64) -> Vec<Seen> {
    s.sessions(&[change(user, edge, session, true)], now).await.unwrap()
}

async fn close(s: &dyn State, user: &str, edge: &str, session: &str, now: i64) -> Vec<Seen> {
    s.sessions(&[change(user, edge, session, false)], now).await.unwrap()
}

async fn seen(s: &dyn State, user: &str, viewer: &str, now: i64) -> Seen {
    s.seen_by(&[user.to_string()], viewer, now).await.unwrap().remove(0)
}

async fn grace_window(s: &dyn State) {
    assert_eq!(statuses(&open(s, "u", "e1", "s1", 0).await), vec![("u", "online")]);
    assert!(open(s, "u", "e2", "s2", 100).await.is_empty());
    assert!(close(s, "u", "e1", "s1", 200).await.is_empty());
    assert!(close(s, "u", "e2", "s2", 3000).await.is_empty());
    assert!(s.tick(7999).await.unwrap().is_empty(), "still inside the grace window");
    let off = s.tick(8000).await.unwrap();
    assert_eq!(statuses(&off), vec![("u", "offline")]);
    assert_eq!((off[0].since_ms, off[0].last_seen_ms), (3000, Some(3000)));
    // A reconnect inside the grace window publishes nothing.
    open(s, "w", "e1", "s1", 10_000).await;
    close(s, "w", "e1", "s1", 10_000).await;
    assert!(open(s, "w", "e1", "s2", 12_000).await.is_empty());
    assert!(s.tick(20_000).await.unwrap().is_empty());
    assert_eq!(seen(s, "w", "v", 20_000).await.status, "online");
}

async fn throttle_and_invisible(s: &dyn State) {
    open(s, "u", "e1", "s1", 0).await;
    let (updates, own) = s.set_status("u", "away", 2000).await.unwrap();
    assert_eq!((statuses(&updates), own.status), (vec![("u", "away")], "away"));
    assert!(s.set_status("u", "busy", 2100).await.unwrap().0.is_empty());
    assert!(s.set_status("u", "online", 2200).await.unwrap().0.is_empty());
    assert!(s.set_status("u", "busy", 2300).await.unwrap().0.is_empty());
    assert!(s.tick(3999).await.unwrap().is_empty());
    assert_eq!(statuses(&s.tick(4000).await.unwrap()), vec![("u", "busy")], "the last state goes out");
    assert!(s.tick(9000).await.unwrap().is_empty());
    // Invisible: offline to others, as set to the user.
    let (updates, own) = s.set_status("u", "invisible", 10_000).await.unwrap();
    assert_eq!((statuses(&updates), own.status), (vec![("u", "offline")], "invisible"));
    let other = seen(s, "u", "v", 11_000).await;
    assert_eq!((other.status, other.last_seen_ms), ("offline", Some(10_000)));
    assert_eq!(seen(s, "u", "u", 11_000).await.status, "invisible");
    let nobody = seen(s, "nobody", "v", 11_000).await;
    assert_eq!((nobody.status, nobody.last_seen_ms), ("offline", None));
}

async fn leases(s: &dyn State) {
    open(s, "u", "dead", "s1", 0).await;
    open(s, "w", "alive", "s2", 0).await;
    s.heartbeat("alive", 20_000).await.unwrap();
    assert!(s.tick(29_999).await.unwrap().is_empty());
    assert_eq!(statuses(&s.tick(30_000).await.unwrap()), vec![("u", "offline")]);
    assert_eq!(seen(s, "w", "v", 30_000).await.status, "online");
    assert!(s.tick(40_000).await.unwrap().is_empty(), "nothing left for the clock");
}

/// Two handles on one state (two replicas): closes racing from both still
/// take the user offline once, after the grace window.
async fn racing_closes(a: &dyn State, b: &dyn State) {
    a.sessions(&[change("r", "e1", "s1", true), change("r", "e2", "s2", true)], 0).await.unwrap();
    let (x, y) = tokio::join!(close(a, "r", "e1", "s1", 100), close(b, "r", "e2", "s2", 100));
    assert!(x.is_empty() && y.is_empty());
    assert_eq!(seen(b, "r", "v", 200).await.status, "online", "inside the grace window");
    let (x, y) = tokio::join!(a.tick(5100), b.tick(5100));
    let both: Vec<Seen> = x.unwrap().into_iter().chain(y.unwrap()).collect();
    assert_eq!(statuses(&both), vec![("r", "offline")], "one update, from one replica");
}

async fn redis_state(redis: &RedisServer) -> RedisState {
    redis_state_at(&redis.url(), redis.ca_file().as_deref())
}

fn redis_state_at(url: &str, ca_file: Option<&std::path::Path>) -> RedisState {
    let (client, connection) = confab_presence::redis_link::connect(url, ca_file, Duration::from_secs(2)).unwrap();
    RedisState::new(client, connection, WINDOWS)
}

#[tokio::test]
async fn memory_follows_the_rules() {
    grace_window(&MemoryState::new(WINDOWS)).await;
    throttle_and_invisible(&MemoryState::new(WINDOWS)).await;
    leases(&MemoryState::new(WINDOWS)).await;
    let shared = MemoryState::new(WINDOWS);
    racing_closes(&shared, &shared).await;
}

#[tokio::test]
async fn redis_follows_the_rules() {
    for rules in 0..3 {
        let redis = RedisServer::start().await;
        let state = redis_state(&redis).await;
        match rules {
            0 => grace_window(&state).await,
            1 => throttle_and_invisible(&state).await,
            _ => leases(&state).await,
        }
    }
    let redis = RedisServer::start().await;
    racing_closes(&redis_state(&redis).await, &redis_state(&redis).await).await;
}

/// `rediss://` with a password, trusting the server's own CA: the rules
/// hold as over plain TCP. An untrusted certificate or a wrong password
/// fails each call within its deadline.
#[tokio::test]
async fn redis_over_tls_with_a_password_follows_the_rules() {
    let redis = RedisServer::start_secured().await;
    grace_window(&redis_state(&redis).await).await;
    let untrusted = redis_state_at(&redis.url(), None);
    let err = untrusted.tick(0).await.expect_err("a certificate from an unknown CA was trusted");
    eprintln!("untrusted: {err}");
    let wrong = redis.url().replace(confab_tests::redis::PASSWORD, "wrong");
    let refused = redis_state_at(&wrong, redis.ca_file().as_deref());
    let err = refused.tick(0).await.expect_err("a wrong password was let in");
    eprintln!("wrong password: {err}");
}

/// presence-svc as the edges see it: two replicas on one Redis.
#[tokio::test]
async fn an_update_made_on_one_replica_reaches_an_edge_watching_on_the_other_once() {
    let redis = RedisServer::start().await;
    let shutdown = confab_common::Shutdown::new();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let config = confab_presence::Config { redis_url: Some(redis.url()), ..Default::default() };
        shutdown.spawn(confab_presence::run(config, listener, shutdown.clone()));
        replicas.push(url);
    }
    use confab_proto::v1::presence_client::PresenceClient;
    let connect = |url: String| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match PresenceClient::connect(url.clone()).await {
                Ok(c) => return c,
                Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (mut a, mut b) = (connect(replicas[0].clone()).await, connect(replicas[1].clone()).await);
    // The edge watches "u" on replica B.
    let add = pb::WatchingRequest { edge_id: "edge-b".into(), add: vec!["u".into()], remove: vec![], reset: true };
    b.watching(add).await.unwrap();
    let mut stream = b.watch(pb::WatchRequest { edge_id: "edge-b".into() }).await.unwrap().into_inner();
    // Both replicas have subscribed to Redis's updates.
    redis.wait_for_subscribers("confab:p:updates", 2).await;
    // Replica A takes the change.
    let open = pb::SessionChange {
        open: true,
        session: Some(pb::SessionRequest { user_id: "u".into(), edge_id: "edge-a".into(), session_id: "s1".into() }),
    };
    a.sessions(pb::SessionBatch { changes: vec![open] }).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("no update reached replica B's watcher within 5 s")
        .expect("the stream ended")
        .unwrap();
    assert_eq!((first.user_id.as_str(), first.status.as_str()), ("u", "online"));
    // B answers reads from the same state, and says nothing twice.
    let read = b.get(pb::GetPresenceRequest { user_id: "u".into() }).await.unwrap().into_inner();
    assert_eq!(read.status, "online");
    assert!(tokio::time::timeout(Duration::from_millis(300), stream.next()).await.is_err(), "a second update");
    shutdown.trigger();
}
