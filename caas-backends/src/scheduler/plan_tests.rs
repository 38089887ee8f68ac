//! The plan, case by case: scale up and down, lost hosts, drains, global deployments,
//! instance ids and orphans.

use super::*;
use crate::scheduler::snapshot::HostState;
use crate::scheduler::test_support::*;

fn web_plan(s: &Snapshot, d: &Deployment, next: u64) -> Plan {
    plan(s, &app("web"), &ver("v1"), d, next)
}

fn adds(p: &Plan) -> Vec<(&str, &str)> {
    p.add
        .iter()
        .map(|(h, i)| (h.as_str(), i.as_str()))
        .collect()
}

fn removes(p: &Plan) -> Vec<(&str, &str, Why)> {
    p.remove
        .iter()
        .map(|r| (r.host.as_str(), r.id.as_str(), r.why))
        .collect()
}

fn big(id: &str) -> HostState {
    host(id, 8 * GIB, 100_000, 50)
}

#[test]
fn scale_up_places_the_missing_instances_with_fresh_ids() {
    let mut h1 = big("h1");
    run_as(&mut h1, "web-v1-0", "web", "v1", 64);
    let mut s = snap(vec![h1, big("h2"), big("h3")]);
    let d = spec(3, 64);
    with_web(&mut s, &d, &[]);
    let p = web_plan(&s, &d, 1);
    assert_eq!(adds(&p), [("h2", "web-v1-1"), ("h3", "web-v1-2")]);
    assert!(p.remove.is_empty() && p.unschedulable.is_none());
    assert_eq!((p.next_instance, p.desired), (3, 3));
    // Nothing to do once there are three.
    let mut done = s.clone();
    run_as(
        done.hosts.get_mut("h2").unwrap(),
        "web-v1-1",
        "web",
        "v1",
        64,
    );
    run_as(
        done.hosts.get_mut("h3").unwrap(),
        "web-v1-2",
        "web",
        "v1",
        64,
    );
    assert!(web_plan(&done, &d, 3).is_noop());
}

#[test]
fn ids_in_use_are_skipped_and_long_ids_are_shortened() {
    let mut h1 = big("h1");
    run_as(&mut h1, "web-v1-0", "web", "v1", 64);
    let mut s = snap(vec![h1]);
    let d = spec(3, 64);
    with_web(&mut s, &d, &[]);
    // A counter reset (status node lost) never reuses an id in use.
    let p = web_plan(&s, &d, 0);
    assert_eq!(adds(&p), [("h1", "web-v1-1"), ("h1", "web-v1-2")]);
    let long_app = app(&"a".repeat(40));
    let long_version = ver(&format!("v{}", "1".repeat(40)));
    let id = instance_id(&long_app, &long_version, 12).unwrap();
    assert!(id.as_str().len() <= 63, "{id}");
    assert!(
        id.as_str().starts_with("aaaa") && id.as_str().ends_with("-12"),
        "{id}"
    );
    assert_ne!(id, instance_id(&long_app, &long_version, 13).unwrap());
    assert_ne!(
        id,
        instance_id(&long_app, &ver(&format!("v{}", "2".repeat(40))), 12).unwrap(),
        "the hash tells versions with a common prefix apart"
    );
}

#[test]
fn scale_down_empties_the_most_concentrated_host_first() {
    let mut h1 = big("h1");
    let mut h2 = big("h2");
    let mut h3 = big("h3");
    for i in 0..3 {
        run_as(&mut h1, &format!("web-v1-{i}"), "web", "v1", 64);
    }
    run_as(&mut h2, "web-v1-3", "web", "v1", 64);
    run_as(&mut h2, "web-v1-4", "web", "v1", 64);
    run_as(&mut h3, "web-v1-5", "web", "v1", 64);
    let mut s = snap(vec![h1, h2, h3]);
    // web-v1-0 is unhealthy (not registered): it goes first on h1.
    with_web(
        &mut s,
        &spec(6, 64),
        &["web-v1-1", "web-v1-2", "web-v1-3", "web-v1-4", "web-v1-5"],
    );
    let p = web_plan(&s, &spec(3, 64), 6);
    // h1 3 -> 2, then h1 and h2 tie at 2: h1 (smaller id), then h2.
    assert_eq!(
        removes(&p),
        [
            ("h1", "web-v1-0", Why::ScaleDown),
            ("h1", "web-v1-2", Why::ScaleDown),
            ("h2", "web-v1-4", Why::ScaleDown)
        ]
    );
    assert!(p.add.is_empty());
    let p = web_plan(&s, &spec(0, 64), 6);
    assert_eq!(p.remove.len(), 6, "scale to zero removes all");
}

