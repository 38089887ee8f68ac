//! A three-server ZooKeeper ensemble on loopback for tests (feature `testing`):
//! [`ZkEnsemble::start`] writes one data dir (`myid`) and `zoo.cfg` per server with
//! `tickTime=500`, starts the three, and waits until one reports `Mode: leader` and the
//! others `Mode: follower`. [`ZkEnsemble::kill`] (SIGKILL) and [`ZkEnsemble::restart`] take a
//! server away and bring it back; [`ZkEnsemble::leader`] finds the leader. A new leader is
//! elected among the other two within about 5 s of killing the old one.

use std::io::{self, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::{self, ServerProcess};
use super::{check_available, classpath, four_letter, free_port, is_ci};

const QUORUM_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Member {
    client_port: u16,
    process: ServerProcess,
}

/// Three ZooKeeper servers forming one ensemble, killed on drop.
#[derive(Debug)]
pub struct ZkEnsemble {
    /// Before `dir`: fields drop in order, and the servers go before their directories.
    members: Vec<Member>,
    dir: TempDir,
}

impl ZkEnsemble {
    /// Starts the three servers and waits for the quorum.
    pub fn start() -> io::Result<Self> {
        check_available()?;
        let dir = tempfile::Builder::new().prefix("caas-zk-ens-").tempdir()?;
        let mut ports = Vec::new();
        for _ in 0..9 {
            ports.push(free_port()?);
        }
        let servers: String = (0..3)
            .map(|i| {
                format!(
                    "server.{}=127.0.0.1:{}:{}\n",
                    i + 1,
                    ports[3 + i],
                    ports[6 + i]
                )
            })
            .collect();
        let mut members = Vec::new();
        for (i, &client_port) in ports.iter().enumerate().take(3) {
            let node = dir.path().join((i + 1).to_string());
            std::fs::create_dir_all(&node)?;
            std::fs::write(node.join("myid"), format!("{}\n", i + 1))?;
            std::fs::write(
                node.join("zoo.cfg"),
                format!(
                    "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={client_port}\n\
                     clientPortAddress=127.0.0.1\nmaxClientCnxns=0\n{servers}\
                     admin.enableServer=false\n4lw.commands.whitelist=srvr,stat,ruok\n",
                    node.display()
                ),
            )?;
            members.push(Member {
                client_port,
                process: ServerProcess::default(),
            });
        }
        let mut ensemble = Self { dir, members };
        for i in 0..3 {
            ensemble.spawn(i)?;
        }
        ensemble.wait_for_quorum(QUORUM_TIMEOUT)?;
        Ok(ensemble)
    }

    /// Starts an ensemble, or returns `None` after a loud SKIPPED banner when java or the
    /// jars are missing (a failure under `CI=true`). Any other start failure panics.
    #[allow(clippy::panic)]
    pub fn start_or_skip(test: &str) -> Option<Self> {
        if let Err(e) = check_available() {
            if is_ci() {
                panic!("CI=true but ZooKeeper is not available: {e}");
            }
            let banner = format!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED {test}: ZooKeeper not available: {e}\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            let _ = io::stderr().write_all(banner.as_bytes());
            return None;
        }
        match Self::start() {
            Ok(e) => Some(e),
            Err(e) => panic!("{test}: cannot start a ZooKeeper ensemble: {e}"),
        }
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn connect_string(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `leader`, `follower`, or `None` when server `i` (0-2) does not serve.
    pub fn mode(&self, i: usize) -> Option<String> {
        let answer = four_letter(self.members.get(i)?.client_port, "srvr")?;
        answer
            .lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(|m| m.trim().to_owned())
    }

    /// The index of the server that is leader now.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| self.mode(i).as_deref() == Some("leader"))
    }

    /// Kills server `i` (SIGKILL), as a crash would.
    pub fn kill(&mut self, i: usize) -> io::Result<()> {
        match self.members.get_mut(i) {
            Some(m) => m.process.kill(),
            None => Ok(()),
        }
    }

    /// Starts server `i` again with its data.
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i)?;
        self.spawn(i)
    }

    /// Waits until one running server leads and every other running server follows.
    pub fn wait_for_quorum(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.members[i].process.is_started())
                .collect();
            let modes: Vec<Option<String>> = running.iter().map(|&i| self.mode(i)).collect();
            let leaders = modes
                .iter()
                .filter(|m| m.as_deref() == Some("leader"))
                .count();
            let followers = modes
                .iter()
                .filter(|m| m.as_deref() == Some("follower"))
                .count();
            if leaders == 1 && leaders + followers == running.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "no quorum within {timeout:?}: modes {modes:?}; log of server 1:\n{}",
                    self.log_tail(0)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tail of server `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        process::log_tail(&self.dir.path().join((i + 1).to_string()).join("zk.log"))
    }

    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let node = self.dir.path().join((i + 1).to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.join("zk.log"))?;
        let child = Command::new("java")
            .arg("-Xmx128m")
            .arg("-cp")
            .arg(format!("{}:{}", node.display(), classpath()))
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(node.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.members[i].process.set(child);
        Ok(())
    }
}
