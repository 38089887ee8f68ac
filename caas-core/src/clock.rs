//! The one monotonic clock of the data plane: time since the first call in the process, as
//! plain integers that fit in an atomic (ejection deadlines, upload progress, rate-limiter
//! arrival times, head timeouts).
//!
//! Both readings start at 1, not 0, so that 0 can mean "unset" in an atomic slot.
//!
//! [`wall_ms`] is the other clock: the wall clock, for times stored where they outlive the
//! process (a rollout node, an instance's start time).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Milliseconds since the first call, plus one (never 0).
#[inline]
pub fn now_ms() -> u64 {
    u64::try_from(base().elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Nanoseconds since the first call, plus one (never 0).
#[inline]
pub fn now_ns() -> u64 {
    u64::try_from(base().elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before it).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_zero_and_monotonic() {
        let (a, b) = (now_ms(), now_ns());
        assert!(a >= 1 && b >= 1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now_ms() > a);
        assert!(now_ns() > b);
    }
}
