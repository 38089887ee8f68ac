//! `caasd rollouts` (the rollout controller), `caasd rollout` (start a rolling update),
//! `caasd rollback` and `caasd rollout-status`.

use std::time::Duration;

use caas_backends::rollout::controller::{ControllerConfig, RolloutController};
use caas_backends::rollout::{RolloutRequest, Rollouts};
use caas_core::AppId;
use clap::Args;

use caas_backends::{AnyStore, Store};

use super::{StoreArgs, parse_app_version};

#[derive(Args, Debug)]
pub(crate) struct ControllerArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Look at every rollout at least this often (deadlines, step waits), in milliseconds.
    #[arg(long, default_value_t = 250)]
    tick_ms: u64,
    /// A name for the logs.
    #[arg(long, default_value = "rollouts")]
    name: String,
}

#[derive(Args, Debug)]
pub(crate) struct StartArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// APP:VERSION, the new version, e.g. hello:v2.
    app_version: String,
    /// The new version's image, {registry}/{app}:{version}; the rest of its deployment is
    /// the old version's.
    #[arg(long)]
    image: String,
    /// The version replaced (default: the one the app routes to now).
    #[arg(long)]
    from: Option<String>,
    /// Instances of the new version (default: as the old one).
    #[arg(long)]
    replicas: Option<u32>,
    /// Percentages of the traffic moved, strictly increasing, ending at 100.
    #[arg(long, default_value = "10,50,100", value_delimiter = ',')]
    steps: Vec<u32>,
    /// Time between two steps (500ms, 5s, 2m).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    step_wait: Duration,
    /// Roll back when the new instances are not all healthy within this time.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    health_deadline: Duration,
    /// Time between the new version taking all the traffic and the old one's removal.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_wait: Duration,
}

#[derive(Args, Debug)]
pub(crate) struct AppArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The app.
    app: String,
}

/// `500ms`, `5s`, `2m`, or a number of milliseconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "ms"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 500ms, 5s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

async fn rollouts(store: &StoreArgs) -> Result<Rollouts<AnyStore>, String> {
    Ok(Rollouts::new(store.open().await?))
}

async fn close(r: &Rollouts<AnyStore>) {
    r.store().close().await;
}

fn print(state: &impl serde::Serialize) -> Result<(), String> {
    let json = serde_json::to_string_pretty(state).map_err(|e| e.to_string())?;
    println!("{json}");
    Ok(())
}

pub(crate) async fn controller(a: ControllerArgs) -> Result<(), String> {
    let r = rollouts(&a.store).await?;
    let config = ControllerConfig {
        tick: Duration::from_millis(a.tick_ms.max(10)),
        name: a.name,
        ..ControllerConfig::default()
    };
    let handle = RolloutController::new(r.clone(), config).spawn();
    if let Err(e) = tokio::signal::ctrl_c().await {
        return Err(format!("cannot wait for Ctrl-C: {e}"));
    }
    eprintln!("stopping the rollout controller (another one, or the next, carries on)");
    handle.shutdown().await;
    close(&r).await;
    Ok(())
}

pub(crate) async fn start(a: StartArgs) -> Result<(), String> {
    let (app, to) = parse_app_version(&a.app_version)?;
    let mut req = RolloutRequest::new(to, a.image);
    req.from = a
        .from
        .map(|v| caas_core::Version::new(&v).map_err(|e| format!("--from: {e}")))
        .transpose()?;
    req.steps = a.steps;
    req.step_wait = a.step_wait;
    req.health_deadline = a.health_deadline;
    req.drain_wait = a.drain_wait;
    req.replicas = a.replicas;
    let r = rollouts(&a.store).await?;
    let result = r.start(&app, req).await;
    close(&r).await;
    print(&result.map_err(|e| e.to_string())?)
}

pub(crate) async fn rollback(a: AppArgs) -> Result<(), String> {
    let app = AppId::new(&a.app).map_err(|e| e.to_string())?;
    let r = rollouts(&a.store).await?;
    let result = r.rollback(&app).await;
    close(&r).await;
    print(&result.map_err(|e| e.to_string())?)
}

pub(crate) async fn status(a: AppArgs) -> Result<(), String> {
    let app = AppId::new(&a.app).map_err(|e| e.to_string())?;
    let r = rollouts(&a.store).await?;
    let result = r.status(&app).await;
    close(&r).await;
    match result.map_err(|e| e.to_string())? {
        Some(s) => print(&s),
        None => Err(format!("{app} has had no rollout")),
    }
}
