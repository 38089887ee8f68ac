//! A file-backed [`Discovery`]: the apps of a TOML config file, reloaded when it changes.
//!
//! The file is polled and its content compared rather than watched through inotify: it works
//! the same on every file system (and with editors that replace the file), modification
//! times with coarse granularity cannot hide an edit, and a reload within a second is what an
//! operator editing a file expects. A file that fails to parse keeps the last good routes and
//! logs the error with the file, the key and why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use caas_core::{Discovery, Snapshot, Update};

use crate::config::{ConfigError, FileConfig};

/// Routes from the `[apps]` of a config file, hot-reloaded.
#[derive(Debug)]
pub struct FileDiscovery {
    path: PathBuf,
    interval: Duration,
    /// The content last looked at (good or bad), so one broken save is reported once.
    last_text: Option<String>,
    loaded_once: bool,
    stats: ReloadStats,
}

/// How a [`FileDiscovery`]'s reloads went; a cheap clone that stays live after the
/// discovery moved into a gateway.
#[derive(Debug, Clone, Default)]
pub struct ReloadStats(Arc<[AtomicU64; 2]>);

impl ReloadStats {
    /// Versions of the file applied as routes.
    pub fn applied(&self) -> u64 {
        self.0[0].load(Relaxed)
    }

    /// Versions of the file rejected (unreadable or invalid), each logged; the last good
    /// routes stay.
    pub fn rejected(&self) -> u64 {
        self.0[1].load(Relaxed)
    }
}

impl FileDiscovery {
    /// Watches `path`, checking for changes every `interval`.
    pub fn new(path: impl Into<PathBuf>, interval: Duration) -> Self {
        Self {
            path: path.into(),
            interval,
            last_text: None,
            loaded_once: false,
            stats: ReloadStats::default(),
        }
    }

    /// The reload counters, live while the discovery runs.
    pub fn stats(&self) -> ReloadStats {
        self.stats.clone()
    }
}

impl Discovery for FileDiscovery {
    async fn next(&mut self) -> Option<Update> {
        loop {
            let path = self.path.clone();
            let last = self.last_text.take();
            let had_text = last.is_some();
            // Read, compared and parsed on a blocking-pool thread: the gateway waits for a
            // file's updates on its serving runtime (see `updates_rarely`), and a config of
            // many apps takes milliseconds to parse.
            let checked = tokio::task::spawn_blocking(move || check(&path, last)).await;
            match checked {
                Ok(Checked::Same(text)) => self.last_text = Some(text),
                Ok(Checked::Changed(text, parsed)) => {
                    self.last_text = Some(text);
                    match parsed {
                        Ok(snapshot) => {
                            tracing::info!(
                                path = %self.path.display(),
                                apps = snapshot.apps.len(),
                                "routes loaded"
                            );
                            self.loaded_once = true;
                            self.stats.0[0].fetch_add(1, Relaxed);
                            return Some(Update::Reset(snapshot));
                        }
                        Err(e) => {
                            self.stats.0[1].fetch_add(1, Relaxed);
                            tracing::error!("{e}; keeping the last good routes");
                        }
                    }
                }
                Ok(Checked::Unreadable(e)) => {
                    // Reported once per outage (and at start); the next good read is new.
                    if had_text || !self.loaded_once {
                        self.stats.0[1].fetch_add(1, Relaxed);
                        tracing::error!(
                            path = %self.path.display(),
                            "cannot read config: {e}; keeping the last good routes"
                        );
                        self.loaded_once = true;
                    }
                }
                Err(e) => {
                    // The check panicked (a bug) or the runtime is going away: try again.
                    self.stats.0[1].fetch_add(1, Relaxed);
                    tracing::error!(
                        path = %self.path.display(),
                        "config check failed: {e}; keeping the last good routes"
                    );
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// A file checked once a second: nothing to give a thread of its own.
    fn updates_rarely(&self) -> bool {
        true
    }
}

/// What one look at the file found.
enum Checked {
    /// The content last looked at, unchanged.
    Same(String),
    /// New content, and the routes it gives (or why it gives none).
    Changed(String, Result<Snapshot, ConfigError>),
    Unreadable(std::io::Error),
}

fn check(path: &Path, last: Option<String>) -> Checked {
    match std::fs::read_to_string(path) {
        Ok(text) if last.as_deref() == Some(text.as_str()) => Checked::Same(text),
        Ok(text) => {
            let parsed = FileConfig::parse(&text, path).map(|cfg| cfg.snapshot());
            Checked::Changed(text, parsed)
        }
        Err(e) => Checked::Unreadable(e),
    }
}
