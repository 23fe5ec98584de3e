//! Span export over OTLP, configured by the standard variables:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! turns it on; `OTEL_EXPORTER_OTLP_PROTOCOL` is `grpc` or `http/protobuf`
//! (the default); `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` pick
//! the sampler (parent-based trace-id ratio unless told otherwise);
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the process;
//! `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true` turn it off.
//!
//! Spans are queued to a batch processor on a thread of its own, bounded
//! (`OTEL_BSP_MAX_QUEUE_SIZE`, 2,048 by default): when the collector is
//! slow or gone the queue fills and spans are dropped, never waited for.

use super::ConfigError;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::Layer;

/// The target of every span confab exports. Off at its call sites unless
/// a collector is configured, so an untraced process pays nothing for them.
pub const SPANS: &str = "confab::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported by this process (read before building trace
/// context for a request).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(super) fn set_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Writes `span`'s trace and span ids into its `trace_id` and `span_id`
/// fields (declared empty where it was made), so the log lines inside it
/// carry them; returns it. Only for a sampled trace: the ids of one the
/// sampler left out lead nowhere, and formatting them is most of what an
/// unsampled request costs.
pub fn with_ids(span: tracing::Span) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if enabled() && !span.is_disabled() {
        let cx = span.context();
        let ids = cx.span().span_context().clone();
        if ids.is_sampled() {
            span.record("trace_id", tracing::field::display(ids.trace_id()));
            span.record("span_id", tracing::field::display(ids.span_id()));
        }
    }
    span
}

/// Marks the current span failed with a client-facing error: its code,
/// the correlation id the client was given, and the message.
pub fn record_error(code: &str, correlation_id: &str, message: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !enabled() {
        return;
    }
    let span = tracing::Span::current();
    span.set_attribute("error.type", code.to_string());
    span.set_attribute("confab.correlation_id", correlation_id.to_string());
    span.set_status(opentelemetry::trace::Status::error(message.to_string()));
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub protocol: Transport,
    pub sampler: SamplerSetting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

/// An environment variable, trimmed; `None` when unset or blank.
pub(super) fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// How `signal` (`TRACES`, `METRICS`) goes over OTLP, by the standard
/// variables read through `get`: `None` when no endpoint is set for it or
/// its exporter (or the whole SDK) is turned off.
pub(super) fn transport(signal: &str, get: &impl Fn(&str) -> Option<String>) -> Result<Option<Transport>, ConfigError> {
    let disabled = get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || get(&format!("OTEL_{signal}_EXPORTER")).is_some_and(|v| v.eq_ignore_ascii_case("none"));
    let endpoint = get(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")).or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"));
    if disabled || endpoint.is_none() {
        return Ok(None);
    }
    let protocol = get(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")).or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match protocol.as_deref() {
        None | Some("http/protobuf") => Ok(Some(Transport::HttpProtobuf)),
        Some("grpc") => Ok(Some(Transport::Grpc)),
        Some(other) => Err(ConfigError(format!("OTEL_EXPORTER_OTLP_PROTOCOL={other}: use grpc or http/protobuf"))),
    }
}

impl Settings {
    /// `None` when no collector is configured or export is turned off.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_vars(var)
    }

    /// As [`Settings::from_env`], reading variables through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let Some(protocol) = transport("TRACES", &get)? else { return Ok(None) };
        if let Some(exporter) = get("OTEL_TRACES_EXPORTER").filter(|v| v != "otlp") {
            return Err(ConfigError(format!("OTEL_TRACES_EXPORTER={exporter}: only otlp and none are supported")));
        }
        let arg = match get("OTEL_TRACES_SAMPLER_ARG") {
            None => 1.0,
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => return Err(ConfigError(format!("OTEL_TRACES_SAMPLER_ARG={a}: a ratio from 0 to 1"))),
            },
        };
        let sampler = match get("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_traceidratio") => SamplerSetting::ParentBasedRatio(arg),
            Some("always_on") => SamplerSetting::AlwaysOn,
            Some("always_off") => SamplerSetting::AlwaysOff,
            Some("traceidratio") => SamplerSetting::Ratio(arg),
            Some("parentbased_always_on") => SamplerSetting::ParentBasedAlwaysOn,
            Some("parentbased_always_off") => SamplerSetting::ParentBasedAlwaysOff,
            Some(other) => {
                return Err(ConfigError(format!(
                    "OTEL_TRACES_SAMPLER={other}: use always_on, always_off, traceidratio or their parentbased_ forms"
                )))
            }
        };
        Ok(Some(Settings { protocol, sampler }))
    }
}