#[test]
fn lost_hosts_are_replaced_in_the_same_plan_or_kept_when_nothing_fits() {
    let mut h1 = big("h1");
    run_as(&mut h1, "web-v1-0", "web", "v1", 64);
    run_as(&mut h1, "web-v1-1", "web", "v1", 64);
    let mut h2 = big("h2");
    run_as(&mut h2, "web-v1-2", "web", "v1", 64);
    let mut s = snap(vec![h1, h2, host("h3", 200 * MIB, 100_000, 50)]);
    let d = spec(3, 64);
    with_web(&mut s, &d, &[]);
    // Missing (within the grace period): counted as running, nothing moves.
    s.hosts.get_mut("h1").unwrap().liveness = Liveness::Missing;
    assert!(web_plan(&s, &d, 3).is_noop());
    // Lost: two replacements (new ids, on the host with most free memory) and the two
    // removals in one plan.
    s.hosts.get_mut("h1").unwrap().liveness = Liveness::Lost;
    let p = web_plan(&s, &d, 3);
    assert_eq!(adds(&p), [("h2", "web-v1-3"), ("h2", "web-v1-4")]);
    assert_eq!(
        removes(&p),
        [("h1", "web-v1-0", Why::Lost), ("h1", "web-v1-1", Why::Lost)]
    );
    // With room for only one replacement, nothing is placed and the lost instances stay,
    // with the reason.
    s.hosts.get_mut("h3").unwrap().info.capacity.memory = 100 * MIB;
    s.hosts.get_mut("h2").unwrap().info.capacity.memory = 100 * MIB;
    let p = web_plan(&s, &d, 3);
    assert!(p.is_noop(), "{p:?}");
    let u = p.unschedulable.unwrap();
    assert_eq!((u.wanted, u.fit), (2, 1));
    assert_eq!(u.rejected["alive"], ["h1"]);
    assert_eq!(u.rejected["memory"], ["h2", "h3"]);
}

#[test]
fn a_draining_host_keeps_its_instances_until_replacements_are_healthy() {
    let mut h1 = big("h1");
    run_as(&mut h1, "web-v1-0", "web", "v1", 64);
    run_as(&mut h1, "web-v1-1", "web", "v1", 64);
    h1.info.draining = true;
    let mut h2 = big("h2");
    run_as(&mut h2, "web-v1-2", "web", "v1", 64);
    let mut s = snap(vec![h1, h2, big("h3")]);
    let d = spec(3, 64);
    with_web(&mut s, &d, &["web-v1-0", "web-v1-1", "web-v1-2"]);
    // Step 1: two replacements, nothing removed.
    let p = web_plan(&s, &d, 3);
    assert_eq!(adds(&p), [("h3", "web-v1-3"), ("h2", "web-v1-4")]);
    assert!(p.remove.is_empty());
    run_as(s.hosts.get_mut("h3").unwrap(), "web-v1-3", "web", "v1", 64);
    run_as(s.hosts.get_mut("h2").unwrap(), "web-v1-4", "web", "v1", 64);
    // Step 2: replacements not healthy yet: nothing.
    assert!(web_plan(&s, &d, 5).is_noop());
    // Step 3: one replacement healthy: one old instance goes.
    with_web(
        &mut s,
        &d,
        &["web-v1-0", "web-v1-1", "web-v1-2", "web-v1-3"],
    );
    assert_eq!(
        removes(&web_plan(&s, &d, 5)),
        [("h1", "web-v1-0", Why::Drained)]
    );
    // Step 4: both healthy: both go.
    with_web(
        &mut s,
        &d,
        &["web-v1-0", "web-v1-1", "web-v1-2", "web-v1-3", "web-v1-4"],
    );
    let p = web_plan(&s, &d, 5);
    assert_eq!(removes(&p).len(), 2);
    assert!(
        p.remove
            .iter()
            .all(|r| r.host == "h1" && r.why == Why::Drained)
    );
    // An unhealthy draining instance goes before a healthy one.
    with_web(&mut s, &d, &["web-v1-1", "web-v1-2", "web-v1-3"]);
    assert_eq!(
        removes(&web_plan(&s, &d, 5)),
        [("h1", "web-v1-0", Why::Drained)]
    );
}

