//! The cluster harness for confab's end-to-end tests.
//!
//! [`Cluster::builder`] starts store-svc, presence-svc, routers and edges in
//! this process, each through its crate's `run(config, listener, shutdown)`
//! on an ephemeral loopback port, so every hop is real gRPC. [`client`] is a
//! small Socket.IO v5 client over tokio-tungstenite for driving it from
//! Rust; the official `socket.io-client` drives it from `tests/node`.

pub mod client;
pub mod otlp;
pub mod process;
pub mod redis;

use anyhow::{bail, Context};
use confab_common::Shutdown;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

pub const SECRET: &str = "confab-test-secret";

/// A running in-process cluster. Dropping it stops every service.
pub struct Cluster {
    pub edges: Vec<String>,
    pub routers: Vec<String>,
    pub store_url: String,
    pub presence_url: String,
    shutdown: Shutdown,
    /// presence-svc's own shutdown, to stop and start it again.
    presence: std::sync::Mutex<Option<(Shutdown, tokio::task::JoinHandle<()>)>>,
    presence_config: confab_presence::Config,
    /// Each edge's own signal (a child of `shutdown`) and its `run`.
    edge_runs: Vec<(Shutdown, Option<tokio::task::JoinHandle<()>>)>,
    _data: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

/// Changes an edge's configuration before it starts.
type EdgeTweak = Box<dyn Fn(&mut confab_edge::Config)>;
/// Changes a router's configuration before it starts.
type RouterTweak = Box<dyn Fn(&mut confab_router::Config)>;
/// Changes presence-svc's configuration before it starts.
type PresenceTweak = Box<dyn Fn(&mut confab_presence::Config)>;

#[derive(Default)]
pub struct ClusterBuilder {
    edges: usize,
    routers: usize,
    dead_routers: usize,
    data_dir: Option<PathBuf>,
    edge_tweak: Option<EdgeTweak>,
    router_tweak: Option<RouterTweak>,
    presence_tweak: Option<PresenceTweak>,
    presence_replicas: usize,
    store_url: Option<String>,
}

async fn loopback() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let url = format!("http://{}", l.local_addr().expect("local addr"));
    (l, url)
}

