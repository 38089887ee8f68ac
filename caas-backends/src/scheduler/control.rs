//! What an operator does to the desired state (the `caasd deploy / scale / undeploy / drain
//! / status` commands): each is a read-modify-write under the node's version, retried on a
//! conflict, so it never overwrites what a scheduler or an agent wrote meanwhile.
//!
//! `deploy` and `scale` only write the deployment node; the schedulers do the rest.
//! `undeploy` does its work itself, in one commit: every assignment of the app (version)
//! deleted, each touched host's allocation released under the host's version, the status
//! and deployment nodes deleted under theirs.

use std::collections::BTreeSet;
use std::time::Duration;

use caas_core::{AppId, Version};

use super::commit;
use super::deployment::Deployment;
use super::plan::{Plan, Removal, Why};
use super::snapshot;
use super::status::DeploymentStatus;
use crate::store::{self, Op, Store, StoreError};
use crate::zk::hosts::{HostInfo, host_path};
use crate::zk::layout::{DEPLOYMENTS, deployment_path, deployment_status_path};

const ATTEMPTS: u32 = 20;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The node the command works on does not exist.
    #[error("{path} does not exist")]
    NotFound {
        /// The node.
        path: String,
    },
    /// The input, or the node the command would change, is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Others kept changing the nodes; nothing was written.
    #[error("{what}: the nodes kept changing, gave up after {attempts} attempts (last: {last})")]
    Busy {
        /// The command.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last conflict.
        last: StoreError,
    },
}

async fn pause(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(10)) * 10)).await;
}

/// Writes the deployment node of `app`/`version` (created, or replaced whole).
pub async fn deploy<S: Store>(
    store: &S,
    app: &AppId,
    version: &Version,
    deployment: &Deployment,
) -> Result<(), ControlError> {
    deployment
        .validate(app, version)
        .map_err(|e| ControlError::Invalid(e.to_string()))?;
    store::put(store, &deployment_path(app, version), &deployment.to_json()).await?;
    Ok(())
}