#[test]
fn global_follows_hosts_and_their_labels() {
    let mut d = spec(0, 64);
    d.replicas = None;
    d.global = true;
    d.constraints = vec!["zone==a".parse().unwrap()];
    let mut a1 = big("a1");
    a1.info.labels.insert("zone".into(), "a".into());
    run_as(&mut a1, "web-v1-0", "web", "v1", 64);
    run_as(&mut a1, "web-v1-1", "web", "v1", 64); // a duplicate
    let mut a2 = big("a2");
    a2.info.labels.insert("zone".into(), "a".into());
    let mut b1 = big("b1");
    b1.info.labels.insert("zone".into(), "b".into());
    run_as(&mut b1, "web-v1-2", "web", "v1", 64); // labels changed: must go
    let mut a3 = big("a3");
    a3.info.labels.insert("zone".into(), "a".into());
    a3.liveness = Liveness::Lost;
    run_as(&mut a3, "web-v1-3", "web", "v1", 64);
    let mut a4 = big("a4");
    a4.info.labels.insert("zone".into(), "a".into());
    a4.liveness = Liveness::Missing;
    run_as(&mut a4, "web-v1-4", "web", "v1", 64);
    let mut a5 = host("a5", 10 * MIB, 100_000, 50);
    a5.info.labels.insert("zone".into(), "a".into());
    let mut s = snap(vec![a1, a2, b1, a3, a4, a5]);
    with_web(&mut s, &d, &[]);
    let p = web_plan(&s, &d, 5);
    assert_eq!(adds(&p), [("a2", "web-v1-5")]);
    assert_eq!(
        removes(&p),
        [
            ("a1", "web-v1-1", Why::Duplicate),
            ("a3", "web-v1-3", Why::Lost),
            ("b1", "web-v1-2", Why::NotEligible)
        ]
    );
    assert_eq!(
        p.desired, 3,
        "a1, a2 and a4 (missing, within its grace period)"
    );
    assert_eq!(p.rejected["alive"], ["a3"]);
    assert_eq!(p.rejected["constraint zone==a"], ["b1"]);
    assert_eq!(p.rejected["memory"], ["a5"]);
    assert!(p.unschedulable.is_none());
    // A host joining gets one; a draining host loses its instance at once (no replacement
    // can exist elsewhere).
    s.hosts.get_mut("a1").unwrap().info.draining = true;
    let p = web_plan(&s, &d, 6);
    assert!(removes(&p).contains(&("a1", "web-v1-0", Why::NotEligible)));
    // No eligible host at all: unschedulable.
    let empty = snap(vec![]);
    assert!(web_plan(&empty, &d, 0).unschedulable.is_some());
}

#[test]
fn orphans_are_instances_whose_deployment_is_gone() {
    let mut h1 = big("h1");
    run_as(&mut h1, "web-v1-0", "web", "v1", 64);
    run_as(&mut h1, "db-v1-0", "db", "v1", 64);
    let mut s = snap(vec![h1]);
    with_web(&mut s, &spec(1, 64), &[]);
    let o = orphans(&s);
    assert_eq!(o.len(), 1);
    let r = &o[&(app("db"), ver("v1"))];
    assert_eq!((r[0].id.as_str(), r[0].why), ("db-v1-0", Why::Orphan));
    // Listed again after the hosts were read: not an orphan (deployed meanwhile).
    s.listed_after.insert((app("db"), ver("v1")));
    assert!(orphans(&s).is_empty());
}

#[test]
fn instances_on_an_unreadable_host_count_and_are_never_touched() {
    let mut broken = big("h9");
    run_as(&mut broken, "web-v1-0", "web", "v1", 64);
    let mut s = snap(vec![big("h1")]);
    s.bad_hosts.insert(
        "h9".into(),
        crate::scheduler::snapshot::BadHost {
            reason: "host info is not valid JSON".into(),
            instances: broken.instances,
        },
    );
    let d = spec(2, 64);
    with_web(&mut s, &d, &[]);
    // One of two is on h9: one more is placed, with an id not in use there.
    let p = web_plan(&s, &d, 0);
    assert_eq!(adds(&p), [("h1", "web-v1-1")]);
    // Scaled to zero: only what can be written is removed.
    let mut none = s.clone();
    run_as(
        none.hosts.get_mut("h1").unwrap(),
        "web-v1-1",
        "web",
        "v1",
        64,
    );
    let p = web_plan(&none, &spec(0, 64), 2);
    assert_eq!(removes(&p), [("h1", "web-v1-1", Why::ScaleDown)]);
    let status = crate::scheduler::status::build(&none, &app("web"), &ver("v1"), false, &p);
    assert_eq!(status.instances[0].state, "host_unreadable");
}
