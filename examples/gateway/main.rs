//! The caas gateway as a program: routes from a TOML file (hot-reloaded) or, with `--demo`,
//! from a built-in config with two tiny local upstreams, so one command shows it working.
//!
//! ```text
//! cargo run --release --example gateway -- --demo
//! curl -H 'Host: hello.caas.local' http://127.0.0.1:8080/
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use caas_backends::store::EtcdConfig;
use caas_backends::zk::gateways::validate_gateway_id;
use caas_backends::zk::{GatewayInfo, ValueCipher, ZkConfig, ZkTlsConfig};
use caas_core::{Router, Update};
use caas_gateway::{FileConfig, FileDiscovery, Gateway, TlsAcceptor, apply_update};
use clap::{ArgGroup, Parser};
use etcd_tls::EtcdTlsArgs;
use store::{Announced, Source, StoreStart, StoreThread, default_gateway_id};
use tokio::net::TcpListener;

mod demo;
#[path = "../cli_support/etcd_tls.rs"]
mod etcd_tls;
mod store;

/// mimalloc: per-thread free lists make the many small, short-lived allocations of a proxy
/// (header maps, request state) cheaper than glibc's malloc, and frees from other threads
/// do not contend on an arena lock. Built with `no_thp`: mimalloc otherwise asks for
/// transparent huge pages for its arenas, and memory then becomes resident 2 MiB at a time
/// (on machines where THP is `madvise`, the common default).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Built-in config used by `--demo` when no `--config` is given.
const DEMO_CONFIG: &str = r#"
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9901"
domains = ["caas.local"]
workers = 1

[apps.hello]
default_version = "v1"
domains = ["www.hello.test"]

[apps.hello.versions.v1]
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]
"#;

