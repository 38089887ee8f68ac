//! The host nodes: what a host agent publishes about itself and where it finds its work.
//!
//! ```text
//! /hosts/{hostId}                              PERSISTENT  HostInfo JSON (versioned: optimistic locking)
//! /hosts/{hostId}/alive                        EPHEMERAL   "{ip}" while the agent's session lives
//! /hosts/{hostId}/assignments/{instanceId}     PERSISTENT  Assignment JSON (written by schedulers)
//! /hosts/{hostId}/status/{instanceId}          PERSISTENT  InstanceStatus JSON (written by the agent)
//! ```
//!
//! **Who owns which field of [`HostInfo`]**:
//!
//! | field | owner | how it is written |
//! |---|---|---|
//! | `ip`, `labels`, `capacity`, `cpu_idle`, `logs` | the host agent | [`HostStore::publish_agent_fields`] |
//! | `allocated` | schedulers | `setData(host, version)` in the same multi as the assignments |
//! | `draining` | operators | read-modify-write under the node's version |
//!
//! Every writer reads the node, changes only its own fields and writes under the version it
//! read; a `BadVersion` means someone else wrote in between, so it reads again and retries.
//! No writer ever overwrites another's fields with what it read before their change. The
//! agent creates the node when it is missing, with `allocated` = the sum over the host's
//! assignments present at that moment ([`allocated_by`]) and `draining` false; after that
//! it never touches either.
//!
//! **Status nodes**: the agent writes `/hosts/{hostId}/status/{instanceId}` (created with
//! the session's node ACL) when the instance changes state — `starting`, `unhealthy`,
//! `healthy`, `restarting`, `failed`, `removing` (see [`InstanceState`]) — and deletes it
//! once the instance is removed; status nodes with no assignment are deleted by the agent's
//! reconcile. It writes on a change of state, address, message or restart count only, never
//! per health probe.
//!
//! [`HostStore`] reads and writes them on any [`Store`] (ZooKeeper, etcd). The `alive` node
//! is one of the store's ephemeral nodes: it comes back after a session expiry or a lost
//! lease.

use std::collections::BTreeMap;
use std::net::IpAddr;

use caas_core::InstanceId;
use serde::{Deserialize, Serialize};

pub use super::host_info::{AgentHostFields, Published, allocated_by};
use crate::assignment::{Assignment, AssignmentError};
use crate::store::{ConflictKind, NodeError, Op, Store, StoreError, delete_if_present};

type Result<T> = std::result::Result<T, NodeError>;

/// Parent of the host nodes.
pub const HOSTS: &str = "/hosts";

/// `/hosts/{host}`.
pub fn host_path(host: &str) -> String {
    format!("{HOSTS}/{host}")
}

/// `/hosts/{host}/alive`.
pub fn alive_path(host: &str) -> String {
    format!("{HOSTS}/{host}/alive")
}

/// `/hosts/{host}/assignments`.
pub fn assignments_path(host: &str) -> String {
    format!("{HOSTS}/{host}/assignments")
}

/// `/hosts/{host}/status`.
pub fn statuses_path(host: &str) -> String {
    format!("{HOSTS}/{host}/status")
}

/// `/hosts/{host}/status/{instance}`.
pub fn status_path(host: &str, instance: &InstanceId) -> String {
    format!("{HOSTS}/{host}/status/{instance}")
}

/// `/hosts/{host}/assignments/{instance}`.
pub fn assignment_path(host: &str, instance: &InstanceId) -> String {
    format!("{HOSTS}/{host}/assignments/{instance}")
}

/// Checks a host id: 1-63 characters of `[a-z0-9-]`, not starting or ending with `-` (it is
/// a path segment and a Docker label value).
pub fn validate_host_id(host: &str) -> std::result::Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 63
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !host.starts_with('-')
        && !host.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid host id {host:?}: use 1-63 characters of [a-z0-9-], not starting or ending with '-'"
        ))
    }
}

/// Amounts of what a host offers or has handed out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory in bytes.
    pub memory: u64,
    /// CPU shares (1024 per core for the capacity).
    pub cpu_shares: u64,
    /// Containers (the capacity is the size of the port pool).
    pub instances: u64,
}

/// What `/hosts/{hostId}` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostInfo {
    /// The advertised IP: containers are published and registered on it.
    pub ip: IpAddr,
    /// Free-form labels for scheduling filters (`disk=ssd`, `zone=a`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What the host offers.
    pub capacity: Resources,
    /// The sum over the host's assignments (main containers and sidecars).
    pub allocated: Resources,
    /// Share of CPU time idle, 0.0..=1.0, measured by the agent from `/proc/stat` and
    /// smoothed; absent until the first measurement (and from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_idle: Option<f64>,
    /// The host takes no new instances and its instances move elsewhere.
    #[serde(default)]
    pub draining: bool,
    /// `{ip}:{port}` where the agent serves its instances' container logs
    /// (`GET /logs/{instanceId}`); absent when it serves none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
}

