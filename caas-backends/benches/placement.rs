//! Placement decisions per second at 1,000 hosts: the scheduler's pure filter-and-score
//! function (`scheduler::placement::place`) and the per-deployment plan around it
//! (`scheduler::plan::plan`), on a snapshot of 1,000 hosts running 10,000 instances of 100
//! apps (10 per host), with labels in three zones, a measured CPU idle on most hosts, and
//! capacities that leave room. There is no other scheduler in-process to compare with; the
//! figure to read is decisions per second = 1 / time per iteration (one iteration places
//! one instance, or plans one deployment).
//!
//! - `place_one/{strategy}`: one new instance, every host evaluated by every filter, ranked
//!   by the strategy;
//! - `place_one/filtered`: with a label constraint, anti-affinity and spread;
//! - `place_ten/most_free_memory`: ten instances in one decision (each sees the ones before);
//! - `plan/{replicas,global}`: the whole plan of a 10-replica deployment already running 5,
//!   and of a global deployment (a decision per host).
//!
//! After criterion, the same decisions are timed in CPU time of the benchmarking thread
//! (`/proc/thread-self/schedstat`) over about two seconds each: on a shared machine the wall
//! times above include waiting for a core, the CPU time does not.
//!
//! Run: `cargo bench -p caas-backends --bench placement -- --warm-up-time 1 --measurement-time 3`
//!
//! Measured on the 2-core dev machine (release build, load average 6–10 from other work):
//! one instance among 1,000 hosts 83–126 µs of CPU (7,900–12,100 decisions per CPU-second),
//! with a constraint, anti-affinity and spread 242 µs, ten instances 220 µs, a replicated
//! plan 199 µs, a global plan over 1,000 hosts 632 µs; wall times under that load 1.5–3×
//! higher.

use std::collections::BTreeMap;
use std::hint::black_box;

use caas_backends::assignment::MemoryLimit;
use caas_backends::scheduler::deployment::{AppRule, Deployment, Strategy};
use caas_backends::scheduler::placement::{Request, place};
use caas_backends::scheduler::plan::plan;
use caas_backends::scheduler::snapshot::{DeploymentState, HostState, Snapshot};
use caas_backends::zk::hosts::{HostInfo, Resources};
use caas_core::{AppId, InstanceId, Version};
use criterion::{Criterion, criterion_group};

const HOSTS: usize = 1_000;
const MIB: u64 = 1 << 20;

fn id<T>(r: Result<T, caas_core::IdError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("bench ids are valid: {e}"),
    }
}

fn deployment(app: &str, replicas: u32) -> Deployment {
    let mut d = Deployment::new(format!("127.0.0.1:5000/{app}:v1"), 8080, replicas);
    d.memory = MemoryLimit::from_bytes(256 * MIB);
    d.cpu_shares = 128;
    d
}

/// 1,000 hosts, each running 10 instances of 100 apps round-robin.
fn cluster() -> Snapshot {
    let v1 = id(Version::new("v1"));
    let mut snap = Snapshot::default();
    let mut n = 0u64;
    for h in 0..HOSTS {
        let hid = format!("h{h:04}");
        let info = HostInfo {
            ip: "10.0.0.1"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
            labels: BTreeMap::from([("zone".to_owned(), ["a", "b", "c"][h % 3].to_owned())]),
            capacity: Resources {
                memory: (16 + (h as u64 % 16)) << 30,
                cpu_shares: 16 * 1024,
                instances: 299,
            },
            allocated: Resources::default(),
            cpu_idle: (h % 10 != 0).then(|| (h % 97) as f64 / 97.0),
            draining: false,
            logs: None,
        };
        let mut host = HostState::new(&hid, info);
        for _ in 0..10 {
            let app = format!("app{}", n % 100);
            let d = deployment(&app, 1);
            host.instances.insert(
                id(InstanceId::new(&format!("{app}-v1-{n}"))),
                d.assignment(&id(AppId::new(&app)), &v1),
            );
            n += 1;
        }
        host.info.allocated = host.used();
        snap.hosts.insert(hid, host);
    }
    snap
}

/// One instance with a label constraint, anti-affinity and spread.
fn filtered() -> Deployment {
    let mut d = deployment("web", 1);
    d.constraints = vec![match "zone!=c".parse() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }];
    d.anti_affinity = vec![AppRule {
        app: id(AppId::new("app7")),
    }];
    d.spread = true;
    d
}

