//! `confab-bench`: runs confab (as `confab dev` and as separate processes)
//! and its peers (the Node seed stack, alone and behind the Redis adapter,
//! and a bare socketioxide server) through the same load scenarios in one
//! run: servers pinned to one set of cores, the load generator to another,
//! fresh processes for every run, each figure repeated. It writes every
//! run's report (`results.json`), a summary of medians, spreads and ratios
//! (`summary.md`, also printed) and SVG plots. `scripts/bench` builds what it
//! needs and runs it; BENCHMARKS.md explains the method and the figures.

mod plot;
mod stats;
mod targets;

use anyhow::Context;
use clap::Parser;
use stats::{field, fmt, passes, ratio, Record};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use targets::{Env, Target};

#[derive(Parser)]
#[command(name = "confab-bench", about = "confab against the seed stack and a bare socketioxide server")]
struct Cli {
    /// Where results, summary and plots go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// A smoke run: one repeat, small sizes, a few minutes.
    #[arg(long)]
    quick: bool,
    /// Runs per figure (medians and spreads are over these).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Only these targets (comma separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Target>,
    /// Only these scenarios: idle, fanout, dm, reconnect (comma separated).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Repeat the long runs too (S1 at 50k and 100k, S4, and the peers' S1 at 10k and S3), not only S2 and
    /// confab's S1 at 10k and S3.
    #[arg(long)]
    repeat_long: bool,
    /// CPUs (taskset list) for the servers.
    #[arg(long, default_value = "0")]
    server_cores: String,
    /// CPUs (taskset list) for the load generator.
    #[arg(long, default_value = "1")]
    load_cores: String,
}

/// The p99 a fan-out rate must stay under to count.
const P99_MS: f64 = 100.0;
/// S2 and S3 with every message carrying two attachments (Contract 1.1):
/// `confab dev` only, in the same run as the plain points.
const ATTACHED_FANOUT: &str = "fanout+2att";
const ATTACHED_DM: &str = "dm+2att";

/// S2 with tracing on, exporting to an OTLP receiver in this process:
/// `confab dev` only, ratio sampler at 1 % and at 100 %.
const TRACED_1: &str = "fanout+trace1";
const TRACED_100: &str = "fanout+trace100";

/// The sampling ratio a scenario's name asks for, if it traces.
fn trace_ratio(scenario: &str) -> Option<&'static str> {
    match scenario {
        TRACED_1 => Some("0.01"),
        TRACED_100 => Some("1"),
        _ => None,
    }
}

/// What a scenario's name adds to loadgen's arguments.
fn attachment_args(scenario: &str) -> Vec<String> {
    if scenario == ATTACHED_FANOUT || scenario == ATTACHED_DM {
        vec!["--attachments".into(), "2".into()]
    } else {
        Vec::new()
    }
}

/// The loadgen scenario a record's name stands for.
fn loadgen_scenario(scenario: &str) -> &str {
    scenario.split('+').next().unwrap_or(scenario)
}

/// The knee of `scenario` for `t`: the highest rate that passed, with the
/// deliveries per second there and the generator's busiest core.
fn knee(records: &[Record], scenario: &str, t: Target) -> Option<(f64, f64, Option<f64>)> {
    let mut rates: Vec<f64> =
        records.iter().filter(|r| r.scenario == scenario && r.target == t).map(|r| r.param).collect();
    rates.dedup();
    rates.into_iter().rev().find(|&rate| passes(records, scenario, t, rate, P99_MS)).map(|rate| {
        let f = |p: &str| field(records, scenario, t, rate, p).map(|s| s.median);
        (rate, f("/delivered_per_sec").unwrap_or(0.0), f("/loadgen_cpu/max_core_percent"))
    })
}
/// Above this share of its core the generator calls itself saturated (as
/// `loadgen` prints): a rate passed there is a lower bound on the knee.
const GENERATOR_SATURATED_PERCENT: f64 = 90.0;

struct Bench {
    cli: Cli,
    env: Env,
    records: Vec<Record>,
    runs: usize,
    /// The OTLP receiver of the traced points, started with the first.
    otlp: Option<(tokio::runtime::Runtime, confab_tests::otlp::Receiver)>,
}

impl Bench {
    fn repeats(&self) -> usize {
        if self.cli.quick {
            1
        } else {
            self.cli.repeats.max(1)
        }
    }

    fn long_repeats(&self) -> usize {
        if self.cli.repeat_long {
            self.repeats()
        } else {
            1
        }
    }