impl SamplerSetting {
    fn sampler(&self) -> Sampler {
        match *self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedRatio(r) => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r))),
        }
    }
}

/// The process's resource: `service.name` is `service` unless
/// `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names it.
pub fn resource(service: &str) -> Resource {
    let named = var("OTEL_SERVICE_NAME").is_some()
        || var("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|a| a.split(',').any(|kv| kv.trim().starts_with("service.name=")));
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(service.to_string()).build()
    }
}

pub(super) fn provider(settings: &Settings, service: &str) -> Result<SdkTracerProvider, ConfigError> {
    let exporter = match settings.protocol {
        Transport::Grpc => {
            opentelemetry_otlp::SpanExporter::builder().with_tonic().with_protocol(Protocol::Grpc).build()
        }
        Transport::HttpProtobuf => {
            opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary).build()
        }
    }
    .map_err(|e| ConfigError(format!("cannot set up the OTLP span exporter: {e}")))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(settings.sampler.sampler())
        .with_resource(resource(service))
        .build())
}

/// The layer that turns [`SPANS`] spans (and warnings and errors logged
/// inside them, as span events) into OpenTelemetry spans.
pub(super) fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("confab"))
        .with_location(false)
        .with_threads(false)
        .with_filter(filter_fn(|m| if m.is_span() { m.target() == SPANS } else { *m.level() <= tracing::Level::WARN }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, ConfigError> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_vars(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert_eq!(settings(&[]).unwrap(), None);
        assert_eq!(settings(&[("OTEL_TRACES_SAMPLER", "always_on")]).unwrap(), None);
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(settings(&[ep, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(), None);
        assert_eq!(settings(&[ep, ("OTEL_SDK_DISABLED", "true")]).unwrap(), None);
    }

    #[test]
    fn the_defaults_are_http_protobuf_and_a_parent_based_ratio() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]).unwrap().unwrap();
        assert_eq!(s, Settings { protocol: Transport::HttpProtobuf, sampler: SamplerSetting::ParentBasedRatio(1.0) });
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s, Settings { protocol: Transport::Grpc, sampler: SamplerSetting::ParentBasedRatio(0.01) });
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "x"), ("OTEL_TRACES_SAMPLER", "traceidratio")]);
        assert_eq!(s.unwrap().unwrap().sampler, SamplerSetting::Ratio(1.0));
    }

    #[test]
    fn a_setting_that_cannot_be_used_is_refused_by_name() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        for (bad, named) in [
            (("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"), "OTEL_EXPORTER_OTLP_PROTOCOL"),
            (("OTEL_TRACES_SAMPLER", "sometimes"), "OTEL_TRACES_SAMPLER"),
            (("OTEL_TRACES_SAMPLER_ARG", "1.5"), "OTEL_TRACES_SAMPLER_ARG"),
            (("OTEL_TRACES_SAMPLER_ARG", "half"), "OTEL_TRACES_SAMPLER_ARG"),
            (("OTEL_TRACES_EXPORTER", "zipkin"), "OTEL_TRACES_EXPORTER"),
        ] {
            let err = settings(&[ep, bad]).expect_err(named);
            assert!(err.0.starts_with(named), "{err}");
        }
    }
}
