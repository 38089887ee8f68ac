//! Benchmarks of caas-core's hot data structures, each measured against the target given
//! below (there is no other implementation to compare with in-process; the side-by-side
//! comparison with nginx and HAProxy is `benches/compare.sh`):
//!
//! - `lookup/*`: `RouteTable::lookup` by `Host` at 10, 10,000 and 100,000 apps — target
//!   ≤ 100 ns at 100,000 apps. Hits, version hosts, custom domains, mixed case with a port,
//!   misses, and a mix of all of them; plus lookup + `Route::pool()` + pick, and
//!   `Router::load()` + lookup + pool + pick, the per-request path of the gateway.
//! - `pick/*`: `Pool::pick` for round_robin, weighted and p2c over 3 and 32 endpoints, and
//!   `Route::pool()` on a 90/10 weighted version split — target ≤ 20 ns.
//! - `rebuild/*`: `RouteTable::build` of a 10,000-app table from a snapshot, with and without a
//!   previous table to carry state from, dropping a 10,000-app table, and `Router::apply` of
//!   one `Upsert` on a 10,000-app router that keeps the app's host names (one app rebuilt,
//!   the rest shared; swap and drop), and one that changes them (a remove or a re-insert: the
//!   full rebuild) — target ≤ 20 ms.
//! - `rebuild_while_serving/*`: the same `Router::apply` while another thread loops
//!   load + lookup + pick; prints how many reader operations completed during the rebuilds and
//!   the reader's batch latencies with and without a rebuild running, to show readers never
//!   block on a rebuild, and what a reader pays if it is the last holder of the old table.
//! - `limit/*`: the per-client rate limiter (a bounded moka cache of one GCRA state per
//!   client address): one admission for a client already tracked, and for a new client each
//!   time; then, printed, the memory it takes to track 1,000,000 distinct clients (RSS growth
//!   of a fresh process, with `per_client_tracked` = 1,000,000).
//!
//! Every app has 2 versions × 3 endpoints, default version v1 and one custom domain.
//! Setup (snapshots, tables, host lists) happens outside the timed closures.
//!
//! Run: `cargo bench --bench core -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use caas_core::limit::{ClientLimiter, Gcra};
use caas_core::{
    AppId, AppSpec, BalancerKind, Domain, Endpoint, EndpointState, Pool, RouteTable, Router,
    Snapshot, Update, Version, VersionSpec,
};
use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, criterion_group};

/// App counts for the lookup benches.
const SIZES: [usize; 3] = [10, 10_000, 100_000];
/// App count for the rebuild benches.
const REBUILD_APPS: usize = 10_000;
/// Host strings cycled through by a lookup bench: enough to spread probes over a 100,000-app
/// table, few enough (a power of two) that the host strings themselves stay in cache, as a
/// freshly parsed `Host` header would be.
const HOSTS: usize = 4096;

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("bench setup: {e:?}"),
    }
}

fn domains() -> Vec<Domain> {
    vec![ok(Domain::new("caas.local"))]
}

/// A distinct loopback-style address per (app, version, endpoint).
fn addr(app: usize, version: usize, ep: usize) -> SocketAddr {
    let n = u32::try_from(app * 2 + version).unwrap_or(u32::MAX);
    let ip = Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff));
    SocketAddr::V4(SocketAddrV4::new(ip, 9000 + ep as u16))
}

/// `app{i}`: versions v1 and v2 with 3 endpoints each, default v1, custom domain
/// `www.app{i}.test`. `tweak` changes one endpoint so an upsert is a real change.
fn app_spec(i: usize, tweak: u16) -> AppSpec {
    let versions = ["v1", "v2"]
        .iter()
        .enumerate()
        .map(|(vi, v)| {
            let endpoints = (0..3)
                .map(|e| {
                    let mut a = addr(i, vi, e);
                    if e == 2 {
                        a.set_port(a.port() + 100 * tweak);
                    }
                    Endpoint::new(a)
                })
                .collect();
            (ok(Version::new(v)), VersionSpec { endpoints })
        })
        .collect();
    AppSpec {
        default_version: Some(ok(Version::new("v1"))),
        domains: vec![ok(Domain::new(&format!("www.app{i}.test")))],
        versions,
        ..AppSpec::default()
    }
}

fn snapshot(apps: usize) -> Snapshot {
    Snapshot {
        apps: (0..apps)
            .map(|i| (ok(AppId::new(&format!("app{i}"))), app_spec(i, 0)))
            .collect(),
        ..Snapshot::default()
    }
}

