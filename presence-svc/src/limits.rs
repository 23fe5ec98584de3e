//! Sliding-window rate limits shared by every edge: a key (one user's
//! window of one class of write) may take at most `limit` slots in any
//! `window`. [`Limiter`] is what presence-svc calls; [`MemoryLimiter`] keeps
//! the windows in this process (the `confab dev` default),
//! [`crate::redis_limits::RedisLimiter`] in Redis, shared by every replica.

pub use crate::unavailable::Unavailable;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Outcome of an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// `granted` slots taken, all at `slot_ms` (which identifies them for a
    /// release).
    Allowed { slot_ms: i64, granted: u32 },
    /// Full: a slot frees in this many milliseconds.
    Refused { retry_after_ms: u64 },
}

/// Where the windows are kept. Both backends follow the same rules, proved
/// by one suite (`tests/tests/limiter.rs` of the workspace).
#[tonic::async_trait]
pub trait Limiter: Send + Sync {
    /// Takes up to `count` slots (at least one, or none and a refusal).
    async fn acquire(&self, key: &str, limit: u32, window_ms: u64, count: u32) -> Result<Acquired, Unavailable>;
    /// Gives back up to `count` slots taken at `slot_ms`.
    async fn release(&self, key: &str, slot_ms: i64, count: u32) -> Result<(), Unavailable>;
}

#[tonic::async_trait]
impl Limiter for MemoryLimiter {
    async fn acquire(&self, key: &str, limit: u32, window_ms: u64, count: u32) -> Result<Acquired, Unavailable> {
        Ok(self.acquire_at(key, limit, window_ms, count, confab_common::time::now_ms()))
    }

    async fn release(&self, key: &str, slot_ms: i64, count: u32) -> Result<(), Unavailable> {
        self.release_slots(key, slot_ms, count);
        Ok(())
    }
}

#[derive(Default)]
pub struct MemoryLimiter {
    keys: Mutex<HashMap<String, VecDeque<i64>>>,
}

impl MemoryLimiter {
    /// Takes up to `count` slots (at least one, or none and a refusal).
    pub fn acquire_at(&self, key: &str, limit: u32, window_ms: u64, count: u32, now_ms: i64) -> Acquired {
        let window = i64::try_from(window_ms).unwrap_or(i64::MAX);
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        // Forget idle keys now and then so memory follows active users only.
        if keys.len() > 10_000 {
            keys.retain(|_, slots| slots.back().is_some_and(|last| *last > now_ms - window));
        }
        let slots = keys.entry(key.to_string()).or_default();
        while slots.front().is_some_and(|t| *t <= now_ms - window) {
            slots.pop_front();
        }
        let free = (limit as usize).saturating_sub(slots.len());
        if free > 0 {
            let granted = free.min(count.max(1) as usize);
            slots.extend(std::iter::repeat_n(now_ms, granted));
            return Acquired::Allowed { slot_ms: now_ms, granted: granted as u32 };
        }
        let oldest = slots.front().copied().unwrap_or(now_ms);
        Acquired::Refused { retry_after_ms: u64::try_from(oldest + window - now_ms).unwrap_or(1).max(1) }
    }

    /// Gives back up to `count` slots taken at `slot_ms`.
    pub fn release_slots(&self, key: &str, slot_ms: i64, count: u32) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slots) = keys.get_mut(key) {
            for _ in 0..count.max(1) {
                match slots.iter().rposition(|t| *t == slot_ms) {
                    Some(i) => {
                        slots.remove(i);
                    }
                    None => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sliding_window() {
        let l = MemoryLimiter::default();
        for t in 0..3 {
            assert!(matches!(l.acquire_at("u", 3, 1000, 1, t * 100), Acquired::Allowed { granted: 1, .. }));
        }
        assert_eq!(l.acquire_at("u", 3, 1000, 1, 500), Acquired::Refused { retry_after_ms: 500 });
        // Another key is not affected.
        assert!(matches!(l.acquire_at("v", 3, 1000, 1, 500), Acquired::Allowed { .. }));
        // The first slot leaves the window at 1000.
        assert!(matches!(l.acquire_at("u", 3, 1000, 1, 1000), Acquired::Allowed { .. }));
        assert_eq!(l.acquire_at("u", 3, 1000, 1, 1001), Acquired::Refused { retry_after_ms: 99 });
        // A released slot is free again.
        l.release_slots("u", 1000, 1);
        assert!(matches!(l.acquire_at("u", 3, 1000, 1, 1001), Acquired::Allowed { slot_ms: 1001, granted: 1 }));
    }

    #[test]
    fn a_lease_takes_what_is_free_and_gives_back_what_is_left() {
        let l = MemoryLimiter::default();
        assert_eq!(l.acquire_at("u", 10, 1000, 4, 0), Acquired::Allowed { slot_ms: 0, granted: 4 });
        assert_eq!(l.acquire_at("u", 10, 1000, 8, 10), Acquired::Allowed { slot_ms: 10, granted: 6 });
        assert_eq!(l.acquire_at("u", 10, 1000, 8, 20), Acquired::Refused { retry_after_ms: 980 });
        // Three of the second lease were not used: they are free again.
        l.release_slots("u", 10, 3);
        assert_eq!(l.acquire_at("u", 10, 1000, 0, 30), Acquired::Allowed { slot_ms: 30, granted: 1 });
        assert_eq!(l.acquire_at("u", 10, 1000, 5, 40), Acquired::Allowed { slot_ms: 40, granted: 2 });
        // Giving back more than was taken at a time frees only those.
        l.release_slots("u", 40, 9);
        assert_eq!(l.acquire_at("u", 10, 1000, 5, 50), Acquired::Allowed { slot_ms: 50, granted: 2 });
    }
}
