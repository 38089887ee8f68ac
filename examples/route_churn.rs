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
//! the average holds); at the end it prints the rate it kept and the slowest write.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use caas_backends::store::{self, Op, Store, ZkStore};
use caas_backends::zk::{ZkConfig, ZkSession};
use caas_core::AppSpec;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::time::MissedTickBehavior;

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
    Churn {
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
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Mode {
    /// App specs rewritten.
    Specs,
    /// Instances registered and deregistered.
    Registrations,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("route_churn: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("route_churn: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(c: &Common) -> Result<ZkStore, String> {
    let config = ZkConfig::new(&c.zk).with_chroot(&c.chroot);
    let session = ZkSession::connect(config)
        .await
        .map_err(|e| format!("ZooKeeper {}: {e}", c.zk))?;
    Ok(ZkStore::new(session))
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Seed(c) => seed(&c).await,
        Command::Churn {
            common,
            mode,
            rate,
            seconds,
        } => {
            if !(rate > 0.0 && rate.is_finite() && seconds > 0.0 && seconds.is_finite()) {
                return Err("--rate and --seconds take positive numbers".into());
            }
            churn(&common, mode, rate, Duration::from_secs_f64(seconds)).await
        }
    }
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

async fn churn(c: &Common, mode: Mode, rate: f64, length: Duration) -> Result<(), String> {
    if c.apps == 0 {
        return Err("--apps must be at least 1".into());
    }
    let store = connect(c).await?;
    let addr = c.backend.to_string().into_bytes();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let started = Instant::now();
    let (mut writes, mut slowest) = (0u64, Duration::ZERO);
    while started.elapsed() < length {
        tick.tick().await;
        let app = format!("app{}", (writes as usize / 2) % c.apps);
        let t0 = Instant::now();
        let result = match mode {
            Mode::Specs => {
                let spec = AppSpec {
                    max_in_flight: Some(1000 + (writes % 2) as u32),
                    ..AppSpec::default()
                };
                let json = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
                store::put(&store, &format!("/apps/{app}"), &json).await
            }
            Mode::Registrations => {
                // Named by this run and step: a run cut short after a registration leaves a
                // node no later run trips over.
                let id = std::process::id();
                let path = format!("/service/address/{app}/v1/churn-{id}-{}", writes / 2);
                let op = if writes % 2 == 0 {
                    Op::Create {
                        path,
                        data: addr.clone(),
                    }
                } else {
                    Op::Delete {
                        path,
                        version: None,
                    }
                };
                store.commit(vec![op]).await.map(drop)
            }
        };
        result.map_err(|e| format!("write {writes}: {e}"))?;
        slowest = slowest.max(t0.elapsed());
        writes += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    if matches!(mode, Mode::Registrations) && writes % 2 == 1 {
        let app = format!("app{}", (writes as usize / 2) % c.apps);
        let path = format!(
            "/service/address/{app}/v1/churn-{}-{}",
            std::process::id(),
            writes / 2
        );
        store::delete_if_present(&store, &path)
            .await
            .map_err(|e| format!("removing the last registration: {e}"))?;
    }
    println!(
        "route_churn: {writes} writes in {secs:.1} s = {:.1}/s, slowest {:.1} ms",
        writes as f64 / secs,
        slowest.as_secs_f64() * 1000.0
    );
    store.close().await;
    Ok(())
}