/// Adds `web:v1`, 10 replicas, running 5 (every 100th host), to `snap`; returns it and the
/// same as a global deployment.
fn with_web(snap: &mut Snapshot, app: &AppId, v1: &Version) -> (Deployment, Deployment) {
    let web = deployment("web", 10);
    for i in 0..5 {
        if let Some(h) = snap.hosts.values_mut().nth(i * 100) {
            h.instances.insert(
                id(InstanceId::new(&format!("web-v1-{i}"))),
                web.assignment(app, v1),
            );
        }
    }
    snap.deployments.insert(
        (app.clone(), v1.clone()),
        DeploymentState {
            spec: Ok(web.clone()),
            spec_version: 0,
            status: None,
            registered: BTreeMap::new(),
        },
    );
    let mut global = deployment("web", 0);
    global.replicas = None;
    global.global = true;
    (web, global)
}

fn bench(c: &mut Criterion) {
    let mut snap = cluster();
    let app = id(AppId::new("web"));
    let v1 = id(Version::new("v1"));
    let mut g = c.benchmark_group("place_one");
    for strategy in [
        Strategy::MostFreeMemory,
        Strategy::LeastCpu,
        Strategy::Spread,
        Strategy::Binpack,
    ] {
        let mut d = deployment("web", 1);
        d.strategy = strategy;
        g.bench_function(strategy.name(), |b| {
            b.iter(|| place(black_box(&snap), &Request::new(&app, &v1, &d), 1))
        });
    }
    let d = filtered();
    g.bench_function("filtered", |b| {
        b.iter(|| place(black_box(&snap), &Request::new(&app, &v1, &d), 1))
    });
    g.finish();

    let d = deployment("web", 10);
    c.bench_function("place_ten/most_free_memory", |b| {
        b.iter(|| place(black_box(&snap), &Request::new(&app, &v1, &d), 10))
    });

    let (web, global) = with_web(&mut snap, &app, &v1);
    c.bench_function("plan/replicas", |b| {
        b.iter(|| plan(black_box(&snap), &app, &v1, &web, 5))
    });
    c.bench_function("plan/global", |b| {
        b.iter(|| plan(black_box(&snap), &app, &v1, &global, 5))
    });
}

/// CPU time this thread has run, in nanoseconds (0 when /proc is not there).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `f` for about two seconds of CPU time; prints CPU time per call and calls per second.
fn cpu_per_call(name: &str, mut f: impl FnMut()) {
    f();
    let start = thread_cpu_ns();
    let wall = std::time::Instant::now();
    let mut calls = 0u64;
    while thread_cpu_ns() - start < 2_000_000_000 && wall.elapsed().as_secs() < 30 {
        for _ in 0..20 {
            f();
        }
        calls += 20;
    }
    let per = (thread_cpu_ns() - start) as f64 / calls as f64;
    println!(
        "{name}: {:.1} µs CPU per call, {:.0} per CPU-second ({calls} calls)",
        per / 1e3,
        1e9 / per
    );
}

fn cpu_figures() {
    let mut snap = cluster();
    let app = id(AppId::new("web"));
    let v1 = id(Version::new("v1"));
    for strategy in [
        Strategy::MostFreeMemory,
        Strategy::LeastCpu,
        Strategy::Spread,
        Strategy::Binpack,
    ] {
        let mut d = deployment("web", 1);
        d.strategy = strategy;
        cpu_per_call(&format!("cpu place_one/{}", strategy.name()), || {
            black_box(place(black_box(&snap), &Request::new(&app, &v1, &d), 1)).ok();
        });
    }
    let d = filtered();
    cpu_per_call("cpu place_one/filtered", || {
        black_box(place(black_box(&snap), &Request::new(&app, &v1, &d), 1)).ok();
    });
    let d = deployment("web", 10);
    cpu_per_call("cpu place_ten/most_free_memory", || {
        black_box(place(black_box(&snap), &Request::new(&app, &v1, &d), 10)).ok();
    });
    let (web, global) = with_web(&mut snap, &app, &v1);
    cpu_per_call("cpu plan/replicas", || {
        black_box(plan(black_box(&snap), &app, &v1, &web, 5));
    });
    cpu_per_call("cpu plan/global", || {
        black_box(plan(black_box(&snap), &app, &v1, &global, 5));
    });
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only under `cargo bench` (which passes --bench), as criterion itself.
    if std::env::args().any(|a| a == "--bench") {
        cpu_figures();
    }
}
