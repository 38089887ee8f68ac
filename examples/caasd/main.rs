//! caasd: a caas node and its operator commands.
//!
//! - `agent` runs the host agent for one host id;
//! - `api` serves the control API (`/v1/...`, bearer tokens; see `api.rs`);
//! - `scheduler` runs a scheduler (several may run at once);
//! - `deploy` writes a deployment node, `scale` changes its replicas, `undeploy` removes an
//!   app or one version, `drain` marks a host draining, `status` prints a deployment's
//!   status node;
//! - `rollouts` runs a rollout controller (several may run at once); `rollout` starts a
//!   rolling update, `rollback` reverts one, `rollout-status` prints one.
//!
//! ```text
//! cargo run --release --example caasd -- agent --zk 127.0.0.1:2181 --host-id h1 --ip 127.0.0.2
//! cargo run --release --example caasd -- scheduler --zk 127.0.0.1:2181
//! cargo run --release --example caasd -- api --zk 127.0.0.1:2181 --listen 127.0.0.1:7070 --tokens tokens.toml
//! cargo run --release --example caasd -- scheduler --etcd http://127.0.0.1:2379
//! cargo run --release --example caasd -- deploy --zk 127.0.0.1:2181 hello:v1 \
//!     --image 127.0.0.1:5000/hello:v1 --replicas 3 --port 8080 --memory 512m --cpu-shares 1024
//! cargo run --release --example caasd -- scale --zk 127.0.0.1:2181 hello:v1 5
//! ```

mod api;
#[path = "../cli_support/etcd_tls.rs"]
mod etcd_tls;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use caas_backends::assignment::{FailurePolicy, HealthPolicy, MemoryLimit};
use caas_backends::docker::RegistryAuth;
use caas_backends::ports::PortRange;
use caas_backends::scheduler::control;
use caas_backends::scheduler::deployment::{AppRule, Constraint, Deployment, Strategy};
use caas_backends::store::{EtcdConfig, Store, StoreConfig};
use caas_backends::zk::ZkConfig;
use caas_backends::{Agent, AgentConfig, AnyStore, Scheduler, SchedulerConfig};
use caas_core::{AppId, Version};
use clap::{ArgGroup, Args, Parser, Subcommand};
use etcd_tls::EtcdTlsArgs;

mod etcd_provision;
mod rollout;
mod up;

#[derive(Parser, Debug)]
#[command(about = "caas node: host agent, scheduler and operator commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the host agent: reconcile /caas/hosts/{host-id}/assignments with Docker.
    Agent(AgentArgs),
    /// Run a scheduler: turn /caas/deployments into assignments (several may run at once).
    Scheduler(SchedulerArgs),
    /// Serve the control API: tenants deploy, scale, route and remove apps over HTTP.
    Api(api::ApiArgs),
    /// Write the deployment node of APP:VERSION (created or replaced).
    Deploy(DeployArgs),
    /// Set the replicas of a deployment.
    Scale(ScaleArgs),
    /// Remove an app (every version) or one version: assignments, allocations, nodes.
    Undeploy(UndeployArgs),
    /// Mark a host draining (it takes nothing new; its instances move elsewhere).
    Drain(DrainArgs),
    /// Print the status node of a deployment (JSON).
    Status(StatusArgs),
    /// Run a rollout controller: drive /caas/rollouts (several may run at once).
    Rollouts(rollout::ControllerArgs),
    /// Start a rolling update of APP to VERSION (a controller does the work).
    Rollout(rollout::StartArgs),
    /// Roll back APP's update in progress, or revert its finished one.
    Rollback(rollout::AppArgs),
    /// Print APP's rollout node (JSON).
    RolloutStatus(rollout::AppArgs),
    /// Run a whole caas on this machine in one process: agent, scheduler, rollout
    /// controller, control API and gateway.
    Up(up::UpArgs),
    /// Create etcd's roles and users for caas (gateways, control plane, tenants) and
    /// optionally enable etcd's auth. Safe to run again.
    EtcdProvision(etcd_provision::ProvisionArgs),
}

