//! A real etcd for tests: [`EtcdServer::start`] runs Debian's etcd 3.4 (`etcd-server`) as a
//! single-member cluster on free loopback ports (client and peer) with its own temp data dir,
//! waits until `GET /health` answers `"health":"true"`, and kills it on drop. `stop`, `kill`
//! and `restart` (same ports, same data) let a test take etcd away mid-test.
//!
//! [`EtcdServerBuilder::tls`] serves the client port over mutual TLS instead
//! (`--client-cert-auth`, certificates generated into the server's dir, `/health` on a plain
//! metrics port); [`shared_etcd_secure`] is such a server with etcd's auth enabled, shared by
//! the tests of one process.
//!
//! The binary is `$CAAS_ETCD_BIN`, else `/usr/bin/etcd`. When it is missing,
//! [`EtcdServer::start_or_skip`] fails under `CI=true` and otherwise prints a loud SKIPPED
//! banner and returns `None`, as the ZooKeeper harness does.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::{self, ServerProcess};
use super::{TlsFiles, free_port, is_ci, write_certs};
use crate::store::{EtcdAdmin, EtcdConfig, EtcdTlsConfig};

const DEFAULT_BIN: &str = "/usr/bin/etcd";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The credentials of etcd's `root` user on [`shared_etcd_secure`].
pub const SECURE_ROOT_USER: &str = "root:caas-test-root";

/// Options for [`EtcdServer`].
#[derive(Debug, Clone, Default)]
pub struct EtcdServerBuilder {
    tls: bool,
}

