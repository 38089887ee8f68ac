//! [`PersistedDiscovery`]: a [`Discovery`] that keeps the last routing state it passed on in
//! a file, and serves that file when the live source cannot be reached at start.
//!
//! Wrapped around the ZooKeeper discovery, a gateway that restarts while ZooKeeper is down
//! still routes: if the live discovery is not there within `fallback_after`, the saved
//! snapshot is sent as a `Reset`; when the live discovery arrives, its own first `Reset` (a
//! full read) replaces it, so apps and instances removed meanwhile disappear.
//!
//! The state mirrors what the router was told (the loaded snapshot, then every update) and
//! is written at most once per [`WRITE_EVERY`] after it changed: to a temporary file in the
//! same directory, synced, then renamed over the snapshot, so a crash leaves the old file
//! or the new one, never half of one. A missing or unreadable file is a warning (no routes
//! until the live source answers), never a panic.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use caas_core::{Discovery, Snapshot, Update};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The snapshot file is rewritten at most this often.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);

/// The format of the snapshot file.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotFile {
    /// Format version of the file.
    caas_routes: u32,
    snapshot: Snapshot,
}

/// A snapshot file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// No file there (yet).
    #[error("route snapshot {path}: no such file")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("route snapshot {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not a route snapshot (truncated, edited, another format).
    #[error("route snapshot {path}: not a valid snapshot: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
}

/// Counters of a [`PersistedDiscovery`].
#[derive(Debug, Default)]
pub struct PersistStats {
    /// Snapshot files written.
    pub writes: AtomicU64,
    /// Writes that failed (logged).
    pub write_errors: AtomicU64,
    /// Times the saved snapshot was served because the live source was not there in time.
    pub served_from_file: AtomicU64,
    /// Updates received from the live source.
    pub live_updates: AtomicU64,
}

/// A [`Discovery`] that saves what it passes on, and serves the saved state while the live
/// source is not there at start.
#[derive(Debug)]
pub struct PersistedDiscovery {
    rx: mpsc::Receiver<Update>,
    stats: Arc<PersistStats>,
    task: JoinHandle<()>,
}

impl PersistedDiscovery {
    /// Starts waiting for `live` (for instance a ZooKeeper connect retried until it
    /// succeeds) and passes its updates on, saving them to `path`. When `live` has not
    /// resolved after `fallback_after`, the snapshot saved at `path` is served meanwhile.
    pub fn start<D, F>(path: PathBuf, live: F, fallback_after: Duration) -> Self
    where
        D: Discovery,
        F: Future<Output = D> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(256);
        let stats = Arc::new(PersistStats::default());
        let task = tokio::spawn(run(path, live, fallback_after, tx, Arc::clone(&stats)));
        Self { rx, stats, task }
    }

    /// Counters: files written, write errors, whether the file was served.
    pub fn stats(&self) -> &Arc<PersistStats> {
        &self.stats
    }

    /// Reads a snapshot file.
    pub fn load(path: &Path) -> Result<Snapshot, SnapshotFileError> {
        let text = fs::read(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => SnapshotFileError::Missing {
                path: path.to_owned(),
            },
            _ => SnapshotFileError::Read {
                path: path.to_owned(),
                source,
            },
        })?;
        let corrupt = |message: String| SnapshotFileError::Corrupt {
            path: path.to_owned(),
            message,
        };
        let file: SnapshotFile =
            serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        if file.caas_routes != FORMAT {
            return Err(corrupt(format!(
                "format {} (this gateway reads {FORMAT})",
                file.caas_routes
            )));
        }
        for (id, app) in &file.snapshot.apps {
            app.validate()
                .map_err(|e| corrupt(format!("apps.{id}.{e}")))?;
        }
        Ok(file.snapshot)
    }

    /// Writes `snapshot` to `path` atomically: a temporary file beside it, synced, renamed
    /// over it, and the directory synced.
    pub fn save(path: &Path, snapshot: &Snapshot) -> io::Result<()> {
        let body = serde_json::to_vec(&SnapshotFile {
            caas_routes: FORMAT,
            snapshot: snapshot.clone(),
        })
        .map_err(io::Error::other)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .map_or_else(|| "routes".into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut o = OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o.open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // The rename itself survives a crash once the directory is synced.
        File::open(dir)?.sync_all()
    }
}

impl Drop for PersistedDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery for PersistedDiscovery {
    async fn next(&mut self) -> Option<Update> {
        self.rx.recv().await
    }
}

/// Applies an update to the mirrored state, as the router applies it to its table.
fn apply(state: &mut Snapshot, update: &Update) {
    match update {
        Update::Reset(s) => *state = s.clone(),
        Update::Upsert(id, spec) => {
            state.apps.insert(id.clone(), spec.clone());
        }
        Update::Remove(id) => {
            state.apps.remove(id);
        }
        Update::Blacklist(b) => state.blacklist = b.clone(),
    }
}

