//! A file-backed [`Discovery`]: the apps of a TOML config file, reloaded when it changes.
//!
//! The file is polled and its content compared rather than watched through inotify: it works
//! the same on every file system (and with editors that replace the file), modification
//! times with coarse granularity cannot hide an edit, and a reload within a second is what an
//! operator editing a file expects. A file that fails to parse keeps the last good routes and
//! logs the error with the file, the key and why.

use std::path::PathBuf;
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
    errors: u64,
}

impl FileDiscovery {
    /// Watches `path`, checking for changes every `interval`.
    pub fn new(path: impl Into<PathBuf>, interval: Duration) -> Self {
        Self {
            path: path.into(),
            interval,
            last_text: None,
            loaded_once: false,
            errors: 0,
        }
    }

    /// Reload failures so far (each logged).
    pub fn errors(&self) -> u64 {
        self.errors
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
                            return Some(Update::Reset(snapshot));
                        }
                        Err(e) => {
                            self.errors += 1;
                            tracing::error!("{e}; keeping the last good routes");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if self.last_text.take().is_some() || !self.loaded_once {
                        self.errors += 1;
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
