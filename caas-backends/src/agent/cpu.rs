//! The host's CPU idle share, measured from `/proc/stat` and smoothed, for the scheduler's
//! "least loaded" scoring (`HostInfo.cpu_idle`).
//!
//! Every [`AgentConfig::cpu_sample`](super::AgentConfig::cpu_sample) the agent reads the
//! aggregate `cpu` line of `/proc/stat` (cumulative ticks per mode since boot). Between two
//! samples the idle share is
//!
//! ```text
//! x = Δ(idle + iowait) / Δ(user + nice + system + idle + iowait + irq + softirq + steal)
//! ```
//!
//! (`guest` and `guest_nice` are left out of the total: the kernel already counts them in
//! `user` and `nice`). A sample with no elapsed ticks, or counters that went backwards (a CPU
//! taken offline drops its ticks from the sum), carries no information and is skipped.
//!
//! The published value is an exponentially weighted moving average,
//!
//! ```text
//! s₁ = x₁          sₙ = α·xₙ + (1 − α)·sₙ₋₁      α = 0.5
//! ```
//!
//! so one busy sample moves it half-way and a spike of one interval fades within a few.
//! Everything here is pure; the agent's loop does the reading and decides when to write with
//! [`moved_enough`], so an idle host does not rewrite its node every few seconds.

/// Weight of the newest sample in the moving average.
pub(super) const ALPHA: f64 = 0.5;

/// Cumulative ticks of the aggregate `cpu` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CpuTimes {
    /// `idle + iowait`.
    pub(super) idle: u64,
    /// `user + nice + system + idle + iowait + irq + softirq + steal`.
    pub(super) total: u64,
}

/// Why `/proc/stat` could not be read as CPU counters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum CpuStatError {
    /// No line starts with `cpu ` (the aggregate over all CPUs).
    #[error("/proc/stat has no aggregate \"cpu\" line")]
    NoCpuLine,
    /// The `cpu` line has fewer than user, nice, system and idle.
    #[error(
        "/proc/stat \"cpu\" line has {0} counters; at least 4 (user nice system idle) are needed"
    )]
    TooFewFields(usize),
    /// A counter is not an unsigned integer.
    #[error("/proc/stat \"cpu\" counter {index} is not an unsigned integer: {value:?}")]
    NotANumber {
        /// Position after `cpu`, from 0 (user).
        index: usize,
        /// The text found.
        value: String,
    },
    /// The counters do not fit in 64 bits when summed.
    #[error("/proc/stat \"cpu\" counters overflow when summed")]
    Overflow,
}

/// Parses the aggregate `cpu` line of `/proc/stat` text.
pub(super) fn parse_proc_stat(text: &str) -> Result<CpuTimes, CpuStatError> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .ok_or(CpuStatError::NoCpuLine)?;
    let mut counters = [0u64; 8];
    let mut n = 0;
    for (index, field) in line.split_ascii_whitespace().enumerate() {
        let value: u64 = field.parse().map_err(|_| CpuStatError::NotANumber {
            index,
            value: field.chars().take(32).collect(),
        })?;
        if index < counters.len() {
            counters[index] = value;
        }
        n = index + 1;
    }
    if n < 4 {
        return Err(CpuStatError::TooFewFields(n));
    }
    let idle = counters[3]
        .checked_add(counters[4])
        .ok_or(CpuStatError::Overflow)?;
    let total = counters
        .iter()
        .try_fold(0u64, |sum, c| sum.checked_add(*c))
        .ok_or(CpuStatError::Overflow)?;
    Ok(CpuTimes { idle, total })
}

/// The idle share between two samples, 0.0..=1.0; `None` when no tick elapsed or the
/// counters went backwards.
pub(super) fn idle_share(prev: CpuTimes, cur: CpuTimes) -> Option<f64> {
    let total = cur.total.checked_sub(prev.total)?;
    let idle = cur.idle.checked_sub(prev.idle)?;
    if total == 0 || idle > total {
        return None;
    }
    Some(idle as f64 / total as f64)
}

/// The smoothed idle share of the host (see the module docs for the formula).
#[derive(Debug, Clone, Default)]
pub(super) struct CpuMeter {
    prev: Option<CpuTimes>,
    smoothed: Option<f64>,
}

impl CpuMeter {
    /// Feeds one `/proc/stat` text; returns the smoothed idle share once two samples were
    /// seen (the previous value when this sample carries no information).
    pub(super) fn sample(&mut self, text: &str) -> Result<Option<f64>, CpuStatError> {
        let cur = parse_proc_stat(text)?;
        if let Some(x) = self.prev.and_then(|prev| idle_share(prev, cur)) {
            self.smoothed = Some(match self.smoothed {
                None => x,
                Some(s) => ALPHA * x + (1.0 - ALPHA) * s,
            });
        }
        self.prev = Some(cur);
        Ok(self.smoothed)
    }

