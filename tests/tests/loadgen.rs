//! The load generator against a real cluster: each scenario briefly, where
//! every acked message must reach every member, every reconnecting client
//! must recover everything it missed (correctness only; speed is measured
//! by the benchmark, not by tests).

use confab_loadgen::{Config, Scenario};
use confab_tests::{Cluster, SECRET};

fn config(cluster: &Cluster, scenario: Scenario, tag: &str) -> Config {
    Config {
        scenario,
        url: cluster.edges.clone(),
        secret: SECRET.to_string(),
        chats: 3,
        members: 8,
        pairs: 10,
        connections: 20,
        rate: 60.0,
        seconds: 1.5,
        hold_seconds: 0.2,
        drop_after_seconds: 0.5,
        outage_ms: 200,
        // Sends carry attachments, so the cluster checks and relays them under load.
        attachments: 2,
        connect_concurrency: 10,
        workers: 1,
        server_pids: vec![std::process::id()],
        tag: tag.to_string(),
        in_process: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_delivers_everything_it_counts() {
    let cluster = Cluster::builder().edges(2).build().await;

    let idle = confab_loadgen::run(&config(&cluster, Scenario::Idle, "lgi")).await.expect("idle run");
    println!("{}", idle.summary());
    assert_eq!(idle.connections, 20);
    assert!(idle.rss_per_connection_bytes.is_some());
    assert_eq!(idle.sent, 0);

    let fanout = confab_loadgen::run(&config(&cluster, Scenario::Fanout, "lgf")).await.expect("fanout run");
    println!("{}", fanout.summary());
    assert_eq!(fanout.connections, 24);
    assert!(fanout.sent >= 60, "{fanout:?}");
    assert_eq!(fanout.acked, fanout.sent, "{fanout:?}");
    assert_eq!(fanout.expected_deliveries, fanout.acked * 8);
    assert_eq!(fanout.delivered, fanout.expected_deliveries, "{fanout:?}");
    assert_eq!(fanout.lost, 0);
    assert_eq!(fanout.delivery_ms.count, fanout.delivered);
    // Every chat ended on its last ack, not on the drain's cap.
    assert_eq!(fanout.settled_chats, 3, "{fanout:?}");
    assert!(fanout.loadgen_cpu.total_core_seconds > 0.0);

    let dm = confab_loadgen::run(&config(&cluster, Scenario::Dm, "lgd")).await.expect("dm run");
    println!("{}", dm.summary());
    assert_eq!(dm.connections, 20);
    assert!(dm.sent >= 60, "{dm:?}");
    assert_eq!(dm.acked, dm.sent, "{dm:?}");
    assert_eq!(dm.delivered, dm.acked * 2, "{dm:?}");
    assert_eq!(dm.lost, 0);
    assert_eq!(dm.settled_chats, 10, "{dm:?}");

    let storm = confab_loadgen::run(&Config { members: 5, ..config(&cluster, Scenario::Reconnect, "lgr") })
        .await
        .expect("reconnect run");
    println!("{}", storm.summary());
    let recovery = storm.recovery.clone().expect("reconnect reports recovery");
    assert_eq!(recovery.clients, 12);
    assert_eq!(recovery.recovered, 12, "{recovery:?}");
    assert_eq!(recovery.missed, 0, "{recovery:?}");
    assert_eq!(recovery.recovery_ms.count, 12);
    assert!(storm.acked > 0 && storm.acked == storm.sent, "{storm:?}");
}
