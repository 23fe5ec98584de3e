//! The handshake (CONTRACT §2, §8.8): which token counts and the exact
//! CONNECT_ERROR a refused one gets.

use base64::Engine as _;
use confab_tests::client::{Client, ConnectError};
use confab_tests::redis::RedisServer;
use confab_tests::{on_both_backends, Cluster, SECRET};
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
    assert_eq!(refused(Client::connect_with(url, "", None, None).await).await, "missing_token");
    assert_eq!(refused(Client::connect(url, json!({ "token": "not.a.jwt" })).await).await, "invalid_token");
    assert_eq!(refused(Client::connect(url, json!({ "token": 42 })).await).await, "invalid_token");
    let expired = hs256(&json!({ "sub": "alice", "exp": now() - 5 }));
    assert_eq!(refused(Client::connect(url, json!({ "token": expired })).await).await, "expired_token");
    let no_exp = hs256(&json!({ "sub": "alice" }));
    assert_eq!(refused(Client::connect(url, json!({ "token": no_exp })).await).await, "invalid_token");
    let no_user = hs256(&json!({ "name": "x", "exp": now() + 60 }));
    assert_eq!(refused(Client::connect(url, json!({ "token": no_user })).await).await, "invalid_token");
    let not_yet = hs256(&json!({ "sub": "alice", "exp": now() + 600, "nbf": now() + 300 }));
    assert_eq!(refused(Client::connect(url, json!({ "token": not_yet })).await).await, "invalid_token");
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": "alice", "exp": now() + 60 }),
        &jsonwebtoken::EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    assert_eq!(refused(Client::connect(url, json!({ "token": other_key })).await).await, "invalid_token");
    let none = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT" })),
        b64(&json!({ "sub": "alice", "exp": now() + 60 }))
    );
    assert_eq!(refused(Client::connect(url, json!({ "token": none })).await).await, "invalid_token");
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({ "sub": "alice", "exp": now() + 60 }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(refused(Client::connect(url, json!({ "token": hs512 })).await).await, "invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_token_present_is_the_one_checked() {
    let cluster = Cluster::builder().build().await;
    let url = cluster.edge(0);
    let good = cluster.token("alice");
    // Header alone, query alone.
    let mut c = Client::connect_with(url, "", Some(json!({})), Some(&good)).await.unwrap();
    assert_eq!(c.expect_event("session:ready", std::time::Duration::from_secs(5)).await["userId"], "alice");
    let mut c = Client::connect_with(url, &format!("&token={good}"), None, None).await.unwrap();
    assert_eq!(c.expect_event("session:ready", std::time::Duration::from_secs(5)).await["userId"], "alice");
    // A bad auth token is refused even with a good header and query.
    let r = Client::connect_with(url, &format!("&token={good}"), Some(json!({ "token": "bad" })), Some(&good)).await;
    assert_eq!(refused(r).await, "invalid_token");
    // A bad header is refused even with a good query token.
    let r = Client::connect_with(url, &format!("&token={good}"), None, Some("bad")).await;
    assert_eq!(refused(r).await, "invalid_token");
    // `userId` stands in for a missing `sub`; `name` is optional.
    let t = hs256(&json!({ "userId": "bob", "name": "Bob", "exp": now() + 60 }));
    let mut c = Client::connect(url, json!({ "token": t })).await.unwrap();
    assert_eq!(c.expect_event("session:ready", std::time::Duration::from_secs(5)).await["userId"], "bob");
}

fn fixture(name: &str) -> std::path::PathBuf {
    confab_tests::repo_root().join("tests/fixtures").join(name)
}

fn signed(alg: jsonwebtoken::Algorithm, private_pem: &str, claims: &Value) -> String {
    let pem = std::fs::read(fixture(private_pem)).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, &key).unwrap()
}

