//! The status node `/deployments/{appId}/{version}/status`: what the scheduler tells about a
//! deployment, per instance its host, address, state and health, or why it cannot be placed
//! (which filter rejected which hosts).
//!
//! ```json
//! {"phase": "unschedulable", "desired": 3, "next_instance": 2,
//!  "message": "cannot place 1 more instance (3 wanted, 2 running): memory rejected h1, h2; alive rejected h3",
//!  "instances": [{"id": "hello-v1-0", "host": "h1", "address": "127.0.0.2:25701",
//!                 "state": "healthy", "health": "healthy"}],
//!  "rejected": {"alive": ["h3"], "memory": ["h1", "h2"]}}
//! ```
//!
//! The node is also the deployment's lock: every commit that changes the deployment's
//! instances writes it under its version (and carries `next_instance`, the counter instance
//! ids are made from), so two schedulers can never both add the missing instances. Its
//! content is a pure function of what the scheduler read, so several schedulers agree on it
//! and it is written only when it changes.

use std::collections::BTreeMap;

use caas_core::{AppId, InstanceId, Version};
use serde::{Deserialize, Serialize};

use super::plan::Plan;
use super::snapshot::{Liveness, Snapshot, is_failing};
use crate::zk::hosts::InstanceState;

/// Where a deployment stands as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Every wanted instance is placed and healthy.
    Running,
    /// Instances are placed but not all healthy yet (or a drain is in progress).
    Deploying,
    /// Instances are missing and cannot be placed: see `message` and `rejected`.
    Unschedulable,
    /// The deployment node is invalid: see `message`. Its instances are left alone.
    Invalid,
}

/// Health of one instance as the platform sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Registered in `/service/address` (the agent registers only after a passing check).
    Healthy,
    /// The agent reports it failing (unhealthy, restarting or failed).
    Unhealthy,
    /// Neither yet.
    Unknown,
}

/// One instance in the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceReport {
    /// The instance id.
    pub id: InstanceId,
    /// The host it is assigned to.
    pub host: String,
    /// `{hostIp}:{hostPort}` from the registry, else from the agent's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The agent's state for it (`starting`, `healthy`, ...), `assigned` before the agent
    /// reported anything, `host_down` while its host's `alive` node is gone,
    /// `host_unreadable` while its host's node cannot be read.
    pub state: String,
    /// See [`Health`].
    pub health: Health,
    /// Its host is draining: it is replaced elsewhere, then removed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// What the status node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentStatus {
    /// See [`Phase`].
    pub phase: Phase,
    /// Instances wanted: `replicas`, or the eligible hosts of a global deployment.
    pub desired: u64,
    /// The counter the next instance id is made from (never goes back).
    pub next_instance: u64,
    /// Why the deployment is invalid or unschedulable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The instances, by id.
    #[serde(default)]
    pub instances: Vec<InstanceReport>,
    /// Per filter, the hosts it rejected (when unschedulable, and for global deployments).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected: BTreeMap<String, Vec<String>>,
}

impl DeploymentStatus {
    /// The stored JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain strings and numbers: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The status of a deployment from the snapshot (after `plan` was applied to it).
pub fn build(
    snap: &Snapshot,
    app: &AppId,
    version: &Version,
    global: bool,
    plan: &Plan,
) -> DeploymentStatus {
    let registered = snap
        .deployments
        .get(&(app.clone(), version.clone()))
        .map(|d| &d.registered);
    let mut instances = Vec::new();
    let mut healthy = 0u64;
    let mut draining = 0usize;
    for h in snap.hosts.values() {
        for (id, a) in &h.instances {
            if &a.app != app || &a.version != version {
                continue;
            }
            let reg = registered.and_then(|r| r.get(id));
            let agent = h.statuses.get(id);
            let health = if reg.is_some() {
                Health::Healthy
            } else if agent.is_some_and(is_failing) {
                Health::Unhealthy
            } else {
                Health::Unknown
            };
            let state = if h.liveness != Liveness::Alive {
                "host_down".to_owned()
            } else {
                match agent.map(|s| s.state) {
                    Some(s) => state_name(s).to_owned(),
                    None => "assigned".to_owned(),
                }
            };
            let is_draining = h.info.draining;
            if is_draining {
                draining += 1;
            } else if health == Health::Healthy && h.liveness == Liveness::Alive {
                healthy += 1;
            }
            instances.push(InstanceReport {
                id: id.clone(),
                host: h.id.clone(),
                address: reg
                    .cloned()
                    .or_else(|| agent.and_then(|s| s.address.clone())),
                state,
                health,
                draining: is_draining,
            });
        }
    }
    for (host, b) in &snap.bad_hosts {
        for (id, a) in &b.instances {
            if &a.app == app && &a.version == version {
                let reg = registered.and_then(|r| r.get(id));
                instances.push(InstanceReport {
                    id: id.clone(),
                    host: host.clone(),
                    address: reg.cloned(),
                    state: "host_unreadable".into(),
                    health: if reg.is_some() {
                        Health::Healthy
                    } else {
                        Health::Unknown
                    },
                    draining: false,
                });
            }
        }
    }
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    let (phase, message, rejected) = match &plan.unschedulable {
        Some(u) => (
            Phase::Unschedulable,
            Some(u.to_string()),
            u.rejected.clone(),
        ),
        None => {
            let done =
                healthy >= plan.desired && draining == 0 && instances.len() as u64 == plan.desired;
            let phase = if done {
                Phase::Running
            } else {
                Phase::Deploying
            };
            let rejected = if global {
                plan.rejected.clone()
            } else {
                BTreeMap::new()
            };
            (phase, None, rejected)
        }
    };
    DeploymentStatus {
        phase,
        desired: plan.desired,
        next_instance: plan.next_instance,
        message,
        instances,
        rejected,
    }
}

/// The status of a deployment whose node is invalid: its instances are listed as they are.
pub fn invalid(
    snap: &Snapshot,
    app: &AppId,
    version: &Version,
    why: &str,
    next_instance: u64,
) -> DeploymentStatus {
    let plan = Plan {
        add: Vec::new(),
        remove: Vec::new(),
        next_instance,
        desired: 0,
        unschedulable: None,
        rejected: BTreeMap::new(),
    };
    let mut s = build(snap, app, version, false, &plan);
    s.phase = Phase::Invalid;
    s.message = Some(why.to_owned());
    s
}

fn state_name(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Starting => "starting",
        InstanceState::Unhealthy => "unhealthy",
        InstanceState::Healthy => "healthy",
        InstanceState::Restarting => "restarting",
        InstanceState::Failed => "failed",
        InstanceState::Removing => "removing",
    }
}