    /// Runs of S1 at 10,000 and of S3: confab's, whose targets are
    /// absolute (and S3's rides on the disk), as often as S2's points; a
    /// peer's, whose 10,000 connections take Node 15-30 s to accept, once
    /// unless `--repeat-long`. S2, where the ratios are taken, repeats
    /// every target alike.
    fn absolute_repeats(&self, target: Target) -> usize {
        if target.is_confab() {
            self.repeats()
        } else {
            self.long_repeats()
        }
    }

    fn wants(&self, scenario: &str) -> bool {
        self.cli.scenarios.is_empty() || self.cli.scenarios.iter().any(|s| s == scenario)
    }

    fn targets(&self) -> Vec<Target> {
        Target::ALL.into_iter().filter(|t| self.cli.only.is_empty() || self.cli.only.contains(t)).collect()
    }

    /// `repeats` runs of one point (the long scenarios run once unless
    /// `--repeat-long`, to keep the whole benchmark under 15 minutes).
    fn run_n(
        &mut self,
        repeats: usize,
        scenario: &'static str,
        target: Target,
        param: f64,
        connections: usize,
        args: &[String],
    ) {
        for repeat in 0..repeats {
            self.run_one(repeat, scenario, target, param, connections, args);
        }
    }

    /// One run, recorded as the `repeat`-th of its point.
    fn run_one(
        &mut self,
        repeat: usize,
        scenario: &'static str,
        target: Target,
        param: f64,
        connections: usize,
        args: &[String],
    ) {
        {
            self.runs += 1;
            let started = Instant::now();
            let result = self.run_once(scenario, target, connections, args);
            let (report, error) = match result {
                Ok(v) => (Some(v), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            let line = match (&report, &error) {
                (Some(r), _) => format!(
                    "p99 {:.1} ms, {:.0} delivered/s, {:.0} conn/s, RSS/conn {}, lost {}",
                    r.pointer("/delivery_ms/p99").and_then(|v| v.as_f64()).unwrap_or(0.0),
                    r["delivered_per_sec"].as_f64().unwrap_or(0.0),
                    r["connect_per_sec"].as_f64().unwrap_or(0.0),
                    r["rss_per_connection_bytes"].as_f64().map_or("n/a".into(), |b| format!("{:.1} KB", b / 1024.0)),
                    r["lost"],
                ),
                (_, Some(e)) => format!("FAILED: {e}"),
                _ => String::new(),
            };
            eprintln!(
                "[{:>4.0}s] {scenario:<9} {:<15} {param:>7} #{repeat}: {line} ({:.0}s)",
                self.started().as_secs_f64(),
                target.name(),
                started.elapsed().as_secs_f64()
            );
            self.records.push(Record { scenario, target, param, repeat, report, error });
        }
    }

    fn started(&self) -> Duration {
        START.get().map(|s| s.elapsed()).unwrap_or_default()
    }

    /// `confab dev`'s environment for `scenario`: tracing to the receiver
    /// at its ratio, or nothing.
    fn trace_envs(&mut self, scenario: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
        let Some(ratio) = trace_ratio(scenario) else { return Ok(Vec::new()) };
        if self.otlp.is_none() {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let receiver = runtime.block_on(confab_tests::otlp::Receiver::start_counting())?;
            self.otlp = Some((runtime, receiver));
        }
        let endpoint = self.otlp.as_ref().map(|(_, r)| r.grpc_url.clone()).unwrap_or_default();
        Ok(vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()),
            ("OTEL_TRACES_SAMPLER_ARG", ratio.into()),
            // Exports during a 2 s run, not only at exit.
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ])
    }

    fn spans_received(&self) -> u64 {
        self.otlp.as_ref().map_or(0, |(_, r)| r.span_count())
    }