/// Where one instance stands on its host: what `/hosts/{hostId}/status/{instanceId}` holds,
/// written by the host agent as the instance changes state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceStatus {
    /// The app.
    pub app: caas_core::AppId,
    /// The version.
    pub version: caas_core::Version,
    /// The lifecycle state.
    pub state: InstanceState,
    /// `{hostIp}:{hostPort}` once a port is bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The main container's id, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Restarts since the assignment appeared.
    #[serde(default)]
    pub restarts: u32,
    /// When the current container started, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// Why the instance is not running or not healthy: the pull or start error, the last
    /// failed probe's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The lifecycle of an instance on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Pulling images or creating containers.
    Starting,
    /// Running, waiting for its first passing health check.
    Unhealthy,
    /// Passing health checks and registered.
    Healthy,
    /// Stopped, waiting to be started again (backoff).
    Restarting,
    /// Could not be started (pull or run failed); retried.
    Failed,
    /// Being stopped and removed.
    Removing,
}

/// One child of `/hosts/{host}/assignments`, parsed or not.
#[derive(Debug, Clone)]
pub struct AssignmentNode {
    /// The instance id (node name), when it is a valid id.
    pub instance: std::result::Result<InstanceId, String>,
    /// The parsed assignment.
    pub assignment: std::result::Result<Assignment, AssignmentError>,
}

/// Reads and writes the host nodes on a [`Store`].
#[derive(Debug, Clone)]
pub struct HostStore<S> {
    store: S,
}

/// Whether a commit failed because a node was not where it was expected (`kind`).
pub(crate) fn is_conflict(e: &StoreError, kind: ConflictKind) -> bool {
    matches!(e, StoreError::Conflict { kind: k, .. } if *k == kind)
}

impl<S: Store> HostStore<S> {
    /// Host nodes on `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Creates `/hosts/{host}/assignments` (and, on ZooKeeper, its parents) when missing.
    pub async fn ensure(&self, host: &str) -> Result<()> {
        let op = Op::Create {
            path: assignments_path(host),
            data: Vec::new(),
        };
        match self.store.commit(vec![op]).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e, ConflictKind::NodeExists) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads `/hosts/{host}`; `None` when absent or not written yet (a node created empty
    /// as the parent of the host's assignments).
    pub async fn info(&self, host: &str) -> Result<Option<HostInfo>> {
        let path = host_path(host);
        match self.store.get(&path).await? {
            Some(node) if node.data.is_empty() => Ok(None),
            Some(node) => serde_json::from_slice(&node.data)
                .map(Some)
                .map_err(|e| NodeError::bad(&path, e)),
            None => Ok(None),
        }
    }

    /// Creates the ephemeral `/hosts/{host}/alive` holding the IP. A node left by an earlier
    /// session or lease of this host (a crashed agent whose session has not timed out yet)
    /// is replaced: one host id belongs to one agent.
    pub async fn mark_alive(&self, host: &str, ip: IpAddr) -> Result<()> {
        let path = alive_path(host);
        let data = ip.to_string();
        if crate::store::claim_ephemeral(&self.store, &path, data.as_bytes()).await? {
            tracing::warn!(%path, "replaced the alive node of an earlier session");
        }
        Ok(())
    }

    /// Every child of `/hosts/{host}/assignments`, parsed; a missing parent is no children.
    pub async fn assignments(&self, host: &str) -> Result<Vec<AssignmentNode>> {
        let nodes = self.store.list(&assignments_path(host)).await?;
        Ok(nodes
            .into_iter()
            .map(|(name, node)| AssignmentNode {
                instance: InstanceId::new(&name).map_err(|e| e.to_string()),
                assignment: Assignment::from_json(&node.data),
            })
            .collect())
    }

    /// Writes (creates or overwrites) one assignment.
    pub async fn put_assignment(
        &self,
        host: &str,
        instance: &InstanceId,
        assignment: &Assignment,
    ) -> Result<()> {
        let path = assignment_path(host, instance);
        Ok(crate::store::put(&self.store, &path, &assignment.to_json()).await?)
    }

    /// Deletes one assignment; absent is fine.
    pub async fn delete_assignment(&self, host: &str, instance: &InstanceId) -> Result<()> {
        Ok(delete_if_present(&self.store, &assignment_path(host, instance)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_and_paths() {
        assert!(validate_host_id("h1").is_ok());
        for bad in ["", "H1", "-h", "h-", "a/b", &"x".repeat(64)] {
            assert!(validate_host_id(bad).is_err(), "{bad}");
        }
        let i = InstanceId::new("i1").unwrap();
        assert_eq!(assignment_path("h1", &i), "/hosts/h1/assignments/i1");
        assert_eq!(alive_path("h1"), "/hosts/h1/alive");
    }

    #[test]
    fn host_info_json() {
        let info = HostInfo {
            ip: "127.0.0.2".parse().unwrap(),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            capacity: Resources {
                memory: 1 << 30,
                cpu_shares: 2048,
                instances: 299,
            },
            allocated: Resources::default(),
            cpu_idle: Some(0.5),
            draining: false,
            logs: None,
        };
        let json = serde_json::to_string(&info).unwrap();
        assert!(
            json.starts_with(
                r#"{"ip":"127.0.0.2","labels":{"zone":"a"},"capacity":{"memory":1073741824"#
            ),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<HostInfo>(&json).unwrap(), info);
        // Nodes written before cpu_idle and draining existed still parse.
        let old = r#"{"ip":"127.0.0.2","capacity":{"memory":1,"cpu_shares":2,"instances":3},
            "allocated":{"memory":0,"cpu_shares":0,"instances":0}}"#;
        let parsed: HostInfo = serde_json::from_str(old).unwrap();
        assert_eq!((parsed.cpu_idle, parsed.draining), (None, false));
    }
}
