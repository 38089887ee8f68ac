//! [`StoreDiscovery`]: caas-core's [`Discovery`] fed by any [`Store`] (etcd, ZooKeeper,
//! memory), from the same layout as [`ZkDiscovery`](crate::zk::ZkDiscovery):
//! `/service/address/{appId}/{version}/{instanceId}` → `{hostIp}:{port}`, `/apps/{appId}`,
//! `/domains/{domain}` and `/blacklist`.
//!
//! One [`Store::watch`] on the root. Every [`WatchEvent::Resync`] (the first event, a
//! reconnect, a new session, an etcd compaction) makes a full read: the registry's
//! directories with [`Store::children`], each version's instances and the app and domain
//! nodes with [`Store::list`]; it is sent as `Reset`. Each [`WatchEvent::Changed`] re-reads
//! its node, each [`WatchEvent::Deleted`] drops it unread (a deregistration, half of all
//! registry writes, costs the store no read), and the apps whose merged spec changed are
//! sent as `Upsert` / `Remove`; events already queued are taken together, so a burst
//! becomes one update per app.
//!
//! Validation, merging and which nodes are skipped and counted are the same code as
//! ZkDiscovery's. While the store is unreachable nothing is sent: the gateway keeps serving
//! its last table, and a failed full read is retried with backoff (up to 2 s).
//!
//! [`WatchEvent::Resync`]: super::WatchEvent::Resync
//! [`WatchEvent::Changed`]: super::WatchEvent::Changed
//! [`WatchEvent::Deleted`]: super::WatchEvent::Deleted

use std::collections::BTreeMap;
use std::sync::Arc;

use caas_core::{Discovery, Update};
use futures_util::future::join_all;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::follow::{Follower, follow};
use super::{Store, StoreError};
use crate::zk::ValueCipher;
use crate::zk::layout::{APPS, BLACKLIST, DOMAINS, Node, SERVICE, classify};
use crate::zk::stats::ZkStats;
use crate::zk::view::View;

/// Routing updates from a [`Store`]. Wire it into a router like any [`Discovery`]:
///
/// ```no_run
/// # async fn wire(router: std::sync::Arc<caas_core::Router>, store: caas_backends::EtcdStore) {
/// use caas_core::Discovery as _;
/// let mut discovery = caas_backends::store::StoreDiscovery::start(store, None);
/// tokio::spawn(async move {
///     while let Some(update) = discovery.next().await {
///         router.apply(update);
///     }
/// });
/// # }
/// ```
#[derive(Debug)]
pub struct StoreDiscovery<S: Store> {
    rx: mpsc::Receiver<Update>,
    store: S,
    stats: Arc<ZkStats>,
    task: JoinHandle<()>,
}

/// Counters of a [`StoreDiscovery`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreDiscoveryStats {
    /// Registry or config nodes skipped because their path or data was invalid, or this
    /// identity may not read them (counted once per read of the node).
    pub skipped_nodes: u64,
    /// Full reads (the first, and one after every Resync).
    pub full_reads: u64,
    /// Failed reads in the background loop (each also logged).
    pub errors: u64,
    /// Updates handed to the router (`Reset`, `Upsert`, `Remove`, `Blacklist`).
    pub updates_sent: u64,
}

