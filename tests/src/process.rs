//! `confab` as a child process, for the tests that kill it, damage its
//! files or stop it by signal: the same binary and flags an operator runs.

use crate::{confab_bin, wait_until, SECRET};
use anyhow::{bail, Context};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a started process may take to print where it listens.
const URL_DEADLINE: Duration = Duration::from_secs(20);
/// How long it may then take to answer `/readyz` with 200.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// `confab <args> --listen 127.0.0.1:0 --data-dir <data_dir>` with the
/// tests' signing secret, warnings only in its log, a message rate limit
/// no test reaches, and killed when dropped.
pub fn command(args: &[&str], data_dir: &Path) -> anyhow::Result<Command> {
    let mut command = Command::new(confab_bin()?);
    command
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("CONFAB_JWT_SECRET", SECRET)
        .env("CONFAB_LOG", "warn")
        .env("CONFAB_RATE_LIMIT_MESSAGES", "100000")
        .kill_on_drop(true);
    Ok(command)
}

/// Starts `command` (a `confab dev`), reads the URL it prints and waits
/// until it is ready; its stdout is drained from then on so it never
/// blocks on it.
pub async fn start_dev(mut command: Command) -> anyhow::Result<(Child, String)> {
    let mut child = command.stdout(Stdio::piped()).spawn().context("spawn confab dev")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let url = tokio::time::timeout(URL_DEADLINE, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.trim().strip_prefix("socket.io + http:") {
                return Ok(url.trim().to_string());
            }
        }
        bail!("confab dev exited before printing its URL")
    })
    .await
    .context("confab dev did not print its URL in time")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let http = reqwest::Client::new();
    wait_until(READY_DEADLINE, || {
        let (http, url) = (http.clone(), format!("{url}/readyz"));
        async move { matches!(http.get(&url).send().await, Ok(r) if r.status() == 200) }
    })
    .await
    .context("confab dev never became ready")?;
    Ok((child, url))
}

/// Sends `signal` to a running child.
pub fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = child.id().expect("running child") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal the child");
}

/// A cluster of one process per role, as containers run it: store-svc on
/// the embedded store, presence-svc, one router and one edge, each
/// `confab <role>` on its own loopback ports, the backends serving
/// `/metrics` on `--metrics-listen`. Killed when dropped.
pub struct Roles {
    /// store, presence, router, edge: in [`ROLES`]' order.
    children: Vec<Child>,
    /// The edge's URL (Socket.IO, HTTP and its `/metrics`).
    pub edge: String,
    /// The gRPC URL of each backend role: router, store, presence.
    pub grpc: Vec<(&'static str, String)>,
    /// Each role's `/metrics` URL: edge, router, store, presence.
    pub metrics: Vec<(&'static str, String)>,
    _data: tempfile::TempDir,
}

/// The roles of [`Roles`], in the order they start.
const ROLES: [&str; 4] = ["store", "presence", "router", "edge"];

/// A loopback port free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Roles {
    /// Starts the four roles with `env` added to each (and the tests'
    /// secret and a message rate limit no test reaches), and waits until
    /// the edge is ready.
    pub async fn start(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let ports = (0..7).map(|_| free_port()).collect::<anyhow::Result<Vec<u16>>>()?;
        let &[store, presence, router, edge, store_m, presence_m, router_m] = &ports[..] else { unreachable!() };
        let at = |p: u16| format!("127.0.0.1:{p}");
        let url = |p: u16| format!("http://127.0.0.1:{p}");
        let data_dir = data.path().to_string_lossy().to_string();
        let roles: Vec<Vec<String>> = vec![
            vec![
                "store".into(),
                "--listen".into(),
                at(store),
                "--metrics-listen".into(),
                at(store_m),
                "--data-dir".into(),
                data_dir,
            ],
            vec!["presence".into(), "--listen".into(), at(presence), "--metrics-listen".into(), at(presence_m)],
            vec![
                "router".into(),
                "--listen".into(),
                at(router),
                "--metrics-listen".into(),
                at(router_m),
                "--advertise".into(),
                url(router),
                "--routers".into(),
                url(router),
                "--store-url".into(),
                url(store),
            ],
            vec![
                "edge".into(),
                "--listen".into(),
                at(edge),
                "--routers".into(),
                url(router),
                "--store-url".into(),
                url(store),
                "--presence-url".into(),
                url(presence),
            ],
        ];
        let mut children = Vec::new();
        for args in roles {
            let mut command = Command::new(confab_bin()?);
            command
                .args(&args)
                .env("CONFAB_JWT_SECRET", SECRET)
                .env("CONFAB_LOG", "warn")
                .env("CONFAB_RATE_LIMIT_MESSAGES", "100000")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .kill_on_drop(true);
            children.push(command.spawn().with_context(|| format!("spawn confab {}", args[0]))?);
        }
        let edge = url(edge);
        let metrics = vec![
            ("edge", format!("{edge}/metrics")),
            ("router", format!("{}/metrics", url(router_m))),
            ("store", format!("{}/metrics", url(store_m))),
            ("presence", format!("{}/metrics", url(presence_m))),
        ];
        let http = reqwest::Client::new();
        let mut wanted: Vec<String> = metrics.iter().map(|(_, m)| m.clone()).collect();
        wanted.push(format!("{edge}/readyz"));
        wait_until(URL_DEADLINE, || {
            let (http, wanted) = (http.clone(), wanted.clone());
            async move {
                for url in wanted {
                    if !matches!(http.get(&url).send().await, Ok(r) if r.status() == 200) {
                        return false;
                    }
                }
                true
            }
        })
        .await
        .context("the roles never became ready")?;
        let grpc = vec![("router", url(router)), ("store", url(store)), ("presence", url(presence))];
        Ok(Self { children, edge, metrics, grpc, _data: data })
    }

    /// Sends `role`'s process SIGTERM and waits (up to 15 s) for it to exit.
    pub async fn stop(&mut self, role: &str) -> anyhow::Result<()> {
        let i = ROLES.iter().position(|r| *r == role).context("no such role")?;
        let child = &mut self.children[i];
        signal(child, nix::sys::signal::Signal::SIGTERM);
        tokio::time::timeout(Duration::from_secs(15), child.wait()).await.context("it did not exit")??;
        Ok(())
    }
}
