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
//! Run: `cargo bench -p caas-backends --bench placement -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;

use caas_backends::assignment::MemoryLimit;
use caas_backends::scheduler::deployment::{AppRule, Deployment, Strategy};
use caas_backends::scheduler::placement::{Request, place};
use caas_backends::scheduler::plan::plan;
use caas_backends::scheduler::snapshot::{DeploymentState, HostState, Snapshot};
use caas_backends::zk::hosts::{HostInfo, Resources};
use caas_core::{AppId, InstanceId, Version};
use criterion::{Criterion, criterion_group, criterion_main};

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
    let mut d = deployment("web", 1);
    d.constraints = vec![match "zone!=c".parse() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }];
    d.anti_affinity = vec![AppRule {
        app: id(AppId::new("app7")),
    }];
    d.spread = true;
    g.bench_function("filtered", |b| {
        b.iter(|| place(black_box(&snap), &Request::new(&app, &v1, &d), 1))
    });
    g.finish();

    let d = deployment("web", 10);
    c.bench_function("place_ten/most_free_memory", |b| {
        b.iter(|| place(black_box(&snap), &Request::new(&app, &v1, &d), 10))
    });

    // A 10-replica deployment already running 5 (on the first five hosts).
    let web = deployment("web", 10);
    for i in 0..5 {
        let host = snap.hosts.values_mut().nth(i * 100);
        if let Some(h) = host {
            h.instances.insert(
                id(InstanceId::new(&format!("web-v1-{i}"))),
                web.assignment(&app, &v1),
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
    c.bench_function("plan/replicas", |b| {
        b.iter(|| plan(black_box(&snap), &app, &v1, &web, 5))
    });
    let mut global = deployment("web", 0);
    global.replicas = None;
    global.global = true;
    c.bench_function("plan/global", |b| {
        b.iter(|| plan(black_box(&snap), &app, &v1, &global, 5))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