    /// The smoothed idle share, rounded to 3 decimals (what is published).
    pub(super) fn value(&self) -> Option<f64> {
        self.smoothed.map(round3)
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Whether `current` differs enough from what was `published` to be worth a ZooKeeper write.
pub(super) fn moved_enough(published: Option<f64>, current: Option<f64>, min_change: f64) -> bool {
    match (published, current) {
        (_, None) => false,
        (None, Some(_)) => true,
        // The small slack absorbs float rounding: 0.52 - 0.50 is a move of 0.02.
        (Some(p), Some(c)) => (c - p).abs() >= min_change - 1e-9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 0\n\
        cpu0 1393280 32966 572056 13366730 2887 0 5763 0 0 0\n\
        intr 199292372 15 0 0\nctxt 372025210\nbtime 1700000000\n";

    #[test]
    fn parses_the_aggregate_line() {
        let t = parse_proc_stat(REAL).unwrap();
        assert_eq!(t.idle, 46828483 + 16683);
        // guest and guest_nice (175628, 0) are not added: user already holds them.
        assert_eq!(
            t.total,
            10132153 + 290696 + 3084719 + 46828483 + 16683 + 25195
        );
        // Old kernels: only user nice system idle.
        let t = parse_proc_stat("cpu 1 2 3 4\n").unwrap();
        assert_eq!((t.idle, t.total), (4, 10));
    }

    #[test]
    fn malformed_text_is_an_error_not_a_panic() {
        for (text, want) in [
            ("", CpuStatError::NoCpuLine),
            ("cpu0 1 2 3 4\n", CpuStatError::NoCpuLine),
            ("intr 5\n", CpuStatError::NoCpuLine),
            ("cpu 1 2 3\n", CpuStatError::TooFewFields(3)),
            ("cpu \n", CpuStatError::TooFewFields(0)),
            (
                "cpu 1 2 x 4\n",
                CpuStatError::NotANumber {
                    index: 2,
                    value: "x".into(),
                },
            ),
            (
                "cpu 1 2 3 -4\n",
                CpuStatError::NotANumber {
                    index: 3,
                    value: "-4".into(),
                },
            ),
            (
                "cpu 1 2 3 99999999999999999999\n",
                CpuStatError::NotANumber {
                    index: 3,
                    value: "99999999999999999999".into(),
                },
            ),
            (
                &format!("cpu {} {} 0 0\n", u64::MAX, u64::MAX),
                CpuStatError::Overflow,
            ),
        ] {
            assert_eq!(parse_proc_stat(text), Err(want), "{text:?}");
        }
        let e = parse_proc_stat("cpu 1 2 3\n").unwrap_err();
        assert!(e.to_string().contains("at least 4"), "{e}");
    }

    #[test]
    fn idle_share_between_samples() {
        let t = |idle, total| CpuTimes { idle, total };
        for (prev, cur, want) in [
            (t(0, 0), t(50, 100), Some(0.5)),
            (t(100, 200), t(100, 300), Some(0.0)),
            (t(100, 200), t(200, 300), Some(1.0)),
            // No tick elapsed: nothing to say.
            (t(100, 200), t(100, 200), None),
            // Counters went backwards (a CPU went offline).
            (t(100, 200), t(90, 250), None),
            (t(100, 200), t(150, 150), None),
            // More idle than total ticks: inconsistent, skipped.
            (t(0, 100), t(80, 150), None),
        ] {
            assert_eq!(idle_share(prev, cur), want, "{prev:?} -> {cur:?}");
        }
    }

    #[test]
    fn meter_smooths_with_the_documented_formula() {
        let stat = |idle: u64, busy: u64| format!("cpu {busy} 0 0 {idle}\n");
        let mut m = CpuMeter::default();
        assert_eq!(
            m.sample(&stat(0, 0)).unwrap(),
            None,
            "one sample is no share"
        );
        // x1 = 1.0 (all idle): s1 = x1.
        assert_eq!(m.sample(&stat(100, 0)).unwrap(), Some(1.0));
        // x2 = 0.0: s2 = 0.5 * 0 + 0.5 * 1.0.
        assert_eq!(m.sample(&stat(100, 100)).unwrap(), Some(0.5));
        // x3 = 0.5: s3 = 0.5 * 0.5 + 0.5 * 0.5.
        assert_eq!(m.sample(&stat(150, 150)).unwrap(), Some(0.5));
        // No tick elapsed: the value stays.
        assert_eq!(m.sample(&stat(150, 150)).unwrap(), Some(0.5));
        // x = 0.0 three times: 0.25, 0.125, 0.0625.
        for (busy, want) in [(250, 0.25), (350, 0.125), (450, 0.0625)] {
            assert_eq!(m.sample(&stat(150, busy)).unwrap(), Some(want));
        }
        assert_eq!(m.value(), Some(0.063), "published rounded to 3 decimals");
        // A bad read is an error and leaves the meter as it was.
        assert!(m.sample("garbage").is_err());
        assert_eq!(m.value(), Some(0.063));
    }

    #[test]
    fn writes_only_on_a_meaningful_move() {
        for (published, current, want) in [
            (None, None, false),
            (None, Some(0.5), true),
            (Some(0.5), None, false),
            (Some(0.5), Some(0.51), false),
            (Some(0.5), Some(0.519), false),
            (Some(0.5), Some(0.52), true),
            (Some(0.5), Some(0.48), true),
            (Some(0.51), Some(0.49), true),
            (Some(0.9), Some(0.1), true),
        ] {
            assert_eq!(
                moved_enough(published, current, 0.02),
                want,
                "{published:?} -> {current:?}"
            );
        }
        assert!(moved_enough(Some(0.5), Some(0.501), 0.0));
    }

    /// `/proc/stat` is read from the host: whatever its bytes, parsing never panics.
    #[test]
    fn arbitrary_text_never_panics() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut meter = CpuMeter::default();
        for _ in 0..20_000 {
            let mut input = REAL.as_bytes().to_vec();
            for _ in 0..(next() % 8) {
                let i = usize::try_from(next()).unwrap() % input.len().max(1);
                match next() % 4 {
                    0 => input.truncate(i),
                    1 => input.insert(i, (next() % 256) as u8),
                    2 if !input.is_empty() => input[i] = b" \n9-cpux0"[(next() % 9) as usize],
                    _ => input.extend_from_within(..i),
                }
            }
            let text = String::from_utf8_lossy(&input);
            if let Ok(Some(v)) = meter.sample(&text) {
                assert!((0.0..=1.0).contains(&v), "{v} from {text:?}");
            }
        }
    }
}
