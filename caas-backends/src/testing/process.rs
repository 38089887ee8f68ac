//! A server process a test owns ([`ServerProcess`]): ZooKeeper, one member of an ensemble,
//! etcd. Stopped gracefully, killed as a crash would, and killed and reaped on drop, so a
//! failing test leaves no server behind.

use std::io;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of a server's log shown when it fails.
const LOG_TAIL_LINES: usize = 40;

/// A child process, or none while the server is down.
#[derive(Debug, Default)]
pub(crate) struct ServerProcess(Option<Child>);

impl ServerProcess {
    /// Takes over a started process (any earlier one is killed first).
    pub(crate) fn set(&mut self, child: Child) {
        self.kill_quietly();
        self.0 = Some(child);
    }

    /// Whether a process was started and has not been stopped or killed (it may have died).
    pub(crate) fn is_started(&self) -> bool {
        self.0.is_some()
    }

    /// Whether the process is running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.0.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// SIGTERM, then waits for the process to exit; SIGKILL if it has not within 20 s.
    pub(crate) fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.0.take() else {
            return Ok(());
        };
        let termed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?
            .success();
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut killed = !termed;
        if killed {
            child.kill()?;
        }
        while child.try_wait()?.is_none() {
            if !killed && Instant::now() > deadline {
                child.kill()?;
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGKILL, as a crash would, and reaps the process.
    pub(crate) fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.0.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Best effort: the process may already be gone.
    fn kill_quietly(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill_quietly();
    }
}

/// The last lines of a server's log file (empty when it cannot be read).
pub(crate) fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
