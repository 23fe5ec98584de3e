//! loadgen: a Socket.IO load generator that speaks confab's client contract
//! over WebSocket (JWT in the CONNECT auth, `room:join` and `message:send`
//! with acks, `message:new`). It creates its chats through the HTTP API,
//! embeds send times in message bodies, and reports JSON plus a human
//! summary: connections and connect rate, server RSS per connection (from
//! the server processes' /proc), sent/acked/delivered rates, loss, ack and
//! end-to-end latency percentiles (hdrhistogram), recovery after a
//! reconnect storm, and its own CPU. Loopback only; runs stop by themselves.
//!
//! Scenarios ([`Scenario`]): S1 idle capacity, S2 group fan-out, S3 direct
//! messages, S4 reconnect storm. The coordinator ([`run`]) creates the
//! chats, splits them (whole chats) over worker processes of its own binary
//! (a process may hold at most 20,000 files here), each binding its sockets
//! to its own 127.0.0.x source addresses, starts them together and merges
//! what they measured ([`worker`]).
//!
//! The same generator drives the benchmark's peers (`bench/`), so it uses
//! only the subset of the contract they implement.

pub mod client;
pub mod worker;
pub mod ws;

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
pub use worker::Scenario;
use worker::{Outcome, Plan, PlanChat, Ready};

/// Sockets one worker process holds at most (the file limit is 20,000).
pub const MAX_PER_WORKER: usize = 15_000;
/// How long connecting everything may take.
const READY_DEADLINE: Duration = Duration::from_secs(300);

/// One run.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// What to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Edges (`http://127.0.0.1:3000`), comma separated; sockets and chats go round-robin.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:3000")]
    pub url: Vec<String>,
    /// The HS256 secret the server checks tokens with.
    #[arg(long, env = "CONFAB_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// fanout, reconnect: chats.
    #[arg(long, default_value_t = 10)]
    pub chats: usize,
    /// fanout, reconnect: connections per chat, the sender included.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// dm: two-person chats (two connections each).
    #[arg(long, default_value_t = 5000)]
    pub pairs: usize,
    /// idle: connections.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Messages sent per second over all chats (open loop, senders evenly spread).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// idle: how long to hold the connections before measuring RSS.
    #[arg(long, default_value_t = 2.0)]
    pub hold_seconds: f64,
    /// reconnect: receivers drop this many seconds into the sending...
    #[arg(long, default_value_t = 2.0)]
    pub drop_after_seconds: f64,
    /// ...and reconnect after this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub outage_ms: u64,
    /// Attachments on each sent message (CONTRACT §10.1), 0 to 10: an image
    /// with every field and a file reference, alternating.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub attachments: u32,
    /// Connections each worker opens at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Worker processes (0: enough for 15,000 connections each).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Server process ids whose RSS is read from /proc (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// A tag making user ids unique to this run.
    #[arg(long, default_value = "lg")]
    pub tag: String,
    /// Run the workers as tasks of this process (tests).
    #[arg(long, hide = true)]
    pub in_process: bool,
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

/// S4: what the reconnect storm showed.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub clients: u64,
    pub recovered: u64,
    /// Seqs some client never saw (should be 0).
    pub missed: u64,
    /// From the drop to the end of each client's `room:join` (paging included).
    pub recovery_ms: Latency,
}

/// The generator's own CPU during the measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct LoadCpu {
    pub workers: usize,
    /// The busiest worker, in percent of one core.
    pub max_core_percent: f64,
    pub total_core_seconds: f64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
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
    pub recovery: Option<Recovery>,
    /// Chats whose every receiver had the last acked message before the
    /// drain's cap (the run's wall time, and the CPU share, end there).
    pub settled_chats: u64,
    pub loadgen_cpu: LoadCpu,
    /// CPU seconds the server processes (`--server-pids`) spent from the
    /// first send to the end of the run, and per message sent, in µs.
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_message: Option<f64>,
}