impl<S: Store> StoreDiscovery<S> {
    /// Starts watching `store` (the full read follows the watch's first Resync). With a
    /// `cipher`, encrypted `/apps` and `/blacklist` values are decrypted as ZkDiscovery does.
    pub fn start(store: S, cipher: Option<ValueCipher>) -> Self {
        let (tx, rx) = mpsc::channel(256);
        let stats = Arc::new(ZkStats::default());
        let worker = Worker {
            store: store.clone(),
            view: View::new("store discovery", cipher, stats.clone()),
            tx,
        };
        let task = tokio::spawn(follow(store.clone(), worker));
        Self {
            rx,
            store,
            stats,
            task,
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The counters now.
    pub fn stats(&self) -> StoreDiscoveryStats {
        self.counters().snapshot()
    }

    /// A handle on the live counters that outlives a move of the discovery into its task.
    pub fn counters(&self) -> StoreDiscoveryCounters {
        StoreDiscoveryCounters(self.stats.clone())
    }
}

/// The live counters of a [`StoreDiscovery`] (cheap to clone).
#[derive(Debug, Clone)]
pub struct StoreDiscoveryCounters(Arc<ZkStats>);

impl StoreDiscoveryCounters {
    /// The counters now.
    pub fn snapshot(&self) -> StoreDiscoveryStats {
        let s = self.0.snapshot();
        StoreDiscoveryStats {
            skipped_nodes: s.skipped_nodes,
            full_reads: s.full_reads,
            errors: s.errors,
            updates_sent: s.updates_sent,
        }
    }
}

impl<S: Store> Drop for StoreDiscovery<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: Store> Discovery for StoreDiscovery<S> {
    async fn next(&mut self) -> Option<Update> {
        self.rx.recv().await
    }
}

struct Worker<S> {
    store: S,
    view: View,
    tx: mpsc::Sender<Update>,
}

impl<S: Store> Follower for Worker<S> {
    type Update = Update;

    fn consumer(&self) -> &mpsc::Sender<Update> {
        &self.tx
    }

    /// Reads the whole registry and config, replaces the cache and sends `Reset`.
    async fn full_read(&mut self) -> Result<(), StoreError> {
        let mut read = self.view.full_read();
        // Instances: the app and version directories by name, each version's instances with
        // their data; each level's requests in flight at once.
        let mut app_dirs = Vec::new();
        for name in self.store.children(SERVICE).await? {
            let path = format!("{SERVICE}/{name}");
            if let Some(id) = read.app_dir(&path, &name) {
                app_dirs.push((id, path));
            }
        }
        let listed = join_all(app_dirs.iter().map(|(_, p)| self.store.children(p))).await;
        let mut version_dirs = Vec::new();
        for ((app, path), result) in app_dirs.into_iter().zip(listed) {
            let Some(versions) = self.triage(&path, result)? else {
                continue;
            };
            for v in versions {
                let vpath = format!("{path}/{v}");
                if let Some(version) = read.version_dir(&vpath, &v) {
                    version_dirs.push(((app.clone(), version), vpath));
                }
            }
        }
        let listed = join_all(version_dirs.iter().map(|(_, p)| self.list(p))).await;
        for (((app, version), path), result) in version_dirs.into_iter().zip(listed) {
            for (name, data) in result? {
                let ipath = format!("{path}/{name}");
                if let Some(id) = read.instance_id(&ipath, &name) {
                    read.instance(&ipath, (app.clone(), version.clone(), id), &data);
                }
            }
        }
        // App specs and domain claims.
        for (name, data) in self.list(APPS).await? {
            let path = format!("{APPS}/{name}");
            if let Some(id) = read.app_name(&path, &name) {
                read.app(&path, id, data);
            }
        }
        for (name, data) in self.list(DOMAINS).await? {
            let path = format!("{DOMAINS}/{name}");
            if let Some(d) = read.domain_name(&path, &name) {
                read.domain(&path, d, &data);
            }
        }
        // The gateway-wide blacklist; a bad one keeps the last good one.
        match self.store.get(BLACKLIST).await {
            Ok(node) => read.blacklist(BLACKLIST, node.map(|v| v.data)),
            Err(StoreError::Denied { .. }) => read.blacklist_unreadable(BLACKLIST),
            Err(e) => return Err(e),
        }
        let (cache, started) = read.done();
        let reset = self.view.finish(cache, started);
        self.send(reset).await;
        Ok(())
    }

    /// Re-reads the nodes named by watch events, except those last deleted, and sends what
    /// changed.
    async fn refresh(&mut self, paths: BTreeMap<String, bool>) -> Result<(), StoreError> {
        let mut nodes = Vec::with_capacity(paths.len());
        let mut changed = Vec::new();
        for (path, deleted) in paths {
            if matches!(classify(&path), Node::Other | Node::ServiceDir) {
                continue;
            }
            if deleted {
                nodes.push((path, None));
            } else {
                changed.push(path);
            }
        }
        let reads = join_all(changed.iter().map(|p| self.store.get(p))).await;
        for (path, read) in changed.into_iter().zip(reads) {
            if let Some(node) = self.triage(&path, read)? {
                nodes.push((path, node.map(|v| v.data)));
            }
        }
        for update in self.view.apply(nodes) {
            self.send(update).await;
        }
        Ok(())
    }

    fn error(&self, e: &StoreError, what: &str) {
        self.view.count_error(e, what);
    }
}

impl<S: Store> Worker<S> {
    /// Sorts out a read that this identity may not make: skipped and counted (one tenant's
    /// odd permissions cannot stop discovery), as `Ok(None)`.
    fn triage<T>(&self, path: &str, read: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
        match read {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::Denied { .. }) => {
                self.view
                    .skip(path, "not readable by this identity (permission)");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The children of `path` with their data: one [`Store::list`]; when that is refused,
    /// each child on its own, so only the unreadable ones are skipped.
    async fn list(&self, path: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match self.store.list(path).await {
            Ok(nodes) => return Ok(nodes.into_iter().map(|(n, v)| (n, v.data)).collect()),
            Err(StoreError::Denied { .. }) => {}
            Err(e) => return Err(e),
        }
        let Some(names) = self.triage(path, self.store.children(path).await)? else {
            return Ok(Vec::new());
        };
        let paths: Vec<String> = names.iter().map(|n| format!("{path}/{n}")).collect();
        let reads = join_all(paths.iter().map(|p| self.store.get(p))).await;
        let mut out = Vec::new();
        for ((name, p), read) in names.into_iter().zip(&paths).zip(reads) {
            if let Some(Some(v)) = self.triage(p, read)? {
                out.push((name, v.data));
            }
        }
        Ok(out)
    }

    async fn send(&mut self, update: Update) {
        self.view.send(&self.tx, update).await;
    }
}
