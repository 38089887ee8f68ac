//! The rollout's decisions, phase by phase.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use caas_core::{AppId, InstanceId, Version};

use super::machine::{Action, Observation, VersionView, next, routing_at};
use super::state::{Kind, Outcome, Phase, RolloutState, Routing};
use crate::scheduler::Deployment;
use crate::scheduler::status::{DeploymentStatus, Health, InstanceReport, Phase as DeployPhase};

fn v(s: &str) -> Version {
    Version::new(s).unwrap()
}

const T0: u64 = 1_000_000;

fn state(phase: Phase) -> RolloutState {
    RolloutState {
        app: AppId::new("hello").unwrap(),
        from: v("v1"),
        to: v("v2"),
        kind: Kind::Update,
        deployment: Deployment::new("127.0.0.1:5000/hello:v2", 8080, 2),
        from_deployment: Deployment::new("127.0.0.1:5000/hello:v1", 8080, 2),
        steps: vec![10, 50, 100],
        step_wait_ms: 5_000,
        health_deadline_ms: 60_000,
        drain_wait_ms: 3_000,
        before: Routing {
            default_version: Some(v("v1")),
            weights: BTreeMap::new(),
        },
        phase,
        step: None,
        started_ms: T0,
        phase_since_ms: T0,
        updated_ms: T0,
        outcome: None,
        reason: None,
    }
}

fn at_step(phase: Phase, step: usize) -> RolloutState {
    let mut s = state(phase);
    s.step = Some(step);
    s
}

/// A status with `healthy` of `desired` instances healthy, the rest in `other` state.
fn status(desired: u64, healthy: u64, other: &str) -> DeploymentStatus {
    let instances = (0..desired)
        .map(|i| InstanceReport {
            id: InstanceId::new(&format!("hello-v2-{i}")).unwrap(),
            host: "h1".into(),
            address: None,
            state: if i < healthy { "healthy" } else { other }.into(),
            health: if i < healthy {
                Health::Healthy
            } else {
                Health::Unhealthy
            },
            draining: false,
        })
        .collect();
    DeploymentStatus {
        phase: if healthy == desired {
            DeployPhase::Running
        } else {
            DeployPhase::Deploying
        },
        desired,
        next_instance: desired,
        message: None,
        instances,
        rejected: BTreeMap::new(),
    }
}

fn up(s: DeploymentStatus) -> VersionView {
    VersionView {
        deployed: true,
        status: Some(s),
    }
}

fn obs(to: VersionView) -> Observation {
    Observation {
        from: up(status(2, 2, "")),
        to,
    }
}

fn healthy() -> Observation {
    obs(up(status(2, 2, "")))
}

fn weights(pairs: &[(&str, u32)]) -> BTreeMap<Version, u32> {
    pairs.iter().map(|(k, w)| (v(k), *w)).collect()
}

fn route(default: &str, w: &[(&str, u32)]) -> Action {
    Action::Route(Routing {
        default_version: Some(v(default)),
        weights: weights(w),
    })
}

#[test]
fn starting_writes_the_new_deployment_and_pins_the_routing() {
    let mut s = state(Phase::Starting);
    s.before.default_version = None; // routed to every version's endpoints
    let d = next(&s, &obs(VersionView::default()), T0 + 10);
    let new = d.state.unwrap();
    assert_eq!(
        (new.phase, new.phase_since_ms),
        (Phase::WaitingHealthy, T0 + 10)
    );
    assert_eq!(
        d.actions,
        vec![
            Action::Deploy {
                version: v("v2"),
                deployment: s.deployment.clone()
            },
            route("v1", &[]),
        ]
    );
}

#[test]
fn starting_fails_without_changes_when_the_versions_moved() {
    let s = state(Phase::Starting);
    let d = next(&s, &obs(up(status(1, 0, "starting"))), T0);
    let new = d.state.unwrap();
    assert_eq!(
        (new.phase, new.outcome),
        (Phase::Failed, Some(Outcome::Failed))
    );
    assert!(new.reason.unwrap().contains("v2 is already deployed"));
    assert!(d.actions.is_empty());

    let gone = Observation::default();
    let d = next(&s, &gone, T0);
    assert!(
        d.state
            .unwrap()
            .reason
            .unwrap()
            .contains("v1 is no longer deployed")
    );
    assert!(d.actions.is_empty());
}

#[test]
fn healthy_new_version_gets_the_first_step() {
    let s = state(Phase::WaitingHealthy);
    let d = next(&s, &healthy(), T0 + 1_000);
    let new = d.state.unwrap();
    assert_eq!(
        (new.phase, new.step, new.percent()),
        (Phase::Shifting, Some(0), 10)
    );
    assert_eq!(d.actions, vec![route("v1", &[("v1", 90), ("v2", 10)])]);
}

