//! Attachments (CONTRACT §10.1, §10.2) through the whole cluster: sent over
//! Socket.IO and HTTP, broadcast, kept by the store, read back by history
//! and `room:join`'s `missed`, cleared by a delete; each validation rule
//! refused at the edge with nothing broadcast.

use confab_tests::Cluster;
use confab_tests::{data, error};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

fn image() -> Value {
    json!({ "url": "https://cdn.example/cat.png", "type": "image/png", "name": "cat.png", "size": 48213,
            "width": 640, "height": 480, "thumbnailUrl": "https://cdn.example/cat-small.png" })
}

fn file() -> Value {
    json!({ "url": "http://files.example/report.pdf", "type": "application/pdf" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_travel_every_path_a_message_takes() {
    let cluster = Cluster::builder().edges(2).build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;

    // A blank body is fine beside attachments, and kept as sent.
    let sent = alice
        .call(
            "message:send",
            json!({ "chatId": chat, "body": " ", "clientId": "a1", "attachments": [image(), file()] }),
        )
        .await;
    assert_eq!(data(&sent)["seq"], 1);
    let live = bob.expect_event("message:new", T).await;
    assert_eq!(live["attachments"], json!([image(), file()]));
    assert_eq!(live["body"], " ");
    // A plain message carries an empty list.
    let (status, _) = cluster
        .http(
            Method::POST,
            &format!("/v1/chats/{chat}/messages"),
            "bob",
            Some(json!({ "body": "nice", "clientId": "b1" })),
        )
        .await;
    assert_eq!(status, 201);
    let plain = alice.expect_event("message:new", T).await;
    let plain = if plain["seq"] == 1 { alice.expect_event("message:new", T).await } else { plain };
    assert_eq!(plain["attachments"], json!([]));
    // HTTP sends take attachments too.
    let (status, body) = cluster
        .http(
            Method::POST,
            &format!("/v1/chats/{chat}/messages"),
            "bob",
            Some(json!({ "body": "", "clientId": "b2", "attachments": [file()] })),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // History over Socket.IO and HTTP, and a join's missed messages (the
    // router's recent tail), all carry them.
    let history = alice.call("message:history", json!({ "chatId": chat })).await;
    let messages = &data(&history)["messages"];
    assert_eq!(messages[0]["attachments"], json!([image(), file()]));
    assert_eq!(messages[1]["attachments"], json!([]));
    assert_eq!(messages[2]["attachments"], json!([file()]));
    let (status, body) = cluster.http(Method::GET, &format!("/v1/chats/{chat}/messages"), "bob", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["messages"][0]["attachments"], json!([image(), file()]));
    let mut late = cluster.connect(0, "bob").await;
    let join = late.call("room:join", json!({ "chatId": chat, "sinceSeq": 0 })).await;
    assert_eq!(data(&join)["missed"][0]["attachments"], json!([image(), file()]));
    assert_eq!(data(&join)["missed"][2]["attachments"], json!([file()]));

    // An edit changes the body only; a blank edit is allowed only with attachments.
    let first = messages[0]["id"].clone();
    let edit = alice.call("message:edit", json!({ "chatId": chat, "messageId": first, "body": "" })).await;
    assert_eq!(edit["ok"], true, "{edit}");
    let plain_id = messages[1]["id"].clone();
    let blank = bob.call("message:edit", json!({ "chatId": chat, "messageId": plain_id, "body": "  " })).await;
    error(&blank, "VALIDATION_ERROR");
    let history = alice.call("message:history", json!({ "chatId": chat })).await;
    assert_eq!(data(&history)["messages"][0]["attachments"], json!([image(), file()]));
    assert_eq!(data(&history)["messages"][1]["body"], "nice");

    // A deleted message keeps none.
    let deleted = alice.call("message:delete", json!({ "chatId": chat, "messageId": first })).await;
    assert_eq!(deleted["ok"], true, "{deleted}");
    let history = alice.call("message:history", json!({ "chatId": chat })).await;
    assert_eq!(data(&history)["messages"][0]["deleted"], true);
    assert_eq!(data(&history)["messages"][0]["attachments"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attachment_rule_is_refused_at_the_edge_and_nothing_is_broadcast() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(0, "bob").await;
    let with = |extra: Value| {
        let mut a = image();
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    };
    let cases: Vec<(Value, &str)> = vec![
        (json!("x"), "attachments"),
        (json!(vec![file(); 11]), "attachments"),
        (json!([7]), "attachments[0]"),
        (json!([file(), { "type": "image/png" }]), "attachments[1].url"),
        (json!([{ "url": "https://x.example/f" }]), "attachments[0].type"),
        (json!([with(json!({ "url": "javascript:alert(1)" }))]), "attachments[0].url"),
        (json!([with(json!({ "url": "data:image/png;base64,AAAA" }))]), "attachments[0].url"),
        (json!([with(json!({ "url": "file:///etc/passwd" }))]), "attachments[0].url"),
        (json!([with(json!({ "url": "cat.png" }))]), "attachments[0].url"),
        (json!([with(json!({ "url": format!("https://x.example/{}", "a".repeat(2048)) }))]), "attachments[0].url"),
        (json!([with(json!({ "thumbnailUrl": "ftp://x.example/t.png" }))]), "attachments[0].thumbnailUrl"),
        (json!([with(json!({ "type": "png" }))]), "attachments[0].type"),
        (json!([with(json!({ "type": format!("image/{}", "x".repeat(250)) }))]), "attachments[0].type"),
        (json!([with(json!({ "name": "n".repeat(256) }))]), "attachments[0].name"),
        (json!([with(json!({ "name": null }))]), "attachments[0].name"),
        (json!([with(json!({ "size": -1 }))]), "attachments[0].size"),
        (json!([with(json!({ "size": 9_007_199_254_740_992u64 }))]), "attachments[0].size"),
        (json!([with(json!({ "width": 2.5 }))]), "attachments[0].width"),
        (json!([with(json!({ "height": "480" }))]), "attachments[0].height"),
        (json!([with(json!({ "alt": "a cat" }))]), "attachments[0].alt"),
    ];
    for (i, (attachments, field)) in cases.iter().enumerate() {
        let payload =
            json!({ "chatId": chat, "body": "x", "clientId": format!("bad-{i}"), "attachments": attachments });
        let ack = alice.call("message:send", payload).await;
        error(&ack, "VALIDATION_ERROR");
        let message = ack["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(&format!("{field} ")), "{attachments}: {message}");
    }
    // Without attachments a blank body is still refused, and over HTTP alike.
    error(
        &alice.call("message:send", json!({ "chatId": chat, "body": " ", "clientId": "blank" })).await,
        "VALIDATION_ERROR",
    );
    let path = format!("/v1/chats/{chat}/messages");
    let payload = json!({ "body": "x", "clientId": "h", "attachments": [with(json!({ "url": "javascript:x" }))] });
    let (status, body) = cluster.http(Method::POST, &path, "alice", Some(payload)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "VALIDATION_ERROR", "{body}");
    // Ten attachments are allowed; the first thing bob sees is that message:
    // nothing refused above was broadcast or stored.
    let ten = alice
        .call(
            "message:send",
            json!({ "chatId": chat, "body": "ten", "clientId": "ten", "attachments": vec![file(); 10] }),
        )
        .await;
    assert_eq!(data(&ten)["seq"], 1, "{ten}");
    let first = bob.expect_event("message:new", T).await;
    assert_eq!(first["body"], "ten");
    assert_eq!(first["attachments"].as_array().map(Vec::len), Some(10));
}
