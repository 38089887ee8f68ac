//! Counters of one scheduler: what it committed, how often it lost a race, and what went
//! wrong (every background error is logged with context and counted here).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters (shared with the scheduler task).
        #[derive(Debug, Default)]
        pub struct SchedulerStats {
            $($(#[$doc])* pub(crate) $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct SchedulerStatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl SchedulerStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> SchedulerStatsSnapshot {
                SchedulerStatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Scheduling passes completed (a full read, then every deployment).
    passes,
    /// Commits that changed instances (placements, removals) and succeeded.
    commits,
    /// Instances created.
    placed,
    /// Instances deleted.
    removed,
    /// Commits refused because a checked node had changed (re-read and retried).
    conflicts,
    /// Commits whose outcome was unknown (connection lost): re-read and retried.
    unknown_outcomes,
    /// Deployments given up for this pass after the maximum attempts.
    gave_up,
    /// Status-only writes that succeeded.
    status_writes,
    /// Status-only writes refused (someone wrote it first; the next pass looks again).
    status_conflicts,
    /// Errors (failed passes and writes, unusable nodes: each distinct one once), each also
    /// logged.
    errors,
}

impl SchedulerStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl SchedulerStatsSnapshot {
    /// Refused or unknown commits over all commit attempts (0 when there were none).
    pub fn conflict_rate(&self) -> f64 {
        let failed = self.conflicts + self.unknown_outcomes;
        let attempts = self.commits + failed;
        if attempts == 0 {
            0.0
        } else {
            failed as f64 / attempts as f64
        }
    }
}
