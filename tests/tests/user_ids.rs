//! User ids (docs/operations.md "User ids"): what a token's `sub` and the
//! ids a client names may hold, and that two pairs of users never share a
//! DM, whatever their ids.

use confab_api::store::{NewChat, Store};
use confab_store::EmbeddedStore;
use confab_tests::client::{Client, ConnectError};
use confab_tests::{error, Cluster, SECRET};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn token(sub: &str) -> String {
    let exp = confab_common::time::now_ms() / 1000 + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": sub, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A 400 VALIDATION_ERROR whose message names `field`.
fn names(status: u16, body: &Value, field: &str) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "VALIDATION_ERROR", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.starts_with(field)), "{field}: {body}");
}

/// The first format of the DM index joined the two ids with a newline:
/// `v` asking for a DM with `"w\nz"` got the DM of `"v\nw"` and `z`, its id
/// and members, and could post in it. Now the id is refused, nothing of the
/// other DM shows, and the pair `"v\nw"` can no longer sign in at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newline_in_an_id_reaches_no_one_elses_dm() {
    let data = tempfile::tempdir().unwrap();
    // The DM of "v\nw" and z, made while such ids were let in.
    let store = EmbeddedStore::open(data.path()).unwrap();
    let new =
        NewChat { kind: "dm".into(), title: None, created_by: "z".into(), member_ids: vec!["z".into(), "v\nw".into()] };
    let (theirs, _) = store.create_chat(new).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    // Its writer thread lets go of the file (redb's lock) just after.
    let file = std::fs::File::open(data.path().join("confab.redb")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while file.try_lock().is_err() {
        assert!(Instant::now() < deadline, "the store never let go of its file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(file);

    let cluster = Cluster::builder().data_dir(data.path()).build().await;
    let body = json!({ "type": "dm", "memberIds": ["w\nz"] });
    let (status, answer) = cluster.http(Method::POST, "/v1/chats", "v", Some(body)).await;
    names(status, &answer, "memberIds[0]");
    assert!(!answer.to_string().contains(&theirs.id), "{answer}");

    // The old id cannot sign in: 401 over HTTP, invalid_token on a socket.
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chats", cluster.edge(0));
    let (status, answer) = confab_tests::http_call(&http, Method::GET, &url, Some(&token("v\nw")), None).await;
    assert_eq!((status, answer["error"].as_str()), (401, Some("UNAUTHORIZED")), "{answer}");
    match Client::connect(cluster.edge(0), json!({ "token": token("v\nw") })).await {
        Err(ConnectError::Refused { message, data }) => {
            assert_eq!((message.as_str(), data["reason"].as_str()), ("UNAUTHORIZED", Some("invalid_token")));
        }
        Err(ConnectError::Io(e)) => panic!("expected CONNECT_ERROR, got {e}"),
        Ok(_) => panic!("a newline in sub was let in"),
    }

    // z still has only that DM; a real pair still gets one DM, either way round.
    let (_, chats) = cluster.http(Method::GET, "/v1/chats", "z", None).await;
    let ids: Vec<&str> = chats["chats"].as_array().unwrap().iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, [theirs.id.as_str()]);
    let (status, first) =
        cluster.http(Method::POST, "/v1/chats", "v", Some(json!({ "type": "dm", "memberIds": ["w"] }))).await;
    assert_eq!(status, 201, "{first}");
    let (status, again) =
        cluster.http(Method::POST, "/v1/chats", "w", Some(json!({ "type": "dm", "memberIds": ["v"] }))).await;
    assert_eq!((status, &again["id"]), (200, &first["id"]), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_in_payloads_and_paths_follow_the_rule() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &["bob", "Zoë Smith", "user@example.com"]).await;
    let long = "x".repeat(129);
    for (ids, field) in [
        (json!(["bob", " "]), "memberIds[1]"),
        (json!(["a\u{0}"]), "memberIds[0]"),
        (json!(["x\ty"]), "memberIds[0]"),
        (json!([" bob"]), "memberIds[0]"),
        (json!(["bob", "carol", long]), "memberIds[2]"),
        (json!([""]), "memberIds[0]"),
    ] {
        let body = json!({ "type": "group", "memberIds": ids });
        let (status, answer) = cluster.http(Method::POST, "/v1/chats", "alice", Some(body)).await;
        names(status, &answer, field);
    }
    let members = format!("/v1/chats/{chat}/members");
    let (status, answer) =
        cluster.http(Method::POST, &members, "alice", Some(json!({ "userIds": ["carol", "dave\n"] }))).await;
    names(status, &answer, "userIds[1]");
    let (status, answer) =
        cluster.http(Method::PATCH, &format!("{members}/%0A"), "alice", Some(json!({ "role": "admin" }))).await;
    names(status, &answer, "userId");
    let (status, answer) = cluster.http(Method::DELETE, &format!("{members}/%20"), "alice", None).await;
    names(status, &answer, "userId");
    let (status, answer) = cluster.http(Method::GET, "/v1/users/%00/presence", "alice", None).await;
    names(status, &answer, "userId");
    // Nothing changed: the chat has its four members.
    let (_, got) = cluster.http(Method::GET, &format!("/v1/chats/{chat}"), "alice", None).await;
    assert_eq!(got["memberIds"].as_array().map(Vec::len), Some(4), "{got}");

    let mut alice = cluster.connect(0, "alice").await;
    for event in ["presence:subscribe", "presence:unsubscribe"] {
        let ack = alice.call(event, json!({ "userIds": ["bob", "carol\r"] })).await;
        error(&ack, "VALIDATION_ERROR");
        assert!(ack["message"].as_str().unwrap().starts_with("userIds[1]"), "{ack}");
    }
    let ack = alice.call("presence:subscribe", json!({ "userIds": ["bob", "Zoë Smith"] })).await;
    assert_eq!(ack["ok"], true, "{ack}");

    // Tokens: blank, padded, NUL or too long `sub` is an invalid token.
    for sub in [" ", "   ", " alice", "alice\u{0}", "\u{85}", long.as_str()] {
        match Client::connect(cluster.edge(0), json!({ "token": token(sub) })).await {
            Err(ConnectError::Refused { data, .. }) => assert_eq!(data["reason"], "invalid_token", "{sub:?}"),
            other => panic!("{sub:?}: expected CONNECT_ERROR, got {:?}", other.map(|c| c.sid)),
        }
    }
}
