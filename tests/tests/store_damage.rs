//! Damaged store files under the real `confab` binary: a crash leaves
//! acked messages in the log alone, a byte of one of them is flipped, and
//! `confab dev` refuses to start (non-zero exit, the file and the offset
//! named) until `--salvage`, which keeps every other acked message and
//! never hands out an acked seq again. A database cut short is a clear
//! error of `confab store`, not a panic.

use confab_tests::{http_call, process, token};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

fn confab(args: &[&str], data_dir: &Path) -> Command {
    process::command(args, data_dir).expect("confab binary")
}

/// Starts `confab dev` with `extra` flags and returns it with its URL.
async fn start_dev(data_dir: &Path, extra: &[&str]) -> (Child, String) {
    let mut args = vec!["dev"];
    args.extend(extra);
    process::start_dev(confab(&args, data_dir)).await.expect("confab dev")
}

/// Runs `confab` on `data_dir` expecting it to stop by itself; its exit
/// code and what it wrote to stderr.
async fn run_to_exit(args: &[&str], data_dir: &Path) -> (Option<i32>, String) {
    let child = confab(args, data_dir).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn confab");
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("confab did not exit within 20 s: it started on damaged files")
        .expect("wait for confab");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

async fn send(http: &reqwest::Client, url: &str, chat: &str, client_id: &str) -> Value {
    let body = json!({ "body": format!("message {client_id}"), "clientId": client_id });
    let path = format!("{url}/v1/chats/{chat}/messages");
    let (status, ack) = http_call(http, reqwest::Method::POST, &path, Some(&token("alice")), Some(body)).await;
    assert!(status == 201 || status == 200, "{status} {ack}");
    ack
}

/// Every message of `chat`, oldest first: (client id, seq).
async fn history(http: &reqwest::Client, url: &str, chat: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map_or(0, |(_, seq)| *seq);
        let path = format!("{url}/v1/chats/{chat}/messages?afterSeq={after}&limit=100");
        let (status, page) = http_call(http, reqwest::Method::GET, &path, Some(&token("alice")), None).await;
        assert_eq!(status, 200, "{page}");
        for m in page["messages"].as_array().unwrap() {
            out.push((m["clientId"].as_str().unwrap().to_string(), m["seq"].as_u64().unwrap()));
        }
        if page["hasMore"] != true {
            return out;
        }
    }
}

/// The offset of the log record (of the current generation) whose bytes
/// hold `needle`, walking the format of store-svc's `wal.rs`.
fn record_holding(log: &Path, needle: &[u8]) -> (u64, usize) {
    let bytes = std::fs::read(log).unwrap();
    let generation = &bytes[8..16];
    let mut at = 0;
    while at + 16 <= bytes.len() && &bytes[at + 8..at + 16] == generation {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let record = &bytes[at..at + 8 + len];
        if record.windows(needle.len()).any(|w| w == needle) {
            return (at as u64, 8 + len);
        }
        at += 8 + len;
    }
    panic!("no log record holds {}", String::from_utf8_lossy(needle));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_stops_confab_naming_file_and_offset_and_salvage_reuses_no_acked_seq() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (child, url) = start_dev(dir.path(), &[]).await;
    confab_tests::wait_until(Duration::from_secs(10), || {
        let (http, url) = (http.clone(), format!("{url}/readyz"));
        async move { matches!(http.get(&url).send().await, Ok(r) if r.status() == 200) }
    })
    .await
    .expect("confab dev never became ready");
    let (status, chat) = http_call(
        &http,
        reqwest::Method::POST,
        &format!("{url}/v1/chats"),
        Some(&token("alice")),
        Some(json!({ "type": "group", "memberIds": ["bob"] })),
    )
    .await;
    assert_eq!(status, 201, "{chat}");
    let chat = chat["id"].as_str().unwrap().to_string();
    let mut acked = HashMap::new();
    for i in 1..=300 {
        let client_id = format!("probe-{i:03}");
        let ack = send(&http, &url, &chat, &client_id).await;
        acked.insert(client_id, ack["seq"].as_u64().unwrap());
    }
    let max_acked = *acked.values().max().unwrap();
    // A crash: what was acked since the last checkpoint is in the log alone.
    process::signal(&child, Signal::SIGKILL);
    drop(child);

    let log = dir.path().join("confab.wal");
    let (victim, len) = record_holding(&log, b"probe-150");
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&log).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, victim + len as u64 / 2).unwrap();
    file.write_all_at(&[byte[0] ^ 0xff], victim + len as u64 / 2).unwrap();

    let (code, stderr) = run_to_exit(&["dev"], dir.path()).await;
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {stderr}");
    assert!(stderr.contains(&log.display().to_string()), "the log is not named: {stderr}");
    assert!(stderr.contains(&format!("offset {victim}")), "the offset {victim} is not named: {stderr}");
    assert!(stderr.contains("--salvage") && !stderr.contains("panicked"), "{stderr}");

    let (_child, url) = start_dev(dir.path(), &["--salvage"]).await;
    let stored = history(&http, &url, &chat).await;
    let mut seen = HashMap::new();
    for (client_id, seq) in &stored {
        assert!(seen.insert(*seq, client_id.clone()).is_none(), "seq {seq} stored twice");
        assert_eq!(acked.get(client_id), Some(seq), "{client_id} came back with another seq");
    }
    let lost: Vec<_> = acked.keys().filter(|c| !stored.iter().any(|(s, _)| s == *c)).collect();
    assert_eq!(lost, vec!["probe-150"], "only the damaged record's message may be lost");
    // The next message gets a seq no acked message had.
    let ack = send(&http, &url, &chat, "after-salvage").await;
    assert!(ack["seq"].as_u64().unwrap() > max_acked, "{ack} reuses a seq up to {max_acked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_cut_short_stops_confab_store_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // 50 chats fill several database pages; creation has its own rate limit.
    let (mut child, url) = start_dev(dir.path(), &["--rate-limit-chats", "1000"]).await;
    confab_tests::wait_until(Duration::from_secs(10), || {
        let (http, url) = (http.clone(), format!("{url}/readyz"));
        async move { matches!(http.get(&url).send().await, Ok(r) if r.status() == 200) }
    })
    .await
    .expect("confab dev never became ready");
    for i in 0..50 {
        let body = json!({ "type": "group", "title": "t".repeat(200), "memberIds": [format!("user{i}")] });
        let path = format!("{url}/v1/chats");
        let (status, _) = http_call(&http, reqwest::Method::POST, &path, Some(&token("alice")), Some(body)).await;
        assert_eq!(status, 201);
    }
    // A clean stop checkpoints everything into the database file.
    let pid = nix::unistd::Pid::from_raw(child.id().expect("running child") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let stopped = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("no clean stop").unwrap();
    assert!(stopped.success(), "{stopped}");
    let db = dir.path().join("confab.redb");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&db).unwrap().set_len(len / 2).unwrap();

    let (code, stderr) = run_to_exit(&["store"], dir.path()).await;
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {stderr}");
    assert!(stderr.contains(&db.display().to_string()) && stderr.contains("damaged"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
