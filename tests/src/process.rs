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
