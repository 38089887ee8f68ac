//! What the loop does when something reports: a health state change, a Docker die/oom
//! event of a container of a unit (main or sidecar), a finished start or remove job, a due
//! timer. Each handler ends by writing the instance's status node if it changed.

use std::time::{SystemTime, UNIX_EPOCH};

use caas_core::InstanceId;
use tokio::time::Instant;

use super::instance::Phase;
use super::run::{Key, Msg, State, TimerKind};
use super::stats::AgentStats;
use super::tasks::{StartFailure, UnitStarted};
use crate::docker::{ContainerEvent, DockerError, EventKind};
use crate::health::{HealthEvent, HealthState};

/// Why a container of a unit ended, as the status shows it.
fn exit_reason(kind: EventKind, sidecar: Option<&str>) -> String {
    let what = match sidecar {
        Some(name) => format!("sidecar {name}"),
        None => "container".to_owned(),
    };
    match kind {
        EventKind::Die {
            exit_code: Some(code),
        } => format!("{what} exited (code {code})"),
        EventKind::Die { exit_code: None } => format!("{what} exited"),
        EventKind::Oom => format!("{what} was killed: out of memory"),
        EventKind::Start => format!("{what} started"),
    }
}

/// How many exits of unowned containers are remembered (see `State::recent_exits`).
const RECENT_EXITS: usize = 64;

fn now_ms() -> Option<u64> {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

impl State {
    pub(super) async fn on_health(&mut self, ev: HealthEvent<Key>) {
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
        match ev.state {
            HealthState::Healthy => inst.message = None,
            HealthState::Unhealthy => {
                inst.message = Some(format!(
                    "health check failed: {}",
                    ev.last_error.as_deref().unwrap_or("no answer")
                ));
            }
            HealthState::Starting => {}
        }
        tracing::info!(instance = %id, state = ?ev.state, error = ?ev.last_error, "health changed");
        let actions = inst
            .supervisor
            .on_health(ev.state, &mut self.limiter, Instant::now());
        self.execute(&id, actions).await;
        self.sync_status(&id).await;
    }

    /// A container of a running unit died: deregister at once, then restart or remove the
    /// whole unit per policy.
    pub(super) async fn on_docker_event(&mut self, ev: ContainerEvent) {
        if ev.kind == EventKind::Start {
            return;
        }
        let owner = self.instances.values_mut().find_map(|i| {
            let sidecar = i.owns(&ev.id)?.map(str::to_owned);
            Some((i, sidecar))
        });
        let Some((inst, sidecar)) = owner.filter(|(i, _)| i.phase.is_up()) else {
            // Perhaps a unit still being started: remembered for its start report.
            if self.recent_exits.len() == RECENT_EXITS {
                self.recent_exits.pop_front();
            }
            self.recent_exits.push_back((ev.id, ev.kind));
            return;
        };
        let id = inst.id.clone();
        let why = exit_reason(ev.kind, sidecar.as_deref());
        tracing::warn!(instance = %id, container = %ev.id, %why, "unit lost a container");
        AgentStats::bump(&self.p.stats.exits);
        let actions = inst.exited(why, Instant::now());
        self.execute(&id, actions).await;
        self.sync_status(&id).await;
    }

    pub(super) async fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Started {
                id,
                generation,
                result,
            } => self.on_started(id, generation, result).await,
            Msg::Removed {
                containers,
                port,
                why,
                result,
                instance,
            } => {
                for c in &containers {
                    self.removing.remove(c);
                }
                if let Err(e) = &result {
                    self.error(&format!("removing {containers:?} ({why}) failed"), e);
                }
                match instance {
                    Some((id, generation))
                        if self.instances.get(&id).is_some_and(|i| {
                            i.phase == Phase::Removing && i.generation == generation
                        }) =>
                    {
                        tracing::info!(instance = %id, "instance removed");
                        self.forget(&id, result.is_ok()).await;
                        // Its assignment may have come back meanwhile.
                        self.changed.notify_one();
                    }
                    _ => {
                        if let (Ok(()), Some(p)) = (&result, port) {
                            self.p.pool.free(p);
                        }
                    }
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
                self.sync_status(&id).await;
            }
        }
    }

    /// A container of a unit that died before the unit's start was reported (its event
    /// came first): the unit is treated as exited at once, not left to the health checker.
    async fn exited_while_starting(&mut self, id: &InstanceId) {
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        let found = self.recent_exits.iter().find_map(|(c, kind)| {
            let sidecar = inst.owns(c)?;
            Some(exit_reason(*kind, sidecar))
        });
        let Some(why) = found else {
            return;
        };
        tracing::warn!(instance = %id, %why, "unit lost a container while starting");
        AgentStats::bump(&self.p.stats.exits);
        let actions = inst.exited(why, Instant::now());
        self.execute(id, actions).await;
    }

    async fn on_started(
        &mut self,
        id: InstanceId,
        generation: u64,
        result: Result<UnitStarted, StartFailure>,
    ) {
        let current = self
            .instances
            .get(&id)
            .is_some_and(|i| i.generation == generation && i.phase == Phase::Starting);
        if !current {
            if let Ok(unit) = result {
                // The assignment went away (or changed) while the unit was being made.
                let all = unit.sidecars.into_values().chain([unit.main.id]).collect();
                self.spawn_remove(
                    all,
                    None,
                    super::tasks::Stop::NOW,
                    "started for a stale assignment",
                    None,
                );
            }
            return;
        }
        match result {
            Ok(unit) => {
                AgentStats::bump(&self.p.stats.started);
                if let Some(inst) = self.instances.get_mut(&id) {
                    tracing::info!(instance = %id, container = %unit.main.id, sidecars = unit.sidecars.len(), port = inst.port, "unit started");
                    inst.started_at_ms = unit.main.started_at_ms.or_else(now_ms);
                    inst.container = Some(unit.main.id);
                    inst.sidecars = unit.sidecars;
                    inst.start_backoff.reset();
                    inst.start_failed = false;
                    inst.message = None;
                }
                self.watch_health(&id);
                self.exited_while_starting(&id).await;
            }
            Err(e) => {
                AgentStats::bump(&self.p.stats.start_failures);
                self.error(&format!("starting {id} failed"), &e);
                let new_port = if matches!(e, StartFailure::Run(DockerError::PortTaken { .. })) {
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
                inst.start_failed = true;
                inst.message = Some(e.to_string());
                let delay = inst.start_backoff.next_delay();
                let generation = inst.bump();
                self.timer(id.clone(), generation, TimerKind::Restart, delay);
            }
        }
        self.sync_status(&id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_name_the_container() {
        for (kind, sidecar, want) in [
            (
                EventKind::Die {
                    exit_code: Some(137),
                },
                None,
                "container exited (code 137)",
            ),
            (
                EventKind::Die { exit_code: None },
                Some("cache"),
                "sidecar cache exited",
            ),
            (
                EventKind::Oom,
                Some("cache"),
                "sidecar cache was killed: out of memory",
            ),
        ] {
            assert_eq!(exit_reason(kind, sidecar), want);
        }
    }
}
