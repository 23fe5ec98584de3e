//! The per-user message rate limit (CONTRACT §5, §8.14, §8.22, §8.26): a
//! sliding window over all of a user's sockets, edges and HTTP sends.

use confab_tests::Cluster;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_window_across_sockets_edges_and_http() {
    let cluster = Cluster::builder()
        .edges(2)
        .edge_config(|c| {
            c.rate_limit_messages = 3;
            c.rate_limit_window_ms = 1500;
        })
        .build()
        .await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut a0 = cluster.connect(0, "alice").await;
    let mut a1 = cluster.connect(1, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_of_one_socket_keep_their_order_through_the_limiter() {
    let cluster = Cluster::builder().edge_config(|c| c.rate_limit_messages = 1000).build().await;
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

/// With a larger limit an edge leases several slots at once and spends
/// them itself; what a lease leaves unspent goes back to presence, so the
/// user's other edges get the whole limit, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_slots_left_unspent_go_back_to_the_window() {
    let cluster = Cluster::builder()
        .edges(2)
        .edge_config(|c| {
            // Leases of 2 slots, spent within 250 ms.
            c.rate_limit_messages = 16;
            c.rate_limit_window_ms = 5000;
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