/// The control store of the scheduler and the operator commands: ZooKeeper or etcd.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("store").required(true).args(["zk", "etcd"])))]
pub(crate) struct StoreArgs {
    /// ZooKeeper connect string, host:port[,host:port...].
    #[arg(long, value_name = "HOST:PORT")]
    zk: Option<String>,
    /// etcd v3 client endpoints, http://host:port[,http://host:port...] (instead of --zk).
    #[arg(long, value_name = "URL")]
    etcd: Option<String>,
    /// Root of the caas tree: the ZooKeeper chroot, or the etcd key prefix.
    #[arg(long, default_value = "/caas")]
    chroot: String,
    /// ZooKeeper digest credentials user:password.
    #[arg(long, value_name = "USER:PASSWORD", conflicts_with = "etcd")]
    zk_digest: Option<String>,
    /// etcd credentials user:password (once etcd's auth is enabled; see etcd-provision).
    #[arg(long, value_name = "USER:PASSWORD", requires = "etcd")]
    etcd_user: Option<String>,
    #[command(flatten)]
    etcd_tls: EtcdTlsArgs,
}

impl StoreArgs {
    /// The etcd settings, when --etcd is given.
    fn etcd_config(&self) -> Option<EtcdConfig> {
        let etcd = self.etcd.as_ref()?;
        let mut config = self
            .etcd_tls
            .apply(EtcdConfig::from_endpoint_list(etcd).with_root(&self.chroot));
        if let Some(user) = &self.etcd_user {
            config = config.with_user(user);
        }
        Some(config)
    }

    /// The store the flags name.
    pub(crate) fn config(&self) -> Result<StoreConfig, String> {
        match (&self.zk, &self.etcd) {
            (Some(zk), _) => {
                let mut c = ZkConfig::new(zk).with_chroot(&self.chroot);
                if let Some(d) = &self.zk_digest {
                    c = c.with_digest(d);
                }
                Ok(StoreConfig::Zk(c))
            }
            (None, Some(_)) => Ok(StoreConfig::Etcd(self.etcd_config().ok_or("give --etcd")?)),
            (None, None) => Err("give --zk or --etcd".into()),
        }
    }

    /// Connects to the store the flags name.
    pub(crate) async fn open(&self) -> Result<AnyStore, String> {
        let config = self.config()?;
        config.connect().await.map_err(|e| e.to_string())
    }

    /// The store, for messages: `ZooKeeper 127.0.0.1:2181`, `etcd http://...`.
    pub(crate) fn describe(&self) -> String {
        match (&self.zk, &self.etcd) {
            (Some(zk), _) => format!("ZooKeeper {zk}"),
            (None, Some(etcd)) => format!("etcd {etcd}"),
            (None, None) => "no store".into(),
        }
    }
}

#[derive(Args, Debug)]
struct AgentArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// This host's id ([a-z0-9-], 1-63 characters).
    #[arg(long)]
    host_id: String,
    /// Advertised IP: ports are published on it and registered with it.
    #[arg(long)]
    ip: IpAddr,
    /// Host port pool, START-END.
    #[arg(long, default_value = "25701-25999", value_parser = parse_range)]
    port_range: PortRange,
    /// Registry user (with --registry-password or --registry-password-file).
    #[arg(long)]
    registry_user: Option<String>,
    /// Registry password (prefer --registry-password-file: arguments show in `ps`).
    #[arg(long, conflicts_with = "registry_password_file")]
    registry_password: Option<String>,
    /// File holding the registry password (first line).
    #[arg(long)]
    registry_password_file: Option<PathBuf>,
    /// Memory capacity published in the host info (default: the Docker daemon's total).
    #[arg(long, value_parser = parse_memory)]
    memory: Option<MemoryLimit>,
    /// Host label k=v (repeatable), published for scheduling filters.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Full resync interval, in milliseconds (besides the store's watch).
    #[arg(long, default_value_t = 5000)]
    resync_ms: u64,
    /// Health-triggered kills allowed per minute on this host.
    #[arg(long, default_value_t = 10)]
    kills_per_minute: u32,
    /// First restart delay in milliseconds (doubles per restart, up to 60 s).
    #[arg(long, default_value_t = 1000)]
    restart_backoff_ms: u64,
    /// CPU idle sample interval in milliseconds (/proc/stat; smoothed, published as
    /// cpu_idle when it moves by 0.02 or more).
    #[arg(long, default_value_t = 5000)]
    cpu_sample_ms: u64,
    /// Rewrite the host node's agent fields (with the latest cpu_idle) at least this often,
    /// in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    host_refresh_ms: u64,
    /// An instance losing its assignment is deregistered, then left running this many
    /// milliseconds (gateways stop sending to it) before its SIGTERM.
    #[arg(long, default_value_t = 2000)]
    drain_delay_ms: u64,
    /// After SIGTERM, an instance has this many milliseconds to finish before SIGKILL.
    #[arg(long, default_value_t = 10_000)]
    stop_timeout_ms: u64,
    /// Serve this host's container logs for the control API (GET /logs/{instanceId}) on
    /// this address, published as `logs` in the host node (0.0.0.0:PORT publishes --ip).
    #[arg(long, value_name = "IP:PORT")]
    logs_listen: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
