//! [`ZkDiscovery`]: caas-core's [`Discovery`] fed by ZooKeeper.
//!
//! One persistent recursive watch on the chroot plus a full read at start, after every
//! reconnect and after every new session, kept in a local cache. The first update after a
//! full read is `Reset`; after that each watch event re-reads the node it names (a deletion
//! needs no read) and the apps whose merged spec changed are sent as `Upsert` / `Remove`.
//! Events that are already queued are drained before sending, so a burst becomes one update
//! per app; an event that needs a read then waits [`super::ZkConfig::gather_ms`] (100 ms by
//! default) for the events that follow it, and the nodes they all name are read in one
//! `MultiRead`: at 100 registry writes a second ZooKeeper serves a read request per window
//! instead of one per write, and the router takes one update per app per window. Deletions
//! alone are applied at once.
//!
//! While ZooKeeper is unreachable nothing is sent: the gateway keeps serving its last table.
//! Bad nodes (data not `host:port`, invalid ids in the path, an app spec that does not parse
//! or decrypt) are skipped with a warning and counted in [`ZkStatsSnapshot::skipped_nodes`].
//! How nodes are validated and merged is shared with [`crate::store::StoreDiscovery`]
//! (`view`); only the reading and watching are ZooKeeper's own.

use std::collections::BTreeMap;
use std::time::Duration;

use caas_core::{Discovery, Update};
use futures_util::FutureExt as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use zookeeper_client::{
    AddWatchMode, Client, EventType, PersistentWatcher, SessionState, WatchedEvent,
};

use super::error::{Result, ZkError};
use super::layout::{APPS, BLACKLIST, DOMAINS, Node, SERVICE, classify};
use super::read::{Read, children, pipelined_children, pipelined_data};
use super::session::{Current, ZkSession};
use super::stats::ZkStatsSnapshot;
use super::view::View;

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
            view: View::new(
                "zookeeper discovery",
                session.cipher().cloned(),
                session.stats().clone(),
            ),
            tx,
            gather: session.config().gather(),
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
    /// The cache, what the router was last told, the counters.
    view: View,
    tx: mpsc::Sender<Update>,
    /// How long events that need a read wait for more ([`super::ZkConfig::gather_ms`]).
    gather: Duration,
}

/// Why the per-session loop ended.
enum End {
    /// The consumer is gone.
    Stop,
    /// The session ended; wait for the next one.
    SessionGone,
}

