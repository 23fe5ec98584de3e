//! The README's client example works as written: the first ```js block of
//! README.md runs with node against a cluster and gets its ack.

use confab_tests::{repo_root, Cluster};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_example_runs_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let start = readme.find("```js\n").expect("README has a js example") + "```js\n".len();
    let code = &readme[start..start + readme[start..].find("```").unwrap()];
    assert!(code.lines().count() <= 16, "the example should stay about 15 lines");
    let node_dir = repo_root().join("tests/node");
    assert!(node_dir.join("node_modules/socket.io-client").exists(), "run `npm ci` in tests/node (scripts/test does)");
    let file = node_dir.join("readme-example.generated.mjs");
    std::fs::write(&file, code).unwrap();
    let cluster = Cluster::builder().build().await;
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("node")
            .arg(&file)
            .current_dir(&node_dir)
            .env("CONFAB_URL", cluster.edge(0))
            .env("TOKEN", cluster.token("alice"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("example did not finish")
    .expect("node must be installed");
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("acked as seq 1"), "{stdout}");
    assert!(stdout.contains("#1 alice: hi!"), "{stdout}");
}
