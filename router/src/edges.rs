//! One connected edge, as the chat writers see it.

use confab_proto::v1 as pb;
use confab_proto::v1::router_frame::Kind;
use opentelemetry::metrics::Counter;
use opentelemetry::KeyValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The sending half of an edge's stream. Frames are queued without waiting;
/// an edge whose queue is full is cut off (`kill`), because waiting would
/// stall every chat writer that serves it. The edge reconnects and recovers.
#[derive(Clone)]
pub(crate) struct EdgeConn {
    key: u64,
    tx: mpsc::Sender<Result<pb::RouterFrame, tonic::Status>>,
    kill: CancellationToken,
    counters: Arc<StreamCounters>,
}

/// What the streams of a router count.
pub(crate) struct StreamCounters {
    /// Streams cut off (`confab_router_slow_edges_total`).
    pub cut: Counter<u64>,
    /// Replies by code, `OK` or the error's (`confab_router_replies_total`).
    pub replies: Counter<u64>,
}

/// The label of a reply: `OK`, or its error code (`UNAVAILABLE`).
fn reply_code(kind: &Kind) -> Option<&'static str> {
    let Kind::Reply(reply) = kind else { return None };
    Some(match &reply.result {
        Some(pb::reply::Result::Error(e)) => {
            pb::ErrorCode::try_from(e.code).map_or("UNSPECIFIED", |c| c.as_str_name().trim_start_matches("ERROR_CODE_"))
        }
        _ => "OK",
    })
}

impl EdgeConn {
    pub(crate) fn new(
        key: u64,
        tx: mpsc::Sender<Result<pb::RouterFrame, tonic::Status>>,
        kill: CancellationToken,
        counters: Arc<StreamCounters>,
    ) -> Self {
        Self { key, tx, kill, counters }
    }

    /// Identifies this stream (not the edge: a reconnect gets a new key).
    pub(crate) fn key(&self) -> u64 {
        self.key
    }

    /// False once the stream is gone or was cut off.
    pub(crate) fn is_open(&self) -> bool {
        !self.kill.is_cancelled() && !self.tx.is_closed()
    }

    /// Queues a frame; false when the stream is gone or was cut off.
    pub(crate) fn send(&self, kind: Kind) -> bool {
        if self.kill.is_cancelled() {
            return false;
        }
        if let Some(code) = reply_code(&kind) {
            self.counters.replies.add(1, &[KeyValue::new("code", code)]);
        }
        match self.tx.try_send(Ok(pb::RouterFrame { kind: Some(kind) })) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(stream = self.key, "edge stream queue full: cutting the edge off");
                self.kill.cancel();
                self.counters.cut.add(1, &[]);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Every edge stream attached to a router, for events that go to all edges.
#[derive(Clone, Default)]
pub(crate) struct EdgeRegistry {
    edges: Arc<Mutex<HashMap<u64, EdgeConn>>>,
}

impl EdgeRegistry {
    pub(crate) fn insert(&self, edge: EdgeConn) {
        self.edges.lock().unwrap_or_else(|p| p.into_inner()).insert(edge.key, edge);
    }

    pub(crate) fn remove(&self, key: u64) {
        self.edges.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
    }

    pub(crate) fn all(&self) -> Vec<EdgeConn> {
        self.edges.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}
