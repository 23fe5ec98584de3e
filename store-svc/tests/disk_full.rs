//! A full disk, for real: store-svc on a small tmpfs that fills up. Writes
//! fail as unavailable and the gRPC health service says NOT_SERVING; once
//! space is freed the store re-opens its files by itself, says SERVING,
//! takes writes again, and every acked message is there. Needs root (to
//! mount the tmpfs).

use confab_api::store::{AppendBatch, Appended, NewChat, RemoteStore, Store, StoreError};
use confab_common::{ChatId, Shutdown};
use confab_proto::v1::Message;
use confab_store::Config;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A tmpfs of `size` mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs failed (this test needs root): {status}");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a writer thread may still hold files open for a moment.
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes `path` until the file system has no space left.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![7u8; 256 << 10];
    loop {
        match file.write_all(&chunk).and_then(|()| file.sync_all()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn batch(chat: &str, seq: u64, body: &str) -> AppendBatch {
    let m = Message {
        chat_id: chat.into(),
        id: format!("m{seq}"),
        seq,
        sender_id: "alice".into(),
        body: body.into(),
        created_at_ms: seq as i64,
        client_id: format!("c{seq}"),
        ..Default::default()
    };
    AppendBatch { chat_id: chat.into(), messages: vec![m], epoch: None, repeats_since_ms: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_and_the_store_recovers_by_itself_once_space_is_freed() {
    let fs = Tmpfs::mount("24m");
    let data: PathBuf = fs.path().join("data");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let server = tokio::spawn(confab_store::run(Config::new(data), listener, shutdown.clone()));
    let store = RemoteStore::connect_lazy(&url, Duration::from_secs(10)).unwrap();
    let health = HealthClient::new(tonic::transport::Endpoint::from_shared(url).unwrap().connect_lazy());
    let status = || {
        let mut health = health.clone();
        async move {
            let request = HealthCheckRequest { service: "confab.v1.Store".into() };
            health.check(request).await.map(|r| r.into_inner().status()).ok()
        }
    };
    wait_for("serving at start", Duration::from_secs(10), async || status().await == Some(ServingStatus::Serving))
        .await;

    let new =
        NewChat { kind: "group".into(), title: None, created_by: "alice".into(), member_ids: vec!["alice".into()] };
    let (chat, _) = store.create_chat(new).await.unwrap();
    let filler = fs.path().join("filler");
    fill(&filler);

    // Send until the store refuses: every failure is UNAVAILABLE, and a
    // refused seq is sent again.
    let body = "x".repeat(32 << 10);
    let mut next = 1;
    let mut refused = 0;
    let started = Instant::now();
    while refused < 3 {
        match store.append(batch(&chat.id, next, &body)).await {
            Ok(Appended::Written(seq)) => {
                assert_eq!(seq, next);
                next += 1;
            }
            Err(StoreError::Unavailable(_)) => refused += 1,
            other => panic!("a send on a full disk: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(60) && next < 2000, "the store never ran out of space");
    }
    let acked = next - 1;
    assert!(acked > 0, "nothing was acked before the disk filled");
    wait_for("NOT_SERVING while the disk is full", Duration::from_secs(10), async || {
        status().await == Some(ServingStatus::NotServing)
    })
    .await;
    assert!(matches!(store.append(batch(&chat.id, next, &body)).await, Err(StoreError::Unavailable(_))));

    // Space comes back: no restart, the store recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    wait_for("SERVING once space is freed", Duration::from_secs(30), async || {
        status().await == Some(ServingStatus::Serving)
    })
    .await;
    assert_eq!(store.append(batch(&chat.id, next, "after")).await.unwrap(), Appended::Written(next));
    let mut seqs: Vec<u64> = Vec::new();
    loop {
        let page =
            store.history(&ChatId::from(&chat.id), Some(seqs.last().copied().unwrap_or(0)), None, 100).await.unwrap();
        seqs.extend(page.messages.iter().map(|m| m.seq));
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seqs, (1..=next).collect::<Vec<_>>(), "{acked} acked before the disk filled");

    shutdown.trigger();
    server.await.unwrap().unwrap();
}
