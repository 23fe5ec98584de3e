//! Chat management (CONTRACT §7, §8.10, §8.27): title, members and roles,
//! with live subscription changes on every device of every member.

use confab_tests::Cluster;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

async fn send_ok(c: &mut confab_tests::client::Client, chat: &str, id: &str) {
    let ack = c.call("message:send", json!({ "chatId": chat, "body": id, "clientId": id })).await;
    assert_eq!(ack["ok"], true, "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn title_changes_are_for_admins_and_reach_members() {
    let cluster = Cluster::builder().edges(2).build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut bob = cluster.connect(1, "bob").await;
    let path = format!("/v1/chats/{chat}");
    let (status, body) = cluster.http(Method::PATCH, &path, "alice", Some(json!({ "title": "Renamed" }))).await;
    assert_eq!((status, body["title"].as_str()), (200, Some("Renamed")));
    assert!(body["updatedAt"].as_str() >= body["createdAt"].as_str());
    assert_eq!(bob.expect_event("chat:update", T).await["chat"]["title"], "Renamed");
    let (status, body) = cluster.http(Method::PATCH, &path, "bob", Some(json!({ "title": "Mine" }))).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("FORBIDDEN")));
    let (status, _) = cluster.http(Method::PATCH, &path, "mallory", Some(json!({ "title": "x" }))).await;
    assert_eq!(status, 403);
    let (status, _) = cluster.http(Method::PATCH, "/v1/chats/nope", "alice", Some(json!({ "title": "x" }))).await;
    assert_eq!(status, 404);
    let (status, _) = cluster.http(Method::PATCH, &path, "alice", Some(json!({ "title": 5 }))).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_members_receive_at_once_removed_ones_stop_at_once() {
    let cluster = Cluster::builder().edges(2).build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    let mut carol1 = cluster.connect(0, "carol").await;
    let mut carol2 = cluster.connect(1, "carol").await;
    let members = format!("/v1/chats/{chat}/members");
    // Only an admin adds.
    let (status, _) = cluster.http(Method::POST, &members, "bob", Some(json!({ "userIds": ["carol"] }))).await;
    assert_eq!(status, 403);
    let (status, body) = cluster.http(Method::POST, &members, "alice", Some(json!({ "userIds": ["carol"] }))).await;
    assert_eq!((status, &body["memberIds"]), (200, &json!(["alice", "bob", "carol"])));
    for c in [&mut alice, &mut bob, &mut carol1, &mut carol2] {
        assert_eq!(c.expect_event("chat:update", T).await["chat"]["memberIds"], json!(["alice", "bob", "carol"]));
    }
    // Every device of the new member receives without joining.
    send_ok(&mut alice, &chat, "after-add").await;
    for c in [&mut carol1, &mut carol2, &mut bob] {
        assert_eq!(c.expect_event("message:new", T).await["body"], "after-add");
    }
    let ack = carol2.call("message:send", json!({ "chatId": chat, "body": "hi", "clientId": "c" })).await;
    assert_eq!(ack["ok"], true, "{ack}");
    alice.collect("message:new", QUIET).await;
    bob.collect("message:new", QUIET).await;
    carol1.collect("message:new", QUIET).await;
    assert_eq!(carol2.expect_event("message:new", T).await["body"], "hi");

    // bob may not remove carol; alice may.
    let (status, _) = cluster.http(Method::DELETE, &format!("{members}/carol"), "bob", None).await;
    assert_eq!(status, 403);
    let (status, body) = cluster.http(Method::DELETE, &format!("{members}/carol"), "alice", None).await;
    assert_eq!((status, &body["memberIds"]), (200, &json!(["alice", "bob"])));
    for c in [&mut carol1, &mut carol2, &mut bob] {
        assert_eq!(c.expect_event("chat:update", T).await["chat"]["memberIds"], json!(["alice", "bob"]));
    }
    send_ok(&mut alice, &chat, "after-remove").await;
    assert_eq!(bob.expect_event("message:new", T).await["body"], "after-remove");
    for c in [&mut carol1, &mut carol2] {
        assert!(c.next_event("message:new", QUIET).await.is_none(), "a removed member still receives");
    }
    let ack = carol1.call("message:send", json!({ "chatId": chat, "body": "x", "clientId": "late" })).await;
    assert_eq!(ack["error"], "FORBIDDEN");
    let (status, _) = cluster.http(Method::DELETE, &format!("{members}/carol"), "alice", None).await;
    assert_eq!(status, 404);
    // Adding someone already there changes nothing.
    let (status, body) = cluster.http(Method::POST, &members, "alice", Some(json!({ "userIds": ["bob"] }))).await;
    assert_eq!((status, &body["memberIds"]), (200, &json!(["alice", "bob"])));
    let (status, _) = cluster.http(Method::POST, &members, "alice", Some(json!({ "userIds": [] }))).await;
    assert_eq!(status, 400);
    let (status, _) = cluster.http(Method::POST, &members, "alice", Some(json!({ "userIds": "bob" }))).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_hands_admin_on_and_the_last_one_out_deletes_the_group() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob", "carol"]).await;
    let members = format!("/v1/chats/{chat}/members");
    // The admin leaves: bob, the longest-standing member, becomes admin.
    let (status, body) = cluster.http(Method::DELETE, &format!("{members}/alice"), "alice", None).await;
    assert_eq!((status, &body["adminIds"]), (200, &json!(["bob"])));
    let (status, _) = cluster.http(Method::GET, &format!("/v1/chats/{chat}"), "alice", None).await;
    assert_eq!(status, 403);
    let (_, list) = cluster.http(Method::GET, "/v1/chats", "alice", None).await;
    assert_eq!(list["chats"], json!([]));
    // A member may leave by themselves.
    let (status, _) = cluster.http(Method::DELETE, &format!("{members}/carol"), "carol", None).await;
    assert_eq!(status, 200);
    let (status, body) = cluster.http(Method::DELETE, &format!("{members}/bob"), "bob", None).await;
    assert_eq!((status, &body["memberIds"]), (200, &json!([])));
    let (status, body) = cluster.http(Method::GET, &format!("/v1/chats/{chat}"), "bob", None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("NOT_FOUND")));
    let (status, _) = cluster
        .http(Method::POST, &format!("/v1/chats/{chat}/messages"), "bob", Some(json!({ "body": "x", "clientId": "1" })))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_change_by_admins_only_and_keep_one_admin() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut bob = cluster.connect(0, "bob").await;
    let role = |user: &str| format!("/v1/chats/{chat}/members/{user}");
    let (status, _) = cluster.http(Method::PATCH, &role("alice"), "alice", Some(json!({ "role": "member" }))).await;
    assert_eq!(status, 400, "the last admin cannot be demoted");
    let (status, _) = cluster.http(Method::PATCH, &role("alice"), "bob", Some(json!({ "role": "member" }))).await;
    assert_eq!(status, 403);
    let (status, _) = cluster.http(Method::PATCH, &role("zed"), "alice", Some(json!({ "role": "admin" }))).await;
    assert_eq!(status, 404);
    let (status, _) = cluster.http(Method::PATCH, &role("bob"), "alice", Some(json!({ "role": "owner" }))).await;
    assert_eq!(status, 400);
    let (status, body) = cluster.http(Method::PATCH, &role("bob"), "alice", Some(json!({ "role": "admin" }))).await;
    assert_eq!((status, &body["adminIds"]), (200, &json!(["alice", "bob"])));
    assert_eq!(bob.expect_event("chat:update", T).await["chat"]["adminIds"], json!(["alice", "bob"]));
    // Setting the role already held: 200, nothing emitted.
    let (status, _) = cluster.http(Method::PATCH, &role("bob"), "alice", Some(json!({ "role": "admin" }))).await;
    assert_eq!(status, 200);
    assert!(bob.next_event("chat:update", QUIET).await.is_none());
    // Now bob, an admin, may delete alice's message.
    let (_, sent) = cluster
        .http(
            Method::POST,
            &format!("/v1/chats/{chat}/messages"),
            "alice",
            Some(json!({ "body": "x", "clientId": "1" })),
        )
        .await;
    let del = bob.call("message:delete", json!({ "chatId": chat, "messageId": sent["serverId"] })).await;
    assert_eq!(del["ok"], true, "{del}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dms_membership_cannot_change() {
    let cluster = Cluster::builder().build().await;
    let dm = cluster.create_chat("alice", "dm", &["bob"]).await;
    let (status, body) = cluster
        .http(Method::POST, &format!("/v1/chats/{dm}/members"), "alice", Some(json!({ "userIds": ["carol"] })))
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("VALIDATION_ERROR")));
    let (status, _) = cluster.http(Method::DELETE, &format!("/v1/chats/{dm}/members/bob"), "alice", None).await;
    assert_eq!(status, 400);
    let chat: Value = cluster.http(Method::GET, &format!("/v1/chats/{dm}"), "bob", None).await.1;
    assert_eq!(chat["memberIds"], json!(["alice", "bob"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chat_endpoint_refuses_non_members_and_non_admins() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let calls = [
        (Method::PATCH, format!("/v1/chats/{chat}"), Some(json!({ "title": "x" }))),
        (Method::POST, format!("/v1/chats/{chat}/members"), Some(json!({ "userIds": ["zed"] }))),
        (Method::DELETE, format!("/v1/chats/{chat}/members/alice"), None),
        (Method::PATCH, format!("/v1/chats/{chat}/members/alice"), Some(json!({ "role": "member" }))),
    ];
    for user in ["mallory", "bob"] {
        for (method, path, body) in &calls {
            let (status, res) = cluster.http(method.clone(), path, user, body.clone()).await;
            assert_eq!((status, res["error"].as_str()), (403, Some("FORBIDDEN")), "{user} {method} {path}");
        }
    }
    for (method, path) in
        [(Method::GET, format!("/v1/chats/{chat}")), (Method::GET, format!("/v1/chats/{chat}/messages"))]
    {
        let (status, _) = cluster.http(method.clone(), &path, "mallory", None).await;
        assert_eq!(status, 403, "mallory {method} {path}");
    }
    // Nothing changed.
    let (_, after) = cluster.http(Method::GET, &format!("/v1/chats/{chat}"), "alice", None).await;
    assert_eq!(
        (after["title"].as_str(), &after["memberIds"], &after["adminIds"]),
        (Some("test"), &json!(["alice", "bob"]), &json!(["alice"]))
    );
}