/// What a change of the session's client means for a loop serving the old one.
fn session_changed(changed: std::result::Result<(), watch::error::RecvError>) -> End {
    if changed.is_err() {
        End::Stop
    } else {
        End::SessionGone
    }
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
                changed = self.clients.changed() => return session_changed(changed),
                // Retry a failed full read without waiting for an event.
                _ = tokio::time::sleep(backoff), if need_full_read => {
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                event = watcher.changed() => event,
            };
            let mut batch = Batch::default();
            batch.add(first);
            while !batch.ends_reading() {
                match watcher.changed().now_or_never() {
                    Some(e) => batch.add(e),
                    None => break,
                }
            }
            if !need_full_read && batch.needs_read() && !self.gather.is_zero() {
                // Gather what follows for a while, to read it all in one request.
                let deadline = tokio::time::Instant::now() + self.gather;
                while !batch.ends_reading() {
                    tokio::select! {
                        _ = self.tx.closed() => return End::Stop,
                        changed = self.clients.changed() => return session_changed(changed),
                        _ = tokio::time::sleep_until(deadline) => break,
                        event = watcher.changed() => batch.add(event),
                    }
                }
            }
            if batch.terminal {
                // The watcher must not be polled again after a terminal state.
                return End::SessionGone;
            }
            need_full_read |= batch.reconnected;
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
            if let Err(e) = self.refresh(client, batch.nodes).await {
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
            changed = self.clients.changed() => return Some(session_changed(changed)),
            _ = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
        None
    }

    fn count_error(&self, e: &ZkError, what: &str) {
        self.view.count_error(e, what);
    }

    /// Sorts out one node's failed read: gone meanwhile (`NoNode`) or unreadable for this
    /// identity (`NoAuth`: skipped and counted, so one tenant's odd ACL cannot stop
    /// discovery) yield `Ok(None)`; anything else fails the read.
    fn triage<T>(&self, path: &str, read: Read<T>, op: &'static str) -> Result<Option<T>> {
        match read {
            Ok(v) => Ok(Some(v)),
            Err(zookeeper_client::Error::NoNode) => Ok(None),
            Err(zookeeper_client::Error::NoAuth) => {
                self.view.skip(path, "not readable by this identity (ACL)");
                Ok(None)
            }
            Err(e) => Err(ZkError::op(op, path, e)),
        }
    }

    /// Reads the whole registry and config, replaces the cache and sends `Reset`.
    async fn full_read(&mut self, client: &Client) -> Result<()> {
        let mut read = self.view.full_read();
        // Instances: three levels of children, each level's requests pipelined.
        let apps = children(client, SERVICE).await?;
        let mut app_dirs = Vec::new();
        for name in apps {
            let path = format!("{SERVICE}/{name}");
            if let Some(id) = read.app_dir(&path, &name) {
                app_dirs.push((id, path));
            }
        }
        let mut version_dirs = Vec::new();
        for ((app, path), result) in pipelined_children(client, app_dirs).await {
            let Some(versions) = self.triage(&path, result, "list_children")? else {
                continue;
            };
            for v in versions {
                let vpath = format!("{path}/{v}");
                if let Some(version) = read.version_dir(&vpath, &v) {
                    version_dirs.push(((app.clone(), version), vpath));
                }
            }
        }
        let mut instance_nodes = Vec::new();
        for (((app, version), path), result) in pipelined_children(client, version_dirs).await {
            let Some(ids) = self.triage(&path, result, "list_children")? else {
                continue;
            };
            for i in ids {
                let ipath = format!("{path}/{i}");
                if let Some(id) = read.instance_id(&ipath, &i) {
                    instance_nodes.push(((app.clone(), version.clone(), id), ipath));
                }
            }
        }
        for ((key, path), result) in pipelined_data(client, instance_nodes).await {
            if let Some(data) = self.triage(&path, result, "get_data")? {
                read.instance(&path, key, &data);
            }
        }
        // App specs.
        let mut app_nodes = Vec::new();
        for name in children(client, APPS).await? {
            let path = format!("{APPS}/{name}");
            if let Some(id) = read.app_name(&path, &name) {
                app_nodes.push((id, path));
            }
        }
        for ((app, path), result) in pipelined_data(client, app_nodes).await {
            if let Some(data) = self.triage(&path, result, "get_data")? {
                read.app(&path, app, data);
            }
        }
        // Domain claims.
        let mut domain_nodes = Vec::new();
        for name in children(client, DOMAINS).await? {
            let path = format!("{DOMAINS}/{name}");
            if let Some(d) = read.domain_name(&path, &name) {
                domain_nodes.push((d, path));
            }
        }
        for ((domain, path), result) in pipelined_data(client, domain_nodes).await {
            if let Some(data) = self.triage(&path, result, "get_data")? {
                read.domain(&path, domain, &data);
            }
        }

        // The gateway-wide blacklist; a bad one keeps the last good one.
        match client.get_data(BLACKLIST).await {
            Ok((data, _)) => read.blacklist(BLACKLIST, Some(data)),
            Err(zookeeper_client::Error::NoNode) => read.blacklist(BLACKLIST, None),
            Err(zookeeper_client::Error::NoAuth) => read.blacklist_unreadable(BLACKLIST),
            Err(e) => return Err(ZkError::op("get_data", BLACKLIST, e)),
        }

        let (cache, started) = read.done();
        let reset = self.view.finish(cache, started);
        self.send(reset).await;
        Ok(())
    }

    /// Re-reads the nodes named by watch events, in `MultiRead` requests, and sends what
    /// changed. A node whose last event deleted it is not read: it is gone as of that event,
    /// and if it comes back its creation is an event still to come. (A deregistration, half
    /// of all registry writes, then costs ZooKeeper no read, and no `NoNode` error path on
    /// its side.)
    async fn refresh(&mut self, client: &Client, paths: BTreeMap<String, bool>) -> Result<()> {
        // Deleted nodes go in as gone; the others as read (order does not matter: the paths
        // are distinct and the updates are worked out after all of them).
        let mut nodes = Vec::with_capacity(paths.len());
        let mut reads = Vec::new();
        for (path, deleted) in paths {
            if deleted {
                nodes.push((path, None));
            } else {
                reads.push(((), path));
            }
        }
        for (((), path), result) in pipelined_data(client, reads).await {
            match result {
                Ok(data) => nodes.push((path, Some(data))),
                Err(zookeeper_client::Error::NoNode) => nodes.push((path, None)),
                Err(zookeeper_client::Error::NoAuth) => {
                    self.view.skip(&path, "not readable by this identity (ACL)");
                }
                Err(e) => return Err(ZkError::op("get_data", &path, e)),
            }
        }
        for update in self.view.apply(nodes) {
            self.send(update).await;
        }
        Ok(())
    }

    async fn send(&mut self, update: Update) {
        self.view.send(&self.tx, update).await;
    }
}

