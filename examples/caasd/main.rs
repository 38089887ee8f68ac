//! caasd: a caas node. `agent` runs the host agent for one host id; `deploy` writes
//! assignment nodes for an app by hand (until the scheduler and control API do it).
//!
//! ```text
//! cargo run --release --example caasd -- agent --zk 127.0.0.1:2181 --host-id h1 --ip 127.0.0.2
//! cargo run --release --example caasd -- deploy --zk 127.0.0.1:2181 --host h1 hello:v1 \
//!     --image 127.0.0.1:5000/hello:v1 --replicas 3 --port 8080 --memory 512m --cpu-shares 1024
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use caas_backends::assignment::{Assignment, FailurePolicy, HealthPolicy, MemoryLimit};
use caas_backends::docker::RegistryAuth;
use caas_backends::ports::PortRange;
use caas_backends::zk::{HostStore, ZkConfig, ZkSession};
use caas_backends::{Agent, AgentConfig};
use caas_core::{AppId, InstanceId, Version};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "caas node: host agent and helpers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the host agent: reconcile /caas/hosts/{host-id}/assignments with Docker.
    Agent(AgentArgs),
    /// Write N assignment nodes of one app version on one host.
    Deploy(DeployArgs),
}

#[derive(Args, Debug)]
struct ZkArgs {
    /// ZooKeeper connect string, host:port[,host:port...].
    #[arg(long, value_name = "HOST:PORT")]
    zk: String,
    /// Root of the caas tree in ZooKeeper.
    #[arg(long, default_value = "/caas")]
    chroot: String,
    /// ZooKeeper digest credentials user:password.
    #[arg(long, value_name = "USER:PASSWORD")]
    zk_digest: Option<String>,
}

impl ZkArgs {
    fn config(&self) -> ZkConfig {
        let mut c = ZkConfig::new(&self.zk).with_chroot(&self.chroot);
        if let Some(d) = &self.zk_digest {
            c = c.with_digest(d);
        }
        c
    }
}

#[derive(Args, Debug)]
struct AgentArgs {
    #[command(flatten)]
    zk: ZkArgs,
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
    /// Full resync interval, in milliseconds (besides the ZooKeeper watch).
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
}

#[derive(Args, Debug)]
struct DeployArgs {
    #[command(flatten)]
    zk: ZkArgs,
    /// Host id to place the instances on.
    #[arg(long)]
    host: String,
    /// APP:VERSION, e.g. hello:v1.
    app_version: String,
    /// Image, {registry}/{app}:{version}.
    #[arg(long)]
    image: String,
    /// Number of instances (ids {app}-{version}-{n}).
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Container port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Memory limit (512m, 1g...).
    #[arg(long, default_value = "512m", value_parser = parse_memory)]
    memory: MemoryLimit,
    /// CPU shares.
    #[arg(long, default_value_t = 1024)]
    cpu_shares: u32,
    /// Health check interval in milliseconds.
    #[arg(long, default_value_t = 2000)]
    health_interval_ms: u64,
    /// Failure policy: restart or remove.
    #[arg(long, default_value = "restart", value_parser = parse_policy)]
    policy: FailurePolicy,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
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
            Command::Deploy(d) => deploy(d).await,
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
    let mut config = AgentConfig::new(a.zk.config(), a.host_id, a.ip);
    config.ports = a.port_range;
    config.memory = a.memory.map(MemoryLimit::bytes);
    config.labels = a.labels.into_iter().collect::<BTreeMap<_, _>>();
    config.resync = Duration::from_millis(a.resync_ms.max(100));
    config.kills_per_minute = a.kills_per_minute;
    config.restart_backoff = Duration::from_millis(a.restart_backoff_ms.max(1));
    config.cpu_sample = Duration::from_millis(a.cpu_sample_ms.max(100));
    config.host_refresh = Duration::from_millis(a.host_refresh_ms.max(100));
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

async fn deploy(d: DeployArgs) -> Result<(), String> {
    let (app, version) = d
        .app_version
        .split_once(':')
        .ok_or("expected APP:VERSION, e.g. hello:v1")?;
    let app = AppId::new(app).map_err(|e| e.to_string())?;
    let version = Version::new(version).map_err(|e| e.to_string())?;
    let health = HealthPolicy {
        interval_ms: d.health_interval_ms,
        timeout_ms: d.health_interval_ms.min(HealthPolicy::default().timeout_ms),
        policy: d.policy,
        ..HealthPolicy::default()
    };
    let assignment = Assignment {
        app: app.clone(),
        version: version.clone(),
        image: d.image,
        container_port: d.port,
        memory: d.memory,
        cpu_shares: d.cpu_shares,
        health,
        sidecars: Vec::new(),
    };
    assignment.validate().map_err(|e| e.to_string())?;
    let session = ZkSession::connect(d.zk.config())
        .await
        .map_err(|e| e.to_string())?;
    let hosts = HostStore::new(session.clone());
    for n in 0..d.replicas {
        let id = InstanceId::new(&format!("{app}-{version}-{n}")).map_err(|e| e.to_string())?;
        hosts
            .put_assignment(&d.host, &id, &assignment)
            .await
            .map_err(|e| e.to_string())?;
        println!("/hosts/{}/assignments/{id}", d.host);
    }
    session.close();
    Ok(())
}