impl Report {
    pub fn summary(&self) -> String {
        let rss = self.rss_per_connection_bytes.map_or("n/a".to_string(), |b| format!("{:.1} KB", b / 1024.0));
        let lat = |name: &str, l: &Latency| {
            format!(
                "{name:<12} p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
                l.p50, l.p90, l.p99, l.p999, l.max
            )
        };
        let mut s = format!(
            "{:?}: connections {} ({:.0}/s), RSS per connection {rss}\n\
             sent {} ({:.0}/s), acked {}, delivered {} of {} ({:.0}/s), lost {}\n{}\n{}",
            self.scenario,
            self.connections,
            self.connect_per_sec,
            self.sent,
            self.sent_per_sec,
            self.acked,
            self.delivered,
            self.expected_deliveries,
            self.delivered_per_sec,
            self.lost,
            lat("ack ms", &self.ack_ms),
            lat("delivery ms", &self.delivery_ms),
        );
        if let Some(r) = &self.recovery {
            s.push_str(&format!(
                "\nrecovered {} of {} clients, missed {} seqs; {}",
                r.recovered,
                r.clients,
                r.missed,
                lat("recovery ms", &r.recovery_ms)
            ));
        }
        s.push_str(&format!(
            "\nloadgen: {} worker(s), busiest at {:.0}% of a core{}",
            self.loadgen_cpu.workers,
            self.loadgen_cpu.max_core_percent,
            if self.loadgen_cpu.max_core_percent > 90.0 {
                " (saturated: figures are bounded by the generator)"
            } else {
                ""
            }
        ));
        s
    }
}

/// Resident memory of a process, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn total_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| rss_bytes(*p)).sum()
}

/// Creates one chat through the HTTP API; returns its id.
async fn create_chat(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    creator: &str,
    body: Value,
) -> anyhow::Result<String> {
    let res = http
        .post(format!("{url}/v1/chats"))
        .bearer_auth(client::token(secret, creator))
        .timeout(Duration::from_secs(30))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(res.status().is_success(), "creating a chat: {}", res.status());
    let chat: Value = res.json().await?;
    chat["id"].as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("chat without id: {chat}"))
}

/// The chats (with their sender and receivers) and idle users of a run.
async fn prepare(config: &Config) -> anyhow::Result<(Vec<PlanChat>, Vec<String>)> {
    let tag = &config.tag;
    let specs: Vec<(String, Vec<String>, &str)> = match config.scenario {
        Scenario::Idle => {
            let users = (0..config.connections).map(|i| format!("{tag}-i{i}")).collect();
            return Ok((Vec::new(), users));
        }
        Scenario::Fanout | Scenario::Reconnect => (0..config.chats)
            .map(|c| {
                let members = (1..config.members.max(1)).map(|m| format!("{tag}-c{c}-m{m}")).collect();
                (format!("{tag}-s{c}"), members, "group")
            })
            .collect(),
        Scenario::Dm => (0..config.pairs).map(|p| (format!("{tag}-a{p}"), vec![format!("{tag}-b{p}")], "dm")).collect(),
    };
    let http = reqwest::Client::new();
    let ids: Vec<anyhow::Result<String>> = futures::stream::iter(specs.iter().enumerate())
        .map(|(i, (sender, members, kind))| {
            let url = &config.url[i % config.url.len()];
            let body = json!({ "type": kind, "title": "load", "memberIds": members });
            create_chat(&http, url, &config.secret, sender, body)
        })
        .buffered(64)
        .collect()
        .await;
    let n = specs.len().max(1) as f64;
    let mut chats = Vec::with_capacity(specs.len());
    for (k, ((sender, members, _), id)) in specs.into_iter().zip(ids).enumerate() {
        // Senders spread evenly over one interval (interval = n / rate).
        let phase_micros = (k as f64 / config.rate * 1e6) as u64 % ((n / config.rate * 1e6) as u64).max(1);
        chats.push(PlanChat { id: id?, sender, members, phase_micros });
    }
    Ok((chats, Vec::new()))
}

/// Splits chats and idle users over workers (whole chats each).
fn split(config: &Config, chats: Vec<PlanChat>, idle: Vec<String>) -> Vec<Plan> {
    let total: usize = chats.iter().map(|c| c.members.len() + 1).sum::<usize>() + idle.len();
    let workers = config.workers.max(total.div_ceil(MAX_PER_WORKER)).max(1);
    let n_chats = chats.len().max(1) as f64;
    let interval_micros = (n_chats / config.rate.max(1e-6) * 1e6) as u64;
    let send_secs = match config.scenario {
        Scenario::Idle => 0.0,
        _ => config.seconds,
    };
    // Source addresses fresh to this run: a run's closed sockets sit in
    // TIME_WAIT on their addresses, and reusing those would slow connects.
    let run_octet = (std::process::id() % 250 + 1) as u8;
    let mut plans: Vec<Plan> = (0..workers)
        .map(|w| Plan {
            scenario: config.scenario,
            urls: config.url.clone(),
            secret: config.secret.clone(),
            // Two source addresses per worker: 127.<run>.<worker>.1 and .2.
            sources: (1..=2).map(|j| IpAddr::V4(Ipv4Addr::new(127, run_octet, w as u8, j))).collect(),
            connect_concurrency: config.connect_concurrency,
            chats: Vec::new(),
            idle_users: Vec::new(),
            interval_micros,
            send_secs,
            drop_after_secs: config.drop_after_seconds,
            outage_ms: config.outage_ms,
            attachments: config.attachments,
        })
        .collect();
    for (i, chat) in chats.into_iter().enumerate() {
        plans[i % workers].chats.push(chat);
    }
    for (i, user) in idle.into_iter().enumerate() {
        plans[i % workers].idle_users.push(user);
    }
    plans
}