fn table(apps: usize) -> RouteTable {
    let (t, warnings) = RouteTable::build(&snapshot(apps), &domains(), None, 1);
    assert!(warnings.is_empty(), "{warnings:?}");
    t
}

/// splitmix64: reproducible spread of app indices without a `rand` dependency.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone, Copy)]
enum HostKind {
    Hit,
    Version,
    Custom,
    MixedCase,
    Miss,
    /// Hit, Hit, Version, MixedCase, Custom, Hit, Version, Miss, …
    Mix,
}

impl HostKind {
    fn name(self) -> &'static str {
        match self {
            HostKind::Hit => "hit",
            HostKind::Version => "version_host",
            HostKind::Custom => "custom_domain",
            HostKind::MixedCase => "mixed_case_port",
            HostKind::Miss => "miss",
            HostKind::Mix => "mix",
        }
    }

    fn is_hit(self, k: usize) -> bool {
        match self {
            HostKind::Miss => false,
            HostKind::Mix => k % 8 != 7,
            _ => true,
        }
    }
}

fn host(kind: HostKind, i: usize, k: usize) -> String {
    match kind {
        HostKind::Hit => format!("app{i}.caas.local"),
        HostKind::Version => format!("v2.app{i}.caas.local"),
        HostKind::Custom => format!("www.app{i}.test"),
        HostKind::MixedCase => format!("App{i}.CAAS.local:8080"),
        HostKind::Miss => format!("nope{i}.caas.local"),
        HostKind::Mix => {
            let order = [
                HostKind::Hit,
                HostKind::Hit,
                HostKind::Version,
                HostKind::MixedCase,
                HostKind::Custom,
                HostKind::Hit,
                HostKind::Version,
                HostKind::Miss,
            ];
            let sub = order[k % order.len()];
            match (sub, k % 8) {
                (HostKind::Version, 6) => format!("v1.app{i}.caas.local"),
                _ => host(sub, i, 0),
            }
        }
    }
}

/// `HOSTS` host names of one kind over apps spread across the whole table.
fn hosts(kind: HostKind, apps: usize) -> Vec<String> {
    (0..HOSTS)
        .map(|k| {
            let i = (mix(k as u64) % apps as u64) as usize;
            host(kind, i, k)
        })
        .collect()
}

fn bench_lookup(c: &mut Criterion) {
    let kinds = [
        HostKind::Hit,
        HostKind::Version,
        HostKind::Custom,
        HostKind::MixedCase,
        HostKind::Miss,
        HostKind::Mix,
    ];
    let mut g = c.benchmark_group("lookup");
    for apps in SIZES {
        let t = table(apps);
        for kind in kinds {
            let hs = hosts(kind, apps);
            // Check once, untimed, that hits hit and misses miss.
            for (k, h) in hs.iter().enumerate() {
                assert_eq!(t.lookup(h).is_some(), kind.is_hit(k), "{h}");
            }
            g.bench_function(BenchmarkId::new(kind.name(), apps), |b| {
                let mut k = 0usize;
                b.iter(|| {
                    k = k.wrapping_add(1);
                    let h = &hs[k & (HOSTS - 1)];
                    black_box(t.lookup(black_box(h.as_str())).is_some())
                })
            });
        }
        // Lookup, then use the route: default pool of the app, pick an endpoint. At scale this
        // is where the cache misses are (app, version, pool, cursor and endpoint live apart).
        let hs = hosts(HostKind::Hit, apps);
        g.bench_function(BenchmarkId::new("lookup_pick", apps), |b| {
            let mut k = 0usize;
            b.iter(|| {
                k = k.wrapping_add(1);
                let r = t.lookup(black_box(hs[k & (HOSTS - 1)].as_str()));
                black_box(r.and_then(|r| r.pool()).and_then(|p| p.pick()).is_some())
            })
        });
        // What the gateway does per request: load the table, route, pick an endpoint.
        drop(t);
        let router = Router::new(domains());
        router.apply(Update::Reset(snapshot(apps)));
        g.bench_function(BenchmarkId::new("router_load_lookup_pick", apps), |b| {
            let mut k = 0usize;
            b.iter(|| {
                k = k.wrapping_add(1);
                let t = router.load();
                let r = t.lookup(black_box(hs[k & (HOSTS - 1)].as_str()));
                black_box(r.and_then(|r| r.pool()).and_then(|p| p.pick()).is_some())
            })
        });
    }
    g.finish();
}