struct SchedulerArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// How long a host's alive node must be gone before its instances move, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    host_grace_ms: u64,
    /// Full pass interval in milliseconds (besides the watches).
    #[arg(long, default_value_t = 10_000)]
    resync_ms: u64,
    /// A name for the logs.
    #[arg(long, default_value = "scheduler")]
    name: String,
}

#[derive(Args, Debug)]
struct DeployArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// APP:VERSION, e.g. hello:v1.
    app_version: String,
    /// Image, {registry}/{app}:{version}.
    #[arg(long)]
    image: String,
    /// Number of instances (default 1).
    #[arg(long, conflicts_with = "global")]
    replicas: Option<u32>,
    /// One instance on every eligible host instead of a replica count.
    #[arg(long)]
    global: bool,
    /// Container port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Memory limit (512m, 1g...).
    #[arg(long, default_value = "512m", value_parser = parse_memory)]
    memory: MemoryLimit,
    /// CPU shares.
    #[arg(long, default_value_t = 1024)]
    cpu_shares: u32,
    /// Label constraint key==value or key!=value (repeatable); hostname==ID pins a host.
    #[arg(long = "constraint", value_parser = parse_constraint)]
    constraints: Vec<Constraint>,
    /// Pin to one host: the same as --constraint hostname==HOST.
    #[arg(long)]
    host: Option<String>,
    /// At most one instance of this version per host (see --max-per-host).
    #[arg(long)]
    spread: bool,
    /// At most N instances of this version per host.
    #[arg(long)]
    max_per_host: Option<u32>,
    /// most_free_memory (default), least_cpu, spread or binpack.
    #[arg(long, default_value = "most_free_memory")]
    strategy: Strategy,
    /// Only hosts running app ID (repeatable): app==ID.
    #[arg(long = "affinity", value_parser = parse_rule)]
    affinity: Vec<AppRule>,
    /// Never hosts running app ID (repeatable): app==ID.
    #[arg(long = "anti-affinity", value_parser = parse_rule)]
    anti_affinity: Vec<AppRule>,
    /// Health check interval in milliseconds.
    #[arg(long, default_value_t = 2000)]
    health_interval_ms: u64,
    /// Failure policy: restart or remove.
    #[arg(long, default_value = "restart", value_parser = parse_policy)]
    policy: FailurePolicy,
}

#[derive(Args, Debug)]
struct ScaleArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// APP:VERSION.
    app_version: String,
    /// The new number of instances.
    replicas: u32,
}

#[derive(Args, Debug)]
struct UndeployArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// APP (every version) or APP:VERSION.
    target: String,
}

#[derive(Args, Debug)]
struct DrainArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The host id.
    host: String,
    /// Clear the draining mark instead.
    #[arg(long)]
    undo: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// APP:VERSION.
    app_version: String,
}

