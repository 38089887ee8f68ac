//! `caasd up`: a whole caas on one machine, in one process: the host agent, a scheduler, a
//! rollout controller, the control API and a gateway, all on one store (`--zk` or
//! `--etcd`). Each still runs alone (`caasd agent`, `scheduler`, `rollouts`, `api`,
//! `examples/gateway`) for a cluster.
//!
//! On its first start it makes the API's tokens file with one admin token, written to a file
//! of its own (mode 0600) so that `caas` can use it: `export CAAS_TOKEN=$(cat .caas/admin.token)`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use caas_backends::api::auth::sha256_hex;
use caas_backends::api::{Api, ApiConfig, Tokens};
use caas_backends::rollout::Rollouts;
use caas_backends::rollout::controller::{ControllerConfig, RolloutController};
use caas_backends::store::{Store, StoreDiscovery};
use caas_backends::zk::gateways::sanitize_gateway_id;
use caas_backends::zk::{GatewayInfo, announce_gateway, withdraw_gateway};
use caas_backends::{Agent, AgentConfig, Scheduler, SchedulerConfig};
use caas_core::Domain;
use caas_gateway::{Gateway, GatewayConfig};
use clap::Args;
use tokio::net::TcpListener;

use crate::StoreArgs;

#[derive(Args, Debug)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// This host's id.
    #[arg(long, default_value = "local")]
    host_id: String,
    /// The IP containers' ports are published on (and registered with).
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Host port pool, START-END.
    #[arg(long, default_value = "25701-25999", value_parser = crate::parse_range)]
    port_range: caas_backends::ports::PortRange,
    /// The gateway's HTTP listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The gateway's admin listener (/metrics, /routes, /stats/{app}).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin_listen: SocketAddr,
    /// The gateway domain: `{app}.{domain}` routes to an app.
    #[arg(long, default_value = "caas.local")]
    domain: String,
    /// The control API's listener.
    #[arg(long, default_value = "127.0.0.1:7070")]
    api_listen: SocketAddr,
    /// Where the agent serves container logs to the API.
    #[arg(long, default_value = "127.0.0.1:7071")]
    logs_listen: SocketAddr,
    /// The API's tokens file; made with one admin token when it does not exist.
    #[arg(long, default_value = ".caas/tokens.toml")]
    tokens: PathBuf,
    /// Where the admin token made with a new tokens file is written.
    #[arg(long, default_value = ".caas/admin.token")]
    admin_token_file: PathBuf,
    /// How long a host's alive node must be gone before its instances move, in ms.
    #[arg(long, default_value_t = 30_000)]
    host_grace_ms: u64,
    /// Memory capacity offered to containers (default: the Docker daemon's total).
    #[arg(long, value_parser = crate::parse_memory)]
    memory: Option<caas_backends::assignment::MemoryLimit>,
}

/// Makes the tokens file with one admin token when there is none; the token goes to
/// `token_file` (0600). Returns whether it made them.
fn bootstrap_tokens(tokens: &Path, token_file: &Path) -> Result<bool, String> {
    if tokens.exists() {
        return Ok(false);
    }
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
        .map_err(|e| format!("cannot read /dev/urandom for a token: {e}"))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    for p in [tokens, token_file] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(token_file)
        .map_err(|e| format!("{}: {e}", token_file.display()))?;
    writeln!(f, "{token}").map_err(|e| format!("{}: {e}", token_file.display()))?;
    let toml = format!(
        "# Made by `caasd up`: one admin token (its SHA-256; the token is in {}).\n\
         [[token]]\nsha256 = \"{}\"\ntenant = \"admin\"\napps = []\nadmin = true\n",
        token_file.display(),
        sha256_hex(token.as_bytes())
    );
    std::fs::write(tokens, toml).map_err(|e| format!("{}: {e}", tokens.display()))?;
    Ok(true)
}

