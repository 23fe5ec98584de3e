//! Presence (CONTRACT §5, §8.11, §8.20, §8.23, §8.28) with short windows:
//! online while any socket is connected on any edge, offline after the
//! grace window, statuses, throttling, visibility and edge leases.

use confab_proto::v1::{
    presence_client::PresenceClient, GetPresenceRequest, HeartbeatRequest, SessionBatch, SessionChange, SessionRequest,
};
use confab_tests::data;
use confab_tests::redis::RedisServer;
use confab_tests::{on_both_backends, Cluster};
use serde_json::json;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(5);
const GRACE_MS: i64 = 400;
const INTERVAL_MS: i64 = 300;

async fn cluster() -> Cluster {
    cluster_on(None).await
}

/// Two edges; with `redis`, two presence-svc replicas on it (edge `i` on
/// replica `i`), subscribed to each other's updates before it returns.
async fn cluster_on(redis: Option<&RedisServer>) -> Cluster {
    let cluster = Cluster::builder()
        .edges(2)
        .presence_on(redis)
        .presence_config(move |c| {
            c.offline_grace_ms = GRACE_MS;
            c.update_interval_ms = INTERVAL_MS;
            c.lease_ms = 600;
            c.tick_ms = 20;
        })
        .edge_config(|c| c.presence_heartbeat_ms = 100)
        .build()
        .await;
    if let Some(redis) = redis {
        redis.wait_for_subscribers("confab:p:updates", 2).await;
    }
    cluster
}

on_both_backends!(
    online_on_any_edge_and_offline_after_the_grace_window,
    online_and_offline_on_redis,
    online_and_offline
);

async fn online_and_offline(redis: Option<&RedisServer>) {
    let cluster = cluster_on(redis).await;
    cluster.create_chat("alice", "group", &["bob"]).await;
    let mut bob = cluster.connect(0, "bob").await;
    let snap = bob.call("presence:subscribe", json!({ "userIds": ["alice"] })).await;
    assert_eq!(data(&snap)["presence"], json!([{ "userId": "alice", "status": "offline", "lastSeenAt": null }]));

    let a1 = cluster.connect(1, "alice").await;
    let up = bob.expect_event("presence:update", T).await;
    assert_eq!((up["userId"].as_str(), up["status"].as_str()), (Some("alice"), Some("online")));
    assert!(up["timestamp"].as_str().is_some() && up["lastSeenAt"].as_str().is_some());

    // A second socket, then a quick reconnect: nothing is broadcast.
    let a2 = cluster.connect(0, "alice").await;
    a1.disconnect().await;
    a2.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a3 = cluster.connect(1, "alice").await;
    assert!(bob.next_event("presence:update", Duration::from_millis(GRACE_MS as u64 + 300)).await.is_none());

    let closed = Instant::now();
    a3.disconnect().await;
    let off = bob.expect_event("presence:update", T).await;
    assert!(
        closed.elapsed() >= Duration::from_millis(GRACE_MS as u64 - 50),
        "offline came before the grace window ended"
    );
    assert_eq!(off["status"], "offline");
    assert_eq!(off["timestamp"], off["lastSeenAt"], "offline began when the last socket closed");
    let snap = bob.call("presence:subscribe", json!({ "userIds": ["alice"] })).await;
    assert_eq!(data(&snap)["presence"][0]["lastSeenAt"], off["lastSeenAt"]);
}

/// The same on two replicas over TLS to a Redis that wants a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_and_offline_on_redis_over_tls() {
    let redis = RedisServer::start_secured().await;
    online_and_offline(Some(&redis)).await;
}

on_both_backends!(statuses_invisible_and_throttling, statuses_invisible_and_throttling_on_redis, statuses);

