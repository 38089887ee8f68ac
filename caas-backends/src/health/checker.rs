//! The active health checker: a [`Tracker`] (pure decision logic) driven by a probe loop.
//!
//! States: a container starts in [`HealthState::Starting`] and is not registered. `rise`
//! consecutive passes make it [`HealthState::Healthy`] (register); `fall` consecutive
//! failures make it [`HealthState::Unhealthy`] (deregister, then restart or remove). While
//! starting, failures inside the grace period are not counted, so a slow boot is not a
//! failure; a pass ends the grace at once. Only changes are reported.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::probe::{HttpProbe, Probe};
use crate::assignment::HealthPolicy;

/// Health of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// Not yet passed `rise` probes; not registered.
    Starting,
    /// Passing; registered.
    Healthy,
    /// Failed `fall` probes in a row; deregistered.
    Unhealthy,
}

/// Timing and thresholds of a checker (from the assignment's [`HealthPolicy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between probe starts.
    pub interval: Duration,
    /// Time allowed for one probe.
    pub timeout: Duration,
    /// Consecutive failures to become unhealthy (≥ 1).
    pub fall: u32,
    /// Consecutive passes to become healthy (≥ 1).
    pub rise: u32,
    /// Failures before the first pass are ignored this long after the start.
    pub grace: Duration,
}

impl From<&HealthPolicy> for HealthConfig {
    fn from(p: &HealthPolicy) -> Self {
        Self {
            interval: p.interval(),
            timeout: p.timeout(),
            fall: p.fall.max(1),
            rise: p.rise.max(1),
            grace: p.grace(),
        }
    }
}

/// The threshold logic, fed one probe result at a time.
#[derive(Debug, Clone)]
pub struct Tracker {
    fall: u32,
    rise: u32,
    grace_until: Instant,
    state: HealthState,
    passes: u32,
    failures: u32,
}

impl Tracker {
    /// A tracker for a target started at `start`.
    pub fn new(cfg: &HealthConfig, start: Instant) -> Self {
        Self {
            fall: cfg.fall.max(1),
            rise: cfg.rise.max(1),
            grace_until: start + cfg.grace,
            state: HealthState::Starting,
            passes: 0,
            failures: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Records one probe result at `now`; returns the new state if it changed.
    pub fn observe(&mut self, passed: bool, now: Instant) -> Option<HealthState> {
        let next = if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            (self.state != HealthState::Healthy && self.passes >= self.rise)
                .then_some(HealthState::Healthy)
        } else {
            self.passes = 0;
            if self.state == HealthState::Starting && now < self.grace_until {
                return None;
            }
            self.failures = self.failures.saturating_add(1);
            (self.state != HealthState::Unhealthy && self.failures >= self.fall)
                .then_some(HealthState::Unhealthy)
        };
        if let Some(s) = next {
            self.state = s;
        }
        next
    }
}

/// A state change of one target, sent on the checker's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent<K> {
    /// Which target (the caller's key: instance id, container id...).
    pub key: K,
    /// The state before.
    pub previous: HealthState,
    /// The new state.
    pub state: HealthState,
    /// Why the last probe failed (for `Unhealthy`).
    pub last_error: Option<String>,
}

/// Counters of one checker (probes run, probes failed).
#[derive(Debug, Default)]
pub struct HealthStats {
    probes: AtomicU64,
    failures: AtomicU64,
}

impl HealthStats {
    /// Probes run.
    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }

    /// Probes failed (error, bad status or timeout).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// The running checker task; dropping the handle stops it.
#[derive(Debug)]
pub struct HealthHandle {
    task: JoinHandle<()>,
    stats: Arc<HealthStats>,
}

impl HealthHandle {
    /// The checker's counters.
    pub fn stats(&self) -> &HealthStats {
        &self.stats
    }

    /// Whether the task has ended (its receiver was dropped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for HealthHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Probes one target on a schedule and reports its state changes.
#[derive(Debug, Clone)]
pub struct HealthChecker<P> {
    probe: P,
    cfg: HealthConfig,
}

impl HealthChecker<HttpProbe> {
    /// A checker of `GET http://{addr}{policy.path}` with the policy's timing.
    pub fn http(addr: std::net::SocketAddr, policy: &HealthPolicy) -> Self {
        Self::new(
            HttpProbe::new(addr, &policy.path),
            HealthConfig::from(policy),
        )
    }
}

impl<P: Probe> HealthChecker<P> {
    /// A checker running `probe` with `cfg`.
    pub fn new(probe: P, cfg: HealthConfig) -> Self {
        Self { probe, cfg }
    }

    /// Starts the checker task; the start time (grace period) is now. The task ends when
    /// the handle is dropped or the receiver of `tx` is gone.
    pub fn spawn<K>(self, key: K, tx: mpsc::Sender<HealthEvent<K>>) -> HealthHandle
    where
        K: Clone + Send + std::fmt::Debug + 'static,
    {
        let stats = Arc::new(HealthStats::default());
        let task = tokio::spawn(self.run(key, tx, stats.clone()));
        HealthHandle { task, stats }
    }

