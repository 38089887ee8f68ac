//! The per-host kill-rate limit: at most `max` health-triggered kills in any 60 s window.
//!
//! When a host is overloaded every container's ping gets slow at once; killing them all would
//! turn an overload into an outage. Past the limit the agent keeps the container deregistered
//! (no traffic) but running, and asks again after [`KillLimiter::try_kill`]'s retry delay.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// A sliding-window counter of kills on one host.
#[derive(Debug, Clone)]
pub struct KillLimiter {
    max: usize,
    window: Duration,
    kills: VecDeque<Instant>,
}

impl KillLimiter {
    /// At most `max_per_minute` kills in any 60 s (0 forbids all kills).
    pub fn new(max_per_minute: u32) -> Self {
        Self::with_window(max_per_minute, Duration::from_secs(60))
    }

    /// At most `max` kills in any `window`.
    pub fn with_window(max: u32, window: Duration) -> Self {
        Self {
            max: usize::try_from(max).unwrap_or(usize::MAX),
            window,
            kills: VecDeque::new(),
        }
    }

    /// Records a kill at `now` if allowed; else returns how long until one is.
    pub fn try_kill_at(&mut self, now: Instant) -> Result<(), Duration> {
        while let Some(&t) = self.kills.front() {
            if now.duration_since(t) >= self.window {
                self.kills.pop_front();
            } else {
                break;
            }
        }
        if self.kills.len() < self.max {
            self.kills.push_back(now);
            return Ok(());
        }
        Err(match self.kills.front() {
            Some(&oldest) => self.window.saturating_sub(now.duration_since(oldest)),
            None => self.window,
        })
    }

    /// [`Self::try_kill_at`] now.
    pub fn try_kill(&mut self) -> Result<(), Duration> {
        self.try_kill_at(Instant::now())
    }

    /// Kills recorded in the current window (as of the last call).
    pub fn recent(&self) -> usize {
        self.kills.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limits_per_sliding_minute() {
        let mut l = KillLimiter::new(3);
        for _ in 0..3 {
            assert!(l.try_kill().is_ok());
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        // t=30 s: three kills at 0, 10, 20; the next is allowed when the first leaves (t=60).
        assert_eq!(l.try_kill(), Err(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(l.try_kill().is_ok());
        assert_eq!(l.try_kill(), Err(Duration::from_secs(10)));
        assert_eq!(l.recent(), 3);
    }

    #[test]
    fn zero_forbids() {
        let mut l = KillLimiter::new(0);
        assert_eq!(l.try_kill_at(Instant::now()), Err(Duration::from_secs(60)));
    }
}