async fn statuses(redis: Option<&RedisServer>) {
    let cluster = cluster_on(redis).await;
    cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    data(&bob.call("presence:subscribe", json!({ "userIds": ["alice"] })).await);
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS as u64 + 50)).await;
    assert_eq!(data(&alice.call("presence:set", json!({ "status": "away" })).await), &json!({ "status": "away" }));
    assert_eq!(bob.expect_event("presence:update", T).await["status"], "away");
    // A burst of changes: at most one update per interval, and the last one arrives.
    let burst = Instant::now();
    for s in ["busy", "online", "away", "busy"] {
        data(&alice.call("presence:set", json!({ "status": s })).await);
    }
    let got = bob.collect("presence:update", Duration::from_millis(INTERVAL_MS as u64 * 3)).await;
    assert_eq!(got.last().unwrap()["status"], "busy", "{got:?}");
    assert!(got.len() <= 2, "throttled to one per interval: {got:?}");
    assert!(burst.elapsed() >= Duration::from_millis(INTERVAL_MS as u64));
    // Invisible shows as offline to others, and as set to the user.
    data(&alice.call("presence:set", json!({ "status": "invisible" })).await);
    assert_eq!(bob.expect_event("presence:update", T).await["status"], "offline");
    let mine = alice.call("presence:subscribe", json!({ "userIds": ["alice"] })).await;
    assert_eq!(data(&mine)["presence"][0]["status"], "invisible");
    let theirs = bob.call("presence:subscribe", json!({ "userIds": ["alice"] })).await;
    assert_eq!(data(&theirs)["presence"][0]["status"], "offline");
    let (_, http) = cluster.http(reqwest::Method::GET, "/v1/users/alice/presence", "bob", None).await;
    assert_eq!(http["status"], "offline");
    // Bad statuses.
    for bad in [json!({ "status": "gone" }), json!({ "status": 1 }), json!({})] {
        assert_eq!(alice.call("presence:set", bad).await["error"], "VALIDATION_ERROR");
    }
}

on_both_backends!(
    only_users_sharing_a_chat_are_visible,
    only_users_sharing_a_chat_are_visible_on_redis,
    only_users_sharing_a_chat_are_visible_in
);

async fn only_users_sharing_a_chat_are_visible_in(redis: Option<&RedisServer>) {
    let cluster = cluster_on(redis).await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let _alice = cluster.connect(0, "alice").await;
    let mut mallory = cluster.connect(1, "mallory").await;
    let mut bob = cluster.connect(1, "bob").await;
    let snap = mallory.call("presence:subscribe", json!({ "userIds": ["alice", "nobody", "alice"] })).await;
    let hidden = json!({ "userId": "alice", "status": "offline", "lastSeenAt": null });
    assert_eq!(
        data(&snap)["presence"],
        json!([hidden, { "userId": "nobody", "status": "offline", "lastSeenAt": null }, hidden])
    );
    let (status, body) = cluster.http(reqwest::Method::GET, "/v1/users/alice/presence", "mallory", None).await;
    assert_eq!((status, body), (200, hidden.clone()));
    let (_, body) = cluster.http(reqwest::Method::GET, "/v1/users/alice/presence", "bob", None).await;
    assert_eq!(body["status"], "online");
    assert!(body["lastSeenAt"].as_str().is_some());
    // room:members: members only, with each member's status.
    let members = bob.call("room:members", json!({ "chatId": chat })).await;
    let list = data(&members)["members"].as_array().unwrap().clone();
    let alice = list.iter().find(|m| m["userId"] == "alice").unwrap();
    assert_eq!((alice["role"].as_str(), alice["status"].as_str()), (Some("admin"), Some("online")));
    assert_eq!(list.iter().find(|m| m["userId"] == "bob").unwrap()["role"], "member");
    assert_eq!(mallory.call("room:members", json!({ "chatId": chat })).await["error"], "FORBIDDEN");
    // Limits and shapes.
    let many: Vec<String> = (0..501).map(|i| format!("u{i}")).collect();
    assert_eq!(bob.call("presence:subscribe", json!({ "userIds": many })).await["error"], "VALIDATION_ERROR");
    assert_eq!(bob.call("presence:subscribe", json!({ "userIds": "alice" })).await["error"], "VALIDATION_ERROR");
    assert_eq!(data(&bob.call("presence:unsubscribe", json!({ "userIds": ["alice"] })).await), &json!({}));
    let ping = bob.call("presence:ping", json!({})).await;
    assert!(data(&ping)["serverTime"].as_str().is_some_and(|t| t.ends_with('Z')));
}

on_both_backends!(
    an_edge_that_stops_reporting_takes_its_users_offline,
    an_edge_that_stops_reporting_takes_its_users_offline_on_redis,
    an_edge_that_stops_reporting_takes_its_users_offline_in
);

