//! The driver: [`RolloutController`] runs every rollout of the store forward. On every
//! change under `/rollouts` or `/deployments` (the schedulers' status nodes) and every
//! `tick`, for each rollout that is not finished: read its node, observe the two versions,
//! decide ([`super::machine::next`]) and commit the decision's changes **with** the new
//! state in one commit guarded by the rollout node's version.
//!
//! Several controllers may run: when two decide the same move, one commit goes through
//! and the other is refused by the version check (nothing of it is written); the loser
//! reads again and finds the move made. A commit whose reply was lost is the same: the
//! re-read shows it or the next commit's check refuses the stale move. A controller that
//! stops (or crashes) mid-rollout loses nothing: the next one reads the phase from the
//! node and carries on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use caas_core::AppId;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::control::Rollouts;
use super::machine::next;
use super::nodes::{NodeError, ROLLOUTS, decision_ops, observe, read_rollout};
use super::state::Phase;
use crate::store::{Store, StoreError};
use crate::zk::layout::DEPLOYMENTS;
use caas_core::clock::wall_ms;

/// How a controller behaves.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Every rollout is looked at least this often (deadlines and step waits are checked
    /// then), besides on watch events. Default 250 ms.
    pub tick: Duration,
    /// Commit attempts per rollout and pass when others get there first (default 5).
    pub max_attempts: u32,
    /// A name for the logs.
    pub name: String,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(250),
            max_attempts: 5,
            name: "rollouts".into(),
        }
    }
}

/// The controller's counters.
#[derive(Debug, Default)]
pub struct ControllerStats {
    /// Decisions committed (each one phase or step of one rollout).
    pub commits: AtomicU64,
    /// Commits refused because the rollout node or a checked node changed meanwhile.
    pub conflicts: AtomicU64,
    /// Store failures and unusable nodes (logged).
    pub errors: AtomicU64,
}

/// A copy of [`ControllerStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControllerStatsSnapshot {
    /// See [`ControllerStats::commits`].
    pub commits: u64,
    /// See [`ControllerStats::conflicts`].
    pub conflicts: u64,
    /// See [`ControllerStats::errors`].
    pub errors: u64,
}