    /// The probe loop (what [`Self::spawn`] runs).
    pub async fn run<K>(self, key: K, tx: mpsc::Sender<HealthEvent<K>>, stats: Arc<HealthStats>)
    where
        K: Clone + Send + std::fmt::Debug + 'static,
    {
        let mut tracker = Tracker::new(&self.cfg, Instant::now());
        let mut ticker = tokio::time::interval(self.cfg.interval);
        // A slow probe delays the next one instead of bunching them up.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            stats.probes.fetch_add(1, Ordering::Relaxed);
            let result = match tokio::time::timeout(self.cfg.timeout, self.probe.probe()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", self.cfg.timeout)),
            };
            let last_error = result.err();
            if let Some(e) = &last_error {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target_key = ?key, error = %e, "health probe failed");
            }
            let previous = tracker.state();
            if let Some(state) = tracker.observe(last_error.is_none(), Instant::now()) {
                tracing::info!(target_key = ?key, ?previous, ?state, error = ?last_error, "health state changed");
                let event = HealthEvent {
                    key: key.clone(),
                    previous,
                    state,
                    last_error,
                };
                if tx.send(event).await.is_err() {
                    tracing::debug!(target_key = ?key, "health receiver gone; checker stops");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            fall: 3,
            rise: 2,
            grace: Duration::from_secs(5),
        }
    }

    #[test]
    fn tracker_thresholds() {
        let t0 = Instant::now();
        let mut t = Tracker::new(&cfg(), t0);
        let at = |s| t0 + Duration::from_secs(s);
        // Failures in the grace period do not count.
        assert_eq!(t.observe(false, at(1)), None);
        assert_eq!(t.observe(false, at(2)), None);
        assert_eq!(t.observe(false, at(3)), None);
        // rise = 2.
        assert_eq!(t.observe(true, at(4)), None);
        assert_eq!(t.observe(true, at(5)), Some(HealthState::Healthy));
        assert_eq!(t.observe(true, at(6)), None);
        // A pass resets the failure run.
        assert_eq!(t.observe(false, at(7)), None);
        assert_eq!(t.observe(false, at(8)), None);
        assert_eq!(t.observe(true, at(9)), None);
        assert_eq!(t.observe(false, at(10)), None);
        assert_eq!(t.observe(false, at(11)), None);
        assert_eq!(t.observe(false, at(12)), Some(HealthState::Unhealthy));
        assert_eq!(t.observe(false, at(13)), None);
        assert_eq!(t.observe(true, at(14)), None);
        assert_eq!(t.observe(true, at(15)), Some(HealthState::Healthy));
    }

    #[test]
    fn never_up_is_unhealthy_after_grace() {
        let t0 = Instant::now();
        let mut t = Tracker::new(&cfg(), t0);
        let results: Vec<_> = (0..9)
            .map(|s| t.observe(false, t0 + Duration::from_secs(s)))
            .collect();
        // Grace until t=5 (exclusive); failures at 5, 6, 7 count.
        assert_eq!(results[7], Some(HealthState::Unhealthy));
        assert!(results[..7].iter().all(Option::is_none));
    }

    /// A probe whose answer the test flips; `slow` makes it hang past the timeout.
    struct Scripted {
        ok: Arc<AtomicBool>,
        slow: Arc<AtomicBool>,
    }

    impl Probe for Scripted {
        async fn probe(&self) -> Result<(), String> {
            if self.slow.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            if self.ok.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("scripted failure".into())
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn checker_reports_transitions_on_time() {
        let ok = Arc::new(AtomicBool::new(true));
        let slow = Arc::new(AtomicBool::new(false));
        let probe = Scripted {
            ok: ok.clone(),
            slow: slow.clone(),
        };
        let mut c = cfg();
        c.rise = 1;
        let (tx, mut rx) = mpsc::channel(8);
        let t0 = Instant::now();
        let handle = HealthChecker::new(probe, c).spawn("i1", tx);

        let e = rx.recv().await.unwrap();
        assert_eq!(
            (e.previous, e.state),
            (HealthState::Starting, HealthState::Healthy)
        );
        assert_eq!(t0.elapsed(), Duration::ZERO, "first probe runs at once");

        tokio::time::sleep(Duration::from_millis(9_500)).await;
        ok.store(false, Ordering::SeqCst);
        let e = rx.recv().await.unwrap();
        assert_eq!(e.state, HealthState::Unhealthy);
        assert_eq!(e.last_error.as_deref(), Some("scripted failure"));
        // Failures at t=10, 11, 12.
        assert_eq!(t0.elapsed(), Duration::from_secs(12));

        ok.store(true, Ordering::SeqCst);
        let e = rx.recv().await.unwrap();
        assert_eq!(e.state, HealthState::Healthy);
        assert_eq!(t0.elapsed(), Duration::from_secs(13));

        // A probe that hangs counts as a failure after the timeout.
        slow.store(true, Ordering::SeqCst);
        let e = rx.recv().await.unwrap();
        assert_eq!(e.state, HealthState::Unhealthy);
        assert!(e.last_error.unwrap().contains("no answer within 500ms"));
        assert_eq!(handle.stats().failures(), 6);
        drop(handle);
        assert!(
            rx.recv().await.is_none(),
            "dropping the handle stops the checker"
        );
    }
}
