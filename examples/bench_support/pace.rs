//! Pacing shared by the benchmark drivers `route_churn` and `open_loop`.
//!
//! [`Phases`] cuts wall-clock time into equal slices counted from the Unix epoch and deals
//! each to one of two halves, "on" or "off", by a fixed pseudo-random function of its
//! number. Two processes given the same slice length agree on which slice is which without
//! talking to each other, so a writer that churns only in "on" slices and a load generator
//! that sorts its requests by slice measure, in one run, the latency with and without churn
//! side by side: whatever else the machine does in that run lands on both halves alike.
//! Not simply odd against even: work that recurs every two slices or a multiple of that (a
//! 2 s session ping against 200 ms slices) would land in the same half every time; no
//! period lines up with a random deal. [`Pacer`] spaces writes at a fixed rate, within "on"
//! slices when given phases.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Which half a slice of [`Phases`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Half {
    /// The writer churns.
    On,
    /// The writer rests.
    Off,
}

impl Half {
    /// The half of slice `n`: the low bit of splitmix64(n), the same in every process.
    fn of(n: u128) -> Self {
        // Slice numbers fit in 64 bits for the next half-million years at 1 ms slices.
        let mut z = (n as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        if (z ^ (z >> 31)) & 1 == 1 {
            Self::On
        } else {
            Self::Off
        }
    }
}

/// Wall-clock slices of one length, each dealt to a [`Half`].
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
        Some((u64::try_from(n).unwrap_or(u64::MAX), Half::of(n)))
    }

    /// How long from `t` until the next "on" slice begins; zero inside one.
    pub(crate) fn until_on(&self, t: SystemTime) -> Duration {
        let (mut n, into) = self.locate(t);
        if Half::of(n) == Half::On {
            return Duration::ZERO;
        }
        let mut wait = self.len - into;
        n += 1;
        // A run of "off" slices is short (64 in a row: one chance in 2^64).
        while Half::of(n) == Half::Off {
            wait += self.len;
            n += 1;
        }
        wait
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
    fn slices_are_dealt_to_halves_evenly_and_without_a_period() {
        let p = Phases::new(Duration::from_millis(200), Duration::from_millis(20)).unwrap();
        // The first tenth of each slice is settling, the rest is the slice's.
        assert_eq!(p.slice(at(1_000_010)), None);
        let (n, half) = p.slice(at(1_000_020)).unwrap();
        assert_eq!(n, 5_000);
        assert_eq!(p.slice(at(1_000_199)), Some((n, half)));
        let (mut on, mut longest, mut run, mut last) = (0, 0, 0, None);
        let mut every_other = [0u32; 2];
        for k in 0..10_000u64 {
            let t = at(1_000_000 + k * 200 + 100);
            let (_, half) = p.slice(t).unwrap();
            // until_on agrees with the deal: zero inside an "on" slice, and lands on the
            // start of the next one otherwise.
            let wait = p.until_on(t);
            if half == Half::On {
                on += 1;
                every_other[(k % 2) as usize] += 1;
                assert_eq!(wait, Duration::ZERO);
            } else {
                assert!(wait >= Duration::from_millis(100), "{wait:?}");
                assert_eq!(p.until_on(t + wait), Duration::ZERO);
                assert_ne!(
                    p.until_on(t + wait - Duration::from_millis(1)),
                    Duration::ZERO
                );
            }
            run = if last == Some(half) { run + 1 } else { 1 };
            longest = longest.max(run);
            last = Some(half);
        }
        assert!((4_800..=5_200).contains(&on), "{on} of 10,000 slices on");
        // Odd and even slices are "on" alike: nothing that recurs every two slices lines up.
        assert!(
            every_other.iter().all(|&c| (2_350..=2_650).contains(&c)),
            "{every_other:?}"
        );
        assert!(longest < 25, "a run of {longest} slices in one half");
    }

    #[test]
    fn a_guard_as_long_as_the_phase_is_refused() {
        assert!(Phases::new(Duration::from_millis(100), Duration::from_millis(100)).is_err());
        assert!(Phases::new(Duration::ZERO, Duration::ZERO).is_err());
    }
}
