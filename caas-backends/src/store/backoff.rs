//! A random wait between lost optimistic-concurrency rounds ([`conflict_backoff`]), and the
//! random numbers behind it ([`random`]).
//!
//! Two writers that lose to each other and retry at once can stay in lock step and keep
//! losing; a wait drawn at random, growing with each lost round, takes them out of step.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A wait before round `attempt + 1` (the first retry is `attempt` 1): uniform below
/// `first` × 2^(attempt − 1), which is capped at `most`.
pub(crate) fn conflict_backoff(attempt: u32, first: Duration, most: Duration) -> Duration {
    let bound = first
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(most);
    let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random() % nanos)
}

/// xorshift64 per thread, seeded from the clock, the process and a counter: enough to
/// de-synchronise writers, in this process or another.
pub(crate) fn random() -> u64 {
    thread_local!(static STATE: Cell<u64> = const { Cell::new(0) });
    static SEEDS: AtomicU64 = AtomicU64::new(0);
    STATE.with(|state| {
        let mut x = state.get();
        if x == 0 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            x = (nanos
                ^ (u64::from(std::process::id()) << 32)
                ^ SEEDS.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
                | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_the_attempt_up_to_the_cap_and_vary() {
        let (first, most) = (Duration::from_millis(1), Duration::from_millis(32));
        for attempt in 1..=10 {
            let bound = (first * (1 << (attempt - 1))).min(most);
            for _ in 0..200 {
                assert!(
                    conflict_backoff(attempt, first, most) < bound,
                    "attempt {attempt}"
                );
            }
        }
        let waits: std::collections::HashSet<_> =
            (0..50).map(|_| conflict_backoff(6, first, most)).collect();
        assert!(waits.len() > 40, "{} distinct waits of 50", waits.len());
        assert_eq!(conflict_backoff(3, Duration::ZERO, most), Duration::ZERO);
    }
}
