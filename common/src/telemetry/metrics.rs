//! Metrics of one service: OpenTelemetry instruments read by a Prometheus
//! registry (served as text at `/metrics`) and, when an OTLP endpoint is
//! configured, pushed to it every `OTEL_METRIC_EXPORT_INTERVAL`
//! milliseconds (60,000 by default).
//!
//! Each service builds its own [`Metrics`], so services sharing a process
//! (`confab dev`, the tests) keep their figures apart. Names follow the
//! OpenTelemetry conventions (`confab.router.append.duration`, unit `s`);
//! the Prometheus text adds the unit and `_total`
//! (`confab_router_append_duration_seconds`). Labels are few and bounded:
//! never a chat or user id.

use super::traces::{self, resource, Transport};
use super::ConfigError;
use crate::Shutdown;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Bucket bounds, in seconds, of every latency histogram: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The metrics of one service.
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
}

impl Metrics {
    /// Instruments of `service` (`confab-edge`, …, its `service.name`).
    /// With an OTLP endpoint in the environment they are also exported over
    /// OTLP; build it inside a Tokio runtime.
    pub fn new(service: &str) -> Result<Arc<Self>, ConfigError> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()
            .map_err(|e| ConfigError(format!("cannot set up the metrics registry: {e}")))?;
        let mut builder = SdkMeterProvider::builder().with_reader(prometheus).with_resource(resource(service));
        if let Some(transport) = traces::transport("METRICS", &traces::var)? {
            let exporter = opentelemetry_otlp::MetricExporter::builder();
            let exporter = match transport {
                Transport::Grpc => exporter.with_tonic().with_protocol(Protocol::Grpc).build(),
                Transport::HttpProtobuf => exporter.with_http().with_protocol(Protocol::HttpBinary).build(),
            }
            .map_err(|e| ConfigError(format!("cannot set up the OTLP metric exporter: {e}")))?;
            builder = builder.with_reader(PeriodicReader::builder(exporter).build());
        }
        Ok(Arc::new(Self { provider: builder.build(), registry }))
    }

    /// The meter that instruments of `scope` (a module) come from.
    pub fn meter(&self, scope: &'static str) -> Meter {
        self.provider.meter(scope)
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot render metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` fires: the small
/// HTTP listener of the services that otherwise speak only gRPC.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: Shutdown) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render()) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.triggered().await }).await
}

/// Binds `addr` for [`serve`], with the error naming the flag.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, ConfigError> {
    TcpListener::bind(addr).await.map_err(|e| ConfigError(format!("--metrics-listen {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn instruments_read_as_prometheus_text_with_units_and_totals() {
        let metrics = Metrics::new("confab-test").unwrap();
        let meter = metrics.meter("test");
        let counter = meter.u64_counter("confab.test.events").with_description("Events.").build();
        counter.add(3, &[opentelemetry::KeyValue::new("outcome", "ok")]);
        let histogram =
            meter.f64_histogram("confab.test.latency").with_unit("s").with_boundaries(LATENCY_BUCKETS.to_vec()).build();
        histogram.record(0.002, &[]);
        let text = metrics.render();
        assert!(text.contains("confab_test_events_total{outcome=\"ok\"} 3\n"), "{text}");
        assert!(text.contains("confab_test_latency_seconds_bucket{le=\"0.0025\"} 1\n"), "{text}");
        assert!(text.contains("service_name=\"confab-test\""), "{text}");
        // Another service's registry is its own.
        assert!(!Metrics::new("other").unwrap().render().contains("confab_test_events_total"));
    }
}
