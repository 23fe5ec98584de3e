//! One suite of rate-limit rules over presence-svc's two backends: the
//! in-memory one and Redis, a real `redis-server` each test starts on a free
//! loopback port with a directory of its own.

use confab_presence::hub::Windows;
use confab_presence::limits::{Acquired, Limiter, MemoryLimiter};
use confab_presence::redis_limits::RedisLimiter;
use confab_presence::PresenceService;
use confab_proto::v1 as pb;
use confab_proto::v1::presence_server::Presence as _;
use confab_tests::redis::RedisServer;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A presence-svc replica's limiter on `redis`.
fn limiter(redis: &RedisServer) -> RedisLimiter {
    let (_, connection) = confab_presence::redis_link::connect(&redis.url(), None, Duration::from_millis(500)).unwrap();
    RedisLimiter::new(connection)
}

fn granted(a: Acquired) -> u32 {
    match a {
        Acquired::Allowed { granted, .. } => granted,
        Acquired::Refused { .. } => 0,
    }
}

fn slot(a: Acquired) -> i64 {
    match a {
        Acquired::Allowed { slot_ms, .. } => slot_ms,
        Acquired::Refused { .. } => panic!("refused: {a:?}"),
    }
}

/// The rules every backend follows. `a` and `b` are two handles on one
/// backend (two replicas, for Redis).
async fn conformance(a: &dyn Limiter, b: &dyn Limiter) {
    // At most `limit` in the window, whichever handle is asked.
    for i in 0..3 {
        let l = if i % 2 == 0 { a } else { b };
        assert_eq!(granted(l.acquire("MESSAGES:u", 3, 60_000, 1).await.unwrap()), 1);
    }
    match b.acquire("MESSAGES:u", 3, 60_000, 1).await.unwrap() {
        Acquired::Refused { retry_after_ms } => assert!((1..=60_000).contains(&retry_after_ms), "{retry_after_ms}"),
        other => panic!("a fourth slot in the window: {other:?}"),
    }
    // Another key has a window of its own.
    assert_eq!(granted(a.acquire("MESSAGES:v", 3, 60_000, 1).await.unwrap()), 1);

    // A lease takes what is free; what it gives back is free again.
    assert_eq!(granted(a.acquire("EDITS:u", 10, 60_000, 4).await.unwrap()), 4);
    let second = b.acquire("EDITS:u", 10, 60_000, 8).await.unwrap();
    assert_eq!(granted(second), 6);
    assert_eq!(granted(a.acquire("EDITS:u", 10, 60_000, 8).await.unwrap()), 0);
    b.release("EDITS:u", slot(second), 3).await.unwrap();
    assert_eq!(granted(a.acquire("EDITS:u", 10, 60_000, 5).await.unwrap()), 3);
    // Giving back more than a slot time holds frees only those.
    let two = a.acquire("EDITS:w", 10, 60_000, 2).await.unwrap();
    b.release("EDITS:w", slot(two), 99).await.unwrap();
    assert_eq!(granted(a.acquire("EDITS:w", 10, 60_000, 64).await.unwrap()), 10);
    assert_eq!(granted(b.acquire("EDITS:w", 10, 60_000, 1).await.unwrap()), 0);

    // The window slides: a slot leaves it once its time is a window old.
    assert_eq!(granted(a.acquire("CHATS:u", 1, 300, 1).await.unwrap()), 1);
    assert_eq!(granted(b.acquire("CHATS:u", 1, 300, 1).await.unwrap()), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while granted(b.acquire("CHATS:u", 1, 300, 1).await.unwrap()) == 0 {
        assert!(Instant::now() < deadline, "the slot never left its 300 ms window");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Racing callers on both handles: exactly `limit` win.
    let calls = (0..40).map(|i| {
        let l = if i % 2 == 0 { a } else { b };
        l.acquire("MESSAGES:race", 10, 60_000, 1)
    });
    let won: u32 = futures::future::join_all(calls).await.into_iter().map(|r| granted(r.unwrap())).sum();
    assert_eq!(won, 10);
}

#[tokio::test]
async fn the_in_memory_backend_follows_the_rules() {
    let memory = MemoryLimiter::default();
    conformance(&memory, &memory).await;
}

#[tokio::test]
async fn the_redis_backend_follows_the_rules_across_replicas() {
    let redis = RedisServer::start().await;
    conformance(&limiter(&redis), &limiter(&redis)).await;
}

#[tokio::test]
async fn without_redis_calls_fail_fast_as_unavailable_and_recover_when_it_is_back() {
    let redis = RedisServer::start().await;
    let limiter = Arc::new(limiter(&redis));
    let state = Arc::new(confab_presence::state::MemoryState::new(Windows::default()));
    let service = PresenceService::new(state, limiter.clone());
    let request = || {
        tonic::Request::new(pb::AcquireRequest {
            key: "u".into(),
            limit: 5,
            window_ms: 60_000,
            count: 1,
            class: pb::RateClass::Messages as i32,
        })
    };
    assert!(service.acquire(request()).await.unwrap().into_inner().allowed);

    let port = redis.kill();
    let started = Instant::now();
    let refused = service.acquire(request()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    let release = pb::ReleaseRequest { key: "u".into(), slot_ms: 1, count: 1, class: pb::RateClass::Messages as i32 };
    let refused = service.release(tonic::Request::new(release)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);

    // An empty Redis on the same address: the limiter reconnects by itself.
    let _back = RedisServer::start_on(port).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match service.acquire(request()).await {
            Ok(answer) => {
                assert!(answer.into_inner().allowed);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable);
                assert!(Instant::now() < deadline, "no answer 10 s after Redis came back: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