impl ControllerStats {
    /// The counters now.
    pub fn snapshot(&self) -> ControllerStatsSnapshot {
        ControllerStatsSnapshot {
            commits: self.commits.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What one look at a rollout did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// No rollout, or a finished one.
    Idle,
    /// Nothing to do yet (waiting for health, a step wait, the drain).
    Waiting,
    /// A move was committed; the rollout is now in this phase.
    Moved(Phase),
    /// Others kept moving it; looked at again next pass.
    Contended,
}

/// Runs rollouts forward (see the module docs).
#[derive(Debug, Clone)]
pub struct RolloutController<S: Store> {
    rollouts: Rollouts<S>,
    config: ControllerConfig,
    stats: Arc<ControllerStats>,
}

impl<S: Store> RolloutController<S> {
    /// A controller over `rollouts`.
    pub fn new(rollouts: Rollouts<S>, config: ControllerConfig) -> Self {
        Self {
            rollouts,
            config,
            stats: Arc::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> ControllerStatsSnapshot {
        self.stats.snapshot()
    }

    /// Looks at the rollout of `app` once: decides and commits at most one move (retrying
    /// when another controller got there first).
    pub async fn advance(&self, app: &AppId) -> Result<Advance, NodeError> {
        let store = self.rollouts.store();
        for _ in 0..self.config.max_attempts.max(1) {
            let Some((state, version)) = read_rollout(store, app).await? else {
                return Ok(Advance::Idle);
            };
            if state.phase.is_terminal() {
                return Ok(Advance::Idle);
            }
            let obs = observe(store, &state).await?;
            let decision = next(&state, &obs, wall_ms());
            let Some(new) = &decision.state else {
                return Ok(Advance::Waiting);
            };
            let ops = decision_ops(store, self.rollouts.cipher(), app, version, &decision).await?;
            match store.commit(ops).await {
                Ok(_) => {
                    bump(&self.stats.commits);
                    tracing::info!(
                        controller = %self.config.name, %app, from = %state.from, to = %state.to,
                        phase = new.phase.name(), percent = new.percent(),
                        reason = new.reason.as_deref().unwrap_or(""),
                        "rollout moved"
                    );
                    return Ok(Advance::Moved(new.phase));
                }
                Err(StoreError::Conflict { path, kind, .. }) => {
                    bump(&self.stats.conflicts);
                    tracing::debug!(controller = %self.config.name, %app, %path, %kind, "rollout commit refused; reading again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Advance::Contended)
    }

    /// One pass over every rollout node.
    pub async fn pass(&self) -> Result<(), StoreError> {
        let names = self.rollouts.store().children(ROLLOUTS).await?;
        for name in names {
            let app = match AppId::new(&name) {
                Ok(a) => a,
                Err(e) => {
                    bump(&self.stats.errors);
                    tracing::warn!(controller = %self.config.name, node = %name, error = %e, "skipping a rollout node whose name is not an app id");
                    continue;
                }
            };
            match self.advance(&app).await {
                Ok(Advance::Contended) => {
                    // Another controller kept winning, or a conflict that does not go away.
                    tracing::warn!(controller = %self.config.name, %app, "rollout not advanced: every commit of this pass was refused; trying again next pass");
                }
                Ok(_) => {}
                Err(e) => {
                    bump(&self.stats.errors);
                    tracing::warn!(controller = %self.config.name, %app, error = %e, "rollout not advanced; trying again next pass");
                }
            }
        }
        Ok(())
    }

    /// Runs passes until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let store = self.rollouts.store().clone();
        let mut rollouts = store.watch(ROLLOUTS);
        let mut deployments = store.watch(DEPLOYMENTS);
        tracing::info!(controller = %self.config.name, "rollout controller started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = self.pass().await {
                bump(&self.stats.errors);
                tracing::warn!(controller = %self.config.name, error = %e, "cannot list the rollouts; trying again");
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = rollouts.next() => {}
                _ = deployments.next() => {}
                () = tokio::time::sleep(self.config.tick) => {}
            }
            // Whatever else queued up meanwhile is covered by the next pass.
            while rollouts.try_next().is_some() || deployments.try_next().is_some() {}
        }
        tracing::info!(controller = %self.config.name, "rollout controller stopped");
    }

    /// Runs the controller in a task.
    pub fn spawn(self) -> ControllerHandle {
        let stats = self.stats.clone();
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(self.run(rx));
        ControllerHandle {
            stats,
            shutdown,
            task: Some(task),
        }
    }
}

/// A running controller. Dropping it stops the controller (without waiting).
#[derive(Debug)]
pub struct ControllerHandle {
    stats: Arc<ControllerStats>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ControllerHandle {
    /// The counters.
    pub fn stats(&self) -> ControllerStatsSnapshot {
        self.stats.snapshot()
    }

    /// Stops the controller and waits for it (a commit in flight completes first), then
    /// gives its final counters. [`Self::stats`] taken while it runs may lag the store: a
    /// commit is counted when its reply is handled, which can be after others read it.
    pub async fn shutdown(mut self) -> ControllerStatsSnapshot {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            join(task).await;
        }
        self.stats.snapshot()
    }

    /// Kills the controller task where it is, as a crash would, and waits until it is gone:
    /// it sends nothing to the store after this returns. A commit it had already sent may
    /// still land, as after a crash; a read on the same store session, being ordered after
    /// it, sees it.
    pub async fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            join(task).await;
        }
    }
}

/// Waits for the controller's task to end; a panic in it is logged (its cancellation, which
/// only `abort` asks for, is not).
async fn join(task: JoinHandle<()>) {
    if let Err(e) = task.await
        && !e.is_cancelled()
    {
        tracing::error!(error = %e, "rollout controller task ended abnormally");
    }
}

impl Drop for ControllerHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
