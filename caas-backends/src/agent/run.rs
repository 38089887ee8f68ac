//! The reconcile loop: one task owns the agent's state (instances, port pool, kill limiter,
//! CPU meter) and reacts, one message at a time, to
//!
//! - a change under the assignments (watch) or the resync tick → [`State::reconcile`]: read
//!   the store and Docker, [`plan`](super::plan::plan), execute the steps;
//! - a health state change, a Docker die/oom event, a finished Docker job or a due timer
//!   (`events`);
//! - the CPU sample tick and the host refresh tick → the host node's agent fields.
//!
//! Slow Docker work (pull, run, stop) runs in spawned jobs so a deregistration is never
//! queued behind a pull. Store writes are done inline: they are what must happen first.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use caas_core::InstanceId;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{MissedTickBehavior, interval};

use super::config::AgentConfig;
use super::cpu::{self, CpuMeter};
use super::instance::Instance;
use super::plan::{self, Observed, Tracked};
use super::stats::AgentStats;
use super::tasks::{self, StartFailure, UnitStarted};
use crate::docker::{DockerError, DockerRuntime, EventKind};
use crate::health::{HealthEvent, KillLimiter};
use crate::ports::PortPool;
use crate::store::AnyStore;
use crate::zk::Registry;
use crate::zk::hosts::{AgentHostFields, HostStore, Published, Resources};

/// Health events carry the instance and the generation the checker was started for.
pub(super) type Key = (InstanceId, u64);

/// What jobs and timers report back.
#[derive(Debug)]
pub(super) enum Msg {
    Started {
        id: InstanceId,
        generation: u64,
        result: Result<UnitStarted, StartFailure>,
    },
    Removed {
        containers: Vec<String>,
        /// Back to the pool once removed (orphans, replaced units).
        port: Option<u16>,
        why: &'static str,
        result: Result<(), DockerError>,
        /// The instance (and its generation) whose removal this was: forgotten when done.
        instance: Option<Key>,
    },
    Timer {
        id: InstanceId,
        generation: u64,
        kind: TimerKind,
    },
}

#[derive(Debug, Clone, Copy)]
pub(super) enum TimerKind {
    /// Start the instance again (after backoff).
    Restart,
    /// Ask the kill limiter again for a held instance.
    RetryKill,
}

/// What [`super::Agent::start`] hands to the loop.
pub(super) struct Parts {
    pub(super) config: AgentConfig,
    pub(super) docker: DockerRuntime,
    pub(super) registry: Registry<AnyStore>,
    pub(super) hosts: HostStore<AnyStore>,
    pub(super) pool: PortPool,
    pub(super) capacity: Resources,
    pub(super) stats: Arc<AgentStats>,
    /// Where the logs endpoint serves (published in the host node).
    pub(super) logs: Option<String>,
}

/// The loop's state.
pub(super) struct State {
    pub(super) p: Parts,
    pub(super) instances: BTreeMap<InstanceId, Instance>,
    /// Containers with a remove job in flight.
    pub(super) removing: HashSet<String>,
    pub(super) limiter: KillLimiter,
    pub(super) tx: mpsc::Sender<Msg>,
    pub(super) health_tx: mpsc::Sender<HealthEvent<Key>>,
    rx: Option<mpsc::Receiver<Msg>>,
    health_rx: Option<mpsc::Receiver<HealthEvent<Key>>>,
    /// Wakes a reconcile (the assignment watch, and a finished removal).
    pub(super) changed: Arc<Notify>,
    /// Die/oom events of containers no running unit owned (yet): a container that dies
    /// while its start job is still reporting is recognised when the report comes.
    pub(super) recent_exits: VecDeque<(String, EventKind)>,
    cpu: CpuMeter,
    /// The `cpu_idle` the host node holds (as far as this agent wrote it).
    published_idle: Option<f64>,
    cpu_failures: u64,
}

/// The host's capacity: the configured memory or the daemon's, 1024 CPU shares per CPU,
/// one instance per pool port.
pub(super) async fn capacity(docker: &DockerRuntime, config: &AgentConfig) -> Resources {
    let (mem, ncpu) = match docker.client().info().await {
        Ok(info) => (
            info.mem_total.and_then(|m| u64::try_from(m).ok()),
            info.ncpu.and_then(|n| u64::try_from(n).ok()),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "docker info failed; capacity unknown");
            (None, None)
        }
    };
    Resources {
        memory: config.memory.or(mem).unwrap_or(0),
        cpu_shares: ncpu.unwrap_or(1) * 1024,
        instances: config.ports.len() as u64,
    }
}

impl State {
    pub(super) fn new(p: Parts) -> Self {
        let (tx, rx) = mpsc::channel(256);
        let (health_tx, health_rx) = mpsc::channel(256);
        Self {
            limiter: KillLimiter::new(p.config.kills_per_minute),
            p,
            instances: BTreeMap::new(),
            removing: HashSet::new(),
            tx,
            health_tx,
            rx: Some(rx),
            health_rx: Some(health_rx),
            changed: Arc::new(Notify::new()),
            recent_exits: VecDeque::new(),
            cpu: CpuMeter::default(),
            published_idle: None,
            cpu_failures: 0,
        }
    }

    pub(super) fn host(&self) -> &str {
        &self.p.config.host_id
    }

