//! Executing the reconcile plan's [`Step`]s: the Docker and ZooKeeper side of each decision
//! [`plan`](super::plan::plan) made.

use std::collections::BTreeMap;
use std::time::Duration;

use caas_core::InstanceId;
use tokio::time::Instant;

use super::instance::{Instance, Phase};
use super::plan::{Step, adoptable};
use super::run::State;
use super::stats::AgentStats;
use super::tasks::Stop;
use crate::assignment::Assignment;
use crate::docker::{ContainerInfo, ManagedContainer};
use crate::health::Backoff;

impl State {
    /// Executes one step of the plan.
    pub(super) async fn apply(&mut self, step: Step) {
        match step {
            Step::Remove { id } => self.remove_instance(&id, "assignment deleted").await,
            Step::Replace { id, assignment } => self.replace(&id, assignment).await,
            Step::RemoveOrphan {
                container,
                port,
                why,
            } => {
                tracing::info!(%container, why, "removing orphan container");
                AgentStats::bump(&self.p.stats.orphans_removed);
                self.spawn_remove(vec![container], port, Stop::NOW, why, None);
            }
            Step::Exited { id, why } => {
                let Some(inst) = self.instances.get_mut(&id) else {
                    return;
                };
                tracing::warn!(instance = %id, %why, "unit lost a container");
                AgentStats::bump(&self.p.stats.exits);
                let actions = inst.exited(why, Instant::now());
                self.execute(&id, actions).await;
                self.sync_status(&id).await;
            }
            Step::Adopt {
                id,
                assignment,
                main,
                sidecars,
            } => self.adopt(id, assignment, main, sidecars).await,
            Step::Start { id, assignment } => self.start_new(id, assignment).await,
            Step::DeleteStatus { name } => {
                tracing::info!(status = %name, "deleting the status node of an instance this host does not have");
                if let Err(e) = self.p.hosts.delete_status(self.host(), &name).await {
                    self.error(&format!("cannot delete the status node {name}"), &e);
                }
            }
        }
    }

    pub(super) fn new_instance(&self, id: InstanceId, a: Assignment, port: u16) -> Instance {
        let c = &self.p.config;
        Instance::new(
            id,
            a,
            port,
            Backoff::new(c.restart_backoff, c.restart_backoff_max),
            c.stable_after,
        )
    }

    /// Tracks a new assignment and starts its unit on a port from the pool.
    async fn start_new(&mut self, id: InstanceId, a: Assignment) {
        let port = match self.p.pool.allocate() {
            Ok(p) => p,
            Err(e) => return self.error(&format!("cannot start {id}"), &e),
        };
        let inst = self.new_instance(id.clone(), a, port);
        self.instances.insert(id.clone(), inst);
        self.spawn_start(&id);
        self.sync_status(&id).await;
    }

    /// The assignment is gone: deregister, status `removing`, stop and remove the unit; the
    /// instance is forgotten (and its status node deleted) when the removal job reports.
    async fn remove_instance(&mut self, id: &InstanceId, why: &'static str) {
        let stop = self.graceful_stop(id);
        self.deregister_if_registered(id).await;
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        tracing::info!(instance = %id, why, "removing instance");
        AgentStats::bump(&self.p.stats.removed);
        inst.phase = Phase::Removing;
        let generation = inst.bump();
        let containers = inst.take_containers();
        if containers.is_empty() {
            return self.forget(id, true).await;
        }
        self.sync_status(id).await;
        self.spawn_remove(containers, None, stop, why, Some((id.clone(), generation)));
    }

    /// How to stop an instance that is going away: an instance gateways may be sending to
    /// (registered) keeps running for the drain delay after its deregistration, then gets
    /// SIGTERM and the stop timeout to finish what it serves; others only the stop timeout.
    fn graceful_stop(&self, id: &InstanceId) -> Stop {
        let registered = self
            .instances
            .get(id)
            .is_some_and(|i| i.supervisor.is_registered());
        Stop {
            drain: if registered {
                self.p.config.drain_delay
            } else {
                Duration::ZERO
            },
            grace: self.p.config.stop_timeout,
        }
    }

