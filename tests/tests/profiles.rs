//! Sender profiles (CONTRACT §10.2): every message carries
//! `sender { id, name, avatarUrl }` from the token it was sent with, keeps
//! it after the sender's token changes, and `auth:refresh` changes what the
//! socket's later messages carry.

use confab_tests::client::Client;
use confab_tests::{data, token_with_profile, Cluster};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_carries_the_profile_of_the_token_it_was_sent_with() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let first_token = token_with_profile("alice", "Alice", "https://cdn.example/alice.png");
    let mut alice = Client::connect(cluster.edge(0), json!({ "token": first_token })).await.unwrap();
    alice.expect_event("session:ready", T).await;
    let mut bob = cluster.connect(0, "bob").await;

    data(&alice.call("message:send", json!({ "chatId": chat, "body": "hi", "clientId": "p1" })).await);
    let live = bob.expect_event("message:new", T).await;
    assert_eq!(live["sender"], json!({ "id": "alice", "name": "Alice", "avatarUrl": "https://cdn.example/alice.png" }));
    assert_eq!(live["senderId"], "alice");

    // A refreshed token's profile goes with the socket's later messages.
    let refreshed = token_with_profile("alice", "Alice B.", "http://img.example/b.jpg");
    data(&alice.call("auth:refresh", json!({ "token": refreshed })).await);
    data(&alice.call("message:send", json!({ "chatId": chat, "body": "again", "clientId": "p2" })).await);
    let live = bob.expect_event("message:new", T).await;
    assert_eq!(live["sender"]["name"], "Alice B.");
    assert_eq!(live["sender"]["avatarUrl"], "http://img.example/b.jpg");

    // A token without the claims, and a picture that is no http(s) URL, give nulls.
    data(&bob.call("message:send", json!({ "chatId": chat, "body": "plain", "clientId": "p3" })).await);
    let (status, _) = cluster
        .http(
            Method::POST,
            &format!("/v1/chats/{chat}/messages"),
            "bob",
            Some(json!({ "body": "http", "clientId": "p4" })),
        )
        .await;
    assert_eq!(status, 201);
    let odd = token_with_profile("alice", "Alice", "javascript:alert(1)");
    let mut odd_alice = Client::connect(cluster.edge(0), json!({ "token": odd })).await.unwrap();
    odd_alice.expect_event("session:ready", T).await;
    data(&odd_alice.call("message:send", json!({ "chatId": chat, "body": "odd", "clientId": "p5" })).await);

    // History keeps each message's own profile; so does a join's missed list.
    let history = bob.call("message:history", json!({ "chatId": chat })).await;
    let senders: Vec<_> = data(&history)["messages"].as_array().unwrap().iter().map(|m| m["sender"].clone()).collect();
    assert_eq!(
        senders,
        [
            json!({ "id": "alice", "name": "Alice", "avatarUrl": "https://cdn.example/alice.png" }),
            json!({ "id": "alice", "name": "Alice B.", "avatarUrl": "http://img.example/b.jpg" }),
            json!({ "id": "bob", "name": null, "avatarUrl": null }),
            json!({ "id": "bob", "name": null, "avatarUrl": null }),
            json!({ "id": "alice", "name": "Alice", "avatarUrl": null }),
        ]
    );
    let mut late = cluster.connect(0, "bob").await;
    let join = late.call("room:join", json!({ "chatId": chat, "sinceSeq": 0 })).await;
    assert_eq!(data(&join)["missed"][0]["sender"]["name"], "Alice");
    // An HTTP send takes the profile of its bearer token.
    let path = format!("/v1/chats/{chat}/messages");
    let token = token_with_profile("bob", "Bob", "https://cdn.example/bob.png");
    let (status, _) = confab_tests::http_call(
        &reqwest::Client::new(),
        Method::POST,
        &format!("{}{path}", cluster.edge(0)),
        Some(&token),
        Some(json!({ "body": "over http", "clientId": "p6" })),
    )
    .await;
    assert_eq!(status, 201);
    let (_, page) = cluster.http(Method::GET, &format!("{path}?afterSeq=5"), "bob", None).await;
    assert_eq!(
        page["messages"][0]["sender"],
        json!({ "id": "bob", "name": "Bob", "avatarUrl": "https://cdn.example/bob.png" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_members_show_each_members_latest_profile_seen_by_any_edge() {
    let cluster = Cluster::builder().edges(2).build().await;
    let chat = cluster.create_chat("alice", "group", &["bob", "carol"]).await;
    // Bob connects on edge 1 with a profile; carol never connects.
    let bob_token = token_with_profile("bob", "Bob", "https://cdn.example/bob.png");
    let mut bob = Client::connect(cluster.edge(1), json!({ "token": bob_token })).await.unwrap();
    bob.expect_event("session:ready", T).await;
    let mut alice = cluster.connect(0, "alice").await;

    // Saved in the background: wait until edge 0 reads what edge 1 saved.
    let members = members_until(&mut alice, &chat, |m| member(m, "bob")["name"] == "Bob").await;
    assert_eq!(member(&members, "bob")["avatarUrl"], "https://cdn.example/bob.png");
    assert_eq!(member(&members, "bob")["role"], "member");
    assert_eq!(member(&members, "carol")["name"], json!(null), "carol never connected");
    assert_eq!(member(&members, "carol")["avatarUrl"], json!(null));
    assert_eq!(member(&members, "alice")["name"], json!(null), "alice's token has no name");

    // A refreshed token replaces the profile.
    let refreshed = token_with_profile("bob", "Robert", "https://cdn.example/robert.png");
    data(&bob.call("auth:refresh", json!({ "token": refreshed })).await);
    let members = members_until(&mut alice, &chat, |m| member(m, "bob")["name"] == "Robert").await;
    assert_eq!(member(&members, "bob")["avatarUrl"], "https://cdn.example/robert.png");
}

fn member(members: &Value, id: &str) -> Value {
    members.as_array().and_then(|all| all.iter().find(|m| m["userId"] == id)).cloned().unwrap_or_default()
}

/// Asks `room:members` until `done` holds (profiles are saved in the
/// background), within [`T`].
async fn members_until(client: &mut Client, chat: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + T;
    loop {
        let members = data(&client.call("room:members", json!({ "chatId": chat })).await)["members"].clone();
        if done(&members) {
            return members;
        }
        assert!(std::time::Instant::now() < deadline, "room:members never showed it: {members}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
