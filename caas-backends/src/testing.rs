//! A real ZooKeeper for tests (feature `testing`): [`ZkServer::start`] runs Debian's ZooKeeper
//! 3.8 standalone on a free loopback port with its own temp dir, waits until `srvr` reports
//! `Mode: standalone`, and kills it on drop. `stop`, `kill` and `restart` (same port, same data)
//! let a test take ZooKeeper away mid-test.
//!
//! The server runs as
//! `java -Xmx256m -cp DIR:$CAAS_ZK_CLASSPATH org.apache.zookeeper.server.quorum.QuorumPeerMain
//! DIR/zoo.cfg`, with `CAAS_ZK_CLASSPATH` defaulting to the Debian jars (zookeeper, slf4j-simple,
//! netty-codec). When java or the jars are missing, [`ZkServer::start_or_skip`] fails under
//! `CI=true` and otherwise prints a loud SKIPPED banner and returns `None`.
//!
//! [`shared_zk`] hands every test of one process the same server (each test works under its
//! own chroot); [`ZkEnsemble`] runs three servers as one ensemble.
//!
//! [`EtcdServer`] and [`shared_etcd`] do the same for etcd (Debian's `etcd-server`).

pub mod docker;
mod ensemble;
mod etcd;
mod process;
pub mod routes;
pub mod secure;
pub mod stores;

pub use ensemble::ZkEnsemble;
pub use etcd::{EtcdServer, EtcdServerBuilder, SECURE_ROOT_USER, shared_etcd, shared_etcd_secure};
use process::ServerProcess;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const DEFAULT_CLASSPATH: &str = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar:/usr/share/java/netty-codec.jar";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// PEM files for TLS to a test server: the CA and a client identity it accepts.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate that signed the server and client certificates.
    pub ca: PathBuf,
    /// Client certificate.
    pub client_cert: PathBuf,
    /// Client private key (PKCS#8).
    pub client_key: PathBuf,
}

/// Options for [`ZkServer`].
#[derive(Debug, Clone, Default)]
pub struct ZkServerBuilder {
    tls: bool,
    tick_ms: Option<u32>,
}

impl ZkServerBuilder {
    /// Also serve TLS on a second port (`secureClientPort`, mutual TLS, certificates generated
    /// into the server's dir).
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// ZooKeeper's `tickTime` (default 2000 ms); session timeouts are clamped to 2..20 ticks.
    pub fn tick_ms(mut self, ms: u32) -> Self {
        self.tick_ms = Some(ms);
        self
    }

    /// Starts the server and waits until it serves.
    pub fn start(self) -> io::Result<ZkServer> {
        check_available()?;
        let dir = tempfile::Builder::new().prefix("caas-zk-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("data"))?;
        let port = free_port()?;
        let secure_port = if self.tls { Some(free_port()?) } else { None };
        let tls = if self.tls {
            Some(write_certs(dir.path())?)
        } else {
            None
        };
        let mut cfg = format!(
            "tickTime={}\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             maxClientCnxns=0\nadmin.enableServer=false\n\
             4lw.commands.whitelist=ruok,srvr,stat,mntr,conf,cons,wchs,dump\n",
            self.tick_ms.unwrap_or(2000),
            dir.path().join("data").display(),
        );
        if let Some(sp) = secure_port {
            let d = dir.path().display();
            cfg.push_str(&format!(
                "secureClientPort={sp}\nsecureClientPortAddress=127.0.0.1\n\
                 serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
                 ssl.keyStore.location={d}/server-keystore.pem\nssl.keyStore.type=PEM\n\
                 ssl.trustStore.location={d}/ca.pem\nssl.trustStore.type=PEM\n\
                 ssl.clientAuth=need\n"
            ));
        }
        std::fs::write(dir.path().join("zoo.cfg"), cfg)?;
        let mut server = ZkServer {
            dir,
            port,
            secure_port,
            tls,
            process: ServerProcess::default(),
        };
        server.spawn()?;
        Ok(server)
    }
}

/// A standalone ZooKeeper server process owned by a test.
#[derive(Debug)]
pub struct ZkServer {
    /// Before `dir`: fields drop in order, and the server goes before its directory.
    process: ServerProcess,
    dir: TempDir,
    port: u16,
    secure_port: Option<u16>,
    tls: Option<TlsFiles>,
}

impl ZkServer {
    /// Starts a plain server on a free port.
    pub fn start() -> io::Result<Self> {
        Self::builder().start()
    }

    /// Options (TLS, tick time).
    pub fn builder() -> ZkServerBuilder {
        ZkServerBuilder::default()
    }

    /// Starts a server, or returns `None` after printing a loud SKIPPED banner when java or
    /// the ZooKeeper jars are missing. Under `CI=true` a missing ZooKeeper panics instead:
    /// CI must never pass by skipping. Any other start failure panics.
    #[allow(clippy::panic)]
    pub fn start_or_skip(builder: ZkServerBuilder, test: &str) -> Option<Self> {
        if let Err(e) = check_available() {
            if is_ci() {
                panic!("CI=true but ZooKeeper is not available: {e}");
            }
            // Straight to the process's stderr: the test harness captures `eprintln!` of
            // passing tests, and a skip must never pass unnoticed.
            let banner = format!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED {test}: ZooKeeper not available: {e}\n\
                 !!! install it with scripts/install-deps.sh (apt-get install zookeeper)\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            let _ = io::stderr().write_all(banner.as_bytes());
            return None;
        }
        match builder.start() {
            Ok(s) => Some(s),
            Err(e) => panic!("{test}: cannot start ZooKeeper: {e}"),
        }
    }

