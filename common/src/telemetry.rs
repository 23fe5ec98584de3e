//! Logs, traces and metrics, set up once per process.
//!
//! Logs: `CONFAB_LOG` (or `RUST_LOG`) holds the filter; `--log-json`
//! (`CONFAB_LOG_JSON`) switches to JSON lines. Traces ([`traces`]): spans
//! of the target [`SPANS`] go to an OTLP collector when the standard
//! `OTEL_*` variables name one, with W3C trace context carried across every
//! gRPC call ([`propagation`]); with no endpoint those spans are disabled
//! at their call sites. Metrics ([`metrics`]): one registry per service,
//! served as Prometheus text and, with an endpoint, pushed over OTLP.

pub mod metrics;
pub mod propagation;
pub mod traces;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use traces::{Settings as TraceSettings, SPANS};

/// The process's tracing set-up; [`Telemetry::shutdown`] flushes what is
/// still queued for the collector.
#[must_use = "shut it down at exit, or queued spans are lost"]
pub struct Telemetry {
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

/// A setting of an `OTEL_*` variable that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Installs the global subscriber: log lines on stderr and, when
/// [`TraceSettings::from_env`] finds a collector, the OTLP span exporter
/// for `service` (the default `service.name`, overridden by
/// `OTEL_SERVICE_NAME`). Call it inside a Tokio runtime (the gRPC exporter
/// connects through it). A second call installs nothing.
pub fn init(service: &str, default_filter: &str, json: bool) -> Result<Telemetry, ConfigError> {
    let settings = TraceSettings::from_env()?;
    let tracer = settings.as_ref().map(|s| traces::provider(s, service)).transpose()?;
    let mut filter = EnvFilter::try_from_env("CONFAB_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_filter));
    if tracer.is_none() {
        // With nothing to export them to, the trace spans are off at their
        // call sites and cost a cached check each.
        filter = filter.add_directive(format!("{SPANS}=off").parse().expect("a valid directive"));
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };
    let otel = tracer.as_ref().map(traces::layer);
    let installed = tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).try_init().is_ok();
    if installed && tracer.is_some() {
        traces::set_enabled();
    }
    Ok(Telemetry { tracer: if installed { tracer } else { None } })
}

impl Telemetry {
    /// Exports what is queued (bounded by the exporter's own timeout).
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer {
            if let Err(e) = tracer.shutdown() {
                eprintln!("trace export did not finish: {e}");
            }
        }
    }
}
