//! The per-user message rate limit (CONTRACT §5, §8.14), a sliding window
//! kept by presence-svc so it spans every socket and edge of the user.
//! When presence-svc can't be reached in time the send is let through:
//! availability wins over the limit, and the failure is logged.

use crate::Edge;
use confab_proto::v1 as pb;

/// What the limiter said.
#[derive(Debug, Clone, Copy)]
pub enum Slot {
    Allowed(i64),
    Refused(u64),
    /// The limiter did not answer; nothing to give back.
    Unchecked,
}

pub async fn acquire(edge: &Edge, user: &str) -> Slot {
    let req = pb::AcquireRequest {
        key: format!("send:{user}"),
        limit: edge.config.rate_limit_messages,
        window_ms: edge.config.rate_limit_window_ms,
    };
    let mut presence = edge.presence.clone();
    match tokio::time::timeout(edge.config.request_timeout(), presence.acquire(req)).await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            if r.allowed {
                Slot::Allowed(r.slot_ms)
            } else {
                Slot::Refused(r.retry_after_ms)
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "rate limiter unavailable: send let through");
            Slot::Unchecked
        }
        Err(_) => {
            tracing::warn!("rate limiter timed out: send let through");
            Slot::Unchecked
        }
    }
}

/// Gives a slot back (a repeated clientId does not count).
pub fn release(edge: &std::sync::Arc<Edge>, user: &str, slot: Slot) {
    let Slot::Allowed(slot_ms) = slot else { return };
    let req = pb::ReleaseRequest { key: format!("send:{user}"), slot_ms };
    let (edge, timeout) = (edge.clone(), edge.config.request_timeout());
    edge.shutdown.clone().spawn(async move {
        let mut presence = edge.presence.clone();
        let _ = tokio::time::timeout(timeout, presence.release(req)).await;
    });
}