async fn an_edge_that_stops_reporting_takes_its_users_offline_in(redis: Option<&RedisServer>) {
    let cluster = cluster_on(redis).await;
    cluster.create_chat("ghost", "group", &["bob"]).await;
    let mut bob = cluster.connect(0, "bob").await;
    data(&bob.call("presence:subscribe", json!({ "userIds": ["ghost"] })).await);
    // A fake edge opens a session over gRPC and then falls silent.
    let mut p = PresenceClient::connect(cluster.presence_url.clone()).await.unwrap();
    let req = SessionRequest { user_id: "ghost".into(), edge_id: "edge-that-dies".into(), session_id: "s1".into() };
    p.sessions(SessionBatch { changes: vec![SessionChange { session: Some(req), open: true }] }).await.unwrap();
    assert_eq!(bob.expect_event("presence:update", T).await["status"], "online");
    let silent = Instant::now();
    let off = bob.expect_event("presence:update", T).await;
    assert_eq!(off["status"], "offline");
    assert!(silent.elapsed() >= Duration::from_millis(500), "offline before the lease lapsed");
}

on_both_backends!(
    leaving_the_last_shared_chat_ends_the_subscription,
    leaving_the_last_shared_chat_ends_the_subscription_on_redis,
    leaving_the_last_shared_chat_ends_the_subscription_in
);

async fn leaving_the_last_shared_chat_ends_the_subscription_in(redis: Option<&RedisServer>) {
    let cluster = cluster_on(redis).await;
    let first = cluster.create_chat("alice", "group", &["bob", "carol"]).await;
    let second = cluster.create_chat("alice", "group", &["carol"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    let mut carol = cluster.connect(1, "carol").await;
    for c in [&mut bob, &mut carol] {
        data(&c.call("presence:subscribe", json!({ "userIds": ["alice"] })).await);
    }
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS as u64 + 50)).await;
    // alice removes bob and carol from the first chat; carol still shares the second.
    for user in ["bob", "carol"] {
        let (status, _) =
            cluster.http(reqwest::Method::DELETE, &format!("/v1/chats/{first}/members/{user}"), "alice", None).await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    data(&alice.call("presence:set", json!({ "status": "away" })).await);
    assert_eq!(carol.expect_event("presence:update", T).await["status"], "away");
    assert!(bob.next_event("presence:update", Duration::from_millis(INTERVAL_MS as u64 * 2)).await.is_none());
    let _ = second;
}

on_both_backends!(
    batched_session_changes_apply_in_order_and_a_bad_batch_changes_nothing,
    batched_session_changes_apply_in_order_on_redis,
    batched_session_changes_apply_in_order_and_a_bad_batch_changes_nothing_in
);

async fn batched_session_changes_apply_in_order_and_a_bad_batch_changes_nothing_in(redis: Option<&RedisServer>) {
    let cluster = cluster_on(redis).await;
    let mut p = PresenceClient::connect(cluster.presence_url.clone()).await.unwrap();
    let change = |user: &str, session: &str, open: bool| SessionChange {
        session: Some(SessionRequest { user_id: user.into(), edge_id: "edge-b".into(), session_id: session.into() }),
        open,
    };
    // ghost opens and closes in one batch: offline after the grace window;
    // applied the other way round it would stay online.
    let batch = vec![change("ghost", "s1", true), change("spirit", "s2", true), change("ghost", "s1", false)];
    p.sessions(SessionBatch { changes: batch }).await.unwrap();
    let reader = p.clone();
    let get = |user: &'static str| {
        let mut p = reader.clone();
        async move { p.get(GetPresenceRequest { user_id: user.into() }).await.unwrap().into_inner() }
    };
    assert_eq!(get("spirit").await.status, "online");
    // edge-b keeps its lease, so only the close can take ghost offline.
    for _ in 0..(GRACE_MS + 300) / 100 {
        p.heartbeat(HeartbeatRequest { edge_id: "edge-b".into() }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get("ghost").await.status, "offline");
    assert!(get("ghost").await.last_seen_ms.is_some());
    assert_eq!(get("spirit").await.status, "online");
    // One malformed change refuses the whole batch, and nothing in it applies.
    let mut bad = change("phantom", "s3", true);
    let broken = SessionChange {
        session: Some(SessionRequest { session_id: String::new(), ..bad.session.clone().unwrap() }),
        open: true,
    };
    bad.open = true;
    let refused = p.sessions(SessionBatch { changes: vec![bad, broken] }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let phantom = get("phantom").await;
    assert_eq!((phantom.status.as_str(), phantom.last_seen_ms), ("offline", None));
}

/// presence-svc restarts on the same address and knows no one: the edges
/// announce their live sessions again, so a user who stayed connected shows
/// online again within seconds, without reconnecting, to a watcher on
/// another edge who stayed connected too; a user who left while it was
/// down is shown offline; and later changes still reach the watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sessions_are_announced_again_after_presence_svc_restarts() {
    let cluster = cluster().await;
    cluster.create_chat("alice", "group", &["bob", "carol"]).await;
    let alice = cluster.connect(1, "alice").await;
    let carol = cluster.connect(1, "carol").await;
    let mut bob = cluster.connect(0, "bob").await;
    let snap = bob.call("presence:subscribe", json!({ "userIds": ["alice", "carol"] })).await;
    let shown: Vec<&str> =
        data(&snap)["presence"].as_array().unwrap().iter().map(|p| p["status"].as_str().unwrap()).collect();
    assert_eq!(shown, ["online", "online"]);

    cluster.stop_presence().await;
    carol.disconnect().await;
    cluster.start_presence().await;
    let status = |user: &'static str| {
        let cluster = &cluster;
        async move {
            let path = format!("/v1/users/{user}/presence");
            let (code, body) = cluster.http(reqwest::Method::GET, &path, "bob", None).await;
            (code == 200).then(|| body["status"].as_str().unwrap_or_default().to_string())
        }
    };
    confab_tests::wait_until(T, || async { status("alice").await.as_deref() == Some("online") })
        .await
        .expect("alice never showed online again after presence-svc restarted");
    // Bob was told carol left, though her close never reached presence-svc.
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let update = bob.next_event("presence:update", left).await.expect("carol was never shown offline");
        if update["userId"] == "carol" {
            assert_eq!(update["status"], "offline", "{update}");
            break;
        }
    }
    // Bob's watch came back too: alice's disconnect reaches him.
    alice.disconnect().await;
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let update = bob.next_event("presence:update", left).await.expect("alice was never shown offline");
        if update["userId"] == "alice" && update["status"] == "offline" {
            break;
        }
        assert_eq!(update["status"], "online", "only repeats of what bob was shown may come first: {update}");
    }
}

