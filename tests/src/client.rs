//! A small Socket.IO v5 client over tokio-tungstenite: enough of the
//! protocol to drive confab from Rust tests (CONNECT with auth, events with
//! acks, server events, pings), plus raw frames for malformed-input tests.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as Ws;

#[derive(Debug)]
pub enum ConnectError {
    /// CONNECT_ERROR: `message` and `data`.
    Refused {
        message: String,
        data: Value,
    },
    Io(String),
}

type Acks = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Client {
    out_tx: mpsc::Sender<String>,
    events_rx: mpsc::Receiver<(String, Value)>,
    /// Events read while waiting for another one.
    backlog: VecDeque<(String, Value)>,
    acks: Acks,
    next_ack: u64,
    closed_rx: tokio::sync::watch::Receiver<bool>,
    pub sid: String,
}

fn ws_url(http: &str, query: &str) -> String {
    let base = http.replacen("http://", "ws://", 1);
    format!("{base}/socket.io/?EIO=4&transport=websocket{query}")
}

impl Client {
    pub async fn connect(http_url: &str, auth: Value) -> Result<Self, ConnectError> {
        Self::connect_with(http_url, "", Some(auth), None).await
    }

    /// Connects with an optional query string suffix (`&token=…`), CONNECT
    /// auth and `Authorization` header.
    pub async fn connect_with(
        http_url: &str,
        query: &str,
        auth: Option<Value>,
        bearer: Option<&str>,
    ) -> Result<Self, ConnectError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = ws_url(http_url, query).into_client_request().map_err(|e| ConnectError::Io(e.to_string()))?;
        if let Some(b) = bearer {
            req.headers_mut().insert("authorization", format!("Bearer {b}").parse().expect("header"));
        }
        let (ws, _) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(req))
            .await
            .map_err(|_| ConnectError::Io("websocket connect timed out".into()))?
            .map_err(|e| ConnectError::Io(e.to_string()))?;
        let (mut sink, mut stream) = ws.split();
        // Engine.IO open packet.
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(Ws::Text(t)))) if t.starts_with('0') => {}
            other => return Err(ConnectError::Io(format!("no open packet: {other:?}"))),
        }
        let connect = match &auth {
            Some(a) => format!("40{a}"),
            None => "40".to_string(),
        };
        sink.send(Ws::text(connect)).await.map_err(|e| ConnectError::Io(e.to_string()))?;
        // CONNECT answer (pings may come first).
        let sid = loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .map_err(|_| ConnectError::Io("no CONNECT answer".into()))?;
            let Some(Ok(Ws::Text(t))) = msg else {
                return Err(ConnectError::Io(format!("connection ended: {msg:?}")));
            };
            let t = t.as_str();
            if t == "2" {
                sink.send(Ws::text("3")).await.map_err(|e| ConnectError::Io(e.to_string()))?;
            } else if let Some(body) = t.strip_prefix("40") {
                let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                break v["sid"].as_str().unwrap_or_default().to_string();
            } else if let Some(body) = t.strip_prefix("44") {
                let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                return Err(ConnectError::Refused {
                    message: v["message"].as_str().unwrap_or_default().to_string(),
                    data: v.get("data").cloned().unwrap_or(Value::Null),
                });
            }
        };
        let (out_tx, mut out_rx) = mpsc::channel::<String>(1024);
        let (events_tx, events_rx) = mpsc::channel(100_000);
        let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);
        let acks: Acks = Arc::default();
        let reader_acks = acks.clone();
        let pong_tx = out_tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Ws::Text(t) = msg else {
                    if matches!(msg, Ws::Close(_)) {
                        break;
                    }
                    continue;
                };
                let t = t.as_str();
                if t == "2" {
                    let _ = pong_tx.send("3".into()).await;
                } else if let Some(p) = t.strip_prefix("42") {
                    if let Ok(Value::Array(mut a)) = serde_json::from_str::<Value>(p) {
                        if a.is_empty() {
                            continue;
                        }
                        let name = a.remove(0).as_str().unwrap_or_default().to_string();
                        let data = a.into_iter().next().unwrap_or(Value::Null);
                        let _ = events_tx.try_send((name, data));
                    }
                } else if let Some(p) = t.strip_prefix("43") {
                    let digits = p.bytes().take_while(u8::is_ascii_digit).count();
                    let id: u64 = p[..digits].parse().unwrap_or(0);
                    let v: Value = serde_json::from_str(&p[digits..]).unwrap_or(Value::Null);
                    let data = v.get(0).cloned().unwrap_or(Value::Null);
                    if let Some(tx) = reader_acks.lock().unwrap().remove(&id) {
                        let _ = tx.send(data);
                    }
                } else if t.starts_with('1') || t.starts_with("41") {
                    break;
                }
            }
            // No ack comes any more: callers waiting for one learn it now.
            reader_acks.lock().unwrap().clear();
            let _ = closed_tx.send(true);
        });
        tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Ws::text(text)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        Ok(Self { out_tx, events_rx, backlog: VecDeque::new(), acks, next_ack: 0, closed_rx, sid })
    }

    /// Sends a raw Engine.IO text frame (for malformed-input tests).
    pub async fn send_raw(&self, frame: impl Into<String>) {
        let _ = self.out_tx.send(frame.into()).await;
    }

    /// Emits without asking for an ack.
    pub async fn emit(&self, event: &str, data: Value) {
        self.send_raw(format!("42{}", json!([event, data]))).await;
    }

    /// Emits asking for an ack with `id`, without waiting for it (the ack is
    /// dropped): for pipelining many events.
    pub async fn emit_with_ack_id(&self, id: u64, event: &str, data: Value) {
        self.send_raw(format!("42{id}{}", json!([event, data]))).await;
    }

    /// Emits and waits for the ack (at most 10 s).
    pub async fn call(&mut self, event: &str, data: Value) -> Value {
        self.try_call(event, data, Duration::from_secs(10)).await.unwrap_or_else(|| panic!("no ack for {event}"))
    }

    /// Emits an event whose payload is raw JSON text (which `Value` could
    /// not hold, such as a lone surrogate escape) and waits for the ack.
    pub async fn call_raw(&mut self, event: &str, payload_json: &str, timeout: Duration) -> Option<Value> {
        self.next_ack += 1;
        let id = self.next_ack;
        let (tx, rx) = oneshot::channel();
        self.acks.lock().unwrap().insert(id, tx);
        self.send_raw(format!("42{id}[{},{payload_json}]", json!(event))).await;
        tokio::time::timeout(timeout, rx).await.ok().and_then(Result::ok)
    }

    /// Emits asking for an ack and returns at once; the receiver gets the
    /// ack (an error once the connection closes without one).
    pub async fn start_call(&mut self, event: &str, data: Value) -> oneshot::Receiver<Value> {
        self.next_ack += 1;
        let id = self.next_ack;
        let (tx, rx) = oneshot::channel();
        self.acks.lock().unwrap().insert(id, tx);
        self.send_raw(format!("42{id}{}", json!([event, data]))).await;
        rx
    }

    pub async fn try_call(&mut self, event: &str, data: Value, timeout: Duration) -> Option<Value> {
        self.next_ack += 1;
        let id = self.next_ack;
        let (tx, rx) = oneshot::channel();
        self.acks.lock().unwrap().insert(id, tx);
        self.send_raw(format!("42{id}{}", json!([event, data]))).await;
        // No ack comes once the connection has closed.
        let mut closed = self.closed_rx.clone();
        tokio::time::timeout(timeout, async move {
            tokio::select! {
                ack = rx => ack.ok(),
                _ = closed.wait_for(|c| *c) => None,
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The next event named `name` within `timeout`; others are kept.
    pub async fn next_event(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        if let Some(i) = self.backlog.iter().position(|(n, _)| n == name) {
            return self.backlog.remove(i).map(|(_, v)| v);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events_rx.recv()).await {
                Ok(Some((n, v))) if n == name => return Some(v),
                Ok(Some(other)) => self.backlog.push_back(other),
                _ => return None,
            }
        }
    }

    pub async fn expect_event(&mut self, name: &str, timeout: Duration) -> Value {
        self.next_event(name, timeout).await.unwrap_or_else(|| panic!("no {name} event within {timeout:?}"))
    }

    /// Every event named `name` that arrives within `window`.
    pub async fn collect(&mut self, name: &str, window: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Some(v) = self.next_event(name, deadline.saturating_duration_since(tokio::time::Instant::now())).await
        {
            out.push(v);
        }
        out
    }

    /// True once the server has closed the connection (within `timeout`).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let mut rx = self.closed_rx.clone();
        let closed = tokio::time::timeout(timeout, rx.wait_for(|c| *c)).await.is_ok();
        closed
    }

    pub async fn disconnect(self) {
        self.send_raw("41").await;
        let _ = self.out_tx.send("1".into()).await;
    }
}
