//! What the scheduler decides from: every host (its info, node version, liveness,
//! assignments and instance statuses) and every deployment (spec, status node, registered
//! instances), read from a [`Store`] in one pass with the reads pipelined.
//!
//! Read order matters for correctness: a host's node (and its version) is read *before*
//! its assignments, so assignments seen are never older than the version a commit will
//! check (a change in between bumps the version and the commit is refused); the
//! deployments are listed a second time *after* the hosts, so an assignment whose
//! deployment is absent from that listing really lost its deployment (it was created after
//! its deployment node, which must have been deleted since).

use std::collections::{BTreeMap, BTreeSet};

use caas_core::{AppId, InstanceId, Version};
use futures_util::future::join_all;

use super::deployment::Deployment;
use super::status::DeploymentStatus;
use crate::assignment::Assignment;
use crate::store::{Store, StoreError, Versioned};
use crate::zk::hosts::{
    HOSTS, HostInfo, InstanceState, InstanceStatus, Resources, alive_path, assignments_path,
    host_path, statuses_path,
};
use crate::zk::layout::{DEPLOYMENTS, SERVICE, deployment_path, deployment_status_path};

/// A deployment's identity: app and version.
pub type Key = (AppId, Version);

/// Where a host stands, from its `alive` node and how long that has been gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The `alive` node exists.
    Alive,
    /// The `alive` node is gone, for less than the grace period: the host takes nothing new
    /// but keeps its instances.
    Missing,
    /// The `alive` node has been gone for the grace period: its instances go elsewhere.
    Lost,
}

/// One host as read.
#[derive(Debug, Clone)]
pub struct HostState {
    /// The host id.
    pub id: String,
    /// Its published info.
    pub info: HostInfo,
    /// The version of `/hosts/{id}`, checked by every commit that changes its assignments.
    pub version: i64,
    /// Whether `/hosts/{id}/alive` exists.
    pub alive: bool,
    /// Set by the run loop from `alive` and the grace period ([`Liveness::Missing`] or
    /// [`Liveness::Alive`] as read).
    pub liveness: Liveness,
    /// Its valid assignments.
    pub instances: BTreeMap<InstanceId, Assignment>,
    /// Assignment nodes that are not valid (left alone, not counted).
    pub invalid: BTreeMap<String, String>,
    /// What the agent reports per instance.
    pub statuses: BTreeMap<InstanceId, InstanceStatus>,
}

impl HostState {
    /// A host with `info`, alive, no instances (for tests and benches).
    pub fn new(id: &str, info: HostInfo) -> Self {
        Self {
            id: id.to_owned(),
            info,
            version: 0,
            alive: true,
            liveness: Liveness::Alive,
            instances: BTreeMap::new(),
            invalid: BTreeMap::new(),
            statuses: BTreeMap::new(),
        }
    }

    /// The sum over the host's valid assignments (main containers and sidecars; one port
    /// each): what `allocated` must say.
    pub fn used(&self) -> Resources {
        self.instances
            .values()
            .fold(Resources::default(), |r, a| add(r, need(a)))
    }

    /// Instances of `app` (any version) on this host.
    pub fn count_app(&self, app: &AppId) -> usize {
        self.instances.values().filter(|a| &a.app == app).count()
    }

    /// Instances of `app` / `version` on this host.
    pub fn count_version(&self, app: &AppId, version: &Version) -> usize {
        self.instances
            .values()
            .filter(|a| &a.app == app && &a.version == version)
            .count()
    }
}

/// What one instance takes from its host.
pub fn need(a: &Assignment) -> Resources {
    Resources {
        memory: a.total_memory(),
        cpu_shares: a.total_cpu_shares(),
        instances: 1,
    }
}

/// `a + b`, saturating.
pub fn add(a: Resources, b: Resources) -> Resources {
    Resources {
        memory: a.memory.saturating_add(b.memory),
        cpu_shares: a.cpu_shares.saturating_add(b.cpu_shares),
        instances: a.instances.saturating_add(b.instances),
    }
}

/// The status node of a deployment as read.
#[derive(Debug, Clone)]
pub struct StatusNode {
    /// The parsed status (an unreadable one is replaced at the next write).
    pub status: Option<DeploymentStatus>,
    /// Its version: the per-deployment lock every placement commit checks.
    pub version: i64,
}

/// One deployment as read.
#[derive(Debug, Clone)]
pub struct DeploymentState {
    /// The parsed spec, or why it is invalid.
    pub spec: Result<Deployment, String>,
    /// The version of the deployment node.
    pub spec_version: i64,
    /// The status node, when it exists.
    pub status: Option<StatusNode>,
    /// Registered instances (`/service/address/{app}/{version}/{id}`) and their address.
    pub registered: BTreeMap<InstanceId, String>,
}

