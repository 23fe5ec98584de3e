//! Rate-limited log lines: a cause that repeats (a packet dropped per
//! message, a failing backend per request) writes at most one line per
//! interval, and that line says how many were left out before it.
//!
//! One [`LogLimit`] per cause, usually a `static` beside the log line:
//!
//! ```
//! use confab_common::log_limit::LogLimit;
//! use std::time::Duration;
//!
//! static APPEND_FAILED: LogLimit = LogLimit::new(Duration::from_secs(10));
//! if let Some(suppressed) = APPEND_FAILED.allow() {
//!     tracing::warn!(suppressed, "append failed");
//! }
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The interval most causes use: one line per cause per 10 seconds.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// At most one log line per `interval` for one cause.
#[derive(Debug)]
pub struct LogLimit {
    interval: Duration,
    /// When the last line was let through, and how many were left out since.
    state: Mutex<Option<(Instant, u64)>>,
}

impl LogLimit {
    pub const fn new(interval: Duration) -> Self {
        Self { interval, state: Mutex::new(None) }
    }

    /// `Some(n)` when a line may be written now, `n` being the lines left
    /// out since the last one; `None` when this one is to be left out.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`Self::allow`] as of `now`.
    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *state {
            Some((last, suppressed)) if now.saturating_duration_since(*last) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                let n = std::mem::take(suppressed);
                *last = now;
                Some(n)
            }
            None => {
                *state = Some((now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_then_the_count_of_those_left_out() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.allow_at(t0), Some(0));
        // 9,744 more within the interval: all left out.
        for i in 0..9_744u64 {
            assert_eq!(limit.allow_at(t0 + Duration::from_millis(i % 9_999)), None);
        }
        // The next line after the interval carries the count, once.
        assert_eq!(limit.allow_at(t0 + Duration::from_secs(10)), Some(9_744));
        assert_eq!(limit.allow_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(limit.allow_at(t0 + Duration::from_secs(20)), Some(1));
        // A quiet cause starts afresh.
        assert_eq!(limit.allow_at(t0 + Duration::from_secs(60)), Some(0));
    }

    #[test]
    fn causes_are_limited_independently() {
        let (a, b) = (LogLimit::new(Duration::from_secs(1)), LogLimit::new(Duration::from_secs(1)));
        let t0 = Instant::now();
        assert_eq!(a.allow_at(t0), Some(0));
        assert_eq!(b.allow_at(t0), Some(0));
        assert_eq!(a.allow_at(t0), None);
        assert_eq!(b.allow_at(t0 + Duration::from_secs(1)), Some(0));
    }
}
