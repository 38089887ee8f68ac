//! Committed placements per second into a real ZooKeeper 3.8 (standalone, on loopback, fsync
//! on), with one scheduler and with three racing ones, and their conflict rate (refused or
//! unknown commits over all commit attempts).
//!
//! Each round: fresh chroot, `HOSTS` hosts published, `DEPLOYMENTS` deployments of
//! `REPLICAS` written, *then* the schedulers start; the clock runs from their start until
//! the instances they placed add up to the total. The result is audited (every instance
//! exactly once, every host's `allocated` the sum of its assignments, within capacity).
//! Two clusters: 20 roomy hosts (1,000 instances), and 4 hosts with 216 slots for 200
//! instances (the race of `tests/scheduler.rs`, where every commit touches one of four host
//! nodes).
//!
//! Not criterion: each figure needs a live server and a one-off setup. Run with
//! `cargo bench -p caas-backends --bench scheduler` (prints the figures; add
//! `CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16` for a quicker build).
//!
//! Measured on the 2-core dev machine (load average 6–10 from other work), four runs:
//! 20 hosts: 1 scheduler 2,100–3,300 placements/s, 3 schedulers 840–1,770/s with a conflict
//! rate of 5.7–7.4 %; 4 hosts: 1 scheduler 1,030–1,450/s, 3 schedulers 990–3,200/s, conflict
//! rate 9.1–13 %.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use caas_backends::assignment::MemoryLimit;
use caas_backends::scheduler::SchedulerStatsSnapshot;
use caas_backends::scheduler::control;
use caas_backends::scheduler::deployment::Deployment;
use caas_backends::scheduler::snapshot;
use caas_backends::store::ZkStore;
use caas_backends::testing::ZkServer;
use caas_backends::zk::hosts::{HostInfo, Resources};
use caas_backends::zk::{HostStore, ZkConfig, ZkSession};
use caas_backends::{Scheduler, SchedulerConfig};
use caas_core::{AppId, Version};

const MIB: u64 = 1 << 20;

struct Round {
    hosts: usize,
    host_memory: u64,
    deployments: usize,
    replicas: u32,
}

async fn round(zk: &ZkServer, name: &str, r: &Round, schedulers: usize) {
    let config = ZkConfig::new(zk.connect_string())
        .with_chroot(format!("/bench-{name}-{schedulers}"))
        .with_session_timeout(Duration::from_secs(20));
    let session = ZkSession::connect(config.clone()).await.unwrap();
    let store = ZkStore::new(session.clone());
    let hosts = HostStore::new(ZkStore::new(session.clone()));
    for h in 0..r.hosts {
        let id = format!("h{h}");
        let info = HostInfo {
            ip: "127.0.0.2".parse().unwrap(),
            labels: Default::default(),
            capacity: Resources {
                memory: r.host_memory,
                cpu_shares: 1 << 30,
                instances: 10_000,
            },
            allocated: Resources::default(),
            cpu_idle: None,
            draining: false,
            logs: None,
        };
        hosts.ensure(&id).await.unwrap();
        hosts
            .publish_agent_fields(&id, &(&info).into())
            .await
            .unwrap();
        hosts.mark_alive(&id, info.ip).await.unwrap();
    }
    let v1 = Version::new("v1").unwrap();
    for i in 0..r.deployments {
        let app = AppId::new(&format!("app{i}")).unwrap();
        let mut d = Deployment::new(format!("127.0.0.1:5000/{app}:v1"), 8080, r.replicas);
        d.memory = MemoryLimit::from_bytes(64 * MIB);
        d.cpu_shares = 10;
        control::deploy(&store, &app, &v1, &d).await.unwrap();
    }
    let total = (r.deployments * r.replicas as usize) as u64;
    let mut handles = Vec::new();
    let started = Instant::now();
    for s in 0..schedulers {
        let store = ZkStore::new(ZkSession::connect(config.clone()).await.unwrap());
        let config = SchedulerConfig {
            name: format!("s{s}"),
            host_grace: Duration::from_secs(600),
            ..SchedulerConfig::default()
        };
        handles.push(Scheduler::new(store, config).spawn());
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while handles.iter().map(|h| h.stats().placed).sum::<u64>() < total {
        assert!(Instant::now() < deadline, "{name}: not all placed in 300 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let stats: Vec<SchedulerStatsSnapshot> = handles.iter().map(|h| h.stats()).collect();
    for h in handles {
        h.shutdown().await;
    }
    // Audit.
    let snap = snapshot::read(&store).await.unwrap();
    let mut ids = BTreeSet::new();
    for h in snap.hosts.values() {
        assert_eq!(h.info.allocated, h.used(), "{name}: {} allocation", h.id);
        assert!(
            h.used().memory <= h.info.capacity.memory,
            "{name}: {} over capacity",
            h.id
        );
        for id in h.instances.keys() {
            assert!(ids.insert(id.clone()), "{name}: {id} placed twice");
        }
    }
    assert_eq!(
        ids.len() as u64,
        total,
        "{name}: placed {} of {total}",
        ids.len()
    );
    let sum = |f: fn(&SchedulerStatsSnapshot) -> u64| stats.iter().map(f).sum::<u64>();
    let all = SchedulerStatsSnapshot {
        commits: sum(|s| s.commits),
        conflicts: sum(|s| s.conflicts),
        unknown_outcomes: sum(|s| s.unknown_outcomes),
        ..SchedulerStatsSnapshot::default()
    };
    println!(
        "{name}: {schedulers} scheduler(s), {} hosts, {total} instances in {} deployments: \
         {:.0} placements/s ({:.0} ms), {} commits, {} refused + {} unknown, conflict rate {:.1} %, \
         gave up {}",
        r.hosts,
        r.deployments,
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3,
        all.commits,
        all.conflicts,
        all.unknown_outcomes,
        all.conflict_rate() * 100.0,
        sum(|s| s.gave_up),
    );
    session.close();
}

fn main() {
    // `cargo bench` passes `--bench`; test runners building benches do not: then this
    // measurement does nothing (as benches/zk.rs).
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let Some(zk) = ZkServer::start_or_skip(ZkServer::builder(), "benches/scheduler") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let roomy = Round {
        hosts: 20,
        host_memory: 64 << 30,
        deployments: 100,
        replicas: 10,
    };
    let tight = Round {
        hosts: 4,
        host_memory: 54 * 64 * MIB,
        deployments: 20,
        replicas: 10,
    };
    rt.block_on(async {
        for schedulers in [1, 3] {
            round(&zk, "roomy", &roomy, schedulers).await;
            round(&zk, "tight", &tight, schedulers).await;
        }
    });
}
