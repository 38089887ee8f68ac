//! [`StoreCertSource`]: caas-core's [`CertSource`] fed by `/certs` and `/domains` of any
//! [`Store`] (the rule of what may be served is [`crate::zk::certs`]'s).
//!
//! One [`Store::watch`] on the root (events outside `/certs` and `/domains` are dropped):
//! every [`WatchEvent::Resync`] (the first event, a reconnect, a new session, an etcd
//! compaction) makes a full read, sent as `Reset`: the certificate nodes with one
//! [`Store::list`], then the claim of each of their domains. Each [`WatchEvent::Changed`] or
//! [`WatchEvent::Deleted`] (a domain is decided from both nodes, so a deletion is no
//! shortcut here) re-reads the certificate node and the claim of the domain it names and
//! sends `Upsert` or `Remove` when what may be served changed; events already queued are
//! taken together. While the store is unreachable nothing is sent: the gateway keeps the
//! certificates it has, and a failed full read is retried with backoff (up to 2 s).
//!
//! [`WatchEvent::Resync`]: super::WatchEvent::Resync
//! [`WatchEvent::Changed`]: super::WatchEvent::Changed
//! [`WatchEvent::Deleted`]: super::WatchEvent::Deleted

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use caas_core::{CertSource, CertUpdate, Domain, DomainCert};
use futures_util::future::join_all;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::follow::{Follower, follow};
use super::{Store, StoreError};
use crate::zk::ValueCipher;
use crate::zk::certs::{Decision, decide};
use crate::zk::layout::{CERTS, DOMAINS, cert_path, domain_path};

/// Counters of a [`StoreCertSource`].
#[derive(Debug, Default)]
pub struct CertSourceStats {
    /// Certificates not served because the domain's claim is missing or another app's
    /// (each logged).
    pub refused: AtomicU64,
    /// Certificate nodes that could not be read: malformed, a key that does not decrypt
    /// (each logged; a certificate served before stays).
    pub bad_nodes: AtomicU64,
    /// Full reads (start and every Resync).
    pub full_reads: AtomicU64,
    /// Updates handed to the gateway.
    pub updates_sent: AtomicU64,
    /// Store errors in the background loop (each logged; the loop retries).
    pub errors: AtomicU64,
}

/// Custom-domain certificates from a [`Store`], for `CertResolver::follow` in the gateway.
///
/// ```no_run
/// # async fn wire(session: caas_backends::ZkSession) {
/// use caas_backends::store::{StoreCertSource, ZkStore};
/// use caas_core::CertSource as _;
/// let mut source =
///     StoreCertSource::start(ZkStore::new(session.clone()), session.cipher().cloned());
/// // A gateway hands the source to `CertResolver::follow`; here, its updates one by one.
/// while let Some(update) = source.next().await {
///     println!("{update:?}");
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct StoreCertSource {
    rx: mpsc::Receiver<CertUpdate>,
    stats: Arc<CertSourceStats>,
    task: JoinHandle<()>,
}

impl StoreCertSource {
    /// Starts watching `store` (the full read follows the watches' first Resync). Keys are
    /// opened with `cipher`; without one, no sealed key opens and nothing is served.
    pub fn start<S: Store>(store: S, cipher: Option<ValueCipher>) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let stats = Arc::new(CertSourceStats::default());
        let worker = Worker {
            store: store.clone(),
            cipher,
            stats: Arc::clone(&stats),
            tx,
            sent: BTreeMap::new(),
        };
        let task = tokio::spawn(follow(store, worker));
        Self { rx, stats, task }
    }

    /// The counters, live.
    pub fn stats(&self) -> Arc<CertSourceStats> {
        Arc::clone(&self.stats)
    }
}

impl Drop for StoreCertSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CertSource for StoreCertSource {
    async fn next(&mut self) -> Option<CertUpdate> {
        self.rx.recv().await
    }
}

struct Worker<S> {
    store: S,
    cipher: Option<ValueCipher>,
    stats: Arc<CertSourceStats>,
    tx: mpsc::Sender<CertUpdate>,
    /// What the gateway was last told, per domain.
    sent: BTreeMap<Domain, DomainCert>,
}

