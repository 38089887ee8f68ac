//! The JSON the API answers with (what `caas ps`, `caas hosts` and scripts read).

use std::collections::BTreeMap;

use caas_core::{AppId, Blacklist, Domain, RateLimit, Version};
use serde::Serialize;

use crate::scheduler::deployment::Deployment;
use crate::scheduler::snapshot::{Snapshot, is_failing};
use crate::scheduler::status::{DeploymentStatus, Phase};
use crate::zk::hosts::{HostInfo, Resources};

/// `GET /v1/apps`: one entry per app the caller owns.
#[derive(Debug, Clone, Serialize)]
pub struct AppSummary {
    /// The app id.
    pub app: AppId,
    /// Its deployed versions.
    pub versions: Vec<Version>,
}

/// `GET /v1/apps/{app}`.
#[derive(Debug, Clone, Serialize)]
pub struct AppView {
    /// The app id.
    pub app: AppId,
    /// The version `{app}.{domain}` routes to without weights.
    pub default_version: Option<Version>,
    /// Traffic split across versions.
    pub weights: BTreeMap<Version, u32>,
    /// Custom domains whose claim the app holds.
    pub domains: Vec<Domain>,
    /// Requests refused with 403.
    #[serde(skip_serializing_if = "Blacklist::is_empty")]
    pub blacklist: Blacklist,
    /// Request rate limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The deployed versions.
    pub versions: Vec<VersionView>,
    /// Every instance of every version, by id.
    pub instances: Vec<InstanceView>,
}

/// One version of an app: its deployment and what the scheduler says about it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    /// The version.
    pub version: Version,
    /// The deployment as stored (absent when the node is invalid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
    /// Why the stored deployment is invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    /// The scheduler's status; absent before a scheduler looked at the deployment.
    pub status: Option<StatusView>,
}

/// The scheduler's word on a deployment (its instances are listed in [`AppView::instances`]).
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// `running`, `deploying`, `unschedulable` or `invalid`.
    pub phase: Phase,
    /// Instances wanted.
    pub desired: u64,
    /// Why it is unschedulable or invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Per filter, the hosts it rejected.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected: BTreeMap<String, Vec<String>>,
}

impl From<&DeploymentStatus> for StatusView {
    fn from(s: &DeploymentStatus) -> Self {
        Self {
            phase: s.phase,
            desired: s.desired,
            message: s.message.clone(),
            rejected: s.rejected.clone(),
        }
    }
}

/// One instance, from its assignment, the agent's status node and the registry.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    /// The instance id.
    pub id: String,
    /// Its version.
    pub version: Version,
    /// The host it is assigned to.
    pub host: String,
    /// `{hostIp}:{port}`: registered, else as the agent reports it.
    pub address: Option<String>,
    /// The agent's state (`starting`, `healthy`, ...), `assigned` before it reported,
    /// `host_down` while the host's agent is gone, `host_unreadable`.
    pub state: String,
    /// `healthy` (registered), `unhealthy` (the agent reports it failing) or `unknown`.
    pub health: &'static str,
    /// Restarts since it was assigned.
    pub restarts: u32,
    /// Seconds since its current container started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_s: Option<u64>,
    /// Why it is not running or not healthy (the agent's last message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Its host is draining.
    pub draining: bool,
}

/// Every instance of `app` in the snapshot, sorted by id.
pub fn instances(snap: &Snapshot, app: &AppId) -> Vec<InstanceView> {
    let now = caas_core::clock::wall_ms();
    let mut out = Vec::new();
    for h in snap.hosts.values() {
        for (id, a) in &h.instances {
            if &a.app != app {
                continue;
            }
            let registered = snap
                .deployments
                .get(&(app.clone(), a.version.clone()))
                .and_then(|d| d.registered.get(id));
            let agent = h.statuses.get(id);
            let health = if registered.is_some() {
                "healthy"
            } else if agent.is_some_and(is_failing) {
                "unhealthy"
            } else {
                "unknown"
            };
            let state = if !h.alive {
                "host_down".to_owned()
            } else {
                agent
                    .and_then(|s| serde_json::to_value(s.state).ok())
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "assigned".to_owned())
            };
            out.push(InstanceView {
                id: id.to_string(),
                version: a.version.clone(),
                host: h.id.clone(),
                address: registered
                    .cloned()
                    .or_else(|| agent.and_then(|s| s.address.clone())),
                state,
                health,
                restarts: agent.map_or(0, |s| s.restarts),
                age_s: agent
                    .and_then(|s| s.started_at_ms)
                    .map(|t| now.saturating_sub(t) / 1000),
                message: agent.and_then(|s| s.message.clone()),
                draining: h.info.draining,
            });
        }
    }
    for (host, b) in &snap.bad_hosts {
        for (id, a) in &b.instances {
            if &a.app == app {
                out.push(InstanceView {
                    id: id.to_string(),
                    version: a.version.clone(),
                    host: host.clone(),
                    address: None,
                    state: "host_unreadable".into(),
                    health: "unknown",
                    restarts: 0,
                    age_s: None,
                    message: Some(b.reason.clone()),
                    draining: false,
                });
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// `GET /v1/hosts`: one host.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    /// The host id.
    pub id: String,
    /// Its agent's session lives (`/hosts/{id}/alive` exists).
    pub alive: bool,
    /// The advertised IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// What the host offers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Resources>,
    /// What its assignments take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated: Option<Resources>,
    /// Measured idle CPU share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_idle: Option<f64>,
    /// Scheduling labels.
    pub labels: BTreeMap<String, String>,
    /// Takes nothing new; its instances move elsewhere.
    pub draining: bool,
    /// Where its agent serves container logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
    /// Why the host node cannot be read (no info yet, bad JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HostView {
    /// A host from its node (`Err`: why it cannot be read).
    pub fn new(id: &str, alive: bool, info: Result<HostInfo, String>) -> Self {
        match info {
            Ok(i) => Self {
                id: id.to_owned(),
                alive,
                ip: Some(i.ip.to_string()),
                capacity: Some(i.capacity),
                allocated: Some(i.allocated),
                cpu_idle: i.cpu_idle,
                labels: i.labels,
                draining: i.draining,
                logs: i.logs,
                error: None,
            },
            Err(e) => Self {
                id: id.to_owned(),
                alive,
                ip: None,
                capacity: None,
                allocated: None,
                cpu_idle: None,
                labels: BTreeMap::new(),
                draining: false,
                logs: None,
                error: Some(e),
            },
        }
    }
}