    fn run_once(
        &mut self,
        scenario: &str,
        target: Target,
        connections: usize,
        args: &[String],
    ) -> anyhow::Result<serde_json::Value> {
        // What earlier runs left for the disk is written now, not during
        // this run (confab's store fsyncs, and would wait for it).
        let synced = Command::new("sync").status().context("running sync")?;
        anyhow::ensure!(synced.success(), "sync failed: {synced}");
        // confab's store fsyncs every commit: note what the disk gave just
        // before the run, so a reader can tell the disk's stalls from ours.
        let disk = match target {
            Target::ConfabDev | Target::ConfabCluster | Target::ConfabClusterRedis => {
                Some(probe_disk(&self.env.work, DISK_PROBE)?)
            }
            _ => None,
        };
        let envs = self.trace_envs(scenario)?;
        // A port picked free can be taken by the time a server binds it,
        // and the server exits: try again with fresh ports (a server that
        // cannot start at all fails the same way each time).
        let mut attempt = 0;
        let running = loop {
            match self.env.start(target, connections, self.runs * 10 + attempt, &envs) {
                Ok(r) => break r,
                Err(e) if attempt < 2 && exited_early(&e) => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        let pids: Vec<String> = running.rss_pids.iter().map(u32::to_string).collect();
        let spans_before = self.spans_received();
        let output = Command::new("taskset")
            .arg("-c")
            .arg(&self.cli.load_cores)
            .arg(self.env.bin.join("loadgen"))
            .arg(loadgen_scenario(scenario))
            .args(["--url", &running.urls.join(","), "--server-pids", &pids.join(",")])
            .args(["--tag", &format!("r{}", self.runs), "--json"])
            .args(args)
            .env("CONFAB_JWT_SECRET", &self.env.secret)
            .stdin(Stdio::null())
            .output()
            .context("running loadgen")?;
        // Stopping confab flushes what its exporter still holds.
        drop(running);
        let spans = self.spans_received() - spans_before;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            // anyhow's error and its causes, without the backtrace.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let why: Vec<&str> = stderr
                .lines()
                .take_while(|l| !l.starts_with("Stack backtrace"))
                .filter(|l| !l.trim().is_empty())
                .collect();
            anyhow::bail!("loadgen failed: {}", why.join(" / "));
        }
        let last = stdout.lines().last().unwrap_or("");
        let mut report: serde_json::Value = serde_json::from_str(last).context("loadgen printed no JSON report")?;
        if let (Some(disk), Some(fields)) = (disk, report.as_object_mut()) {
            fields.insert("disk_fsync_ms".into(), disk);
        }
        if let (Some(_), Some(fields)) = (trace_ratio(scenario), report.as_object_mut()) {
            fields.insert("otlp_spans".into(), spans.into());
        }
        Ok(report)
    }
}

/// A start that failed because a server exited before it was ready.
fn exited_early(e: &anyhow::Error) -> bool {
    e.downcast_ref::<targets::ExitedEarly>().is_some()
}

/// The disk probe's figure for confab's targets, "–" for the others.
fn disk(t: Target, probe: Option<stats::Spread>) -> String {
    match t {
        Target::ConfabDev | Target::ConfabCluster | Target::ConfabClusterRedis => fmt(probe, 1),
        _ => "–".into(),
    }
}

/// How long the disk is probed before each confab run.
const DISK_PROBE: Duration = Duration::from_millis(300);
/// How long the CPU probe runs at the start and end of the whole run.
const CPU_PROBE: Duration = Duration::from_millis(500);

/// 4 KiB written over and over to one place in a file of `dir`, each
/// followed by `fdatasync`, for `time`: the latencies' p50, p99 and max in
/// milliseconds.
fn probe_disk(dir: &std::path::Path, time: Duration) -> anyhow::Result<serde_json::Value> {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir)?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("fsync-probe"))?;
    let (block, end) = ([7u8; 4096], Instant::now() + time);
    let mut ms = Vec::new();
    while Instant::now() < end {
        file.write_all_at(&block, 0)?;
        let t = Instant::now();
        file.sync_data()?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Ok(serde_json::json!({ "p50": at(0.5), "p99": at(0.99), "max": at(1.0), "samples": ms.len() }))
}

/// The host's speed for plain arithmetic: millions of xorshift steps per
/// second over `time`, on an otherwise idle machine. Runs on different
/// days (or hours) of this VM differ by this much before any server is
/// measured.
fn probe_cpu(time: Duration) -> f64 {
    let (start, mut x, mut steps) = (Instant::now(), 0x9e37_79b9_7f4a_7c15u64, 0u64);
    while start.elapsed() < time {
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        x = std::hint::black_box(x);
        steps += 100_000;
    }
    steps as f64 / start.elapsed().as_secs_f64() / 1e6
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn s(v: impl ToString) -> String {
    v.to_string()
}

fn check_tools() -> anyhow::Result<()> {
    for (tool, arg) in [("taskset", "-V"), ("node", "--version"), ("redis-server", "--version")] {
        let ok = Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status();
        anyhow::ensure!(ok.is_ok_and(|s| s.success()), "{tool} is required (scripts/bench checks for it)");
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    anyhow::ensure!(cores >= 2, "the benchmark pins servers and load to different cores: it needs at least 2");
    Ok(())
}

/// Per core: (stolen, total) jiffies from `/proc/stat`, since boot.
fn cpu_times() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal ...
            (v.get(7).copied().unwrap_or(0), v.iter().take(8).sum())
        })
        .collect()
}