fn pool(kind: BalancerKind, n: usize) -> Pool {
    let eps = (0..n)
        .map(|e| {
            let mut ep = Endpoint::new(addr(0, 0, e));
            // Uneven weights so the weighted balancer has a real sequence to walk.
            ep.weight = 1 + (e % 3) as u32;
            Arc::new(EndpointState::new(ep))
        })
        .collect();
    Pool::new(kind, eps, Arc::default())
}

fn bench_pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for kind in [
        BalancerKind::RoundRobin,
        BalancerKind::Weighted,
        BalancerKind::P2c,
    ] {
        for n in [3, 32] {
            let p = pool(kind, n);
            g.bench_function(BenchmarkId::new(kind.as_str(), n), |b| {
                b.iter(|| black_box(black_box(&p).pick().is_some()))
            });
        }
    }

    // `hello.caas.local` split 90/10 across v1 and v2.
    let mut spec = app_spec(0, 0);
    spec.weights = [("v1", 90), ("v2", 10)]
        .into_iter()
        .map(|(v, w)| (ok(Version::new(v)), w))
        .collect();
    let s = Snapshot {
        apps: [(ok(AppId::new("hello")), spec)].into(),
        ..Snapshot::default()
    };
    let (t, _) = RouteTable::build(&s, &domains(), None, 1);
    let route = t.lookup("hello.caas.local").expect("hello routes");
    g.bench_function("route_pool_split_90_10", |b| {
        b.iter(|| black_box(black_box(route).pool().is_some()))
    });
    g.bench_function("route_pool_split_90_10+pick", |b| {
        b.iter(|| black_box(black_box(route).pool().and_then(|p| p.pick()).is_some()))
    });
    g.finish();
}

/// One upsert that changes an endpoint of an app in the middle of a table of `apps`.
fn upsert_in(apps: usize, step: u64) -> Update {
    let i = apps / 2;
    Update::Upsert(
        ok(AppId::new(&format!("app{i}"))),
        app_spec(i, (step % 2) as u16),
    )
}

/// [`upsert_in`] a table of [`REBUILD_APPS`].
fn upsert(step: u64) -> Update {
    upsert_in(REBUILD_APPS, step)
}

fn bench_rebuild(c: &mut Criterion) {
    let mut g = c.benchmark_group("rebuild");
    g.sampling_mode(SamplingMode::Flat).sample_size(20);
    let snap = snapshot(REBUILD_APPS);
    let doms = domains();
    let prev = table(REBUILD_APPS);
    let mut generation = 1u64;

    g.bench_function(BenchmarkId::new("build_fresh", REBUILD_APPS), |b| {
        b.iter_with_large_drop(|| {
            generation += 1;
            RouteTable::build(black_box(&snap), &doms, None, generation)
        })
    });
    g.bench_function(BenchmarkId::new("build_from_previous", REBUILD_APPS), |b| {
        b.iter_with_large_drop(|| {
            generation += 1;
            RouteTable::build(black_box(&snap), &doms, Some(&prev), generation)
        })
    });
    // Whoever holds the last `Arc` of an old table pays for this, normally the writer.
    g.bench_function(BenchmarkId::new("drop_table", REBUILD_APPS), |b| {
        b.iter_batched(
            || table(REBUILD_APPS),
            |t| drop(black_box(t)),
            BatchSize::PerIteration,
        )
    });

    // A one-app change, and the same in a table ten times larger: the app list's chunk list
    // it copies is ten times longer (1,563 chunks against 157), the rest the same.
    let mut step = 0u64;
    let routers = [REBUILD_APPS, REBUILD_APPS * 10].map(|apps| {
        let router = Router::new(domains());
        router.apply(Update::Reset(snapshot(apps)));
        (apps, router)
    });
    for (apps, router) in &routers {
        g.bench_function(BenchmarkId::new("router_apply_upsert", apps), |b| {
            b.iter_batched(
                || {
                    step += 1;
                    upsert_in(*apps, step)
                },
                |u| black_box(router.apply(u).generation),
                BatchSize::SmallInput,
            )
        });
    }
    let [(_, router), _] = &routers;
    // An app removed, then back: its host names change each time, so the whole table is
    // rebuilt (what every upsert cost before the one-app path).
    g.bench_function(
        BenchmarkId::new("router_apply_names_change", REBUILD_APPS),
        |b| {
            b.iter_batched(
                || {
                    step += 1;
                    match upsert(step) {
                        Update::Upsert(id, _) if step % 2 == 0 => Update::Remove(id),
                        u => u,
                    }
                },
                |u| black_box(router.apply(u).generation),
                BatchSize::SmallInput,
            )
        },
    );
    g.finish();
}

