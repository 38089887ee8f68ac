//! The controllers and the user's calls on a [`MemStore`], with the test playing the
//! schedulers (it writes each deployment's status node).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use caas_core::{AppId, AppSpec, InstanceId, Version};

use super::control::{RolloutError, RolloutRequest, Rollouts};
use super::controller::{ControllerConfig, RolloutController};
use super::nodes::rollout_path;
use super::state::{Kind, Outcome, Phase, RolloutState};
use crate::scheduler::Deployment;
use crate::scheduler::status::{DeploymentStatus, Health, InstanceReport, Phase as DeployPhase};
use crate::store::{MemStore, Op, Store};
use crate::zk::layout::{app_path, deployment_path, deployment_status_path};

fn app() -> AppId {
    AppId::new("hello").unwrap()
}
fn v(s: &str) -> Version {
    Version::new(s).unwrap()
}

fn running(version: &str, n: u64) -> DeploymentStatus {
    DeploymentStatus {
        phase: DeployPhase::Running,
        desired: n,
        next_instance: n,
        message: None,
        instances: (0..n)
            .map(|i| InstanceReport {
                id: InstanceId::new(&format!("hello-{version}-{i}")).unwrap(),
                host: "h1".into(),
                address: Some(format!("127.0.0.1:{}", 25_000 + i)),
                state: "healthy".into(),
                health: Health::Healthy,
                draining: false,
            })
            .collect(),
        rejected: BTreeMap::new(),
    }
}

/// hello:v1 deployed (2 replicas), running, routed by default.
async fn with_v1() -> MemStore {
    let s = MemStore::new();
    let spec = AppSpec {
        default_version: Some(v("v1")),
        ..AppSpec::default()
    };
    s.commit(vec![
        Op::Create {
            path: deployment_path(&app(), &v("v1")),
            data: Deployment::new("127.0.0.1:5000/hello:v1", 8080, 2).to_json(),
        },
        Op::Create {
            path: deployment_status_path(&app(), &v("v1")),
            data: running("v1", 2).to_json(),
        },
        Op::Create {
            path: app_path(&app()),
            data: serde_json::to_vec(&spec).unwrap(),
        },
    ])
    .await
    .unwrap();
    s
}

