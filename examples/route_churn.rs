//! `route_churn`: the route-churn driver of `benches/churn.sh`. It fills a ZooKeeper with
//! many apps, then changes their routes at a fixed rate while the benchmark loads a
//! ZooKeeper-fed gateway, so the gateway's latency can be compared with and without churn.
//!
//! ```sh
//! route_churn seed --zk 127.0.0.1:2181 --apps 10000 --backend 127.0.0.1:9001
//! route_churn churn --zk 127.0.0.1:2181 --apps 10000 --backend 127.0.0.1:9001 \
//!     --mode specs --rate 100 --seconds 10
//! ```
//!
//! - `seed` registers `app{0..N}` and `hello`, one instance each at `--backend`
//!   (`/service/address/{app}/v1/seed`, persistent nodes written in commits of 100, so a
//!   10,000-app tree is ready in seconds).
//! - `churn --mode specs` rewrites `/apps/app{k}` (its `max_in_flight` alternates), `k`
//!   cycling over the apps: every write is a route-table change of one app.
//! - `churn --mode registrations` registers an instance of `app{k}` and deregisters it at
//!   the next step: every write is a registration or a deregistration. A registration
//!   still there at the end is deregistered.
//!
//! Writes go one after the other at `--rate` per second (a late write is sent at once, so
//! the average holds); at the end it prints the rate it kept and the slowest write. With
//! `--phase-ms P` it writes only in the "on" half of the wall-clock slices of P ms (counted
//! from the Unix epoch, each dealt to "on" or "off" by a fixed pseudo-random function of its
//! number) and the rate is that of those slices: `open_loop --phase-ms P` sorts its
//! requests by the same slices, so one run measures the latency with and without churn side
//! by side. With `--off-chroot ROOT` as well it writes throughout, in the "off" slices under
//! ROOT (a second tree `seed` filled, which no gateway watches): ZooKeeper and the writer
//! then work alike in both halves, and the halves differ only in what the watching gateway
//! does with the changes.
//!
//! ```sh
//! route_churn serve --listen 127.0.0.1:8080 --apps 10000 --backend 127.0.0.1:9001 --rate 100
//! ```
//!
//! - `serve` is the in-process case, with no store at all: the gateway library embedded
//!   (one worker, domain `caas.local`), fed through its channel discovery with the same
//!   `hello` and `app{0..N}` a `seed` registers. Each line `churn SECONDS [PHASE_MS]` on
//!   stdin sends `--rate` one-app updates a second for that long (the `specs` change:
//!   `app{k}`'s `max_in_flight` alternates; only in the "on" slices when given a phase) and
//!   answers `churned N in S s = R/s, K not applied yet; built T tables, W whole, in U µs
//!   each` (K: the updates the route table had not taken a moment later, 0 normally; T, W
//!   and U from `Router::build_stats`: the tables built meanwhile, how many of them whole,
//!   and the mean time building one, on the library's routes thread). The end of
//!   stdin stops the gateway. The route table then changes exactly as often as asked, and
//!   ZooKeeper's CPU is not in the picture; the thread sending the updates runs at nice 10,
//!   as the gateway's store thread does.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use caas_backends::store::{self, Op, Store, ZkStore};
use caas_backends::zk::{ZkConfig, ZkSession};
use caas_core::{AppId, AppSpec, Domain, Endpoint, Router, Snapshot, Update, Version, VersionSpec};
use caas_gateway::{Gateway, GatewayConfig};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;

#[path = "bench_support/pace.rs"]
// Shared with open_loop, which sorts requests by slice.
mod pace;
use pace::{Half, Pacer, Phases};

#[derive(Parser, Debug)]
#[command(about = "Fills a ZooKeeper with apps and changes their routes at a fixed rate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
struct Common {
    /// ZooKeeper connect string.
    #[arg(long, value_name = "HOST:PORT")]
    zk: String,
    /// Root of the caas tree.
    #[arg(long, default_value = "/caas")]
    chroot: String,
    /// Apps `app0` … `app{N-1}`.
    #[arg(long, default_value_t = 10_000)]
    apps: usize,
    /// Where every instance points.
    #[arg(long)]
    backend: SocketAddr,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Registers one instance of every app (and of `hello`).
    Seed(Common),
    /// Changes routes at a fixed rate.
    Churn(ChurnArgs),
    /// Serves the apps from an embedded gateway and changes its routes in-process on
    /// request (`churn SECONDS [PHASE_MS]` on stdin).
    Serve {
        /// Where the gateway listens.
        #[arg(long)]
        listen: SocketAddr,
        /// Apps `app0` … `app{N-1}`, besides `hello`.
        #[arg(long, default_value_t = 10_000)]
        apps: usize,
        /// Where every app's one endpoint points.
        #[arg(long)]
        backend: SocketAddr,
        /// Route changes per second while churning.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
    },
}

