//! Connections and requests (docs/operations.md): what a client may hold
//! and for how long before it says who it is, caps per IP and per user,
//! read deadlines, early refusals, and draining at shutdown. Raw sockets
//! where the abuse is below Socket.IO.

use confab_tests::client::{Client, ConnectError};
use confab_tests::{process, token, wait_until, Cluster};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Ws};

type RawWs = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

fn addr(edge: &str) -> String {
    edge.trim_start_matches("http://").to_string()
}

/// Opens a direct Engine.IO WebSocket (no Socket.IO CONNECT), optionally
/// with an `X-Forwarded-For`; a refused handshake gives its status and
/// JSON body.
async fn open_ws(edge: &str, forwarded_for: Option<&str>) -> Result<RawWs, (u16, Value)> {
    let url = format!("{}/socket.io/?EIO=4&transport=websocket", edge.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().expect("request");
    if let Some(x) = forwarded_for {
        req.headers_mut().insert("x-forwarded-for", x.parse().expect("header"));
    }
    match tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(req)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(WsError::Http(res))) => {
            let body = res.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
            Err((res.status().as_u16(), body))
        }
        other => panic!("WebSocket handshake failed: {other:?}"),
    }
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
async fn a_connection_that_never_sends_connect_is_closed() {
    let cluster = Cluster::builder()
        .edge_config(|c| {
            c.connect_timeout_ms = 400;
            c.ping_interval_ms = 100;
            // Far beyond the deadline: only the deadline closes these.
            c.ping_timeout_ms = 10_000;
        })
        .build()
        .await;
    let mut alice = cluster.connect(0, "alice").await;

    // A direct WebSocket that answers every ping but never sends CONNECT.
    let started = Instant::now();
    let mut ws = open_ws(cluster.edge(0), None).await.expect("handshake");
    let mut pongs = 0;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Ws::Text(t) if t.as_str() == "2" => {
                    pongs += 1;
                    if ws.send(Ws::text("3")).await.is_err() {
                        break;
                    }
                }
                Ws::Close(_) => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a WebSocket without CONNECT was kept past its deadline");
    assert!(pongs >= 1, "the heartbeat ran while the socket waited");
    assert!(started.elapsed() >= Duration::from_millis(350), "closed before its deadline: {:?}", started.elapsed());

    // A polling session, heartbeat answered, never sending CONNECT.
    let http = reqwest::Client::new();
    let base = format!("{}/socket.io/?EIO=4&transport=polling", cluster.edge(0));
    let open = http.get(&base).send().await.expect("polling open").text().await.expect("body");
    let open: Value = serde_json::from_str(open.trim_start_matches('0')).expect("open packet");
    let sid = open["sid"].as_str().expect("sid").to_string();
    let url = format!("{base}&sid={sid}");
    let ended = wait_until(Duration::from_secs(5), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let Ok(res) = http.get(&url).timeout(Duration::from_secs(2)).send().await else { return false };
            if res.status() != 200 {
                return true; // the session is gone
            }
            let body = res.text().await.unwrap_or_default();
            if body.split('\u{1e}').any(|p| p == "1") {
                return true; // the server closed it
            }
            if body.split('\u{1e}').any(|p| p == "2") {
                let _ = http.post(&url).body("3").send().await;
            }
            false
        }
    })
    .await;
    assert!(ended.is_ok(), "a polling session without CONNECT was kept past its deadline");

    // A socket that did CONNECT stays.
    let ack = alice.call("presence:ping", json!({})).await;
    assert_eq!(ack["ok"], true, "{ack}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_cap_of_connections() {
    let cluster = Cluster::builder().edge_config(|c| c.max_connections_per_ip = 3).build().await;
    let mut first = Some(cluster.connect(0, "alice").await);
    let _held =
        [open_ws(cluster.edge(0), None).await.expect("2nd"), open_ws(cluster.edge(0), None).await.expect("3rd")];
    // Without a trusted proxy, X-Forwarded-For is the client's own claim.
    let (status, body) = open_ws(cluster.edge(0), Some("203.0.113.9")).await.expect_err("over the cap");
    assert_eq!(status, 429, "{body}");
    contract_error(&body, "RATE_LIMITED");
    assert!(body["data"]["retryAfterMs"].as_u64().is_some(), "{body}");
    // A polling handshake counts the same, and gets a Retry-After.
    let res = reqwest::get(format!("{}/socket.io/?EIO=4&transport=polling", cluster.edge(0))).await.expect("poll");
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_some());
    contract_error(&res.json::<Value>().await.expect("json"), "RATE_LIMITED");
    // The HTTP API is not a socket.
    let (status, _) = cluster.http(reqwest::Method::GET, "/v1/chats", "alice", None).await;
    assert_eq!(status, 200);
    let metrics = reqwest::get(format!("{}/metrics", cluster.edge(0))).await.expect("metrics").text().await;
    assert!(metrics.expect("text").contains("confab_edge_refused_total{reason=\"per_ip\"} 2\n"));
    // A closed connection gives its slot back.
    if let Some(c) = first.take() {
        c.disconnect().await;
    }
    assert!(admits_again(cluster.edge(0), "bob").await, "the slot of a closed connection was not given back");
}