/// Sets `replicas` of an existing deployment (under the node's version).
pub async fn scale<S: Store>(
    store: &S,
    app: &AppId,
    version: &Version,
    replicas: u32,
) -> Result<(), ControlError> {
    let path = deployment_path(app, version);
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        let node = store
            .get(&path)
            .await?
            .ok_or_else(|| ControlError::NotFound { path: path.clone() })?;
        let mut d = Deployment::from_json(app, version, &node.data)
            .map_err(|e| ControlError::Invalid(format!("{path} is invalid, fix it first: {e}")))?;
        if d.global {
            return Err(ControlError::Invalid(format!(
                "{app}:{version} is global (one instance per eligible host): it has no replica count"
            )));
        }
        d.replicas = Some(replicas);
        d.validate(app, version)
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let op = Op::Set {
            path: path.clone(),
            data: d.to_json(),
            version: Some(node.version),
        };
        match store.commit(vec![op]).await {
            Ok(_) => return Ok(()),
            Err(e @ StoreError::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
        pause(attempt).await;
    }
    Err(busy("scale", last))
}

fn busy(what: &str, last: Option<StoreError>) -> ControlError {
    ControlError::Busy {
        what: what.into(),
        attempts: ATTEMPTS,
        last: last.unwrap_or_else(|| StoreError::Invalid {
            op: "commit",
            path: String::new(),
            reason: "no attempt made".into(),
        }),
    }
}

/// Removes `app` (every version, or only `version`) in one commit; returns the versions
/// removed. [`ControlError::NotFound`] when there is neither a deployment nor an instance.
pub async fn undeploy<S: Store>(
    store: &S,
    app: &AppId,
    version: Option<&Version>,
) -> Result<Vec<Version>, ControlError> {
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        let (ops, versions) = undeploy_ops(store, app, version).await?;
        if ops.is_empty() {
            return Ok(versions);
        }
        match store.commit(ops).await {
            Ok(_) => return Ok(versions),
            Err(e @ StoreError::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
        pause(attempt).await;
    }
    Err(busy("undeploy", last))
}

/// The ops that remove `app` (every version, or only `version`) as read now, and the
/// versions they remove: every assignment deleted, each touched host's allocation
/// released under the host's version, the status and deployment nodes deleted under
/// theirs. Committed alone by [`undeploy`], or with other ops by a caller that needs the
/// removal in its own commit (a rolling update). [`ControlError::NotFound`] when there is
/// neither a deployment nor an instance.
pub async fn undeploy_ops<S: Store>(
    store: &S,
    app: &AppId,
    version: Option<&Version>,
) -> Result<(Vec<Op>, Vec<Version>), ControlError> {
    let mut snap = snapshot::read(store).await?;
    let wanted = |v: &Version| version.is_none_or(|only| only == v);
    let mut versions: BTreeSet<Version> = snap
        .deployments
        .keys()
        .filter(|(a, v)| a == app && wanted(v))
        .map(|(_, v)| v.clone())
        .collect();
    let mut remove = Vec::new();
    for h in snap.hosts.values() {
        for (id, a) in &h.instances {
            if &a.app == app && wanted(&a.version) {
                versions.insert(a.version.clone());
                remove.push(Removal {
                    host: h.id.clone(),
                    id: id.clone(),
                    why: Why::Orphan,
                });
            }
        }
    }
    if versions.is_empty() {
        let path = match version {
            Some(v) => deployment_path(app, v),
            None => format!("{DEPLOYMENTS}/{app}"),
        };
        return Err(ControlError::NotFound { path });
    }
    let plan = Plan {
        add: Vec::new(),
        remove,
        next_instance: 0,
        desired: 0,
        unschedulable: None,
        rejected: Default::default(),
    };
    let mut ops = commit::apply(&mut snap, None, &plan).map_err(ControlError::Invalid)?;
    for v in &versions {
        let Some(d) = snap.deployments.get(&(app.clone(), v.clone())) else {
            continue;
        };
        if let Some(s) = &d.status {
            ops.push(Op::Delete {
                path: deployment_status_path(app, v),
                version: Some(s.version),
            });
        }
        ops.push(Op::Delete {
            path: deployment_path(app, v),
            version: Some(d.spec_version),
        });
    }
    // The app's own node goes with its last version, where it exists as a node: on etcd a
    // parent nobody wrote is no key (it disappears with its last child) and cannot be deleted.
    let parent = format!("{DEPLOYMENTS}/{app}");
    let remaining = store.children(&parent).await?;
    if remaining
        .iter()
        .all(|v| versions.iter().any(|x| x.as_str() == v))
        && !remaining.is_empty()
        && store.get(&parent).await?.is_some()
    {
        ops.push(Op::Delete {
            path: format!("{DEPLOYMENTS}/{app}"),
            version: None,
        });
    }
    Ok((ops, versions.into_iter().collect()))
}

/// Sets (or clears) `draining` on a host's info, under the node's version, leaving every
/// other field as it is.
pub async fn drain<S: Store>(store: &S, host: &str, on: bool) -> Result<(), ControlError> {
    crate::zk::hosts::validate_host_id(host).map_err(ControlError::Invalid)?;
    let path = host_path(host);
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        let node = store
            .get(&path)
            .await?
            .ok_or_else(|| ControlError::NotFound { path: path.clone() })?;
        let mut info: HostInfo = serde_json::from_slice(&node.data)
            .map_err(|e| ControlError::Invalid(format!("{path}: not a host info: {e}")))?;
        if info.draining == on {
            return Ok(());
        }
        info.draining = on;
        let data = serde_json::to_vec(&info)
            .map_err(|e| ControlError::Invalid(format!("{path}: cannot encode: {e}")))?;
        let op = Op::Set {
            path: path.clone(),
            data,
            version: Some(node.version),
        };
        match store.commit(vec![op]).await {
            Ok(_) => return Ok(()),
            Err(e @ StoreError::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
        pause(attempt).await;
    }
    Err(busy("drain", last))
}

/// The status node of `app`/`version`; `None` before a scheduler wrote one.
pub async fn status<S: Store>(
    store: &S,
    app: &AppId,
    version: &Version,
) -> Result<Option<DeploymentStatus>, ControlError> {
    let path = deployment_status_path(app, version);
    match store.get(&path).await? {
        None => Ok(None),
        Some(node) => serde_json::from_slice(&node.data)
            .map(Some)
            .map_err(|e| ControlError::Invalid(format!("{path}: {e}"))),
    }
}