impl ClusterBuilder {
    pub fn edges(mut self, n: usize) -> Self {
        self.edges = n;
        self
    }
    pub fn routers(mut self, n: usize) -> Self {
        self.routers = n;
        self
    }
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }
    /// Changes every edge's configuration (limits, windows) before start.
    pub fn edge_config(mut self, f: impl Fn(&mut confab_edge::Config) + 'static) -> Self {
        self.edge_tweak = Some(Box::new(f));
        self
    }

    /// Lists `n` more routers that never start (unreachable owners).
    pub fn dead_routers(mut self, n: usize) -> Self {
        self.dead_routers = n;
        self
    }

    /// Changes every router's configuration (windows, queues) before start.
    pub fn router_config(mut self, f: impl Fn(&mut confab_router::Config) + 'static) -> Self {
        self.router_tweak = Some(Box::new(f));
        self
    }

    /// Uses the store-svc at `url` (a process the test runs, and may kill)
    /// instead of starting one in this process.
    pub fn store_url(mut self, url: &str) -> Self {
        self.store_url = Some(url.to_string());
        self
    }

    /// Changes presence-svc's configuration (windows, lease) before start,
    /// after any change given before.
    pub fn presence_config(mut self, f: impl Fn(&mut confab_presence::Config) + 'static) -> Self {
        let before = self.presence_tweak.take();
        self.presence_tweak = Some(Box::new(move |c| {
            if let Some(before) = &before {
                before(c);
            }
            f(c);
        }));
        self
    }

    /// With `Some(redis)`, two presence-svc replicas keeping their state in
    /// that Redis (see [`ClusterBuilder::presence_replicas`]); with `None`,
    /// the one in-memory presence-svc as without it.
    pub fn presence_on(self, redis: Option<&redis::RedisServer>) -> Self {
        let Some(redis) = redis else { return self };
        let (url, ca_file) = (redis.url(), redis.ca_file());
        self.presence_replicas(2).presence_config(move |c| {
            c.redis_url = Some(url.clone());
            c.redis_ca_file = ca_file.clone();
        })
    }

    /// Runs `n` presence-svc processes with the same configuration (give
    /// them one `redis_url` to share what they keep in Redis); edge `i`
    /// talks to replica `i % n` first and moves to the next when it cannot
    /// reach it. [`Cluster::stop_presence`] and [`Cluster::start_presence`]
    /// act on the first.
    pub fn presence_replicas(mut self, n: usize) -> Self {
        self.presence_replicas = n;
        self
    }

    pub async fn build(self) -> Cluster {
        let shutdown = Shutdown::new();
        let (tmp, data_dir) = match self.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().expect("temp dir");
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let store_url = match self.store_url {
            Some(url) => url,
            None => {
                let (store_l, store_url) = loopback().await;
                let store = confab_store::run(confab_store::Config::for_test(data_dir), store_l, shutdown.clone());
                shutdown.spawn(async move { store.await.expect("store-svc") });
                store_url
            }
        };
        let mut presence_config = confab_presence::Config::default();
        if let Some(f) = &self.presence_tweak {
            f(&mut presence_config);
        }
        let (presence_l, presence_url) = loopback().await;
        let presence = start_presence(&presence_config, presence_l, &shutdown);
        let mut presence_urls = vec![presence_url.clone()];
        for _ in 1..self.presence_replicas.max(1) {
            let (l, url) = loopback().await;
            let (_, task) = start_presence(&presence_config, l, &shutdown);
            drop(task);
            presence_urls.push(url);
        }

        let mut router_ls = Vec::new();
        for _ in 0..self.routers.max(1) {
            router_ls.push(loopback().await);
        }
        let mut routers: Vec<String> = router_ls.iter().map(|(_, u)| u.clone()).collect();
        // Listed but never started: nothing listens on these addresses.
        for _ in 0..self.dead_routers {
            let (l, url) = loopback().await;
            drop(l);
            routers.push(url);
        }
        for (l, url) in router_ls {
            let mut config = confab_router::Config::for_test(url, routers.clone(), store_url.clone());
            if let Some(f) = &self.router_tweak {
                f(&mut config);
            }
            let router = confab_router::run(config, l, shutdown.clone());
            shutdown.spawn(async move { router.await.expect("router") });
        }
        let (mut edges, mut edge_runs) = (Vec::new(), Vec::new());
        for i in 0..self.edges.max(1) {
            let (l, url) = loopback().await;
            // Every replica, starting with replica `i % n`: the edge moves
            // on along the list when one cannot be reached.
            let n = presence_urls.len();
            let presence_url = (0..n).map(|k| presence_urls[(i + k) % n].as_str()).collect::<Vec<_>>().join(",");
            let mut config =
                confab_edge::Config::for_test(routers.clone(), store_url.clone(), presence_url, SECRET.into());
            // Tests write in bursts; the limiter's own tests set the limits.
            let limits = &mut config.rate_limits;
            (limits.messages, limits.edits, limits.chats, limits.receipts) = (100_000, 100_000, 100_000, 100_000);
            if let Some(f) = &self.edge_tweak {
                f(&mut config);
            }
            let signal = shutdown.child();
            let edge = confab_edge::run(config, l, signal.clone());
            edge_runs.push((signal, Some(shutdown.spawn(async move { edge.await.expect("edge") }))));
            edges.push(url);
        }
        let cluster = Cluster {
            edges,
            routers,
            store_url,
            presence_url,
            shutdown,
            presence: std::sync::Mutex::new(Some(presence)),
            presence_config,
            edge_runs,
            _data: tmp,
            http: reqwest::Client::new(),
        };
        cluster.wait_ready().await;
        cluster
    }
}

