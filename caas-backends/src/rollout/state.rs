//! The rollout node `/rollouts/{appId}`: everything a rolling update is, so that any
//! controller (a restarted one, or another of several) carries it on from where it stands.
//!
//! ```json
//! {"app": "hello", "from": "v1", "to": "v2", "kind": "update",
//!  "deployment": {"image": "127.0.0.1:5000/hello:v2", "replicas": 3, "container_port": 8080},
//!  "from_deployment": {"image": "127.0.0.1:5000/hello:v1", "replicas": 3, "container_port": 8080},
//!  "steps": [10, 50, 100], "step_wait_ms": 5000, "health_deadline_ms": 60000,
//!  "drain_wait_ms": 5000,
//!  "before": {"default_version": "v1", "weights": {}},
//!  "phase": "shifting", "step": 1,
//!  "started_ms": 1767225600000, "phase_since_ms": 1767225612000, "updated_ms": 1767225612000,
//!  "outcome": null, "reason": null}
//! ```
//!
//! Times are milliseconds since the Unix epoch (wall clock: the node outlives processes).

use std::collections::BTreeMap;

use caas_core::{AppId, Version};
use serde::{Deserialize, Serialize};

use crate::scheduler::Deployment;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Accepted; the new version's deployment is not written yet.
    Starting,
    /// The new version's deployment is written; waiting until all its instances are
    /// healthy (at most `health_deadline_ms` from `phase_since_ms`).
    WaitingHealthy,
    /// Traffic is moving: `steps[step]` percent of the old version's share goes to the new
    /// one since `phase_since_ms`.
    Shifting,
    /// The new version serves all the traffic; the old one is removed once `drain_wait_ms`
    /// has passed since `phase_since_ms` (the gateways stop routing to it meanwhile).
    Draining,
    /// A rollback was asked for and is being applied.
    RollingBack,
    /// Finished: the new version serves, the old one is removed.
    Done,
    /// Finished: the routing is as before, the new version is removed.
    RolledBack,
    /// Stopped before changing anything (see `reason`).
    Failed,
}

impl Phase {
    /// Whether nothing more happens to the rollout.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::RolledBack | Phase::Failed)
    }

    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::WaitingHealthy => "waiting_healthy",
            Phase::Shifting => "shifting",
            Phase::Draining => "draining",
            Phase::RollingBack => "rolling_back",
            Phase::Done => "done",
            Phase::RolledBack => "rolled_back",
            Phase::Failed => "failed",
        }
    }
}

/// What the rollout does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `from` → `to`, the new version built from the request.
    Update,
    /// The revert of a finished update: `to` is the old version again, re-created from the
    /// spec it had.
    Revert,
}

/// The part of an app's spec a rollout changes: `{appId}.{domain}`'s routing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// `AppSpec::default_version`.
    #[serde(default)]
    pub default_version: Option<Version>,
    /// `AppSpec::weights`.
    #[serde(default)]
    pub weights: BTreeMap<Version, u32>,
}

/// The rollout node (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutState {
    /// The app.
    pub app: AppId,
    /// The version serving when the rollout started.
    pub from: Version,
    /// The version replacing it.
    pub to: Version,
    /// Update or revert.
    pub kind: Kind,
    /// The deployment written for `to`.
    pub deployment: Deployment,
    /// `from`'s deployment as it was at the start (a later revert re-creates it).
    pub from_deployment: Deployment,
    /// Percentages of `from`'s share moved to `to`, strictly increasing, the last 100.
    pub steps: Vec<u32>,
    /// Time between two steps.
    pub step_wait_ms: u64,
    /// Longest wait for all of `to`'s instances to be healthy before rolling back.
    pub health_deadline_ms: u64,
    /// Time between `to` taking all the traffic and `from`'s removal.
    pub drain_wait_ms: u64,
    /// The app's routing before the rollout (restored by a rollback).
    pub before: Routing,
    /// See [`Phase`].
    pub phase: Phase,
    /// Index in `steps` of the step applied (while shifting, draining or done).
    #[serde(default)]
    pub step: Option<usize>,
    /// When the rollout was accepted.
    pub started_ms: u64,
    /// When the current phase (or step) began.
    pub phase_since_ms: u64,
    /// When the node was last written.
    pub updated_ms: u64,
    /// `succeeded`, `rolled_back` or `failed` once finished.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// Why it rolled back or failed.
    #[serde(default)]
    pub reason: Option<String>,
}

/// How a rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `to` serves, `from` is removed.
    Succeeded,
    /// Back to `from`, `to` removed.
    RolledBack,
    /// Nothing was changed.
    Failed,
}

impl RolloutState {
    /// The stored JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, numbers, maps and lists of them: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a stored node.
    pub fn from_json(data: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(data).map_err(|e| format!("not a rollout state: {e}"))
    }

    /// The percentage of `from`'s share `to` has now.
    pub fn percent(&self) -> u32 {
        match self.phase {
            Phase::Done => 100,
            Phase::Shifting | Phase::Draining => self
                .step
                .and_then(|i| self.steps.get(i))
                .copied()
                .unwrap_or(0),
            _ => 0,
        }
    }
}