/// Plays the schedulers: every deployment of hello without a status gets a healthy one,
/// except the versions in `broken`, which stay unhealthy.
fn fake_schedulers(s: MemStore, broken: &'static [&'static str]) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            for ver in ["v1", "v2"] {
                let (d, st) = (
                    deployment_path(&app(), &v(ver)),
                    deployment_status_path(&app(), &v(ver)),
                );
                if s.get(&d).await.unwrap().is_some() && s.get(&st).await.unwrap().is_none() {
                    let mut status = running(ver, 2);
                    if broken.contains(&ver) {
                        status.phase = DeployPhase::Deploying;
                        status.instances[1].health = Health::Unhealthy;
                        status.instances[1].state = "unhealthy".into();
                    }
                    // A deployment removed meanwhile leaves the create without a parent
                    // deployment: harmless here.
                    let _ = s
                        .commit(vec![Op::Create {
                            path: st,
                            data: status.to_json(),
                        }])
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

fn quick(to: &str) -> RolloutRequest {
    let mut r = RolloutRequest::new(v(to), format!("127.0.0.1:5000/hello:{to}"));
    r.step_wait = Duration::from_millis(30);
    r.drain_wait = Duration::from_millis(30);
    r.health_deadline = Duration::from_secs(10);
    r
}

fn controller(s: &MemStore, name: &str) -> RolloutController<MemStore> {
    RolloutController::new(
        Rollouts::new(s.clone()),
        ControllerConfig {
            tick: Duration::from_millis(5),
            name: name.into(),
            ..ControllerConfig::default()
        },
    )
}

async fn until_phase(s: &MemStore, want: impl Fn(Phase) -> bool) -> RolloutState {
    let r = Rollouts::new(s.clone());
    for _ in 0..2_000 {
        if let Some(st) = r.status(&app()).await.unwrap()
            && want(st.phase)
        {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "rollout never reached the phase: {:?}",
        r.status(&app()).await
    );
}

async fn routing(s: &MemStore) -> (AppSpec, i64) {
    let n = s.get(&app_path(&app())).await.unwrap().unwrap();
    (serde_json::from_slice(&n.data).unwrap(), n.version)
}

async fn exists(s: &MemStore, path: &str) -> bool {
    s.get(path).await.unwrap().is_some()
}

#[tokio::test]
async fn start_refuses_what_cannot_be_rolled_out() {
    let empty = Rollouts::new(MemStore::new());
    let e = empty.start(&app(), quick("v2")).await.unwrap_err();
    assert!(
        matches!(e, RolloutError::NotFound(_)) && e.to_string().contains("no deployment"),
        "{e}"
    );

    let s = with_v1().await;
    let r = Rollouts::new(s.clone());
    let mut bad = quick("v2");
    bad.steps = vec![50, 10, 100];
    assert!(
        r.start(&app(), bad)
            .await
            .unwrap_err()
            .to_string()
            .contains("strictly increasing")
    );
    let mut bad = quick("v2");
    bad.steps = vec![10, 50];
    assert!(
        r.start(&app(), bad)
            .await
            .unwrap_err()
            .to_string()
            .contains("end at 100")
    );
    let mut bad = quick("v2");
    bad.image = Some("127.0.0.1:5000/other:v2".into());
    let e = r.start(&app(), bad).await.unwrap_err();
    assert!(
        matches!(e, RolloutError::Invalid(_)) && e.to_string().contains("not the app id"),
        "{e}"
    );
    let e = r.start(&app(), quick("v1")).await.unwrap_err();
    assert!(e.to_string().contains("serving now"), "{e}");

    // v1 not healthy: refused.
    s.commit(vec![Op::Set {
        path: deployment_status_path(&app(), &v("v1")),
        data: {
            let mut st = running("v1", 2);
            st.phase = DeployPhase::Deploying;
            st.to_json()
        },
        version: None,
    }])
    .await
    .unwrap();
    let e = r.start(&app(), quick("v2")).await.unwrap_err();
    assert!(
        matches!(e, RolloutError::Conflict(_)) && e.to_string().contains("not serving healthy"),
        "{e}"
    );
    s.commit(vec![Op::Set {
        path: deployment_status_path(&app(), &v("v1")),
        data: running("v1", 2).to_json(),
        version: None,
    }])
    .await
    .unwrap();

    // v2 already deployed: refused.
    s.commit(vec![Op::Create {
        path: deployment_path(&app(), &v("v3")),
        data: Deployment::new("127.0.0.1:5000/hello:v3", 8080, 1).to_json(),
    }])
    .await
    .unwrap();
    let mut req = quick("v3");
    req.from = Some(v("v1"));
    let e = r.start(&app(), req).await.unwrap_err();
    assert!(
        e.to_string().contains("hello:v3 is already deployed"),
        "{e}"
    );

    // One at a time.
    let mut req = quick("v2");
    req.from = Some(v("v1"));
    let st = r.start(&app(), req.clone()).await.unwrap();
    assert_eq!(
        (st.phase, st.deployment.replicas),
        (Phase::Starting, Some(2)),
        "replicas as v1"
    );
    let e = r.start(&app(), req).await.unwrap_err();
    assert!(e.to_string().contains("in progress (starting)"), "{e}");
}

#[tokio::test]
async fn two_controllers_run_an_update_each_move_committed_once() {
    let s = with_v1().await;
    let scheds = fake_schedulers(s.clone(), &[]);
    let r = Rollouts::new(s.clone());
    r.start(&app(), quick("v2")).await.unwrap();
    // The controllers' first two commits' replies are lost: they must read before deciding.
    s.lose_replies(2);
    let (a, b) = (controller(&s, "a"), controller(&s, "b"));
    let (ha, hb) = (a.clone().spawn(), b.clone().spawn());
    let done = until_phase(&s, Phase::is_terminal).await;
    let (sa, sb) = (ha.shutdown().await, hb.shutdown().await);
    scheds.abort();

    assert_eq!(
        (done.phase, done.outcome),
        (Phase::Done, Some(Outcome::Succeeded))
    );
    // Start (create: 0), then starting → waiting → 10 → 50 → 100 (draining) → done: one
    // write each, whoever made it.
    let node = s.get(&rollout_path(&app())).await.unwrap().unwrap();
    assert_eq!(node.version, 5, "each move exactly once");
    assert!(sa.commits + sb.commits <= 5, "{sa:?} {sb:?}");
    // The app node: 10, 50, 100 (the pin at start changed nothing: v1 was the default).
    let (spec, version) = routing(&s).await;
    assert_eq!(version, 3, "three routing writes");
    assert_eq!(spec.default_version, Some(v("v2")));
    assert!(spec.weights.is_empty(), "{:?}", spec.weights);
    assert!(
        !exists(&s, &deployment_path(&app(), &v("v1"))).await,
        "v1 removed"
    );
    assert!(exists(&s, &deployment_path(&app(), &v("v2"))).await);
}

#[tokio::test]
async fn a_new_version_never_healthy_rolls_back_by_itself() {
    let s = with_v1().await;
    let scheds = fake_schedulers(s.clone(), &["v2"]);
    let r = Rollouts::new(s.clone());
    let mut req = quick("v2");
    req.health_deadline = Duration::from_millis(200);
    r.start(&app(), req).await.unwrap();
    let h = controller(&s, "a").spawn();
    let end = until_phase(&s, Phase::is_terminal).await;
    h.shutdown().await;
    scheds.abort();
    assert_eq!(
        (end.phase, end.outcome),
        (Phase::RolledBack, Some(Outcome::RolledBack))
    );
    let why = end.reason.unwrap();
    assert!(
        why.contains("v2 not healthy within 200ms: 1 of 2 instances healthy"),
        "{why}"
    );
    assert!(
        !exists(&s, &deployment_path(&app(), &v("v2"))).await,
        "v2 removed"
    );
    assert!(!exists(&s, &deployment_status_path(&app(), &v("v2"))).await);
    assert!(
        exists(&s, &deployment_path(&app(), &v("v1"))).await,
        "v1 kept"
    );
    let (spec, _) = routing(&s).await;
    assert_eq!(
        (spec.default_version, spec.weights.len()),
        (Some(v("v1")), 0)
    );
    // Nothing to roll back any more; a new rollout may start.
    let e = r.rollback(&app()).await.unwrap_err();
    assert!(e.to_string().contains("rolled_back already"), "{e}");
}

#[tokio::test]
async fn a_finished_update_is_reverted_the_same_way() {
    let s = with_v1().await;
    let scheds = fake_schedulers(s.clone(), &[]);
    let r = Rollouts::new(s.clone());
    r.start(&app(), quick("v2")).await.unwrap();
    let h = controller(&s, "a").spawn();
    until_phase(&s, |p| p == Phase::Done).await;
    let revert = r.rollback(&app()).await.unwrap();
    assert_eq!(
        (revert.kind, &revert.from, &revert.to),
        (Kind::Revert, &v("v2"), &v("v1"))
    );
    assert_eq!(
        revert.deployment.image, "127.0.0.1:5000/hello:v1",
        "v1 as it was"
    );
    let end = {
        let mut got = None;
        for _ in 0..2_000 {
            let st = r.status(&app()).await.unwrap().unwrap();
            if st.kind == Kind::Revert && st.phase.is_terminal() {
                got = Some(st);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        got.expect("the revert finishes")
    };
    h.shutdown().await;
    scheds.abort();
    assert_eq!(end.outcome, Some(Outcome::Succeeded));
    assert!(
        exists(&s, &deployment_path(&app(), &v("v1"))).await,
        "v1 back"
    );
    assert!(
        !exists(&s, &deployment_path(&app(), &v("v2"))).await,
        "v2 removed"
    );
    let (spec, _) = routing(&s).await;
    assert_eq!(
        (spec.default_version, spec.weights.len()),
        (Some(v("v1")), 0)
    );
}

#[tokio::test]
async fn a_rollback_asked_mid_update_restores_v1() {
    let s = with_v1().await;
    let scheds = fake_schedulers(s.clone(), &[]);
    let r = Rollouts::new(s.clone());
    let mut req = quick("v2");
    req.step_wait = Duration::from_secs(600);
    r.start(&app(), req).await.unwrap();
    let h = controller(&s, "a").spawn();
    until_phase(&s, |p| p == Phase::Shifting).await;
    let (spec, _) = routing(&s).await;
    assert_eq!(spec.weights.get(&v("v2")), Some(&10));
    assert_eq!(r.rollback(&app()).await.unwrap().phase, Phase::RollingBack);
    let end = until_phase(&s, Phase::is_terminal).await;
    h.shutdown().await;
    scheds.abort();
    assert_eq!(
        (end.phase, end.reason.as_deref()),
        (Phase::RolledBack, Some("rollback requested"))
    );
    let (spec, _) = routing(&s).await;
    assert_eq!(
        (spec.default_version, spec.weights.len()),
        (Some(v("v1")), 0)
    );
    assert!(!exists(&s, &deployment_path(&app(), &v("v2"))).await);
}

#[tokio::test]
async fn a_controller_stopped_mid_update_is_taken_over() {
    let s = with_v1().await;
    let scheds = fake_schedulers(s.clone(), &[]);
    let r = Rollouts::new(s.clone());
    let mut req = quick("v2");
    req.step_wait = Duration::from_millis(300);
    r.start(&app(), req).await.unwrap();
    let first = controller(&s, "first").spawn();
    let at = until_phase(&s, |p| p == Phase::Shifting).await;
    first.abort().await;
    assert_eq!(at.step, Some(0));
    let second = controller(&s, "second");
    let h = second.clone().spawn();
    let end = until_phase(&s, Phase::is_terminal).await;
    let stats = h.shutdown().await;
    assert!(
        stats.commits >= 2,
        "the second controller finished it: {stats:?}"
    );
    scheds.abort();
    assert_eq!(end.outcome, Some(Outcome::Succeeded));
}

#[tokio::test]
async fn a_broken_rollout_node_is_reported_not_fatal() {
    let s = MemStore::new();
    s.commit(vec![Op::Create {
        path: rollout_path(&app()),
        data: b"{nope".to_vec(),
    }])
    .await
    .unwrap();
    let c = controller(&s, "a");
    c.pass().await.unwrap();
    assert_eq!(c.stats().errors, 1);
    let e = Rollouts::new(s).status(&app()).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("/rollouts/hello: not a rollout state"),
        "{e}"
    );
}
