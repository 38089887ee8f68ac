//! The reconcile loop: one task owns the agent's state (instances, port pool, kill limiter)
//! and reacts, one message at a time, to
//!
//! - a change under the assignments (watch) or the resync tick → [`State::reconcile`];
//! - a health state change → the instance's [`Supervisor`](crate::Supervisor) decides, the
//!   loop executes (register / deregister / restart / remove / hold);
//! - a Docker die/oom event → deregister at once, then restart or remove;
//! - a finished Docker job (start, remove) or a due timer (restart, kill retry).
//!
//! Slow Docker work (pull, run, stop) runs in spawned jobs so a deregistration is never
//! queued behind a pull. ZooKeeper writes are done inline: they are what must happen first.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use caas_core::InstanceId;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::config::AgentConfig;
use super::instance::{Instance, Phase};
use super::stats::AgentStats;
use super::tasks;
use crate::assignment::Assignment;
use crate::docker::{
    ContainerEvent, ContainerInfo, DockerError, DockerRuntime, EventKind, LABEL_CONTAINER_PORT,
    ManagedContainer, RunSpec,
};
use crate::health::{Action, Backoff, HealthChecker, HealthEvent, HealthState, KillLimiter};
use crate::ports::PortPool;
use crate::zk::hosts::{HostInfo, HostStore, Resources};
use crate::zk::layout::instance_path;
use crate::zk::{Registry, ZkError};

/// Health events carry the instance and the generation the checker was started for.
type Key = (InstanceId, u64);

/// What jobs and timers report back.
#[derive(Debug)]
enum Msg {
    Started {
        id: InstanceId,
        generation: u64,
        result: Result<ContainerInfo, DockerError>,
    },
    Removed {
        container: String,
        port: Option<u16>,
        why: &'static str,
        result: Result<(), DockerError>,
    },
    Timer {
        id: InstanceId,
        generation: u64,
        kind: TimerKind,
    },
}

#[derive(Debug, Clone, Copy)]
enum TimerKind {
    /// Start the instance again (after backoff).
    Restart,
    /// Ask the kill limiter again for a held instance.
    RetryKill,
}

/// What [`super::Agent::start`] hands to the loop.
pub(super) struct Parts {
    pub(super) config: AgentConfig,
    pub(super) docker: DockerRuntime,
    pub(super) registry: Registry,
    pub(super) hosts: HostStore,
    pub(super) pool: PortPool,
    pub(super) capacity: Resources,
    pub(super) stats: Arc<AgentStats>,
}