/// A worker, in a child process or as a task of this one.
enum Worker {
    Child {
        child: Box<tokio::process::Child>,
        stdin: tokio::process::ChildStdin,
        lines: Box<tokio::io::Lines<BufReader<tokio::process::ChildStdout>>>,
    },
    Task {
        ready: tokio::sync::oneshot::Receiver<Ready>,
        go: tokio::sync::oneshot::Sender<()>,
        done: tokio::task::JoinHandle<anyhow::Result<Outcome>>,
    },
}

impl Worker {
    async fn start(plan: Plan, in_process: bool) -> anyhow::Result<Self> {
        if in_process {
            let (ready_tx, ready) = tokio::sync::oneshot::channel();
            let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
            let done = tokio::spawn(worker::run(
                plan,
                move |r| {
                    let _ = ready_tx.send(r);
                },
                async move {
                    let _ = go_rx.await;
                },
            ));
            return Ok(Worker::Task { ready, go, done });
        }
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("worker")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("worker stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("worker stdout"))?;
        stdin.write_all(format!("{}\n", serde_json::to_string(&plan)?).as_bytes()).await?;
        stdin.flush().await?;
        Ok(Worker::Child { child: Box::new(child), stdin, lines: Box::new(BufReader::new(stdout).lines()) })
    }

    /// The next `TAG {json}` line of a child.
    async fn line<T: serde::de::DeserializeOwned>(
        lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
        tag: &str,
    ) -> anyhow::Result<T> {
        loop {
            let line = lines.next_line().await?.ok_or_else(|| anyhow::anyhow!("worker ended before {tag}"))?;
            if let Some(rest) = line.strip_prefix("ERROR ") {
                anyhow::bail!("worker failed: {rest}");
            }
            if let Some(rest) = line.strip_prefix(tag) {
                return Ok(serde_json::from_str(rest.trim())?);
            }
        }
    }

    async fn ready(&mut self) -> anyhow::Result<Ready> {
        let wait = async {
            match self {
                Worker::Child { lines, .. } => Self::line(lines, "READY").await,
                Worker::Task { ready, .. } => Ok(ready.await?),
            }
        };
        tokio::time::timeout(READY_DEADLINE, wait).await.map_err(|_| anyhow::anyhow!("workers not ready in time"))?
    }

    async fn go(&mut self) -> anyhow::Result<()> {
        match self {
            Worker::Child { stdin, .. } => {
                stdin.write_all(b"go\n").await?;
                stdin.flush().await?;
            }
            Worker::Task { go, .. } => {
                let (tx, _) = tokio::sync::oneshot::channel();
                let _ = std::mem::replace(go, tx).send(());
            }
        }
        Ok(())
    }

    async fn outcome(self, deadline: Duration) -> anyhow::Result<Outcome> {
        let wait = async {
            match self {
                Worker::Child { mut child, mut lines, .. } => {
                    let outcome = Self::line(&mut lines, "RESULT").await;
                    let _ = child.wait().await;
                    outcome
                }
                Worker::Task { done, .. } => done.await?,
            }
        };
        tokio::time::timeout(deadline, wait).await.map_err(|_| anyhow::anyhow!("worker did not finish in time"))?
    }
}

/// The body of `loadgen worker`: a plan on stdin, `READY`, `go`, `RESULT`.
pub async fn worker_main() -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let plan: Plan = serde_json::from_str(&stdin.next_line().await?.unwrap_or_default())?;
    let result =
        worker::run(plan, |r| println!("READY {}", serde_json::to_string(&r).unwrap_or_default()), async move {
            let _ = stdin.next_line().await;
        })
        .await;
    match result {
        Ok(o) => println!("RESULT {}", serde_json::to_string(&o)?),
        Err(e) => println!("ERROR {e:#}"),
    }
    Ok(())
}

