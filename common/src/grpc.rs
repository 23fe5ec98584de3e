//! Serving gRPC on a listener the service bound itself, with the trace
//! context of each call ([`crate::telemetry::propagation`]) and its
//! duration and status in the service's metrics ([`RpcMetrics`]).

use crate::telemetry::metrics::{Metrics, LATENCY_BUCKETS};
use crate::Shutdown;
use opentelemetry::metrics::Histogram;
use opentelemetry::KeyValue;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::net::TcpListener;

/// The accepted sockets of `listener`, with TCP_NODELAY set. tonic ignores
/// `Server::tcp_nodelay` for a stream of sockets it is handed, and without
/// it every small reply waits for the peer's next packet (Nagle).
pub fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// What a gRPC service listens on: its gRPC port and, optionally, the
/// HTTP port its `/metrics` is scraped from (`--metrics-listen`).
pub struct Listeners {
    pub grpc: TcpListener,
    pub metrics: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Self {
        Self { grpc, metrics: None }
    }
}

impl Listeners {
    /// Serves `metrics` on the metrics listener, if there is one, until
    /// `shutdown`; returns the gRPC listener.
    pub fn serve_metrics(self, metrics: &Arc<Metrics>, shutdown: &Shutdown) -> TcpListener {
        if let Some(listener) = self.metrics {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "metrics served at /metrics");
            }
            let (metrics, stop) = (metrics.clone(), shutdown.clone());
            shutdown.spawn(async move {
                if let Err(e) = crate::telemetry::metrics::serve(listener, metrics, stop).await {
                    tracing::warn!(error = %e, "the metrics listener failed");
                }
            });
        }
        self.grpc
    }
}

/// A tower layer timing every call of a gRPC server by method and status
/// code: `<prefix>.rpc.duration` (`confab_store_rpc_duration_seconds`…).
/// The status is the one in the response headers (an error answered at
/// once); a call answered with a message is OK. Unknown methods (answered
/// UNIMPLEMENTED) count under one `unknown` label.
#[derive(Clone)]
pub struct RpcMetrics {
    duration: Histogram<f64>,
}

impl RpcMetrics {
    pub fn new(metrics: &Metrics, prefix: &'static str) -> Self {
        let duration = metrics
            .meter("grpc")
            .f64_histogram(format!("{prefix}.rpc.duration"))
            .with_unit("s")
            .with_description("gRPC calls served, by method and status code.")
            .with_boundaries(LATENCY_BUCKETS.to_vec())
            .build();
        Self { duration }
    }
}

impl<S> tower::Layer<S> for RpcMetrics {
    type Service = TimedRpc<S>;
    fn layer(&self, inner: S) -> TimedRpc<S> {
        TimedRpc { inner, duration: self.duration.clone() }
    }
}

#[derive(Clone)]
pub struct TimedRpc<S> {
    inner: S,
    duration: Histogram<f64>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for TimedRpc<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_string();
        let (called, duration) = (self.inner.call(request), self.duration.clone());
        Box::pin(async move {
            let response = called.await;
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Unavailable,
            };
            let method = if code == tonic::Code::Unimplemented { "unknown".to_string() } else { method };
            let labels = [KeyValue::new("method", method), KeyValue::new("code", code_name(code))];
            duration.record(started.elapsed().as_secs_f64(), &labels);
            response
        })
    }
}

/// The gRPC code's canonical name (`UNAVAILABLE`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}
