//! The edges of the handshake: a token at its `exp`, a `crit` header, and
//! what a CONNECT_ERROR says when a backend is down (nothing of its wiring).

use confab_tests::client::{Client, ConnectError};
use confab_tests::{wait_until, Cluster, SECRET};
use serde_json::{json, Value};
use std::time::Duration;

fn now() -> i64 {
    confab_common::time::now_ms() / 1000
}

fn signed(header: &jsonwebtoken::Header, claims: &Value) -> String {
    jsonwebtoken::encode(header, claims, &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// The CONNECT_ERROR of a refused handshake: its message and data.
fn refusal(result: Result<Client, ConnectError>) -> (String, Value) {
    match result {
        Err(ConnectError::Refused { message, data }) => (message, data),
        Err(ConnectError::Io(e)) => panic!("expected CONNECT_ERROR, got {e}"),
        Ok(_) => panic!("expected CONNECT_ERROR, got a connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_refused_at_its_exp_and_with_a_crit_header() {
    let cluster = Cluster::builder().build().await;
    let url = cluster.edge(0);
    let hs256 = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    // exp == now: expired already (the leeway is 0 s).
    let at_exp = signed(&hs256, &json!({ "sub": "alice", "exp": now() }));
    let (_, data) = refusal(Client::connect(url, json!({ "token": at_exp })).await);
    assert_eq!(data["reason"], "expired_token", "{data}");
    let http = reqwest::Client::new();
    let chats = format!("{url}/v1/chats");
    let (status, _) = confab_tests::http_call(&http, reqwest::Method::GET, &chats, Some(&at_exp), None).await;
    assert_eq!(status, 401);

    // A critical header parameter we do not understand refuses the token.
    let mut crit = hs256.clone();
    crit.crit = Some(vec!["exp".into()]);
    let token = signed(&crit, &json!({ "sub": "alice", "exp": now() + 60 }));
    let (_, data) = refusal(Client::connect(url, json!({ "token": token })).await);
    assert_eq!(data["reason"], "invalid_token", "{data}");
    let (status, _) = confab_tests::http_call(&http, reqwest::Method::GET, &chats, Some(&token), None).await;
    assert_eq!(status, 401);
    // Without it, the same claims are fine.
    let token = signed(&hs256, &json!({ "sub": "alice", "exp": now() + 60 }));
    assert!(Client::connect(url, json!({ "token": token })).await.is_ok());
}

/// An edge whose store is unreachable refuses a good token with
/// UNAVAILABLE, and the client learns nothing of the transport error (it
/// said "tcp connect error" and the address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_error_for_a_backend_down_says_unavailable_and_no_more() {
    let cluster = Cluster::builder().build().await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_store = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = confab_edge::Config::for_test(
        cluster.routers.clone(),
        dead_store.clone(),
        cluster.presence_url.clone(),
        SECRET.into(),
    );
    config.request_timeout_ms = 2000;
    let shutdown = confab_common::Shutdown::new();
    let edge = confab_edge::run(config, listener, shutdown.clone());
    shutdown.spawn(async move { edge.await.expect("edge") });
    let http = reqwest::Client::new();
    let ready = format!("{url}/readyz");
    wait_until(Duration::from_secs(10), || {
        let (http, ready) = (http.clone(), ready.clone());
        async move { matches!(http.get(&ready).send().await, Ok(r) if r.status() == 200) }
    })
    .await
    .expect("the edge became ready");

    let (message, data) = refusal(Client::connect(&url, json!({ "token": cluster.token("alice") })).await);
    assert_eq!(message, "UNAVAILABLE");
    assert_eq!(data["code"], "UNAVAILABLE", "{data}");
    assert_eq!(data["reason"], "service_unavailable", "{data}");
    assert_eq!(data["correlationId"].as_str().map(str::len), Some(36), "{data}");
    let text = data.to_string();
    let port = dead_store.rsplit(':').next().unwrap();
    for internal in ["tcp", "connect error", "store", "127.0.0.1", port] {
        assert!(!text.contains(internal), "{internal:?} leaked: {text}");
    }
    shutdown.trigger();
}