impl<S: Store> Follower for Worker<S> {
    type Update = CertUpdate;

    fn consumer(&self) -> &mpsc::Sender<CertUpdate> {
        &self.tx
    }

    /// The certificate nodes, the claims of their domains; sent as `Reset`.
    async fn full_read(&mut self) -> Result<(), StoreError> {
        let mut domains = Vec::new();
        for (name, node) in self.store.list(CERTS).await? {
            match Domain::new(&name) {
                Ok(d) => domains.push((d, Some(Some(node.data)))),
                Err(e) => {
                    self.stats.bad_nodes.fetch_add(1, Relaxed);
                    tracing::warn!(path = %format!("{CERTS}/{name}"), "store certificates: skipping node: {e}");
                }
            }
        }
        let mut serve = BTreeMap::new();
        for (domain, decision) in self.decide_all(domains).await? {
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
        tracing::info!(certificates = serve.len(), "store certificates: full read");
        self.sent = serve;
        self.send(CertUpdate::Reset(self.sent.values().cloned().collect()))
            .await;
        Ok(())
    }

    /// Re-decides the domains the paths name and sends what changed.
    async fn refresh(&mut self, paths: BTreeMap<String, bool>) -> Result<(), StoreError> {
        // Deleted or not, a domain is decided again from its certificate and its claim.
        let dirty: BTreeSet<Domain> = paths.keys().filter_map(|p| domain_of(p)).collect();
        if dirty.is_empty() {
            return Ok(()); // none is about certificates
        }
        let domains = dirty.into_iter().map(|d| (d, None)).collect();
        for (domain, decision) in self.decide_all(domains).await? {
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

    fn error(&self, e: &StoreError, what: &str) {
        self.stats.errors.fetch_add(1, Relaxed);
        tracing::warn!(error = %e, "store certificates: {what}");
    }
}

impl<S: Store> Worker<S> {
    /// Decides for each domain, given its certificate node (`None`: read it now) and its
    /// claim (read now); all reads in flight at once.
    async fn decide_all(
        &self,
        domains: Vec<(Domain, Option<Option<Vec<u8>>>)>,
    ) -> Result<Vec<(Domain, Decision)>, StoreError> {
        let claim_paths: Vec<String> = domains.iter().map(|(d, _)| domain_path(d)).collect();
        let cert_paths: Vec<String> = domains.iter().map(|(d, _)| cert_path(d)).collect();
        let claims = join_all(claim_paths.iter().map(|p| self.store.get(p)));
        let nodes = join_all(
            domains
                .iter()
                .zip(&cert_paths)
                .filter(|((_, node), _)| node.is_none())
                .map(|(_, p)| self.store.get(p)),
        );
        let (claims, nodes) = futures_util::join!(claims, nodes);
        let mut nodes = nodes.into_iter();
        let mut out = Vec::with_capacity(domains.len());
        for (((domain, known), path), claim) in domains.into_iter().zip(cert_paths).zip(claims) {
            let node = match known {
                Some(node) => node,
                None => nodes.next().transpose()?.flatten().map(|v| v.data),
            };
            let claim = claim?.map(|v| v.data);
            let decision = decide(
                &domain,
                &path,
                node.as_deref(),
                claim.as_deref(),
                self.cipher.as_ref(),
            );
            out.push((domain, decision));
        }
        Ok(out)
    }

    /// Counts and logs a decision not to serve; true when it must leave service.
    fn note(&self, domain: &Domain, decision: &Decision) -> bool {
        match decision {
            Decision::Refuse(why) => {
                self.stats.refused.fetch_add(1, Relaxed);
                tracing::warn!(%domain, "store certificates: not served: {why}");
                true
            }
            Decision::Bad(why) => {
                self.stats.bad_nodes.fetch_add(1, Relaxed);
                tracing::warn!(%domain, "store certificates: unreadable node: {why}");
                false
            }
            Decision::Absent => true,
            Decision::Serve(_) => false,
        }
    }

    async fn send(&mut self, update: CertUpdate) {
        // A closed channel means the consumer is gone; the loop notices and stops.
        if self.tx.send(update).await.is_ok() {
            self.stats.updates_sent.fetch_add(1, Relaxed);
        }
    }
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
