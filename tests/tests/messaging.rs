//! Messaging through the whole cluster (edge → router → store over gRPC):
//! session start, send with ack and broadcast, idempotency, history,
//! recovery with `sinceSeq`, leave, membership checks.

use confab_tests::Cluster;
use confab_tests::{data, error};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ready_lists_the_users_chats() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut c =
        confab_tests::client::Client::connect(cluster.edge(0), json!({ "token": cluster.token("bob") })).await.unwrap();
    let ready = c.expect_event("session:ready", T).await;
    assert_eq!(ready["userId"], "bob");
    assert!(ready["sessionId"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(ready["serverTime"].as_str().is_some_and(|s| s.ends_with('Z') && s.len() == 24), "{ready}");
    assert_eq!(ready["chats"], json!([{ "chatId": chat, "lastSeq": 0, "lastReadSeq": 0, "unread": 0 }]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_every_member_on_every_edge_once_in_order() {
    let cluster = Cluster::builder().edges(2).build().await;
    let chat = cluster.create_chat("alice", "group", &["bob", "carol"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    let mut carol = cluster.connect(0, "carol").await;
    for i in 1..=20 {
        let ack = alice
            .call("message:send", json!({ "chatId": chat, "body": format!("m{i}"), "clientId": format!("c{i}") }))
            .await;
        let d = data(&ack);
        assert_eq!(d["seq"], i);
        assert_eq!(d["clientId"], format!("c{i}"));
        assert!(d["serverId"].as_str().is_some());
        assert!(d["createdAt"].as_str().is_some_and(|s| s.ends_with('Z')));
    }
    for client in [&mut alice, &mut bob, &mut carol] {
        let got = client.collect("message:new", Duration::from_millis(500)).await;
        let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
        assert_eq!(got[0]["body"], "m1");
        assert_eq!(got[0]["senderId"], "alice");
        assert_eq!(got[0]["chatId"], chat);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_client_id_returns_the_first_message_and_broadcasts_nothing() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(0, "bob").await;
    let first = alice.call("message:send", json!({ "chatId": chat, "body": "hi", "clientId": "same" })).await;
    let again = alice.call("message:send", json!({ "chatId": chat, "body": "other body", "clientId": "same" })).await;
    assert_eq!(data(&first)["serverId"], data(&again)["serverId"]);
    assert_eq!(data(&again)["seq"], 1);
    // Over HTTP too: 200 for the repeat.
    let (status, body) = cluster
        .http(
            reqwest::Method::POST,
            &format!("/v1/chats/{chat}/messages"),
            "alice",
            Some(json!({ "body": "x", "clientId": "same" })),
        )
        .await;
    assert_eq!((status, &body["seq"]), (200, &json!(1)));
    assert_eq!(bob.collect("message:new", Duration::from_millis(400)).await.len(), 1);
    // A different sender may use the same clientId.
    let bobs = bob.call("message:send", json!({ "chatId": chat, "body": "hey", "clientId": "same" })).await;
    assert_eq!(data(&bobs)["seq"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_since_seq_recovers_exactly_what_was_missed() {
    let cluster = Cluster::builder().edges(2).build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    alice.call("message:send", json!({ "chatId": chat, "body": "1", "clientId": "1" })).await;
    let seen = bob.expect_event("message:new", T).await;
    assert_eq!(seen["seq"], 1);
    bob.disconnect().await;
    for i in 2..=130 {
        let ack = alice
            .call("message:send", json!({ "chatId": chat, "body": i.to_string(), "clientId": i.to_string() }))
            .await;
        data(&ack);
    }
    let mut bob = cluster.connect(0, "bob").await;
    let join = bob.call("room:join", json!({ "chatId": chat, "sinceSeq": 1 })).await;
    let d = data(&join);
    assert_eq!(d["chatId"], chat);
    assert_eq!(d["lastSeq"], 130);
    assert_eq!(d["hasMore"], true);
    let missed: Vec<u64> = d["missed"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(missed, (2..=101).collect::<Vec<_>>());
    // The client pages on with afterSeq.
    let page = bob.call("message:history", json!({ "chatId": chat, "afterSeq": 101, "limit": 100 })).await;
    let rest: Vec<u64> =
        data(&page)["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(rest, (102..=130).collect::<Vec<_>>());
    assert_eq!(data(&page)["hasMore"], false);
    // Without sinceSeq nothing is replayed.
    let plain = bob.call("room:join", json!({ "chatId": chat })).await;
    assert_eq!(data(&plain)["missed"], json!([]));
    assert_eq!(data(&plain)["hasMore"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_leave_stops_delivery_to_that_socket_only() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob1 = cluster.connect(0, "bob").await;
    let mut bob2 = cluster.connect(0, "bob").await;
    assert_eq!(data(&bob1.call("room:leave", json!({ "chatId": chat })).await), &json!({}));
    assert_eq!(data(&bob1.call("room:leave", json!({ "chatId": "never-joined" })).await), &json!({}));
    alice.call("message:send", json!({ "chatId": chat, "body": "x", "clientId": "1" })).await;
    assert_eq!(bob2.expect_event("message:new", T).await["seq"], 1);
    assert!(bob1.next_event("message:new", Duration::from_millis(300)).await.is_none());
    // Joining again resumes delivery.
    data(&bob1.call("room:join", json!({ "chatId": chat })).await);
    alice.call("message:send", json!({ "chatId": chat, "body": "y", "clientId": "2" })).await;
    assert_eq!(bob1.expect_event("message:new", T).await["seq"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_get_forbidden_and_unknown_chats_not_found() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut mallory = cluster.connect(0, "mallory").await;
    error(&mallory.call("room:join", json!({ "chatId": chat })).await, "FORBIDDEN");
    error(&mallory.call("message:send", json!({ "chatId": chat, "body": "x", "clientId": "1" })).await, "FORBIDDEN");
    error(&mallory.call("message:history", json!({ "chatId": chat })).await, "FORBIDDEN");
    error(&mallory.call("room:join", json!({ "chatId": "no-such-chat" })).await, "NOT_FOUND");
    error(
        &mallory.call("message:send", json!({ "chatId": "no-such-chat", "body": "x", "clientId": "1" })).await,
        "NOT_FOUND",
    );
    // The failed attempts wrote nothing.
    let h = alice.call("message:history", json!({ "chatId": chat })).await;
    assert_eq!(data(&h)["messages"], json!([]));
    let (status, body) =
        cluster.http(reqwest::Method::GET, &format!("/v1/chats/{chat}/messages"), "mallory", None).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("FORBIDDEN")));
    let (status, _) = cluster.http(reqwest::Method::GET, &format!("/v1/chats/{chat}"), "mallory", None).await;
    assert_eq!(status, 403);
    let (status, body) = cluster
        .http(
            reqwest::Method::POST,
            &format!("/v1/chats/{chat}/messages"),
            "mallory",
            Some(json!({ "body": "x", "clientId": "1" })),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("FORBIDDEN")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_follow_the_contract() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &[]).await;
    for i in 1..=12 {
        let (status, _) = cluster
            .http(
                reqwest::Method::POST,
                &format!("/v1/chats/{chat}/messages"),
                "alice",
                Some(json!({ "body": format!("b{i}"), "clientId": format!("c{i}") })),
            )
            .await;
        assert_eq!(status, 201);
    }
    let mut alice = cluster.connect(0, "alice").await;
    let seqs = |v: &Value| -> Vec<u64> {
        v["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect()
    };
    let newest = alice.call("message:history", json!({ "chatId": chat, "limit": 5 })).await;
    assert_eq!((seqs(data(&newest)), &data(&newest)["hasMore"]), (vec![8, 9, 10, 11, 12], &json!(true)));
    let before = alice.call("message:history", json!({ "chatId": chat, "beforeSeq": 3 })).await;
    assert_eq!((seqs(data(&before)), &data(&before)["hasMore"]), (vec![1, 2], &json!(false)));
    let between = alice.call("message:history", json!({ "chatId": chat, "afterSeq": 4, "beforeSeq": 8 })).await;
    assert_eq!(seqs(data(&between)), vec![5, 6, 7]);
    let (status, page) = cluster
        .http(reqwest::Method::GET, &format!("/v1/chats/{chat}/messages?afterSeq=10&limit=1"), "alice", None)
        .await;
    assert_eq!((status, seqs(&page), &page["hasMore"]), (200, vec![11], &json!(true)));
    let m = &page["messages"][0];
    assert_eq!(
        (m["body"].as_str(), m["clientId"].as_str(), m["senderId"].as_str()),
        (Some("b11"), Some("c11"), Some("alice"))
    );
    for bad in ["limit=0", "limit=101", "limit=ten", "afterSeq=-1", "beforeSeq=1.5"] {
        let (status, body) =
            cluster.http(reqwest::Method::GET, &format!("/v1/chats/{chat}/messages?{bad}"), "alice", None).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("VALIDATION_ERROR")), "{bad}");
    }
    for bad in [
        json!({ "chatId": chat, "limit": 0 }),
        json!({ "chatId": chat, "limit": "10" }),
        json!({ "chatId": chat, "afterSeq": -2 }),
    ] {
        error(&alice.call("message:history", bad).await, "VALIDATION_ERROR");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_chats_api() {
    let cluster = Cluster::builder().build().await;
    let (status, chat) = cluster
        .http(
            reqwest::Method::POST,
            "/v1/chats",
            "alice",
            Some(json!({ "type": "group", "title": "Team", "memberIds": ["bob", "carol"] })),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(chat["type"], "group");
    assert_eq!(chat["title"], "Team");
    assert_eq!(chat["memberIds"], json!(["alice", "bob", "carol"]));
    assert_eq!(chat["adminIds"], json!(["alice"]));
    assert_eq!(chat["createdBy"], "alice");
    // A dm pair always gets the same chat: 201, then 200 with the same id.
    let (s1, dm1) = cluster
        .http(reqwest::Method::POST, "/v1/chats", "alice", Some(json!({ "type": "dm", "memberIds": ["bob"] })))
        .await;
    let (s2, dm2) = cluster
        .http(reqwest::Method::POST, "/v1/chats", "bob", Some(json!({ "type": "dm", "memberIds": ["alice"] })))
        .await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(dm1["id"], dm2["id"]);
    let (status, body) = cluster
        .http(reqwest::Method::POST, "/v1/chats", "alice", Some(json!({ "type": "dm", "memberIds": ["bob", "carol"] })))
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("VALIDATION_ERROR")));
    // Unread follows other people's messages.
    let id = chat["id"].as_str().unwrap();
    cluster
        .http(
            reqwest::Method::POST,
            &format!("/v1/chats/{id}/messages"),
            "bob",
            Some(json!({ "body": "1", "clientId": "1" })),
        )
        .await;
    cluster
        .http(
            reqwest::Method::POST,
            &format!("/v1/chats/{id}/messages"),
            "alice",
            Some(json!({ "body": "2", "clientId": "2" })),
        )
        .await;
    let (status, list) = cluster.http(reqwest::Method::GET, "/v1/chats", "alice", None).await;
    assert_eq!(status, 200);
    let chats = list["chats"].as_array().unwrap();
    assert_eq!(chats.len(), 2);
    let team = chats.iter().find(|c| c["id"] == id).unwrap();
    assert_eq!(
        (team["lastSeq"].as_u64(), team["lastReadSeq"].as_u64(), team["unread"].as_u64()),
        (Some(2), Some(0), Some(1))
    );
    // The most recently active chat comes first.
    assert_eq!(chats[0]["id"], id);
    let (status, one) = cluster.http(reqwest::Method::GET, &format!("/v1/chats/{id}"), "carol", None).await;
    assert_eq!((status, &one["id"]), (200, &json!(id)));
    let (status, body) = cluster.http(reqwest::Method::GET, "/v1/chats/nope", "alice", None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("NOT_FOUND")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_health_and_readiness() {
    let cluster = Cluster::builder().build().await;
    let http = reqwest::Client::new();
    let base = cluster.edge(0);
    let (status, body) =
        confab_tests::http_call(&http, reqwest::Method::GET, &format!("{base}/v1/chats"), None, None).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("UNAUTHORIZED")));
    assert!(body["correlationId"].as_str().is_some());
    let (status, _) =
        confab_tests::http_call(&http, reqwest::Method::GET, &format!("{base}/v1/chats"), Some("bad.token.here"), None)
            .await;
    assert_eq!(status, 401);
    let (status, body) = cluster.http(reqwest::Method::GET, "/v1/nothing", "alice", None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("NOT_FOUND")));
    let res = http.delete(format!("{base}/v1/chats")).bearer_auth(cluster.token("alice")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    let allow = res.headers().get("allow").unwrap().to_str().unwrap().to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "VALIDATION_ERROR");
    let big = json!({ "type": "group", "title": "x".repeat(1024 * 1024 + 10), "memberIds": [] });
    let (status, body) = cluster.http(reqwest::Method::POST, "/v1/chats", "alice", Some(big)).await;
    assert_eq!((status, body["error"].as_str()), (413, Some("VALIDATION_ERROR")));
    let res = http
        .post(format!("{base}/v1/chats"))
        .bearer_auth(cluster.token("alice"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    for path in ["/healthz", "/readyz"] {
        let res = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("confab_edge_sessions"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_chat_reaches_its_members_connected_sockets_on_every_edge() {
    let cluster = Cluster::builder().edges(2).build().await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob1 = cluster.connect(0, "bob").await;
    let mut bob2 = cluster.connect(1, "bob").await;
    let mut carol = cluster.connect(1, "carol").await;
    let chat = cluster.create_chat("alice", "group", &["bob"]).await;
    for c in [&mut alice, &mut bob1, &mut bob2] {
        let update = c.expect_event("chat:update", T).await;
        assert_eq!(update["chat"]["id"], chat);
        assert_eq!(update["chat"]["memberIds"], json!(["alice", "bob"]));
    }
    assert!(carol.next_event("chat:update", Duration::from_millis(200)).await.is_none());
    // Without reconnecting or joining, every device of every member receives.
    let ack = alice.call("message:send", json!({ "chatId": chat, "body": "welcome", "clientId": "w" })).await;
    data(&ack);
    for c in [&mut alice, &mut bob1, &mut bob2] {
        assert_eq!(c.expect_event("message:new", T).await["body"], "welcome");
    }
    assert!(carol.next_event("message:new", Duration::from_millis(200)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_the_session_lifecycle() {
    use confab_proto::v1::{presence_client::PresenceClient, GetPresenceRequest};
    // A short grace window; presence.rs checks the window itself.
    let cluster = Cluster::builder().presence_config(|c| c.offline_grace_ms = 200).build().await;
    let presence = PresenceClient::connect(cluster.presence_url.clone()).await.unwrap();
    let get = move |user: &str| {
        let req = GetPresenceRequest { user_id: user.to_string() };
        let mut p = presence.clone();
        async move { p.get(req).await.unwrap().into_inner() }
    };
    let never = get("alice").await;
    assert_eq!((never.status.as_str(), never.last_seen_ms), ("offline", None));
    let a1 = cluster.connect(0, "alice").await;
    let a2 = cluster.connect(0, "alice").await;
    confab_tests::wait_until(T, || {
        let f = get("alice");
        async move { f.await.status == "online" }
    })
    .await
    .expect("alice online");
    a1.disconnect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get("alice").await.status, "online", "one socket is still connected");
    a2.disconnect().await;
    confab_tests::wait_until(T, || {
        let f = get("alice");
        async move { f.await.status == "offline" }
    })
    .await
    .expect("alice offline after her last socket closed");
    assert!(get("alice").await.last_seen_ms.is_some());
}
