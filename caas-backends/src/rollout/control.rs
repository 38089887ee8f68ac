//! What a user asks of rollouts (the control API and `caasd rollout / rollback` call
//! these): [`Rollouts::start`] validates a request and writes the rollout node,
//! [`Rollouts::status`] reads it, [`Rollouts::rollback`] reverts an update in progress or
//! a finished one. The work itself is done by the [`super::RolloutController`]s.

use std::time::Duration;

use caas_core::clock::wall_ms;

use caas_core::{AppId, Version};

use super::nodes::{NodeError, ROLLOUTS, read_app, read_rollout, rollout_path};
use super::state::{Kind, Phase, RolloutState};
use crate::scheduler::Deployment;
use crate::scheduler::status::Phase as DeployPhase;
use crate::store::{Op, Store, StoreError};
use crate::zk::layout::{DEPLOYMENTS, deployment_path, deployment_status_path};
use crate::zk::{ValueCipher, ZkSession};
use crate::{ZkStore, scheduler};

/// The steps when a request gives none.
pub const DEFAULT_STEPS: [u32; 3] = [10, 50, 100];
/// The step wait when a request gives none.
pub const DEFAULT_STEP_WAIT: Duration = Duration::from_secs(5);
/// The health deadline when a request gives none.
pub const DEFAULT_HEALTH_DEADLINE: Duration = Duration::from_secs(60);
/// The drain wait when a request gives none.
pub const DEFAULT_DRAIN_WAIT: Duration = Duration::from_secs(5);

/// A rolling update asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRequest {
    /// The new version.
    pub to: Version,
    /// The version it replaces; `None`: the one `{appId}.{domain}` routes to now.
    pub from: Option<Version>,
    /// The new version's deployment. `None`: the old version's with `image` instead. A
    /// deployment with neither `replicas` nor `global` gets the old version's.
    pub deployment: Option<Deployment>,
    /// The new image (with `deployment: None`).
    pub image: Option<String>,
    /// The new version's replicas, when not the old version's (or the deployment's).
    pub replicas: Option<u32>,
    /// Percentages of the old version's traffic moved, strictly increasing, ending at 100.
    pub steps: Vec<u32>,
    /// Time between two steps.
    pub step_wait: Duration,
    /// Longest wait for all new instances to be healthy before rolling back.
    pub health_deadline: Duration,
    /// Time between the new version taking all the traffic and the old one's removal.
    pub drain_wait: Duration,
}

impl RolloutRequest {
    /// A request for `to` with `image`, every other field at its default.
    pub fn new(to: Version, image: impl Into<String>) -> Self {
        Self {
            to,
            from: None,
            deployment: None,
            image: Some(image.into()),
            replicas: None,
            steps: DEFAULT_STEPS.to_vec(),
            step_wait: DEFAULT_STEP_WAIT,
            health_deadline: DEFAULT_HEALTH_DEADLINE,
            drain_wait: DEFAULT_DRAIN_WAIT,
        }
    }
}

/// Why a rollout call failed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The request is invalid (the message names the field).
    #[error("{0}")]
    Invalid(String),
    /// The app or the version named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The state of the app does not allow it (a rollout in progress, the new version
    /// already deployed, the old one not serving, nothing to roll back).
    #[error("{0}")]
    Conflict(String),
    /// A node the call reads is broken.
    #[error("{path}: {reason}")]
    BadNode {
        /// The node.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The store failed (for a write: its outcome is unknown when
    /// [`StoreError::outcome_unknown`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Others kept changing the nodes; nothing was written.
    #[error("the rollout node kept changing; try again")]
    Busy,
}

impl From<NodeError> for RolloutError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Store(e) => RolloutError::Store(e),
            NodeError::Bad { path, reason } => RolloutError::BadNode { path, reason },
        }
    }
}

/// Rollouts on one store (and the key of its sealed app nodes, if any). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Rollouts<S: Store> {
    store: S,
    cipher: Option<ValueCipher>,
}

impl Rollouts<ZkStore> {
    /// Rollouts on ZooKeeper through `session` (its encryption key opens sealed app nodes).
    pub fn zk(session: ZkSession) -> Self {
        let cipher = session.cipher().cloned();
        Self {
            store: ZkStore::new(session),
            cipher,
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Checks the steps: 1 to 100, strictly increasing, the last 100.
pub fn validate_steps(steps: &[u32]) -> Result<(), String> {
    if steps.is_empty() {
        return Err("steps: give at least one (e.g. 10,50,100)".into());
    }
    if let Some(bad) = steps.iter().find(|s| **s == 0 || **s > 100) {
        return Err(format!("steps: {bad} is not a percentage from 1 to 100"));
    }
    if steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("steps: {steps:?} must be strictly increasing"));
    }
    if steps.last() != Some(&100) {
        return Err(format!("steps: {steps:?} must end at 100"));
    }
    Ok(())
}

impl<S: Store> Rollouts<S> {
    /// Rollouts on `store` (app nodes in plain JSON).
    pub fn new(store: S) -> Self {
        Self {
            store,
            cipher: None,
        }
    }