/// Runs presence-svc on `listener` under a shutdown of its own (a child of
/// the cluster's).
fn start_presence(
    config: &confab_presence::Config,
    listener: TcpListener,
    cluster: &Shutdown,
) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let shutdown = cluster.child();
    let presence = confab_presence::run(config.clone(), listener, shutdown.clone());
    let task = cluster.spawn(async move { presence.await.expect("presence-svc") });
    (shutdown, task)
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Stops presence-svc (as SIGTERM would: it ends its streams and
    /// serves no more) and waits until it has; its state is gone.
    pub async fn stop_presence(&self) {
        let running = self.presence.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((shutdown, task)) = running {
            shutdown.trigger();
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("presence-svc did not stop within 10 s")
                .expect("presence-svc task");
        }
    }

    /// Starts presence-svc again, empty, on the address it had.
    pub async fn start_presence(&self) {
        let addr = self.presence_url.trim_start_matches("http://");
        let listener = TcpListener::bind(addr).await.expect("bind presence-svc's address again");
        let running = start_presence(&self.presence_config, listener, &self.shutdown);
        *self.presence.lock().unwrap_or_else(|p| p.into_inner()) = Some(running);
    }

    /// Waits until every edge answers `/readyz` with 200.
    pub async fn wait_ready(&self) {
        for edge in &self.edges {
            let url = format!("{edge}/readyz");
            let http = self.http.clone();
            wait_until(Duration::from_secs(10), || {
                let (http, url) = (http.clone(), url.clone());
                async move { matches!(http.get(&url).send().await, Ok(r) if r.status() == 200) }
            })
            .await
            .unwrap_or_else(|_| panic!("edge {edge} never became ready"));
        }
    }

    /// Sends edge `i` its shutdown signal (the rest of the cluster runs
    /// on); the handle resolves when the edge's `run` has returned.
    pub fn stop_edge(&mut self, i: usize) -> tokio::task::JoinHandle<()> {
        let (signal, run) = &mut self.edge_runs[i];
        signal.trigger();
        run.take().expect("edge already stopped")
    }

    pub fn edge(&self, i: usize) -> &str {
        &self.edges[i]
    }

    pub fn token(&self, user: &str) -> String {
        token(user)
    }

    /// An HTTP request to edge 0 as `user`.
    pub async fn http(
        &self,
        method: reqwest::Method,
        path: &str,
        user: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        http_call(&self.http, method, &format!("{}{path}", self.edges[0]), Some(&self.token(user)), body).await
    }

    /// Creates a chat as `creator` and returns its id.
    pub async fn create_chat(&self, creator: &str, kind: &str, members: &[&str]) -> String {
        let body = serde_json::json!({ "type": kind, "title": "test", "memberIds": members });
        let (status, chat) = self.http(reqwest::Method::POST, "/v1/chats", creator, Some(body)).await;
        assert!(status == 201 || status == 200, "create chat: {status} {chat}");
        chat["id"].as_str().expect("chat id").to_string()
    }

    /// Connects `user` to edge `i` and waits for `session:ready`.
    pub async fn connect(&self, i: usize, user: &str) -> client::Client {
        let mut c = client::Client::connect(&self.edges[i], serde_json::json!({ "token": self.token(user) }))
            .await
            .unwrap_or_else(|e| panic!("connect {user}: {e:?}"));
        c.expect_event("session:ready", Duration::from_secs(5)).await;
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub fn token(user: &str) -> String {
    confab_edge::auth::mint_hs256(SECRET.as_bytes(), user, None, None, 3600)
}

/// A token with the `name` and `picture` claims (the sender profile).
pub fn token_with_profile(user: &str, name: &str, picture: &str) -> String {
    confab_edge::auth::mint_hs256(SECRET.as_bytes(), user, Some(name), Some(picture), 3600)
}

/// One HTTP call; returns the status and the JSON body (Null when empty).
pub async fn http_call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = http.request(method, url).timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("http request");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// Polls `predicate` until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut predicate: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if predicate().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `confab` binary built beside the test executables. The test command
/// builds it first (`cargo build -p confab`); a missing one fails loudly.
pub fn confab_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("test binary has no target dir")?;
    let bin = dir.join("confab");
    if !bin.exists() {
        bail!("{} not found: build it with `cargo build -p confab` (scripts/test does)", bin.display());
    }
    Ok(bin)
}

/// The repository root (for `tests/node`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// The `data` of a successful ack; fails the test on an error ack.
pub fn data(ack: &serde_json::Value) -> &serde_json::Value {
    assert_eq!(ack["ok"], true, "expected success, got {ack}");
    &ack["data"]
}

/// Checks an error ack: the code, a message and a correlation id (CONTRACT §3).
pub fn error(ack: &serde_json::Value, code: &str) {
    assert_eq!(ack["ok"], false, "expected {code}, got {ack}");
    assert_eq!(ack["error"], code, "{ack}");
    assert!(ack["message"].as_str().is_some_and(|m| !m.is_empty()), "{ack}");
    assert!(ack["correlationId"].as_str().is_some_and(|c| c.len() == 36), "{ack}");
}

/// Logs to the test output when `CONFAB_LOG` is set (for debugging).
pub fn init_test_logging() {
    if std::env::var_os("CONFAB_LOG").is_some() {
        // No OTEL_* endpoint is set for the tests: nothing to flush at exit.
        let _ = confab_common::telemetry::init("confab-tests", "debug", false);
    }
}
