//! A file-backed [`Discovery`]: the apps of a TOML config file, reloaded when it changes.
//!
//! The file is polled (modification time, size and content) rather than watched through
//! inotify: it works the same on every file system, and a reload within a second is what an
//! operator editing a file expects. A file that fails to parse keeps the last good routes
//! and logs the error with the file, the key and why.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use caas_core::{Discovery, Snapshot, Update};

use crate::config::FileConfig;

/// Routes from the `[apps]` of a config file, hot-reloaded.
#[derive(Debug)]
pub struct FileDiscovery {
    path: PathBuf,
    interval: Duration,
    seen: Option<(Option<SystemTime>, u64, Snapshot)>,
    errors: u64,
}

impl FileDiscovery {
    /// Watches `path`, checking for changes every `interval`.
    pub fn new(path: impl Into<PathBuf>, interval: Duration) -> Self {
        Self {
            path: path.into(),
            interval,
            seen: None,
            errors: 0,
        }
    }

    /// Reload failures so far (each logged).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    fn stamp(&self) -> Option<(Option<SystemTime>, u64)> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok(), meta.len()))
    }
}

impl Discovery for FileDiscovery {
    async fn next(&mut self) -> Option<Update> {
        loop {
            let stamp = self.stamp();
            let changed = match (&self.seen, stamp) {
                (None, _) => true,
                (Some((m, len, _)), Some((m2, len2))) => *m != m2 || *len != len2,
                (Some(_), None) => false,
            };
            if changed {
                match FileConfig::load(&self.path) {
                    Ok(cfg) => {
                        let snapshot = cfg.snapshot();
                        let (m, len) = stamp.unwrap_or((None, 0));
                        let same = self.seen.as_ref().is_some_and(|(_, _, s)| *s == snapshot);
                        self.seen = Some((m, len, snapshot.clone()));
                        if !same {
                            tracing::info!(path = %self.path.display(), apps = snapshot.apps.len(), "routes loaded");
                            return Some(Update::Reset(snapshot));
                        }
                    }
                    Err(e) => {
                        self.errors += 1;
                        tracing::error!("{e}; keeping the last good routes");
                        // Remember the stamp so one broken save is reported once.
                        let last = self.seen.take().map(|(_, _, s)| s).unwrap_or_default();
                        let (m, len) = stamp.unwrap_or((None, 0));
                        self.seen = Some((m, len, last));
                    }
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}