impl EtcdServerBuilder {
    /// Serve clients over mutual TLS (`https://`, `--client-cert-auth`) with certificates
    /// generated into the server's dir ([`EtcdServer::tls_files`]).
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Starts the server on free ports and waits until it is healthy.
    pub fn start(self) -> io::Result<EtcdServer> {
        check_available()?;
        let dir = tempfile::Builder::new().prefix("caas-etcd-").tempdir()?;
        let tls = if self.tls {
            Some(write_certs(dir.path())?)
        } else {
            None
        };
        let metrics_port = if self.tls { Some(free_port()?) } else { None };
        let mut server = EtcdServer {
            dir,
            port: free_port()?,
            peer_port: free_port()?,
            metrics_port,
            tls,
            process: ServerProcess::default(),
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts the server, or returns `None` after printing a loud SKIPPED banner when etcd is
    /// not installed. Under `CI=true` a missing etcd panics instead: CI must never pass by
    /// skipping. Any other start failure panics.
    #[allow(clippy::panic)]
    pub fn start_or_skip(self, test: &str) -> Option<EtcdServer> {
        if let Err(e) = check_available() {
            if is_ci() {
                panic!("CI=true but etcd is not available: {e}");
            }
            let banner = format!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED {test}: etcd not available: {e}\n\
                 !!! install it with scripts/install-deps.sh (apt-get install etcd-server)\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            let _ = io::stderr().write_all(banner.as_bytes());
            return None;
        }
        match self.start() {
            Ok(s) => Some(s),
            Err(e) => panic!("{test}: cannot start etcd: {e}"),
        }
    }
}

/// A single-member etcd cluster process owned by a test.
#[derive(Debug)]
pub struct EtcdServer {
    /// Before `dir`: fields drop in order, and the server goes before its directory.
    process: ServerProcess,
    dir: TempDir,
    port: u16,
    peer_port: u16,
    /// Plain `/health` (and `/metrics`) of a TLS server.
    metrics_port: Option<u16>,
    tls: Option<TlsFiles>,
}

impl EtcdServer {
    /// Starts a plain server on free ports and waits until it is healthy.
    pub fn start() -> io::Result<Self> {
        Self::builder().start()
    }

    /// Options (TLS).
    pub fn builder() -> EtcdServerBuilder {
        EtcdServerBuilder::default()
    }

    /// A plain server, or `None` when etcd is not installed (see
    /// [`EtcdServerBuilder::start_or_skip`]).
    pub fn start_or_skip(test: &str) -> Option<Self> {
        Self::builder().start_or_skip(test)
    }

    /// `http://127.0.0.1:PORT`, the client endpoint (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA and a client identity the server accepts, when started with TLS.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// A store configuration for this server under `root`: its endpoint, and with TLS the
    /// CA and the client identity.
    pub fn config(&self, root: &str) -> EtcdConfig {
        let config = EtcdConfig::new(self.endpoint()).with_root(root);
        match &self.tls {
            Some(files) => config.with_tls(EtcdTlsConfig {
                ca: files.ca.clone(),
                cert: Some(files.client_cert.clone()),
                key: Some(files.client_key.clone()),
            }),
            None => config,
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory (data/, etcd.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Stops the server gracefully (SIGTERM) and waits for it to exit (SIGKILL after 20 s).
    pub fn stop(&mut self) -> io::Result<()> {
        self.process.stop()
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> io::Result<()> {
        self.process.kill()
    }

    /// Starts the server again on the same ports with the same data (keys, revisions and
    /// leases survive; a lease's TTL restarts from its full length).
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// Whether `GET /health` answers healthy (on the metrics port of a TLS server).
    pub fn healthy(&self) -> bool {
        http_get(self.metrics_port.unwrap_or(self.port), "/health")
            .is_some_and(|b| b.contains("\"health\":\"true\""))
    }

    /// The tail of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        process::log_tail(&self.dir.path().join("etcd.log"))
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(binary());
        if let (Some(files), Some(metrics)) = (&self.tls, self.metrics_port) {
            let dir = self.dir.path();
            command
                .arg(format!("--cert-file={}", dir.join("server.pem").display()))
                .arg(format!(
                    "--key-file={}",
                    dir.join("server-key.pem").display()
                ))
                .arg(format!("--trusted-ca-file={}", files.ca.display()))
                .arg("--client-cert-auth")
                .arg(format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"));
        }
        let child = command
            .arg("--name=caas-test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=caas-test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.process.set(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.healthy() {
                return Ok(());
            }
            if !self.is_running() {
                return Err(io::Error::other(format!(
                    "etcd exited during start; log:\n{}",
                    self.log_tail()
                )));
            }
            if Instant::now() > deadline {
                let _ = self.kill();
                return Err(io::Error::other(format!(
                    "etcd was not healthy on port {} within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The etcd server shared by the tests of this process, as [`super::shared_zk`]: each test
/// works under its own key prefix. `None` (with a SKIPPED banner) when etcd is missing.
pub fn shared_etcd(test: &str) -> Option<Arc<EtcdServer>> {
    static SHARED: Mutex<Weak<EtcdServer>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = shared.upgrade() {
        return Some(server);
    }
    let server = Arc::new(EtcdServer::start_or_skip(test)?);
    *shared = Arc::downgrade(&server);
    Some(server)
}

/// The TLS etcd server shared by the tests of this process, with etcd's auth enabled (the
/// `root` user is [`SECURE_ROOT_USER`]): each test works under its own root, with users and
/// roles of its own. `None` (with a SKIPPED banner) when etcd is missing.
#[allow(clippy::panic)]
pub fn shared_etcd_secure(test: &str) -> Option<Arc<EtcdServer>> {
    static SHARED: Mutex<Weak<EtcdServer>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = shared.upgrade() {
        return Some(server);
    }
    let server = EtcdServer::builder().tls(true).start_or_skip(test)?;
    if let Err(e) = enable_auth(server.config("/").with_user(SECURE_ROOT_USER)) {
        panic!("{test}: cannot enable etcd's auth: {e}");
    }
    let server = Arc::new(server);
    *shared = Arc::downgrade(&server);
    Some(server)
}

/// Enables auth on a fresh server, on a thread of its own (callers may be inside a runtime).
fn enable_auth(config: EtcdConfig) -> io::Result<()> {
    let run = move || -> io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut admin = EtcdAdmin::connect(config).await?;
            admin.enable_auth().await
        })
        .map_err(io::Error::other)
    };
    std::thread::spawn(run)
        .join()
        .map_err(|_| io::Error::other("the thread enabling etcd's auth panicked"))?
}

fn binary() -> PathBuf {
    std::env::var_os("CAAS_ETCD_BIN")
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_BIN), PathBuf::from)
}

/// Checks that the etcd binary runs.
pub(crate) fn check_available() -> io::Result<()> {
    let bin = binary();
    let ran = Command::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match ran {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(io::Error::other(format!(
            "`{} --version` failed ({s})",
            bin.display()
        ))),
        Err(e) => Err(io::Error::other(format!("{}: {e}", bin.display()))),
    }
}

/// A plain HTTP/1.0 GET on loopback; the body when the answer is 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
}
