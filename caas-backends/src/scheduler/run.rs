//! The scheduler process: watches the store, and on every change (debounced), on a grace
//! deadline and every `resync` runs a **pass**: read a [`Snapshot`], set each host's
//! liveness from how long its `alive` node has been gone, then for every deployment (and
//! every orphaned instance) plan, and commit the plan as one all-or-nothing commit.
//!
//! A refused commit (a checked node changed: another scheduler, an agent, an operator got
//! there first) or one whose outcome is unknown (the reply was lost, e.g. in a ZooKeeper
//! leader change) is never retried as is: the scheduler waits a random few milliseconds,
//! reads everything again, plans again and commits the new plan, up to
//! [`SchedulerConfig::max_attempts`] times; then the deployment waits for the next pass.
//! Because every commit checks the versions of the nodes its plan was made from (the
//! deployment, each touched host, the status node), a commit that did go through cannot
//! be applied twice: the re-read either shows it, or, from a server lagging behind, shows
//! old versions that the next commit's checks refuse.
//!
//! Several schedulers may run against one store; nothing but those checks coordinates
//! them. Each starts its pass at a random deployment, so they rarely plan the same one at
//! the same moment.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::commit::{self, status_op};
use super::plan::{self, Plan};
use super::snapshot::{self, Key, Liveness, Snapshot, StatusNode};
use super::stats::{SchedulerStats, SchedulerStatsSnapshot};
use super::status::{self, DeploymentStatus};
use crate::store::{self, Op, Store, StoreError, conflict_backoff};
use crate::zk::hosts::HOSTS;
use crate::zk::layout::{DEPLOYMENTS, SERVICE, deployment_path};

/// The least time between two status-only writes of one deployment by one scheduler. Two
/// schedulers that disagree for a while (one already counts a host lost, the other still
/// within its grace period) would otherwise overwrite each other's status in a loop, each
/// write waking the other.
const STATUS_SPACING: Duration = Duration::from_millis(500);

/// How a scheduler behaves.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How long a host's `alive` node must be gone before its instances are placed
    /// elsewhere (`--host-grace-ms`, default 30 s).
    pub host_grace: Duration,
    /// Commit attempts per deployment and pass before waiting for the next pass (default 10).
    pub max_attempts: u32,
    /// A full pass runs at least this often, watch events or not (default 10 s).
    pub resync: Duration,
    /// Events are gathered this long before a pass starts (default 20 ms).
    pub debounce: Duration,
    /// A name for the logs (default `scheduler`).
    pub name: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            host_grace: Duration::from_secs(30),
            max_attempts: 10,
            resync: Duration::from_secs(10),
            debounce: Duration::from_millis(20),
            name: "scheduler".into(),
        }
    }
}

/// What one deployment needs in this pass.
enum Work {
    Nothing,
    /// The local snapshot was partly changed by a plan that could not be turned into ops.
    Broken,
    Status {
        ops: Vec<Op>,
        status: DeploymentStatus,
    },
    Commit {
        ops: Vec<Op>,
        status: Option<DeploymentStatus>,
        plan: Plan,
    },
}

/// A scheduler over a [`Store`] (see the module docs). Run it with [`Scheduler::spawn`], or
/// drive single passes with [`Scheduler::pass`].
#[derive(Debug)]
pub struct Scheduler<S: Store> {
    store: S,
    config: SchedulerConfig,
    stats: Arc<SchedulerStats>,
    missing_since: HashMap<String, Instant>,
    /// When this scheduler last wrote each deployment's status on its own (not with a
    /// placement): such writes are spaced by [`STATUS_SPACING`].
    status_written: HashMap<Key, Instant>,
    /// A status write held back by the spacing is due then: the loop wakes for it.
    status_due: Option<Instant>,
    /// Bad nodes already logged and counted (each once, until it changes).
    reported: HashSet<String>,
}

