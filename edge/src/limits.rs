//! The per-user message rate limit (CONTRACT §5, §8.14), a sliding window
//! kept by presence-svc so it spans every socket and edge of the user.
//! When presence-svc can't be reached in time the send is let through:
//! availability wins over the limit, and the failure is logged.
//!
//! Leases: a user who sends fast would cost one presence call per message.
//! Instead the edge takes several slots in one call (a lease of up to an
//! eighth of the limit, at most [`MAX_LEASE`]) and spends them locally for
//! a short while (an eighth of the window, at most [`MAX_HOLD`]); what is
//! left unspent then is given back. With small limits (the default, 10 per
//! 10 s) a lease is a single slot: one call per send, as without leases.
//! Presence counts a leased slot from when it was leased rather than used,
//! so within one window a user can get at most one lease beyond the limit.

use crate::Edge;
use confab_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Slots one lease takes at most.
pub const MAX_LEASE: u32 = 64;
/// How long a lease may be spent at most.
pub const MAX_HOLD: Duration = Duration::from_millis(250);

/// What the limiter said.
#[derive(Debug, Clone, Copy)]
pub enum Slot {
    Allowed(i64),
    Refused(u64),
    /// The limiter did not answer; nothing to give back.
    Unchecked,
}

/// Slots per lease and how long it may be spent, for a limit and window.
fn lease_shape(limit: u32, window_ms: u64) -> (u32, Duration) {
    let size = (limit / 8).clamp(1, MAX_LEASE);
    (size, Duration::from_millis(window_ms / 8).min(MAX_HOLD))
}

struct Lease {
    slot_ms: i64,
    left: u32,
    until: Instant,
}

/// The unspent leases of this edge's users. Bounded by the users who sent
/// in the last [`MAX_HOLD`]: expired leases are swept and given back.
#[derive(Default)]
pub struct Leases {
    held: Mutex<HashMap<String, Lease>>,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spends a slot of the user's live lease, if there is one.
    fn take(&self, user: &str, now: Instant) -> Option<i64> {
        let mut held = self.lock();
        let lease = held.get_mut(user)?;
        if lease.left == 0 || now >= lease.until {
            return None;
        }
        lease.left -= 1;
        Some(lease.slot_ms)
    }

    /// Keeps the unspent part of a new lease; returns what an older one of
    /// the user still had (to give back).
    fn keep(&self, user: &str, slot_ms: i64, left: u32, until: Instant) -> Option<(i64, u32)> {
        let old = self.lock().insert(user.to_string(), Lease { slot_ms, left, until })?;
        (old.left > 0).then_some((old.slot_ms, old.left))
    }

    /// Removes expired leases; returns their unspent slots (to give back).
    fn expired(&self, now: Instant) -> Vec<(String, i64, u32)> {
        let mut out = Vec::new();
        self.lock().retain(|user, lease| {
            if now < lease.until {
                return true;
            }
            if lease.left > 0 {
                out.push((user.clone(), lease.slot_ms, lease.left));
            }
            false
        });
        out
    }
}

/// A slot for one send of `user`: from the user's lease on this edge, or
/// from presence-svc (taking a new lease).
pub async fn acquire(edge: &Arc<Edge>, user: &str) -> Slot {
    let (limit, window_ms) = (edge.config.rate_limit_messages, edge.config.rate_limit_window_ms);
    let (size, hold) = lease_shape(limit, window_ms);
    if size > 1 {
        if let Some(slot_ms) = edge.leases.take(user, Instant::now()) {
            return Slot::Allowed(slot_ms);
        }
    }
    let req = pb::AcquireRequest { key: key(user), limit, window_ms, count: size };
    let mut presence = edge.presence.clone();
    match tokio::time::timeout(edge.config.request_timeout(), presence.acquire(req)).await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            if !r.allowed {
                return Slot::Refused(r.retry_after_ms);
            }
            let left = r.granted.saturating_sub(1);
            if left > 0 {
                if let Some((slot_ms, unspent)) = edge.leases.keep(user, r.slot_ms, left, Instant::now() + hold) {
                    give_back(edge, user, slot_ms, unspent);
                }
            }
            Slot::Allowed(r.slot_ms)
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
pub fn release(edge: &Arc<Edge>, user: &str, slot: Slot) {
    if let Slot::Allowed(slot_ms) = slot {
        give_back(edge, user, slot_ms, 1);
    }
}

fn key(user: &str) -> String {
    format!("send:{user}")
}

fn give_back(edge: &Arc<Edge>, user: &str, slot_ms: i64, count: u32) {
    let req = pb::ReleaseRequest { key: key(user), slot_ms, count };
    let (edge, timeout) = (edge.clone(), edge.config.request_timeout());
    edge.shutdown.clone().spawn(async move {
        let mut presence = edge.presence.clone();
        let _ = tokio::time::timeout(timeout, presence.release(req)).await;
    });
}

/// Gives back what expired leases left unspent, until shutdown.
pub async fn sweep(edge: Arc<Edge>) {
    let mut tick = tokio::time::interval(MAX_HOLD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = edge.shutdown.triggered() => return,
        }
        for (user, slot_ms, unspent) in edge.leases.expired(Instant::now()) {
            give_back(&edge, &user, slot_ms, unspent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_a_slot_for_small_limits_and_bounded_for_large_ones() {
        assert_eq!(lease_shape(10, 10_000), (1, Duration::from_millis(250)));
        assert_eq!(lease_shape(80, 1_000), (10, Duration::from_millis(125)));
        assert_eq!(lease_shape(1_000_000_000, 10_000), (MAX_LEASE, MAX_HOLD));
    }

    #[test]
    fn a_lease_is_spent_until_empty_or_expired_and_the_rest_given_back() {
        let leases = Leases::default();
        let now = Instant::now();
        let until = now + Duration::from_millis(100);
        assert_eq!(leases.take("u", now), None);
        assert_eq!(leases.keep("u", 7, 2, until), None);
        assert_eq!(leases.take("u", now), Some(7));
        assert_eq!(leases.take("u", now), Some(7));
        assert_eq!(leases.take("u", now), None);
        // A new lease while an older one has slots left: the older's are returned.
        assert_eq!(leases.keep("u", 8, 3, until), None);
        assert_eq!(leases.keep("u", 9, 3, until), Some((8, 3)));
        assert_eq!(leases.take("u", until), None, "expired");
        assert_eq!(leases.keep("v", 10, 1, until + Duration::from_secs(1)), None);
        // Sweeping takes the expired lease with its unspent slots, keeps the live one.
        assert_eq!(leases.expired(until), vec![("u".to_string(), 9, 3)]);
        assert_eq!(leases.expired(until), vec![]);
        assert_eq!(leases.take("v", until), Some(10));
    }
}
