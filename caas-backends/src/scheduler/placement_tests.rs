//! Placement, case by case for every strategy and filter, and 20,000 random clusters that
//! must never see a placement exceed a capacity or break a filter.

use super::*;
use crate::scheduler::deployment::{AppRule, Constraint};
use crate::scheduler::test_support::*;

fn place_web(s: &Snapshot, d: &Deployment, n: usize) -> Result<Vec<String>, Unschedulable> {
    let (a, v) = (app("web"), ver("v1"));
    place(s, &Request::new(&a, &v, d), n)
}

fn picks(s: &Snapshot, d: &Deployment, n: usize) -> Vec<&'static str> {
    place_web(s, d, n)
        .unwrap()
        .into_iter()
        .map(|h| &*Box::leak(h.into_boxed_str()))
        .collect()
}

#[test]
fn most_free_memory_is_the_default_and_ties_go_to_the_smallest_id() {
    let mut h1 = host("h1", 4 * GIB, 10_000, 10);
    run(&mut h1, "other", "v1", 3072);
    let s = snap(vec![
        h1,
        host("h2", 2 * GIB, 10_000, 10),
        host("h3", 2 * GIB, 10_000, 10),
    ]);
    // Free: h1 1 GiB, h2 2 GiB, h3 2 GiB -> h2 (tie with h3, smaller id), then h3, then
    // h2 and h3 are at 1.5 GiB, above h1's 1 GiB.
    assert_eq!(picks(&s, &spec(4, 512), 4), ["h2", "h3", "h2", "h3"]);
    // Reproducible: the same input gives the same answer.
    assert_eq!(
        place_web(&s, &spec(4, 512), 4),
        place_web(&s, &spec(4, 512), 4)
    );
}

#[test]
fn least_cpu_ranks_by_measured_idle_minus_what_it_placed() {
    let mut hosts = vec![
        host("h1", 8 * GIB, 1000, 10),
        host("h2", 8 * GIB, 1000, 10),
        host("h3", 8 * GIB, 1000, 10),
        host("h4", 16 * GIB, 1000, 10),
    ];
    hosts[0].info.cpu_idle = Some(0.9);
    hosts[1].info.cpu_idle = Some(0.75);
    hosts[2].info.cpu_idle = Some(0.2);
    // h4 has no measurement: after every measured host, however much memory it has.
    let s = snap(hosts);
    let mut d = spec(3, 64);
    d.strategy = Strategy::LeastCpu;
    // 100 shares of 1000 = 0.1 per instance: h1 0.9 -> 0.8 (still first), then 0.7 < 0.75.
    assert_eq!(picks(&s, &d, 3), ["h1", "h1", "h2"]);
    let mut only_unmeasured = snap(vec![host("a", GIB, 1000, 10), host("b", 2 * GIB, 1000, 10)]);
    only_unmeasured.hosts.get_mut("a").unwrap().info.cpu_idle = None;
    assert_eq!(
        picks(&only_unmeasured, &d, 1),
        ["b"],
        "unmeasured: by free memory"
    );
}

#[test]
fn spread_strategy_prefers_hosts_with_fewest_instances_of_the_app() {
    let mut h1 = host("h1", 8 * GIB, 10_000, 10);
    let mut h2 = host("h2", 4 * GIB, 10_000, 10);
    let h3 = host("h3", 2 * GIB, 10_000, 10);
    run(&mut h1, "web", "v0", 64); // another version of the same app counts
    run(&mut h2, "web", "v1", 64);
    let s = snap(vec![h1, h2, h3]);
    let mut d = spec(3, 64);
    d.strategy = Strategy::Spread;
    // h3 has none; then h1/h2/h3 all have one: most free memory (h1).
    assert_eq!(picks(&s, &d, 3), ["h3", "h1", "h2"]);
}

