//! The servers under test, started as pinned child processes and stopped
//! (killed) when their [`Running`] handle drops, so no run leaves a process
//! behind for the next.

use anyhow::Context;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process holds at most 20,000 files here: edges get at most this many sockets.
pub const PER_EDGE: usize = 15_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// confab, every service in one process (`confab dev`).
    ConfabDev,
    /// confab as separate processes: store, presence, router and edges.
    ConfabCluster,
    /// The same with presence-svc on a redis-server (pinned with them).
    ConfabClusterRedis,
    /// The seed stack: one Node socket.io process.
    SeedNode,
    /// The seed stack: two Node processes behind the Redis adapter.
    SeedNodeRedis,
    /// A bare socketioxide server: the Socket.IO layer alone.
    Ceiling,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::ConfabDev,
        Target::ConfabCluster,
        Target::ConfabClusterRedis,
        Target::SeedNode,
        Target::SeedNodeRedis,
        Target::Ceiling,
    ];

    /// confab itself, as opposed to a peer it is compared with.
    pub fn is_confab(self) -> bool {
        matches!(self, Target::ConfabDev | Target::ConfabCluster | Target::ConfabClusterRedis)
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::ConfabDev => "confab-dev",
            Target::ConfabCluster => "confab-cluster",
            Target::ConfabClusterRedis => "confab-cluster-redis",
            Target::SeedNode => "seed-node",
            Target::SeedNodeRedis => "seed-node-redis",
            Target::Ceiling => "ceiling",
        }
    }
}

/// Where things are and how servers are started.
pub struct Env {
    pub root: PathBuf,
    pub bin: PathBuf,
    pub secret: String,
    pub server_cores: String,
    pub work: PathBuf,
}

/// A started target: where to connect, whose RSS counts, and its processes.
pub struct Running {
    pub urls: Vec<String>,
    pub rss_pids: Vec<u32>,
    children: Vec<Child>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A server that exited before it was ready (its log is in the work
/// directory).
#[derive(Debug)]
pub struct ExitedEarly(pub std::process::ExitStatus);

impl std::fmt::Display for ExitedEarly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server exited before it was ready ({})", self.0)
    }
}

impl std::error::Error for ExitedEarly {}

/// Fails with [`ExitedEarly`] when the child has exited.
fn exited(child: &mut Child) -> anyhow::Result<()> {
    match child.try_wait()? {
        Some(status) => Err(ExitedEarly(status).into()),
        None => Ok(()),
    }
}

/// Waits until `GET path` answers 200.
fn wait_ready(port: u16, path: &str, child: &mut Child, deadline: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        exited(child)?;
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).is_ok() && head.ends_with(b"200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("server on port {port} not ready within {deadline:?}")
}

/// Waits until something accepts connections on `port`.
fn wait_listening(port: u16, child: &mut Child, deadline: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        exited(child)?;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("nothing listening on port {port} within {deadline:?}")
}