/// The loop's state.
pub(super) struct State {
    p: Parts,
    instances: BTreeMap<InstanceId, Instance>,
    /// Containers with a remove job in flight.
    removing: HashSet<String>,
    limiter: KillLimiter,
    tx: mpsc::Sender<Msg>,
    health_tx: mpsc::Sender<HealthEvent<Key>>,
    rx: Option<mpsc::Receiver<Msg>>,
    health_rx: Option<mpsc::Receiver<HealthEvent<Key>>>,
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
        }
    }

    fn host(&self) -> &str {
        &self.p.config.host_id
    }

    fn error(&self, what: &str, e: &dyn std::fmt::Display) {
        AgentStats::bump(&self.p.stats.errors);
        tracing::error!(host = %self.p.config.host_id, error = %e, "{what}");
    }

    pub(super) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (Some(mut rx), Some(mut health_rx)) = (self.rx.take(), self.health_rx.take()) else {
            return;
        };
        let changed = Arc::new(Notify::new());
        let watcher = tokio::spawn(tasks::watch_assignments(
            self.p.hosts.session().clone(),
            self.p.config.host_id.clone(),
            changed.clone(),
            self.p.stats.clone(),
        ));
        let (ev_tx, mut ev_rx) = mpsc::channel(256);
        let events = tokio::spawn(tasks::docker_events(
            self.p.docker.clone(),
            self.p.config.host_id.clone(),
            ev_tx,
            self.p.stats.clone(),
        ));
        let mut resync = tokio::time::interval(self.p.config.resync);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
            }
        }
        watcher.abort();
        events.abort();
        tracing::info!(host = %self.host(), "agent stopped; containers keep running");
    }

    // ------------------------------------------------------------------ reconcile

    /// Makes the containers match the assignments (see the module docs of `agent`).
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
        let mut desired: BTreeMap<InstanceId, Assignment> = BTreeMap::new();
        // Valid names with invalid JSON: their containers are left alone (a bad edit must
        // not kill a running instance).
        let mut untouchable: BTreeSet<InstanceId> = BTreeSet::new();
        for node in nodes {
            match (node.instance, node.assignment) {
                (Ok(id), Ok(a)) => {
                    desired.insert(id, a);
                }
                (Ok(id), Err(e)) => {
                    self.error(&format!("assignment {id} is invalid; leaving it as is"), &e);
                    untouchable.insert(id);
                }
                (Err(e), _) => self.error("assignment node name is not an instance id", &e),
            }
        }

        // Deleted or changed assignments.
        let stale: Vec<(InstanceId, &'static str)> = self
            .instances
            .iter()
            .filter(|(id, _)| !untouchable.contains(*id))
            .filter_map(|(id, inst)| match desired.get(id) {
                None => Some((id.clone(), "assignment deleted")),
                Some(a) if *a != inst.assignment => Some((id.clone(), "assignment changed")),
                Some(_) => None,
            })
            .collect();
        for (id, why) in stale {
            self.drop_instance(&id, why).await;
        }

        // Containers: adopt, keep, or remove.
        let listed: HashSet<String> = containers.iter().map(|c| c.id.clone()).collect();
        for c in containers {
            if self.removing.contains(&c.id) {
                continue;
            }
            let id = c.instance().and_then(|i| InstanceId::new(i).ok());
            let Some(id) = id else {
                self.remove_orphan(c, "no valid caas.instance label");
                continue;
            };
            if untouchable.contains(&id) {
                continue;
            }
            let Some(assignment) = desired.get(&id).cloned() else {
                self.remove_orphan(c, "no assignment");
                continue;
            };
            match self.instances.get_mut(&id) {
                Some(inst) if inst.container.as_deref() == Some(c.id.as_str()) => {
                    if !c.running && matches!(inst.phase, Phase::Running | Phase::Held) {
                        // Its die event was missed.
                        tracing::warn!(instance = %id, container = %c.id, "container found stopped");
                        AgentStats::bump(&self.p.stats.exits);
                        let actions = inst.exited(Instant::now());
                        self.execute(&id, actions).await;
                    }
                }
                // Being (re)started: the job replaces whatever holds the name.
                Some(inst) if inst.phase == Phase::Starting => {}
                Some(_) => self.remove_orphan(c, "duplicate of a tracked instance"),
                None => self.adopt(id, assignment, c).await,
            }
        }

        // Tracked containers that vanished (removed from outside).
        let vanished: Vec<InstanceId> = self
            .instances
            .values()
            .filter(|i| matches!(i.phase, Phase::Running | Phase::Held))
            .filter(|i| i.container.as_ref().is_some_and(|c| !listed.contains(c)))
            .map(|i| i.id.clone())
            .collect();
        for id in vanished {
            if let Some(inst) = self.instances.get_mut(&id) {
                tracing::warn!(instance = %id, "container vanished");
                inst.container = None;
                AgentStats::bump(&self.p.stats.exits);
                let actions = inst.exited(Instant::now());
                self.execute(&id, actions).await;
            }
        }

        // New assignments.
        for (id, a) in &desired {
            if !self.instances.contains_key(id) {
                self.start_new(id.clone(), a.clone());
            }
        }

        self.heal_registrations().await;
        self.publish_host(&desired).await;
    }

    /// Registered instances whose node is not owned by the session (a failed write) are
    /// registered again.
    async fn heal_registrations(&mut self) {
        let owned: BTreeSet<String> = self.p.registry.session().ephemerals().into_iter().collect();
        let missing: Vec<InstanceId> = self
            .instances
            .values()
            .filter(|i| i.supervisor.is_registered())
            .filter(|i| {
                let a = &i.assignment;
                !owned.contains(&instance_path(&a.app, &a.version, &i.id))
            })
            .map(|i| i.id.clone())
            .collect();
        for id in missing {
            tracing::warn!(instance = %id, "registration missing; writing it again");
            self.register(&id).await;
        }
    }

    async fn publish_host(&self, desired: &BTreeMap<InstanceId, Assignment>) {
        let allocated = desired
            .values()
            .fold(Resources::default(), |r, a| Resources {
                memory: r.memory + a.memory.bytes(),
                cpu_shares: r.cpu_shares + u64::from(a.cpu_shares),
                instances: r.instances + 1,
            });
        let info = HostInfo {
            ip: self.p.config.ip,
            labels: self.p.config.labels.clone(),
            capacity: self.p.capacity,
            allocated,
            cpu_idle: None,
            draining: false,
        };
        if let Err(e) = self.p.hosts.put_info(self.host(), &info).await {
            self.error("cannot write the host info", &e);
        }
    }

    /// Takes over a container found by label (after an agent restart) if it still matches
    /// its assignment; otherwise removes it (and the assignment is started fresh).
    async fn adopt(&mut self, id: InstanceId, a: Assignment, c: ManagedContainer) {
        let info = match self.p.docker.inspect(&c.id).await {
            Ok(i) => i,
            Err(e) => return self.error(&format!("adopt {id}: inspect {} failed", c.id), &e),
        };
        let port = info.host_binding.as_ref().map(|(_, p)| *p);
        let same = info.image == a.image
            && u64::try_from(info.memory).ok() == Some(a.memory.bytes())
            && info.cpu_shares == i64::from(a.cpu_shares)
            && info.labels.get(LABEL_CONTAINER_PORT) == Some(&a.container_port.to_string())
            && info.host_binding.as_ref().map(|(ip, _)| ip.as_str())
                == Some(self.p.config.ip.to_string().as_str())
            && port.is_some_and(|p| self.p.config.ports.contains(p));
        let Some(port) = port.filter(|_| same) else {
            tracing::info!(instance = %id, container = %c.id, "found container differs from its assignment; replacing it");
            self.remove_orphan(c, "differs from its assignment");
            return;
        };
        self.p.pool.recover([port]);
        let mut inst = self.new_instance(id.clone(), a, port);
        inst.container = Some(c.id.clone());
        AgentStats::bump(&self.p.stats.adopted);
        tracing::info!(instance = %id, container = %c.id, port, running = c.running, "adopted container");
        if c.running {
            self.instances.insert(id.clone(), inst);
            self.watch_health(&id);
        } else {
            let actions = inst.exited(Instant::now());
            self.instances.insert(id.clone(), inst);
            self.execute(&id, actions).await;
        }
    }

    fn new_instance(&self, id: InstanceId, a: Assignment, port: u16) -> Instance {
        let c = &self.p.config;
        Instance::new(
            id,
            a,
            port,
            Backoff::new(c.restart_backoff, c.restart_backoff_max),
            c.stable_after,
        )
    }

    fn start_new(&mut self, id: InstanceId, a: Assignment) {
        let port = match self.p.pool.allocate() {
            Ok(p) => p,
            Err(e) => return self.error(&format!("cannot start {id}"), &e),
        };
        let inst = self.new_instance(id.clone(), a, port);
        self.instances.insert(id.clone(), inst);
        self.spawn_start(&id);
    }

    /// Deregisters, stops and removes the instance's container and forgets the instance.
    async fn drop_instance(&mut self, id: &InstanceId, why: &'static str) {
        if self
            .instances
            .get(id)
            .is_some_and(|i| i.supervisor.is_registered())
        {
            self.deregister(id).await;
        }
        let Some(inst) = self.instances.remove(id) else {
            return;
        };
        tracing::info!(instance = %id, why, "removing instance");
        AgentStats::bump(&self.p.stats.removed);
        match inst.container {
            Some(c) => self.spawn_remove(c, Some(inst.port), self.p.config.stop_timeout, why),
            None => {
                self.p.pool.free(inst.port);
            }
        }
    }

    fn remove_orphan(&mut self, c: ManagedContainer, why: &'static str) {
        tracing::info!(container = %c.id, instance = ?c.instance(), why, "removing orphan container");
        AgentStats::bump(&self.p.stats.orphans_removed);
        // Its port goes back to the pool unless a tracked instance owns it.
        let port = c
            .port()
            .filter(|p| !self.instances.values().any(|i| i.port == *p));
        self.spawn_remove(c.id, port, Duration::ZERO, why);
    }

    // ------------------------------------------------------------------ events

    async fn on_health(&mut self, ev: HealthEvent<Key>) {
        let (id, generation) = ev.key;
        let Some(inst) = self.instances.get_mut(&id) else {
            return;
        };
        if inst.generation != generation {
            return;
        }
        if ev.state == HealthState::Healthy && inst.phase == Phase::Held {
            inst.phase = Phase::Running;
        }
        tracing::info!(instance = %id, state = ?ev.state, error = ?ev.last_error, "health changed");
        let actions = inst
            .supervisor
            .on_health(ev.state, &mut self.limiter, Instant::now());
        self.execute(&id, actions).await;
    }

    async fn on_docker_event(&mut self, ev: ContainerEvent) {
        if ev.kind == EventKind::Start {
            return;
        }
        let Some(inst) = self
            .instances
            .values_mut()
            .find(|i| i.container.as_deref() == Some(ev.id.as_str()))
        else {
            return;
        };
        if !matches!(inst.phase, Phase::Running | Phase::Held) {
            return;
        }
        let id = inst.id.clone();
        tracing::warn!(instance = %id, container = %ev.id, kind = ?ev.kind, "container exited");
        AgentStats::bump(&self.p.stats.exits);
        let actions = inst.exited(Instant::now());
        self.execute(&id, actions).await;
    }

    async fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Started {
                id,
                generation,
                result,
            } => self.on_started(id, generation, result),
            Msg::Removed {
                container,
                port,
                why,
                result,
            } => {
                self.removing.remove(&container);
                match result {
                    Ok(()) => {
                        if let Some(p) = port {
                            self.p.pool.free(p);
                        }
                    }
                    Err(e) => self.error(&format!("removing {container} ({why}) failed"), &e),
                }
            }
            Msg::Timer {
                id,
                generation,
                kind,
            } => {
                let Some(inst) = self.instances.get_mut(&id) else {
                    return;
                };
                if inst.generation != generation {
                    return;
                }
                match (kind, inst.phase) {
                    (TimerKind::Restart, Phase::Waiting) => self.spawn_start(&id),
                    (TimerKind::RetryKill, Phase::Held) => {
                        let action = inst
                            .supervisor
                            .retry_kill(&mut self.limiter, Instant::now());
                        self.execute(&id, vec![action]).await;
                    }
                    _ => {}
                }
            }
        }
    }

    fn on_started(
        &mut self,
        id: InstanceId,
        generation: u64,
        result: Result<ContainerInfo, DockerError>,
    ) {
        let current = self
            .instances
            .get(&id)
            .is_some_and(|i| i.generation == generation && i.phase == Phase::Starting);
        if !current {
            if let Ok(info) = result {
                // The assignment went away (or changed) while the container was being made.
                self.spawn_remove(
                    info.id,
                    None,
                    Duration::ZERO,
                    "started for a stale assignment",
                );
            }
            return;
        }
        match result {
            Ok(info) => {
                AgentStats::bump(&self.p.stats.started);
                if let Some(inst) = self.instances.get_mut(&id) {
                    tracing::info!(instance = %id, container = %info.id, port = inst.port, "container started");
                    inst.container = Some(info.id);
                    inst.start_backoff.reset();
                }
                self.watch_health(&id);
            }
            Err(e) => {
                AgentStats::bump(&self.p.stats.start_failures);
                self.error(&format!("starting {id} failed"), &e);
                let new_port = if matches!(e, DockerError::PortTaken { .. }) {
                    match self.p.pool.allocate() {
                        Ok(p) => Some(p),
                        Err(e) => {
                            self.error("no other port free", &e);
                            None
                        }
                    }
                } else {
                    None
                };
                let Some(inst) = self.instances.get_mut(&id) else {
                    return;
                };
                if let Some(p) = new_port {
                    // The old port is held by someone else; it stays out of the pool.
                    inst.port = p;
                }
                inst.phase = Phase::Waiting;
                let delay = inst.start_backoff.next_delay();
                let generation = inst.bump();
                self.timer(id, generation, TimerKind::Restart, delay);
            }
        }
    }

    // ------------------------------------------------------------------ actions

    async fn execute(&mut self, id: &InstanceId, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Register => self.register(id).await,
                Action::Deregister => self.deregister(id).await,
                Action::Restart { after } => {
                    let Some(inst) = self.instances.get_mut(id) else {
                        return;
                    };
                    AgentStats::bump(&self.p.stats.restarts);
                    tracing::info!(instance = %id, ?after, "restart scheduled");
                    inst.phase = Phase::Waiting;
                    let generation = inst.bump();
                    self.timer(id.clone(), generation, TimerKind::Restart, after);
                }
                Action::Remove => {
                    let Some(inst) = self.instances.get_mut(id) else {
                        return;
                    };
                    AgentStats::bump(&self.p.stats.removed);
                    tracing::info!(instance = %id, "removing container (policy remove)");
                    inst.phase = Phase::Stopped;
                    inst.bump();
                    if let Some(c) = inst.container.take() {
                        self.spawn_remove(c, None, Duration::ZERO, "policy remove");
                    }
                }
                Action::Hold { retry_after } => {
                    let Some(inst) = self.instances.get_mut(id) else {
                        return;
                    };
                    AgentStats::bump(&self.p.stats.kills_held);
                    tracing::warn!(instance = %id, ?retry_after, "kill limit reached; holding the unhealthy container (deregistered)");
                    inst.phase = Phase::Held;
                    let generation = inst.generation;
                    self.timer(id.clone(), generation, TimerKind::RetryKill, retry_after);
                }
            }
        }
    }

    async fn register(&mut self, id: &InstanceId) {
        let Some(inst) = self.instances.get(id) else {
            return;
        };
        let (app, version, addr) = (
            inst.assignment.app.clone(),
            inst.assignment.version.clone(),
            inst.addr(self.p.config.ip),
        );
        let mut result = self.p.registry.register(&app, &version, id, addr).await;
        if let Err(ZkError::AlreadyRegistered { path, existing }) = &result {
            // Left by this host's previous session (agent restart): take it over.
            tracing::warn!(%path, %existing, "registration of an earlier session found; replacing it");
            if let Err(e) = self.p.registry.deregister(&app, &version, id).await {
                tracing::debug!(error = %e, "deregister before re-register");
            }
            result = self.p.registry.register(&app, &version, id, addr).await;
        }
        match result {
            Ok(()) => {
                AgentStats::bump(&self.p.stats.registered);
                tracing::info!(instance = %id, %addr, "registered");
            }
            Err(e) => self.error(&format!("registering {id} failed"), &e),
        }
    }

    async fn deregister(&mut self, id: &InstanceId) {
        let Some(inst) = self.instances.get(id) else {
            return;
        };
        let (app, version) = (inst.assignment.app.clone(), inst.assignment.version.clone());
        match self.p.registry.deregister(&app, &version, id).await {
            Ok(()) => {
                AgentStats::bump(&self.p.stats.deregistered);
                tracing::info!(instance = %id, "deregistered");
            }
            Err(ZkError::NotRegistered { .. }) => {}
            Err(e) => self.error(&format!("deregistering {id} failed"), &e),
        }
    }

    /// Starts the health checker of the instance's current container.
    fn watch_health(&mut self, id: &InstanceId) {
        let ip = self.p.config.ip;
        let tx = self.health_tx.clone();
        if let Some(inst) = self.instances.get_mut(id) {
            inst.phase = Phase::Running;
            let generation = inst.bump();
            let checker = HealthChecker::http(inst.addr(ip), &inst.assignment.health);
            inst.health = Some(checker.spawn((id.clone(), generation), tx));
        }
    }

    fn spawn_start(&mut self, id: &InstanceId) {
        let c = &self.p.config;
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        inst.phase = Phase::Starting;
        let generation = inst.generation;
        let old = inst.container.take();
        let mut spec =
            RunSpec::from_assignment(&inst.assignment, id.clone(), &c.host_id, c.ip, inst.port);
        spec.extra_labels = c.container_labels.clone();
        let job = tasks::start_container(self.p.docker.clone(), c.registry_auth.clone(), spec, old);
        let (tx, id) = (self.tx.clone(), id.clone());
        tokio::spawn(async move {
            let result = job.await;
            // A closed channel means the agent stopped: nothing left to tell.
            let _ = tx
                .send(Msg::Started {
                    id,
                    generation,
                    result,
                })
                .await;
        });
    }

    fn spawn_remove(
        &mut self,
        container: String,
        port: Option<u16>,
        grace: Duration,
        why: &'static str,
    ) {
        if !self.removing.insert(container.clone()) {
            return;
        }
        let job = tasks::remove_container(self.p.docker.clone(), container.clone(), grace);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = job.await;
            // A closed channel means the agent stopped: nothing left to tell.
            let _ = tx
                .send(Msg::Removed {
                    container,
                    port,
                    why,
                    result,
                })
                .await;
        });
    }

    fn timer(&self, id: InstanceId, generation: u64, kind: TimerKind, after: Duration) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            // A closed channel means the agent stopped: nothing left to do.
            let _ = tx
                .send(Msg::Timer {
                    id,
                    generation,
                    kind,
                })
                .await;
        });
    }
}
