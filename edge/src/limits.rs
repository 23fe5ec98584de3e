//! The per-user rate limits of every write (CONTRACT §5, §8.14): one
//! sliding window per user and [`RateClass`], kept by presence-svc so it
//! spans every socket and edge of the user. When presence-svc can't be
//! reached in time the write is let through: availability wins over the
//! limit, and the failure is logged.
//!
//! Leases: a user who writes fast would cost one presence call per write.
//! Instead the edge takes several slots in one call (a lease of up to an
//! eighth of the limit, at most [`MAX_LEASE`]) and spends them locally for
//! a short while (an eighth of the window, at most [`MAX_HOLD`]); what is
//! left unspent then is given back. With small limits (the default, 10 per
//! 10 s) a lease is a single slot: one call per write, as without leases.
//! Presence counts a leased slot from when it was leased rather than used,
//! so within one window a user can get at most one lease beyond the limit.

use crate::error::ApiError;
use crate::Edge;
use confab_api::presence::{Acquired, Limit};
use confab_common::UserId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Slots one lease takes at most.
pub const MAX_LEASE: u32 = 64;
/// How long a lease may be spent at most.
pub const MAX_HOLD: Duration = Duration::from_millis(250);

/// The limit of each class of write: at most so many per sliding window,
/// per user over all sockets, edges and HTTP (defaults in docs/operations.md).
#[derive(Debug, Clone, clap::Args)]
pub struct RateLimits {
    /// Messages a user may send per window (`message:send` and HTTP sends).
    #[arg(long = "rate-limit-messages", env = "CONFAB_RATE_LIMIT_MESSAGES", default_value_t = 10)]
    pub messages: u32,
    /// The messages' sliding window, in milliseconds.
    #[arg(long = "rate-limit-window-ms", env = "CONFAB_RATE_LIMIT_WINDOW_MS", default_value_t = 10_000)]
    pub window_ms: u64,
    /// Edits, deletes and reactions a user may make per window.
    #[arg(long = "rate-limit-edits", env = "CONFAB_RATE_LIMIT_EDITS", default_value_t = 30)]
    pub edits: u32,
    /// The edits' sliding window, in milliseconds.
    #[arg(long = "rate-limit-edits-window-ms", env = "CONFAB_RATE_LIMIT_EDITS_WINDOW_MS", default_value_t = 10_000)]
    pub edits_window_ms: u64,
    /// Chat creations and title, member and role changes a user may make per window.
    #[arg(long = "rate-limit-chats", env = "CONFAB_RATE_LIMIT_CHATS", default_value_t = 10)]
    pub chats: u32,
    /// The chats' sliding window, in milliseconds.
    #[arg(long = "rate-limit-chats-window-ms", env = "CONFAB_RATE_LIMIT_CHATS_WINDOW_MS", default_value_t = 60_000)]
    pub chats_window_ms: u64,
    /// Read receipts a user may send per window.
    #[arg(long = "rate-limit-receipts", env = "CONFAB_RATE_LIMIT_RECEIPTS", default_value_t = 60)]
    pub receipts: u32,
    /// The receipts' sliding window, in milliseconds.
    #[arg(
        long = "rate-limit-receipts-window-ms",
        env = "CONFAB_RATE_LIMIT_RECEIPTS_WINDOW_MS",
        default_value_t = 10_000
    )]
    pub receipts_window_ms: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            messages: 10,
            window_ms: 10_000,
            edits: 30,
            edits_window_ms: 10_000,
            chats: 10,
            chats_window_ms: 60_000,
            receipts: 60,
            receipts_window_ms: 10_000,
        }
    }
}

/// The kinds of writes, each with its own window (see [`RateLimits`]).
pub use confab_api::presence::RateClass;

/// The class's limit and window (milliseconds).
fn limit_of(class: RateClass, limits: &RateLimits) -> (u32, u64) {
    match class {
        RateClass::Messages => (limits.messages, limits.window_ms),
        RateClass::Edits => (limits.edits, limits.edits_window_ms),
        RateClass::Chats => (limits.chats, limits.chats_window_ms),
        RateClass::Receipts => (limits.receipts, limits.receipts_window_ms),
    }
}

