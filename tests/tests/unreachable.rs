//! Faults (the sharding issue): a router that is unreachable makes its
//! chats answer UNAVAILABLE within the request deadline, never hang, and
//! other chats are unaffected.

use confab_api::placement::Ring;
use serde_json::json;
use std::time::{Duration, Instant};

/// An unreachable owner makes its chats answer UNAVAILABLE within the
/// request deadline; chats of the live router are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_router_gives_unavailable_within_the_deadline() {
    let cluster = confab_tests::Cluster::builder()
        .dead_routers(1)
        // Never give up on the dead router, so it keeps owning its chats.
        .router_config(|c| c.detect_ms = 600_000)
        .edge_config(|c| {
            c.detect_ms = 600_000;
            c.request_timeout_ms = 1000;
        })
        .build()
        .await;
    let ring = Ring::new(cluster.routers.clone());
    let dead = cluster.routers.last().unwrap().clone();
    let (mut on_dead, mut on_live) = (None, None);
    for _ in 0..40 {
        let chat = cluster.create_chat("alice", "group", &[]).await;
        if ring.owner(&chat.as_str().into()) == Some(dead.as_str()) {
            on_dead.get_or_insert(chat);
        } else {
            on_live.get_or_insert(chat);
        }
        if on_dead.is_some() && on_live.is_some() {
            break;
        }
    }
    let (on_dead, on_live) = (on_dead.expect("a chat on the dead router"), on_live.expect("a chat on the live one"));
    let mut alice = cluster.connect(0, "alice").await;
    let asked = Instant::now();
    let ack = alice.call("message:send", json!({ "chatId": on_dead, "body": "x", "clientId": "1" })).await;
    assert_eq!(ack["error"], "UNAVAILABLE", "{ack}");
    assert!(asked.elapsed() < Duration::from_secs(4), "took {:?}", asked.elapsed());
    let ack = alice.call("message:send", json!({ "chatId": on_live, "body": "x", "clientId": "1" })).await;
    assert_eq!(ack["ok"], true, "{ack}");
}
