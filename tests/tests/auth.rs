//! The handshake (CONTRACT §2, §8.8): which token counts and the exact
//! CONNECT_ERROR a refused one gets.

use base64::Engine as _;
use confab_tests::client::{Client, ConnectError};
use confab_tests::{Cluster, SECRET};
use serde_json::{json, Value};

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn now() -> i64 {
    confab_common::time::now_ms() / 1000
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn refused(result: Result<Client, ConnectError>) -> String {
    match result {
        Err(ConnectError::Refused { message, data }) => {
            assert_eq!(message, "UNAUTHORIZED");
            assert_eq!(data["code"], "UNAUTHORIZED");
            data["reason"].as_str().unwrap().to_string()
        }
        Err(ConnectError::Io(e)) => panic!("expected CONNECT_ERROR, got {e}"),
        Ok(_) => panic!("expected CONNECT_ERROR, got a connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_name_their_reason() {
    let cluster = Cluster::builder().build().await;
    let url = cluster.edge(0);
    assert_eq!(refused(Client::connect(url, json!({})).await).await, "missing_token");
    assert_eq!(
        refused(Client::connect_with(url, "", None, None).await).await,
        "missing_token"
    );
    assert_eq!(
        refused(Client::connect(url, json!({ "token": "not.a.jwt" })).await).await,
        "invalid_token"
    );
    assert_eq!(
        refused(Client::connect(url, json!({ "token": 42 })).await).await,
        "invalid_token"
    );
    let expired = hs256(&json!({ "sub": "alice", "exp": now() - 5 }));
    assert_eq!(
        refused(Client::connect(url, json!({ "token": expired })).await).await,
        "expired_token"
    );
    let no_exp = hs256(&json!({ "sub": "alice" }));
    assert_eq!(
        refused(Client::connect(url, json!({ "token": no_exp })).await).await,
        "invalid_token"
    );
    let no_user = hs256(&json!({ "name": "x", "exp": now() + 60 }));
    assert_eq!(
        refused(Client::connect(url, json!({ "token": no_user })).await).await,
        "invalid_token"
    );
    let not_yet = hs256(&json!({ "sub": "alice", "exp": now() + 600, "nbf": now() + 300 }));
    assert_eq!(
        refused(Client::connect(url, json!({ "token": not_yet })).await).await,
        "invalid_token"
    );
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": "alice", "exp": now() + 60 }),
        &jsonwebtoken::EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    assert_eq!(
        refused(Client::connect(url, json!({ "token": other_key })).await).await,
        "invalid_token"
    );
    let none = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT" })),
        b64(&json!({ "sub": "alice", "exp": now() + 60 }))
    );
    assert_eq!(
        refused(Client::connect(url, json!({ "token": none })).await).await,
        "invalid_token"
    );
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({ "sub": "alice", "exp": now() + 60 }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        refused(Client::connect(url, json!({ "token": hs512 })).await).await,
        "invalid_token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_token_present_is_the_one_checked() {
    let cluster = Cluster::builder().build().await;
    let url = cluster.edge(0);
    let good = cluster.token("alice");
    // Header alone, query alone.
    let mut c = Client::connect_with(url, "", Some(json!({})), Some(&good))
        .await
        .unwrap();
    assert_eq!(
        c.expect_event("session:ready", std::time::Duration::from_secs(5)).await["userId"],
        "alice"
    );
    let mut c = Client::connect_with(url, &format!("&token={good}"), None, None)
        .await
        .unwrap();
    assert_eq!(
        c.expect_event("session:ready", std::time::Duration::from_secs(5)).await["userId"],
        "alice"
    );
    // A bad auth token is refused even with a good header and query.
    let r = Client::connect_with(
        url,
        &format!("&token={good}"),
        Some(json!({ "token": "bad" })),
        Some(&good),
    )
    .await;
    assert_eq!(refused(r).await, "invalid_token");
    // A bad header is refused even with a good query token.
    let r = Client::connect_with(url, &format!("&token={good}"), None, Some("bad")).await;
    assert_eq!(refused(r).await, "invalid_token");
    // `userId` stands in for a missing `sub`; `name` is optional.
    let t = hs256(&json!({ "userId": "bob", "name": "Bob", "exp": now() + 60 }));
    let mut c = Client::connect(url, json!({ "token": t })).await.unwrap();
    assert_eq!(
        c.expect_event("session:ready", std::time::Duration::from_secs(5)).await["userId"],
        "bob"
    );
}
