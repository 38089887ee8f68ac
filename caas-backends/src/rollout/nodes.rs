//! The store side of a rollout: reading its node, the app's routing and the two versions'
//! deployments and statuses, and turning a [`Decision`] into one commit guarded by the
//! rollout node's version.

use caas_core::{AppId, AppSpec, Version};

use super::machine::{Action, Decision, Observation, VersionView};
use super::state::{RolloutState, Routing};
use crate::scheduler::control;
use crate::scheduler::status::DeploymentStatus;
pub use crate::store::NodeError;
use crate::store::{Op, Store, Versioned};
use crate::zk::ValueCipher;
use crate::zk::apps::parse_app;
use crate::zk::crypto;
use crate::zk::layout::{app_path, deployment_path, deployment_status_path};

/// Parent of the rollout nodes `/rollouts/{appId}`.
pub const ROLLOUTS: &str = "/rollouts";

/// `/rollouts/{app}`.
pub fn rollout_path(app: &AppId) -> String {
    format!("{ROLLOUTS}/{app}")
}

/// The app node as read: its spec (default when missing or empty) and version (`None`:
/// no node).
#[derive(Debug, Clone)]
pub struct AppNode {
    /// The spec.
    pub spec: AppSpec,
    /// The node's version, `None` when it does not exist.
    pub version: Option<i64>,
}

impl AppNode {
    /// The routing part of the spec.
    pub fn routing(&self) -> Routing {
        Routing {
            default_version: self.spec.default_version.clone(),
            weights: self.spec.weights.clone(),
        }
    }
}

/// Reads `/apps/{app}` (decrypted with `cipher` when sealed).
pub async fn read_app<S: Store>(
    store: &S,
    cipher: Option<&ValueCipher>,
    app: &AppId,
) -> Result<AppNode, NodeError> {
    let path = app_path(app);
    match store.get(&path).await? {
        None => Ok(AppNode {
            spec: AppSpec::default(),
            version: None,
        }),
        Some(Versioned { data, version }) => {
            let spec = parse_app(cipher, &path, data).map_err(|e| NodeError::Bad {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            Ok(AppNode {
                spec,
                version: Some(version),
            })
        }
    }
}

/// The op writing `routing` into the app node read as `node` (under its version).
fn route_op(
    cipher: Option<&ValueCipher>,
    app: &AppId,
    node: &AppNode,
    routing: &Routing,
) -> Result<Op, NodeError> {
    let path = app_path(app);
    let mut spec = node.spec.clone();
    spec.default_version = routing.default_version.clone();
    spec.weights = routing.weights.clone();
    let bad = |reason: String| NodeError::Bad {
        path: path.clone(),
        reason,
    };
    spec.validate()
        .map_err(|e| bad(format!("the new routing is invalid: {e}")))?;
    let json = serde_json::to_vec(&spec).map_err(|e| bad(e.to_string()))?;
    let data = crypto::seal(cipher, &path, json).map_err(|e| bad(e.to_string()))?;
    Ok(match node.version {
        Some(v) => Op::Set {
            path,
            data,
            version: Some(v),
        },
        None => Op::Create { path, data },
    })
}

/// Reads the rollout node of `app`: the state and its version.
pub async fn read_rollout<S: Store>(
    store: &S,
    app: &AppId,
) -> Result<Option<(RolloutState, i64)>, NodeError> {
    let path = rollout_path(app);
    let Some(node) = store.get(&path).await? else {
        return Ok(None);
    };
    let state = RolloutState::from_json(&node.data).map_err(|reason| NodeError::Bad {
        path: path.clone(),
        reason,
    })?;
    if &state.app != app {
        return Err(NodeError::Bad {
            path,
            reason: format!("holds the rollout of app {}", state.app),
        });
    }
    Ok(Some((state, node.version)))
}

async fn view<S: Store>(
    store: &S,
    app: &AppId,
    version: &Version,
) -> Result<VersionView, NodeError> {
    let deployed = store.get(&deployment_path(app, version)).await?.is_some();
    let path = deployment_status_path(app, version);
    let status = match store.get(&path).await? {
        None => None,
        // A status a scheduler wrote that cannot be read counts as no status: the rollout
        // waits (and rolls back at its deadline) rather than acting on a guess.
        Some(node) => match serde_json::from_slice::<DeploymentStatus>(&node.data) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(%path, error = %e, "unreadable deployment status");
                None
            }
        },
    };
    Ok(VersionView { deployed, status })
}

/// What the store shows of the rollout's two versions.
pub async fn observe<S: Store>(store: &S, state: &RolloutState) -> Result<Observation, NodeError> {
    Ok(Observation {
        from: view(store, &state.app, &state.from).await?,
        to: view(store, &state.app, &state.to).await?,
    })
}

/// The ops of a decision: its actions, then the rollout node set under `version`. Reads
/// what the actions depend on (the app node, the assignments to remove).
pub async fn decision_ops<S: Store>(
    store: &S,
    cipher: Option<&ValueCipher>,
    app: &AppId,
    version: i64,
    decision: &Decision,
) -> Result<Vec<Op>, NodeError> {
    let mut ops = Vec::new();
    for action in &decision.actions {
        match action {
            Action::Deploy {
                version,
                deployment,
            } => ops.push(Op::Create {
                path: deployment_path(app, version),
                data: deployment.to_json(),
            }),
            Action::Route(routing) => {
                let node = read_app(store, cipher, app).await?;
                if node.routing() != *routing {
                    ops.push(route_op(cipher, app, &node, routing)?);
                }
            }
            Action::Undeploy(v) => match control::undeploy_ops(store, app, Some(v)).await {
                Ok((more, _)) => ops.extend(more),
                Err(control::ControlError::NotFound { .. }) => {}
                Err(control::ControlError::Store(e)) => return Err(e.into()),
                Err(e) => {
                    return Err(NodeError::Bad {
                        path: deployment_path(app, v),
                        reason: e.to_string(),
                    });
                }
            },
        }
    }
    if let Some(state) = &decision.state {
        ops.push(Op::Set {
            path: rollout_path(app),
            data: state.to_json(),
            version: Some(version),
        });
    }
    Ok(ops)
}
