//! [`ZkDiscovery`]: caas-core's [`Discovery`] fed by ZooKeeper.
//!
//! One persistent recursive watch on the chroot plus a full read at start, after every
//! reconnect and after every new session, kept in a local cache. The first update after a
//! full read is `Reset`; after that each watch event re-reads the node it names and the apps
//! whose merged spec changed are sent as `Upsert` / `Remove`. Events that are already queued
//! are drained before sending, so a burst becomes one update per app.
//!
//! While ZooKeeper is unreachable nothing is sent: the gateway keeps serving its last table.
//! Bad nodes (data not `host:port`, invalid ids in the path, an app spec that does not parse
//! or decrypt) are skipped with a warning and counted in [`ZkStatsSnapshot::skipped_nodes`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use caas_core::{AppId, Discovery, Domain, InstanceId, Update, Version};
use futures_util::FutureExt as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use zookeeper_client::{
    AddWatchMode, Client, EventType, PersistentWatcher, SessionState, WatchedEvent,
};

use super::apps::{parse_app, parse_blacklist};
use super::cache::Cache;
use super::crypto::ValueCipher;
use super::error::{Result, ZkError};
use super::layout::{APPS, BLACKLIST, DOMAINS, Node, SERVICE, classify, parse_address};
use super::read::{Read, children, parse_owner, pipelined_children, pipelined_data};
use super::session::{Current, ZkSession};
use super::stats::{ZkStats, ZkStatsSnapshot};

/// Routing updates from ZooKeeper. Wire it into a router like any [`Discovery`]:
///
/// ```no_run
/// # async fn wire(router: std::sync::Arc<caas_core::Router>) -> Result<(), caas_backends::zk::ZkError> {
/// use caas_core::Discovery as _;
/// let config = caas_backends::zk::ZkConfig::new("127.0.0.1:2181");
/// let mut discovery = caas_backends::zk::ZkDiscovery::connect(config).await?;
/// tokio::spawn(async move {
///     while let Some(update) = discovery.next().await {
///         router.apply(update);
///     }
/// });
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ZkDiscovery {
    rx: mpsc::Receiver<Update>,
    session: ZkSession,
    task: JoinHandle<()>,
}

impl ZkDiscovery {
    /// Starts watching through `session` (a full read happens at once).
    pub fn start(session: ZkSession) -> Self {
        let (tx, rx) = mpsc::channel(256);
        let worker = Worker {
            clients: session.subscribe(),
            cipher: session.cipher().cloned(),
            stats: session.stats().clone(),
            tx,
            cache: Cache::default(),
            sent: Default::default(),
        };
        let task = tokio::spawn(worker.run());
        Self { rx, session, task }
    }

    /// Connects a session for `config` and starts watching.
    pub async fn connect(config: super::ZkConfig) -> Result<Self> {
        Ok(Self::start(ZkSession::connect(config).await?))
    }

    /// The session underneath.
    pub fn session(&self) -> &ZkSession {
        &self.session
    }

    /// Counters (skipped nodes, reconnects, expiries, full reads, ...).
    pub fn stats(&self) -> ZkStatsSnapshot {
        self.session.stats().snapshot()
    }
}

impl Drop for ZkDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery for ZkDiscovery {
    async fn next(&mut self) -> Option<Update> {
        self.rx.recv().await
    }
}

struct Worker {
    clients: watch::Receiver<Current>,
    cipher: Option<ValueCipher>,
    stats: Arc<ZkStats>,
    tx: mpsc::Sender<Update>,
    cache: Cache,
    /// What the router was last told, per app.
    sent: std::collections::BTreeMap<AppId, caas_core::AppSpec>,
}