/// Shared between the bench thread and the reader thread.
struct ReaderShared {
    /// Reader operations completed, published every `BATCH` operations.
    ops: AtomicU64,
    /// Set by the bench thread while `Router::apply` runs.
    rebuilding: AtomicBool,
    stop: AtomicBool,
}

const BATCH: u64 = 64;

/// Durations (ns) of the reader's `BATCH`-op batches: `[0]` with no rebuild running when the
/// batch started, `[1]` with one running.
type BatchTimes = [Vec<u64>; 2];

/// Loops `Router::load` + lookup + pick over hit hosts until told to stop.
fn reader(router: Arc<Router>, hosts: Vec<String>, shared: Arc<ReaderShared>) -> BatchTimes {
    let mut times: BatchTimes = [Vec::with_capacity(1 << 20), Vec::with_capacity(1 << 20)];
    let mut k = 0usize;
    let mut done = 0u64;
    while !shared.stop.load(Relaxed) {
        let during = usize::from(shared.rebuilding.load(Relaxed));
        let started = Instant::now();
        for _ in 0..BATCH {
            k = k.wrapping_add(1);
            let t = router.load();
            let h = &hosts[k & (HOSTS - 1)];
            let picked = t.lookup(h).and_then(|r| r.pool()).and_then(|p| p.pick());
            assert!(black_box(picked).is_some(), "reader: {h} did not route");
        }
        times[during].push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        done += BATCH;
        shared.ops.store(done, Relaxed);
    }
    times
}

/// "p50 / p99 / p99.9 / max" of batch times, in µs per batch.
fn percentiles(mut v: Vec<u64>) -> String {
    if v.is_empty() {
        return "no batches".to_owned();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize] as f64 / 1e3;
    format!(
        "p50 {:.1} / p99 {:.1} / p99.9 {:.1} / max {:.1} µs over {} batches",
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0),
        v.len()
    )
}

fn bench_rebuild_while_serving(c: &mut Criterion) {
    // Test runners list bench targets (`--list`): no setup and no output then.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let router = Arc::new(Router::new(domains()));
    router.apply(Update::Reset(snapshot(REBUILD_APPS)));
    let shared = Arc::new(ReaderShared {
        ops: AtomicU64::new(0),
        rebuilding: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let handle = {
        let (router, shared) = (Arc::clone(&router), Arc::clone(&shared));
        let hs = hosts(HostKind::Hit, REBUILD_APPS);
        thread::spawn(move || reader(router, hs, shared))
    };

    // Reader rate with no rebuild running.
    thread::sleep(Duration::from_millis(200));
    let (ops0, t0) = (shared.ops.load(Relaxed), Instant::now());
    thread::sleep(Duration::from_millis(500));
    let idle_rate = (shared.ops.load(Relaxed) - ops0) as f64 / t0.elapsed().as_secs_f64();

    // Reader operations completed while an apply was running, summed over all applies, and
    // the fewest completed during any one apply.
    let mut during_ops = 0u64;
    let mut min_ops = u64::MAX;
    let mut during_time = Duration::ZERO;
    let mut rebuilds = 0u64;
    let mut step = 0u64;
    let mut g = c.benchmark_group("rebuild_while_serving");
    g.sampling_mode(SamplingMode::Flat).sample_size(20);
    g.bench_function(BenchmarkId::new("router_apply_upsert", REBUILD_APPS), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                step += 1;
                let u = upsert(step);
                let before = shared.ops.load(Relaxed);
                shared.rebuilding.store(true, Relaxed);
                let started = Instant::now();
                black_box(router.apply(u));
                let took = started.elapsed();
                shared.rebuilding.store(false, Relaxed);
                let ops = shared.ops.load(Relaxed) - before;
                during_ops += ops;
                min_ops = min_ops.min(ops);
                during_time += took;
                total += took;
                rebuilds += 1;
            }
            total
        })
    });
    g.finish();
    shared.stop.store(true, Relaxed);
    let [idle, busy] = match handle.join() {
        Ok(times) => times,
        Err(_) => panic!("reader thread panicked"),
    };

    // A request holds the table it started with; if it still holds it when the
    // writer swaps, the request's thread is the one that frees the old table.
    let held = router.current();
    step += 1;
    router.apply(upsert(step));
    let started = Instant::now();
    drop(held);
    let last_holder_drop = started.elapsed();

    if rebuilds == 0 {
        return; // criterion's test mode ran nothing to report
    }
    let busy_rate = during_ops as f64 / during_time.as_secs_f64().max(1e-9);
    eprintln!(
        "rebuild_while_serving: {rebuilds} applies on a {REBUILD_APPS}-app router, {:.1} ms each \
         on average. The reader completed {during_ops} load+lookup+pick during them \
         ({:.0} per apply on average, {min_ops} in the slowest-to-progress apply; \
         {:.2} M/s vs {:.2} M/s with no apply running).",
        during_time.as_secs_f64() * 1e3 / rebuilds.max(1) as f64,
        during_ops as f64 / rebuilds.max(1) as f64,
        busy_rate / 1e6,
        idle_rate / 1e6,
    );
    eprintln!(
        "rebuild_while_serving: reader {BATCH}-op batches, no apply running: {}",
        percentiles(idle)
    );
    eprintln!(
        "rebuild_while_serving: reader {BATCH}-op batches, apply running:    {}",
        percentiles(busy)
    );
    eprintln!(
        "rebuild_while_serving: a reader waiting on the writer would show a higher p50 with an \
         apply running; a lower rate with the same p50 is the reader sharing CPUs with the writer"
    );
    eprintln!(
        "rebuild_while_serving: a reader that still held the old table across the swap freed it \
         when it let go: {:.1} ms on the reader's thread",
        last_holder_drop.as_secs_f64() * 1e3
    );
}

