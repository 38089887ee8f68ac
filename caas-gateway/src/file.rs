//! A file-backed [`Discovery`]: the apps of a TOML config file, reloaded when it changes.
//!
//! The file is polled and its content compared rather than watched through inotify: it works
//! the same on every file system (and with editors that replace the file), modification
//! times with coarse granularity cannot hide an edit, and a reload within a second is what an
//! operator editing a file expects. A file that fails to parse keeps the last good routes and
//! logs the error with the file, the key and why.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use caas_core::{Discovery, Update};

use crate::config::FileConfig;

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
            match tokio::fs::read_to_string(&self.path).await {
                Ok(text) if self.last_text.as_deref() != Some(text.as_str()) => {
                    let parsed = FileConfig::parse(&text, &self.path);
                    self.last_text = Some(text);
                    match parsed {
                        Ok(cfg) => {
                            let snapshot = cfg.snapshot();
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
                Ok(_) => {}
                Err(e) => {
                    if self.last_text.take().is_some() || !self.loaded_once {
                        self.stats.0[1].fetch_add(1, Relaxed);
                        tracing::error!(
                            path = %self.path.display(),
                            "cannot read config: {e}; keeping the last good routes"
                        );
                        self.loaded_once = true;
                    }
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}
