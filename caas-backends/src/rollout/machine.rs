//! The rollout as a pure function: [`next`] takes the stored state, what the store shows
//! now ([`Observation`]) and the time, and says what the state becomes and what to change
//! with it ([`Action`]s). The driver ([`super::controller`]) commits both together, under
//! the rollout node's version, or nothing.

use std::collections::BTreeMap;

use caas_core::Version;

use super::state::{Outcome, Phase, RolloutState, Routing};
use crate::scheduler::Deployment;
use crate::scheduler::status::{DeploymentStatus, Health, Phase as DeployPhase};

/// What the store shows of one version of the app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionView {
    /// Its deployment node exists.
    pub deployed: bool,
    /// Its status node (written by the schedulers), if any.
    pub status: Option<DeploymentStatus>,
}

impl VersionView {
    /// Every wanted instance placed and healthy (registered).
    pub fn healthy(&self) -> bool {
        self.deployed
            && self.status.as_ref().is_some_and(|s| {
                s.phase == DeployPhase::Running
                    && s.desired > 0
                    && s.instances.len() as u64 == s.desired
                    && s.instances.iter().all(|i| i.health == Health::Healthy)
            })
    }

    /// Why it is not healthy, for the rollout's `reason`.
    pub fn why_not_healthy(&self) -> String {
        if !self.deployed {
            return "its deployment is gone".into();
        }
        let Some(s) = &self.status else {
            return "no scheduler has placed it yet (no status node)".into();
        };
        let healthy = s
            .instances
            .iter()
            .filter(|i| i.health == Health::Healthy)
            .count();
        let mut out = format!(
            "{healthy} of {} instances healthy, phase {}",
            s.desired,
            serde_json::to_value(s.phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        );
        if let Some(m) = &s.message {
            out.push_str(": ");
            out.push_str(m);
        }
        for i in s.instances.iter().filter(|i| i.health != Health::Healthy) {
            out.push_str(&format!("; {} on {}: {}", i.id, i.host, i.state));
        }
        out
    }
}

/// What the store shows, read by the driver before each decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// The version being replaced.
    pub from: VersionView,
    /// The version replacing it.
    pub to: VersionView,
}

/// A change the driver commits with the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the deployment node of `version`.
    Deploy {
        /// The version.
        version: Version,
        /// Its deployment.
        deployment: Deployment,
    },
    /// Set the app's `default_version` and `weights` (the rest of its spec unchanged).
    Route(Routing),
    /// Remove `version`: its assignments, allocations, status and deployment node.
    Undeploy(Version),
}

/// The decision: the new state and what to change with it. `state == None`: nothing to do
/// now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The state to store, when it changes.
    pub state: Option<RolloutState>,
    /// What to change in the same commit.
    pub actions: Vec<Action>,
}

impl Decision {
    fn wait() -> Self {
        Self {
            state: None,
            actions: Vec::new(),
        }
    }
}

/// The routing of `{appId}.{domain}` with `percent` of `from`'s share moved to `to`.
///
/// With no weights before (the app routed by `default_version`), the split is
/// `{from: 100 - p, to: p}`; with weights, `from`'s weight is split in the same proportion
/// (every weight scaled by 100 to stay an integer) and other versions keep their share. At
/// 0 the routing is as before, with `default_version` pinned to `from` when only weights or
/// nothing decided it (so `to`'s instances get no traffic when they register); at 100,
/// `to` takes `from`'s place (weight and default) and `from` is gone.
pub fn routing_at(before: &Routing, from: &Version, to: &Version, percent: u32) -> Routing {
    let percent = percent.min(100);
    let mut out = before.clone();
    if percent == 100 {
        if let Some(w) = out.weights.remove(from) {
            out.weights.insert(to.clone(), w);
        }
        if before.default_version.as_ref().is_none_or(|d| d == from) {
            out.default_version = Some(to.clone());
        }
        return out;
    }
    if before.weights.is_empty() {
        if before.default_version.is_none() {
            out.default_version = Some(from.clone());
        }
        if percent > 0 {
            out.weights = BTreeMap::from([(from.clone(), 100 - percent), (to.clone(), percent)]);
        }
        return out;
    }
    if percent == 0 {
        return out;
    }
    let share = before.weights.get(from).copied().unwrap_or(0);
    out.weights = before
        .weights
        .iter()
        .filter(|(v, _)| *v != from && *v != to)
        .map(|(v, w)| (v.clone(), w.saturating_mul(100)))
        .collect();
    out.weights
        .insert(from.clone(), share.saturating_mul(100 - percent));
    out.weights
        .insert(to.clone(), share.saturating_mul(percent));
    out
}