fn parse_app_version(s: &str) -> Result<(AppId, Version), String> {
    let (app, version) = s
        .split_once(':')
        .ok_or("expected APP:VERSION, e.g. hello:v1")?;
    let app = AppId::new(app).map_err(|e| e.to_string())?;
    let version = Version::new(version).map_err(|e| e.to_string())?;
    Ok((app, version))
}

fn parse_constraint(s: &str) -> Result<Constraint, String> {
    s.parse()
}

fn parse_rule(s: &str) -> Result<AppRule, String> {
    s.parse()
}

fn parse_range(s: &str) -> Result<PortRange, String> {
    let (a, b) = s.split_once('-').ok_or("expected START-END")?;
    let a = a.trim().parse().map_err(|e| format!("start: {e}"))?;
    let b = b.trim().parse().map_err(|e| format!("end: {e}"))?;
    PortRange::new(a, b).map_err(|e| e.to_string())
}

fn parse_memory(s: &str) -> Result<MemoryLimit, String> {
    s.parse()
        .map_err(|e: caas_backends::assignment::MemoryError| e.to_string())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected key=value")?;
    Ok((k.to_owned(), v.to_owned()))
}

fn parse_policy(s: &str) -> Result<FailurePolicy, String> {
    match s {
        "restart" => Ok(FailurePolicy::Restart),
        "remove" => Ok(FailurePolicy::Remove),
        _ => Err("expected restart or remove".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemons log what they do; the one-shot commands only warnings (their result is
    // printed on stdout).
    let default = match cli.command {
        Command::Agent(_)
        | Command::Scheduler(_)
        | Command::Rollouts(_)
        | Command::Api(_)
        | Command::Up(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Agent(a) => agent(a).await,
            Command::Scheduler(a) => scheduler(a).await,
            Command::Api(a) => api::run(a).await,
            Command::Deploy(d) => deploy(d).await,
            Command::Scale(a) => scale(a).await,
            Command::Undeploy(a) => undeploy(a).await,
            Command::Drain(a) => drain(a).await,
            Command::Status(a) => status(a).await,
            Command::Rollouts(a) => rollout::controller(a).await,
            Command::Rollout(a) => rollout::start(a).await,
            Command::Rollback(a) => rollout::rollback(a).await,
            Command::RolloutStatus(a) => rollout::status(a).await,
            Command::Up(a) => up::run(a).await,
            Command::EtcdProvision(a) => etcd_provision::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn agent(a: AgentArgs) -> Result<(), String> {
    let mut config = AgentConfig::new(a.store.config()?, a.host_id, a.ip);
    config.ports = a.port_range;
    config.memory = a.memory.map(MemoryLimit::bytes);
    config.labels = a.labels.into_iter().collect::<BTreeMap<_, _>>();
    config.resync = Duration::from_millis(a.resync_ms.max(100));
    config.kills_per_minute = a.kills_per_minute;
    config.restart_backoff = Duration::from_millis(a.restart_backoff_ms.max(1));
    config.cpu_sample = Duration::from_millis(a.cpu_sample_ms.max(100));
    config.host_refresh = Duration::from_millis(a.host_refresh_ms.max(100));
    config.drain_delay = Duration::from_millis(a.drain_delay_ms);
    config.stop_timeout = Duration::from_millis(a.stop_timeout_ms);
    config.logs_listen = a.logs_listen;
    let password = match (a.registry_password, a.registry_password_file) {
        (Some(p), _) => Some(p),
        (None, Some(f)) => Some(
            std::fs::read_to_string(&f)
                .map_err(|e| format!("--registry-password-file {}: {e}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
        (None, None) => None,
    };
    config.registry_auth = match (a.registry_user, password) {
        (Some(username), Some(password)) => Some(RegistryAuth {
            username,
            password,
            server: String::new(),
        }),
        (None, None) => None,
        _ => return Err("--registry-user and a registry password go together".into()),
    };
    let handle = Agent::start(config).await.map_err(|e| e.to_string())?;
    if let Err(e) = tokio::signal::ctrl_c().await {
        return Err(format!("cannot wait for Ctrl-C: {e}"));
    }
    eprintln!("stopping (containers keep running; the next agent adopts them)");
    handle.shutdown().await;
    Ok(())
}

async fn scheduler(a: SchedulerArgs) -> Result<(), String> {
    let store = a.store.open().await?;
    let config = SchedulerConfig {
        host_grace: Duration::from_millis(a.host_grace_ms),
        resync: Duration::from_millis(a.resync_ms.max(100)),
        name: a.name,
        ..SchedulerConfig::default()
    };
    let handle = Scheduler::new(store.clone(), config).spawn();
    if let Err(e) = tokio::signal::ctrl_c().await {
        return Err(format!("cannot wait for Ctrl-C: {e}"));
    }
    eprintln!("stopping the scheduler");
    handle.shutdown().await;
    store.close().await;
    Ok(())
}

async fn deploy(d: DeployArgs) -> Result<(), String> {
    let (app, version) = parse_app_version(&d.app_version)?;
    let mut deployment = Deployment::new(d.image, d.port, d.replicas.unwrap_or(1));
    if d.global {
        deployment.replicas = None;
        deployment.global = true;
    }
    deployment.memory = d.memory;
    deployment.cpu_shares = d.cpu_shares;
    deployment.health = HealthPolicy {
        interval_ms: d.health_interval_ms,
        timeout_ms: d.health_interval_ms.min(HealthPolicy::default().timeout_ms),
        policy: d.policy,
        ..HealthPolicy::default()
    };
    deployment.constraints = d.constraints;
    if let Some(host) = d.host {
        deployment
            .constraints
            .push(format!("hostname=={host}").parse::<Constraint>()?);
    }
    deployment.spread = d.spread;
    deployment.max_per_host = d.max_per_host;
    deployment.strategy = d.strategy;
    deployment.affinity = d.affinity;
    deployment.anti_affinity = d.anti_affinity;
    let store = d.store.open().await?;
    let result = control::deploy(&store, &app, &version, &deployment).await;
    store.close().await;
    result.map_err(|e| e.to_string())?;
    println!("/deployments/{app}/{version}");
    Ok(())
}

async fn scale(a: ScaleArgs) -> Result<(), String> {
    let (app, version) = parse_app_version(&a.app_version)?;
    let store = a.store.open().await?;
    let result = control::scale(&store, &app, &version, a.replicas).await;
    store.close().await;
    result.map_err(|e| e.to_string())?;
    println!("{app}:{version} scaled to {}", a.replicas);
    Ok(())
}

async fn undeploy(a: UndeployArgs) -> Result<(), String> {
    let (app, version) = match a.target.split_once(':') {
        Some(_) => {
            let (app, version) = parse_app_version(&a.target)?;
            (app, Some(version))
        }
        None => (AppId::new(&a.target).map_err(|e| e.to_string())?, None),
    };
    let store = a.store.open().await?;
    let result = control::undeploy(&store, &app, version.as_ref()).await;
    store.close().await;
    for v in result.map_err(|e| e.to_string())? {
        println!("undeployed {app}:{v}");
    }
    Ok(())
}

async fn drain(a: DrainArgs) -> Result<(), String> {
    let store = a.store.open().await?;
    let result = control::drain(&store, &a.host, !a.undo).await;
    store.close().await;
    result.map_err(|e| e.to_string())?;
    println!(
        "host {} {}",
        a.host,
        if a.undo {
            "no longer draining"
        } else {
            "draining"
        }
    );
    Ok(())
}

async fn status(a: StatusArgs) -> Result<(), String> {
    let (app, version) = parse_app_version(&a.app_version)?;
    let store = a.store.open().await?;
    let result = control::status(&store, &app, &version).await;
    store.close().await;
    match result.map_err(|e| e.to_string())? {
        Some(s) => {
            let json = serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?;
            println!("{json}");
            Ok(())
        }
        None => Err(format!(
            "no status for {app}:{version} yet (is the deployment there, and a scheduler running?)"
        )),
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