/// Why the per-session loop ended.
enum End {
    /// The consumer is gone.
    Stop,
    /// The session ended; wait for the next one.
    SessionGone,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let current = self.clients.borrow_and_update().clone();
            let Some(client) = current.client else {
                return; // closed for good
            };
            match self.serve_session(&client).await {
                End::Stop => return,
                End::SessionGone => {}
            }
            drop(client);
            // Wait for the next session by value, not by change notification: the loop above
            // may already have consumed the notification of the new client.
            let epoch = current.epoch;
            tokio::select! {
                _ = self.tx.closed() => return,
                next = self.clients.wait_for(|c| c.epoch != epoch || c.client.is_none()) => {
                    if next.is_err() { return }
                }
            }
        }
    }

    /// Watches and reads through one session until it ends.
    async fn serve_session(&mut self, client: &Client) -> End {
        let mut backoff = Duration::from_millis(50);
        let mut watcher = match self.add_watch(client, &mut backoff).await {
            Ok(w) => w,
            Err(end) => return end,
        };
        let mut need_full_read = true;
        loop {
            if need_full_read {
                match self.full_read(client).await {
                    Ok(()) => {
                        need_full_read = false;
                        backoff = Duration::from_millis(50);
                    }
                    Err(e) => {
                        self.count_error(&e, "full read failed; retrying");
                        if e.is_session_gone() {
                            return End::SessionGone;
                        }
                    }
                }
                if self.tx.is_closed() {
                    return End::Stop;
                }
            }
            let first = tokio::select! {
                _ = self.tx.closed() => return End::Stop,
                changed = self.clients.changed() => {
                    if changed.is_err() { return End::Stop }
                    return End::SessionGone;
                }
                // Retry a failed full read without waiting for an event.
                _ = tokio::time::sleep(backoff), if need_full_read => {
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                event = watcher.changed() => event,
            };
            let mut events = vec![first];
            while !is_terminal(events.last()) {
                match watcher.changed().now_or_never() {
                    Some(e) => events.push(e),
                    None => break,
                }
            }
            let mut dirty_paths = BTreeSet::new();
            let mut terminal = false;
            for event in events {
                match event.event_type {
                    EventType::Session => match event.session_state {
                        SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                            need_full_read = true;
                        }
                        s if s.is_terminated() => terminal = true,
                        _ => {}
                    },
                    _ => {
                        dirty_paths.insert(event.path);
                    }
                }
            }
            if terminal {
                // The watcher must not be polled again after a terminal state.
                return End::SessionGone;
            }
            if need_full_read {
                // Reconnected. The client re-sends its watches, but a persistent watch does
                // not survive a server restart (seen with ZooKeeper 3.8): set it again
                // (dropping the old one removes it), then re-read what was missed.
                drop(watcher);
                watcher = match self.add_watch(client, &mut backoff).await {
                    Ok(w) => w,
                    Err(end) => return end,
                };
                continue;
            }
            if let Err(e) = self.refresh(client, dirty_paths).await {
                self.count_error(&e, "re-read after a watch event failed; doing a full read");
                if e.is_session_gone() {
                    return End::SessionGone;
                }
                need_full_read = true;
            }
        }
    }

    /// Sets the one persistent recursive watch on the chroot, retrying with backoff.
    async fn add_watch(
        &mut self,
        client: &Client,
        backoff: &mut Duration,
    ) -> std::result::Result<PersistentWatcher, End> {
        loop {
            match client.watch("/", AddWatchMode::PersistentRecursive).await {
                Ok(w) => return Ok(w),
                Err(e) => {
                    let e = ZkError::op("watch", "/", e);
                    self.count_error(&e, "cannot set the watch");
                    if e.is_session_gone() {
                        return Err(End::SessionGone);
                    }
                    if let Some(end) = self.pause(backoff).await {
                        return Err(end);
                    }
                }
            }
        }
    }

    async fn pause(&mut self, backoff: &mut Duration) -> Option<End> {
        tokio::select! {
            _ = self.tx.closed() => return Some(End::Stop),
            changed = self.clients.changed() => {
                return Some(if changed.is_err() { End::Stop } else { End::SessionGone });
            }
            _ = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
        None
    }

    fn count_error(&self, e: &ZkError, what: &str) {
        ZkStats::bump(&self.stats.errors);
        tracing::warn!(error = %e, "zookeeper discovery: {what}");
    }

    fn skip(&self, path: &str, reason: impl std::fmt::Display) {
        ZkStats::bump(&self.stats.skipped_nodes);
        tracing::warn!(%path, "zookeeper discovery: skipping node: {reason}");
    }

    /// Sorts out one node's failed read: gone meanwhile (`NoNode`) or unreadable for this
    /// identity (`NoAuth`: skipped and counted, so one tenant's odd ACL cannot stop
    /// discovery) yield `Ok(None)`; anything else fails the read.
    fn triage<T>(&self, path: &str, read: Read<T>, op: &'static str) -> Result<Option<T>> {
        match read {
            Ok(v) => Ok(Some(v)),
            Err(zookeeper_client::Error::NoNode) => Ok(None),
            Err(zookeeper_client::Error::NoAuth) => {
                self.skip(path, "not readable by this identity (ACL)");
                Ok(None)
            }
            Err(e) => Err(ZkError::op(op, path, e)),
        }
    }

    /// Reads the whole registry and config, replaces the cache and sends `Reset`.
    async fn full_read(&mut self, client: &Client) -> Result<()> {
        let started = std::time::Instant::now();
        let mut cache = Cache::default();
        // Instances: three levels of children, each level's requests pipelined.
        let apps = children(client, SERVICE).await?;
        let mut app_dirs = Vec::new();
        for name in apps {
            let path = format!("{SERVICE}/{name}");
            match AppId::new(&name) {
                Ok(id) => app_dirs.push((id, path)),
                Err(e) => self.skip(&path, e),
            }
        }
        let mut version_dirs = Vec::new();
        for ((app, path), read) in pipelined_children(client, app_dirs).await {
            let Some(versions) = self.triage(&path, read, "list_children")? else {
                continue;
            };
            for v in versions {
                let vpath = format!("{path}/{v}");
                match Version::new(&v) {
                    Ok(version) => version_dirs.push(((app.clone(), version), vpath)),
                    Err(e) => self.skip(&vpath, e),
                }
            }
        }
        let mut instance_nodes = Vec::new();
        for (((app, version), path), read) in pipelined_children(client, version_dirs).await {
            let Some(ids) = self.triage(&path, read, "list_children")? else {
                continue;
            };
            for i in ids {
                let ipath = format!("{path}/{i}");
                match InstanceId::new(&i) {
                    Ok(id) => instance_nodes.push(((app.clone(), version.clone(), id), ipath)),
                    Err(e) => self.skip(&ipath, e),
                }
            }
        }
        for (((app, version, id), path), read) in pipelined_data(client, instance_nodes).await {
            let Some(data) = self.triage(&path, read, "get_data")? else {
                continue;
            };
            match parse_address(&data) {
                Ok(addr) => cache.insert_instance(app, version, id, addr),
                Err(e) => self.skip(&path, e),
            }
        }
        // App specs.
        let mut app_nodes = Vec::new();
        for name in children(client, APPS).await? {
            let path = format!("{APPS}/{name}");
            match AppId::new(&name) {
                Ok(id) => app_nodes.push((id, path)),
                Err(e) => self.skip(&path, e),
            }
        }
        for ((app, path), read) in pipelined_data(client, app_nodes).await {
            let Some(data) = self.triage(&path, read, "get_data")? else {
                continue;
            };
            match parse_app(self.cipher.as_ref(), &path, data) {
                Ok(spec) => {
                    cache.specs.insert(app, spec);
                }
                Err(e) => self.skip(&path, e),
            }
        }
        // Domain claims.
        let mut domain_nodes = Vec::new();
        for name in children(client, DOMAINS).await? {
            let path = format!("{DOMAINS}/{name}");
            match Domain::new(&name) {
                Ok(d) => domain_nodes.push((d, path)),
                Err(e) => self.skip(&path, e),
            }
        }
        for ((domain, path), read) in pipelined_data(client, domain_nodes).await {
            let Some(data) = self.triage(&path, read, "get_data")? else {
                continue;
            };
            match parse_owner(&data) {
                Ok(owner) => {
                    cache.claims.insert(domain, owner);
                }
                Err(e) => self.skip(&path, e),
            }
        }

        // The gateway-wide blacklist; a bad one keeps the last good one.
        cache.blacklist = match client.get_data(BLACKLIST).await {
            Ok((data, _)) => match parse_blacklist(self.cipher.as_ref(), BLACKLIST, data) {
                Ok(b) => b,
                Err(e) => {
                    self.skip(BLACKLIST, e);
                    self.cache.blacklist.clone()
                }
            },
            Err(zookeeper_client::Error::NoNode) => Default::default(),
            Err(zookeeper_client::Error::NoAuth) => {
                self.skip(BLACKLIST, "not readable by this identity (ACL)");
                self.cache.blacklist.clone()
            }
            Err(e) => return Err(ZkError::op("get_data", BLACKLIST, e)),
        };

        self.cache = cache;
        let snapshot = self.cache.snapshot();
        self.sent = snapshot.apps.clone();
        ZkStats::bump(&self.stats.full_reads);
        tracing::info!(
            apps = snapshot.apps.len(),
            endpoints = snapshot.endpoint_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "zookeeper discovery: full read"
        );
        self.send(Update::Reset(snapshot)).await;
        Ok(())
    }

    /// Re-reads the nodes named by watch events and sends what changed.
    async fn refresh(&mut self, client: &Client, paths: BTreeSet<String>) -> Result<()> {
        // Issue every read first (pipelined), then apply in order.
        let mut reads = Vec::new();
        for path in paths {
            if matches!(classify(&path), Node::Other | Node::ServiceDir) {
                continue;
            }
            let fut = client.get_data(&path);
            reads.push((path, fut));
        }
        let mut dirty = BTreeSet::new();
        let blacklist_before = self.cache.blacklist.clone();
        for (path, fut) in reads {
            let data = match fut.await {
                Ok((d, _)) => Some(d),
                Err(zookeeper_client::Error::NoNode) => None,
                Err(zookeeper_client::Error::NoAuth) => {
                    self.skip(&path, "not readable by this identity (ACL)");
                    continue;
                }
                Err(e) => return Err(ZkError::op("get_data", &path, e)),
            };
            self.apply_node(&path, data, &mut dirty);
        }
        if self.cache.blacklist != blacklist_before {
            self.send(Update::Blacklist(self.cache.blacklist.clone()))
                .await;
        }
        for app in dirty {
            let now = self.cache.merged(&app);
            if now.as_ref() == self.sent.get(&app) {
                continue;
            }
            let update = match now {
                Some(spec) => {
                    self.sent.insert(app.clone(), spec.clone());
                    Update::Upsert(app, spec)
                }
                None => {
                    self.sent.remove(&app);
                    Update::Remove(app)
                }
            };
            self.send(update).await;
        }
        Ok(())
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

    async fn send(&mut self, update: Update) {
        // A closed channel means the consumer is gone; the loop notices and stops.
        if self.tx.send(update).await.is_ok() {
            ZkStats::bump(&self.stats.updates_sent);
        }
    }
}

fn is_terminal(event: Option<&WatchedEvent>) -> bool {
    event.is_some_and(|e| e.event_type == EventType::Session && e.session_state.is_terminated())
}