pub(crate) async fn run(a: UpArgs) -> Result<(), String> {
    if bootstrap_tokens(&a.tokens, &a.admin_token_file)? {
        eprintln!(
            "made {} with one admin token; use it with: export CAAS_TOKEN=$(cat {})",
            a.tokens.display(),
            a.admin_token_file.display()
        );
    }
    let tokens = Tokens::load(&a.tokens)?;
    let domain = Domain::new(&a.domain).map_err(|e| format!("--domain: {e}"))?;
    // Bind everything first: a port in use fails the start, not a role later.
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
    };
    let gw_listener = bind(a.listen, "--listen").await?;
    let admin_listener = bind(a.admin_listen, "--admin-listen").await?;
    let api_listener = bind(a.api_listen, "--api-listen").await?;

    // The agent: this machine's Docker.
    let mut agent = AgentConfig::new(a.store.config()?, a.host_id.clone(), a.ip);
    agent.ports = a.port_range;
    agent.memory = a.memory.map(caas_backends::assignment::MemoryLimit::bytes);
    agent.logs_listen = Some(a.logs_listen);
    let agent = Agent::start(agent)
        .await
        .map_err(|e| format!("agent: {e}"))?;

    // A scheduler, a rollout controller and the API on one session or lease.
    let store = a
        .store
        .open()
        .await
        .map_err(|e| format!("{}: {e}", a.store.describe()))?;
    let scheduler = Scheduler::new(
        store.clone(),
        SchedulerConfig {
            host_grace: Duration::from_millis(a.host_grace_ms),
            name: "up".into(),
            ..SchedulerConfig::default()
        },
    )
    .spawn();
    let controller = RolloutController::new(
        Rollouts::new(store.clone()),
        ControllerConfig {
            name: "up".into(),
            ..ControllerConfig::default()
        },
    )
    .spawn();

    // The gateway, on a session or lease of its own (app specs in plain JSON: no key).
    let gw_store = a
        .store
        .open()
        .await
        .map_err(|e| format!("gateway discovery: {}: {e}", a.store.describe()))?;
    let discovery = StoreDiscovery::start(gw_store.clone(), None);
    let gateway = Gateway::builder(GatewayConfig {
        domains: vec![domain],
        ..GatewayConfig::default()
    })
    .discovery(discovery)
    .build()
    .map_err(|e| format!("gateway: {e}"))?;
    // Announced like any gateway, so the API finds its /stats/{app}.
    let gateway_id = sanitize_gateway_id(&format!("{}-gateway", a.host_id));
    let info = GatewayInfo {
        admin: Some(a.admin_listen),
        listen: a.listen,
        listen_tls: None,
    };
    announce_gateway(&gw_store, &gateway_id, &info)
        .await
        .map_err(|e| format!("gateway announcement: {e}"))?;

    // The API (app specs in plain JSON, as the gateway here reads them: no config key).
    let api = Api::new(store.clone(), tokens, None, ApiConfig::default());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let admin = {
        let gw = gateway.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { gw.serve_admin(admin_listener, stop).await })
    };
    let api_task = tokio::spawn(api.serve(api_listener, stopped(stop_rx.clone())));
    let gw_task = {
        let gw = gateway.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { gw.serve(gw_listener, stop).await })
    };
    eprintln!(
        "caas is up: gateway http://{} (apps at {{app}}.{}), admin http://{}, API http://{}, host {} ({})",
        a.listen, a.domain, a.admin_listen, a.api_listen, a.host_id, a.ip
    );

    crate::shutdown_signal().await;
    eprintln!("stopping (containers keep running; the next start adopts them)");
    stop_tx.send_replace(true);
    for (what, task) in [("gateway", gw_task), ("admin", admin)] {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "{what} listener ended with an error"),
            Err(e) => tracing::warn!(error = %e, "{what} listener task failed"),
        }
    }
    match api_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "API listener ended with an error"),
        Err(e) => tracing::warn!(error = %e, "API listener task failed"),
    }
    if let Err(e) = withdraw_gateway(&gw_store, &gateway_id).await {
        tracing::warn!(error = %e, "gateway announcement not withdrawn (it goes with the session)");
    }
    controller.shutdown().await;
    scheduler.shutdown().await;
    agent.shutdown().await;
    gw_store.close().await;
    store.close().await;
    Ok(())
}