#[test]
fn waits_for_health_until_the_deadline_then_rolls_back() {
    let s = state(Phase::WaitingHealthy);
    let starting = obs(up(status(2, 1, "unhealthy")));
    assert_eq!(
        next(&s, &starting, T0 + 59_999).state,
        None,
        "within the deadline"
    );
    let d = next(&s, &starting, T0 + 60_000);
    let new = d.state.unwrap();
    assert_eq!(
        (new.phase, new.outcome),
        (Phase::RolledBack, Some(Outcome::RolledBack))
    );
    let why = new.reason.unwrap();
    assert!(
        why.contains("v2 not healthy within 60s: 1 of 2 instances healthy"),
        "{why}"
    );
    assert!(why.contains("hello-v2-1 on h1: unhealthy"), "{why}");
    assert_eq!(
        d.actions,
        vec![route("v1", &[]), Action::Undeploy(v("v2"))],
        "routing as before, v2 removed, v1 untouched"
    );
}

#[test]
fn a_new_version_never_placed_rolls_back_with_the_schedulers_reason() {
    let s = state(Phase::WaitingHealthy);
    let mut st = status(2, 0, "");
    st.instances.clear();
    st.phase = DeployPhase::Unschedulable;
    st.message = Some("cannot place 2 more instances: memory rejected h1".into());
    let d = next(&s, &obs(up(st)), T0 + 60_000);
    let why = d.state.unwrap().reason.unwrap();
    assert!(
        why.contains("phase unschedulable: cannot place 2 more instances: memory rejected h1"),
        "{why}"
    );
    // Not even a status node yet.
    let d = next(
        &s,
        &obs(VersionView {
            deployed: true,
            status: None,
        }),
        T0 + 60_000,
    );
    assert!(d.state.unwrap().reason.unwrap().contains("no status node"));
}

#[test]
fn a_new_deployment_removed_by_hand_rolls_back_at_once() {
    let s = state(Phase::WaitingHealthy);
    let d = next(&s, &obs(VersionView::default()), T0 + 1);
    assert!(
        d.state
            .unwrap()
            .reason
            .unwrap()
            .contains("v2's deployment was removed")
    );
    assert_eq!(d.actions, vec![route("v1", &[])], "nothing to undeploy");
}

#[test]
fn steps_wait_step_wait_apart() {
    let s = at_step(Phase::Shifting, 0);
    assert_eq!(next(&s, &healthy(), T0 + 4_999).state, None);
    let d = next(&s, &healthy(), T0 + 5_000);
    let new = d.state.unwrap();
    assert_eq!(
        (new.phase, new.step, new.phase_since_ms),
        (Phase::Shifting, Some(1), T0 + 5_000)
    );
    assert_eq!(d.actions, vec![route("v1", &[("v1", 50), ("v2", 50)])]);

    let d = next(&new, &healthy(), T0 + 10_000);
    let last = d.state.unwrap();
    assert_eq!(
        (last.phase, last.step, last.percent()),
        (Phase::Draining, Some(2), 100)
    );
    assert_eq!(
        d.actions,
        vec![route("v2", &[])],
        "v2 is the default, v1 has no weight"
    );
}

#[test]
fn draining_removes_the_old_version_after_the_drain_wait() {
    let s = at_step(Phase::Draining, 2);
    assert_eq!(next(&s, &healthy(), T0 + 2_999).state, None);
    let d = next(&s, &healthy(), T0 + 3_000);
    let done = d.state.unwrap();
    assert_eq!(
        (done.phase, done.outcome, done.reason),
        (Phase::Done, Some(Outcome::Succeeded), None)
    );
    assert_eq!(d.actions, vec![Action::Undeploy(v("v1"))]);
    // v1 removed by hand meanwhile: nothing to undeploy.
    let mut o = healthy();
    o.from = VersionView::default();
    assert!(next(&s, &o, T0 + 3_000).actions.is_empty());
}

#[test]
fn a_failing_new_instance_while_shifting_or_draining_rolls_back() {
    for s in [
        at_step(Phase::Shifting, 0),
        at_step(Phase::Shifting, 1),
        at_step(Phase::Draining, 2),
    ] {
        let d = next(&s, &obs(up(status(2, 1, "restarting"))), T0 + 1);
        let new = d.state.unwrap();
        assert_eq!(new.phase, Phase::RolledBack, "{:?}", s.phase);
        let why = new.reason.unwrap();
        assert!(
            why.contains(&format!(
                "v2 became unhealthy with {}% of the traffic",
                s.percent()
            )),
            "{why}"
        );
        assert!(why.contains("hello-v2-1 on h1: restarting"), "{why}");
        assert_eq!(d.actions, vec![route("v1", &[]), Action::Undeploy(v("v2"))]);
    }
}

