//! A lock-free request rate limiter (GCRA, the token bucket's cousin that keeps one number).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::now_ns;
use crate::spec::RateLimit;

/// Admits `rps` requests per second on average and bursts of up to `burst` more.
#[derive(Debug)]
pub struct TokenBucket {
    limit: RateLimit,
    /// Nanoseconds between two admitted requests at the sustained rate.
    interval_ns: u64,
    /// How far ahead of now the theoretical arrival time may run.
    tolerance_ns: u64,
    /// Theoretical arrival time of the next request.
    tat_ns: AtomicU64,
}

impl TokenBucket {
    /// A full bucket for `limit`. `rps = 0` admits nothing.
    pub fn new(limit: RateLimit) -> Self {
        let interval_ns = if limit.rps == 0 {
            u64::MAX
        } else {
            1_000_000_000 / u64::from(limit.rps)
        };
        let burst = u64::from(limit.burst.unwrap_or(limit.rps));
        Self {
            limit,
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(burst),
            tat_ns: AtomicU64::new(0),
        }
    }

    /// The limit this bucket enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one token; false when the rate is exceeded.
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_at(now_ns())
    }

    fn try_acquire_at(&self, now: u64) -> bool {
        if self.interval_ns == u64::MAX {
            return false;
        }
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance_ns {
                return false;
            }
            let next = start.saturating_add(self.interval_ns);
            match self
                .tat_ns
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => tat = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_sustains_the_rate() {
        let b = TokenBucket::new(RateLimit {
            rps: 10,
            burst: Some(5),
        });
        let t0 = 1_000_000_000_000;
        let admitted = (0..100).filter(|_| b.try_acquire_at(t0)).count();
        assert_eq!(admitted, 6, "one plus a burst of five");
        assert!(!b.try_acquire_at(t0 + 50_000_000));
        assert!(b.try_acquire_at(t0 + 700_000_000));
    }

    #[test]
    fn zero_rps_admits_nothing() {
        let b = TokenBucket::new(RateLimit {
            rps: 0,
            burst: None,
        });
        assert!(!b.try_acquire());
    }
}
