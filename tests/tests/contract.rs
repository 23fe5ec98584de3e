//! The rest of the message contract (CONTRACT §5, §6, §8): edit, delete,
//! reactions, replies, typing and read receipts, through the cluster.

use confab_tests::client::Client;
use confab_tests::Cluster;
use confab_tests::{data, error};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

async fn send(c: &mut Client, chat: &str, body: &str, client_id: &str) -> Value {
    data(&c.call("message:send", json!({ "chatId": chat, "body": body, "clientId": client_id })).await).clone()
}

async fn history(c: &mut Client, chat: &str) -> Vec<Value> {
    let h = c.call("message:history", json!({ "chatId": chat })).await;
    data(&h)["messages"].as_array().unwrap().clone()
}

/// alice (admin) and bob in a group, both connected on different edges.
async fn setup() -> (Cluster, String, Client, Client) {
    let cluster = Cluster::builder().edges(2).build().await;
    let chat = cluster.create_chat("alice", "group", &["bob", "carol"]).await;
    let alice = cluster.connect(0, "alice").await;
    let bob = cluster.connect(1, "bob").await;
    (cluster, chat, alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_is_for_the_sender_and_reaches_the_chat() {
    let (cluster, chat, mut alice, mut bob) = setup().await;
    let m = send(&mut bob, &chat, "helo", "1").await;
    let id = m["serverId"].as_str().unwrap().to_string();
    let edit = json!({ "chatId": chat, "messageId": id, "body": "hello" });
    error(&alice.call("message:edit", edit.clone()).await, "FORBIDDEN");
    let ack = bob.call("message:edit", edit).await;
    assert_eq!(data(&ack)["messageId"], id);
    let edited_at = data(&ack)["editedAt"].as_str().unwrap().to_string();
    for c in [&mut alice, &mut bob] {
        let u = c.expect_event("message:updated", T).await;
        assert_eq!(u, json!({ "chatId": chat, "messageId": id, "seq": 1, "body": "hello", "editedAt": edited_at }));
    }
    let h = history(&mut alice, &chat).await;
    assert_eq!((h[0]["body"].as_str(), h[0]["editedAt"].as_str()), (Some("hello"), Some(edited_at.as_str())));
    // Bad edits.
    error(&bob.call("message:edit", json!({ "chatId": chat, "messageId": "nope", "body": "x" })).await, "NOT_FOUND");
    error(&bob.call("message:edit", json!({ "chatId": chat, "messageId": id, "body": " " })).await, "VALIDATION_ERROR");
    error(&bob.call("message:edit", json!({ "chatId": chat, "body": "x" })).await, "VALIDATION_ERROR");
    let mut mallory = cluster.connect(0, "mallory").await;
    error(&mallory.call("message:edit", json!({ "chatId": chat, "messageId": id, "body": "x" })).await, "FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_a_tombstone_for_sender_or_admin() {
    let (cluster, chat, mut alice, mut bob) = setup().await;
    let mut carol = cluster.connect(0, "carol").await;
    let m1 = send(&mut bob, &chat, "one", "1").await["serverId"].as_str().unwrap().to_string();
    let m2 = send(&mut bob, &chat, "two", "2").await["serverId"].as_str().unwrap().to_string();
    // carol is neither the sender nor an admin.
    error(&carol.call("message:delete", json!({ "chatId": chat, "messageId": m1 })).await, "FORBIDDEN");
    // The sender deletes one, the admin the other.
    assert_eq!(data(&bob.call("message:delete", json!({ "chatId": chat, "messageId": m1 })).await)["messageId"], m1);
    assert_eq!(data(&alice.call("message:delete", json!({ "chatId": chat, "messageId": m2 })).await)["messageId"], m2);
    let deleted = carol.collect("message:deleted", QUIET).await;
    assert_eq!(
        deleted,
        vec![
            json!({ "chatId": chat, "messageId": m1, "seq": 1 }),
            json!({ "chatId": chat, "messageId": m2, "seq": 2 })
        ]
    );
    let h = history(&mut carol, &chat).await;
    assert_eq!(h.len(), 2);
    for m in &h {
        assert_eq!((m["deleted"].as_bool(), m["body"].as_str()), (Some(true), Some("")));
    }
    // A deleted message can't be edited, reacted to or replied to.
    error(&bob.call("message:edit", json!({ "chatId": chat, "messageId": m1, "body": "x" })).await, "NOT_FOUND");
    error(&bob.call("reaction:add", json!({ "chatId": chat, "messageId": m1, "emoji": "👍" })).await, "NOT_FOUND");
    let reply = json!({ "chatId": chat, "body": "re", "clientId": "3", "replyTo": m1 });
    error(&bob.call("message:send", reply).await, "NOT_FOUND");
    // Deleting again acks and broadcasts nothing.
    data(&alice.call("message:delete", json!({ "chatId": chat, "messageId": m1 })).await);
    assert!(carol.next_event("message:deleted", QUIET).await.is_none());
    // Tombstones don't count as unread.
    let (_, list) = cluster.http(reqwest::Method::GET, "/v1/chats", "carol", None).await;
    assert_eq!(list["chats"][0]["unread"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_count_each_user_once() {
    let (_cluster, chat, mut alice, mut bob) = setup().await;
    let id = send(&mut alice, &chat, "react to me", "1").await["serverId"].as_str().unwrap().to_string();
    let add = |emoji: &str| json!({ "chatId": chat, "messageId": id, "emoji": emoji });
    assert_eq!(data(&bob.call("reaction:add", add("👍")).await), &json!({}));
    let u = alice.expect_event("reaction:update", T).await;
    assert_eq!(
        u,
        json!({ "chatId": chat, "messageId": id, "emoji": "👍", "userId": "bob", "action": "add", "counts": { "👍": 1 } })
    );
    data(&alice.call("reaction:add", add("👍")).await);
    assert_eq!(bob.expect_event("reaction:update", T).await["counts"], json!({ "👍": 1 }));
    assert_eq!(bob.expect_event("reaction:update", T).await["counts"], json!({ "👍": 2 }));
    assert_eq!(alice.expect_event("reaction:update", T).await["userId"], "alice");
    // A repeated add and a remove of an absent reaction change nothing.
    data(&bob.call("reaction:add", add("👍")).await);
    data(&bob.call("reaction:remove", add("🎉")).await);
    assert!(alice.next_event("reaction:update", QUIET).await.is_none());
    data(&bob.call("reaction:remove", add("👍")).await);
    let u = alice.expect_event("reaction:update", T).await;
    assert_eq!((u["action"].as_str(), &u["counts"]), (Some("remove"), &json!({ "👍": 1 })));
    assert_eq!(history(&mut bob, &chat).await[0]["reactions"], json!({ "👍": 1 }));
    error(&bob.call("reaction:add", add("")).await, "VALIDATION_ERROR");
    error(&bob.call("reaction:add", add(&"x".repeat(17))).await, "VALIDATION_ERROR");
    error(&bob.call("reaction:add", json!({ "chatId": chat, "messageId": "nope", "emoji": "x" })).await, "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_name_a_live_message_of_the_chat() {
    let (cluster, chat, mut alice, mut bob) = setup().await;
    let id = send(&mut alice, &chat, "question", "1").await["serverId"].as_str().unwrap().to_string();
    let ack =
        bob.call("message:send", json!({ "chatId": chat, "body": "answer", "clientId": "2", "replyTo": id })).await;
    data(&ack);
    let h = history(&mut alice, &chat).await;
    assert_eq!(h[1]["replyTo"], id);
    assert!(h[0].get("replyTo").is_none());
    let other = cluster.create_chat("alice", "group", &["bob"]).await;
    let foreign = json!({ "chatId": other, "body": "x", "clientId": "3", "replyTo": id });
    error(&bob.call("message:send", foreign).await, "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_goes_to_the_others_debounced_and_expires() {
    let cluster = Cluster::builder()
        .edges(2)
        .router_config(|c| {
            c.typing_ttl_ms = 600;
            c.typing_debounce_ms = 300;
        })
        .build()
        .await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut alice2 = cluster.connect(1, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    let mallory = cluster.connect(0, "mallory").await;
    alice.emit("typing:start", json!({ "chatId": chat })).await;
    let u = bob.expect_event("typing:update", T).await;
    assert_eq!(u, json!({ "chatId": chat, "userId": "alice", "state": "start" }));
    // A repeat inside the debounce window is not re-broadcast.
    alice.emit("typing:start", json!({ "chatId": chat })).await;
    assert!(bob.next_event("typing:update", Duration::from_millis(150)).await.is_none());
    // typing:stop is broadcast; nothing reaches the typist's own sockets.
    alice.emit("typing:stop", json!({ "chatId": chat })).await;
    assert_eq!(bob.expect_event("typing:update", T).await["state"], "stop");
    assert!(alice.next_event("typing:update", QUIET).await.is_none());
    assert!(alice2.next_event("typing:update", Duration::from_millis(10)).await.is_none());
    // Without a stop, typing ends by itself after the ttl.
    alice.emit("typing:start", json!({ "chatId": chat })).await;
    assert_eq!(bob.expect_event("typing:update", T).await["state"], "start");
    let started = std::time::Instant::now();
    assert_eq!(bob.expect_event("typing:update", T).await["state"], "stop");
    assert!(started.elapsed() >= Duration::from_millis(400), "stopped too early");
    // Disconnecting the typing socket stops it.
    alice.emit("typing:start", json!({ "chatId": chat })).await;
    assert_eq!(bob.expect_event("typing:update", T).await["state"], "start");
    alice.disconnect().await;
    assert_eq!(bob.expect_event("typing:update", Duration::from_millis(500)).await["state"], "stop");
    // Non-members are ignored silently.
    mallory.emit("typing:start", json!({ "chatId": chat })).await;
    assert!(bob.next_event("typing:update", QUIET).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_move_forward_only_and_drive_unread() {
    let (cluster, chat, mut alice, mut bob) = setup().await;
    let mut ids = Vec::new();
    for i in 1..=4 {
        ids.push(
            send(&mut alice, &chat, &format!("m{i}"), &i.to_string()).await["serverId"].as_str().unwrap().to_string(),
        );
    }
    let (_, list) = cluster.http(reqwest::Method::GET, "/v1/chats", "bob", None).await;
    assert_eq!((list["chats"][0]["unread"].as_u64(), list["chats"][0]["lastReadSeq"].as_u64()), (Some(4), Some(0)));
    let ack = bob.call("receipt:read", json!({ "chatId": chat, "messageId": ids[2] })).await;
    assert_eq!(data(&ack)["lastReadSeq"], 3);
    let r = alice.expect_event("receipt:update", T).await;
    assert_eq!(
        (r["userId"].as_str(), r["seq"].as_u64(), r["messageId"].as_str()),
        (Some("bob"), Some(3), Some(ids[2].as_str()))
    );
    assert!(r["readAt"].as_str().is_some_and(|s| s.ends_with('Z')));
    // Backwards: acks the current cursor and broadcasts nothing.
    let ack = bob.call("receipt:read", json!({ "chatId": chat, "seq": 1 })).await;
    assert_eq!(data(&ack)["lastReadSeq"], 3);
    assert!(alice.next_event("receipt:update", QUIET).await.is_none());
    error(&bob.call("receipt:read", json!({ "chatId": chat, "seq": 99 })).await, "VALIDATION_ERROR");
    error(&bob.call("receipt:read", json!({ "chatId": chat })).await, "VALIDATION_ERROR");
    error(&bob.call("receipt:read", json!({ "chatId": chat, "messageId": "nope" })).await, "NOT_FOUND");
    let (_, list) = cluster.http(reqwest::Method::GET, "/v1/chats", "bob", None).await;
    assert_eq!((list["chats"][0]["unread"].as_u64(), list["chats"][0]["lastReadSeq"].as_u64()), (Some(1), Some(3)));
    // The cursor is persisted: a new session sees it.
    let mut bob2 = cluster.connect(0, "bob").await;
    let join = bob2.call("room:join", json!({ "chatId": chat })).await;
    assert_eq!(data(&join)["lastReadSeq"], 3);
    let mut bob3 = Client::connect(cluster.edge(1), json!({ "token": cluster.token("bob") })).await.unwrap();
    let ready = bob3.expect_event("session:ready", T).await;
    assert_eq!((ready["chats"][0]["lastReadSeq"].as_u64(), ready["chats"][0]["unread"].as_u64()), (Some(3), Some(1)));
    // Sending does not move the sender's cursor.
    send(&mut bob, &chat, "mine", "b1").await;
    let (_, list) = cluster.http(reqwest::Method::GET, "/v1/chats", "bob", None).await;
    assert_eq!((list["chats"][0]["unread"].as_u64(), list["chats"][0]["lastReadSeq"].as_u64()), (Some(1), Some(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_are_refused_every_message_event() {
    let (cluster, chat, mut alice, _bob) = setup().await;
    let id = send(&mut alice, &chat, "x", "1").await["serverId"].as_str().unwrap().to_string();
    let mut mallory = cluster.connect(0, "mallory").await;
    for (event, payload) in [
        ("message:edit", json!({ "chatId": chat, "messageId": id, "body": "x" })),
        ("message:delete", json!({ "chatId": chat, "messageId": id })),
        ("reaction:add", json!({ "chatId": chat, "messageId": id, "emoji": "x" })),
        ("reaction:remove", json!({ "chatId": chat, "messageId": id, "emoji": "x" })),
        ("receipt:read", json!({ "chatId": chat, "seq": 1 })),
    ] {
        error(&mallory.call(event, payload).await, "FORBIDDEN");
    }
    assert_eq!(history(&mut alice, &chat).await[0]["body"], "x");
}