/// The share of each core's time the hypervisor gave to someone else
/// between two [`cpu_times`] readings, in percent.
fn steal_percent(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a.1.saturating_sub(b.1).max(1);
            100.0 * a.0.saturating_sub(b.0) as f64 / total as f64
        })
        .collect()
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    serde_json::json!({ "cpu": cpu, "cores": cores, "kernel": kernel })
}

fn main() -> anyhow::Result<()> {
    START.get_or_init(Instant::now);
    let cli = Cli::parse();
    check_tools()?;
    let root = std::env::current_dir()?;
    let bin = root.join("target/release");
    for b in ["confab", "loadgen", "ceiling"] {
        anyhow::ensure!(bin.join(b).exists(), "{} is missing: run scripts/bench", bin.join(b).display());
    }
    anyhow::ensure!(root.join("bench/seed-node/node_modules/socket.io").exists(), "run npm ci in bench/seed-node");
    let work = std::env::temp_dir().join(format!("confab-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let secret: String = (0..32).map(|_| char::from(b'a' + rand::random_range(0..26u8))).collect();
    let env = Env { root, bin, secret, server_cores: cli.server_cores.clone(), work: work.clone() };
    let mut bench = Bench { cli, env, records: Vec::new(), runs: 0, otlp: None };
    // On a virtual machine, time stolen by the hypervisor slows every
    // target alike; the summary says how much there was.
    let cpu_before = cpu_times();
    let probe_before = probe_cpu(CPU_PROBE);
    let quick = bench.cli.quick;
    let targets = bench.targets();

    if bench.wants("idle") {
        for &t in &targets {
            let mut sizes = vec![if quick { 2000 } else { 10_000 }];
            if t == Target::ConfabCluster && !quick {
                sizes.extend([50_000, 100_000]);
            }
            for n in sizes {
                let repeats = if n > 10_000 { bench.long_repeats() } else { bench.absolute_repeats(t) };
                bench.run_n(repeats, "idle", t, n as f64, n, &[s("--connections"), s(n)]);
            }
        }
    }
    if bench.wants("fanout") {
        // Up to 16,000 msgs/s (1.6 million deliveries/s): past confab's knee
        // and the ceiling's doubled on a fast host, within what the
        // generator's one core receives (it was at 54–66 % there); the summary
        // flags a knee where the generator was saturated.
        let rates: &[f64] = if quick {
            &[100.0, 1000.0]
        } else {
            &[100.0, 500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0, 10000.0, 12000.0, 14000.0, 16000.0]
        };
        let seconds = "2";
        for &t in &targets {
            // confab's ladder also with Contract 1.1 payloads and with
            // tracing on at 1 % and 100 %: the variants take turns at each
            // rate and repeat, so that the host's drift over the run falls
            // on all of them alike, and their knees compare within one run.
            let mut payloads: Vec<&'static str> = if t == Target::ConfabDev {
                vec!["fanout", ATTACHED_FANOUT, TRACED_1, TRACED_100]
            } else {
                vec!["fanout"]
            };
            for &rate in rates {
                for repeat in 0..bench.repeats() {
                    for &scenario in &payloads {
                        let mut args = vec![s("--rate"), s(rate), s("--seconds"), s(seconds)];
                        args.extend(attachment_args(scenario));
                        bench.run_one(repeat, scenario, t, rate, 1000, &args);
                    }
                }
                // Past the first point, a variant stops at the first rate it misses.
                if rate > 100.0 {
                    payloads.retain(|scenario| passes(&bench.records, scenario, t, rate, P99_MS));
                }
                if payloads.is_empty() {
                    break;
                }
            }
        }
    }
    if bench.wants("dm") {
        let (pairs, rate) = if quick { (500, 200) } else { (5000, 1000) };
        for &t in &targets {
            let payloads: &[&'static str] = if t == Target::ConfabDev { &["dm", ATTACHED_DM] } else { &["dm"] };
            for &scenario in payloads {
                let mut args = vec![s("--pairs"), s(pairs), s("--rate"), s(rate), s("--seconds"), s(5)];
                args.extend(attachment_args(scenario));
                // confab's three times like S2: its figure rides on the disk's
                // fsync tail, which one run samples too thinly.
                bench.run_n(bench.absolute_repeats(t), scenario, t, rate as f64, pairs * 2, &args);
            }
        }
    }
    if bench.wants("reconnect") {
        let (chats, members) = if quick { (10, 50) } else { (100, 100) };
        for &t in &targets {
            let args = [s("--chats"), s(chats), s("--members"), s(members), s("--rate"), s(200), s("--seconds"), s(12)];
            bench.run_n(bench.long_repeats(), "reconnect", t, 200.0, chats * members, &args);
        }
    }

    let out = bench.cli.out.clone();
    std::fs::create_dir_all(&out)?;
    let steal = steal_percent(&cpu_before, &cpu_times());
    let probe = [probe_before, probe_cpu(CPU_PROBE)];
    let results = serde_json::json!({
        "machine": machine(),
        "steal_percent_per_core": steal,
        "cpu_probe_million_steps_per_sec": probe,
        "server_cores": bench.cli.server_cores,
        "load_cores": bench.cli.load_cores,
        "repeats": bench.repeats(),
        "runs": bench.records,
    });
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    let mut summary = summarize(&bench.records, &targets, &out)?;
    let steal: Vec<String> = steal.iter().enumerate().map(|(i, p)| format!("core {i} {p:.1} %")).collect();
    summary.push_str(&format!(
        "\nCPU time the hypervisor gave to other guests during the whole run (steal, `/proc/stat`): {}.\n",
        steal.join(", ")
    ));
    summary.push_str(&format!(
        "The host's arithmetic speed (xorshift steps, the machine idle): {:.0} million/s at the start, {:.0} at the end.\n",
        probe[0], probe[1]
    ));
    std::fs::write(out.join("summary.md"), &summary)?;
    println!("{summary}");
    println!("elapsed: {:.0} s; results in {}", START.get().map_or(0.0, |s| s.elapsed().as_secs_f64()), out.display());
    let _ = std::fs::remove_dir_all(work);
    Ok(())
}

/// The markdown summary, and the plots beside it.
fn summarize(records: &[Record], targets: &[Target], out: &std::path::Path) -> anyhow::Result<String> {
    let mut md = String::new();
    let params = |scenario: &str, t: Target| {
        let mut v: Vec<f64> =
            records.iter().filter(|r| r.scenario == scenario && r.target == t).map(|r| r.param).collect();
        v.dedup();
        v
    };
    let has = |scenario: &str| records.iter().any(|r| r.scenario == scenario);

    if has("idle") {
        md.push_str("## S1 idle capacity\n\n| target | connections | RSS per connection (KB) | connections/s | loadgen CPU % |\n|---|---|---|---|---|\n");
        let mut series = Vec::new();
        for &t in targets {
            let mut points = Vec::new();
            for n in params("idle", t) {
                let rss = field(records, "idle", t, n, "/rss_per_connection_bytes").map(|s| stats::Spread {
                    median: s.median / 1024.0,
                    min: s.min / 1024.0,
                    max: s.max / 1024.0,
                    n: s.n,
                });
                let rate = field(records, "idle", t, n, "/connect_per_sec");
                let cpu = field(records, "idle", t, n, "/loadgen_cpu/max_core_percent");
                md.push_str(&format!(
                    "| {} | {n:.0} | {} | {} | {} |\n",
                    t.name(),
                    fmt(rss, 1),
                    fmt(rate, 0),
                    fmt(cpu, 0)
                ));
                if let Some(r) = rss {
                    points.push((n, r.median));
                }
            }
            if !points.is_empty() {
                series.push(plot::Series { name: t.name().into(), points });
            }
        }
        if !series.is_empty() {
            plot::lines(
                &out.join("s1-rss.svg"),
                "S1: RSS per idle connection",
                "connections",
                "KB per connection",
                &series,
                false,
            )?;
            md.push_str("\n![RSS per connection](s1-rss.svg)\n\n");
        }
    }

    if has("fanout") {
        md.push_str("## S2 group fan-out (10 chats × 100)\n\n| target | sent/s | delivered/s | p50 ms | p99 ms | p99.9 ms | lost | loadgen CPU % | disk fsync max ms |\n|---|---|---|---|---|---|---|---|---|\n");
        let (mut p99_series, mut best) = (Vec::new(), Vec::new());
        for &t in targets {
            let mut points = Vec::new();
            for rate in params("fanout", t) {
                let f = |p: &str| field(records, "fanout", t, rate, p);
                md.push_str(&format!(
                    "| {} | {rate:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
                    t.name(),
                    fmt(f("/delivered_per_sec"), 0),
                    fmt(f("/delivery_ms/p50"), 1),
                    fmt(f("/delivery_ms/p99"), 1),
                    fmt(f("/delivery_ms/p999"), 1),
                    fmt(f("/lost"), 0),
                    fmt(f("/loadgen_cpu/max_core_percent"), 0),
                    disk(t, f("/disk_fsync_ms/max")),
                ));
                if let Some(p) = f("/delivery_ms/p99") {
                    points.push((rate, p.median));
                }
            }
            p99_series.push(plot::Series { name: t.name().into(), points });
            best.push((t, knee(records, "fanout", t)));
        }
        let best_of = |t: Target| best.iter().find(|(b, _)| *b == t).and_then(|(_, v)| v.map(|v| v.1));
        let p99_at = |t: Target| field(records, "fanout", t, 1000.0, "/delivery_ms/p99").map(|s| s.median);
        md.push_str("\nHighest sent rate with median p99 under 100 ms and no loss:\n\n| target | sent/s | delivered/s | × seed-node | × ceiling | p99 at 1,000 msgs/s | × seed-node (lower is better) |\n|---|---|---|---|---|---|---|\n");
        // The highest rate run at all: a target that passed it has its knee
        // somewhere above, and its ratios are lower bounds.
        let schedule_top = targets.iter().flat_map(|&t| params("fanout", t)).fold(0.0, f64::max);
        for (t, top) in &best {
            let (rate, delivered) = top.map_or(("none".to_string(), None), |(r, d, cpu)| {
                let mut mark = if r >= schedule_top { " (top of the schedule)".to_string() } else { String::new() };
                // The server kept up with a generator that could send and
                // read no faster: its knee is at least this.
                if let Some(cpu) = cpu.filter(|&c| c > GENERATOR_SATURATED_PERCENT) {
                    mark.push_str(&format!(" (generator at {cpu:.0} %: a lower bound)"));
                }
                (format!("{r:.0}{mark}"), Some(d))
            });
            md.push_str(&format!(
                "| {} | {rate} | {} | {} | {} | {} | {} |\n",
                t.name(),
                delivered.map_or("–".into(), |d| format!("{d:.0}")),
                ratio(delivered, best_of(Target::SeedNode)),
                ratio(delivered, best_of(Target::Ceiling)),
                p99_at(*t).map_or("–".into(), |p| format!("{p:.1} ms")),
                ratio(p99_at(*t), p99_at(Target::SeedNode)),
            ));
        }
        md.push_str(
            "\nloadgen CPU % is the busiest generator process's share of its core from the first send until \
             every chat's last message had reached all its members; near 100 % the row measures the generator \
             as much as the server.\n",
        );
        p99_series.retain(|s| !s.points.is_empty());
        if !p99_series.is_empty() {
            plot::lines(
                &out.join("s2-latency.svg"),
                "S2: p99 delivery latency against sent rate",
                "messages sent per second (×100 deliveries)",
                "p99 ms (log)",
                &p99_series,
                true,
            )?;
            md.push_str("\n![p99 against sent rate](s2-latency.svg)\n\n");
        }
    }

    if has("dm") {
        md.push_str("## S3 direct messages (5,000 two-person chats, 1,000 msgs/s)\n\n| target | delivered/s | p50 ms | p99 ms | p99.9 ms | max ms | lost | loadgen CPU % | disk fsync max ms |\n|---|---|---|---|---|---|---|---|---|\n");
        for &t in targets {
            for rate in params("dm", t) {
                let f = |p: &str| field(records, "dm", t, rate, p);
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    t.name(),
                    fmt(f("/delivered_per_sec"), 0),
                    fmt(f("/delivery_ms/p50"), 1),
                    fmt(f("/delivery_ms/p99"), 1),
                    fmt(f("/delivery_ms/p999"), 1),
                    fmt(f("/delivery_ms/max"), 1),
                    fmt(f("/lost"), 0),
                    fmt(f("/loadgen_cpu/max_core_percent"), 0),
                    disk(t, f("/disk_fsync_ms/max")),
                ));
            }
        }
        md.push('\n');
    }

    if has("reconnect") {
        md.push_str("## S4 reconnect storm (everyone but the senders drops at once, reconnects with sinceSeq)\n\n| target | clients | recovered | missed seqs | recovery p50 ms | p99 ms | all within ms |\n|---|---|---|---|---|---|---|\n");
        for &t in targets {
            for rate in params("reconnect", t) {
                let f = |p: &str| field(records, "reconnect", t, rate, p);
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    t.name(),
                    fmt(f("/recovery/clients"), 0),
                    fmt(f("/recovery/recovered"), 0),
                    fmt(f("/recovery/missed"), 0),
                    fmt(f("/recovery/recovery_ms/p50"), 0),
                    fmt(f("/recovery/recovery_ms/p99"), 0),
                    fmt(f("/recovery/recovery_ms/max"), 0),
                ));
            }
        }
        md.push('\n');
    }
    if has(ATTACHED_FANOUT) || has(ATTACHED_DM) {
        md.push_str(&attachments_section(records, targets));
    }
    if has(TRACED_1) || has(TRACED_100) {
        md.push_str(&tracing_section(records));
    }
    let failed: Vec<&Record> = records.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        md.push_str("## Failed runs\n\n");
        for r in failed {
            md.push_str(&format!(
                "- {} {} {} #{}: {}\n",
                r.scenario,
                r.target.name(),
                r.param,
                r.repeat,
                r.error.as_deref().unwrap_or("")
            ));
        }
    }
    Ok(md)
}

