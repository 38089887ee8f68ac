//! One assigned instance as the agent tracks it: its unit of containers (the main one and
//! its sidecars), where it is in its life ([`Phase`]), its health supervisor and what its
//! status node should say.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use caas_core::InstanceId;
use tokio::time::Instant;

use crate::assignment::Assignment;
use crate::health::{Action, Backoff, HealthHandle, Supervisor};
use crate::zk::hosts::InstanceStatus;

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// A start job (remove old, pull, run main and sidecars) is in flight.
    Starting,
    /// The unit runs and its main container is health-checked.
    Running,
    /// Failed (an exit, a failed check, or a failed start); a start is due when the timer
    /// fires.
    Waiting,
    /// Unhealthy but the kill limit refused the kill: deregistered, still running.
    Held,
    /// Removed by its failure policy: stays down until its assignment changes.
    Stopped,
    /// Its assignment is gone: deregistered, its containers are being stopped and removed;
    /// forgotten (and its status node deleted) once they are.
    Removing,
}

impl Phase {
    /// Whether the unit's containers are supposed to be running.
    pub(super) fn is_up(self) -> bool {
        matches!(self, Phase::Running | Phase::Held)
    }
}

/// One assignment on this host.
#[derive(Debug)]
pub(super) struct Instance {
    pub(super) id: InstanceId,
    pub(super) assignment: Assignment,
    pub(super) port: u16,
    /// The current main container, once started or adopted.
    pub(super) container: Option<String>,
    /// The current sidecar containers, by sidecar name.
    pub(super) sidecars: BTreeMap<String, String>,
    pub(super) phase: Phase,
    /// Bumped at every (re)start and failure: health events, timers and jobs carry the
    /// generation they were made for, and stale ones are ignored.
    pub(super) generation: u64,
    pub(super) health: Option<HealthHandle>,
    pub(super) supervisor: Supervisor,
    /// Delay between failed start attempts (pull/run errors).
    pub(super) start_backoff: Backoff,
    /// The last start attempt failed (a `Waiting` instance is `failed`, not `restarting`).
    pub(super) start_failed: bool,
    /// Why the instance is not running or not healthy (start error, exit, failed probe).
    pub(super) message: Option<String>,
    /// Restarts after an exit or a failed health check since the assignment appeared.
    pub(super) restarts: u32,
    /// When the current main container started, Unix milliseconds.
    pub(super) started_at_ms: Option<u64>,
    /// What the status node holds (as far as this agent wrote it).
    pub(super) published: Option<InstanceStatus>,
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
            sidecars: BTreeMap::new(),
            phase: Phase::Starting,
            generation: 0,
            health: None,
            supervisor,
            start_backoff: backoff,
            start_failed: false,
            message: None,
            restarts: 0,
            started_at_ms: None,
            published: None,
        }
    }

    /// The registered address.
    pub(super) fn addr(&self, ip: std::net::IpAddr) -> SocketAddr {
        SocketAddr::new(ip, self.port)
    }

    /// Every container of the unit: sidecars first (they live in the main one's network
    /// namespace), then the main container.
    pub(super) fn containers(&self) -> Vec<String> {
        self.sidecars
            .values()
            .cloned()
            .chain(self.container.clone())
            .collect()
    }

    /// Takes every container of the unit out of the instance (for a removal job).
    pub(super) fn take_containers(&mut self) -> Vec<String> {
        let all = self.containers();
        self.sidecars.clear();
        self.container = None;
        all
    }

    /// Whether `container` is the main container or a sidecar of this unit; `Some(None)` for
    /// the main one, `Some(Some(name))` for a sidecar.
    pub(super) fn owns(&self, container: &str) -> Option<Option<&str>> {
        if self.container.as_deref() == Some(container) {
            return Some(None);
        }
        self.sidecars
            .iter()
            .find(|(_, c)| c.as_str() == container)
            .map(|(name, _)| Some(name.as_str()))
    }

    /// Stops health checking and invalidates what was scheduled for the current generation.
    pub(super) fn bump(&mut self) -> u64 {
        self.health = None;
        self.generation += 1;
        self.generation
    }

    /// A container of the unit exited (die/oom event, found stopped, or gone from Docker's
    /// list) because of `why`.
    pub(super) fn exited(&mut self, why: String, now: Instant) -> Vec<Action> {
        self.message = Some(why);
        self.bump();
        self.supervisor.on_exit(now)
    }
}
