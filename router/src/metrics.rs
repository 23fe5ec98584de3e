//! The router's instruments, read at `--metrics-listen`'s `/metrics` and
//! exported over OTLP when configured. No chat or user id is a label.

use crate::edges::StreamCounters;
use confab_api::placement::Membership;
use confab_common::telemetry::metrics::{Metrics as Registry, LATENCY_BUCKETS};
use confab_common::Shutdown;
use opentelemetry::metrics::{Counter, Gauge, Histogram, UpDownCounter};
use opentelemetry::KeyValue;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub(crate) struct Metrics {
    pub registry: Arc<Registry>,
    requests: Counter<u64>,
    pub queue_depth: Histogram<u64>,
    pub chats: UpDownCounter<i64>,
    pub append: Histogram<f64>,
    pub batch: Histogram<u64>,
    pub fanout: Histogram<f64>,
    store_errors: Counter<u64>,
    pub edge_streams: UpDownCounter<i64>,
    pub streams: Arc<StreamCounters>,
    ring_members: Gauge<u64>,
    ring_changes: Counter<u64>,
    failovers: Counter<u64>,
}

impl Metrics {
    pub fn new() -> Result<Self, confab_common::telemetry::ConfigError> {
        let registry = Registry::new("confab-router")?;
        let m = registry.meter("confab-router");
        let seconds = |name: &'static str, description: &'static str| {
            m.f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
        };
        let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];
        let metrics = Self {
            requests: m.u64_counter("confab.router.requests").with_description("Requests from edges, by op.").build(),
            queue_depth: m
                .u64_histogram("confab.router.chat_queue_depth")
                .with_description("Commands waiting in a chat writer's queue when it appends a batch.")
                .with_boundaries(sizes.to_vec())
                .build(),
            chats: m.i64_up_down_counter("confab.router.chats").with_description("Chat writers loaded.").build(),
            append: seconds("confab.router.append.duration", "Store appends, as long as the router waited for them."),
            batch: m
                .u64_histogram("confab.router.append.batch_size")
                .with_description("Messages per store append.")
                .with_boundaries(sizes.to_vec())
                .build(),
            fanout: seconds(
                "confab.router.fanout.duration",
                "From a batch being durable to its frames queued for every subscribed edge.",
            ),
            store_errors: m
                .u64_counter("confab.router.store_errors")
                .with_description("Store calls of chat writers that failed, by code.")
                .build(),
            edge_streams: m
                .i64_up_down_counter("confab.router.edge_streams")
                .with_description("Edge streams attached.")
                .build(),
            streams: Arc::new(StreamCounters {
                cut: m
                    .u64_counter("confab.router.slow_edges")
                    .with_description("Edge streams cut off because their queue was full.")
                    .build(),
                replies: m
                    .u64_counter("confab.router.replies")
                    .with_description("Replies to edges' requests, by code (OK or the error's).")
                    .build(),
            }),
            ring_members: m
                .u64_gauge("confab.router.ring.members")
                .with_description("Routers this router counts live.")
                .build(),
            ring_changes: m
                .u64_counter("confab.router.ring.changes")
                .with_description("Changes of the ring this router places chats by.")
                .build(),
            failovers: m
                .u64_counter("confab.router.failovers")
                .with_description("Routers this router saw leave the ring (dead or drained).")
                .build(),
            registry,
        };
        metrics.chats.add(0, &[]);
        metrics.edge_streams.add(0, &[]);
        for counter in [&metrics.streams.cut, &metrics.ring_changes, &metrics.failovers] {
            counter.add(0, &[]);
        }
        metrics.streams.replies.add(0, &[KeyValue::new("code", "OK")]);
        metrics.store_errors.add(0, &[KeyValue::new("code", "UNAVAILABLE")]);
        Ok(metrics)
    }

    pub fn request(&self, op: &'static str) {
        self.requests.add(1, &[KeyValue::new("op", op)]);
    }

    pub fn store_error(&self, code: &'static str) {
        self.store_errors.add(1, &[KeyValue::new("code", code)]);
    }

    /// Follows the ring every `every`: its size, its changes and the
    /// routers that left it.
    pub async fn watch_ring(self, membership: Arc<Membership>, every: Duration, shutdown: Shutdown) {
        let mut seen = membership.ring();
        self.ring_members.record(seen.routers().len() as u64, &[]);
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.triggered() => return,
            }
            let ring = membership.ring();
            if Arc::ptr_eq(&ring, &seen) || ring.routers() == seen.routers() {
                continue;
            }
            self.ring_changes.add(1, &[]);
            let left = seen.routers().iter().filter(|r| !ring.routers().contains(r)).count();
            self.failovers.add(left as u64, &[]);
            self.ring_members.record(ring.routers().len() as u64, &[]);
            seen = ring;
        }
    }
}