#[derive(Parser, Debug)]
#[command(about = "caas L7 gateway: routes {app}.{domain} to the app's endpoints")]
#[command(group(ArgGroup::new("store").args(["zk", "etcd"])))]
struct Args {
    /// Gateway config (TOML). Its [apps] and its [tls] certificate files are watched and
    /// reloaded live.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Start a tiny upstream on every endpoint address of the config (with no --config, use
    /// a built-in config: hello.caas.local on 127.0.0.1:8080 → 127.0.0.1:9001 and :9002).
    #[arg(long)]
    demo: bool,
    /// How often the config file and the certificate files are checked for changes, in
    /// milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    reload_interval_ms: u64,
    /// Take apps from ZooKeeper (`host:port[,host:port...]`) instead of the file's [apps];
    /// listen addresses, domains, limits and [tls] still come from the file. With [tls],
    /// custom domains' certificates stored at {chroot}/certs/{domain} are served too.
    #[arg(long, value_name = "HOST:PORT")]
    zk: Option<String>,
    /// Root of the caas tree in ZooKeeper.
    #[arg(long, default_value = "/caas", value_name = "PATH", requires = "zk")]
    zk_chroot: String,
    /// File holding digest credentials `user:password` (the gateway's read-only identity).
    #[arg(long, value_name = "FILE", requires = "zk")]
    zk_digest_file: Option<PathBuf>,
    /// CA certificate (PEM) for TLS to ZooKeeper's secure client port.
    #[arg(long, value_name = "FILE", requires = "zk")]
    zk_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for TLS to ZooKeeper.
    #[arg(long, value_name = "FILE", requires = "zk_tls_ca")]
    zk_tls_cert: Option<PathBuf>,
    /// Client private key (PKCS#8 PEM) for TLS to ZooKeeper.
    #[arg(long, value_name = "FILE", requires = "zk_tls_ca")]
    zk_tls_key: Option<PathBuf>,
    /// AES-256-GCM key file for encrypted app config values and certificate keys.
    #[arg(long, value_name = "FILE", requires = "zk")]
    zk_key_file: Option<PathBuf>,
    /// How long a ZooKeeper change that needs a read waits for others, to read them all in
    /// one request (route changes land up to this much later; 0 reads each at once).
    /// Default: the library's, 100.
    #[arg(long, value_name = "MS", requires = "zk")]
    zk_gather_ms: Option<u64>,
    /// Keep the routes received from the store (--zk or --etcd) in FILE (rewritten
    /// atomically, at most once a second) and serve them when the store cannot be reached at
    /// start.
    #[arg(long, alias = "zk-snapshot", value_name = "FILE", requires = "store")]
    snapshot: Option<PathBuf>,
    /// With --snapshot: how long to try the store at start before serving the file.
    #[arg(
        long,
        alias = "zk-snapshot-wait-ms",
        default_value_t = 3000,
        value_name = "MS",
        requires = "snapshot"
    )]
    snapshot_wait_ms: u64,
    /// This gateway's id in the store ({root}/gateways/{id}, ephemeral, holding its admin
    /// and listen addresses). Default: the host name and the admin (else listen) port.
    #[arg(long, value_name = "ID", requires = "store")]
    gateway_id: Option<String>,
    /// Take apps from etcd v3 instead (`http://host:port[,...]`, `https://` with --etcd-ca),
    /// the same layout under --etcd-root, as --zk does: announced at {root}/gateways/{id},
    /// --snapshot and --gateway-id apply, and with [tls] the certificates at
    /// {root}/certs/{domain} are served. The --zk-* flags are ZooKeeper's only.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with_all = [
            "zk", "zk_chroot", "zk_digest_file", "zk_tls_ca", "zk_tls_cert", "zk_tls_key",
            "zk_key_file", "zk_gather_ms",
        ]
    )]
    etcd: Option<String>,
    /// Root of the caas tree in etcd (the key prefix).
    #[arg(long, default_value = "/caas", value_name = "PATH", requires = "etcd")]
    etcd_root: String,
    /// AES-256-GCM key file for encrypted app specs and blacklist in etcd (as --zk-key-file).
    #[arg(long, value_name = "FILE", requires = "etcd")]
    etcd_key_file: Option<PathBuf>,
    /// File holding etcd credentials `user:password` (the gateway's read-only user; see
    /// `caasd etcd-provision`).
    #[arg(long, value_name = "FILE", requires = "etcd")]
    etcd_user_file: Option<PathBuf>,
    #[command(flatten)]
    etcd_tls: EtcdTlsArgs,
}

impl Args {
    /// The ZooKeeper settings, when `--zk` is given.
    fn zk_config(&self) -> Result<Option<ZkConfig>, String> {
        let Some(servers) = &self.zk else {
            return Ok(None);
        };
        let mut cfg = ZkConfig::new(servers.clone()).with_chroot(self.zk_chroot.clone());
        if let Some(f) = &self.zk_digest_file {
            let digest = std::fs::read_to_string(f)
                .map_err(|e| format!("--zk-digest-file {}: {e}", f.display()))?;
            cfg = cfg.with_digest(digest.trim().to_owned());
        }
        if let Some(ca) = &self.zk_tls_ca {
            cfg = cfg.with_tls(ZkTlsConfig {
                ca: ca.clone(),
                cert: self.zk_tls_cert.clone(),
                key: self.zk_tls_key.clone(),
            });
        }
        if let Some(k) = &self.zk_key_file {
            cfg = cfg.with_encryption_key_file(k.clone());
        }
        if let Some(ms) = self.zk_gather_ms {
            cfg.gather_ms = ms;
        }
        cfg.validate().map_err(|e| format!("--zk: {e}"))?;
        Ok(Some(cfg))
    }