/// What a burst of watch events asks for.
#[derive(Debug, Default, PartialEq)]
struct Batch {
    /// The nodes to bring up to date: per path, whether its last event deleted it.
    nodes: BTreeMap<String, bool>,
    /// The connection came back: read everything again.
    reconnected: bool,
    /// The session ended for good.
    terminal: bool,
}

impl Batch {
    #[cfg(test)]
    fn fold(events: impl IntoIterator<Item = WatchedEvent>) -> Self {
        let mut batch = Self::default();
        for event in events {
            batch.add(event);
        }
        batch
    }

    /// Takes in one event. Events on nodes the discovery does not read (version
    /// directories, anything outside the registry and config) are dropped here.
    fn add(&mut self, event: WatchedEvent) {
        match event.event_type {
            EventType::Session => match event.session_state {
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                    self.reconnected = true;
                }
                s if s.is_terminated() => self.terminal = true,
                _ => {}
            },
            kind => {
                if !matches!(classify(&event.path), Node::Other | Node::ServiceDir) {
                    self.nodes
                        .insert(event.path, kind == EventType::NodeDeleted);
                }
            }
        }
    }

    /// No event should be added after this one: the session ended (the watcher must not be
    /// polled again) or came back (everything is read again).
    fn ends_reading(&self) -> bool {
        self.terminal || self.reconnected
    }

    /// Some node has to be read (not only deletions).
    fn needs_read(&self) -> bool {
        !self.ends_reading() && self.nodes.values().any(|deleted| !deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(event_type: EventType, path: &str) -> WatchedEvent {
        WatchedEvent::new(event_type, path)
    }

    fn session(state: SessionState) -> WatchedEvent {
        WatchedEvent::new_session(state)
    }

    #[test]
    fn a_node_is_read_again_unless_its_last_event_deleted_it() {
        use EventType::{NodeCreated, NodeDataChanged, NodeDeleted};
        let a = "/service/address/shop/v1/a";
        let b = "/service/address/shop/v1/b";
        let c = "/apps/shop";
        let batch = Batch::fold([
            node(NodeCreated, a),
            node(NodeDeleted, a),
            node(NodeDeleted, b),
            node(NodeCreated, b),
            node(NodeDataChanged, c),
        ]);
        let want = [
            (a.to_owned(), true),
            (b.to_owned(), false),
            (c.to_owned(), false),
        ];
        assert_eq!(batch.nodes, want.into_iter().collect());
        assert!(!batch.reconnected && !batch.terminal);
    }

    #[test]
    fn session_events_ask_for_a_full_read_or_end_the_session() {
        let batch = Batch::fold([
            session(SessionState::Disconnected),
            session(SessionState::SyncConnected),
        ]);
        assert!(batch.reconnected && !batch.terminal && batch.nodes.is_empty());
        assert!(Batch::fold([session(SessionState::Expired)]).terminal);
    }
}