#[derive(clap::Args, Debug)]
struct ChurnArgs {
    #[command(flatten)]
    common: Common,
    /// What each write changes.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Writes per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// For how long.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Write only in the "on" half of the wall-clock slices of this many milliseconds, for
    /// `open_loop --phase-ms` to compare with the "off" half. 0: write throughout.
    #[arg(long, default_value_t = 0)]
    phase_ms: u64,
    /// With `--phase-ms`: write in the "off" slices too, at the same rate and in the same
    /// way, under this root instead (seeded like `--chroot`, watched by no gateway), so that
    /// ZooKeeper and the writer are as busy in both halves and only what the watching
    /// gateway does differs between them.
    #[arg(long, value_name = "ROOT")]
    off_chroot: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Mode {
    /// App specs rewritten.
    Specs,
    /// Instances registered and deregistered.
    Registrations,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Seed(common) => on_runtime(seed(&common)),
        Command::Churn(args) => on_runtime(churn(&args)),
        Command::Serve {
            listen,
            apps,
            backend,
            rate,
        } => serve(listen, apps, backend, rate),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("route_churn: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `task` on a one-thread runtime (`serve` starts its own, for the gateway).
fn on_runtime(task: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?
        .block_on(task)
}

/// `--phase-ms` (or the `churn` command's): `None` for 0, churning throughout.
fn phases(ms: u64) -> Result<Option<Phases>, String> {
    (ms > 0)
        .then(|| Phases::new(Duration::from_millis(ms), Duration::ZERO))
        .transpose()
}

async fn connect(c: &Common) -> Result<ZkStore, String> {
    let config = ZkConfig::new(&c.zk).with_chroot(&c.chroot);
    let session = ZkSession::connect(config)
        .await
        .map_err(|e| format!("ZooKeeper {}: {e}", c.zk))?;
    Ok(ZkStore::new(session))
}

/// The spec of every app: version `v1` at `backend`, and `max_in_flight` (what the churn
/// changes).
fn app_spec(backend: SocketAddr, max_in_flight: u32) -> Result<AppSpec, String> {
    let v1 = Version::new("v1").map_err(|e| e.to_string())?;
    Ok(AppSpec {
        default_version: Some(v1.clone()),
        max_in_flight: Some(max_in_flight),
        versions: BTreeMap::from([(
            v1,
            VersionSpec {
                endpoints: vec![Endpoint::new(backend)],
            },
        )]),
        ..AppSpec::default()
    })
}

fn app_id(name: &str) -> Result<AppId, String> {
    AppId::new(name).map_err(|e| format!("app id {name}: {e}"))
}

/// The app that write `n` of a churn changes: writes 2k and 2k+1 go to `app{k}`, cycling
/// over the first `apps` apps (a change and its change back).
fn churned_app(n: u64, apps: usize) -> String {
    format!("app{}", (n as usize / 2) % apps)
}

/// `route_churn serve`: the gateway on a one-thread runtime (as `examples/gateway` with
/// `workers = 1`; the library applies the updates on its routes thread, not that one), the
/// control loop on this one.
fn serve(listen: SocketAddr, apps: usize, backend: SocketAddr, rate: f64) -> Result<(), String> {
    if !(rate > 0.0 && rate.is_finite()) || apps == 0 {
        return Err("--rate and --apps take positive numbers".into());
    }
    let mut snapshot = Snapshot::default();
    for name in std::iter::once("hello".to_owned()).chain((0..apps).map(|i| format!("app{i}"))) {
        snapshot
            .apps
            .insert(app_id(&name)?, app_spec(backend, 1000)?);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let config = GatewayConfig {
        domains: vec![Domain::new("caas.local").map_err(|e| e.to_string())?],
        ..GatewayConfig::default()
    };
    let gateway = Gateway::builder(config)
        .discovery(rx)
        .build()
        .map_err(|e| e.to_string())?;
    let router = Arc::clone(gateway.router());
    // The whole table before the listener opens: routable from the first request.
    router.apply(Update::Reset(snapshot));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(listen))
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("the listener's address: {e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("gateway".into())
        .spawn(move || {
            rt.block_on(gateway.serve(listener, async {
                // Either a send or a dropped sender: both mean stop.
                let _ = stop_rx.await;
            }))
        })
        .map_err(|e| format!("cannot start the gateway thread: {e}"))?;
    eprintln!("route_churn: serving {} apps on {bound}", apps + 1);
    // The writer yields to serving, as the gateway's store thread does (nice 10, this thread's
    // own; the gateway thread started above keeps the default): woken a hundred times a
    // second, it would otherwise take the CPU from wrk, the backend or the gateway thread
    // each time, and the row would count the writer's wake-ups as the table's cost.
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, 10) {
        eprintln!("route_churn: cannot lower the writer's priority: {e}");
    }
    let controlled = control(&tx, &router, apps, backend, rate);
    drop(stop_tx);
    let served = match server.join() {
        Ok(r) => r.map_err(|e| format!("gateway: {e}")),
        Err(_) => Err("the gateway thread panicked".into()),
    };
    controlled.and(served)
}

/// Reads `churn SECONDS` lines until end of input and churns for each.
fn control(
    tx: &mpsc::UnboundedSender<Update>,
    router: &Router,
    apps: usize,
    backend: SocketAddr,
    rate: f64,
) -> Result<(), String> {
    let mut sent = 0u64;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let (seconds, phase_ms) = match words[..] {
            [] => continue,
            ["churn", s] => (s, "0"),
            ["churn", s, ms] => (s, ms),
            _ => {
                return Err(format!(
                    "unknown command '{line}' (churn SECONDS [PHASE_MS])"
                ));
            }
        };
        let seconds = seconds
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0 && s.is_finite())
            .ok_or_else(|| format!("churn takes positive seconds, got '{seconds}'"))?;
        let phase_ms = phase_ms.parse::<u64>().map_err(|_| {
            format!("churn takes its phase in whole milliseconds, got '{phase_ms}'")
        })?;
        let mut pacer = Pacer::new(rate, phases(phase_ms)?);
        let built = router.build_stats();
        let generation = built.updates;
        let started = Instant::now();
        let length = Duration::from_secs_f64(seconds);
        let mut n = 0u64;
        loop {
            std::thread::sleep(pacer.wait());
            if started.elapsed() >= length {
                break;
            }
            let app = app_id(&churned_app(sent, apps))?;
            let spec = app_spec(backend, 1000 + (sent % 2) as u32)?;
            tx.send(Update::Upsert(app, spec))
                .map_err(|_| "the gateway stopped taking updates")?;
            n += 1;
            sent += 1;
        }
        let secs = started
            .elapsed()
            .saturating_sub(pacer.resting())
            .as_secs_f64();
        // Every update changes the table: its generation tells they were all applied.
        let applied = Instant::now();
        while router.load().generation() < generation + n && applied.elapsed() < length {
            std::thread::sleep(Duration::from_millis(1));
        }
        let behind = (generation + n).saturating_sub(router.load().generation());
        // What the updates cost the library to build (on its routes thread).
        let now = router.build_stats();
        let tables = now.updates - built.updates;
        let build_us = (now.build_time - built.build_time).as_secs_f64() * 1e6;
        println!(
            "churned {n} in {secs:.1} s = {:.1}/s, {behind} not applied yet; \
             built {tables} tables, {} whole, in {:.1} µs each",
            n as f64 / secs,
            now.whole_builds - built.whole_builds,
            build_us / tables.max(1) as f64
        );
    }
    Ok(())
}

async fn seed(c: &Common) -> Result<(), String> {
    let store = connect(c).await?;
    let started = Instant::now();
    let addr = c.backend.to_string().into_bytes();
    let names: Vec<String> = std::iter::once("hello".to_owned())
        .chain((0..c.apps).map(|i| format!("app{i}")))
        .collect();
    for chunk in names.chunks(100) {
        let ops = chunk
            .iter()
            .map(|app| Op::Create {
                path: format!("/service/address/{app}/v1/seed"),
                data: addr.clone(),
            })
            .collect();
        store
            .commit(ops)
            .await
            .map_err(|e| format!("seeding: {e}"))?;
    }
    eprintln!(
        "route_churn: {} apps registered in {:.1} s",
        names.len(),
        started.elapsed().as_secs_f64()
    );
    store.close().await;
    Ok(())
}

async fn churn(args: &ChurnArgs) -> Result<(), String> {
    let (c, mode) = (&args.common, args.mode);
    if !(args.rate > 0.0 && args.rate.is_finite() && args.seconds > 0.0 && args.seconds.is_finite())
    {
        return Err("--rate and --seconds take positive numbers".into());
    }
    if c.apps == 0 {
        return Err("--apps must be at least 1".into());
    }
    let slices = phases(args.phase_ms)?;
    if args.off_chroot.is_some() && slices.is_none() {
        return Err("--off-chroot needs --phase-ms: it says where the \"off\" slices write".into());
    }
    // With an off root the writer paces throughout, and each write's slice picks its root.
    let mut pacer = Pacer::new(args.rate, slices.filter(|_| args.off_chroot.is_none()));
    let length = Duration::from_secs_f64(args.seconds);
    let mut on = Writer::new(connect(c).await?, c.chroot.clone());
    let mut off = match &args.off_chroot {
        Some(root) => {
            let common = Common {
                chroot: root.clone(),
                ..c.clone()
            };
            Some(Writer::new(connect(&common).await?, root.clone()))
        }
        None => None,
    };
    let addr = c.backend.to_string().into_bytes();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    loop {
        tokio::time::sleep(pacer.wait()).await;
        if started.elapsed() >= length {
            break;
        }
        let resting = slices
            .and_then(|p| p.slice(SystemTime::now()))
            .is_some_and(|(_, half)| half == Half::Off);
        let writer = match off.as_mut() {
            Some(off) if resting => off,
            _ => &mut on,
        };
        let t0 = Instant::now();
        writer.write(mode, c.apps, &addr).await?;
        slowest = slowest.max(t0.elapsed());
    }
    let secs = started
        .elapsed()
        .saturating_sub(pacer.resting())
        .as_secs_f64();
    let writes = on.writes + off.as_ref().map_or(0, |w| w.writes);
    let during = if off.is_none() && args.phase_ms > 0 {
        " of on-phases"
    } else {
        ""
    };
    let spread = off.as_ref().map_or_else(String::new, |w| {
        format!(
            " ({} of them under {} in the \"off\" slices)",
            w.writes, w.root
        )
    });
    println!(
        "route_churn: {writes} writes in {secs:.1} s{during} = {:.1}/s, slowest {:.1} ms{spread}",
        writes as f64 / secs,
        slowest.as_secs_f64() * 1000.0
    );
    for w in std::iter::once(on).chain(off) {
        w.finish(mode, c.apps).await?;
    }
    Ok(())
}

/// Writes under one root: its store and how many writes it took.
struct Writer {
    store: ZkStore,
    root: String,
    writes: u64,
}

impl Writer {
    fn new(store: ZkStore, root: String) -> Self {
        Self {
            store,
            root,
            writes: 0,
        }
    }

