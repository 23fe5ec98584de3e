//! Sliding-window rate limits shared by every edge: a key (a user) may take
//! at most `limit` slots in any `window`. In memory here; the Redis backend
//! keeps the same shape (a sorted set of slot times per key).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Outcome of an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// Taken; the slot's time identifies it for a release.
    Allowed { slot_ms: i64 },
    /// Full: a slot frees in this many milliseconds.
    Refused { retry_after_ms: u64 },
}

#[derive(Default)]
pub struct MemoryLimiter {
    keys: Mutex<HashMap<String, VecDeque<i64>>>,
}

impl MemoryLimiter {
    pub fn acquire(&self, key: &str, limit: u32, window_ms: u64, now_ms: i64) -> Acquired {
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
        if slots.len() < limit as usize {
            slots.push_back(now_ms);
            return Acquired::Allowed { slot_ms: now_ms };
        }
        let oldest = slots.front().copied().unwrap_or(now_ms);
        Acquired::Refused { retry_after_ms: u64::try_from(oldest + window - now_ms).unwrap_or(1).max(1) }
    }

    pub fn release(&self, key: &str, slot_ms: i64) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slots) = keys.get_mut(key) {
            if let Some(i) = slots.iter().rposition(|t| *t == slot_ms) {
                slots.remove(i);
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
            assert!(matches!(l.acquire("u", 3, 1000, t * 100), Acquired::Allowed { .. }));
        }
        assert_eq!(l.acquire("u", 3, 1000, 500), Acquired::Refused { retry_after_ms: 500 });
        // Another key is not affected.
        assert!(matches!(l.acquire("v", 3, 1000, 500), Acquired::Allowed { .. }));
        // The first slot leaves the window at 1000.
        assert!(matches!(l.acquire("u", 3, 1000, 1000), Acquired::Allowed { .. }));
        assert_eq!(l.acquire("u", 3, 1000, 1001), Acquired::Refused { retry_after_ms: 99 });
        // A released slot is free again.
        l.release("u", 1000);
        assert!(matches!(l.acquire("u", 3, 1000, 1001), Acquired::Allowed { slot_ms: 1001 }));
    }
}
