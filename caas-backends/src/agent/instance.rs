//! One assigned instance as the agent tracks it, and what the agent does to it: the
//! [`Supervisor`]'s actions executed against ZooKeeper and Docker.

use std::net::SocketAddr;

use caas_core::InstanceId;
use tokio::time::Instant;

use crate::assignment::Assignment;
use crate::health::{Action, Backoff, HealthHandle, Supervisor};

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// A start job (remove old, pull, run) is in flight.
    Starting,
    /// The container runs and is health-checked.
    Running,
    /// Failed; a restart is due when the timer fires.
    Waiting,
    /// Unhealthy but the kill limit refused the kill: deregistered, still running.
    Held,
    /// Removed by its failure policy: stays down until its assignment changes.
    Stopped,
}

/// One assignment on this host.
#[derive(Debug)]
pub(super) struct Instance {
    pub(super) id: InstanceId,
    pub(super) assignment: Assignment,
    pub(super) port: u16,
    /// The current container, once started or adopted.
    pub(super) container: Option<String>,
    pub(super) phase: Phase,
    /// Bumped at every (re)start and failure: health events, timers and jobs carry the
    /// generation they were made for, and stale ones are ignored.
    pub(super) generation: u64,
    pub(super) health: Option<HealthHandle>,
    pub(super) supervisor: Supervisor,
    /// Delay between failed start attempts (pull/run errors).
    pub(super) start_backoff: Backoff,
}

impl Instance {
    pub(super) fn new(
        id: InstanceId,
        assignment: Assignment,
        port: u16,
        backoff: Backoff,
        stable_after: std::time::Duration,
    ) -> Self {
        let supervisor = Supervisor::new(assignment.health.policy, backoff.clone(), stable_after);
        Self {
            id,
            assignment,
            port,
            container: None,
            phase: Phase::Starting,
            generation: 0,
            health: None,
            supervisor,
            start_backoff: backoff,
        }
    }

    /// The registered address.
    pub(super) fn addr(&self, ip: std::net::IpAddr) -> SocketAddr {
        SocketAddr::new(ip, self.port)
    }

    /// Stops health checking and invalidates what was scheduled for the current generation.
    pub(super) fn bump(&mut self) -> u64 {
        self.health = None;
        self.generation += 1;
        self.generation
    }

    /// The container exited (die/oom event, or gone from Docker's list).
    pub(super) fn exited(&mut self, now: Instant) -> Vec<Action> {
        self.bump();
        self.supervisor.on_exit(now)
    }
}