impl Env {
    /// Starts `program args` pinned to the server cores, logging to `log`.
    fn spawn(&self, program: &Path, args: &[String], envs: &[(&str, String)], log: &str) -> anyhow::Result<Child> {
        let out = std::fs::File::create(self.work.join(log))?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(&self.server_cores).arg(program).args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.env("CONFAB_JWT_SECRET", &self.secret)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))
    }

    /// A pinned redis-server that keeps nothing on disk, owned by
    /// `running`; its URL.
    fn redis(&self, run: usize, running: &mut Running, ready: Duration) -> anyhow::Result<String> {
        let port = free_port()?;
        let args = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut redis = self.spawn(Path::new("redis-server"), &args, &[], &format!("{run}-redis.log"))?;
        wait_listening(port, &mut redis, ready)?;
        running.children.push(redis);
        Ok(format!("redis://127.0.0.1:{port}"))
    }

    fn confab(&self, role: &str, args: &[String], envs: &[(&str, String)], log: &str) -> anyhow::Result<Child> {
        let mut all = vec![role.to_string()];
        all.extend_from_slice(args);
        self.spawn(&self.bin.join("confab"), &all, envs, log)
    }

    /// Starts `target`, sized for `connections` sockets; on failure the
    /// error carries the end of the run's server logs.
    /// `envs` go to `confab dev` (tracing settings).
    pub fn start(
        &self,
        target: Target,
        connections: usize,
        run: usize,
        envs: &[(&str, String)],
    ) -> anyhow::Result<Running> {
        self.start_logged(target, connections, run, envs).map_err(|e| {
            let mut tails = String::new();
            for entry in std::fs::read_dir(&self.work).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with(&format!("{run}-")) {
                    let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    let last: Vec<&str> = text.lines().rev().take(3).collect();
                    tails.push_str(&format!(" [{name}: {}]", last.into_iter().rev().collect::<Vec<_>>().join(" / ")));
                }
            }
            e.context(format!("server logs:{tails}"))
        })
    }

    fn start_logged(
        &self,
        target: Target,
        connections: usize,
        run: usize,
        envs: &[(&str, String)],
    ) -> anyhow::Result<Running> {
        let s = |v: &str| v.to_string();
        let ready = Duration::from_secs(30);
        // Every load socket comes from a handful of loopback addresses:
        // no per-IP cap (a flag, not a loopback exemption in the edge).
        let high_limit = [s("--rate-limit-messages"), s("1000000000"), s("--max-connections-per-ip"), s("0")];
        let mut running = Running { urls: Vec::new(), rss_pids: Vec::new(), children: Vec::new() };
        match target {
            Target::ConfabDev => {
                let port = free_port()?;
                let dir = self.work.join(format!("dev-{run}"));
                let mut args = vec![s("--listen"), format!("127.0.0.1:{port}"), s("--data-dir")];
                args.push(dir.display().to_string());
                args.extend(high_limit);
                let mut child = self.confab("dev", &args, envs, &format!("{run}-confab-dev.log"))?;
                wait_ready(port, "/readyz", &mut child, ready)?;
                running.rss_pids.push(child.id());
                running.children.push(child);
                running.urls.push(format!("http://127.0.0.1:{port}"));
            }
            Target::ConfabCluster | Target::ConfabClusterRedis => {
                let (store, presence, router) = (free_port()?, free_port()?, free_port()?);
                let dir = self.work.join(format!("cluster-{run}"));
                let listen = |p: u16| vec![s("--listen"), format!("127.0.0.1:{p}")];
                let mut args = listen(store);
                args.extend([s("--data-dir"), dir.display().to_string()]);
                running.children.push(self.confab("store", &args, &[], &format!("{run}-store.log"))?);
                let mut args = listen(presence);
                if target == Target::ConfabClusterRedis {
                    args.extend([s("--redis-url"), self.redis(run, &mut running, ready)?]);
                }
                running.children.push(self.confab("presence", &args, &[], &format!("{run}-presence.log"))?);
                let mut args = listen(router);
                let router_url = format!("http://127.0.0.1:{router}");
                args.extend([s("--advertise"), router_url.clone(), s("--routers"), router_url.clone()]);
                args.extend([s("--store-url"), format!("http://127.0.0.1:{store}")]);
                running.children.push(self.confab("router", &args, &[], &format!("{run}-router.log"))?);
                for e in 0..connections.div_ceil(PER_EDGE).max(1) {
                    let port = free_port()?;
                    let mut args = listen(port);
                    args.extend([s("--routers"), router_url.clone()]);
                    args.extend([s("--store-url"), format!("http://127.0.0.1:{store}")]);
                    args.extend([s("--presence-url"), format!("http://127.0.0.1:{presence}")]);
                    args.extend(high_limit.clone());
                    let mut child = self.confab("edge", &args, &[], &format!("{run}-edge{e}.log"))?;
                    wait_ready(port, "/readyz", &mut child, ready)?;
                    running.rss_pids.push(child.id());
                    running.children.push(child);
                    running.urls.push(format!("http://127.0.0.1:{port}"));
                }
            }
            Target::SeedNode | Target::SeedNodeRedis => {
                let script = self.root.join("bench/seed-node/server.mjs");
                let mut envs = Vec::new();
                let processes = if target == Target::SeedNodeRedis {
                    envs.push(("REDIS_URL", self.redis(run, &mut running, ready)?));
                    2
                } else {
                    1
                };
                for i in 0..processes {
                    let port = free_port()?;
                    let mut envs = envs.clone();
                    envs.push(("PORT", port.to_string()));
                    let log = format!("{run}-seed-node{i}.log");
                    let mut child = self.spawn(Path::new("node"), &[script.display().to_string()], &envs, &log)?;
                    wait_ready(port, "/healthz", &mut child, ready)?;
                    running.rss_pids.push(child.id());
                    running.children.push(child);
                    running.urls.push(format!("http://127.0.0.1:{port}"));
                }
            }
            Target::Ceiling => {
                let port = free_port()?;
                let args = [s("--listen"), format!("127.0.0.1:{port}")];
                let mut child = self.spawn(&self.bin.join("ceiling"), &args, &[], &format!("{run}-ceiling.log"))?;
                wait_ready(port, "/healthz", &mut child, ready)?;
                running.rss_pids.push(child.id());
                running.children.push(child);
                running.urls.push(format!("http://127.0.0.1:{port}"));
            }
        }
        Ok(running)
    }
}
