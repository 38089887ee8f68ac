//! The store contract on ZooKeeper and on etcd, side by side in one run: the initial load of
//! 10,000 registration entries, as a component on the contract (discovery, a scheduler
//! pass) would do it.
//!
//! Each store (a private real server, started by `testing`) is first filled with 10,000
//! entries in the registry layout, `/service/address/app{0..99}/v1/i{0..99}` →
//! `127.0.0.2:PORT`, in commits of 100 creates (the write figure). Then, five times, a new
//! handle connects and reads everything through the contract: `children` of the apps and
//! of each app's versions, then the entries, either by `children` of each version and a
//! `get` of every entry, or by one `list` of each version, all in flight at once (the load
//! figures: connect included). For etcd, one ranged read of the whole prefix with the raw
//! client is printed too.
//!
//! Then registration → routable through `StoreDiscovery`, as an etcd- or ZooKeeper-fed
//! gateway sees it: a router fed by a `StoreDiscovery` on its own handle (its first full read
//! includes the 10,000 entries), and another handle, like a host agent, makes 1,000
//! registrations one after the other (`create_ephemeral` of
//! `/service/address/reg{0..49}/v1/c{i}`); each is timed from the call until the router
//! routes the new endpoint. p50, p99 and max per store.
//!
//! Not criterion: a one-off setup on live servers. Run with
//! `cargo bench -p caas-backends --bench store` (add `CARGO_PROFILE_BENCH_LTO=false
//! CARGO_PROFILE_BENCH_CODEGEN_UNITS=16` for a quicker build).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use std::sync::Arc;

use caas_backends::store::{Op, Store, StoreDiscovery};
use caas_backends::testing::routes::endpoint_count;
use caas_backends::testing::stores::{EtcdFixture, StoreFixture, ZkFixture};
use caas_core::{AppId, Discovery as _, Domain, Router};
use futures_util::future::join_all;
use tokio::sync::watch;

const APPS: usize = 100;
const PER_APP: usize = 100;
const RUNS: usize = 5;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn fill<S: Store>(s: &S) -> Duration {
    let started = Instant::now();
    for a in 0..APPS {
        let ops = (0..PER_APP)
            .map(|i| Op::Create {
                path: format!("/service/address/app{a}/v1/i{i}"),
                data: format!("127.0.0.2:{}", 20_000 + a * PER_APP + i).into_bytes(),
            })
            .collect();
        s.commit(ops).await.unwrap();
    }
    started.elapsed()
}

/// Everything under /service/address through the contract; the number of entries. The
/// entries of each version by a `get` each, or (`with_list`) by one `list`.
async fn load<S: Store>(s: &S, with_list: bool) -> usize {
    let apps = s.children("/service/address").await.unwrap();
    let app_paths: Vec<String> = apps
        .iter()
        .map(|a| format!("/service/address/{a}"))
        .collect();
    let versions = join_all(app_paths.iter().map(|p| s.children(p))).await;
    let mut version_paths = Vec::new();
    for (p, vs) in app_paths.iter().zip(versions) {
        for v in vs.unwrap() {
            version_paths.push(format!("{p}/{v}"));
        }
    }
    if !with_list {
        let instances = join_all(version_paths.iter().map(|p| s.children(p))).await;
        let mut entry_paths = Vec::new();
        for (p, is) in version_paths.iter().zip(instances) {
            for i in is.unwrap() {
                entry_paths.push(format!("{p}/{i}"));
            }
        }
        let entries = join_all(entry_paths.iter().map(|p| s.get(p))).await;
        return entries
            .into_iter()
            .filter(|e| matches!(e, Ok(Some(v)) if !v.data.is_empty()))
            .count();
    }
    let lists = join_all(version_paths.iter().map(|p| s.list(p))).await;
    lists
        .into_iter()
        .map(|l| {
            l.unwrap()
                .iter()
                .filter(|(_, v)| !v.data.is_empty())
                .count()
        })
        .sum()
}

async fn run<F: StoreFixture>(f: &F) {
    let writer = f.connect().await.unwrap();
    let wrote = fill(&writer).await;
    println!(
        "{:>9}: wrote {} entries in {:.0} ms ({:.0} entries/s, commits of {PER_APP})",
        f.name(),
        APPS * PER_APP,
        ms(wrote),
        (APPS * PER_APP) as f64 / wrote.as_secs_f64()
    );
    for (with_list, how) in [(false, "a get per entry"), (true, "a list per version")] {
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            let reader = f.connect().await.unwrap();
            let n = load(&reader, with_list).await;
            times.push(started.elapsed());
            assert_eq!(n, APPS * PER_APP, "{}: every entry read", f.name());
            reader.close().await;
        }
        times.sort();
        println!(
            "{:>9}: initial load of {} entries, {how}: median {:.0} ms (min {:.0}, max {:.0}) over {RUNS} runs",
            f.name(),
            APPS * PER_APP,
            ms(times[RUNS / 2]),
            ms(times[0]),
            ms(times[RUNS - 1])
        );
    }
    writer.close().await;
}

const REGISTRATIONS: u32 = 1000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn registration_to_routable<F: StoreFixture>(f: &F) {
    let router = Arc::new(Router::new(vec![Domain::new("caas.local").unwrap()]));
    let (tx, mut ticks) = watch::channel(0u64);
    let mut discovery = StoreDiscovery::start(f.connect().await.unwrap(), None);
    let r = router.clone();
    tokio::spawn(async move {
        while let Some(update) = discovery.next().await {
            tx.send_replace(r.apply(update).generation);
        }
    });
    ticks.changed().await.unwrap(); // the first full read
    let agent = f.connect().await.unwrap();
    let mut samples = Vec::with_capacity(REGISTRATIONS as usize);
    for i in 0..REGISTRATIONS {
        let app = AppId::new(&format!("reg{}", i % 50)).unwrap();
        let want = (i / 50 + 1) as usize;
        let path = format!("/service/address/{app}/v1/c{i}");
        let addr = format!("10.0.{}.{}:8080", i / 250, i % 250);
        let started = Instant::now();
        agent
            .create_ephemeral(&path, addr.as_bytes())
            .await
            .unwrap();
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
        "{:>9}: registration -> routable (StoreDiscovery) over {} registrations: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        f.name(),
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(samples[samples.len() - 1]),
    );
    agent.close().await;
}

async fn etcd_one_range(f: &EtcdFixture) {
    let s = f.connect().await.unwrap();
    let prefix = s.key("bench", "/service/address").unwrap() + "/";
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let mut client = s.client();
        let resp = client
            .get(
                prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        assert_eq!(resp.kvs().len(), APPS * PER_APP);
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "{:>9}: the same entries in one ranged read (raw client): median {:.0} ms (min {:.0}, max {:.0})",
        "etcd",
        ms(times[RUNS / 2]),
        ms(times[0]),
        ms(times[RUNS - 1])
    );
    s.close().await;
}

fn main() {
    // `cargo bench` passes `--bench`; a test runner listing or running benches gets nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if let Some(zk) = ZkFixture::private("bench_store") {
            run(&zk).await;
            registration_to_routable(&zk).await;
        }
        if let Some(etcd) = EtcdFixture::private("bench_store") {
            run(&etcd).await;
            etcd_one_range(&etcd).await;
            registration_to_routable(&etcd).await;
        }
    });
}