/// A host whose node cannot be used (no info yet, or not valid JSON): it takes nothing, and
/// its instances, still counted for their deployments, are never touched (a commit would
/// have to rewrite its node).
#[derive(Debug, Clone, Default)]
pub struct BadHost {
    /// Why the node cannot be used.
    pub reason: String,
    /// Its valid assignments.
    pub instances: BTreeMap<InstanceId, Assignment>,
}

/// Everything one scheduling pass decides from.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Hosts with a readable info node.
    pub hosts: BTreeMap<String, HostState>,
    /// Host nodes that could not be used.
    pub bad_hosts: BTreeMap<String, BadHost>,
    /// Deployments with valid node names.
    pub deployments: BTreeMap<Key, DeploymentState>,
    /// Nodes under `/deployments` whose name is not a valid id, and why.
    pub bad_deployments: BTreeMap<String, String>,
    /// Deployments listed again after the hosts were read (see the module docs).
    pub listed_after: BTreeSet<Key>,
}

impl Snapshot {
    /// Every instance of `key`: (host, id), sorted by host then id.
    pub fn instances_of(&self, app: &AppId, version: &Version) -> Vec<(&str, &InstanceId)> {
        let mut out = Vec::new();
        for h in self.hosts.values() {
            for (id, a) in &h.instances {
                if &a.app == app && &a.version == version {
                    out.push((h.id.as_str(), id));
                }
            }
        }
        out
    }

    /// Whether `id` names an instance on any host.
    pub fn instance_exists(&self, id: &InstanceId) -> bool {
        self.hosts.values().any(|h| h.instances.contains_key(id))
    }

    /// Records the version a commit gave `path` (a host node or a status node).
    pub fn note_version(&mut self, path: &str, version: i64) {
        if let Some(host) = path.strip_prefix(HOSTS).and_then(|r| r.strip_prefix('/'))
            && let Some(h) = self.hosts.get_mut(host)
        {
            h.version = version;
            return;
        }
        for ((app, v), d) in &mut self.deployments {
            if path == deployment_status_path(app, v)
                && let Some(s) = &mut d.status
            {
                s.version = version;
                return;
            }
        }
    }
}

fn bad(reason: String) -> BadHost {
    BadHost {
        reason,
        instances: BTreeMap::new(),
    }
}

fn unreadable(reason: impl std::fmt::Display) -> String {
    reason.to_string()
}

/// Reads every node of `paths`, all requests in flight at once.
async fn get_all<S: Store>(
    store: &S,
    paths: &[String],
) -> Result<Vec<Option<Versioned>>, StoreError> {
    join_all(paths.iter().map(|p| store.get(p)))
        .await
        .into_iter()
        .collect()
}

/// Lists the children of every node of `paths`, all requests in flight at once.
async fn children_all<S: Store>(
    store: &S,
    paths: &[String],
) -> Result<Vec<Vec<String>>, StoreError> {
    join_all(paths.iter().map(|p| store.children(p)))
        .await
        .into_iter()
        .collect()
}

/// Lists (with data) the children of every node of `paths`, all requests in flight at once.
async fn list_all<S: Store>(
    store: &S,
    paths: &[String],
) -> Result<Vec<Vec<(String, Versioned)>>, StoreError> {
    join_all(paths.iter().map(|p| store.list(p)))
        .await
        .into_iter()
        .collect()
}