    /// `127.0.0.1:PORT` of the plain client port.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The plain client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT` of the TLS client port, when started with TLS.
    pub fn secure_connect_string(&self) -> Option<String> {
        self.secure_port.map(|p| format!("127.0.0.1:{p}"))
    }

    /// The certificates of a TLS server.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The server's directory (zoo.cfg, data/, zk.log, certificates).
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

    /// Starts the server again on the same ports with the same data (sessions and persistent
    /// nodes survive; ZooKeeper restores them from its snapshot and log).
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// Sends `srvr` and returns the answer (`None` when nothing answers).
    pub fn srvr(&self) -> Option<String> {
        four_letter(self.port, "srvr")
    }

    /// The tail of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        process::log_tail(&self.dir.path().join("zk.log"))
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("zk.log"))?;
        let dir = self.dir.path();
        let child = Command::new("java")
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(format!("{}:{}", dir.display(), classpath()))
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(dir.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.process.set(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.srvr().is_some_and(|s| s.contains("Mode: standalone")) {
                return Ok(());
            }
            if !self.is_running() {
                return Err(io::Error::other(format!(
                    "ZooKeeper exited during start; log:\n{}",
                    self.log_tail()
                )));
            }
            if Instant::now() > deadline {
                let _ = self.kill();
                return Err(io::Error::other(format!(
                    "ZooKeeper did not serve on port {} within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Sends this crate's logs (`info` and up, or `RUST_LOG`) to the test's output, which the
/// test runner shows when a test fails. Call it first in every test; later calls do nothing.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "caas_backends=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The ZooKeeper server shared by the tests of this process: started by the first test that
/// asks, kept while any test holds it, stopped when the last one drops it (a later test starts
/// a new one). Tests running in one process (`cargo test`) share it; under a runner that gives
/// each test its own process (nextest) each process has its own. `None` (with a SKIPPED
/// banner) when ZooKeeper is not installed, as [`ZkServer::start_or_skip`].
pub fn shared_zk(test: &str) -> Option<Arc<ZkServer>> {
    static SHARED: Mutex<Weak<ZkServer>> = Mutex::new(Weak::new());
    // The lock only guards the Weak: a test that panicked while holding it left nothing
    // half-done.
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = shared.upgrade() {
        return Some(server);
    }
    let server = Arc::new(ZkServer::start_or_skip(ZkServerBuilder::default(), test)?);
    *shared = Arc::downgrade(&server);
    Some(server)
}

/// A loopback TCP proxy that can cut the network between clients and a server, to make a
/// session expire the way it does in production (a partition longer than the session
/// timeout). Reconnecting with the same session id from a second client would be the other
/// way, but zookeeper-client 0.11 cannot connect with a given session (its first deadline
/// is zero), so the partition it is.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *cut_rx.borrow() {
                    continue; // dropped: refused while partitioned
                }
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Ok(Self { addr, cut, task })
    }

    /// `127.0.0.1:PORT` to connect to instead of the server.
    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    /// Cuts every connection and refuses new ones (`true`), or lets them through (`false`).
    pub fn partition(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `CI` set to a true value.
pub fn is_ci() -> bool {
    matches!(
        std::env::var("CI").as_deref(),
        Ok("true" | "TRUE" | "True" | "1" | "yes")
    )
}

fn classpath() -> String {
    std::env::var("CAAS_ZK_CLASSPATH")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_CLASSPATH.to_owned())
}

/// Checks that java runs and every classpath jar exists.
pub fn check_available() -> io::Result<()> {
    let java = Command::new("java")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(java, Ok(s) if s.success()) {
        return Err(io::Error::other("`java -version` does not run"));
    }
    for jar in classpath().split(':').filter(|j| !j.is_empty()) {
        if !Path::new(jar).exists() {
            return Err(io::Error::other(format!("{jar} is missing")));
        }
    }
    Ok(())
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn four_letter(port: u16, cmd: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(cmd.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Generates a CA, a server identity for `127.0.0.1`/`localhost` and a client identity into
/// `dir` (`ca.pem`, `server.pem` + `server-key.pem`, `server-keystore.pem` with both,
/// `client.pem`, `client-key.pem`).
pub(crate) fn write_certs(dir: &Path) -> io::Result<TlsFiles> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let err = |e: rcgen::Error| io::Error::other(format!("certificate generation: {e}"));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?).map_err(err)?;
    let leaf = |names: Vec<String>| -> io::Result<(String, String)> {
        let key = KeyPair::generate().map_err(err)?;
        let cert = CertificateParams::new(names)
            .map_err(err)?
            .signed_by(&key, &ca)
            .map_err(err)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()])?;
    let (client_cert, client_key) = leaf(vec!["caas-client".into()])?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(
        dir.join("server-keystore.pem"),
        format!("{server_key}{server_cert}"),
    )?;
    std::fs::write(dir.join("server.pem"), &server_cert)?;
    std::fs::write(dir.join("server-key.pem"), &server_key)?;
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    std::fs::write(&files.client_cert, client_cert)?;
    std::fs::write(&files.client_key, client_key)?;
    Ok(files)
}
