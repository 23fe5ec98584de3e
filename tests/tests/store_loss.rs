//! Losing store-svc mid-write (CONTRACT §3): a send whose outcome is
//! unknown is UNAVAILABLE (retry with the same clientId), never INTERNAL
//! (don't retry), so a client following the contract never drops a message
//! that may have been stored.

use confab_tests::{confab_bin, data, wait_until, Cluster};
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};

/// store-svc as a process of its own, so it can be SIGKILLed mid-call.
async fn start_store(dir: &std::path::Path) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(confab_bin().expect("confab binary"))
        .args(["store", "--listen", &addr, "--data-dir"])
        .arg(dir)
        .env("CONFAB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn confab store");
    wait_until(Duration::from_secs(20), || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(&addr).await.is_ok() }
    })
    .await
    .expect("store-svc never listened");
    (child, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_in_flight_when_the_store_dies_are_ok_or_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let (store, store_url) = start_store(dir.path()).await;
    let cluster = Cluster::builder()
        .store_url(&store_url)
        .router_config(|c| c.store_timeout_ms = 1000)
        .edge_config(|c| c.request_timeout_ms = 2000)
        .build()
        .await;
    const SENDERS: usize = 8;
    let members: Vec<String> = (1..SENDERS).map(|i| format!("u{i}")).collect();
    let member_refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let chat = cluster.create_chat("u0", "group", &member_refs).await;

    let acks: Arc<Mutex<Vec<Value>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let mut client = cluster.connect(0, &format!("u{i}")).await;
        let (acks, stop, chat) = (acks.clone(), stop.clone(), chat.clone());
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                let body = json!({ "chatId": chat, "body": "x", "clientId": format!("u{i}-{n}") });
                let ack = client.try_call("message:send", body, Duration::from_secs(10)).await;
                acks.lock().unwrap().push(ack.unwrap_or(Value::Null));
                n += 1;
            }
        }));
    }
    // Sends flow; then the store dies with appends in flight.
    wait_until(Duration::from_secs(10), || async {
        acks.lock().unwrap().iter().filter(|a| a["ok"] == true).count() >= 50
    })
    .await
    .expect("sends never flowed");
    let pid = nix::unistd::Pid::from_raw(store.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL store-svc");
    wait_until(Duration::from_secs(20), || async {
        acks.lock().unwrap().iter().filter(|a| a["error"] == "UNAVAILABLE").count() >= SENDERS
    })
    .await
    .unwrap_or_else(|_| panic!("sends never failed after the kill: {:?}", acks.lock().unwrap().last()));
    stop.store(true, Ordering::Release);
    for s in senders {
        s.await.unwrap();
    }
    let acks = acks.lock().unwrap();
    for ack in acks.iter() {
        assert!(ack.is_object(), "a send was never answered");
        if ack["ok"] == true {
            data(ack);
        } else {
            confab_tests::error(ack, "UNAVAILABLE");
        }
    }
}