async fn run<D, F>(
    path: PathBuf,
    live: F,
    fallback_after: Duration,
    tx: mpsc::Sender<Update>,
    stats: Arc<PersistStats>,
) where
    D: Discovery,
    F: Future<Output = D> + Send + 'static,
{
    let mut state = Snapshot::default();
    tokio::pin!(live);
    let mut inner = tokio::select! {
        d = &mut live => d,
        () = tokio::time::sleep(fallback_after) => {
            let p = path.clone();
            match tokio::task::spawn_blocking(move || PersistedDiscovery::load(&p)).await {
                Ok(Ok(saved)) => {
                    tracing::warn!(
                        path = %path.display(),
                        apps = saved.apps.len(),
                        "live discovery not there after {fallback_after:?}: serving the saved route snapshot until it is"
                    );
                    stats.served_from_file.fetch_add(1, Relaxed);
                    state = saved.clone();
                    if tx.send(Update::Reset(saved)).await.is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => tracing::warn!(
                    "live discovery not there after {fallback_after:?}, and {e}: no routes until it is"
                ),
                Err(e) => tracing::error!("loading the route snapshot failed: {e}"),
            }
            tokio::select! {
                d = &mut live => d,
                () = tx.closed() => return,
            }
        }
        () = tx.closed() => return,
    };
    tracing::info!(path = %path.display(), "live discovery connected; saving its routes");
    let mut dirty = false;
    let mut next_write = Instant::now();
    loop {
        tokio::select! {
            update = inner.next() => {
                let Some(update) = update else {
                    if dirty {
                        write(&path, &state, &stats).await;
                    }
                    return;
                };
                stats.live_updates.fetch_add(1, Relaxed);
                apply(&mut state, &update);
                dirty = true;
                if tx.send(update).await.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(next_write), if dirty => {
                write(&path, &state, &stats).await;
                dirty = false;
                next_write = Instant::now() + WRITE_EVERY;
            }
        }
    }
}

async fn write(path: &Path, state: &Snapshot, stats: &PersistStats) {
    let (p, s) = (path.to_owned(), state.clone());
    match tokio::task::spawn_blocking(move || PersistedDiscovery::save(&p, &s)).await {
        Ok(Ok(())) => {
            stats.writes.fetch_add(1, Relaxed);
        }
        Ok(Err(e)) => {
            stats.write_errors.fetch_add(1, Relaxed);
            tracing::warn!(path = %path.display(), "cannot save the route snapshot: {e}");
        }
        Err(e) => {
            stats.write_errors.fetch_add(1, Relaxed);
            tracing::error!(path = %path.display(), "saving the route snapshot failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caas_core::{AppId, AppSpec, Endpoint, Static, Version, VersionSpec};

    fn snap(port: u16) -> Snapshot {
        let spec = AppSpec {
            versions: [(
                Version::new("v1").unwrap(),
                VersionSpec {
                    endpoints: vec![Endpoint::new(([127, 0, 0, 1], port).into())],
                },
            )]
            .into(),
            ..AppSpec::default()
        };
        Snapshot {
            apps: [(AppId::new("hello").unwrap(), spec)].into(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn saved_snapshots_load_back_and_bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.json");
        let missing = PersistedDiscovery::load(&path).unwrap_err();
        assert!(
            matches!(missing, SnapshotFileError::Missing { .. }),
            "{missing}"
        );
        PersistedDiscovery::save(&path, &snap(9001)).unwrap();
        assert_eq!(PersistedDiscovery::load(&path).unwrap(), snap(9001));
        assert!(!dir.path().join(".routes.json.tmp").exists());
        for bad in [
            &b"{\"caas_routes\": 1, \"snapsh"[..],
            b"[]",
            b"{\"caas_routes\": 9, \"snapshot\": {}}",
        ] {
            fs::write(&path, bad).unwrap();
            let e = PersistedDiscovery::load(&path).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "route snapshot {}: not a valid snapshot",
                    path.display()
                )),
                "{e}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_file_is_served_until_the_live_source_comes_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.json");
        PersistedDiscovery::save(&path, &snap(9001)).unwrap();
        let live = Static::new(snap(9002));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let source = live.subscribe();
        let mut d = PersistedDiscovery::start(
            path.clone(),
            async move {
                let _ = wait.await;
                source
            },
            Duration::from_secs(3),
        );
        assert_eq!(
            d.next().await,
            Some(Update::Reset(snap(9001))),
            "from the file"
        );
        assert_eq!(d.stats().served_from_file.load(Relaxed), 1);
        go.send(()).unwrap();
        assert_eq!(
            d.next().await,
            Some(Update::Reset(snap(9002))),
            "the live state"
        );
        // Saved within a second of the change.
        while d.stats().writes.load(Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(PersistedDiscovery::load(&path).unwrap(), snap(9002));
    }
}
