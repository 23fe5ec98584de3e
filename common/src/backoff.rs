//! Pauses between retries: exponential, bounded, with full jitter (each
//! pause is uniformly random between zero and the current ceiling), so that
//! many callers failing together do not retry together, and an outage
//! costs a few tries per caller instead of one every few milliseconds.

use std::time::Duration;

/// The pauses of one sequence of retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// Tries so far since the last [`Backoff::reset`].
    attempt: u32,
}

impl Backoff {
    /// Ceilings `base`, `2 * base`, `4 * base`, … up to `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, attempt: 0 }
    }

    /// The ceiling of the next pause.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next pause, uniformly random in `0..=ceiling`; the ceiling then
    /// doubles (up to the cap).
    pub fn next_pause(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::random_range(0..=nanos))
    }

    /// Back to the first ceiling (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(50 * MS, 2000 * MS);
        let mut ceilings = Vec::new();
        for _ in 0..9 {
            ceilings.push(b.ceiling().as_millis());
            b.next_pause();
        }
        assert_eq!(ceilings, [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        for _ in 0..100 {
            b.next_pause();
        }
        assert_eq!(b.ceiling(), 2000 * MS);
        b.reset();
        assert_eq!(b.ceiling(), 50 * MS);
    }

    #[test]
    fn pauses_are_jittered_within_the_ceiling() {
        let mut pauses = Vec::new();
        for _ in 0..200 {
            let mut b = Backoff::new(50 * MS, 2000 * MS);
            for _ in 0..6 {
                b.next_pause();
            }
            let ceiling = b.ceiling();
            let pause = b.next_pause();
            assert!(pause <= ceiling, "{pause:?} > {ceiling:?}");
            pauses.push(pause);
        }
        // Full jitter: spread over the range, not one value.
        let (min, max) = (pauses.iter().min().unwrap(), pauses.iter().max().unwrap());
        assert!(*max - *min > 500 * MS, "{min:?}..{max:?}");
    }
}