async fn accepted(url: &str, token: &str) -> String {
    let mut c = Client::connect(url, json!({ "token": token })).await.unwrap_or_else(|e| panic!("refused: {e:?}"));
    let ready = c.expect_event("session:ready", std::time::Duration::from_secs(5)).await;
    ready["userId"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_with_a_public_key() {
    use jsonwebtoken::Algorithm::{ES256, HS256, RS256};
    let claims = json!({ "sub": "alice", "exp": now() + 60 });
    // RS256 only: no shared secret configured.
    let rs = Cluster::builder()
        .edge_config(|c| {
            c.jwt_secret = None;
            c.jwt_public_key_file = Some(fixture("rs256-public.pem"));
        })
        .build()
        .await;
    assert_eq!(accepted(rs.edge(0), &signed(RS256, "rs256-private.pem", &claims)).await, "alice");
    // An HS256 token whose "secret" is the RS public key is refused.
    let public = std::fs::read(fixture("rs256-public.pem")).unwrap();
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_eq!(refused(Client::connect(rs.edge(0), json!({ "token": confused })).await).await, "invalid_token");
    let es_token = signed(ES256, "es256-private.pem", &claims);
    assert_eq!(refused(Client::connect(rs.edge(0), json!({ "token": es_token })).await).await, "invalid_token");
    assert_eq!(refused(Client::connect(rs.edge(0), json!({ "token": hs256(&claims) })).await).await, "invalid_token");
    let expired = signed(RS256, "rs256-private.pem", &json!({ "sub": "alice", "exp": now() - 5 }));
    assert_eq!(refused(Client::connect(rs.edge(0), json!({ "token": expired })).await).await, "expired_token");

    // ES256 beside the HS256 secret.
    let es =
        Cluster::builder().edge_config(|c| c.jwt_public_key_file = Some(fixture("es256-public.pem"))).build().await;
    assert_eq!(accepted(es.edge(0), &es_token).await, "alice");
    assert_eq!(accepted(es.edge(0), &hs256(&claims)).await, "alice");
    let rs_token = signed(RS256, "rs256-private.pem", &claims);
    assert_eq!(refused(Client::connect(es.edge(0), json!({ "token": rs_token })).await).await, "invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_checked_when_configured() {
    let cluster = Cluster::builder()
        .edge_config(|c| {
            c.jwt_issuer = Some("https://auth.example".into());
            c.jwt_audience = Some("confab".into());
        })
        .build()
        .await;
    let url = cluster.edge(0);
    let good = hs256(&json!({ "sub": "alice", "exp": now() + 60, "iss": "https://auth.example", "aud": "confab" }));
    assert_eq!(accepted(url, &good).await, "alice");
    for claims in [
        json!({ "sub": "alice", "exp": now() + 60, "aud": "confab" }),
        json!({ "sub": "alice", "exp": now() + 60, "iss": "https://evil.example", "aud": "confab" }),
        json!({ "sub": "alice", "exp": now() + 60, "iss": "https://auth.example" }),
        json!({ "sub": "alice", "exp": now() + 60, "iss": "https://auth.example", "aud": "other" }),
    ] {
        assert_eq!(
            refused(Client::connect(url, json!({ "token": hs256(&claims) })).await).await,
            "invalid_token",
            "{claims}"
        );
    }
}

on_both_backends!(
    an_expiring_session_is_told_and_closed_unless_refreshed,
    an_expiring_session_is_told_and_closed_unless_refreshed_on_redis,
    expiring_session
);
/// The session's close reaches presence like any other: a watcher sees the
/// expired user go offline after the grace window, the refreshed one not.
async fn expiring_session(redis: Option<&RedisServer>) {
    use std::time::{Duration, Instant};
    let cluster = Cluster::builder()
        .presence_on(redis)
        .presence_config(|c| c.offline_grace_ms = 300)
        .edge_config(|c| c.expiry_check_ms = 200)
        .build()
        .await;
    cluster.create_chat("carol", "group", &["alice", "bob"]).await;
    let mut carol = cluster.connect(0, "carol").await;
    let url = cluster.edge(0);
    let short = |user: &str, secs: i64| hs256(&json!({ "sub": user, "exp": now() + secs }));
    let mut expiring = Client::connect(url, json!({ "token": short("alice", 2) })).await.unwrap();
    let mut refreshed = Client::connect(url, json!({ "token": short("bob", 2) })).await.unwrap();
    let started = Instant::now();

    // Refresh errors leave the session as it was.
    let ack = refreshed.call("auth:refresh", json!({})).await;
    assert_eq!(ack["error"], "VALIDATION_ERROR", "{ack}");
    let ack = refreshed.call("auth:refresh", json!({ "token": 5 })).await;
    assert_eq!(ack["error"], "VALIDATION_ERROR", "{ack}");
    let ack = refreshed.call("auth:refresh", json!({ "token": "garbage" })).await;
    assert_eq!(ack["error"], "UNAUTHORIZED", "{ack}");
    let ack = refreshed.call("auth:refresh", json!({ "token": short("mallory", 3600) })).await;
    assert_eq!(ack["error"], "UNAUTHORIZED", "{ack}");
    let longer = short("bob", 3600);
    let ack = refreshed.call("auth:refresh", json!({ "token": longer })).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let exp = confab_common::time::parse_iso8601(ack["data"]["expiresAt"].as_str().unwrap()).unwrap();
    assert!((exp / 1000 - (now() + 3600)).abs() <= 2);

    let snap = carol.call("presence:subscribe", json!({ "userIds": ["alice", "bob"] })).await;
    let statuses = |snap: &Value| {
        snap["data"]["presence"].as_array().map(|all| all.iter().map(|p| p["status"].clone()).collect::<Vec<_>>())
    };
    assert_eq!(statuses(&snap), Some(vec![json!("online"), json!("online")]), "{snap}");

    expiring.expect_event("session:expired", Duration::from_secs(6)).await;
    assert!(expiring.closed_within(Duration::from_secs(3)).await);
    assert!(started.elapsed() < Duration::from_secs(2 + 5 + 1), "closed within 5 s of expiry");
    let offline = carol.expect_event("presence:update", Duration::from_secs(3)).await;
    assert_eq!((offline["userId"].as_str(), offline["status"].as_str()), (Some("alice"), Some("offline")), "{offline}");
    // The refreshed session lives on.
    assert!(refreshed.next_event("session:expired", Duration::from_millis(1500)).await.is_none());
    let ack = refreshed.call("room:leave", json!({ "chatId": "x" })).await;
    assert_eq!(ack["ok"], true);
    let snap = carol.call("presence:subscribe", json!({ "userIds": ["alice", "bob"] })).await;
    assert_eq!(statuses(&snap), Some(vec![json!("offline"), json!("online")]), "{snap}");
}
