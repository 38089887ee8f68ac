//! What the agent does to one instance: the [`Supervisor`](crate::Supervisor)'s actions
//! (register, deregister, restart, remove, hold), its health checker, the Docker jobs and
//! timers it spawns, and the write of its status node when the status changed.

use std::time::Duration;

use caas_core::InstanceId;

use super::instance::Phase;
use super::run::{Key, Msg, State, TimerKind};
use super::stats::AgentStats;
use super::status::status_of;
use super::tasks;
use crate::docker::{RunSpec, SidecarSpec};
use crate::health::{Action, HealthChecker};
use crate::zk::layout::instance_path;
use crate::zk::registry::RegistryError;

impl State {
    pub(super) async fn execute(&mut self, id: &InstanceId, actions: Vec<Action>) {
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
                    inst.start_failed = false;
                    inst.restarts = inst.restarts.saturating_add(1);
                    let generation = inst.bump();
                    self.timer(id.clone(), generation, TimerKind::Restart, after);
                }
                Action::Remove => {
                    let Some(inst) = self.instances.get_mut(id) else {
                        return;
                    };
                    AgentStats::bump(&self.p.stats.removed);
                    tracing::info!(instance = %id, "removing the unit (policy remove)");
                    inst.phase = Phase::Stopped;
                    inst.message = Some(format!(
                        "removed by its failure policy: {}",
                        inst.message.as_deref().unwrap_or("unhealthy")
                    ));
                    inst.bump();
                    let containers = inst.take_containers();
                    if !containers.is_empty() {
                        self.spawn_remove(
                            containers,
                            None,
                            tasks::Stop::NOW,
                            "policy remove",
                            None,
                        );
                    }
                }
                Action::Hold { retry_after } => {
                    let Some(inst) = self.instances.get_mut(id) else {
                        return;
                    };
                    AgentStats::bump(&self.p.stats.kills_held);
                    tracing::warn!(instance = %id, ?retry_after, "kill limit reached; holding the unhealthy unit (deregistered)");
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
        if let Err(RegistryError::AlreadyRegistered { path, existing }) = &result {
            // Left by this host's previous session or lease (agent restart): take it over.
            tracing::warn!(%path, %existing, "registration of an earlier session found; replacing it");
            if let Err(e) = self.p.registry.remove_stale(&app, &version, id).await {
                tracing::debug!(error = %e, "removing the stale registration before re-register");
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
            Err(RegistryError::NotRegistered { .. }) => {}
            Err(e) => self.error(&format!("deregistering {id} failed"), &e),
        }
    }

    /// Deregisters the instance if its supervisor registered it (before a removal).
    pub(super) async fn deregister_if_registered(&mut self, id: &InstanceId) {
        if self
            .instances
            .get(id)
            .is_some_and(|i| i.supervisor.is_registered())
        {
            self.deregister(id).await;
        }
    }

    /// Registered instances whose node is not owned by the session (a failed write) are
    /// registered again.
    pub(super) async fn heal_registrations(&mut self) {
        let owned = self.p.registry.owned();
        let missing: Vec<InstanceId> = self
            .instances
            .values()
            .filter(|i| i.phase == Phase::Running && i.supervisor.is_registered())
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

    /// Writes the instance's status node if what it should say changed.
    pub(super) async fn sync_status(&mut self, id: &InstanceId) {
        let ip = self.p.config.ip;
        let Some(inst) = self.instances.get(id) else {
            return;
        };
        let status = status_of(inst, ip);
        if inst.published.as_ref() == Some(&status) {
            return;
        }
        match self.p.hosts.put_status(self.host(), id, &status).await {
            Ok(()) => {
                AgentStats::bump(&self.p.stats.status_writes);
                tracing::debug!(instance = %id, state = ?status.state, "status written");
                if let Some(inst) = self.instances.get_mut(id) {
                    inst.published = Some(status);
                }
            }
            // Written again by the next reconcile (the published copy is unchanged).
            Err(e) => self.error(&format!("cannot write the status of {id}"), &e),
        }
    }

    /// Starts the health checker of the unit's main container.
    pub(super) fn watch_health(&mut self, id: &InstanceId) {
        let ip = self.p.config.ip;
        let tx = self.health_tx.clone();
        if let Some(inst) = self.instances.get_mut(id) {
            inst.phase = Phase::Running;
            let generation = inst.bump();
            let checker = HealthChecker::http(inst.addr(ip), &inst.assignment.health);
            inst.health = Some(checker.spawn((id.clone(), generation), tx));
        }
    }

    /// Spawns the job that removes the unit's old containers and starts a new unit.
    pub(super) fn spawn_start(&mut self, id: &InstanceId) {
        let c = &self.p.config;
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        inst.phase = Phase::Starting;
        let generation = inst.generation;
        let old = inst.take_containers();
        let a = &inst.assignment;
        let mut spec = RunSpec::from_assignment(a, id.clone(), &c.host_id, c.ip, inst.port);
        spec.extra_labels = c.container_labels.clone();
        let sidecars = a
            .sidecars
            .iter()
            .map(|s| {
                let mut spec = SidecarSpec::from_assignment(a, s, id.clone(), &c.host_id, "");
                spec.extra_labels = c.container_labels.clone();
                spec
            })
            .collect();
        let job = tasks::start_unit(
            self.p.docker.clone(),
            c.registry_auth.clone(),
            spec,
            sidecars,
            old,
        );
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

    /// Spawns the job that stops and removes `containers`: after `stop.drain` (the
    /// gateways stop sending to a deregistered instance meanwhile), SIGTERM, and SIGKILL
    /// after `stop.grace`.
    pub(super) fn spawn_remove(
        &mut self,
        containers: Vec<String>,
        port: Option<u16>,
        stop: tasks::Stop,
        why: &'static str,
        instance: Option<Key>,
    ) {
        let containers: Vec<String> = containers
            .into_iter()
            .filter(|c| self.removing.insert(c.clone()))
            .collect();
        if containers.is_empty() && instance.is_none() {
            return;
        }
        let job = tasks::remove_containers(self.p.docker.clone(), containers.clone(), stop);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = job.await;
            // A closed channel means the agent stopped: nothing left to tell.
            let _ = tx
                .send(Msg::Removed {
                    containers,
                    port,
                    why,
                    result,
                    instance,
                })
                .await;
        });
    }

    pub(super) fn timer(&self, id: InstanceId, generation: u64, kind: TimerKind, after: Duration) {
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
