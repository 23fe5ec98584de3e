//! The load generator against a real cluster: a short fan-out run where
//! every acked message must reach every member (correctness only; speed is
//! measured by benchmarks, not tests).

use confab_tests::{Cluster, SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_fan_out_delivers_everything_it_counts() {
    let cluster = Cluster::builder().edges(2).build().await;
    let config = confab_loadgen::Config {
        url: cluster.edges.clone(),
        secret: SECRET.to_string(),
        chats: 3,
        members: 8,
        rate: 60.0,
        seconds: 1.5,
        connect_concurrency: 10,
        server_pids: vec![std::process::id()],
        tag: "lgtest".to_string(),
    };
    let report = confab_loadgen::run(&config).await.expect("loadgen run");
    println!("{}", report.summary());
    assert_eq!(report.connections, 24);
    assert!(report.sent >= 60, "{report:?}");
    assert_eq!(report.acked, report.sent, "{report:?}");
    assert_eq!(report.expected_deliveries, report.acked * 8);
    assert_eq!(report.delivered, report.expected_deliveries, "{report:?}");
    assert_eq!(report.lost, 0);
    assert_eq!(report.delivery_ms.count, report.delivered);
    assert!(report.rss_per_connection_bytes.is_some());
}