#[test]
fn binpack_fills_the_fullest_host_that_still_fits() {
    let mut h1 = host("h1", 4 * GIB, 10_000, 10);
    run(&mut h1, "other", "v1", 3072); // 1 GiB free
    let h2 = host("h2", 2 * GIB, 10_000, 10);
    let s = snap(vec![h1, h2]);
    let mut d = spec(4, 512);
    d.strategy = Strategy::Binpack;
    // h1 takes two (1 GiB), then h2.
    assert_eq!(picks(&s, &d, 4), ["h1", "h1", "h2", "h2"]);
}

#[test]
fn hosts_not_alive_or_draining_take_nothing() {
    let mut missing = host("h1", 8 * GIB, 10_000, 10);
    missing.liveness = Liveness::Missing;
    let mut lost = host("h2", 8 * GIB, 10_000, 10);
    lost.liveness = Liveness::Lost;
    let mut draining = host("h3", 8 * GIB, 10_000, 10);
    draining.info.draining = true;
    let s = snap(vec![missing, lost, draining, host("h4", GIB, 10_000, 10)]);
    assert_eq!(picks(&s, &spec(1, 512), 1), ["h4"]);
    let e = place_web(&s, &spec(3, 512), 3).unwrap_err();
    assert_eq!((e.wanted, e.fit), (3, 2));
    assert_eq!(e.rejected["alive"], ["h1", "h2"]);
    assert_eq!(e.rejected["draining"], ["h3"]);
    assert_eq!(e.rejected["memory"], ["h4"]);
    assert_eq!(
        e.to_string(),
        "cannot place 3 instances (only 2 fit): alive rejected h1, h2; draining rejected h3; memory rejected h4"
    );
}

#[test]
fn resources_include_sidecars_and_ports() {
    let s = snap(vec![
        host("mem", 600 * MIB, 10_000, 10),
        host("cpu", 8 * GIB, 150, 10),
        host("ports", 8 * GIB, 10_000, 0),
        host("ok", 2 * GIB, 10_000, 1),
    ]);
    let mut d = spec(1, 512);
    d.sidecars.push(crate::assignment::Sidecar {
        name: "cache".into(),
        image: "127.0.0.1:5000/cache:v1".into(),
        memory: crate::assignment::MemoryLimit::from_bytes(128 * MIB),
        cpu_shares: 100,
    });
    // 640 MiB and 200 shares per instance.
    assert_eq!(picks(&s, &d, 1), ["ok"]);
    let e = place_web(&s, &d, 2).unwrap_err();
    assert_eq!(e.fit, 1);
    assert_eq!(e.rejected["memory"], ["mem"]);
    assert_eq!(e.rejected["cpu_shares"], ["cpu"]);
    assert_eq!(
        e.rejected["ports"],
        ["ok", "ports"],
        "ok's one port is taken by the first"
    );
}

#[test]
fn label_constraints_and_hostname_pins() {
    let mut a = host("a", 8 * GIB, 10_000, 10);
    a.info.labels.insert("zone".into(), "a".into());
    a.info.labels.insert("disk".into(), "hdd".into());
    let mut b = host("b", 4 * GIB, 10_000, 10);
    b.info.labels.insert("zone".into(), "a".into());
    let mut c = host("c", 16 * GIB, 10_000, 10);
    c.info.labels.insert("zone".into(), "b".into());
    let s = snap(vec![a, b, c]);
    let mut d = spec(2, 512);
    d.constraints = vec!["zone==a".parse().unwrap(), "disk!=hdd".parse().unwrap()];
    assert_eq!(picks(&s, &d, 2), ["b", "b"]);
    let e = place_web(
        &s,
        &{
            let mut d = d.clone();
            d.memory = crate::assignment::MemoryLimit::from_bytes(3 * GIB);
            d
        },
        2,
    )
    .unwrap_err();
    assert_eq!(e.rejected["constraint disk!=hdd"], ["a"]);
    assert_eq!(e.rejected["constraint zone==a"], ["c"]);
    assert_eq!(e.rejected["memory"], ["b"]);
    d.constraints = vec!["hostname==c".parse::<Constraint>().unwrap()];
    assert_eq!(picks(&s, &d, 2), ["c", "c"]);
}

