//! ZooKeeper backend figures against a real ZooKeeper 3.8 (started by `testing::ZkServer`):
//!
//! 1. registration → routable: time from calling `Registry::register` until the gateway's
//!    `Router` (fed by `ZkDiscovery`, as the gateway does) routes the new instance; p50, p99
//!    and max over 1,000 registrations (50 apps × 20 instances). Target p99 ≤ 50 ms.
//! 2. initial load: 10,000 instances registered (100 apps × 100), then a new `ZkDiscovery`
//!    starts: time until its first `Reset` is applied to a router, and the RSS growth of
//!    this process over that load (session, cache, router table).
//!
//! Not criterion: each figure needs a live server and a one-off setup, and p99 over exactly
//! 1,000 real registrations is the number asked for. Run with
//! `cargo bench -p caas-backends --bench zk` (prints the figures; add
//! `CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16` for a quicker build).
//!
//! Measured on the 2-core dev machine (ZooKeeper 3.8 standalone on loopback, fsync on, one
//! process for registry, discovery and router), three runs:
//! - registration → routable: p50 1.09–1.28 ms, p99 8.5–16.6 ms, max 15.9–28.2 ms;
//! - initial load of 10,000 instances: 239–1068 ms (connect 2 ms; the rest is the pipelined
//!   full read, the first `Reset` and the table build), RSS +5.4–8.6 MiB.
//!
//! Once more on 2026-12-01, after the full read was batched into `MultiRead` requests (one
//! run, AMD EPYC host): registration → routable p50 2.08 ms, p99 16.8 ms, max 39.7 ms;
//! initial load 206 ms (connect 4 ms), RSS +6.7 MiB.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caas_backends::store::ZkStore;
use caas_backends::testing::ZkServer;
use caas_backends::testing::routes::endpoint_count;
use caas_backends::zk::{Registry, ZkConfig, ZkDiscovery, ZkSession};
use caas_core::{AppId, Discovery, Domain, InstanceId, Router, Version};
use tokio::sync::watch;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A router fed by `discovery`; the watch channel ticks after every applied update.
fn gateway(mut discovery: ZkDiscovery) -> (Arc<Router>, watch::Receiver<u64>) {
    let router = Arc::new(Router::new(vec![Domain::new("caas.local").unwrap()]));
    let (tx, rx) = watch::channel(0u64);
    let r = router.clone();
    tokio::spawn(async move {
        while let Some(update) = discovery.next().await {
            let report = r.apply(update);
            tx.send_replace(report.generation);
        }
    });
    (router, rx)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn registration_to_routable(zk: &ZkServer) {
    let cfg = ZkConfig::new(zk.connect_string()).with_chroot("/bench-latency");
    let registry = Registry::new(ZkStore::new(ZkSession::connect(cfg.clone()).await.unwrap()));
    let (router, mut ticks) = gateway(ZkDiscovery::connect(cfg).await.unwrap());
    ticks.changed().await.unwrap(); // the initial Reset
    let v1 = Version::new("v1").unwrap();
    let mut samples = Vec::with_capacity(1000);
    for i in 0..1000u32 {
        let app = AppId::new(&format!("app{}", i % 50)).unwrap();
        let want = (i / 50 + 1) as usize;
        let id = InstanceId::new(&format!("c{i}")).unwrap();
        let addr = SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 8080));
        let started = Instant::now();
        registry.register(&app, &v1, &id, addr).await.unwrap();
        while endpoint_count(&router, &app) < want {
            tokio::time::timeout(Duration::from_secs(10), ticks.changed())
                .await
                .expect("instance never became routable")
                .unwrap();
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "registration -> routable over {} registrations: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
}

async fn initial_load(zk: &ZkServer) {
    let cfg = ZkConfig::new(zk.connect_string()).with_chroot("/bench-load");
    let registry = Registry::new(ZkStore::new(ZkSession::connect(cfg.clone()).await.unwrap()));
    let v1 = Version::new("v1").unwrap();
    let started = Instant::now();
    for chunk in (0..10_000u32).collect::<Vec<_>>().chunks(500) {
        let futs = chunk.iter().map(|&i| {
            let registry = registry.clone();
            let v1 = v1.clone();
            async move {
                let app = AppId::new(&format!("app{}", i % 100)).unwrap();
                let id = InstanceId::new(&format!("c{i}")).unwrap();
                let addr = SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8], 8080));
                registry.register(&app, &v1, &id, addr).await.unwrap();
            }
        });
        futures_util::future::join_all(futs).await;
    }
    println!(
        "registered 10,000 instances in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let rss_before = rss_kib();
    let started = Instant::now();
    let session = ZkSession::connect(cfg).await.unwrap();
    let connected = started.elapsed();
    let (router, mut ticks) = gateway(ZkDiscovery::start(session));
    ticks.changed().await.unwrap();
    let elapsed = started.elapsed();
    let table = router.load();
    let endpoints: usize = table
        .apps()
        .flat_map(|a| a.versions())
        .map(|v| v.pool().endpoints().len())
        .sum();
    assert_eq!(
        endpoints, 10_000,
        "all instances routable after the first Reset"
    );
    let rss_after = rss_kib();
    println!(
        "initial load of {endpoints} instances ({} apps): {:.0} ms in all, of which connect {:.0} ms and full read + first Reset + route table build {:.0} ms; RSS +{:.1} MiB",
        table.apps().len(),
        elapsed.as_secs_f64() * 1e3,
        connected.as_secs_f64() * 1e3,
        (elapsed - connected).as_secs_f64() * 1e3,
        rss_after.saturating_sub(rss_before) as f64 / 1024.0,
    );
}

fn main() {
    // `cargo bench` passes `--bench`. Test runners build benches too and then ask for a test
    // list (`--list`) or run them without `--bench`: this is a measurement, not a test, so
    // it lists nothing and does nothing then.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let zk = match ZkServer::start_or_skip(ZkServer::builder(), "benches/zk") {
        Some(zk) => zk,
        None => return,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        registration_to_routable(&zk).await;
        initial_load(&zk).await;
    });
}
