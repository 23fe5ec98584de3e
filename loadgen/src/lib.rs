//! loadgen: a Socket.IO load generator for confab that speaks the client
//! contract over WebSocket: JWT in the CONNECT auth, chats created through
//! the HTTP API, `message:send` with acks, `message:new` fan-out. Send times
//! travel in the message bodies, so delivery latency is measured end to end.
//!
//! This is the group fan-out scenario (S2 of the performance issue): `chats`
//! chats of `members` connections, one sender per chat, an open-loop total
//! send rate, a bounded run that stops by itself. It reports connections,
//! connect rate, sent/acked/delivered counts, loss, ack and delivery
//! latency percentiles (hdrhistogram), and the server's RSS per connection
//! when given its pids. Loopback only.

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message as Ws;

/// One run.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// An edge (`http://127.0.0.1:3000`); several, comma separated, are used in turn.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:3000")]
    pub url: Vec<String>,
    /// The HS256 secret the cluster checks tokens with.
    #[arg(long, env = "CONFAB_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    #[arg(long, default_value_t = 10)]
    pub chats: usize,
    /// Connections per chat, the sender included.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Messages sent per second, over all chats (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Server process ids whose RSS is read from /proc (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// A tag making user ids unique to this run.
    #[arg(long, default_value = "lg")]
    pub tag: String,
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub connections: usize,
    pub connect_per_sec: f64,
    pub rss_per_connection_bytes: Option<f64>,
    pub sent: u64,
    pub acked: u64,
    pub sent_per_sec: f64,
    pub delivered: u64,
    pub expected_deliveries: u64,
    pub delivered_per_sec: f64,
    pub lost: u64,
    pub ack_ms: Latency,
    pub delivery_ms: Latency,
}

impl Report {
    pub fn summary(&self) -> String {
        let rss = self.rss_per_connection_bytes.map_or("n/a".to_string(), |b| format!("{:.1} KB", b / 1024.0));
        format!(
            "connections {} ({:.0}/s), RSS per connection {}\n\
             sent {} ({:.0}/s), acked {}, delivered {} of {} ({:.0}/s), lost {}\n\
             ack ms      p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}\n\
             delivery ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            self.connections,
            self.connect_per_sec,
            rss,
            self.sent,
            self.sent_per_sec,
            self.acked,
            self.delivered,
            self.expected_deliveries,
            self.delivered_per_sec,
            self.lost,
            self.ack_ms.p50,
            self.ack_ms.p90,
            self.ack_ms.p99,
            self.ack_ms.p999,
            self.ack_ms.max,
            self.delivery_ms.p50,
            self.delivery_ms.p90,
            self.delivery_ms.p99,
            self.delivery_ms.p999,
            self.delivery_ms.max,
        )
    }
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

fn token(secret: &str, user: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 3600;
    let claims = json!({ "sub": user, "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// Resident memory of a process, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket, sends CONNECT with the token, waits for the accept.
async fn connect(url: &str, token: &str) -> anyhow::Result<WsStream> {
    let ws_url = format!("{}/socket.io/?EIO=4&transport=websocket", url.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(ws_url)).await??;
    let open = tokio::time::timeout(Duration::from_secs(10), ws.next()).await?;
    anyhow::ensure!(matches!(open, Some(Ok(Ws::Text(ref t))) if t.starts_with('0')), "no Engine.IO open packet");
    ws.send(Ws::text(format!("40{}", json!({ "token": token })))).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Ws::Text(t))) if t.starts_with("40") => return Ok(ws),
            Some(Ok(Ws::Text(t))) if t.starts_with("44") => anyhow::bail!("refused: {t}"),
            Some(Ok(Ws::Text(t))) if t.as_str() == "2" => ws.send(Ws::text("3")).await?,
            Some(Ok(_)) => {}
            other => anyhow::bail!("connection ended: {other:?}"),
        }
    }
}

struct Shared {
    delivered: AtomicU64,
    delivery: Mutex<Histogram<u64>>,
    ack: Mutex<Histogram<u64>>,
    acked: AtomicU64,
}

/// Reads a receiving connection until `until`, timing `message:new`.
async fn receive(mut ws: WsStream, until: Instant, shared: Arc<Shared>) {
    let mut local = histogram();
    let mut count = 0;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until.into(), ws.next()).await {
        let Ws::Text(t) = msg else { continue };
        if t.as_str() == "2" {
            let _ = ws.send(Ws::text("3")).await;
        } else if let Some(rest) = t.strip_prefix("42[\"message:new\",") {
            // The body is "t=<send time in µs>".
            if let Some(sent) =
                rest.split("\"body\":\"t=").nth(1).and_then(|s| s.split('"').next()).and_then(|s| s.parse::<u64>().ok())
            {
                let _ = local.record(now_micros().saturating_sub(sent).max(1));
                count += 1;
            }
        }
    }
    shared.delivered.fetch_add(count, Ordering::Relaxed);
    let _ = shared.delivery.lock().map(|mut h| h.add(&local));
}