/// Contract 1.1's cost: confab's S2 knee and S3 latency with two
/// attachments per message beside the plain ones of the same run.
fn attachments_section(records: &[Record], targets: &[Target]) -> String {
    let mut md = String::from(
        "## Contract 1.1 payloads: S2 and S3 with two attachments per message\n\n\
         | target | S2 knee plain (sent/s) | S2 knee 2 attachments | knee moved | S3 p99 plain ms | S3 p99 2 attachments ms |\n\
         |---|---|---|---|---|---|\n",
    );
    let has_attached = |t: Target| records.iter().any(|r| r.target == t && !attachment_args(r.scenario).is_empty());
    for &t in targets.iter().filter(|&&t| has_attached(t)) {
        let (plain, attached) = (knee(records, "fanout", t), knee(records, ATTACHED_FANOUT, t));
        let rate = |k: Option<(f64, f64, Option<f64>)>| k.map_or("none".to_string(), |k| format!("{:.0}", k.0));
        let moved = match (plain, attached) {
            (Some(p), Some(a)) => format!("{:+.0} %", 100.0 * (a.0 - p.0) / p.0),
            _ => "–".into(),
        };
        let dm = |scenario: &str| {
            let rates: Vec<f64> =
                records.iter().filter(|r| r.scenario == scenario && r.target == t).map(|r| r.param).collect();
            fmt(rates.first().and_then(|&r| field(records, scenario, t, r, "/delivery_ms/p99")), 1)
        };
        md.push_str(&format!(
            "| {} | {} | {} | {moved} | {} | {} |\n",
            t.name(),
            rate(plain),
            rate(attached),
            dm("dm"),
            dm(ATTACHED_DM)
        ));
    }
    md.push_str(
        "\nThe knee is the highest rate of S2's schedule with median p99 under 100 ms and no loss; the rates \
         are the schedule's steps, so a move of one step is the finest this table shows.\n\n",
    );
    md
}