/// A polling session holds its slot as long as engineioxide keeps it, and
/// gives it back when it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_polling_session_gives_its_slot_back() {
    let cluster = Cluster::builder().edge_config(|c| c.max_connections_per_ip = 1).build().await;
    let http = reqwest::Client::new();
    let base = format!("{}/socket.io/?EIO=4&transport=polling", cluster.edge(0));
    let open = http.get(&base).send().await.expect("polling open").text().await.expect("body");
    let open: Value = serde_json::from_str(open.trim_start_matches('0')).expect("open packet");
    let sid = open["sid"].as_str().expect("sid");
    let (status, _) = open_ws(cluster.edge(0), None).await.expect_err("the polling session holds the slot");
    assert_eq!(status, 429);
    // The Engine.IO close packet ends the session.
    let res = http.post(format!("{base}&sid={sid}")).body("1").send().await.expect("close");
    assert_eq!(res.status(), 200);
    let edge = cluster.edge(0).to_string();
    let reopened = wait_until(Duration::from_secs(5), || {
        let edge = edge.clone();
        async move { open_ws(&edge, None).await.is_ok() }
    })
    .await;
    assert!(reopened.is_ok(), "the slot of a closed polling session was not given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_address_is_the_client() {
    let cluster = Cluster::builder()
        .edge_config(|c| {
            c.max_connections_per_ip = 1;
            c.trusted_proxy_hops = 1;
        })
        .build()
        .await;
    let _a = open_ws(cluster.edge(0), Some("203.0.113.1")).await.expect("first client");
    let _b = open_ws(cluster.edge(0), Some("203.0.113.2")).await.expect("another client, same proxy");
    let (status, _) = open_ws(cluster.edge(0), Some("203.0.113.1")).await.expect_err("same client again");
    assert_eq!(status, 429);
    // Entries left of the trusted hop are the client's words: ignored.
    let (status, body) = open_ws(cluster.edge(0), Some("198.51.100.7, 203.0.113.1")).await.expect_err("spoofed");
    assert_eq!(status, 429, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_holds_at_most_its_cap_of_sessions() {
    let cluster = Cluster::builder().edge_config(|c| c.max_sessions_per_user = 2).build().await;
    let first = cluster.connect(0, "alice").await;
    let _second = cluster.connect(0, "alice").await;
    match Client::connect(cluster.edge(0), json!({ "token": token("alice") })).await {
        Err(ConnectError::Refused { message, data }) => {
            assert_eq!(message, "RATE_LIMITED");
            assert_eq!(data["code"], "RATE_LIMITED", "{data}");
            assert!(data["reason"].as_str().is_some_and(|r| !r.is_empty()), "{data}");
            assert!(data["retryAfterMs"].as_u64().is_some(), "{data}");
        }
        Err(other) => panic!("expected a CONNECT_ERROR, got {other:?}"),
        Ok(_) => panic!("a third session of alice was accepted"),
    }
    // Other users are not affected.
    let _bob = cluster.connect(0, "bob").await;
    first.disconnect().await;
    assert!(admits_again(cluster.edge(0), "alice").await, "the slot of a closed session was not given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_answers_every_send_and_closes_every_socket() {
    let window = Duration::from_millis(1500);
    let built = std::sync::atomic::AtomicUsize::new(0);
    let mut cluster = Cluster::builder()
        .edges(2)
        .dead_routers(1)
        // The dead router keeps owning its chats: a send there waits.
        .router_config(|c| c.detect_ms = 600_000)
        .edge_config(move |c| {
            c.detect_ms = 600_000;
            c.drain_ms = window.as_millis() as u64;
            // Edge 0 (drained) waits long for routers; edge 1 (chat
            // set-up) gives up on the dead one soon.
            let first = built.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
            c.request_timeout_ms = if first { 20_000 } else { 500 };
        })
        .build()
        .await;
    let ring = confab_api::placement::Ring::new(cluster.routers.clone());
    let dead = cluster.routers.last().expect("routers").clone();
    // A chat of the live router for alice and bob (made by someone else
    // until one lands there, then joined), and a chat id the dead one owns.
    let http = reqwest::Client::new();
    let mut on_live = None;
    for _ in 0..40 {
        let url = format!("{}/v1/chats", cluster.edge(1));
        let body = json!({ "type": "group", "title": "t", "memberIds": [] });
        let (_, chat) =
            confab_tests::http_call(&http, reqwest::Method::POST, &url, Some(&token("zed")), Some(body)).await;
        let id = chat["id"].as_str().expect("chat id").to_string();
        if ring.owner(&id.as_str().into()) != Some(dead.as_str()) {
            on_live = Some(id);
            break;
        }
    }
    let on_live = on_live.expect("a chat on the live router");
    let url = format!("{}/v1/chats/{on_live}/members", cluster.edge(1));
    let body = json!({ "userIds": ["alice", "bob"] });
    let (status, _) =
        confab_tests::http_call(&http, reqwest::Method::POST, &url, Some(&token("zed")), Some(body)).await;
    assert_eq!(status, 200);
    let on_dead = (0..)
        .map(|i| format!("ghost-{i}"))
        .find(|id| ring.owner(&id.as_str().into()) == Some(dead.as_str()))
        .expect("a dead chat id");

    // A send in flight (its router does not answer), and the server has read it.
    let mut stuck = cluster.connect(0, "alice").await;
    let in_flight =
        stuck.start_call("message:send", json!({ "chatId": on_dead, "body": "x", "clientId": "stuck" })).await;
    assert_eq!(stuck.call("presence:ping", json!({})).await["ok"], true);
    // A client sending continuously, and an idle one.
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(0, "bob").await;
    let sender = tokio::spawn(async move {
        // (the ack, or none once the socket closed; how long it took)
        let mut acks: Vec<(Option<Value>, Duration)> = Vec::new();
        for i in 0.. {
            let body = json!({ "chatId": on_live, "body": format!("m{i}"), "clientId": format!("c{i}") });
            let sent = Instant::now();
            let ack = alice.try_call("message:send", body, Duration::from_secs(30)).await;
            let closed = ack.is_none();
            acks.push((ack, sent.elapsed()));
            if closed {
                break;
            }
        }
        acks
    });
    for _ in 0..3 {
        bob.expect_event("message:new", Duration::from_secs(5)).await;
    }

    let stopped = Instant::now();
    let run = cluster.stop_edge(0);
    let ack = tokio::time::timeout(window, in_flight)
        .await
        .expect("the send in flight was not answered within the drain window")
        .expect("the send in flight got no ack");
    confab_tests::error(&ack, "UNAVAILABLE");
    let acks = tokio::time::timeout(window + Duration::from_secs(1), sender)
        .await
        .expect("the sender's socket was not closed within the drain window")
        .expect("sender");
    for c in [&mut stuck, &mut bob] {
        assert!(c.closed_within(window).await, "a socket was not closed");
    }
    assert!(stopped.elapsed() <= window + Duration::from_millis(500), "closed after {:?}", stopped.elapsed());
    tokio::time::timeout(window, run).await.expect("the edge's run did not end in time").expect("run");
    assert!(stopped.elapsed() <= window + Duration::from_secs(1), "the edge ended after {:?}", stopped.elapsed());
    // Every send was answered, ok or UNAVAILABLE, promptly; only the last
    // one, written as the socket closed, may have gone unread.
    let (_, answered) = acks.split_last().expect("sends");
    assert!(answered.len() >= 3, "the client was sending: {acks:?}");
    for (ack, took) in answered {
        let ack = ack.as_ref().expect("an ack");
        if ack["ok"] != true {
            confab_tests::error(ack, "UNAVAILABLE");
        }
        assert!(*took < window, "a send waited {took:?} for its ack");
    }
}

/// SIGTERM on a `confab dev` process while a client is sending: every send
/// is answered, the socket closes and the process exits, within the
/// drain window (and not the 10 s of old).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_process_within_the_window() {
    let window = Duration::from_millis(1500);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = process::command(&["dev"], dir.path()).expect("confab binary");
    command.env("CONFAB_DRAIN_MS", window.as_millis().to_string());
    let (mut child, url) = process::start_dev(command).await.expect("confab dev");
    let http = reqwest::Client::new();
    let body = json!({ "type": "group", "memberIds": ["bob"] });
    let (status, chat) = confab_tests::http_call(
        &http,
        reqwest::Method::POST,
        &format!("{url}/v1/chats"),
        Some(&token("alice")),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{chat}");
    let chat_id = chat["id"].as_str().expect("chat id").to_string();
    let mut alice = Client::connect(&url, json!({ "token": token("alice") })).await.expect("connect");
    let sender = tokio::spawn(async move {
        let mut acks: Vec<(Option<Value>, Duration)> = Vec::new();
        for i in 0.. {
            let body = json!({ "chatId": chat_id, "body": format!("m{i}"), "clientId": format!("c{i}") });
            let sent = Instant::now();
            let ack = alice.try_call("message:send", body, Duration::from_secs(30)).await;
            let closed = ack.is_none();
            acks.push((ack, sent.elapsed()));
            if closed {
                break;
            }
        }
        acks
    });
    let mut bob = Client::connect(&url, json!({ "token": token("bob") })).await.expect("connect");
    for _ in 0..3 {
        bob.expect_event("message:new", Duration::from_secs(5)).await;
    }

    let signalled = Instant::now();
    process::signal(&child, nix::sys::signal::Signal::SIGTERM);
    let acks = tokio::time::timeout(window + Duration::from_secs(1), sender)
        .await
        .expect("the sender's socket was not closed within the drain window")
        .expect("sender");
    assert!(bob.closed_within(window).await, "an idle socket was not closed");
    let status = tokio::time::timeout(window + Duration::from_secs(2), child.wait())
        .await
        .expect("the process did not exit within the drain window")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < window + Duration::from_secs(2), "exited after {:?}", signalled.elapsed());
    let (_, answered) = acks.split_last().expect("sends");
    assert!(answered.len() >= 3, "the client was sending: {acks:?}");
    for (ack, took) in answered {
        let ack = ack.as_ref().expect("an ack");
        if ack["ok"] != true {
            confab_tests::error(ack, "UNAVAILABLE");
        }
        assert!(*took < window, "a send waited {took:?} for its ack");
    }
}

/// Whether `user` can connect to `edge` within 5 s (a freed slot is given
/// back when the server has seen the close, not at once).
async fn admits_again(edge: &str, user: &str) -> bool {
    wait_until(Duration::from_secs(5), || async move {
        Client::connect(edge, json!({ "token": token(user) })).await.is_ok()
    })
    .await
    .is_ok()
}