/// Runs the scenario.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    anyhow::ensure!(!config.url.is_empty() && config.rate > 0.0, "urls and a positive rate are required");
    let (chats, idle) = prepare(config).await?;
    let plans = split(config, chats, idle);
    let n_workers = plans.len();
    let rss_before = total_rss(&config.server_pids);
    let mut workers = Vec::with_capacity(n_workers);
    for plan in plans {
        workers.push(Worker::start(plan, config.in_process).await?);
    }
    let mut readies = Vec::with_capacity(n_workers);
    for w in &mut workers {
        readies.push(w.ready().await?);
    }
    let connections: usize = readies.iter().map(|r| r.connections).sum();
    let first = readies.iter().map(|r| r.connect_started_micros).min().unwrap_or(0);
    let last = readies.iter().map(|r| r.connect_ended_micros).max().unwrap_or(0);
    let connect_secs = (last.saturating_sub(first) as f64 / 1e6).max(1e-6);
    let settle = if config.scenario == Scenario::Idle { config.hold_seconds } else { 0.5 };
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let rss_per_connection_bytes = match (rss_before, total_rss(&config.server_pids)) {
        (Some(b), Some(a)) if connections > 0 => Some(a.saturating_sub(b) as f64 / connections as f64),
        _ => None,
    };
    let server_cpu_before = server_cpu_seconds(&config.server_pids);
    for w in &mut workers {
        w.go().await?;
    }
    let deadline = Duration::from_secs_f64(config.seconds + config.outage_ms as f64 / 1000.0 + 120.0);
    let mut outcomes = Vec::with_capacity(n_workers);
    for w in workers {
        outcomes.push(w.outcome(deadline).await?);
    }
    let mut report =
        report(config, connections, connections as f64 / connect_secs, rss_per_connection_bytes, &outcomes);
    if let (Some(before), Some(after)) = (server_cpu_before, server_cpu_seconds(&config.server_pids)) {
        let spent = after - before;
        report.server_cpu_seconds = Some(spent);
        report.server_cpu_us_per_message = (report.sent > 0).then(|| spent * 1e6 / report.sent as f64);
    }
    Ok(report)
}

/// utime + stime of every server process, in seconds; `None` without any.
fn server_cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| worker::process_cpu_seconds(&p.to_string())).sum()
}

fn report(config: &Config, connections: usize, connect_per_sec: f64, rss: Option<f64>, outcomes: &[Outcome]) -> Report {
    let (mut ack, mut delivery, mut recovery) = (worker::histogram(), worker::histogram(), worker::histogram());
    for o in outcomes {
        worker::merge(&mut ack, &o.ack_us);
        worker::merge(&mut delivery, &o.delivery_us);
        worker::merge(&mut recovery, &o.recovery_us);
    }
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let (sent, acked, delivered, expected) =
        (sum(|o| o.sent), sum(|o| o.acked), sum(|o| o.delivered), sum(|o| o.expected_deliveries));
    let seconds = config.seconds.max(1e-6);
    let reconnect = config.scenario == Scenario::Reconnect;
    Report {
        scenario: config.scenario,
        connections,
        connect_per_sec,
        rss_per_connection_bytes: rss,
        sent,
        acked,
        sent_per_sec: sent as f64 / seconds,
        delivered,
        // Reconnecting clients get part of their messages in `missed`, so
        // their count is checked seq by seq (`recovery.missed`) instead.
        expected_deliveries: if reconnect { delivered } else { expected },
        delivered_per_sec: delivered as f64 / seconds,
        lost: if reconnect { sum(|o| o.missed) } else { expected.saturating_sub(delivered) },
        ack_ms: Latency::of(&ack),
        delivery_ms: Latency::of(&delivery),
        recovery: reconnect.then(|| Recovery {
            clients: sum(|o| o.clients),
            recovered: sum(|o| o.recovered),
            missed: sum(|o| o.missed),
            recovery_ms: Latency::of(&recovery),
        }),
        settled_chats: sum(|o| o.settled_chats),
        loadgen_cpu: LoadCpu {
            workers: outcomes.len(),
            max_core_percent: outcomes.iter().map(|o| 100.0 * o.cpu_secs / o.wall_secs.max(1e-6)).fold(0.0, f64::max),
            total_core_seconds: outcomes.iter().map(|o| o.cpu_secs).sum(),
        },
        server_cpu_seconds: None,
        server_cpu_us_per_message: None,
    }
}
