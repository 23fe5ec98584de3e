//! Structured logging set-up, once per process. `CONFAB_LOG` (or `RUST_LOG`)
//! holds the filter; `--log-json` (`CONFAB_LOG_JSON`) switches to JSON lines.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call twice (the second is a no-op).
pub fn init(default_filter: &str, json: bool) {
    let filter = EnvFilter::try_from_env("CONFAB_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
