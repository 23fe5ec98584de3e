//! The per-user message rate limit (CONTRACT §5, §8.14, §8.22, §8.26): a
//! sliding window over all of a user's sockets, edges and HTTP sends. Each
//! test runs on the in-memory presence-svc and on two replicas over Redis.

use confab_tests::client::Client;
use confab_tests::redis::RedisServer;
use confab_tests::{on_both_backends, Cluster, ClusterBuilder};
use serde_json::json;
use std::time::Duration;

on_both_backends!(
    a_sliding_window_across_sockets_edges_and_http,
    a_sliding_window_across_sockets_edges_and_http_on_redis,
    sliding_window
);
async fn sliding_window(redis: Option<&RedisServer>) {
    let (cluster, chat, mut a0, mut a1, mut bob) =
        alice_on_both_edges(Cluster::builder().presence_on(redis), 1500).await;
    let send = |id: &str| json!({ "chatId": chat, "body": "x", "clientId": id });
    for i in 0..3 {
        let c = if i == 1 { &mut a1 } else { &mut a0 };
        let ack = c.call("message:send", send(&format!("m{i}"))).await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let limited = a1.call("message:send", send("m3")).await;
    assert_eq!(limited["error"], "RATE_LIMITED", "{limited}");
    let retry = limited["data"]["retryAfterMs"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 1500, "{limited}");
    assert!(limited["correlationId"].as_str().is_some());
    // HTTP sends share the limit: 429 with Retry-After in whole seconds.
    let res = reqwest::Client::new()
        .post(format!("{}/v1/chats/{chat}/messages", cluster.edge(0)))
        .bearer_auth(cluster.token("alice"))
        .json(&json!({ "body": "x", "clientId": "h1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "2");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "RATE_LIMITED");
    assert!(body["data"]["retryAfterMs"].as_u64().is_some());
    // A repeated clientId is answered with the stored message even now.
    let repeat = a1.call("message:send", send("m1")).await;
    assert_eq!((repeat["ok"].as_bool(), repeat["data"]["seq"].as_u64()), (Some(true), Some(2)), "{repeat}");
    // Another user is not affected.
    let ack = bob.call("message:send", send("b0")).await;
    assert_eq!(ack["ok"], true, "{ack}");
    // Nothing refused was stored: alice has 3 messages, bob 1.
    let h = bob.call("message:history", json!({ "chatId": chat })).await;
    assert_eq!(h["data"]["messages"].as_array().unwrap().len(), 4);

    // Once the window slides, alice may send again; repeats don't count.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    for _ in 0..3 {
        let ack = a0.call("message:send", send("m0")).await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    for i in 10..13 {
        let ack = a0.call("message:send", send(&format!("m{i}"))).await;
        assert_eq!(ack["ok"], true, "repeats must not have used the window: {ack}");
    }
    let ack = a0.call("message:send", send("m13")).await;
    assert_eq!(ack["error"], "RATE_LIMITED", "{ack}");
}

on_both_backends!(
    sends_of_one_socket_keep_their_order_through_the_limiter,
    sends_of_one_socket_keep_their_order_through_the_limiter_on_redis,
    order_kept
);
async fn order_kept(redis: Option<&RedisServer>) {
    let cluster = Cluster::builder().presence_on(redis).edge_config(|c| c.rate_limits.messages = 1000).build().await;
    let chat = cluster.create_chat("alice", "group", &[]).await;
    let mut alice = cluster.connect(0, "alice").await;
    // Fire 50 sends without waiting, then collect the acks.
    for i in 0..50 {
        alice
            .emit_with_ack_id(
                1000 + i,
                "message:send",
                json!({ "chatId": chat, "body": i.to_string(), "clientId": i.to_string() }),
            )
            .await;
    }
    let got = alice.collect("message:new", Duration::from_millis(1500)).await;
    let bodies: Vec<u64> = got.iter().map(|m| m["body"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(bodies, (0..50).collect::<Vec<_>>(), "seqs follow the order the socket sent in");
}

on_both_backends!(
    leased_slots_left_unspent_go_back_to_the_window,
    leased_slots_left_unspent_go_back_to_the_window_on_redis,
    unspent_slots
);
/// With a larger limit an edge leases several slots at once and spends
/// them itself; what a lease leaves unspent goes back to presence, so the
/// user's other edges get the whole limit, and no more.
async fn unspent_slots(redis: Option<&RedisServer>) {
    let cluster = Cluster::builder()
        .presence_on(redis)
        .edges(2)
        .edge_config(|c| {
            // Leases of 2 slots, spent within 250 ms.
            c.rate_limits.messages = 16;
            c.rate_limits.window_ms = 5000;
        })
        .build()
        .await;
    let chat = cluster.create_chat("alice", "group", &[]).await;
    let mut a0 = cluster.connect(0, "alice").await;
    let mut a1 = cluster.connect(1, "alice").await;
    let send = |id: String| json!({ "chatId": chat, "body": "x", "clientId": id });
    let ack = a0.call("message:send", send("first".into())).await;
    assert_eq!(ack["ok"], true, "{ack}");
    // The second slot of edge 0's lease expires unspent and is given back.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for i in 0..15 {
        let ack = a1.call("message:send", send(format!("m{i}"))).await;
        assert_eq!(ack["ok"], true, "send {i} of 15 after the first: {ack}");
    }
    let limited = a1.call("message:send", send("over".into())).await;
    assert_eq!(limited["error"], "RATE_LIMITED", "{limited}");
    let limited = a0.call("message:send", send("over0".into())).await;
    assert_eq!(limited["error"], "RATE_LIMITED", "{limited}");
}

/// Checks a RATE_LIMITED ack: `data.retryAfterMs` within the window.
fn rate_limited(ack: &serde_json::Value, window_ms: u64) {
    confab_tests::error(ack, "RATE_LIMITED");
    let retry = ack["data"]["retryAfterMs"].as_u64().unwrap_or(0);
    assert!(retry > 0 && retry <= window_ms, "retryAfterMs out of the window: {ack}");
}

on_both_backends!(
    edits_deletes_and_reactions_share_a_limit_of_their_own,
    edits_deletes_and_reactions_share_a_limit_of_their_own_on_redis,
    edits_class
);
/// Edits, deletes and reactions share one window per user over every edge;
/// a refused one broadcasts nothing, and neither sends nor other users
/// spend it.
async fn edits_class(redis: Option<&RedisServer>) {
    let cluster = Cluster::builder()
        .presence_on(redis)
        .edges(2)
        .edge_config(|c| {
            c.rate_limits.edits = 3;
            c.rate_limits.edits_window_ms = 60_000;
        })
        .build()
        .await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut a0 = cluster.connect(0, "alice").await;
    let mut a1 = cluster.connect(1, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    let send = |id: &str| json!({ "chatId": chat, "body": "x", "clientId": id });
    let sent = a0.call("message:send", send("m0")).await;
    let id = confab_tests::data(&sent)["serverId"].as_str().unwrap().to_string();
    let edit = json!({ "chatId": chat, "messageId": id, "body": "edited" });
    confab_tests::data(&a0.call("message:edit", edit.clone()).await);
    confab_tests::data(&a1.call("reaction:add", json!({ "chatId": chat, "messageId": id, "emoji": "👍" })).await);
    confab_tests::data(&a0.call("message:edit", edit.clone()).await);
    // The window is full, on either edge, for each kind of the class.
    for _ in 0..20 {
        rate_limited(&a1.call("message:edit", edit.clone()).await, 60_000);
    }
    rate_limited(&a0.call("message:delete", json!({ "chatId": chat, "messageId": id })).await, 60_000);
    let react = json!({ "chatId": chat, "messageId": id, "emoji": "🎉" });
    rate_limited(&a0.call("reaction:add", react).await, 60_000);
    // Sends have their own window; another user has their own.
    confab_tests::data(&a1.call("message:send", send("m1")).await);
    let mine = confab_tests::data(&bob.call("message:send", send("b0")).await)["serverId"].clone();
    let bob_edit = json!({ "chatId": chat, "messageId": mine, "body": "bob's edit" });
    confab_tests::data(&bob.call("message:edit", bob_edit).await);
    // Only the three allowed changes reached the chat.
    let updated = bob.collect("message:updated", Duration::from_millis(300)).await;
    assert_eq!(updated.iter().filter(|u| u["messageId"] == id.as_str()).count(), 2, "{updated:?}");
    let h = bob.call("message:history", json!({ "chatId": chat })).await;
    let first = &confab_tests::data(&h)["messages"][0];
    assert_eq!((first["deleted"].as_bool(), first["body"].as_str()), (None, Some("edited")), "{first}");
    assert_eq!(first["reactions"], json!({ "👍": 1 }));
}

on_both_backends!(
    chat_creation_and_changes_are_limited_with_429,
    chat_creation_and_changes_are_limited_with_429_on_redis,
    chats_class
);
/// Chat creation and changes to a chat share a window per user: over HTTP
/// 429 with `Retry-After` and `data.retryAfterMs`; another user is not
/// affected.
async fn chats_class(redis: Option<&RedisServer>) {
    let cluster = Cluster::builder()
        .presence_on(redis)
        .edge_config(|c| {
            c.rate_limits.chats = 2;
            c.rate_limits.chats_window_ms = 60_000;
        })
        .build()
        .await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let (status, body) = cluster
        .http(reqwest::Method::PATCH, &format!("/v1/chats/{chat}"), "alice", Some(json!({ "title": "renamed" })))
        .await;
    assert_eq!(status, 200, "{body}");
    let create = json!({ "type": "group", "memberIds": ["carol"] });
    let res = reqwest::Client::new()
        .post(format!("{}/v1/chats", cluster.edge(0)))
        .bearer_auth(cluster.token("alice"))
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After: {retry_after}");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "RATE_LIMITED", "{body}");
    assert!(body["data"]["retryAfterMs"].as_u64().is_some_and(|ms| ms > 0 && ms <= 60_000), "{body}");
    // Every change of a chat is in the same window, and refused ones change nothing.
    let members = json!({ "userIds": ["carol"] });
    let (status, body) =
        cluster.http(reqwest::Method::POST, &format!("/v1/chats/{chat}/members"), "alice", Some(members)).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("RATE_LIMITED")), "{body}");
    let role = json!({ "role": "admin" });
    let (status, _) =
        cluster.http(reqwest::Method::PATCH, &format!("/v1/chats/{chat}/members/bob"), "alice", Some(role)).await;
    assert_eq!(status, 429);
    let (status, _) =
        cluster.http(reqwest::Method::DELETE, &format!("/v1/chats/{chat}/members/bob"), "alice", None).await;
    assert_eq!(status, 429);
    let (_, now) = cluster.http(reqwest::Method::GET, &format!("/v1/chats/{chat}"), "bob", None).await;
    assert_eq!(now["memberIds"], json!(["alice", "bob"]), "{now}");
    assert_eq!(now["adminIds"], json!(["alice"]), "{now}");
    // Another user is not affected.
    let (status, body) = cluster.http(reqwest::Method::POST, "/v1/chats", "bob", Some(create)).await;
    assert_eq!(status, 201, "{body}");
}

on_both_backends!(read_receipts_are_limited, read_receipts_are_limited_on_redis, receipts_class);
/// Read receipts (each one broadcast to the chat) have a window too.
async fn receipts_class(redis: Option<&RedisServer>) {
    let cluster = Cluster::builder()
        .presence_on(redis)
        .edge_config(|c| {
            c.rate_limits.receipts = 2;
            c.rate_limits.receipts_window_ms = 60_000;
        })
        .build()
        .await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(0, "bob").await;
    for i in 0..3 {
        confab_tests::data(
            &alice.call("message:send", json!({ "chatId": chat, "body": "x", "clientId": i.to_string() })).await,
        );
    }
    for seq in 1..=2 {
        confab_tests::data(&bob.call("receipt:read", json!({ "chatId": chat, "seq": seq })).await);
    }
    rate_limited(&bob.call("receipt:read", json!({ "chatId": chat, "seq": 3 })).await, 60_000);
    let h = alice.call("message:history", json!({ "chatId": chat })).await;
    assert_eq!(confab_tests::data(&h)["messages"].as_array().map(Vec::len), Some(3));
}

/// Two presence-svc replicas on one Redis, each edge on its own replica:
/// the limit holds across them; with Redis gone writes are let through
/// (messaging goes on), and the limit is back once an empty Redis is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_replicas_on_redis_share_the_limit_and_fail_open_without_it() {
    let redis = RedisServer::start().await;
    let builder = Cluster::builder().presence_on(Some(&redis)).presence_config(|c| c.redis_timeout_ms = 300);
    let (_cluster, chat, mut a0, mut a1, mut bob) = alice_on_both_edges(builder, 60_000).await;
    let mut n = 0;
    for i in 0..3 {
        let ack = if i % 2 == 0 { send(&mut a0, &chat, &mut n).await } else { send(&mut a1, &chat, &mut n).await };
        assert_eq!(ack["ok"], true, "{ack}");
    }
    for ack in [send(&mut a0, &chat, &mut n).await, send(&mut a1, &chat, &mut n).await] {
        assert_eq!(ack["error"], "RATE_LIMITED", "{ack}");
    }
    let ack = send(&mut bob, &chat, &mut n).await;
    assert_eq!(ack["ok"], true, "{ack}");

    let port = redis.kill();
    for _ in 0..4 {
        let ack = send(&mut a1, &chat, &mut n).await;
        assert_eq!(ack["ok"], true, "without Redis a write is let through: {ack}");
    }

    let _back = RedisServer::start_on(port).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut allowed = 0;
    loop {
        let ack = send(&mut a0, &chat, &mut n).await;
        if ack["error"] == "RATE_LIMITED" {
            break;
        }
        assert_eq!(ack["ok"], true, "{ack}");
        allowed += 1;
        assert!(std::time::Instant::now() < deadline, "no limit 15 s after Redis came back ({allowed} let through)");
    }
}

/// Two edges with a limit of 3 messages per `window_ms`, a chat of alice's
/// with bob, alice on both edges and bob on the second.
async fn alice_on_both_edges(builder: ClusterBuilder, window_ms: u64) -> (Cluster, String, Client, Client, Client) {
    let cluster = builder
        .edges(2)
        .edge_config(move |c| {
            c.rate_limits.messages = 3;
            c.rate_limits.window_ms = window_ms;
        })
        .build()
        .await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let a0 = cluster.connect(0, "alice").await;
    let a1 = cluster.connect(1, "alice").await;
    let bob = cluster.connect(1, "bob").await;
    (cluster, chat, a0, a1, bob)
}

/// Sends a new message (a fresh clientId each time).
async fn send(c: &mut Client, chat: &str, n: &mut u32) -> serde_json::Value {
    *n += 1;
    c.call("message:send", json!({ "chatId": chat, "body": "x", "clientId": format!("m{n}") })).await
}