#[test]
fn a_requested_rollback_restores_the_routing_and_removes_the_new_version() {
    let mut s = at_step(Phase::RollingBack, 1);
    s.reason = Some("rollback requested".into());
    let d = next(&s, &healthy(), T0 + 1);
    let new = d.state.unwrap();
    assert_eq!(
        (new.phase, new.reason.as_deref()),
        (Phase::RolledBack, Some("rollback requested"))
    );
    assert_eq!(d.actions, vec![route("v1", &[]), Action::Undeploy(v("v2"))]);
}

#[test]
fn finished_rollouts_do_nothing() {
    for p in [Phase::Done, Phase::RolledBack, Phase::Failed] {
        let d = next(&state(p), &healthy(), T0 + 1_000_000);
        assert_eq!((d.state, d.actions.len()), (None, 0), "{p:?}");
    }
}

#[test]
fn a_restarted_controller_resumes_from_the_stored_phase() {
    // The node as written after step 1, read back by a controller started later: the same
    // decisions follow, from the stored times (not the new process's start).
    let mut s = at_step(Phase::Shifting, 1);
    s.phase_since_ms = T0 + 5_000;
    let stored = RolloutState::from_json(&s.to_json()).unwrap();
    assert_eq!(stored, s);
    assert_eq!(next(&stored, &healthy(), T0 + 9_999).state, None);
    let d = next(&stored, &healthy(), T0 + 10_000);
    assert_eq!(d.state.unwrap().phase, Phase::Draining);
}

#[test]
fn a_whole_update_step_by_step() {
    let mut s = state(Phase::Starting);
    let mut now = T0;
    let mut trail = Vec::new();
    let mut to = VersionView::default();
    for _ in 0..20 {
        let o = Observation {
            from: up(status(2, 2, "")),
            to: to.clone(),
        };
        let d = next(&s, &o, now);
        if let Some(new) = d.state {
            for a in &d.actions {
                match a {
                    Action::Deploy { .. } => to = up(status(2, 0, "starting")),
                    Action::Route(r) => trail.push((
                        new.phase,
                        r.weights.get(&v("v2")).copied(),
                        r.default_version.clone(),
                    )),
                    Action::Undeploy(_) => {}
                }
            }
            s = new;
        }
        if s.phase == Phase::WaitingHealthy && now >= T0 + 2_000 {
            to = up(status(2, 2, ""));
        }
        if s.phase.is_terminal() {
            break;
        }
        now += 1_000;
    }
    assert_eq!(s.outcome, Some(Outcome::Succeeded));
    assert_eq!(
        trail,
        vec![
            (Phase::WaitingHealthy, None, Some(v("v1"))),
            (Phase::Shifting, Some(10), Some(v("v1"))),
            (Phase::Shifting, Some(50), Some(v("v1"))),
            (Phase::Draining, None, Some(v("v2"))),
        ]
    );
}

#[test]
fn routing_splits_the_old_versions_share_only() {
    let before = Routing {
        default_version: Some(v("v1")),
        weights: weights(&[("v0", 20), ("v1", 80)]),
    };
    assert_eq!(routing_at(&before, &v("v1"), &v("v2"), 0), before);
    let mid = routing_at(&before, &v("v1"), &v("v2"), 25);
    assert_eq!(
        mid.weights,
        weights(&[("v0", 2000), ("v1", 6000), ("v2", 2000)])
    );
    let end = routing_at(&before, &v("v1"), &v("v2"), 100);
    assert_eq!(
        end,
        Routing {
            default_version: Some(v("v2")),
            weights: weights(&[("v0", 20), ("v2", 80)]),
        }
    );
    // A default that is another version stays.
    let other = Routing {
        default_version: Some(v("v0")),
        weights: weights(&[("v1", 1)]),
    };
    assert_eq!(
        routing_at(&other, &v("v1"), &v("v2"), 100).default_version,
        Some(v("v0"))
    );
}

#[test]
fn a_revert_runs_the_same_phases_the_other_way() {
    let mut s = state(Phase::Starting);
    s.kind = Kind::Revert;
    (s.from, s.to) = (v("v2"), v("v1"));
    s.before.default_version = Some(v("v2"));
    std::mem::swap(&mut s.deployment, &mut s.from_deployment);
    let d = next(&s, &obs(VersionView::default()), T0);
    assert_eq!(
        d.actions[0],
        Action::Deploy {
            version: v("v1"),
            deployment: Deployment::new("127.0.0.1:5000/hello:v1", 8080, 2)
        }
    );
    assert_eq!(d.actions[1], route("v2", &[]));
}
