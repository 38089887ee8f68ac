//! What to do about one container when its health changes or it dies: the ordering rules of
//! the issue in one place, as pure logic the host agent executes.
//!
//! - Registered only after it becomes healthy (its first passing ping with `rise = 1`).
//! - On unhealthy: deregister first, always; then, if the host's [`KillLimiter`] allows a
//!   kill, restart after the [`Backoff`] delay or remove, per [`FailurePolicy`]; if not, hold
//!   (it stays deregistered but running) and ask again later.
//! - On death (Docker `die` event): deregister, then restart after the backoff or remove. No
//!   kill is needed, so the limiter is not asked.
//! - The backoff is reset only once the container has stayed healthy for `stable_after`
//!   (as Kubernetes resets CrashLoopBackOff after 10 minutes of running), so a container that
//!   passes one ping and then dies does not restart in a tight loop.

use std::time::Duration;

use tokio::time::Instant;

use super::{Backoff, HealthState, KillLimiter};
use crate::assignment::FailurePolicy;

/// One step for the agent, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write the registry node (`/caas/service/address/...`).
    Register,
    /// Delete the registry node.
    Deregister,
    /// Kill (if alive) and start again after `after`.
    Restart {
        /// Backoff delay before the new start.
        after: Duration,
    },
    /// Stop and remove for good (and give the port back).
    Remove,
    /// Kill refused by the rate limit: keep it deregistered, ask again after `retry_after`.
    Hold {
        /// When the limiter may allow a kill.
        retry_after: Duration,
    },
}

/// The per-container decision state.
#[derive(Debug, Clone)]
pub struct Supervisor {
    policy: FailurePolicy,
    backoff: Backoff,
    stable_after: Duration,
    registered: bool,
    healthy_since: Option<Instant>,
}

impl Supervisor {
    /// A supervisor with `policy`, restart `backoff`, and the healthy time after which the
    /// backoff starts over.
    pub fn new(policy: FailurePolicy, backoff: Backoff, stable_after: Duration) -> Self {
        Self {
            policy,
            backoff,
            stable_after,
            registered: false,
            healthy_since: None,
        }
    }

    /// Whether the container is (should be) in the registry.
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// Restarts since the backoff was last reset.
    pub fn restarts(&self) -> u32 {
        self.backoff.attempts()
    }

    /// The checker reported `state` at `now`.
    pub fn on_health(
        &mut self,
        state: HealthState,
        limiter: &mut KillLimiter,
        now: Instant,
    ) -> Vec<Action> {
        match state {
            HealthState::Healthy => {
                self.healthy_since = Some(now);
                if self.registered {
                    Vec::new()
                } else {
                    self.registered = true;
                    vec![Action::Register]
                }
            }
            HealthState::Starting => Vec::new(),
            HealthState::Unhealthy => {
                let mut actions = self.deregister();
                match limiter.try_kill_at(now) {
                    Ok(()) => actions.push(self.after_failure(now)),
                    Err(retry_after) => actions.push(Action::Hold { retry_after }),
                }
                actions
            }
        }
    }

    /// After a [`Action::Hold`]: asks the limiter again (the container is still unhealthy).
    pub fn retry_kill(&mut self, limiter: &mut KillLimiter, now: Instant) -> Action {
        match limiter.try_kill_at(now) {
            Ok(()) => self.after_failure(now),
            Err(retry_after) => Action::Hold { retry_after },
        }
    }

    /// The container died by itself (Docker `die`/`oom` event) at `now`.
    pub fn on_exit(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = self.deregister();
        actions.push(self.after_failure(now));
        actions
    }

    fn deregister(&mut self) -> Vec<Action> {
        if std::mem::take(&mut self.registered) {
            vec![Action::Deregister]
        } else {
            Vec::new()
        }
    }

    fn after_failure(&mut self, now: Instant) -> Action {
        if let Some(since) = self.healthy_since.take() {
            if now.duration_since(since) >= self.stable_after {
                self.backoff.reset();
            }
        }
        match self.policy {
            FailurePolicy::Restart => Action::Restart {
                after: self.backoff.next_delay(),
            },
            FailurePolicy::Remove => Action::Remove,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sup(policy: FailurePolicy) -> Supervisor {
        Supervisor::new(
            policy,
            Backoff::new(Duration::from_secs(1), Duration::from_secs(8)),
            Duration::from_secs(60),
        )
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn registers_once_then_deregisters_before_restart() {
        let t0 = Instant::now();
        let mut lim = KillLimiter::new(10);
        let mut s = sup(FailurePolicy::Restart);
        assert_eq!(
            s.on_health(HealthState::Healthy, &mut lim, t0),
            vec![Action::Register]
        );
        assert!(s.on_health(HealthState::Healthy, &mut lim, t0).is_empty());
        assert_eq!(
            s.on_health(HealthState::Unhealthy, &mut lim, t0 + S(5)),
            vec![Action::Deregister, Action::Restart { after: S(1) }]
        );
        assert!(!s.is_registered());
    }

    #[test]
    fn crash_loop_backs_off_and_stable_run_resets() {
        let t0 = Instant::now();
        let mut lim = KillLimiter::new(100);
        let mut s = sup(FailurePolicy::Restart);
        let mut delays = Vec::new();
        for i in 0..5 {
            let now = t0 + S(i * 10);
            s.on_health(HealthState::Healthy, &mut lim, now);
            // Dies 2 s after each start: never stable.
            match s.on_exit(now + S(2)).as_slice() {
                [Action::Deregister, Action::Restart { after }] => delays.push(after.as_secs()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 8]);
        // Healthy for 60 s: the next failure starts from the base again.
        s.on_health(HealthState::Healthy, &mut lim, t0 + S(100));
        assert_eq!(
            s.on_exit(t0 + S(160)),
            vec![Action::Deregister, Action::Restart { after: S(1) }]
        );
    }

    #[test]
    fn remove_policy_and_never_registered() {
        let t0 = Instant::now();
        let mut lim = KillLimiter::new(10);
        let mut s = sup(FailurePolicy::Remove);
        // Never became healthy: nothing to deregister.
        assert_eq!(
            s.on_health(HealthState::Unhealthy, &mut lim, t0),
            vec![Action::Remove]
        );
    }

    #[test]
    fn kill_limit_holds_but_still_deregisters() {
        let t0 = Instant::now();
        let mut lim = KillLimiter::new(1);
        let mut a = sup(FailurePolicy::Restart);
        let mut b = sup(FailurePolicy::Restart);
        a.on_health(HealthState::Healthy, &mut lim, t0);
        b.on_health(HealthState::Healthy, &mut lim, t0);
        assert_eq!(
            a.on_health(HealthState::Unhealthy, &mut lim, t0 + S(1)),
            vec![Action::Deregister, Action::Restart { after: S(1) }]
        );
        assert_eq!(
            b.on_health(HealthState::Unhealthy, &mut lim, t0 + S(11)),
            vec![Action::Deregister, Action::Hold { retry_after: S(50) }]
        );
        assert_eq!(
            b.retry_kill(&mut lim, t0 + S(30)),
            Action::Hold { retry_after: S(31) }
        );
        assert_eq!(
            b.retry_kill(&mut lim, t0 + S(61)),
            Action::Restart { after: S(1) }
        );
    }
}