    pub(super) fn error(&self, what: &str, e: &dyn std::fmt::Display) {
        AgentStats::bump(&self.p.stats.errors);
        tracing::error!(host = %self.p.config.host_id, error = %e, "{what}");
    }

    pub(super) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (Some(mut rx), Some(mut health_rx)) = (self.rx.take(), self.health_rx.take()) else {
            return;
        };
        let watcher = tokio::spawn(tasks::watch_assignments(
            self.p.hosts.store().clone(),
            self.p.config.host_id.clone(),
            self.changed.clone(),
        ));
        let (ev_tx, mut ev_rx) = mpsc::channel(256);
        let events = tokio::spawn(tasks::docker_events(
            self.p.docker.clone(),
            self.p.config.host_id.clone(),
            ev_tx,
            self.p.stats.clone(),
        ));
        let mut resync = interval(self.p.config.resync);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut cpu_tick = interval(self.p.config.cpu_sample);
        cpu_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut refresh = interval(self.p.config.host_refresh);
        refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
        refresh.reset(); // the first reconcile publishes; the refresh comes after a period
        let changed = self.changed.clone();
        tracing::info!(host = %self.host(), ip = %self.p.config.ip, "agent running");
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(ev) = ev_rx.recv() => self.on_docker_event(ev).await,
                Some(ev) = health_rx.recv() => self.on_health(ev).await,
                Some(msg) = rx.recv() => self.on_msg(msg).await,
                _ = changed.notified() => self.reconcile().await,
                _ = resync.tick() => self.reconcile().await,
                _ = cpu_tick.tick() => self.sample_cpu().await,
                _ = refresh.tick() => self.publish_host(self.cpu.value()).await,
            }
        }
        watcher.abort();
        events.abort();
        tracing::info!(host = %self.host(), "agent stopped; containers keep running");
    }

    /// Makes the containers match the assignments: reads, plans, executes.
    async fn reconcile(&mut self) {
        AgentStats::bump(&self.p.stats.reconciles);
        let nodes = match self.p.hosts.assignments(self.host()).await {
            Ok(n) => n,
            Err(e) => return self.error("reconcile: cannot read the assignments", &e),
        };
        let containers = match self.p.docker.list_managed(self.host()).await {
            Ok(c) => c,
            Err(e) => return self.error("reconcile: cannot list the containers", &e),
        };
        let statuses = match self.p.hosts.status_names(self.host()).await {
            Ok(s) => Some(s),
            Err(e) => {
                self.error("reconcile: cannot list the status nodes", &e);
                None
            }
        };
        let plan = {
            let tracked: BTreeMap<InstanceId, Tracked<'_>> = self
                .instances
                .iter()
                .map(|(id, i)| {
                    let t = Tracked {
                        assignment: &i.assignment,
                        phase: i.phase,
                        port: i.port,
                        main: i.container.as_deref(),
                        sidecars: &i.sidecars,
                    };
                    (id.clone(), t)
                })
                .collect();
            plan::plan(&Observed {
                nodes: &nodes,
                containers: &containers,
                tracked: &tracked,
                removing: &self.removing,
                statuses: statuses.as_deref(),
            })
        };
        for why in &plan.skipped {
            AgentStats::bump(&self.p.stats.invalid_assignments);
            self.error("reconcile: skipping an assignment node", why);
        }
        for step in plan.steps {
            self.apply(step).await;
        }
        self.heal_registrations().await;
        let ids: Vec<InstanceId> = self.instances.keys().cloned().collect();
        for id in ids {
            self.sync_status(&id).await;
        }
        self.publish_host(self.published_idle).await;
    }

    /// Reads the CPU counters; publishes the smoothed idle share when it moved enough.
    async fn sample_cpu(&mut self) {
        let path = &self.p.config.proc_stat;
        let result = match tokio::fs::read_to_string(path).await {
            Ok(text) => self.cpu.sample(&text).map_err(|e| e.to_string()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        };
        if let Err(e) = result {
            AgentStats::bump(&self.p.stats.errors);
            self.cpu_failures += 1;
            // Once loudly; a host without the file would otherwise log every sample.
            if self.cpu_failures == 1 {
                tracing::warn!(host = %self.p.config.host_id, error = %e, "cpu idle not measured (counted in errors; further failures logged at debug)");
            } else {
                tracing::debug!(host = %self.p.config.host_id, error = %e, "cpu idle not measured");
            }
            return;
        }
        AgentStats::bump(&self.p.stats.cpu_samples);
        let current = self.cpu.value();
        if cpu::moved_enough(
            self.published_idle,
            current,
            self.p.config.cpu_idle_min_change,
        ) {
            self.publish_host(current).await;
        }
    }

    /// Writes the agent's fields of the host node (never `allocated` or `draining`).
    pub(super) async fn publish_host(&mut self, cpu_idle: Option<f64>) {
        let fields = AgentHostFields {
            ip: self.p.config.ip,
            labels: self.p.config.labels.clone(),
            capacity: self.p.capacity,
            cpu_idle,
            logs: self.p.logs.clone(),
        };
        match self
            .p
            .hosts
            .publish_agent_fields(self.host(), &fields)
            .await
        {
            Ok(done) => {
                if done != Published::Unchanged {
                    AgentStats::bump(&self.p.stats.host_writes);
                }
                self.published_idle = cpu_idle;
            }
            Err(e) => self.error("cannot write the host info", &e),
        }
    }
}
