//! W3C trace context across service calls: into and out of gRPC metadata
//! for unary calls, and as one `traceparent` string for the requests of the
//! long-lived edge↔router stream (each request carries its own).

use super::traces::{enabled, with_ids, SPANS};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The current span's context as a `traceparent` value; empty when this
/// process exports no spans, is in none, or is in a trace the sampler
/// left out (the services behind would only make spans nobody exports).
pub fn current_traceparent() -> String {
    if !enabled() {
        return String::new();
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_sampled() {
        return String::new();
    }
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.traceparent.unwrap_or_default()
}

/// The remote parent a `traceparent` value names, if it is well formed.
pub fn parent_from_traceparent(traceparent: &str) -> Option<Context> {
    if traceparent.is_empty() || !enabled() {
        return None;
    }
    let carrier = Carrier { traceparent: Some(traceparent.to_string()), tracestate: None };
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// A span of `name` whose parent is the caller's `traceparent`, or a
/// disabled span when there is none: a call outside any trace (a probe, a
/// health check) starts no trace of its own.
pub fn remote_child(name: &'static str, traceparent: &str) -> tracing::Span {
    let Some(parent) = parent_from_traceparent(traceparent) else { return tracing::Span::none() };
    let span = tracing::info_span!(target: SPANS, "rpc", otel.name = name, otel.kind = "server", trace_id = Empty, span_id = Empty);
    let _ = span.set_parent(parent);
    with_ids(span)
}

/// A gRPC channel whose calls carry the caller's trace context.
pub type TracedChannel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Interceptor>;
pub type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// `channel`, with [`inject`] on every call.
pub fn traced(channel: tonic::transport::Channel) -> TracedChannel {
    tonic::service::interceptor::InterceptedService::new(channel, inject as Interceptor)
}

/// tonic client interceptor: the current span's context into the call's
/// metadata (`traceparent`, `tracestate`), when its trace is sampled.
pub fn inject(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    if enabled() {
        let cx = tracing::Span::current().context();
        if cx.span().span_context().is_sampled() {
            TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(request.metadata_mut()));
        }
    }
    Ok(request)
}

/// tonic server `trace_fn`: a server span for a call that came with trace
/// context, named by its gRPC method; none for a call without.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    if !cx.span().span_context().is_valid() {
        return tracing::Span::none();
    }
    let method = request.uri().path().trim_start_matches('/');
    let span = tracing::info_span!(
        target: SPANS,
        "rpc",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        trace_id = Empty,
        span_id = Empty
    );
    let _ = span.set_parent(cx);
    with_ids(span)
}

#[derive(Default)]
struct Carrier {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" => self.tracestate = Some(value),
            _ => {}
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent.as_deref(),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