    /// Registration `n`'s node: named by this run and step, so a run cut short after a
    /// registration leaves a node no later run trips over.
    fn registration(app: &str, n: u64) -> String {
        format!("/service/address/{app}/v1/churn-{}-{n}", std::process::id())
    }

    /// The next write: writes 2k and 2k+1 go to `app{k}` (cycling over the apps), a spec
    /// and its change back, or a registration and its deregistration.
    async fn write(&mut self, mode: Mode, apps: usize, addr: &[u8]) -> Result<(), String> {
        let n = self.writes;
        let app = churned_app(n, apps);
        let result = match mode {
            Mode::Specs => {
                let spec = AppSpec {
                    max_in_flight: Some(1000 + (n % 2) as u32),
                    ..AppSpec::default()
                };
                let json = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
                store::put(&self.store, &format!("/apps/{app}"), &json).await
            }
            Mode::Registrations => {
                let path = Self::registration(&app, n / 2);
                let op = if n % 2 == 0 {
                    Op::Create {
                        path,
                        data: addr.to_vec(),
                    }
                } else {
                    Op::Delete {
                        path,
                        version: None,
                    }
                };
                self.store.commit(vec![op]).await.map(drop)
            }
        };
        result.map_err(|e| format!("write {n} under {}: {e}", self.root))?;
        self.writes += 1;
        Ok(())
    }

    /// Deregisters a registration still there at the end, and closes the session.
    async fn finish(self, mode: Mode, apps: usize) -> Result<(), String> {
        let n = self.writes;
        if matches!(mode, Mode::Registrations) && n % 2 == 1 {
            let app = churned_app(n, apps);
            store::delete_if_present(&self.store, &Self::registration(&app, n / 2))
                .await
                .map_err(|e| format!("removing the last registration under {}: {e}", self.root))?;
        }
        self.store.close().await;
        Ok(())
    }
}
