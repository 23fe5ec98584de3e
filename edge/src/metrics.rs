//! The edge's instruments, read at `/metrics` and exported over OTLP when
//! configured (`confab_common::telemetry::metrics`). Labels are bounded:
//! an event label is one of the contract's event names (anything else
//! counts as `unknown`), an error label one of its codes.

use confab_common::telemetry::metrics::{Metrics as Registry, LATENCY_BUCKETS};
use confab_common::ErrorCode;
use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};
use opentelemetry::KeyValue;
use std::sync::Arc;
use std::time::Instant;

/// Every event name the edge answers, as its metrics label (HTTP API
/// calls count as `http`, CONNECTs as `connect`).
const EVENTS: [&str; 17] = [
    "room:join",
    "room:leave",
    "message:send",
    "message:history",
    "auth:refresh",
    "message:edit",
    "message:delete",
    "reaction:add",
    "reaction:remove",
    "receipt:read",
    "presence:set",
    "presence:subscribe",
    "presence:unsubscribe",
    "presence:ping",
    "room:members",
    "typing:start",
    "typing:stop",
];

/// The label of a client event name: itself if the contract has it.
pub fn event_label(name: &str) -> &'static str {
    EVENTS.iter().find(|e| **e == name).copied().unwrap_or("unknown")
}

pub(crate) struct Metrics {
    pub registry: Arc<Registry>,
    pub connections: UpDownCounter<i64>,
    pub sessions: UpDownCounter<i64>,
    events: Counter<u64>,
    errors: Counter<u64>,
    ack: Histogram<f64>,
    rate_limited: Counter<u64>,
    pub refused: Counter<u64>,
    pub slow_consumers: Counter<u64>,
    pub router_reconnects: Counter<u64>,
}

impl Metrics {
    pub fn new() -> Result<Self, confab_common::telemetry::ConfigError> {
        let registry = Registry::new("confab-edge")?;
        let m = registry.meter("confab-edge");
        let metrics = Self {
            connections: m
                .i64_up_down_counter("confab.edge.connections")
                .with_description("Engine.IO connections open.")
                .build(),
            sessions: m
                .i64_up_down_counter("confab.edge.sessions")
                .with_description("Authenticated Socket.IO sessions.")
                .build(),
            events: m
                .u64_counter("confab.edge.events")
                .with_description("Client events and HTTP API calls received, by outcome.")
                .build(),
            errors: m.u64_counter("confab.edge.errors").with_description("Error replies, by contract code.").build(),
            ack: m
                .f64_histogram("confab.edge.ack.duration")
                .with_unit("s")
                .with_description("From an event's arrival to its ack (or an HTTP call to its response).")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            rate_limited: m
                .u64_counter("confab.edge.rate_limited")
                .with_description("Writes refused by a per-user rate limit.")
                .build(),
            refused: m
                .u64_counter("confab.edge.refused")
                .with_description("Connections refused or closed by a connection limit.")
                .build(),
            slow_consumers: m
                .u64_counter("confab.edge.slow_consumer_disconnects")
                .with_description("Sockets closed because they read too slowly for their queue.")
                .build(),
            router_reconnects: m
                .u64_counter("confab.edge.router_reconnects")
                .with_description("Edge-router streams lost and dialled again.")
                .build(),
            registry,
        };
        // Series an alert reads exist from the start, at zero.
        for reason in ["per_ip", "per_user", "connect_deadline"] {
            metrics.refused.add(0, &[KeyValue::new("reason", reason)]);
        }
        metrics.connections.add(0, &[]);
        metrics.sessions.add(0, &[]);
        metrics.slow_consumers.add(0, &[]);
        metrics.router_reconnects.add(0, &[]);
        let send = KeyValue::new("event", "message:send");
        for outcome in ["ok", "error"] {
            metrics.events.add(0, &[send.clone(), KeyValue::new("outcome", outcome)]);
        }
        for code in [ErrorCode::Unavailable, ErrorCode::Internal, ErrorCode::RateLimited] {
            metrics.errors.add(0, &[send.clone(), KeyValue::new("code", code.as_str())]);
        }
        metrics.rate_limited.add(0, &[send]);
        Ok(metrics)
    }

    /// One event answered, `started` ago: ok, or with the error `error`.
    pub fn outcome(&self, event: &'static str, error: Option<ErrorCode>, started: Instant) {
        let event_kv = KeyValue::new("event", event);
        let outcome = if error.is_some() { "error" } else { "ok" };
        self.events.add(1, &[event_kv.clone(), KeyValue::new("outcome", outcome)]);
        if let Some(code) = error {
            self.errors.add(1, &[event_kv.clone(), KeyValue::new("code", code.as_str())]);
            if code == ErrorCode::RateLimited {
                self.rate_limited.add(1, std::slice::from_ref(&event_kv));
            }
        }
        self.ack.record(started.elapsed().as_secs_f64(), &[event_kv]);
    }
}
