//! [`ZkCertSource`]: caas-core's [`CertSource`] fed by `/certs` and `/domains`.
//!
//! Built like the discovery: persistent recursive watches (one on `/certs`, one on
//! `/domains`; set on paths that may not exist yet) plus a full read at start, after every
//! reconnect and in every new session, which is sent as `Reset`. After that, each event
//! re-reads the certificate node and the claim of the domain it names and sends `Upsert` or
//! `Remove` when what may be served changed. While ZooKeeper is unreachable nothing is
//! sent: the gateway keeps the certificates it has.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use caas_core::{CertSource, CertUpdate, Domain, DomainCert};
use futures_util::FutureExt as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use zookeeper_client::{
    AddWatchMode, Client, EventType, PersistentWatcher, SessionState, WatchedEvent,
};

use super::{Decision, decide};
use crate::zk::crypto::ValueCipher;
use crate::zk::error::{Result, ZkError};
use crate::zk::layout::{CERTS, DOMAINS, cert_path, domain_path};
use crate::zk::read::{children, pipelined_data};
use crate::zk::session::{Current, ZkSession};

/// Counters of a [`ZkCertSource`].
#[derive(Debug, Default)]
pub struct CertSourceStats {
    /// Certificates not served because the domain's claim is missing or another app's
    /// (each logged).
    pub refused: AtomicU64,
    /// Certificate nodes that could not be read: malformed, a key that does not decrypt
    /// (each logged; a certificate served before stays).
    pub bad_nodes: AtomicU64,
    /// Full reads (start, reconnect, new session).
    pub full_reads: AtomicU64,
    /// Updates handed to the gateway.
    pub updates_sent: AtomicU64,
    /// ZooKeeper errors in the background loop (each logged; the loop retries).
    pub errors: AtomicU64,
}

/// Custom-domain certificates from ZooKeeper, for `CertResolver::follow` in the gateway.
#[derive(Debug)]
pub struct ZkCertSource {
    rx: mpsc::Receiver<CertUpdate>,
    stats: Arc<CertSourceStats>,
    task: JoinHandle<()>,
}

impl ZkCertSource {
    /// Starts watching through `session` (a full read happens at once). Keys are opened
    /// with the session's encryption key.
    pub fn start(session: &ZkSession) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let stats = Arc::new(CertSourceStats::default());
        let worker = Worker {
            clients: session.subscribe(),
            cipher: session.cipher().cloned(),
            stats: Arc::clone(&stats),
            tx,
            sent: BTreeMap::new(),
        };
        let task = tokio::spawn(worker.run());
        Self { rx, stats, task }
    }

    /// The counters, live.
    pub fn stats(&self) -> Arc<CertSourceStats> {
        Arc::clone(&self.stats)
    }
}

impl Drop for ZkCertSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CertSource for ZkCertSource {
    async fn next(&mut self) -> Option<CertUpdate> {
        self.rx.recv().await
    }
}

