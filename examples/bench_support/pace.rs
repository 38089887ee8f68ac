//! Pacing shared by the benchmark drivers `route_churn` and `open_loop`.
//!
//! [`Phases`] cuts wall-clock time into equal slices counted from the Unix epoch: odd slices
//! are "on", even ones "off". Two processes given the same slice length agree on which slice
//! is which without talking to each other, so a writer that churns only in "on" slices and
//! a load generator that sorts its requests by slice measure, in one run, the latency with
//! and without churn side by side: whatever else the machine does in that run lands on both
//! halves alike. [`Pacer`] spaces writes at a fixed rate, within "on" slices when given
//! phases.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Which half a slice of [`Phases`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Half {
    /// The odd slices: the writer churns.
    On,
    /// The even slices: the writer rests.
    Off,
}

/// Wall-clock slices of one length; odd ones are "on".
#[derive(Debug, Clone, Copy)]
pub(crate) struct Phases {
    len: Duration,
    guard: Duration,
}

impl Phases {
    /// Slices of `len` (at least a millisecond), the first `guard` of each counted as
    /// settling.
    pub(crate) fn new(len: Duration, guard: Duration) -> Result<Self, String> {
        if len < Duration::from_millis(1) || guard >= len {
            return Err(format!(
                "a phase of {} ms with a guard of {} ms: the phase must be at least 1 ms and longer than its guard",
                len.as_millis(),
                guard.as_millis()
            ));
        }
        Ok(Self { len, guard })
    }

    /// The slice number of `t` and how far into it `t` is.
    fn locate(&self, t: SystemTime) -> (u128, Duration) {
        // A clock before 1970 is not a case a benchmark meets; it reads as the epoch.
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let len = self.len.as_nanos();
        let into = u64::try_from(since % len).unwrap_or(u64::MAX);
        (since / len, Duration::from_nanos(into))
    }

    /// The slice `t` falls in (its number since the epoch) and its half; `None` within the
    /// first `guard` of a slice, where the other half's effects may still be settling.
    pub(crate) fn slice(&self, t: SystemTime) -> Option<(u64, Half)> {
        let (n, into) = self.locate(t);
        if into < self.guard {
            return None;
        }
        let half = if n % 2 == 1 { Half::On } else { Half::Off };
        Some((u64::try_from(n).unwrap_or(u64::MAX), half))
    }

    /// How long from `t` until the next "on" slice begins; zero inside one.
    pub(crate) fn until_on(&self, t: SystemTime) -> Duration {
        let (n, into) = self.locate(t);
        if n % 2 == 1 {
            Duration::ZERO
        } else {
            self.len - into
        }
    }
}

/// Spaces events `1 / rate` apart from an anchor: a late event goes at once, so the average
/// rate holds. With [`Phases`], only inside "on" slices, each starting a fresh schedule.
#[derive(Debug)]
pub(crate) struct Pacer {
    step: Duration,
    phases: Option<Phases>,
    anchor: Instant,
    next: u64,
    resting: Duration,
}

impl Pacer {
    pub(crate) fn new(rate: f64, phases: Option<Phases>) -> Self {
        Self {
            step: Duration::from_secs_f64(1.0 / rate),
            phases,
            anchor: Instant::now(),
            next: 0,
            resting: Duration::ZERO,
        }
    }

    /// How long to wait before the next event.
    pub(crate) fn wait(&mut self) -> Duration {
        let now = Instant::now();
        if let Some(phases) = &self.phases {
            let off = phases.until_on(SystemTime::now());
            if !off.is_zero() {
                self.resting += off;
                self.anchor = now + off;
                self.next = 0;
            }
        }
        let due = self.anchor + self.step.mul_f64(self.next as f64);
        self.next += 1;
        due.saturating_duration_since(now)
    }

    /// Time spent waiting out "off" slices, so far.
    pub(crate) fn resting(&self) -> Duration {
        self.resting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn odd_slices_are_on_and_each_starts_settling() {
        let p = Phases::new(Duration::from_millis(1000), Duration::from_millis(100)).unwrap();
        assert_eq!(p.slice(at(5_050)), None);
        assert_eq!(p.slice(at(5_100)), Some((5, Half::On)));
        assert_eq!(p.slice(at(5_999)), Some((5, Half::On)));
        assert_eq!(p.slice(at(6_000)), None);
        assert_eq!(p.slice(at(6_500)), Some((6, Half::Off)));
        assert_eq!(p.until_on(at(5_500)), Duration::ZERO);
        assert_eq!(p.until_on(at(6_250)), Duration::from_millis(750));
    }

    #[test]
    fn a_guard_as_long_as_the_phase_is_refused() {
        assert!(Phases::new(Duration::from_millis(100), Duration::from_millis(100)).is_err());
        assert!(Phases::new(Duration::ZERO, Duration::ZERO).is_err());
    }
}
