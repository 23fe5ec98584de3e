//! `loadgen`: runs one load scenario against a confab cluster and prints a
//! human summary, plus JSON with `--json`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "loadgen", about = "Socket.IO load generator for confab (group fan-out)")]
struct Cli {
    #[command(flatten)]
    config: confab_loadgen::Config,
    /// Print the report as JSON too.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(confab_loadgen::run(&cli.config))?;
    println!("{}", report.summary());
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