/// Runs the scenario.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    anyhow::ensure!(
        config.members >= 1 && config.chats >= 1 && config.rate > 0.0,
        "chats, members and rate must be positive"
    );
    let http = reqwest::Client::new();
    let edge = |i: usize| config.url[i % config.url.len()].clone();
    // Chats: the sender creates each with its receivers.
    let mut chats = Vec::new();
    for c in 0..config.chats {
        let sender = format!("{}-s{c}", config.tag);
        let members: Vec<String> = (1..config.members).map(|m| format!("{}-c{c}-m{m}", config.tag)).collect();
        let res = http
            .post(format!("{}/v1/chats", edge(c)))
            .bearer_auth(token(&config.secret, &sender))
            .json(&json!({ "type": "group", "title": "load", "memberIds": members }))
            .send()
            .await?;
        anyhow::ensure!(res.status().is_success(), "creating a chat: {}", res.status());
        let chat: Value = res.json().await?;
        chats.push((chat["id"].as_str().unwrap_or_default().to_string(), sender, members));
    }
    let rss_before: Option<u64> = config.server_pids.iter().map(|p| rss_bytes(*p)).sum();

    // Connections, `connect_concurrency` at a time.
    let users: Vec<(usize, String)> = chats
        .iter()
        .enumerate()
        .flat_map(|(c, (_, sender, members))| {
            std::iter::once((c, sender.clone())).chain(members.iter().map(move |m| (c, m.clone())))
        })
        .collect();
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(users.len());
    for batch in users.chunks(config.connect_concurrency.max(1)) {
        let opened = futures::future::join_all(batch.iter().enumerate().map(|(i, (c, user))| {
            let (url, tok) = (edge(c + i), token(&config.secret, user));
            async move { connect(&url, &tok).await }
        }))
        .await;
        for ws in opened {
            sockets.push(ws?);
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connections = sockets.len();
    let rss_after: Option<u64> = config.server_pids.iter().map(|p| rss_bytes(*p)).sum();
    let rss_per_connection_bytes = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connections > 0 => Some(a.saturating_sub(b) as f64 / connections as f64),
        _ => None,
    };

    // Split: the first socket of each chat sends, every socket receives.
    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        delivery: Mutex::new(histogram()),
        ack: Mutex::new(histogram()),
        acked: AtomicU64::new(0),
    });
    let send_for = Duration::from_secs_f64(config.seconds);
    let until = Instant::now() + send_for + Duration::from_secs(3);
    let per_chat_interval = Duration::from_secs_f64(config.chats as f64 / config.rate);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    // Sockets come in chat order: each chat's sender, then its members.
    let mut sockets = sockets.into_iter();
    for (chat_id, _, members) in &chats {
        let Some(sender_ws) = sockets.next() else { break };
        // The sender's socket receives its own messages too: it both sends and reads.
        let (sink, stream) = sender_ws.split();
        senders.push(tokio::spawn(send_loop(
            sink,
            stream,
            chat_id.clone(),
            per_chat_interval,
            send_for,
            until,
            shared.clone(),
        )));
        for ws in sockets.by_ref().take(members.len()) {
            receivers.push(tokio::spawn(receive(ws, until, shared.clone())));
        }
    }
    let mut sent = 0;
    for s in senders {
        sent += s.await.unwrap_or(0);
    }
    for r in receivers {
        let _ = r.await;
    }
    let acked = shared.acked.load(Ordering::Relaxed);
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let expected_deliveries = acked * config.members as u64;
    let ack_ms = Latency::of(&*shared.ack.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let delivery_ms = Latency::of(&*shared.delivery.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(Report {
        connections,
        connect_per_sec: connections as f64 / connect_secs.max(1e-9),
        rss_per_connection_bytes,
        sent,
        acked,
        sent_per_sec: sent as f64 / send_for.as_secs_f64(),
        delivered,
        expected_deliveries,
        delivered_per_sec: delivered as f64 / send_for.as_secs_f64(),
        lost: expected_deliveries.saturating_sub(delivered),
        ack_ms,
        delivery_ms,
    })
}

/// Sends at a fixed interval (open loop: it does not wait for acks) and
/// reads acks and its own deliveries on the same socket.
async fn send_loop(
    mut sink: futures::stream::SplitSink<WsStream, Ws>,
    mut stream: futures::stream::SplitStream<WsStream>,
    chat_id: String,
    interval: Duration,
    send_for: Duration,
    until: Instant,
    shared: Arc<Shared>,
) -> u64 {
    let start = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent_at: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let (mut sent, mut id) = (0u64, 0u64);
    let mut acks = histogram();
    let mut deliveries = histogram();
    let mut delivered = 0;
    loop {
        tokio::select! {
            _ = tick.tick(), if start.elapsed() < send_for => {
                id += 1;
                let t = now_micros();
                let frame = format!("42{id}{}", json!(["message:send", { "chatId": chat_id, "body": format!("t={t}"), "clientId": format!("c{id}") }]));
                if sink.send(Ws::text(frame)).await.is_err() {
                    break;
                }
                sent_at.insert(id, t);
                sent += 1;
            }
            msg = tokio::time::timeout_at(until.into(), stream.next()) => {
                let Ok(Some(Ok(Ws::Text(t)))) = msg else {
                    if matches!(msg, Ok(Some(Ok(_)))) { continue; }
                    break;
                };
                if t.as_str() == "2" {
                    let _ = sink.send(Ws::text("3")).await;
                } else if let Some(rest) = t.strip_prefix("43") {
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    if let Ok(ack_id) = rest[..digits].parse::<u64>() {
                        if rest[digits..].contains("\"ok\":true") {
                            if let Some(t0) = sent_at.remove(&ack_id) {
                                let _ = acks.record(now_micros().saturating_sub(t0).max(1));
                                shared.acked.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                } else if let Some(rest) = t.strip_prefix("42[\"message:new\",") {
                    if let Some(sent) = rest.split("\"body\":\"t=").nth(1).and_then(|s| s.split('"').next()).and_then(|s| s.parse::<u64>().ok()) {
                        let _ = deliveries.record(now_micros().saturating_sub(sent).max(1));
                        delivered += 1;
                    }
                }
            }
        }
    }
    shared.delivered.fetch_add(delivered, Ordering::Relaxed);
    let _ = shared.delivery.lock().map(|mut h| h.add(&deliveries));
    let _ = shared.ack.lock().map(|mut h| h.add(&acks));
    sent
}