/// Resident set size of this process, in bytes (0 where /proc is not there).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn bench_limit(c: &mut Criterion) {
    let mut g = c.benchmark_group("limit");
    // High enough that no admission is refused: the cost measured is the bookkeeping.
    let gcra = Gcra::new(1_000_000_000, None);
    let known = ClientLimiter::new(gcra, 100_000);
    let client = std::net::IpAddr::from([198, 51, 100, 7]);
    let _ = known.try_acquire(client);
    g.bench_function("per_client_known", |b| {
        b.iter(|| black_box(known.try_acquire(black_box(client))))
    });
    let fresh = ClientLimiter::new(gcra, 100_000);
    let mut next = 0u32;
    g.bench_function("per_client_new", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            black_box(fresh.try_acquire(std::net::IpAddr::from(next.to_be_bytes())))
        })
    });
    g.finish();
    drop((known, fresh));

    // A measurement, not a test: test runners run bench targets without `--bench`. It runs
    // in a fresh process: here the allocator already holds what the benches above freed
    // (millions of clients went through `fresh`), and would hand it back without the RSS
    // growing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let measured = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .env(LIMIT_1M_ENV, "1")
            .status()
    });
    match measured {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("limit/per_client_1m: the measuring process failed: {status}"),
        Err(e) => eprintln!("limit/per_client_1m: could not start the measuring process: {e}"),
    }
}

/// Set in the environment of the process that measures one million clients' memory.
const LIMIT_1M_ENV: &str = "CAAS_BENCH_LIMIT_1M";

/// The RSS one million distinct clients cost in a per-client limiter, in a fresh process.
fn per_client_1m() {
    const CLIENTS: u32 = 1_000_000;
    let before = rss_bytes();
    let started = Instant::now();
    // A slow refill (an hour), so no client is forgotten for idleness while they are added.
    let million = ClientLimiter::new(Gcra::new(1, Some(3599)), u64::from(CLIENTS));
    for i in 0..CLIENTS {
        let _ = million.try_acquire(std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
    }
    let tracked = million.tracked_now();
    let grown = rss_bytes().saturating_sub(before);
    eprintln!(
        "limit/per_client_1m: {tracked} clients tracked in {:.1} s, RSS +{:.1} MiB ({:.0} bytes per client)",
        started.elapsed().as_secs_f64(),
        grown as f64 / (1 << 20) as f64,
        grown as f64 / tracked.max(1) as f64,
    );
}

criterion_group!(
    benches,
    bench_lookup,
    bench_pick,
    bench_rebuild,
    bench_rebuild_while_serving,
    bench_limit
);

fn main() {
    if std::env::var_os(LIMIT_1M_ENV).is_some() {
        per_client_1m();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