    /// Forgets a removed instance: its port back to the pool (unless its containers could
    /// not be removed: then the orphan removal gives it back), its status node deleted.
    pub(super) async fn forget(&mut self, id: &InstanceId, removed: bool) {
        let Some(inst) = self.instances.remove(id) else {
            return;
        };
        if removed {
            self.p.pool.free(inst.port);
        }
        if let Err(e) = self.p.hosts.delete_status(self.host(), id.as_str()).await {
            self.error(&format!("cannot delete the status node of {id}"), &e);
        }
    }

    /// The assignment changed: the old unit is deregistered and removed (its port goes back
    /// once it is), and a unit of the new assignment starts at once.
    async fn replace(&mut self, id: &InstanceId, a: Assignment) {
        let stop = self.graceful_stop(id);
        self.deregister_if_registered(id).await;
        let Some(mut old) = self.instances.remove(id) else {
            return;
        };
        tracing::info!(instance = %id, "assignment changed; replacing the unit");
        AgentStats::bump(&self.p.stats.removed);
        old.bump();
        let containers = old.take_containers();
        if containers.is_empty() {
            self.p.pool.free(old.port);
        } else {
            let port = Some(old.port);
            self.spawn_remove(containers, port, stop, "assignment changed", None);
        }
        self.start_new(id.clone(), a).await;
        if let Some(inst) = self.instances.get_mut(id) {
            // The node still holds the old unit's status: the next write is a change.
            inst.published = old.published;
        }
    }

    /// Takes over a unit found by label (after an agent restart) if it still matches its
    /// assignment; otherwise removes its containers and starts the assignment fresh.
    async fn adopt(
        &mut self,
        id: InstanceId,
        a: Assignment,
        main: ManagedContainer,
        sidecars: BTreeMap<String, ManagedContainer>,
    ) {
        let main_info = match self.p.docker.inspect(&main.id).await {
            Ok(i) => i,
            Err(e) => return self.error(&format!("adopt {id}: inspect {} failed", main.id), &e),
        };
        let mut side_infos: BTreeMap<String, ContainerInfo> = BTreeMap::new();
        for (name, c) in &sidecars {
            match self.p.docker.inspect(&c.id).await {
                Ok(i) => {
                    side_infos.insert(name.clone(), i);
                }
                Err(e) => {
                    return self.error(&format!("adopt {id}: inspect sidecar {} failed", c.id), &e);
                }
            }
        }
        let c = &self.p.config;
        let port = match adoptable(&a, &main_info, &side_infos, c.ip, c.ports) {
            Ok(port) => port,
            Err(why) => {
                tracing::info!(instance = %id, container = %main.id, %why, "found unit differs from its assignment; replacing it");
                for c in sidecars.values().chain(std::iter::once(&main)) {
                    self.remove_orphan(c, "differs from its assignment");
                }
                return self.start_new(id, a).await;
            }
        };
        self.p.pool.recover([port]);
        let mut inst = self.new_instance(id.clone(), a, port);
        inst.container = Some(main.id.clone());
        inst.sidecars = sidecars
            .iter()
            .map(|(n, c)| (n.clone(), c.id.clone()))
            .collect();
        inst.started_at_ms = main_info.started_at_ms;
        AgentStats::bump(&self.p.stats.adopted);
        let stopped = std::iter::once(&main)
            .chain(sidecars.values())
            .find(|c| !c.running);
        tracing::info!(instance = %id, container = %main.id, sidecars = sidecars.len(), port, running = stopped.is_none(), "adopted unit");
        match stopped {
            None => {
                self.instances.insert(id.clone(), inst);
                self.watch_health(&id);
            }
            Some(c) => {
                let why = match c.sidecar() {
                    Some(name) => format!("sidecar {name} found stopped"),
                    None => "container found stopped".to_owned(),
                };
                let actions = inst.exited(why, Instant::now());
                self.instances.insert(id.clone(), inst);
                self.execute(&id, actions).await;
            }
        }
        self.sync_status(&id).await;
    }

    fn remove_orphan(&mut self, c: &ManagedContainer, why: &'static str) {
        tracing::info!(container = %c.id, instance = ?c.instance(), why, "removing orphan container");
        AgentStats::bump(&self.p.stats.orphans_removed);
        // Its port goes back to the pool unless a tracked instance owns it.
        let port = c
            .port()
            .filter(|p| !self.instances.values().any(|i| i.port == *p));
        self.spawn_remove(vec![c.id.clone()], port, Stop::NOW, why, None);
    }
}