/// Tracing's cost: `confab dev`'s S2 knee and its p99 at 1,000 msgs/s
/// with tracing off, at 1 % and at 100 %, exporting to a local receiver.
fn tracing_section(records: &[Record]) -> String {
    let t = Target::ConfabDev;
    let mut md = String::from(
        "## Tracing: S2 with OTLP export at 1 % and 100 % sampling (confab-dev)\n\n\
         | tracing | S2 knee (sent/s) | knee moved | p99 at 1,000 msgs/s ms | server CPU µs per message at 1,000 msgs/s | spans exported at 1,000 msgs/s |\n\
         |---|---|---|---|---|---|\n",
    );
    let off = knee(records, "fanout", t);
    for (label, scenario) in [("off", "fanout"), ("1 %", TRACED_1), ("100 %", TRACED_100)] {
        let k = knee(records, scenario, t);
        let moved = match (off, k) {
            (Some(o), Some(k)) if scenario != "fanout" => format!("{:+.0} %", 100.0 * (k.0 - o.0) / o.0),
            _ => "–".into(),
        };
        let at = |p: &str| field(records, scenario, t, 1000.0, p);
        md.push_str(&format!(
            "| {label} | {} | {moved} | {} | {} | {} |\n",
            k.map_or("none".to_string(), |k| format!("{:.0}", k.0)),
            fmt(at("/delivery_ms/p99"), 1),
            fmt(at("/server_cpu_us_per_message"), 0),
            if scenario == "fanout" { "–".to_string() } else { fmt(at("/otlp_spans"), 0) },
        ));
    }
    md.push_str(
        "\nThe traced points take turns with the plain ones at each rate and repeat, exporting to a \
         receiver in the benchmark's own process (gRPC, batched every 200 ms); the knee is as in S2 above.\n\n",
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(scenario: &'static str, rate: f64, p99: f64) -> Record {
        let report = serde_json::json!({
            "delivery_ms": { "p99": p99 },
            "lost": 0,
            "delivered_per_sec": rate * 100.0,
            "server_cpu_us_per_message": p99 + 40.0,
        });
        Record { scenario, target: Target::ConfabDev, param: rate, repeat: 0, report: Some(report), error: None }
    }

    #[test]
    fn attachment_points_run_loadgens_scenario_and_have_their_own_knee() {
        assert_eq!((loadgen_scenario(ATTACHED_FANOUT), loadgen_scenario("dm")), ("fanout", "dm"));
        assert_eq!(attachment_args(ATTACHED_DM), ["--attachments", "2"]);
        assert!(attachment_args("fanout").is_empty());
        let t = Target::ConfabDev;
        let records = vec![
            point("fanout", 1000.0, 10.0),
            point("fanout", 2000.0, 40.0),
            point("fanout", 3000.0, 300.0),
            point(ATTACHED_FANOUT, 1000.0, 20.0),
            point(ATTACHED_FANOUT, 2000.0, 120.0),
        ];
        assert_eq!(knee(&records, "fanout", t).map(|k| (k.0, k.1)), Some((2000.0, 200_000.0)));
        assert_eq!(knee(&records, ATTACHED_FANOUT, t).map(|k| k.0), Some(1000.0));
        let md = attachments_section(&records, &[t]);
        assert!(md.contains("| confab-dev | 2000 | 1000 | -50 % |"), "{md}");
    }

    #[test]
    fn traced_points_run_fanout_at_their_ratio_and_are_compared_with_the_plain_knee() {
        assert_eq!(
            (trace_ratio(TRACED_1), trace_ratio(TRACED_100), trace_ratio("fanout")),
            (Some("0.01"), Some("1"), None)
        );
        assert_eq!(loadgen_scenario(TRACED_100), "fanout");
        let records = vec![
            point("fanout", 1000.0, 10.0),
            point("fanout", 2000.0, 40.0),
            point(TRACED_1, 1000.0, 12.0),
            point(TRACED_1, 2000.0, 45.0),
            point(TRACED_100, 1000.0, 30.0),
            point(TRACED_100, 2000.0, 130.0),
        ];
        let md = tracing_section(&records);
        assert!(md.contains("| off | 2000 | – | 10.0 | 50 | – |"), "{md}");
        assert!(md.contains("| 1 % | 2000 | +0 % | 12.0 | 52 | failed |"), "{md}");
        assert!(md.contains("| 100 % | 1000 | -50 % | 30.0 | 70 | failed |"), "{md}");
    }

    #[test]
    fn steal_is_the_stolen_share_of_each_cores_time() {
        let before = [(10, 1000), (0, 1000)];
        let after = [(30, 1200), (0, 1400)];
        assert_eq!(steal_percent(&before, &after), vec![10.0, 0.0]);
        // This machine's own /proc/stat: a reading per core.
        let now = cpu_times();
        assert!(!now.is_empty());
        assert!(now.iter().all(|(stolen, total)| stolen <= total && *total > 0));
    }

    #[test]
    fn the_cpu_probe_counts_steps() {
        let speed = probe_cpu(Duration::from_millis(20));
        // A debug build here does about 120 million a second; a million is
        // a floor any machine clears.
        assert!(speed.is_finite() && speed > 1.0, "{speed}");
    }

    /// A start is retried when a server exited early, however much
    /// context the error gathered on the way; not for other failures.
    #[test]
    fn a_server_that_exited_early_is_started_again() {
        use std::os::unix::process::ExitStatusExt;
        let early = anyhow::Error::from(targets::ExitedEarly(std::process::ExitStatus::from_raw(1 << 8)));
        let early = early.context("server logs: [1-edge.log: address in use]");
        assert!(exited_early(&early), "{early:#}");
        assert!(!exited_early(&anyhow::anyhow!("server on port 1 not ready within 30s")));
    }
}