impl<S: Store> Scheduler<S> {
    /// A scheduler that reads and writes through `store`.
    pub fn new(store: S, config: SchedulerConfig) -> Self {
        Self {
            store,
            config,
            stats: Arc::default(),
            missing_since: HashMap::new(),
            status_written: HashMap::new(),
            status_due: None,
            reported: HashSet::new(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<SchedulerStats> {
        &self.stats
    }

    /// Reads a snapshot and sets each host's liveness from the grace period.
    async fn read(&mut self) -> Result<Snapshot, StoreError> {
        let mut snap = snapshot::read(&self.store).await?;
        let now = Instant::now();
        for h in snap.hosts.values_mut() {
            if h.alive {
                self.missing_since.remove(&h.id);
                h.liveness = Liveness::Alive;
            } else {
                let since = *self.missing_since.entry(h.id.clone()).or_insert(now);
                h.liveness = if now.duration_since(since) >= self.config.host_grace {
                    Liveness::Lost
                } else {
                    Liveness::Missing
                };
            }
        }
        self.missing_since
            .retain(|id, _| snap.hosts.contains_key(id));
        self.report_bad_nodes(&snap);
        Ok(snap)
    }

    fn report_bad_nodes(&mut self, snap: &Snapshot) {
        if self.reported.len() > 10_000 {
            self.reported.clear();
        }
        let hosts = snap
            .bad_hosts
            .iter()
            .map(|(h, b)| (format!("{HOSTS}/{h}"), &b.reason));
        let names = snap.bad_deployments.iter().map(|(p, why)| (p.clone(), why));
        let assignments = snap.hosts.values().flat_map(|h| {
            h.invalid
                .iter()
                .map(move |(n, why)| (format!("{HOSTS}/{}/assignments/{n}", h.id), why))
        });
        for (path, why) in hosts.chain(names).chain(assignments) {
            if self.reported.insert(format!("{path}: {why}")) {
                SchedulerStats::bump(&self.stats.errors);
                tracing::warn!(scheduler = %self.config.name, %path, reason = %why, "skipping an unusable node");
            }
        }
    }

    /// When a missing host becomes lost: the loop wakes then.
    fn next_grace_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        self.missing_since
            .values()
            .map(|since| *since + self.config.host_grace)
            .filter(|deadline| *deadline > now)
            .min()
    }

    /// One pass: read everything, then bring every deployment (and every orphaned
    /// instance) in line. Errors are a failed read; commits that keep failing are counted
    /// and left to the next pass.
    pub async fn pass(&mut self) -> Result<(), StoreError> {
        self.status_due = None;
        let mut snap = self.read().await?;
        self.status_written
            .retain(|k, at| snap.deployments.contains_key(k) && at.elapsed() < STATUS_SPACING);
        let mut keys: Vec<Key> = snap.deployments.keys().cloned().collect();
        keys.extend(plan::orphans(&snap).into_keys());
        if !keys.is_empty() {
            let start = (store::random() % keys.len() as u64) as usize;
            keys.rotate_left(start);
        }
        for key in keys {
            self.reconcile(&mut snap, &key).await?;
        }
        SchedulerStats::bump(&self.stats.passes);
        Ok(())
    }

    /// Plans and commits one deployment, retrying on conflicts (see the module docs).
    async fn reconcile(&mut self, snap: &mut Snapshot, key: &Key) -> Result<(), StoreError> {
        let (app, version) = key;
        for attempt in 1..=self.config.max_attempts {
            match self.decide(snap, key) {
                Work::Nothing => return Ok(()),
                Work::Broken => {
                    *snap = self.read().await?;
                    return Ok(());
                }
                Work::Status { ops, status } => {
                    let now = Instant::now();
                    if let Some(last) = self.status_written.get(key)
                        && now.duration_since(*last) < STATUS_SPACING
                    {
                        let due = *last + STATUS_SPACING;
                        self.status_due = Some(self.status_due.map_or(due, |d| d.min(due)));
                        return Ok(());
                    }
                    self.status_written.insert(key.clone(), now);
                    match self.store.commit(ops).await {
                        Ok(versions) => {
                            SchedulerStats::bump(&self.stats.status_writes);
                            if let Some(Some(v)) = versions.last() {
                                set_status(snap, key, status, *v);
                            }
                        }
                        Err(StoreError::Conflict { .. }) => {
                            SchedulerStats::bump(&self.stats.status_conflicts);
                        }
                        Err(e) => {
                            SchedulerStats::bump(&self.stats.errors);
                            tracing::warn!(scheduler = %self.config.name, app = %app, version = %version, error = %e, "cannot write the deployment status");
                            *snap = self.read().await?;
                        }
                    }
                    return Ok(());
                }
                Work::Commit { ops, status, plan } => {
                    let sent = Instant::now();
                    match self.store.commit(ops.clone()).await {
                        Ok(versions) => {
                            let took = sent.elapsed();
                            self.committed(snap, key, (&ops, &versions), status, &plan, took);
                            return Ok(());
                        }
                        Err(e) => {
                            let counter = match &e {
                                StoreError::Conflict { .. } => &self.stats.conflicts,
                                e if e.outcome_unknown() => &self.stats.unknown_outcomes,
                                _ => &self.stats.errors,
                            };
                            SchedulerStats::bump(counter);
                            tracing::debug!(scheduler = %self.config.name, app = %app, version = %version, attempt, error = %e, "commit refused; reading again");
                            if attempt == self.config.max_attempts {
                                SchedulerStats::bump(&self.stats.gave_up);
                                tracing::warn!(scheduler = %self.config.name, app = %app, version = %version, attempts = attempt, error = %e, "giving up on this deployment until the next pass");
                            } else {
                                // A random wait, growing with each lost round: below 10 ms, 20,
                                // 40 … at most 200 ms.
                                let wait = conflict_backoff(
                                    attempt,
                                    Duration::from_millis(10),
                                    Duration::from_millis(200),
                                );
                                tokio::time::sleep(wait).await;
                            }
                            // The local snapshot holds the failed plan: never reuse it.
                            *snap = self.read().await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn committed(
        &mut self,
        snap: &mut Snapshot,
        key: &Key,
        (ops, versions): (&[Op], &[Option<i64>]),
        status: Option<DeploymentStatus>,
        plan: &Plan,
        took: Duration,
    ) {
        SchedulerStats::bump(&self.stats.commits);
        SchedulerStats::add(&self.stats.placed, plan.add.len() as u64);
        SchedulerStats::add(&self.stats.removed, plan.remove.len() as u64);
        for (op, v) in ops.iter().zip(versions) {
            if let Some(v) = v {
                snap.note_version(op.path(), *v);
            }
        }
        if let (Some(status), Some(Some(v))) = (status, versions.last()) {
            set_status(snap, key, status, *v);
        }
        let added: Vec<String> = plan.add.iter().map(|(h, i)| format!("{i}@{h}")).collect();
        let removed: Vec<String> = plan
            .remove
            .iter()
            .map(|r| format!("{}@{} ({:?})", r.id, r.host, r.why))
            .collect();
        tracing::info!(scheduler = %self.config.name, app = %key.0, version = %key.1, ?added, ?removed, ops = ops.len(), commit_ms = took.as_secs_f64() * 1e3, "committed");
    }

    /// What `key` needs now. Changes `snap` when it returns [`Work::Commit`].
    fn decide(&mut self, snap: &mut Snapshot, key: &Key) -> Work {
        let (app, version) = key;
        let Some(d) = snap.deployments.get(key) else {
            // No deployment: remove its orphaned instances, if any.
            let Some(remove) = plan::orphans(snap).remove(key) else {
                return Work::Nothing;
            };
            let plan = Plan {
                add: Vec::new(),
                remove,
                next_instance: 0,
                desired: 0,
                unschedulable: None,
                rejected: Default::default(),
            };
            return match commit::apply(snap, None, &plan) {
                Ok(ops) => Work::Commit {
                    ops,
                    status: None,
                    plan,
                },
                Err(e) => self.broken(key, &e),
            };
        };
        let spec_version = d.spec_version;
        let status_version = d.status.as_ref().map(|s| s.version);
        let stored = d.status.as_ref().and_then(|s| s.status.clone());
        let next = stored.as_ref().map_or(0, |s| s.next_instance);
        let check = commit::check_op(app, version, spec_version);
        let spec = match &d.spec {
            Ok(spec) => spec.clone(),
            Err(why) => {
                let path = deployment_path(app, version);
                if self
                    .reported
                    .insert(format!("{path}@{spec_version}: {why}"))
                {
                    SchedulerStats::bump(&self.stats.errors);
                    tracing::warn!(scheduler = %self.config.name, %path, reason = %why, "invalid deployment; its instances are left as they are");
                }
                let status = status::invalid(snap, app, version, why, next);
                if stored.as_ref() == Some(&status) {
                    return Work::Nothing;
                }
                let ops = vec![check, status_op(app, version, &status, status_version)];
                return Work::Status { ops, status };
            }
        };
        let plan = plan::plan(snap, app, version, &spec, next);
        if plan.is_noop() {
            let status = status::build(snap, app, version, spec.global, &plan);
            if stored.as_ref() == Some(&status) {
                return Work::Nothing;
            }
            if status.phase == status::Phase::Unschedulable
                && stored.as_ref().map(|s| &s.message) != Some(&status.message)
            {
                tracing::warn!(scheduler = %self.config.name, app = %app, version = %version, reason = status.message.as_deref().unwrap_or(""), "deployment cannot be placed");
            }
            let ops = vec![check, status_op(app, version, &status, status_version)];
            return Work::Status { ops, status };
        }
        let template = spec.assignment(app, version);
        match commit::apply(snap, Some(&template), &plan) {
            Ok(changes) => {
                let status = status::build(snap, app, version, spec.global, &plan);
                let mut ops = vec![check];
                ops.extend(changes);
                ops.push(status_op(app, version, &status, status_version));
                Work::Commit {
                    ops,
                    status: Some(status),
                    plan,
                }
            }
            Err(e) => self.broken(key, &e),
        }
    }

    fn broken(&self, key: &Key, e: &str) -> Work {
        SchedulerStats::bump(&self.stats.errors);
        tracing::error!(scheduler = %self.config.name, app = %key.0, version = %key.1, error = %e, "cannot turn the plan into a commit");
        Work::Broken
    }

    /// Runs passes on changes, grace deadlines and every `resync` until `shutdown` turns
    /// true or the store closes.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut watches = [
            self.store.watch(DEPLOYMENTS),
            self.store.watch(HOSTS),
            self.store.watch(SERVICE),
        ];
        let mut backoff = Duration::from_millis(200);
        tracing::info!(scheduler = %self.config.name, grace_ms = self.config.host_grace.as_millis() as u64, "scheduler running");
        loop {
            // Gather the events of a burst, then one pass for all of them.
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(self.config.debounce) => {}
            }
            for w in &mut watches {
                while w.try_next().is_some() {}
            }
            let retry_at = match self.pass().await {
                Ok(()) => {
                    backoff = Duration::from_millis(200);
                    None
                }
                Err(e) => {
                    SchedulerStats::bump(&self.stats.errors);
                    tracing::warn!(scheduler = %self.config.name, error = %e, ?backoff, "pass failed; retrying");
                    let at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    Some(at)
                }
            };
            let next_resync = Instant::now() + self.config.resync;
            let deadline = [
                Some(next_resync),
                retry_at,
                self.next_grace_deadline(),
                self.status_due,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_resync);
            let [w0, w1, w2] = &mut watches;
            let event = tokio::select! {
                _ = shutdown.changed() => break,
                e = w0.next() => e.is_some(),
                e = w1.next() => e.is_some(),
                e = w2.next() => e.is_some(),
                _ = tokio::time::sleep_until(deadline) => true,
            };
            if !event {
                tracing::info!(scheduler = %self.config.name, "store closed; scheduler stopping");
                break;
            }
        }
        tracing::info!(scheduler = %self.config.name, "scheduler stopped");
    }

    /// Runs [`Self::run`] in a task.
    pub fn spawn(self) -> SchedulerHandle {
        let stats = self.stats.clone();
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(self.run(rx));
        SchedulerHandle {
            stats,
            shutdown,
            task: Some(task),
        }
    }
}

fn set_status(snap: &mut Snapshot, key: &Key, status: DeploymentStatus, version: i64) {
    if let Some(d) = snap.deployments.get_mut(key) {
        d.status = Some(StatusNode {
            status: Some(status),
            version,
        });
    }
}

/// A running scheduler. Dropping it stops the scheduler (without waiting).
#[derive(Debug)]
pub struct SchedulerHandle {
    stats: Arc<SchedulerStats>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SchedulerHandle {
    /// The scheduler's counters.
    pub fn stats(&self) -> SchedulerStatsSnapshot {
        self.stats.snapshot()
    }

    /// Stops the scheduler and waits for it (a commit in flight completes first).
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "scheduler task ended abnormally");
        }
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