struct Worker {
    clients: watch::Receiver<Current>,
    cipher: Option<ValueCipher>,
    stats: Arc<CertSourceStats>,
    tx: mpsc::Sender<CertUpdate>,
    /// What the gateway was last told, per domain.
    sent: BTreeMap<Domain, DomainCert>,
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
            if let End::Stop = self.serve_session(&client).await {
                return;
            }
            drop(client);
            let epoch = current.epoch;
            tokio::select! {
                _ = self.tx.closed() => return,
                next = self.clients.wait_for(|c| c.epoch != epoch || c.client.is_none()) => {
                    if next.is_err() { return }
                }
            }
        }
    }

    async fn serve_session(&mut self, client: &Client) -> End {
        let mut backoff = Duration::from_millis(50);
        let mut need_full_read = true;
        loop {
            let (mut certs, mut domains) = match self.add_watches(client, &mut backoff).await {
                Ok(w) => w,
                Err(end) => return end,
            };
            loop {
                if need_full_read {
                    match self.full_read(client).await {
                        Ok(()) => {
                            need_full_read = false;
                            backoff = Duration::from_millis(50);
                        }
                        Err(e) => {
                            self.error(&e, "full read failed; retrying");
                            if e.is_session_gone() {
                                return End::SessionGone;
                            }
                        }
                    }
                }
                let first = tokio::select! {
                    _ = self.tx.closed() => return End::Stop,
                    changed = self.clients.changed() => {
                        return if changed.is_err() { End::Stop } else { End::SessionGone };
                    }
                    _ = tokio::time::sleep(backoff), if need_full_read => {
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                    e = certs.changed() => e,
                    e = domains.changed() => e,
                };
                // Take what else is queued (a burst becomes one pass), never polling a
                // watcher again after its terminal event.
                let mut events = vec![first];
                for watcher in [&mut certs, &mut domains] {
                    while !events.last().is_some_and(is_terminal) {
                        match watcher.changed().now_or_never() {
                            Some(e) => events.push(e),
                            None => break,
                        }
                    }
                }
                let mut dirty = BTreeSet::new();
                let mut reconnected = false;
                for event in events {
                    match event.event_type {
                        EventType::Session => match event.session_state {
                            SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                                reconnected = true;
                            }
                            s if s.is_terminated() => return End::SessionGone,
                            _ => {}
                        },
                        _ => dirty.extend(domain_of(&event.path)),
                    }
                }
                if reconnected {
                    // Watches may not survive a server restart: set them again, then
                    // re-read everything that may have been missed.
                    need_full_read = true;
                    break;
                }
                if let Err(e) = self.refresh(client, dirty).await {
                    self.error(&e, "re-read after a watch event failed; doing a full read");
                    if e.is_session_gone() {
                        return End::SessionGone;
                    }
                    need_full_read = true;
                }
            }
        }
    }

    async fn add_watches(
        &mut self,
        client: &Client,
        backoff: &mut Duration,
    ) -> std::result::Result<(PersistentWatcher, PersistentWatcher), End> {
        loop {
            let watched = async {
                let certs = client.watch(CERTS, AddWatchMode::PersistentRecursive).await;
                let certs = certs.map_err(|e| ZkError::op("watch", CERTS, e))?;
                let domains = client
                    .watch(DOMAINS, AddWatchMode::PersistentRecursive)
                    .await;
                let domains = domains.map_err(|e| ZkError::op("watch", DOMAINS, e))?;
                Ok::<_, ZkError>((certs, domains))
            };
            match watched.await {
                Ok(w) => return Ok(w),
                Err(e) => {
                    self.error(&e, "cannot set the watches");
                    if e.is_session_gone() {
                        return Err(End::SessionGone);
                    }
                    tokio::select! {
                        _ = self.tx.closed() => return Err(End::Stop),
                        changed = self.clients.changed() => {
                            return Err(if changed.is_err() { End::Stop } else { End::SessionGone });
                        }
                        _ = tokio::time::sleep(*backoff) => {}
                    }
                    *backoff = (*backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn error(&self, e: &ZkError, what: &str) {
        self.stats.errors.fetch_add(1, Relaxed);
        tracing::warn!(error = %e, "zookeeper certificates: {what}");
    }

    /// Reads the certificate node and the claim of each domain (all requests in flight at
    /// once) and decides.
    async fn read(&self, client: &Client, domains: Vec<Domain>) -> Result<Vec<(Domain, Decision)>> {
        let mut nodes = Vec::with_capacity(domains.len() * 2);
        for d in &domains {
            nodes.push(((d.clone(), true), cert_path(d)));
            nodes.push(((d.clone(), false), domain_path(d)));
        }
        let mut data: BTreeMap<(Domain, bool), Vec<u8>> = BTreeMap::new();
        for ((key, path), read) in pipelined_data(client, nodes).await {
            match read {
                Ok(d) => {
                    data.insert(key, d);
                }
                Err(zookeeper_client::Error::NoNode) => {}
                Err(e) => return Err(ZkError::op("get_data", &path, e)),
            }
        }
        Ok(domains
            .into_iter()
            .map(|d| {
                let path = cert_path(&d);
                let node = data.get(&(d.clone(), true)).map(Vec::as_slice);
                let claim = data.get(&(d.clone(), false)).map(Vec::as_slice);
                let decision = decide(&d, &path, node, claim, self.cipher.as_ref());
                (d, decision)
            })
            .collect())
    }

    /// Counts and logs a decision not to serve; true when it must leave service.
    fn note(&self, domain: &Domain, decision: &Decision) -> bool {
        match decision {
            Decision::Refuse(why) => {
                self.stats.refused.fetch_add(1, Relaxed);
                tracing::warn!(%domain, "zookeeper certificates: not served: {why}");
                true
            }
            Decision::Bad(why) => {
                self.stats.bad_nodes.fetch_add(1, Relaxed);
                tracing::warn!(%domain, "zookeeper certificates: unreadable node: {why}");
                false
            }
            Decision::Absent => true,
            Decision::Serve(_) => false,
        }
    }

    async fn full_read(&mut self, client: &Client) -> Result<()> {
        let mut domains = Vec::new();
        for name in children(client, CERTS).await? {
            match Domain::new(&name) {
                Ok(d) => domains.push(d),
                Err(e) => {
                    self.stats.bad_nodes.fetch_add(1, Relaxed);
                    tracing::warn!(path = %format!("{CERTS}/{name}"), "zookeeper certificates: skipping node: {e}");
                }
            }
        }
        let mut serve = BTreeMap::new();
        for (domain, decision) in self.read(client, domains).await? {
            let remove = self.note(&domain, &decision);
            match decision {
                Decision::Serve(c) => {
                    serve.insert(domain, c);
                }
                // An unreadable node keeps what was served for it.
                _ if !remove => {
                    if let Some(c) = self.sent.get(&domain) {
                        serve.insert(domain, c.clone());
                    }
                }
                _ => {}
            }
        }
        self.stats.full_reads.fetch_add(1, Relaxed);
        tracing::info!(
            certificates = serve.len(),
            "zookeeper certificates: full read"
        );
        self.sent = serve;
        self.send(CertUpdate::Reset(self.sent.values().cloned().collect()))
            .await;
        Ok(())
    }

    async fn refresh(&mut self, client: &Client, dirty: BTreeSet<Domain>) -> Result<()> {
        for (domain, decision) in self.read(client, dirty.into_iter().collect()).await? {
            let remove = self.note(&domain, &decision);
            let update = match decision {
                Decision::Serve(c) if self.sent.get(&domain) != Some(&c) => {
                    self.sent.insert(domain, c.clone());
                    CertUpdate::Upsert(c)
                }
                _ if remove && self.sent.remove(&domain).is_some() => CertUpdate::Remove(domain),
                _ => continue,
            };
            self.send(update).await;
        }
        Ok(())
    }

    async fn send(&mut self, update: CertUpdate) {
        // A closed channel means the consumer is gone; the loop notices and stops.
        if self.tx.send(update).await.is_ok() {
            self.stats.updates_sent.fetch_add(1, Relaxed);
        }
    }
}

fn is_terminal(event: &WatchedEvent) -> bool {
    event.event_type == EventType::Session && event.session_state.is_terminated()
}

/// The domain a watch event under `/certs` or `/domains` is about.
fn domain_of(path: &str) -> Option<Domain> {
    let name = path
        .strip_prefix(CERTS)
        .or_else(|| path.strip_prefix(DOMAINS))?
        .strip_prefix('/')?;
    if name.contains('/') {
        return None;
    }
    Domain::new(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_domain() {
        let d = |s: &str| Some(Domain::new(s).unwrap());
        assert_eq!(domain_of("/certs/www.a.test"), d("www.a.test"));
        assert_eq!(domain_of("/domains/www.a.test"), d("www.a.test"));
        assert_eq!(domain_of("/certs"), None);
        assert_eq!(domain_of("/certs/a/b"), None);
        assert_eq!(domain_of("/certsx/a"), None);
        assert_eq!(domain_of("/certs/Bad_Name"), None);
        assert_eq!(domain_of("/apps/a"), None);
    }
}
