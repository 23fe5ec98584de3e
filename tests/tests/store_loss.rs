//! Losing store-svc mid-write (CONTRACT §3): a send whose outcome is
//! unknown is UNAVAILABLE (retry with the same clientId), never INTERNAL
//! (don't retry), so a client following the contract never drops a message
//! that may have been stored.

use confab_tests::{confab_bin, data, wait_until, Cluster};
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// store-svc as a process of its own on `addr`, so it can be SIGKILLed
/// mid-call and started again.
async fn start_store(dir: &std::path::Path, addr: &str) -> Child {
    let child = Command::new(confab_bin().expect("confab binary"))
        .args(["store", "--listen", addr, "--data-dir"])
        .arg(dir)
        .env("CONFAB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn confab store");
    wait_until(Duration::from_secs(20), || async move { tokio::net::TcpStream::connect(addr).await.is_ok() })
        .await
        .expect("store-svc never listened");
    child
}

/// One send as the test saw it.
struct Sent {
    sender: usize,
    chat: String,
    client_id: String,
    ack: Value,
}

/// Sends of a chat, beyond `seq 0`, read page by page over HTTP.
async fn history(cluster: &Cluster, chat: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let after = out.last().map_or(0, |m| m["seq"].as_u64().unwrap());
        let path = format!("/v1/chats/{chat}/messages?afterSeq={after}&limit=100");
        let (status, page) = cluster.http(reqwest::Method::GET, &path, "u0", None).await;
        assert_eq!(status, 200, "{page}");
        out.extend(page["messages"].as_array().unwrap().iter().cloned());
        if page["hasMore"] != true {
            return out;
        }
    }
}

/// The store dies with appends in flight: every send is answered, ok or
/// UNAVAILABLE. Retried with the same clientId once the store is back,
/// every UNAVAILABLE send is stored exactly once: nothing a client was
/// told to retry is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_in_flight_when_the_store_dies_are_ok_or_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let store = start_store(dir.path(), &addr).await;
    let cluster = Cluster::builder()
        .store_url(&format!("http://{addr}"))
        .router_config(|c| c.store_timeout_ms = 1000)
        .edge_config(|c| c.request_timeout_ms = 2000)
        .build()
        .await;
    // Each chat's writer has one append in flight at a time: several chats
    // have several in flight when the store dies.
    const SENDERS: usize = 16;
    const CHATS: usize = 4;
    let members: Vec<String> = (1..SENDERS).map(|i| format!("u{i}")).collect();
    let member_refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let mut chats = Vec::new();
    for _ in 0..CHATS {
        chats.push(cluster.create_chat("u0", "group", &member_refs).await);
    }

    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let mut client = cluster.connect(0, &format!("u{i}")).await;
        let (sent, stop, chat) = (sent.clone(), stop.clone(), chats[i % CHATS].clone());
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                let client_id = format!("u{i}-{n}");
                let body = json!({ "chatId": chat, "body": "x", "clientId": client_id });
                let ack = client.try_call("message:send", body, Duration::from_secs(10)).await;
                let ack = ack.unwrap_or(Value::Null);
                sent.lock().unwrap().push(Sent { sender: i, chat: chat.clone(), client_id, ack });
                n += 1;
            }
            client
        }));
    }
    let count = |ok: bool| {
        let sent = sent.lock().unwrap();
        sent.iter().filter(|s| if ok { s.ack["ok"] == true } else { s.ack["error"] == "UNAVAILABLE" }).count()
    };
    // Sends flow; then the store dies with appends in flight.
    wait_until(Duration::from_secs(10), || async { count(true) >= 50 }).await.expect("sends never flowed");
    let pid = nix::unistd::Pid::from_raw(store.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL store-svc");
    wait_until(Duration::from_secs(20), || async { count(false) >= SENDERS })
        .await
        .expect("sends never failed after the kill");
    stop.store(true, Ordering::Release);
    let mut clients = Vec::new();
    for s in senders {
        clients.push(s.await.unwrap());
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    for s in &sent {
        assert!(s.ack.is_object(), "send {} was never answered", s.client_id);
        if s.ack["ok"] == true {
            data(&s.ack);
        } else {
            confab_tests::error(&s.ack, "UNAVAILABLE");
        }
    }

    // The store comes back; the clients retry what they were told to.
    let _store = start_store(dir.path(), &addr).await;
    for s in sent.iter().filter(|s| s.ack["ok"] != true) {
        let body = json!({ "chatId": s.chat, "body": "x", "clientId": s.client_id });
        let client = &mut clients[s.sender];
        // Each try waits out the edge's own deadline: no pause between them.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ack = client.try_call("message:send", body.clone(), Duration::from_secs(10)).await;
            let ack = ack.unwrap_or(Value::Null);
            if ack["ok"] == true {
                break;
            }
            assert!(Instant::now() < deadline, "retry of {} never succeeded: {ack}", s.client_id);
        }
    }
    for chat in &chats {
        let stored = history(&cluster, chat).await;
        let mut ids: Vec<&str> = stored.iter().map(|m| m["clientId"].as_str().unwrap()).collect();
        let all = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all, "a send was stored twice in {chat}");
        for s in sent.iter().filter(|s| &s.chat == chat) {
            assert!(ids.binary_search(&s.client_id.as_str()).is_ok(), "{} was lost", s.client_id);
        }
    }
}
