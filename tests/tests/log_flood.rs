//! Logs under a flood (docs/operations.md "Logs"): a polling session whose
//! queue overflows is one log line, not one per packet it could not take
//! (one POST of many events each wanting an ack made thousands).

use confab_tests::Cluster;
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every log line written, for the test to count.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).lines().filter(|l| l.contains(needle)).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_polling_session_is_one_warning() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let cluster = Cluster::builder().edge_config(|c| c.socket_queue = 8).build().await;

    // alice polls once for her session, then never again: her queue fills.
    let http = reqwest::Client::new();
    let base = format!("{}/socket.io/?EIO=4&transport=polling", cluster.edge(0));
    let open = http.get(&base).send().await.unwrap().text().await.unwrap();
    let sid: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
    let url = format!("{base}&sid={}", sid["sid"].as_str().unwrap());
    http.post(&url).body(format!("40{}", json!({ "token": cluster.token("alice") }))).send().await.unwrap();
    let mut read = String::new();
    while !read.contains("session:ready") {
        read += &http.get(&url).timeout(Duration::from_secs(10)).send().await.unwrap().text().await.unwrap();
    }
    // One POST of 500 events, each asking for an ack she will not read.
    let packets: Vec<String> = (1..=500).map(|i| format!(r#"42{i}["room:leave",{{"chatId":"c"}}]"#)).collect();
    http.post(&url).body(packets.join("\u{1e}")).send().await.unwrap();

    confab_tests::wait_until(Duration::from_secs(10), || async { lines.count("socket queue full") >= 1 })
        .await
        .expect("the overflow is logged");
    // The POST was answered once its packets were handled; a bystander on
    // the same edge is not affected.
    let mut bob = cluster.connect(0, "bob").await;
    assert_eq!(bob.call("room:leave", json!({ "chatId": "c" })).await["ok"], true);
    assert_eq!(lines.count("socket queue full"), 1, "{}", String::from_utf8_lossy(&lines.0.lock().unwrap()));
}