/// The class as a client is told it is over its limit.
fn what(class: RateClass) -> &'static str {
    match class {
        RateClass::Messages => "messages",
        RateClass::Edits => "edits",
        RateClass::Chats => "chat changes",
        RateClass::Receipts => "read receipts",
    }
}

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

/// Whose lease: a user's, of one class.
type LeaseKey = (String, RateClass);

/// The unspent leases of this edge's users. Bounded by the users who wrote
/// in the last [`MAX_HOLD`]: expired leases are swept and given back.
#[derive(Default)]
pub struct Leases {
    held: Mutex<HashMap<LeaseKey, Lease>>,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseKey, Lease>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spends a slot of the user's live lease, if there is one.
    fn take(&self, key: &LeaseKey, now: Instant) -> Option<i64> {
        let mut held = self.lock();
        let lease = held.get_mut(key)?;
        if lease.left == 0 || now >= lease.until {
            return None;
        }
        lease.left -= 1;
        Some(lease.slot_ms)
    }

    /// How many slots to ask presence-svc for: a whole lease only for a user
    /// who took slots within the last hold (a fast writer); one slot for a
    /// user who writes rarely, so that nothing is left to give back. (Giving
    /// back costs a call of its own, and the sweep sends them in bursts.)
    fn wanted(&self, key: &LeaseKey, size: u32, now: Instant) -> u32 {
        match self.lock().get(key) {
            Some(lease) if now < lease.until => size,
            _ => 1,
        }
    }

    /// Keeps the unspent part of a new lease; returns what an older one of
    /// the user still had (to give back).
    fn keep(&self, key: LeaseKey, slot_ms: i64, left: u32, until: Instant) -> Option<(i64, u32)> {
        let old = self.lock().insert(key, Lease { slot_ms, left, until })?;
        (old.left > 0).then_some((old.slot_ms, old.left))
    }

    /// Removes expired leases; returns their unspent slots (to give back).
    fn expired(&self, now: Instant) -> Vec<(LeaseKey, i64, u32)> {
        let mut out = Vec::new();
        self.lock().retain(|key, lease| {
            if now < lease.until {
                return true;
            }
            if lease.left > 0 {
                out.push((key.clone(), lease.slot_ms, lease.left));
            }
            false
        });
        out
    }
}

/// A slot for one write of `user`: from the user's lease of the class on
/// this edge, or from presence-svc (a new lease for a user who took a slot
/// within the last hold, one slot for anyone else).
pub async fn acquire(edge: &Arc<Edge>, user: &str, class: RateClass) -> Slot {
    let (limit, window_ms) = limit_of(class, &edge.config.rate_limits);
    let (size, hold) = lease_shape(limit, window_ms);
    let key = (user.to_string(), class);
    let now = Instant::now();
    if size > 1 {
        if let Some(slot_ms) = edge.leases.take(&key, now) {
            return Slot::Allowed(slot_ms);
        }
    }
    let wanted = if size > 1 { edge.leases.wanted(&key, size, now) } else { 1 };
    let user_id = UserId::from(user);
    let acquire = edge.presence.acquire(&user_id, class, Limit { limit, window_ms }, wanted);
    match tokio::time::timeout(edge.config.request_timeout(), acquire).await {
        Ok(Ok(Acquired::Refused { retry_after_ms })) => Slot::Refused(retry_after_ms),
        Ok(Ok(Acquired::Granted { slot_ms, granted })) => {
            let left = granted.saturating_sub(1);
            // Kept even when empty: it marks the user as writing fast until
            // `hold` passes, so the next slot comes with a whole lease.
            if size > 1 {
                if let Some((slot_ms, unspent)) = edge.leases.keep(key, slot_ms, left, now + hold) {
                    give_back(edge, user, class, slot_ms, unspent);
                }
            }
            Slot::Allowed(slot_ms)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, class = what(class), "rate limiter unavailable: write let through");
            Slot::Unchecked
        }
        Err(_) => {
            tracing::warn!(class = what(class), "rate limiter timed out: write let through");
            Slot::Unchecked
        }
    }
}

