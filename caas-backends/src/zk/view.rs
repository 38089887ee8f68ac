//! The discovery's view of the registry and config, shared by [`ZkDiscovery`] and
//! [`StoreDiscovery`]: how each node of the layout is validated and put into the [`Cache`],
//! which nodes are skipped (and counted), and which updates the router gets. The two
//! discoveries differ only in how they read and watch the nodes.
//!
//! [`ZkDiscovery`]: super::ZkDiscovery
//! [`StoreDiscovery`]: crate::store::StoreDiscovery

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use caas_core::{AppId, AppSpec, Domain, InstanceId, Snapshot, Update, Version};
use tokio::sync::mpsc;

use super::apps::{parse_app, parse_blacklist};
use super::cache::Cache;
use super::crypto::ValueCipher;
use super::layout::{Node, classify, parse_address};
use super::read::parse_owner;
use super::stats::ZkStats;

/// The cache, what the router was last told, and the counters.
#[derive(Debug)]
pub(crate) struct View {
    cache: Cache,
    /// What the router was last told, per app.
    sent: BTreeMap<AppId, AppSpec>,
    cipher: Option<ValueCipher>,
    stats: Arc<ZkStats>,
    /// Names the discovery in log lines.
    who: &'static str,
}

impl View {
    pub(crate) fn new(who: &'static str, cipher: Option<ValueCipher>, stats: Arc<ZkStats>) -> Self {
        Self {
            cache: Cache::default(),
            sent: BTreeMap::new(),
            cipher,
            stats,
            who,
        }
    }

    /// Counts and logs an error of the read loop.
    pub(crate) fn count_error(&self, e: &dyn std::fmt::Display, what: &str) {
        ZkStats::bump(&self.stats.errors);
        tracing::warn!(error = %e, "{}: {what}", self.who);
    }

    /// Counts and logs a node that is skipped.
    pub(crate) fn skip(&self, path: &str, reason: impl std::fmt::Display) {
        ZkStats::bump(&self.stats.skipped_nodes);
        tracing::warn!(%path, "{}: skipping node: {reason}", self.who);
    }

    /// Hands an update to the router and counts it. A closed channel means the consumer is
    /// gone; the discovery's loop notices and stops.
    pub(crate) async fn send(&self, tx: &mpsc::Sender<Update>, update: Update) {
        if tx.send(update).await.is_ok() {
            ZkStats::bump(&self.stats.updates_sent);
        }
    }

    /// Starts a full read; [`View::finish`] installs it.
    pub(crate) fn full_read(&self) -> FullRead<'_> {
        FullRead {
            view: self,
            cache: Cache::default(),
            started: std::time::Instant::now(),
        }
    }

    /// Installs a full read and returns the `Reset` for the router.
    pub(crate) fn finish(&mut self, read: Cache, started: std::time::Instant) -> Update {
        self.cache = read;
        let snapshot: Snapshot = self.cache.snapshot();
        self.sent = snapshot.apps.clone();
        ZkStats::bump(&self.stats.full_reads);
        tracing::info!(
            apps = snapshot.apps.len(),
            endpoints = snapshot.endpoint_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "{}: full read",
            self.who
        );
        Update::Reset(snapshot)
    }

    /// Applies re-read nodes (`None` = deleted) in order and returns the updates for the
    /// router: the blacklist if it changed, then one `Upsert` / `Remove` per app whose merged
    /// spec changed.
    pub(crate) fn apply(
        &mut self,
        nodes: impl IntoIterator<Item = (String, Option<Vec<u8>>)>,
    ) -> Vec<Update> {
        let mut dirty = BTreeSet::new();
        let blacklist_before = self.cache.blacklist.clone();
        for (path, data) in nodes {
            self.apply_node(&path, data, &mut dirty);
        }
        let mut updates = Vec::new();
        if self.cache.blacklist != blacklist_before {
            updates.push(Update::Blacklist(self.cache.blacklist.clone()));
        }
        for app in dirty {
            let now = self.cache.merged(&app);
            if now.as_ref() == self.sent.get(&app) {
                continue;
            }
            updates.push(match now {
                Some(spec) => {
                    self.sent.insert(app.clone(), spec.clone());
                    Update::Upsert(app, spec)
                }
                None => {
                    self.sent.remove(&app);
                    Update::Remove(app)
                }
            });
        }
        updates
    }

    /// Puts one node's new state (`None` = deleted) into the cache; collects affected apps.
    fn apply_node(&mut self, path: &str, data: Option<Vec<u8>>, dirty: &mut BTreeSet<AppId>) {
        match classify(path) {
            Node::Instance {
                app,
                version,
                instance,
            } => {
                let ids = (
                    AppId::new(app),
                    Version::new(version),
                    InstanceId::new(instance),
                );
                let (app, version, id) = match ids {
                    (Ok(a), Ok(v), Ok(i)) => (a, v, i),
                    (a, v, i) => {
                        if data.is_some() {
                            let why = [a.err(), v.err(), i.err()].into_iter().flatten().next();
                            self.skip(path, why.map(|e| e.to_string()).unwrap_or_default());
                        }
                        return;
                    }
                };
                match data.map(|d| parse_address(&d)) {
                    Some(Ok(addr)) => self.cache.insert_instance(app.clone(), version, id, addr),
                    Some(Err(e)) => {
                        self.skip(path, e);
                        self.cache.remove_instance(&app, &version, &id);
                    }
                    None => self.cache.remove_instance(&app, &version, &id),
                }
                dirty.insert(app);
            }
            Node::App(name) => {
                let app = match AppId::new(name) {
                    Ok(a) => a,
                    Err(e) => {
                        if data.is_some() {
                            self.skip(path, e);
                        }
                        return;
                    }
                };
                match data.map(|d| parse_app(self.cipher.as_ref(), path, d)) {
                    Some(Ok(spec)) => {
                        self.cache.specs.insert(app.clone(), spec);
                    }
                    // A bad spec keeps the last good one: a typo must not take an app down.
                    Some(Err(e)) => self.skip(path, e),
                    None => {
                        self.cache.specs.remove(&app);
                    }
                }
                dirty.insert(app);
            }
            Node::Domain(name) => {
                let domain = match Domain::new(name) {
                    Ok(d) => d,
                    Err(e) => {
                        if data.is_some() {
                            self.skip(path, e);
                        }
                        return;
                    }
                };
                dirty.extend(self.cache.apps_touching(&domain));
                match data.map(|d| parse_owner(&d)) {
                    Some(Ok(owner)) => {
                        self.cache.claims.insert(domain.clone(), owner);
                    }
                    Some(Err(e)) => {
                        self.skip(path, e);
                        self.cache.claims.remove(&domain);
                    }
                    None => {
                        self.cache.claims.remove(&domain);
                    }
                }
                dirty.extend(self.cache.apps_touching(&domain));
            }
            Node::Blacklist => match data.map(|d| parse_blacklist(self.cipher.as_ref(), path, d)) {
                Some(Ok(b)) => self.cache.blacklist = b,
                // A bad edit keeps the last good blacklist.
                Some(Err(e)) => self.skip(path, e),
                None => self.cache.blacklist = Default::default(),
            },
            Node::ServiceDir | Node::Other => {}
        }
    }
}