/// Reads a full [`Snapshot`] (liveness as read: [`Liveness::Alive`] or
/// [`Liveness::Missing`]; the run loop applies the grace period).
pub async fn read<S: Store>(store: &S) -> Result<Snapshot, StoreError> {
    let mut snap = Snapshot::default();

    // Deployments: names, specs, status nodes, registered instances.
    let keys = list_deployments(store, &mut snap.bad_deployments).await?;
    let paths = |f: &dyn Fn(&AppId, &Version) -> String| -> Vec<String> {
        keys.iter().map(|(a, v)| f(a, v)).collect()
    };
    let specs = get_all(store, &paths(&deployment_path)).await?;
    let statuses = get_all(store, &paths(&deployment_status_path)).await?;
    let registered = list_all(store, &paths(&|a, v| format!("{SERVICE}/{a}/{v}"))).await?;
    for ((k, spec), status) in keys.iter().zip(specs).zip(statuses) {
        // Deleted between the listing and the read: not a deployment any more.
        let Some(spec) = spec else { continue };
        let status = status.map(|Versioned { data, version }| StatusNode {
            status: serde_json::from_slice(&data).ok(),
            version,
        });
        snap.deployments.insert(
            k.clone(),
            DeploymentState {
                spec: Deployment::from_json(&k.0, &k.1, &spec.data).map_err(unreadable),
                spec_version: spec.version,
                status,
                registered: BTreeMap::new(),
            },
        );
    }
    for (k, list) in keys.iter().zip(registered) {
        let Some(d) = snap.deployments.get_mut(k) else {
            continue;
        };
        for (name, data) in list {
            if let Ok(id) = InstanceId::new(&name) {
                d.registered
                    .insert(id, String::from_utf8_lossy(&data.data).into_owned());
            }
        }
    }

    // Hosts: info and version first, then alive, then assignments and statuses.
    let ids = store.children(HOSTS).await?;
    let of_hosts = |f: fn(&str) -> String| -> Vec<String> { ids.iter().map(|h| f(h)).collect() };
    let infos = get_all(store, &of_hosts(host_path)).await?;
    let alive = get_all(store, &of_hosts(alive_path)).await?;
    // Each host's assignments and statuses, one list each (one range read on etcd).
    let a_lists = list_all(store, &of_hosts(assignments_path)).await?;
    let s_lists = list_all(store, &of_hosts(statuses_path)).await?;
    for ((id, info), alive) in ids.iter().zip(infos).zip(alive) {
        let Some(info) = info else { continue };
        if info.data.is_empty() {
            snap.bad_hosts
                .insert(id.clone(), bad("no host info published yet".into()));
            continue;
        }
        match serde_json::from_slice::<HostInfo>(&info.data) {
            Ok(parsed) => {
                let mut h = HostState::new(id, parsed);
                h.version = info.version;
                h.alive = alive.is_some();
                h.liveness = if h.alive {
                    Liveness::Alive
                } else {
                    Liveness::Missing
                };
                snap.hosts.insert(id.clone(), h);
            }
            Err(e) => {
                snap.bad_hosts
                    .insert(id.clone(), bad(format!("host info is not valid JSON: {e}")));
            }
        }
    }
    for (host, list) in ids.iter().zip(a_lists) {
        for (name, data) in list {
            let parsed = InstanceId::new(&name)
                .map_err(unreadable)
                .and_then(|id| Ok((id, Assignment::from_json(&data.data).map_err(unreadable)?)));
            if let Some(h) = snap.hosts.get_mut(host) {
                match parsed {
                    Ok((id, a)) => {
                        h.instances.insert(id, a);
                    }
                    Err(e) => {
                        h.invalid.insert(name, e);
                    }
                }
            } else if let (Some(b), Ok((id, a))) = (snap.bad_hosts.get_mut(host), parsed) {
                b.instances.insert(id, a);
            }
        }
    }
    for (host, list) in ids.iter().zip(s_lists) {
        let Some(h) = snap.hosts.get_mut(host) else {
            continue;
        };
        for (name, data) in list {
            let Ok(id) = InstanceId::new(&name) else {
                continue;
            };
            if let Ok(s) = serde_json::from_slice::<InstanceStatus>(&data.data) {
                h.statuses.insert(id, s);
            }
        }
    }

    // Deployments again, after the hosts (orphan detection).
    snap.listed_after = list_deployments(store, &mut BTreeMap::new())
        .await?
        .into_iter()
        .collect();
    Ok(snap)
}

async fn list_deployments<S: Store>(
    store: &S,
    bad: &mut BTreeMap<String, String>,
) -> Result<Vec<Key>, StoreError> {
    let apps = store.children(DEPLOYMENTS).await?;
    let app_paths: Vec<String> = apps.iter().map(|a| format!("{DEPLOYMENTS}/{a}")).collect();
    let versions = children_all(store, &app_paths).await?;
    let mut keys = Vec::new();
    for (a, vs) in apps.iter().zip(versions) {
        let app = match AppId::new(a) {
            Ok(app) => app,
            Err(e) => {
                bad.insert(format!("{DEPLOYMENTS}/{a}"), e.to_string());
                continue;
            }
        };
        for v in vs {
            match Version::new(&v) {
                Ok(version) => keys.push((app.clone(), version)),
                Err(e) => {
                    bad.insert(format!("{DEPLOYMENTS}/{a}/{v}"), e.to_string());
                }
            }
        }
    }
    Ok(keys)
}

/// Whether the agent's report of an instance says it is failing.
pub fn is_failing(s: &InstanceStatus) -> bool {
    matches!(
        s.state,
        InstanceState::Unhealthy | InstanceState::Restarting | InstanceState::Failed
    )
}