    /// The etcd settings and config key, when `--etcd` is given.
    fn etcd_config(&self) -> Result<Option<(EtcdConfig, Option<ValueCipher>)>, String> {
        let Some(endpoints) = &self.etcd else {
            return Ok(None);
        };
        let cipher = match &self.etcd_key_file {
            Some(f) => {
                Some(ValueCipher::from_file(f).map_err(|e| format!("--etcd-key-file: {e}"))?)
            }
            None => None,
        };
        let mut config = self
            .etcd_tls
            .apply(EtcdConfig::from_endpoint_list(endpoints).with_root(&self.etcd_root));
        if let Some(f) = &self.etcd_user_file {
            let user = std::fs::read_to_string(f)
                .map_err(|e| format!("--etcd-user-file {}: {e}", f.display()))?;
            config = config.with_user(user.trim().to_owned());
        }
        config.validate().map_err(|e| format!("--etcd: {e}"))?;
        Ok(Some((config, cipher)))
    }

    /// The store the routes come from, checked (files read, key loaded) before any connect.
    fn source(&self) -> Result<Option<Source>, String> {
        if let Some(zk) = self.zk_config()? {
            return Ok(Some(Source::Zk(zk)));
        }
        Ok(self
            .etcd_config()?
            .map(|(config, cipher)| Source::Etcd(config, cipher.map(Box::new))))
    }
}

/// `RUST_LOG` (`info` when unset or unreadable), with rustls held to errors unless it names
/// rustls: its warnings are about what a client sent (an IP address as its server name, a
/// warning alert), a line per connection that any client can repeat at will.
fn log_filter(spec: Option<String>) -> tracing_subscriber::EnvFilter {
    let spec = spec
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info".into());
    let full = if spec.contains("rustls") {
        spec.clone()
    } else {
        format!("{spec},rustls=error")
    };
    tracing_subscriber::EnvFilter::try_new(full).unwrap_or_else(|e| {
        eprintln!("warning: RUST_LOG={spec:?} is not a log filter ({e}); logging at info");
        "info,rustls=error".into()
    })
}

fn main() -> ExitCode {
    // Diagnostics on stderr: stdout is left to `access_log = "stdout"` (JSON lines only).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(log_filter(std::env::var("RUST_LOG").ok()))
        .init();
    let args = Args::parse();
    let (config, path) = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rt = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if config.workers > 1 {
            b.worker_threads(config.workers);
        }
        b
    };
    // The blocking pool (the config file's reads, route-table rebuilds) gives its threads up
    // after 100 ms idle instead of tokio's 10 s, which a 1 s file poll never reaches: a
    // one-worker gateway is then a single-threaded process almost all the time, and Linux
    // takes and drops a reference on the socket's file in every system call of a process
    // that shares its file table between threads (measured: fdget/fput ~0.6 % of its CPU at
    // 32 connections). A thread started once a second costs far less. (With --zk or
    // --etcd the store's client has a thread of its own, see `store`; a ZooKeeper-fed
    // gateway had one before too, the client library's I/O reactor.)
    rt.thread_keep_alive(Duration::from_millis(100));
    if config.workers == 1 {
        caas_gateway::busy_poll::install(&mut rt, Duration::from_micros(config.busy_poll_us));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, config, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &Args) -> Result<(FileConfig, Option<PathBuf>), String> {
    match &args.config {
        Some(path) => Ok((
            FileConfig::load(path).map_err(|e| e.to_string())?,
            Some(path.clone()),
        )),
        None if args.demo => Ok((
            FileConfig::parse(DEMO_CONFIG, "<built-in demo config>".as_ref())
                .map_err(|e| e.to_string())?,
            None,
        )),
        None => Err("give --config FILE, or --demo to try the built-in config".into()),
    }
}

