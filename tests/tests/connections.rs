//! Connections and requests (docs/operations.md): read deadlines and
//! early refusals, over raw sockets where the abuse is below HTTP.

use confab_tests::{token, Cluster};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(edge: &str) -> String {
    edge.trim_start_matches("http://").to_string()
}

/// Checks a contract error body: the code, a message, a correlation id.
fn contract_error(body: &Value, code: &str) {
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["correlationId"].as_str().is_some_and(|c| c.len() == 36), "{body}");
}

/// Reads until the server closes the connection (or `within` passes):
/// what it sent, and whether it closed.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// The status and JSON body of a raw HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Writes `bytes` one at a time, `every` apart, until done or the server
/// hangs up (in the background: the test watches the other side).
fn trickle(mut writer: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, every: Duration) {
    tokio::spawn(async move {
        for b in bytes {
            tokio::time::sleep(every).await;
            if writer.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_are_cut_off() {
    let cluster = Cluster::builder().edge_config(|c| c.header_timeout_ms = 300).build().await;
    let stream = TcpStream::connect(addr(cluster.edge(0))).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    trickle(writer, b"X-Slow: ".iter().copied().cycle().take(200).collect(), Duration::from_millis(50));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => {}
            Err(_) => break false,
        }
    };
    assert!(closed, "a request whose headers trickle in was kept open");
    // Everyone else is served as before.
    let (status, body) = confab_tests::http_call(
        &reqwest::Client::new(),
        reqwest::Method::GET,
        &format!("{}/healthz", cluster.edge(0)),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_and_the_connection_closes() {
    let cluster = Cluster::builder().edge_config(|c| c.body_timeout_ms = 400).build().await;
    let stream = TcpStream::connect(addr(cluster.edge(0))).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /v1/chats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        token("alice")
    );
    writer.write_all(head.as_bytes()).await.expect("write");
    trickle(writer, vec![b' '; 99], Duration::from_millis(50));
    let started = Instant::now();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), reader.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "a trickled body was waited for past its deadline");
    let (status, body) = parse_response(&raw);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&raw));
    contract_error(&body, "VALIDATION_ERROR");
    assert!(started.elapsed() >= Duration::from_millis(350), "answered before the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let cluster = Cluster::builder().build().await;
    let mut stream = TcpStream::connect(addr(cluster.edge(0))).await.expect("connect");
    let head = format!(
        "POST /v1/chats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        token("alice"),
        2 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    // Not a byte of the body is sent.
    let (raw, closed) = read_to_close(&mut stream, Duration::from_secs(2)).await;
    let (status, body) = parse_response(&raw);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&raw));
    contract_error(&body, "VALIDATION_ERROR");
    assert!(closed, "the connection, whose body was not read, is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_or_query_that_does_not_decode_gets_the_json_error() {
    let cluster = Cluster::builder().build().await;
    for path in ["/v1/chats/%FF", "/v1/chats/%C3%28/messages", "/v1/chats/c1/messages?limit=%FF"] {
        let (status, body) = cluster.http(reqwest::Method::GET, path, "alice", None).await;
        assert_eq!(status, 400, "{path}: {body}");
        contract_error(&body, "VALIDATION_ERROR");
    }
}