/// A full read in progress: each level's names and each node's data are validated here, in
/// the order the reader finds them; what is invalid is skipped and counted (a bad directory
/// once, not once per node below it).
pub(crate) struct FullRead<'a> {
    view: &'a View,
    cache: Cache,
    started: std::time::Instant,
}

impl FullRead<'_> {
    /// `/service/address/{name}`: the app id, or `None` (skipped).
    pub(crate) fn app_dir(&self, path: &str, name: &str) -> Option<AppId> {
        AppId::new(name).map_err(|e| self.view.skip(path, e)).ok()
    }

    /// `/service/address/{app}/{name}`: the version, or `None` (skipped).
    pub(crate) fn version_dir(&self, path: &str, name: &str) -> Option<Version> {
        Version::new(name).map_err(|e| self.view.skip(path, e)).ok()
    }

    /// `/service/address/{app}/{version}/{name}`: the instance id, or `None` (skipped).
    pub(crate) fn instance_id(&self, path: &str, name: &str) -> Option<InstanceId> {
        InstanceId::new(name)
            .map_err(|e| self.view.skip(path, e))
            .ok()
    }

    /// A registered instance's data.
    pub(crate) fn instance(
        &mut self,
        path: &str,
        (app, version, id): (AppId, Version, InstanceId),
        data: &[u8],
    ) {
        match parse_address(data) {
            Ok(addr) => self.cache.insert_instance(app, version, id, addr),
            Err(e) => self.view.skip(path, e),
        }
    }

    /// `/apps/{name}`: the app id, or `None` (skipped).
    pub(crate) fn app_name(&self, path: &str, name: &str) -> Option<AppId> {
        self.app_dir(path, name)
    }

    /// An app node's data.
    pub(crate) fn app(&mut self, path: &str, app: AppId, data: Vec<u8>) {
        match parse_app(self.view.cipher.as_ref(), path, data) {
            Ok(spec) => {
                self.cache.specs.insert(app, spec);
            }
            Err(e) => self.view.skip(path, e),
        }
    }

    /// `/domains/{name}`: the domain, or `None` (skipped).
    pub(crate) fn domain_name(&self, path: &str, name: &str) -> Option<Domain> {
        Domain::new(name).map_err(|e| self.view.skip(path, e)).ok()
    }

    /// A domain claim's data.
    pub(crate) fn domain(&mut self, path: &str, domain: Domain, data: &[u8]) {
        match parse_owner(data) {
            Ok(owner) => {
                self.cache.claims.insert(domain, owner);
            }
            Err(e) => self.view.skip(path, e),
        }
    }

    /// The blacklist node's data (`None`: absent, nothing refused); a bad one keeps the last
    /// good one.
    pub(crate) fn blacklist(&mut self, path: &str, data: Option<Vec<u8>>) {
        self.cache.blacklist = match data {
            None => Default::default(),
            Some(d) => match parse_blacklist(self.view.cipher.as_ref(), path, d) {
                Ok(b) => b,
                Err(e) => {
                    self.view.skip(path, e);
                    self.view.cache.blacklist.clone()
                }
            },
        };
    }

    /// The blacklist cannot be read by this identity: skipped, the last good one kept.
    pub(crate) fn blacklist_unreadable(&mut self, path: &str) {
        self.view.skip(path, "not readable by this identity (ACL)");
        self.cache.blacklist = self.view.cache.blacklist.clone();
    }

    /// The read cache and when the read started, for [`View::finish`].
    pub(crate) fn done(self) -> (Cache, std::time::Instant) {
        (self.cache, self.started)
    }
}