/// A slot for a write that is refused outright when over the limit (every
/// write but a send, whose repeats are still answered): RATE_LIMITED with
/// `retryAfterMs`.
pub async fn check(edge: &Arc<Edge>, user: &str, class: RateClass) -> Result<(), ApiError> {
    match acquire(edge, user, class).await {
        Slot::Refused(retry_after_ms) => {
            Err(ApiError::rate_limited(format!("too many {}, retry later", what(class)), retry_after_ms))
        }
        Slot::Allowed(_) | Slot::Unchecked => Ok(()),
    }
}

/// Gives a send's slot back (a repeated clientId does not count).
pub fn release(edge: &Arc<Edge>, user: &str, slot: Slot) {
    if let Slot::Allowed(slot_ms) = slot {
        give_back(edge, user, RateClass::Messages, slot_ms, 1);
    }
}

fn give_back(edge: &Arc<Edge>, user: &str, class: RateClass, slot_ms: i64, count: u32) {
    let (edge, timeout, user) = (edge.clone(), edge.config.request_timeout(), UserId::from(user));
    edge.shutdown.clone().spawn(async move {
        let _ = tokio::time::timeout(timeout, edge.presence.release(&user, class, slot_ms, count)).await;
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
        for ((user, class), slot_ms, unspent) in edge.leases.expired(Instant::now()) {
            give_back(&edge, &user, class, slot_ms, unspent);
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
        let u = ("u".to_string(), RateClass::Messages);
        let v = ("v".to_string(), RateClass::Messages);
        assert_eq!(leases.take(&u, now), None);
        assert_eq!(leases.keep(u.clone(), 7, 2, until), None);
        assert_eq!(leases.take(&u, now), Some(7));
        assert_eq!(leases.take(&u, now), Some(7));
        assert_eq!(leases.take(&u, now), None);
        // Another class of the same user has a lease of its own.
        assert_eq!(leases.take(&("u".to_string(), RateClass::Edits), now), None);
        // A new lease while an older one has slots left: the older's are returned.
        assert_eq!(leases.keep(u.clone(), 8, 3, until), None);
        assert_eq!(leases.keep(u.clone(), 9, 3, until), Some((8, 3)));
        assert_eq!(leases.take(&u, until), None, "expired");
        assert_eq!(leases.keep(v.clone(), 10, 1, until + Duration::from_secs(1)), None);
        // Sweeping takes the expired lease with its unspent slots, keeps the live one.
        assert_eq!(leases.expired(until), vec![(u, 9, 3)]);
        assert_eq!(leases.expired(until), vec![]);
        assert_eq!(leases.take(&v, until), Some(10));
    }

    #[test]
    fn a_user_who_writes_rarely_takes_one_slot_and_a_fast_writer_a_whole_lease() {
        let leases = Leases::default();
        let now = Instant::now();
        let hold = Duration::from_millis(250);
        let u = ("u".to_string(), RateClass::Messages);
        assert_eq!(leases.wanted(&u, 64, now), 1, "no slot taken lately");
        // The single slot was spent at once: an empty lease marks the user.
        assert_eq!(leases.keep(u.clone(), 7, 0, now + hold), None);
        assert_eq!(leases.take(&u, now), None);
        assert_eq!(leases.wanted(&u, 64, now + hold / 2), 64, "wrote again within the hold");
        assert_eq!(leases.wanted(&u, 64, now + hold), 1, "the hold has passed");
        // An empty lease has nothing to give back when it expires.
        assert_eq!(leases.expired(now + hold), vec![]);
        assert_eq!(leases.wanted(&u, 64, now), 1, "swept");
    }
}
