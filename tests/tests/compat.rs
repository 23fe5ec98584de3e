//! Protocol compatibility: the official `socket.io-client` (npm) against a
//! real cluster. The test command installs it (`npm ci` in `tests/node`);
//! without it this test fails, it does not skip.

use confab_tests::{repo_root, Cluster};
use std::process::Stdio;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_socket_io_client_chats_through_the_cluster() {
    let node_dir = repo_root().join("tests/node");
    assert!(
        node_dir.join("node_modules/socket.io-client").exists(),
        "socket.io-client is not installed: run `npm ci` in tests/node (scripts/test does)"
    );
    // Short presence windows so the status update arrives quickly.
    let cluster = Cluster::builder().edges(1).presence_config(|c| c.update_interval_ms = 200).build().await;
    let child = tokio::process::Command::new("node")
        .arg("compat.mjs")
        .current_dir(&node_dir)
        .env("CONFAB_URL", cluster.edge(0))
        // Alice's token carries a profile (CONTRACT §10.2).
        .env("ALICE", confab_tests::token_with_profile("alice", "Alice", "https://cdn.example/alice.png"))
        .env("BOB", cluster.token("bob"))
        .env("CAROL", cluster.token("carol"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed to run the compatibility test");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("compat.mjs did not finish within 60 s")
        .expect("compat.mjs output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "compat.mjs failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("compat: 11 passed, 0 failed"), "{stdout}");
}
