//! One retry beat for every loop in vap: exponential, full jitter, a cap, an optional deadline.
//!
//! Full jitter (a uniform wait in `0..=min(cap, base * 2^n)`) spreads processes that failed
//! together, so that after a broker or database restart they do not all retry in step.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    deadline: Option<Duration>,
    failures: u32,
    first_failure: Option<Instant>,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Waits growing from `base`, doubling per failure, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap: cap.max(base), deadline: None, failures: 0, first_failure: None, rng: fastrand::Rng::new() }
    }

    /// Gives up (`next_delay` answers `None`) once failures have lasted `deadline`.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// A success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.first_failure = None;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The upper bound of the next wait, without jitter.
    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Counts a failure and says how long to wait before the next attempt; `None` when the
    /// deadline has passed.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let first = *self.first_failure.get_or_insert(now);
        if self.deadline.is_some_and(|d| now.duration_since(first) >= d) {
            return None;
        }
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(self.rng.u64(0..=nanos)))
    }

    /// Counts a failure and sleeps its wait. False when `cancel` fired or the deadline passed.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let Some(delay) = self.next_delay() else { return false };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_jittered_below_a_doubling_ceiling_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut seen = Vec::new();
        for n in 0..8u32 {
            let ceiling = Duration::from_millis(100 * 2u64.pow(n)).min(Duration::from_secs(1));
            let d = b.next_delay().unwrap();
            assert!(d <= ceiling, "wait {n}: {d:?} above {ceiling:?}");
            seen.push(d);
        }
        assert_eq!(b.failures(), 8);
        // Jitter: eight draws are not all the same.
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 1);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next_delay().unwrap() <= Duration::from_millis(100));
    }

    #[test]
    fn two_backoffs_do_not_retry_in_step() {
        let mut a = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let same = (0..6).filter(|_| a.next_delay() == b.next_delay()).count();
        assert!(same < 6);
    }

    #[test]
    fn the_deadline_ends_retries() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(2)).with_deadline(Duration::ZERO);
        assert_eq!(b.next_delay(), None);
        let mut b =
            Backoff::new(Duration::from_millis(1), Duration::from_millis(2)).with_deadline(Duration::from_secs(60));
        assert!(b.next_delay().is_some());
    }

    #[tokio::test]
    async fn a_cancelled_wait_returns_at_once() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut b = Backoff::new(Duration::from_secs(30), Duration::from_secs(30));
        let started = Instant::now();
        assert!(!b.wait(&cancel).await);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