async fn run(args: Args, config: FileConfig, path: Option<PathBuf>) -> Result<(), String> {
    // Certificates first: a bad one stops the start with the file, the key and why.
    let certs = config
        .cert_resolver(path.as_deref().unwrap_or("<built-in demo config>".as_ref()))
        .map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let tls_listener = match config.listen_tls {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (listen_tls): {e}"))?,
        ),
        None => None,
    };
    if args.demo {
        let addrs: Vec<SocketAddr> = config
            .apps
            .values()
            .flat_map(|a| a.versions.values())
            .flat_map(|v| v.endpoints.iter().map(|e| e.addr))
            .collect();
        for addr in addrs {
            demo::spawn_upstream(addr).await?;
        }
    }
    let builder = Gateway::builder(config.gateway_config());
    let source = args.source()?;
    let reload_every = Duration::from_millis(args.reload_interval_ms);
    let mut store_thread = None;
    let builder = match (source, &path) {
        (Some(source), _) => {
            if !config.apps.is_empty() {
                tracing::warn!(
                    "{} given: the [apps] of the config file are ignored",
                    source.flag()
                );
            }
            let id = match &args.gateway_id {
                Some(id) => {
                    validate_gateway_id(id).map_err(|e| format!("--gateway-id: {e}"))?;
                    id.clone()
                }
                None => default_gateway_id(config.admin_listen.unwrap_or(config.listen)),
            };
            let info = GatewayInfo {
                admin: config.admin_listen,
                listen: listener.local_addr().unwrap_or(config.listen),
                listen_tls: tls_listener.as_ref().and_then(|l| l.local_addr().ok()),
            };
            // The store thread applies the updates; the gateway shares its router.
            let router = Arc::new(Router::new(config.domains.clone()));
            let thread = StoreThread::start(StoreStart {
                source,
                router: Arc::clone(&router),
                certs: certs.clone(),
                announced: Announced::new(id, info),
                snapshot: args
                    .snapshot
                    .clone()
                    .map(|f| (f, Duration::from_millis(args.snapshot_wait_ms))),
            })
            .await?;
            store_thread = Some(thread);
            builder.router(router)
        }
        (None, Some(p)) => builder.discovery(FileDiscovery::new(p.clone(), reload_every)),
        // The built-in routes never change: built once, with nothing to follow.
        (None, None) => {
            let router = Arc::new(Router::new(config.domains.clone()));
            apply_update(&router, Update::Reset(config.snapshot()));
            builder.router(router)
        }
    };
    let gateway = builder.build().map_err(|e| e.to_string())?;
    if let Some(admin) = config.admin_listen {
        let l = TcpListener::bind(admin)
            .await
            .map_err(|e| format!("cannot listen on admin address {admin}: {e}"))?;
        let gw = gateway.clone();
        tokio::spawn(async move {
            if let Err(e) = gw.serve_admin(l, std::future::pending()).await {
                tracing::error!("admin listener failed: {e}");
            }
        });
        eprintln!("admin: http://{admin}/metrics  /routes  /healthz  /stats/{{appId}}");
    }
    if args.demo {
        if let Some((app, domain)) = config.apps.keys().next().zip(config.domains.first()) {
            eprintln!(
                "demo: try  curl -H 'Host: {app}.{domain}' http://{}/",
                config.listen
            );
        }
    }
    // One shutdown signal for both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_tx.send_replace(());
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let tls = match (tls_listener, certs) {
        (Some(l), Some(certs)) => {
            tokio::spawn(Arc::clone(&certs).watch_files(reload_every));
            let resumption = config.tls.as_ref().is_none_or(|t| t.session_resumption);
            let acceptor = TlsAcceptor::with_session_resumption(certs, resumption)
                .map_err(|e| e.to_string())?;
            let gw = gateway.clone();
            let stop = stopped(stop_rx.clone());
            Some(tokio::spawn(async move {
                gw.serve_tls(l, acceptor, stop).await
            }))
        }
        _ => None,
    };
    gateway
        .serve(listener, stopped(stop_rx))
        .await
        .map_err(|e| e.to_string())?;
    if let Some(tls) = tls {
        tls.await
            .map_err(|e| format!("TLS listener task failed: {e}"))?
            .map_err(|e| e.to_string())?;
    }
    if let Some(store) = store_thread {
        store.stop().await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for ctrl-c: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
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
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}
