//! Counters of one agent: what it did and what went wrong (every background error is logged
//! with context and counted here).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters (shared with the agent task).
        #[derive(Debug, Default)]
        pub struct AgentStats {
            $($(#[$doc])* pub(crate) $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct AgentStatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl AgentStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> AgentStatsSnapshot {
                AgentStatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Full reconciles run.
    reconciles,
    /// Units started (first starts and restarts; a unit is the main container and its
    /// sidecars).
    started,
    /// Container starts that failed (pull, port, run).
    start_failures,
    /// Running containers adopted (found by label, not started by this process).
    adopted,
    /// Containers removed because no assignment names them (or duplicates).
    orphans_removed,
    /// Containers removed because their assignment was deleted or changed, or by policy.
    removed,
    /// Registrations written.
    registered,
    /// Registrations deleted.
    deregistered,
    /// Restarts scheduled after a failure (health or exit).
    restarts,
    /// Kills refused by the per-host kill limit.
    kills_held,
    /// Docker die/oom events acted on.
    exits,
    /// Assignment nodes skipped because their name or JSON is invalid (per reconcile).
    invalid_assignments,
    /// Instance status nodes written (created or changed).
    status_writes,
    /// Writes of the agent's fields of the host node.
    host_writes,
    /// CPU counter samples read (see `cpu_idle`).
    cpu_samples,
    /// Background errors (ZooKeeper, Docker, bad assignments), each also logged.
    errors,
}

impl AgentStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
