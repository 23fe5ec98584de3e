//! Bad input (CONTRACT §3): every malformed payload gets the contract's
//! error or ends only its own connection; nothing panics and nobody else
//! is affected.

use confab_tests::error;
use confab_tests::Cluster;
use serde_json::{json, Value};
use std::time::Duration;

/// After each abuse, a bystander on the same edge still chats.
async fn bystander_still_works(cluster: &Cluster, chat: &str, n: u64) {
    let mut bob = cluster.connect(0, "bob").await;
    let ack =
        bob.call("message:send", json!({ "chatId": chat, "body": "still here", "clientId": format!("ok-{n}") })).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["data"]["seq"], n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_shapes_get_validation_errors() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let long_id = "x".repeat(65);
    let cases = [
        ("message:send", json!(null)),
        ("message:send", json!("a string")),
        ("message:send", json!([1, 2])),
        ("message:send", json!({})),
        ("message:send", json!({ "chatId": chat, "clientId": "c" })),
        ("message:send", json!({ "chatId": chat, "body": "x" })),
        ("message:send", json!({ "chatId": 7, "body": "x", "clientId": "c" })),
        ("message:send", json!({ "chatId": chat, "body": 5, "clientId": "c" })),
        ("message:send", json!({ "chatId": chat, "body": "", "clientId": "c" })),
        ("message:send", json!({ "chatId": chat, "body": " \n\t\u{3000}", "clientId": "c" })),
        ("message:send", json!({ "chatId": chat, "body": "x".repeat(8001), "clientId": "c" })),
        ("message:send", json!({ "chatId": chat, "body": "x", "clientId": "" })),
        ("message:send", json!({ "chatId": chat, "body": "x", "clientId": long_id })),
        ("message:send", json!({ "chatId": chat, "body": "x", "clientId": "c", "replyTo": 3 })),
        ("room:join", json!({})),
        ("room:join", json!({ "chatId": chat, "sinceSeq": "10" })),
        ("room:join", json!({ "chatId": chat, "sinceSeq": -1 })),
        ("room:join", json!({ "chatId": chat, "sinceSeq": 1.5 })),
        ("room:leave", json!({})),
        ("room:leave", json!({ "chatId": false })),
        ("message:history", json!({ "chatId": chat, "beforeSeq": "3" })),
        ("no:such:event", json!({})),
    ];
    for (event, payload) in cases {
        let ack = alice.call(event, payload.clone()).await;
        error(&ack, "VALIDATION_ERROR");
        assert!(ack["message"].as_str().is_some_and(|m| !m.is_empty()), "{event} {payload}: {ack}");
    }
    // 8000 characters (not bytes) is fine; unknown fields are ignored.
    let ack = alice
        .call("message:send", json!({ "chatId": chat, "body": "é".repeat(8000), "clientId": "c", "extra": { "x": 1 } }))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    // HTML is stored verbatim.
    let ack = alice.call("message:send", json!({ "chatId": chat, "body": "<b>&amp;</b>", "clientId": "html" })).await;
    assert_eq!(ack["ok"], true);
    let h = alice.call("message:history", json!({ "chatId": chat, "afterSeq": 1 })).await;
    assert_eq!(h["data"]["messages"][0]["body"], "<b>&amp;</b>");
    bystander_still_works(&cluster, &chat, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_events_without_ack_are_dropped() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    alice.emit("no:such:event", json!({ "x": 1 })).await;
    alice.emit("message:send", json!({ "chatId": 5 })).await;
    // The connection is still fine and in order.
    let ack = alice.call("message:send", json!({ "chatId": chat, "body": "x", "clientId": "1" })).await;
    assert_eq!(ack["data"]["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_end_only_their_own_connection() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let frames = ["4", "42not json", "42{\"a\":1}", "42[]", "42[1,2]", "49", "4é", "429999999999999999999[\"x\",{}]"];
    for (i, frame) in frames.iter().enumerate() {
        let mut alice = cluster.connect(0, "alice").await;
        alice.send_raw(*frame).await;
        assert!(alice.closed_within(Duration::from_secs(5)).await, "frame {frame:?} did not close the connection");
        bystander_still_works(&cluster, &chat, i as u64 + 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_packets_and_other_namespaces_are_refused() {
    confab_tests::init_test_logging();
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    // A binary event asking for an ack gets VALIDATION_ERROR on that ack id.
    alice.send_raw("451-77[\"message:send\",{\"_placeholder\":true,\"num\":0}]").await;
    alice.send_raw("40/admin,{}").await;
    let ack = alice.call("message:send", json!({ "chatId": chat, "body": "x", "clientId": "1" })).await;
    assert_eq!(ack["data"]["seq"], 1, "{ack}");
    bystander_still_works(&cluster, &chat, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_over_the_payload_limit_close_that_connection_only() {
    let cluster = Cluster::builder().edge_config(|c| c.max_payload = 16 * 1024).build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(0, "bob").await;
    alice.emit("message:send", json!({ "chatId": chat, "body": "x".repeat(20 * 1024), "clientId": "big" })).await;
    assert!(alice.closed_within(Duration::from_secs(5)).await);
    let ack = bob.call("message:send", json!({ "chatId": chat, "body": "fine", "clientId": "1" })).await;
    assert_eq!(ack["data"]["seq"], 1, "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_before_connect_are_refused() {
    let cluster = Cluster::builder().build().await;
    // Raw Engine.IO, no Socket.IO CONNECT: an event with an ack gets UNAUTHORIZED.
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let url = format!("{}/socket.io/?EIO=4&transport=websocket", cluster.edge(0).replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with('0'));
    ws.send(Ws::text("425[\"message:send\",{}]")).await.unwrap();
    let text = loop {
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        let text = reply.to_text().unwrap().to_string();
        if text != "2" {
            break text;
        }
    };
    assert!(text.starts_with("435["), "{text}");
    let v: Value = serde_json::from_str(&text[3..]).unwrap();
    error(&v[0], "UNAUTHORIZED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_misses_pings_is_closed_and_one_that_answers_stays() {
    let cluster = Cluster::builder()
        .edge_config(|c| {
            c.ping_interval_ms = 300;
            c.ping_timeout_ms = 700;
        })
        .build()
        .await;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let url = format!("{}/socket.io/?EIO=4&transport=websocket", cluster.edge(0).replacen("http", "ws", 1));
    let (mut silent, _) = tokio_tungstenite::connect_async(url.clone()).await.unwrap();
    let (mut polite, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // The polite one answers every ping, from the start, for 3 s.
    let polite = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(Ok(msg)) = polite.next().await {
                if matches!(&msg, Ws::Text(t) if t.as_str() == "2") {
                    polite.send(Ws::text("3")).await.unwrap();
                }
            }
        })
        .await
    });
    let open = silent.next().await.unwrap().unwrap();
    let open: Value = serde_json::from_str(&open.to_text().unwrap()[1..]).unwrap();
    assert_eq!(open["pingInterval"], 300, "{open}");
    // The silent one reads pings and never answers: closed after interval + timeout.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let mut pings = 0;
        while let Some(Ok(msg)) = silent.next().await {
            match msg {
                Ws::Text(t) if t.as_str() == "2" => pings += 1,
                Ws::Close(_) => break,
                _ => {}
            }
        }
        pings
    })
    .await
    .expect("a client that misses its pong is closed");
    assert!(ended >= 1, "the server pinged before closing");
    // The polite one was still served when its 3 s ran out.
    let kept = polite.await.unwrap();
    assert!(kept.is_err(), "the answering client must stay connected");
}
