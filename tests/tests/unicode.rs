//! Text a JSON parser accepts but Unicode does not: a lone UTF-16
//! surrogate escape (`"\ud83d"`, what `JSON.stringify` makes of a cut
//! emoji). Its event is answered VALIDATION_ERROR on the ack and the
//! connection goes on, over WebSocket and over HTTP long-polling alike.

use confab_tests::{error, Cluster};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CUT_EMOJI: &str = r#""cut \ud83d""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_surrogate_gets_validation_error_and_the_websocket_lives() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &[]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let payload = format!(r#"{{"chatId":"{chat}","body":{CUT_EMOJI},"clientId":"c1"}}"#);
    let ack = alice.call_raw("message:send", &payload, Duration::from_secs(5)).await.expect("an ack");
    error(&ack, "VALIDATION_ERROR");
    // Nothing was stored, and the socket still works.
    let ack = alice.call("message:send", json!({ "chatId": chat, "body": "whole 😀", "clientId": "c2" })).await;
    assert_eq!((ack["ok"].as_bool(), ack["data"]["seq"].as_u64()), (Some(true), Some(1)), "{ack}");
}

/// A bare Engine.IO long-polling session.
struct Polling {
    http: reqwest::Client,
    url: String,
    /// Packets read but not yet asked for.
    read: Vec<String>,
}

impl Polling {
    async fn open(edge: &str) -> Self {
        let http = reqwest::Client::new();
        let base = format!("{edge}/socket.io/?EIO=4&transport=polling");
        let open = http.get(&base).send().await.unwrap().text().await.unwrap();
        let handshake: Value = serde_json::from_str(open.strip_prefix('0').expect("an open packet")).unwrap();
        let url = format!("{base}&sid={}", handshake["sid"].as_str().unwrap());
        Self { http, url, read: Vec::new() }
    }

    async fn post(&self, packet: &str) {
        let res = self.http.post(&self.url).body(packet.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 200, "{packet}");
    }

    /// The next packet that starts with `prefix`, within 10 s.
    async fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.read.iter().position(|p| p.starts_with(prefix)) {
                return self.read.remove(i);
            }
            assert!(Instant::now() < deadline, "no packet {prefix:?}; read {:?}", self.read);
            let res = self.http.get(&self.url).timeout(Duration::from_secs(10)).send().await.unwrap();
            assert_eq!(res.status(), 200, "the polling session ended");
            for packet in res.text().await.unwrap().split('\u{1e}') {
                if packet == "2" {
                    self.post("3").await;
                } else {
                    self.read.push(packet.to_string());
                }
            }
        }
    }

    /// The ack payload of `id`.
    async fn ack(&mut self, id: u64) -> Value {
        let packet = self.expect(&format!("43{id}[")).await;
        let args: Value = serde_json::from_str(&packet[format!("43{id}").len()..]).unwrap();
        args[0].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_surrogate_gets_validation_error_and_polling_lives() {
    let cluster = Cluster::builder().build().await;
    let chat = cluster.create_chat("alice", "group", &[]).await;
    let mut alice = Polling::open(cluster.edge(0)).await;
    alice.post(&format!("40{}", json!({ "token": cluster.token("alice") }))).await;
    alice.expect("40{").await;
    alice.expect(r#"42["session:ready""#).await;

    let payload = format!(r#"{{"chatId":"{chat}","body":{CUT_EMOJI},"clientId":"c1"}}"#);
    alice.post(&format!(r#"421["message:send",{payload}]"#)).await;
    error(&alice.ack(1).await, "VALIDATION_ERROR");
    let send = json!(["message:send", { "chatId": chat, "body": "whole 😀", "clientId": "c2" }]);
    alice.post(&format!("422{send}")).await;
    let ack = alice.ack(2).await;
    assert_eq!((ack["ok"].as_bool(), ack["data"]["seq"].as_u64()), (Some(true), Some(1)), "{ack}");
}