#[test]
fn spread_puts_one_instance_per_host_and_fails_clearly_beyond() {
    let mut h1 = host("h1", 8 * GIB, 10_000, 10);
    run(&mut h1, "web", "v1", 64);
    let s = snap(vec![
        h1,
        host("h2", 8 * GIB, 10_000, 10),
        host("h3", 8 * GIB, 10_000, 10),
    ]);
    let mut d = spec(3, 64);
    d.spread = true;
    // h1 already runs one of this version: two more go to h2 and h3.
    assert_eq!(picks(&s, &d, 2), ["h2", "h3"]);
    let e = place_web(&s, &d, 3).unwrap_err();
    assert_eq!((e.wanted, e.fit), (3, 2));
    assert_eq!(e.rejected["spread (max 1 per host)"], ["h1", "h2", "h3"]);
    d.max_per_host = Some(2);
    // Two per host now: h2, h3, then all three tie on free memory: smallest id first.
    assert_eq!(picks(&s, &d, 5), ["h2", "h3", "h1", "h2", "h3"]);
    assert!(place_web(&s, &d, 6).is_err());
}

#[test]
fn affinity_and_anti_affinity_follow_other_apps() {
    let mut h1 = host("h1", 8 * GIB, 10_000, 10);
    run(&mut h1, "db", "v3", 64);
    let mut h2 = host("h2", 8 * GIB, 10_000, 10);
    run(&mut h2, "db", "v3", 64);
    run(&mut h2, "batch", "v1", 64);
    let h3 = host("h3", 16 * GIB, 10_000, 10);
    let s = snap(vec![h1, h2, h3]);
    let mut d = spec(2, 64);
    d.affinity = vec![AppRule { app: app("db") }];
    let got = picks(&s, &d, 2);
    assert!(got.iter().all(|h| *h == "h1" || *h == "h2"), "{got:?}");
    d.anti_affinity = vec![AppRule { app: app("batch") }];
    assert_eq!(picks(&s, &d, 2), ["h1", "h1"]);
    d.affinity.clear();
    assert_eq!(
        picks(&s, &d, 1),
        ["h3"],
        "anti-affinity alone: most free memory among h1, h3"
    );
    d.affinity = vec![AppRule { app: app("cache") }];
    let e = place_web(&s, &d, 1).unwrap_err();
    assert_eq!(e.rejected["affinity app==cache"], ["h1", "h2", "h3"]);
}

#[test]
fn unreadable_hosts_and_an_empty_cluster_are_reported() {
    let mut s = snap(vec![]);
    let e = place_web(&s, &spec(1, 64), 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot place 1 instance (only 0 fit): no hosts"
    );
    s.bad_hosts.insert("h9".into(), Default::default());
    let e = place_web(&s, &spec(1, 64), 1).unwrap_err();
    assert_eq!(e.rejected["host info"], ["h9"]);
    assert_eq!(place_web(&s, &spec(0, 64), 0), Ok(vec![]));
}

#[test]
fn global_check_keeps_instances_without_resource_checks() {
    let mut full = host("h1", 100 * MIB, 10_000, 1);
    run(&mut full, "web", "v1", 64);
    let d = {
        let mut d = spec(1, 64);
        d.replicas = None;
        d.global = true;
        d
    };
    let (a, v) = (app("web"), ver("v1"));
    let req = Request::new(&a, &v, &d);
    assert_eq!(
        global_check(&full, &req),
        Ok(()),
        "already runs one: resources not checked"
    );
    assert_eq!(
        global_check(&host("h2", 10 * MIB, 10_000, 1), &req),
        Err(Filter::Memory)
    );
    full.info.draining = true;
    assert_eq!(global_check(&full, &req), Err(Filter::Draining));
}