/// Two replicas on Redis, each edge listing both: when the replica an edge
/// uses dies, the edge moves to the other, re-announces its sessions, and
/// presence goes on whole (no one shown offline, changes still delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_moves_to_another_replica_when_its_own_dies() {
    let redis = RedisServer::start().await;
    let cluster = cluster_on(Some(&redis)).await;
    cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    let snap = bob.call("presence:subscribe", json!({ "userIds": ["alice"] })).await;
    assert_eq!(data(&snap)["presence"][0]["status"], "online");

    // Edge 0's replica goes away (edge 1 was on the other one all along).
    cluster.stop_presence().await;
    // Alice's change reaches bob once edge 0 uses the other replica; a call
    // that went to the dead one first fails as UNAVAILABLE.
    let deadline = Instant::now() + T;
    loop {
        let ack = alice.call("presence:set", json!({ "status": "away" })).await;
        if ack["ok"] == true {
            break;
        }
        assert_eq!(ack["error"], "UNAVAILABLE", "{ack}");
        assert!(Instant::now() < deadline, "presence:set never succeeded after the replica died");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut last = None;
    while let Some(update) = bob.next_event("presence:update", T).await {
        assert_ne!(update["status"], "offline", "alice shown offline: {update}");
        if update["status"] == "away" {
            last = Some(update);
            break;
        }
    }
    assert!(last.is_some(), "bob never saw alice away");
    // Past the grace window and the edge lease: still away, not offline.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let snap = bob.call("presence:subscribe", json!({ "userIds": ["alice"] })).await;
    assert_eq!(data(&snap)["presence"][0]["status"], "away", "{snap}");
}

