//! A real etcd for tests: [`EtcdServer::start`] runs Debian's etcd 3.4 (`etcd-server`) as a
//! single-member cluster on free loopback ports (client and peer) with its own temp data dir,
//! waits until `GET /health` answers `"health":"true"`, and kills it on drop. `stop`, `kill`
//! and `restart` (same ports, same data) let a test take etcd away mid-test.
//!
//! The binary is `$CAAS_ETCD_BIN`, else `/usr/bin/etcd`. When it is missing,
//! [`EtcdServer::start_or_skip`] fails under `CI=true` and otherwise prints a loud SKIPPED
//! banner and returns `None`, as the ZooKeeper harness does.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{free_port, is_ci};

const DEFAULT_BIN: &str = "/usr/bin/etcd";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A single-member etcd cluster process owned by a test.
#[derive(Debug)]
pub struct EtcdServer {
    dir: TempDir,
    port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts a server on free ports and waits until it is healthy.
    pub fn start() -> io::Result<Self> {
        check_available()?;
        let dir = tempfile::Builder::new().prefix("caas-etcd-").tempdir()?;
        let mut server = Self {
            dir,
            port: free_port()?,
            peer_port: free_port()?,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts a server, or returns `None` after printing a loud SKIPPED banner when etcd is
    /// not installed. Under `CI=true` a missing etcd panics instead: CI must never pass by
    /// skipping. Any other start failure panics.
    #[allow(clippy::panic)]
    pub fn start_or_skip(test: &str) -> Option<Self> {
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
        match Self::start() {
            Ok(s) => Some(s),
            Err(e) => panic!("{test}: cannot start etcd: {e}"),
        }
    }

    /// `http://127.0.0.1:PORT`, the client endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Stops the server gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
            if !status.success() {
                child.kill()?;
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    child.kill()?;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again on the same ports with the same data (keys, revisions and
    /// leases survive; a lease's TTL restarts from its full length).
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// Whether `GET /health` answers healthy.
    pub fn healthy(&self) -> bool {
        http_get(self.port, "/health").is_some_and(|b| b.contains("\"health\":\"true\""))
    }

    /// The tail of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(binary())
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
        self.child = Some(child);
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

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Best effort: the process may already be gone.
            let _ = child.kill();
            let _ = child.wait();
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