/// A tiny deterministic generator for the random cases (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[test]
fn random_clusters_never_see_a_placement_break_capacity_or_a_filter() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let apps = ["web", "db", "batch"];
    let mut placed_cases = 0usize;
    let mut refused_cases = 0usize;
    for case in 0..20_000 {
        let n_hosts = rng.below(8) as usize;
        let mut hosts = Vec::new();
        for i in 0..n_hosts {
            let mut h = host(
                &format!("h{i}"),
                rng.below(8192) * MIB,
                rng.below(20_000),
                rng.below(12),
            );
            if rng.chance(50) {
                h.info
                    .labels
                    .insert("zone".into(), ["a", "b"][rng.below(2) as usize].into());
            }
            h.liveness = match rng.below(10) {
                0 => Liveness::Missing,
                1 => Liveness::Lost,
                _ => Liveness::Alive,
            };
            h.info.draining = rng.chance(10);
            h.info.cpu_idle = rng.chance(70).then(|| rng.below(101) as f64 / 100.0);
            for _ in 0..rng.below(4) {
                let a = apps[rng.below(3) as usize];
                run(&mut h, a, "v1", rng.below(512) + 6);
            }
            hosts.push(h);
        }
        let s = snap(hosts);
        let mut d = spec(1, rng.below(1024) + 6);
        d.cpu_shares = (rng.below(1000) + 2) as u32;
        d.strategy = [
            Strategy::MostFreeMemory,
            Strategy::LeastCpu,
            Strategy::Spread,
            Strategy::Binpack,
        ][rng.below(4) as usize];
        if rng.chance(30) {
            d.constraints.push(
                if rng.chance(50) { "zone==a" } else { "zone!=b" }
                    .parse()
                    .unwrap(),
            );
        }
        if rng.chance(10) {
            d.constraints
                .push(format!("hostname==h{}", rng.below(8)).parse().unwrap());
        }
        d.spread = rng.chance(30);
        if rng.chance(20) {
            d.max_per_host = Some(rng.below(3) as u32 + 1);
        }
        if rng.chance(20) {
            d.affinity.push(AppRule {
                app: app(apps[rng.below(3) as usize]),
            });
        }
        if rng.chance(20) {
            d.anti_affinity.push(AppRule {
                app: app(apps[rng.below(3) as usize]),
            });
        }
        let n = rng.below(8) as usize;
        let result = place_web(&s, &d, n);
        assert_eq!(
            result,
            place_web(&s, &d, n),
            "case {case}: not reproducible"
        );
        let Ok(chosen) = result else {
            let e = result.unwrap_err();
            assert!(
                e.fit < n,
                "case {case}: refused although {} of {n} fit",
                e.fit
            );
            refused_cases += 1;
            continue;
        };
        assert_eq!(chosen.len(), n, "case {case}");
        placed_cases += usize::from(n > 0);
        let (a, v) = (app("web"), ver("v1"));
        let need = Request::new(&a, &v, &d).need;
        for (id, h) in &s.hosts {
            let mine = chosen.iter().filter(|c| *c == id).count() as u64;
            if mine == 0 {
                continue;
            }
            let used = h.used();
            let cap = h.info.capacity;
            let ctx = format!("case {case}: host {id} took {mine}: {h:?} {d:?}");
            assert!(
                used.memory + mine * need.memory <= cap.memory,
                "memory {ctx}"
            );
            assert!(
                used.cpu_shares + mine * need.cpu_shares <= cap.cpu_shares,
                "cpu {ctx}"
            );
            assert!(used.instances + mine <= cap.instances, "ports {ctx}");
            assert_eq!(h.liveness, Liveness::Alive, "{ctx}");
            assert!(!h.info.draining, "{ctx}");
            assert!(
                d.constraints.iter().all(|c| c.matches(id, &h.info.labels)),
                "{ctx}"
            );
            assert!(d.affinity.iter().all(|r| h.count_app(&r.app) > 0), "{ctx}");
            assert!(
                d.anti_affinity.iter().all(|r| h.count_app(&r.app) == 0),
                "{ctx}"
            );
            if let Some(cap) = d.per_host_cap() {
                assert!(
                    h.count_version(&a, &v) as u64 + mine <= u64::from(cap),
                    "spread {ctx}"
                );
            }
        }
    }
    // The generator must exercise both outcomes, or the test proves little.
    assert!(
        placed_cases > 5_000 && refused_cases > 2_000,
        "{placed_cases} cases placed something, {refused_cases} refused"
    );
}