    /// Opens and seals app nodes with `cipher`.
    pub fn with_cipher(mut self, cipher: Option<ValueCipher>) -> Self {
        self.cipher = cipher;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    pub(super) fn cipher(&self) -> Option<&ValueCipher> {
        self.cipher.as_ref()
    }

    /// The rollout of `app` (in progress or the last finished one); `None` when there was
    /// none.
    pub async fn status(&self, app: &AppId) -> Result<Option<RolloutState>, RolloutError> {
        Ok(read_rollout(&self.store, app).await?.map(|(s, _)| s))
    }

    /// Every app with a rollout node.
    pub async fn apps(&self) -> Result<Vec<String>, RolloutError> {
        Ok(self.store.children(ROLLOUTS).await?)
    }

    /// Validates `req` and writes the rollout node (phase `starting`); the controllers do
    /// the rest. Refused: an invalid request, an app without deployments, an old version
    /// that is not deployed or not running healthy, a new version already deployed, a
    /// rollout in progress.
    pub async fn start(
        &self,
        app: &AppId,
        req: RolloutRequest,
    ) -> Result<RolloutState, RolloutError> {
        validate_steps(&req.steps).map_err(RolloutError::Invalid)?;
        let existing = read_rollout(&self.store, app).await?;
        if let Some((s, _)) = &existing
            && !s.phase.is_terminal()
        {
            return Err(RolloutError::Conflict(format!(
                "a rollout of {app} from {} to {} is in progress ({})",
                s.from,
                s.to,
                s.phase.name()
            )));
        }
        let routing = read_app(&self.store, self.cipher(), app).await?.routing();
        let deployed = self.store.children(&format!("{DEPLOYMENTS}/{app}")).await?;
        if deployed.is_empty() {
            return Err(RolloutError::NotFound(format!(
                "{app} has no deployment: deploy a first version instead"
            )));
        }
        let from = match req.from.clone() {
            Some(v) => v,
            None => serving(app, &routing, &deployed)?,
        };
        if from == req.to {
            return Err(RolloutError::Invalid(format!(
                "version: {} is the version serving now",
                req.to
            )));
        }
        let from_deployment = self.deployment(app, &from).await?;
        self.check_running(app, &from).await?;
        if self
            .store
            .get(&deployment_path(app, &req.to))
            .await?
            .is_some()
        {
            return Err(RolloutError::Conflict(format!(
                "{app}:{} is already deployed: remove it or pick another version",
                req.to
            )));
        }
        let deployment = new_deployment(app, &req, &from_deployment)?;
        let now = wall_ms();
        let state = RolloutState {
            app: app.clone(),
            from,
            to: req.to.clone(),
            kind: Kind::Update,
            deployment,
            from_deployment,
            steps: req.steps.clone(),
            step_wait_ms: ms(req.step_wait),
            health_deadline_ms: ms(req.health_deadline),
            drain_wait_ms: ms(req.drain_wait),
            before: routing,
            phase: Phase::Starting,
            step: None,
            started_ms: now,
            phase_since_ms: now,
            updated_ms: now,
            outcome: None,
            reason: None,
        };
        self.write_new(app, existing.map(|(_, v)| v), &state)
            .await?;
        Ok(state)
    }

    /// Reverts `app`'s rollout: one in progress rolls back (routing as before, the new
    /// version removed); a finished update is undone the same way it was done (the old
    /// version re-created from its stored deployment, healthy, traffic shifted back, the
    /// new one removed), with the finished update's steps and waits.
    pub async fn rollback(&self, app: &AppId) -> Result<RolloutState, RolloutError> {
        for _ in 0..10 {
            let Some((state, version)) = read_rollout(&self.store, app).await? else {
                return Err(RolloutError::NotFound(format!(
                    "{app} has no rollout to roll back"
                )));
            };
            let next = match state.phase {
                Phase::RolledBack | Phase::Failed => {
                    return Err(RolloutError::Conflict(format!(
                        "the last rollout of {app} ({} to {}) is {} already: nothing to roll back",
                        state.from,
                        state.to,
                        state.phase.name()
                    )));
                }
                Phase::RollingBack => return Ok(state),
                Phase::Done => self.revert_of(app, &state).await?,
                _ => {
                    let mut s = state.clone();
                    s.phase = Phase::RollingBack;
                    s.reason = Some("rollback requested".into());
                    s.updated_ms = wall_ms();
                    s
                }
            };
            let op = Op::Set {
                path: rollout_path(app),
                data: next.to_json(),
                version: Some(version),
            };
            match self.store.commit(vec![op]).await {
                Ok(_) => return Ok(next),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RolloutError::Busy)
    }

    /// The rollout that undoes the finished update `done`.
    async fn revert_of(
        &self,
        app: &AppId,
        done: &RolloutState,
    ) -> Result<RolloutState, RolloutError> {
        if self
            .store
            .get(&deployment_path(app, &done.from))
            .await?
            .is_some()
        {
            return Err(RolloutError::Conflict(format!(
                "{app}:{} is deployed again: nothing to revert to",
                done.from
            )));
        }
        self.deployment(app, &done.to).await?;
        let routing = read_app(&self.store, self.cipher(), app).await?.routing();
        let now = wall_ms();
        Ok(RolloutState {
            app: app.clone(),
            from: done.to.clone(),
            to: done.from.clone(),
            kind: Kind::Revert,
            deployment: done.from_deployment.clone(),
            from_deployment: done.deployment.clone(),
            steps: done.steps.clone(),
            step_wait_ms: done.step_wait_ms,
            health_deadline_ms: done.health_deadline_ms,
            drain_wait_ms: done.drain_wait_ms,
            before: routing,
            phase: Phase::Starting,
            step: None,
            started_ms: now,
            phase_since_ms: now,
            updated_ms: now,
            outcome: None,
            reason: None,
        })
    }

    /// Creates the rollout node, or replaces a finished one under the version read.
    async fn write_new(
        &self,
        app: &AppId,
        existing: Option<i64>,
        state: &RolloutState,
    ) -> Result<(), RolloutError> {
        let path = rollout_path(app);
        let op = match existing {
            Some(v) => Op::Set {
                path,
                data: state.to_json(),
                version: Some(v),
            },
            None => Op::Create {
                path,
                data: state.to_json(),
            },
        };
        match self.store.commit(vec![op]).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { .. }) => Err(RolloutError::Conflict(format!(
                "another rollout of {app} was started meanwhile"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn deployment(&self, app: &AppId, v: &Version) -> Result<Deployment, RolloutError> {
        let path = deployment_path(app, v);
        let node = self
            .store
            .get(&path)
            .await?
            .ok_or_else(|| RolloutError::NotFound(format!("{app}:{v} is not deployed")))?;
        Deployment::from_json(app, v, &node.data).map_err(|e| RolloutError::BadNode {
            path,
            reason: e.to_string(),
        })
    }

    async fn check_running(&self, app: &AppId, v: &Version) -> Result<(), RolloutError> {
        let status = scheduler::control::status(&self.store, app, v)
            .await
            .map_err(|e| RolloutError::BadNode {
                path: deployment_status_path(app, v),
                reason: e.to_string(),
            })?;
        match status {
            Some(s) if s.phase == DeployPhase::Running => Ok(()),
            Some(s) => Err(RolloutError::Conflict(format!(
                "{app}:{v} is not serving healthy ({}{}): update a running version",
                serde_json::to_value(s.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                s.message.map(|m| format!(": {m}")).unwrap_or_default()
            ))),
            None => Err(RolloutError::Conflict(format!(
                "{app}:{v} has no status yet (no scheduler placed it): update a running version"
            ))),
        }
    }
}

/// The version `{appId}.{domain}` routes to now: the default version, or the only one
/// with a weight, or the only one deployed.
fn serving(
    app: &AppId,
    routing: &super::state::Routing,
    deployed: &[String],
) -> Result<Version, RolloutError> {
    let weighted: Vec<&Version> = routing
        .weights
        .iter()
        .filter(|(_, w)| **w > 0)
        .map(|(v, _)| v)
        .collect();
    let ambiguous = || {
        RolloutError::Invalid(format!(
            "from: {app} routes to several versions; name the one to replace"
        ))
    };
    if !weighted.is_empty() {
        return match weighted.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(ambiguous()),
        };
    }
    if let Some(v) = &routing.default_version {
        return Ok(v.clone());
    }
    match deployed {
        [one] => Version::new(one).map_err(|e| RolloutError::BadNode {
            path: format!("{DEPLOYMENTS}/{app}/{one}"),
            reason: e.to_string(),
        }),
        _ => Err(ambiguous()),
    }
}

/// The new version's deployment from the request and the old version's.
fn new_deployment(
    app: &AppId,
    req: &RolloutRequest,
    from: &Deployment,
) -> Result<Deployment, RolloutError> {
    let mut d = match (&req.deployment, &req.image) {
        (Some(d), None) => {
            let mut d = d.clone();
            if d.replicas.is_none() && !d.global {
                d.replicas = from.replicas;
                d.global = from.global;
            }
            d
        }
        (None, Some(image)) => {
            let mut d = from.clone();
            d.image = image.clone();
            d
        }
        (Some(_), Some(_)) => {
            return Err(RolloutError::Invalid(
                "image: give a deployment or an image, not both".into(),
            ));
        }
        (None, None) => {
            return Err(RolloutError::Invalid(
                "image: the new version needs an image (or a whole deployment)".into(),
            ));
        }
    };
    if let Some(n) = req.replicas {
        d.replicas = Some(n);
        d.global = false;
    }
    d.validate(app, &req.to)
        .map_err(|e| RolloutError::Invalid(e.to_string()))?;
    Ok(d)
}
