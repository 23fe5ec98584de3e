//! `loadgen`: runs one load scenario against a confab cluster (or a
//! benchmark peer) and prints a human summary, plus the report as JSON on
//! the last line with `--json`. `loadgen worker` is the child process the
//! coordinator starts (a plan on stdin, results on stdout).

use clap::Parser;

#[derive(Parser)]
#[command(name = "loadgen", about = "Socket.IO load generator for confab (idle, fanout, dm, reconnect)")]
struct Cli {
    #[command(flatten)]
    config: confab_loadgen::Config,
    /// Print the report as JSON on the last line.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if std::env::args().nth(1).as_deref() == Some("worker") {
        return runtime.block_on(confab_loadgen::worker_main());
    }
    let cli = Cli::parse();
    let report = runtime.block_on(confab_loadgen::run(&cli.config))?;
    println!("{}", report.summary());
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
