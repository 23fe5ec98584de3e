//! A real OTLP endpoint inside the test: the collector's trace and metrics
//! services over gRPC (opentelemetry-proto's tonic servers) and
//! `POST /v1/traces` over HTTP with a protobuf body, keeping what arrives.

use anyhow::Context;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// One span as received, flattened.
#[derive(Debug, Clone)]
pub struct Span {
    /// `service.name` of the process that sent it.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, String>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub links: usize,
}

#[derive(Default)]
struct Received {
    /// Keep the spans (a test) or only count them (a benchmark).
    keep: bool,
    count: std::sync::atomic::AtomicU64,
    spans: Mutex<Vec<Span>>,
    /// (service.name, metric name) pairs pushed over OTLP.
    metrics: Mutex<BTreeSet<(String, String)>>,
}

/// A running receiver; stops with the test's runtime.
pub struct Receiver {
    /// `http://127.0.0.1:PORT` of the gRPC services.
    pub grpc_url: String,
    /// `http://127.0.0.1:PORT`, whose `/v1/traces` takes OTLP/HTTP.
    pub http_url: String,
    received: Arc<Received>,
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), text(kv.value.as_ref().and_then(|v| v.value.as_ref())))).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Received {
    fn keep_spans(&self, request: ExportTraceServiceRequest) {
        let n: usize = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        if !self.keep {
            return;
        }
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        for rs in request.resource_spans {
            let resource = attributes(rs.resource.as_ref().map_or(&[][..], |r| &r.attributes));
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Span {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    status_code: span.status.map_or(0, |s| s.code),
                    links: span.links.len(),
                });
            }
        }
    }
}

struct Traces(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.keep_spans(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

struct Metrics(Arc<Received>);

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut names = self.0.metrics.lock().unwrap_or_else(|p| p.into_inner());
        for rm in request.into_inner().resource_metrics {
            let resource = attributes(rm.resource.as_ref().map_or(&[][..], |r| &r.attributes));
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for m in rm.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                names.insert((service.clone(), m.name));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// A receiver that keeps every span it is sent.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    /// A receiver that only counts spans (for load: memory stays flat).
    pub async fn start_counting() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    async fn start_with(keep: bool) -> anyhow::Result<Self> {
        let received = Arc::new(Received { keep, ..Received::default() });
        let grpc = TcpListener::bind("127.0.0.1:0").await?;
        let grpc_url = format!("http://{}", grpc.local_addr()?);
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Traces(received.clone())))
            .add_service(MetricsServiceServer::new(Metrics(received.clone())))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc));
        tokio::spawn(server);
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let http_url = format!("http://{}", http.local_addr()?);
        let kept = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    match <ExportTraceServiceRequest as prost::Message>::decode(body) {
                        Ok(request) => {
                            kept.keep_spans(request);
                            let response = ExportTraceServiceResponse { partial_success: None };
                            let body = prost::Message::encode_to_vec(&response);
                            (axum::http::StatusCode::OK, [("content-type", "application/x-protobuf")], body)
                        }
                        Err(_) => (axum::http::StatusCode::BAD_REQUEST, [("content-type", "text/plain")], Vec::new()),
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(http, app).await.context("OTLP/HTTP receiver") });
        Ok(Self { grpc_url, http_url, received })
    }

    /// How many spans arrived so far.
    pub fn span_count(&self) -> u64 {
        self.received.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.received.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The (service.name, metric) pairs pushed so far.
    pub fn metrics(&self) -> BTreeSet<(String, String)> {
        self.received.metrics.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
