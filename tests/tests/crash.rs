//! Durability: SIGKILL a `confab dev` process while senders are busy, start
//! it again on the same data directory, and find every acked message in
//! history exactly once, in order, with gap-free seqs.

use confab_tests::client::Client;
use confab_tests::{http_call, process, token};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Child;

async fn start_dev(data_dir: &Path) -> (Child, String) {
    process::start_dev(process::command(&["dev"], data_dir).unwrap()).await.expect("confab dev")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_acked_burst_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = start_dev(dir.path()).await;
    let http = reqwest::Client::new();
    let (status, chat) = http_call(
        &http,
        reqwest::Method::POST,
        &format!("{url}/v1/chats"),
        Some(&token("alice")),
        Some(json!({ "type": "group", "memberIds": ["bob", "carol"] })),
    )
    .await;
    assert_eq!(status, 201);
    let chat_id = chat["id"].as_str().unwrap().to_string();

    // Three senders keep sending; every ack is recorded as it arrives.
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut senders = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let mut c = Client::connect(&url, json!({ "token": token(user) })).await.expect("connect");
        let (acked, chat_id) = (acked.clone(), chat_id.clone());
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let client_id = format!("{user}-{i}");
                let body = json!({ "chatId": chat_id, "body": format!("{user} says {i}"), "clientId": client_id });
                match c.try_call("message:send", body, Duration::from_secs(2)).await {
                    Some(ack) if ack["ok"] == true => {
                        acked.lock().unwrap().insert(client_id, ack["data"]["seq"].as_u64().unwrap());
                    }
                    _ => return,
                }
            }
        }));
    }
    confab_tests::wait_until(Duration::from_secs(30), || {
        let n = acked.lock().unwrap().len();
        async move { n >= 300 }
    })
    .await
    .expect("senders did not get 300 acks");
    process::signal(&child, Signal::SIGKILL);
    let _ = child.wait().await;
    for s in senders {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    let acked = acked.lock().unwrap().clone();

    let (_child, url) = start_dev(dir.path()).await;
    let mut history: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = http_call(
            &http,
            reqwest::Method::GET,
            &format!("{url}/v1/chats/{chat_id}/messages?afterSeq={after}&limit=100"),
            Some(&token("alice")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let msgs = page["messages"].as_array().unwrap().clone();
        if let Some(last) = msgs.last() {
            after = last["seq"].as_u64().unwrap();
        }
        history.extend(msgs);
        if page["hasMore"] != true {
            break;
        }
    }
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>(), "seqs must be 1..N without gaps");
    let mut by_client: HashMap<&str, u64> = HashMap::new();
    for m in &history {
        let prev = by_client.insert(m["clientId"].as_str().unwrap(), m["seq"].as_u64().unwrap());
        assert!(prev.is_none(), "clientId {} stored twice", m["clientId"]);
    }
    for (client_id, seq) in &acked {
        assert_eq!(
            by_client.get(client_id.as_str()),
            Some(seq),
            "acked {client_id} (seq {seq}) missing after the crash"
        );
    }
    // Each sender's messages are in the order it sent them.
    for user in ["alice", "bob", "carol"] {
        let order: Vec<u64> = history
            .iter()
            .filter(|m| m["senderId"] == user)
            .map(|m| m["clientId"].as_str().unwrap().rsplit('-').next().unwrap().parse().unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{user}'s messages out of order");
    }
    println!("crash test: {} acked before SIGKILL, {} in history after restart", acked.len(), history.len());
    assert!(history.len() >= acked.len());
}