fn moved(state: &RolloutState, now_ms: u64, phase: Phase) -> RolloutState {
    let mut s = state.clone();
    s.phase = phase;
    s.phase_since_ms = now_ms;
    s.updated_ms = now_ms;
    s
}

fn finished(
    state: &RolloutState,
    now_ms: u64,
    phase: Phase,
    outcome: Outcome,
    reason: Option<String>,
) -> RolloutState {
    let mut s = moved(state, now_ms, phase);
    s.outcome = Some(outcome);
    s.reason = reason;
    s
}

/// Back to `before`, `to` removed (when it is there), in one commit.
fn roll_back(state: &RolloutState, obs: &Observation, now_ms: u64, reason: String) -> Decision {
    let mut actions = vec![Action::Route(state.before.clone())];
    if obs.to.deployed {
        actions.push(Action::Undeploy(state.to.clone()));
    }
    Decision {
        state: Some(finished(
            state,
            now_ms,
            Phase::RolledBack,
            Outcome::RolledBack,
            Some(reason),
        )),
        actions,
    }
}

/// Moves to step `index`: its routing, and the phase it leads to.
fn step_to(state: &RolloutState, now_ms: u64, index: usize) -> Decision {
    let percent = state.steps.get(index).copied().unwrap_or(100);
    let phase = if percent >= 100 {
        Phase::Draining
    } else {
        Phase::Shifting
    };
    let mut s = moved(state, now_ms, phase);
    s.step = Some(index);
    Decision {
        state: Some(s),
        actions: vec![Action::Route(routing_at(
            &state.before,
            &state.from,
            &state.to,
            percent,
        ))],
    }
}

fn secs(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The next move of a rollout (see the module docs).
pub fn next(state: &RolloutState, obs: &Observation, now_ms: u64) -> Decision {
    let elapsed = now_ms.saturating_sub(state.phase_since_ms);
    let (from, to) = (&state.from, &state.to);
    match state.phase {
        Phase::Done | Phase::RolledBack | Phase::Failed => Decision::wait(),
        Phase::Starting => {
            if obs.to.deployed {
                let why = format!("{to} is already deployed; remove it or pick another version");
                return Decision {
                    state: Some(finished(
                        state,
                        now_ms,
                        Phase::Failed,
                        Outcome::Failed,
                        Some(why),
                    )),
                    actions: Vec::new(),
                };
            }
            if !obs.from.deployed {
                let why = format!("{from} is no longer deployed");
                return Decision {
                    state: Some(finished(
                        state,
                        now_ms,
                        Phase::Failed,
                        Outcome::Failed,
                        Some(why),
                    )),
                    actions: Vec::new(),
                };
            }
            Decision {
                state: Some(moved(state, now_ms, Phase::WaitingHealthy)),
                actions: vec![
                    Action::Deploy {
                        version: to.clone(),
                        deployment: state.deployment.clone(),
                    },
                    Action::Route(routing_at(&state.before, from, to, 0)),
                ],
            }
        }
        Phase::WaitingHealthy => {
            if obs.to.healthy() {
                return step_to(state, now_ms, 0);
            }
            if !obs.to.deployed {
                return roll_back(state, obs, now_ms, format!("{to}'s deployment was removed"));
            }
            if elapsed >= state.health_deadline_ms {
                let why = format!(
                    "{to} not healthy within {}: {}",
                    secs(state.health_deadline_ms),
                    obs.to.why_not_healthy()
                );
                return roll_back(state, obs, now_ms, why);
            }
            Decision::wait()
        }
        Phase::Shifting | Phase::Draining => {
            let percent = state.percent();
            if !obs.to.healthy() {
                let why = format!(
                    "{to} became unhealthy with {percent}% of the traffic: {}",
                    obs.to.why_not_healthy()
                );
                return roll_back(state, obs, now_ms, why);
            }
            if state.phase == Phase::Shifting {
                if elapsed < state.step_wait_ms {
                    return Decision::wait();
                }
                return step_to(state, now_ms, state.step.map_or(0, |i| i + 1));
            }
            if elapsed < state.drain_wait_ms {
                return Decision::wait();
            }
            let mut actions = Vec::new();
            if obs.from.deployed {
                actions.push(Action::Undeploy(from.clone()));
            }
            Decision {
                state: Some(finished(
                    state,
                    now_ms,
                    Phase::Done,
                    Outcome::Succeeded,
                    None,
                )),
                actions,
            }
        }
        Phase::RollingBack => {
            let why = state
                .reason
                .clone()
                .unwrap_or_else(|| "rollback requested".into());
            roll_back(state, obs, now_ms, why)
        }
    }
}