/// Redis dies under the cluster: presence calls fail as UNAVAILABLE at
/// once while messages still flow; an empty Redis comes back and the edges
/// re-announce their sessions, so presence is whole again within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_whole_again_after_redis_comes_back_empty() {
    let redis = RedisServer::start().await;
    let cluster = cluster_on(Some(&redis)).await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    let snap = bob.call("presence:subscribe", json!({ "userIds": ["alice"] })).await;
    assert_eq!(data(&snap)["presence"][0]["status"], "online");

    let port = redis.kill();
    let started = Instant::now();
    let ack = alice.call("presence:set", json!({ "status": "busy" })).await;
    assert_eq!(ack["error"], "UNAVAILABLE", "{ack}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    let sent = alice.call("message:send", json!({ "chatId": chat, "body": "still here", "clientId": "r1" })).await;
    assert_eq!(sent["ok"], true, "messaging goes on without Redis: {sent}");

    let _back = RedisServer::start_on(port).await;
    let back = Instant::now();
    let deadline = back + Duration::from_secs(10);
    loop {
        let snap = bob.call("presence:subscribe", json!({ "userIds": ["alice"] })).await;
        if snap["ok"] == true && data(&snap)["presence"][0]["status"] == "online" {
            break;
        }
        assert!(Instant::now() < deadline, "alice not online 10 s after Redis came back: {snap}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("presence whole again {:?} after Redis came back", back.elapsed());
}

/// Edges find presence-svc by DNS (`dns:NAME:PORT`, as with a headless
/// Service): `localhost` names the replica, and presence works as listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_find_presence_replicas_by_dns() {
    let cluster = Cluster::builder()
        .edges(2)
        .edge_config(|c| {
            let port = c.presence_url.rsplit(':').next().unwrap_or_default().to_string();
            c.presence_url = format!("dns:localhost:{port}");
        })
        .build()
        .await;
    cluster.create_chat("alice", "group", &["bob"]).await;
    let mut bob = cluster.connect(0, "bob").await;
    data(&bob.call("presence:subscribe", json!({ "userIds": ["alice"] })).await);
    let _alice = cluster.connect(1, "alice").await;
    let up = bob.expect_event("presence:update", T).await;
    assert_eq!((up["userId"].as_str(), up["status"].as_str()), (Some("alice"), Some("online")));
}

/// Under load (an edge holds 50 users and one of them sends without pause)
/// a replica dies, then Redis: every send is answered throughout; once the
/// edge has moved to the other replica all 50 are still online to a
/// watcher on the other edge; without Redis presence fails fast as
/// UNAVAILABLE; and once an empty Redis is back the 50 are online again
/// within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_then_redis_die_under_load_and_presence_comes_back_whole() {
    let redis = RedisServer::start().await;
    let cluster = cluster_on(Some(&redis)).await;
    let users: Vec<String> = (0..50).map(|i| format!("user{i}")).collect();
    let members: Vec<&str> = users.iter().map(String::as_str).chain(["bob"]).collect();
    let chat = cluster.create_chat("owner", "group", &members).await;
    let mut sockets = Vec::new();
    for u in &users {
        sockets.push(cluster.connect(0, u).await);
    }
    let mut bob = cluster.connect(1, "bob").await;
    let online = |snap: &serde_json::Value| {
        data(snap)["presence"].as_array().unwrap().iter().filter(|p| p["status"] == "online").count()
    };
    let snap = bob.call("presence:subscribe", json!({ "userIds": users })).await;
    assert_eq!(online(&snap), 50, "{snap}");

    let mut sender = sockets.pop().unwrap();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let chat_id = chat.clone();
    let sends = tokio::spawn(async move {
        let mut acked = 0;
        while !*stopped.borrow_and_update() {
            let ack = sender
                .call("message:send", json!({ "chatId": chat_id, "body": "x", "clientId": format!("l{acked}") }))
                .await;
            assert_eq!(ack["ok"], true, "send {acked} during the failures: {ack}");
            acked += 1;
        }
        acked
    });

    cluster.stop_presence().await;
    // Past a grace window and an edge lease on the surviving replica.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let snap = bob.call("presence:subscribe", json!({ "userIds": users })).await;
    assert_eq!(online(&snap), 50, "{snap}");

    let port = redis.kill();
    let started = Instant::now();
    let snap = bob.call("presence:subscribe", json!({ "userIds": users })).await;
    assert_eq!(snap["error"], "UNAVAILABLE", "{snap}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());

    let _back = RedisServer::start_on(port).await;
    let back = Instant::now();
    loop {
        let snap = bob.call("presence:subscribe", json!({ "userIds": users })).await;
        if snap["ok"] == true && online(&snap) == 50 {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(10), "not all 50 online 10 s after Redis came back: {snap}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("50 users online again {:?} after Redis came back", back.elapsed());
    stop.send(true).unwrap();
    let acked = sends.await.unwrap();
    assert!(acked > 0, "no send was answered");
    eprintln!("{acked} sends answered through both failures");
}
