//! [`ZkSession`]: one ZooKeeper session that survives what ZooKeeper throws at it, as Apache
//! Curator's does.
//!
//! - A disconnect is handled by the client itself (it reconnects within the same session and
//!   re-sends its watches); the session only counts it.
//! - A session **expiry** makes the client useless for good. A supervisor task notices it
//!   (session state watcher), builds a new client, re-creates every ephemeral node this
//!   process registered (kept here as path → data) and publishes the new client, so the
//!   discovery re-establishes its watch and re-reads everything.
//!
//! The chroot is created on connect when missing (with this identity's ACL).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;
use zookeeper_client::{Acl, Acls, Client, CreateMode, SessionState, TlsOptions};

use super::acl::node_acl;
use super::config::ZkConfig;
use super::crypto::ValueCipher;
use super::error::{Result, ZkError};
use super::stats::ZkStats;

/// The client in use and how many sessions came before it.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    /// Counts up with every new session (0 = the first).
    pub(crate) epoch: u64,
    /// `None` once the session was closed by [`ZkSession::close`].
    pub(crate) client: Option<Client>,
}

struct Inner {
    config: ZkConfig,
    acl: Vec<Acl>,
    cipher: Option<ValueCipher>,
    tls: Option<TlsOptions>,
    current: watch::Sender<Current>,
    ephemerals: Mutex<BTreeMap<String, Vec<u8>>>,
    stats: Arc<ZkStats>,
    /// Dropped with `Inner`: tells the supervisor to stop.
    shutdown: watch::Sender<bool>,
}

/// A ZooKeeper session that re-creates itself (and its ephemeral nodes) after an expiry.
/// Cheap to clone; the session closes when the last clone is dropped or on [`close`](Self::close).
#[derive(Clone)]
pub struct ZkSession {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ZkSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkSession")
            .field("servers", &self.inner.config.servers)
            .field("chroot", &self.inner.config.chroot)
            .field("epoch", &self.inner.current.borrow().epoch)
            .finish()
    }
}

impl ZkSession {
    /// Connects (waiting up to about the session timeout for a server), creates the chroot if
    /// missing and starts the expiry supervisor. Needs a Tokio runtime.
    pub async fn connect(config: ZkConfig) -> Result<Self> {
        config.validate()?;
        let acl = node_acl(config.digest.as_deref(), &config.readers)?;
        let cipher = match &config.encryption_key_file {
            Some(path) => Some(ValueCipher::from_file(path)?),
            None => None,
        };
        let tls = match &config.tls {
            Some(t) => Some(load_tls(t)?),
            None => None,
        };
        let client = connect_client(&config, tls.as_ref(), &acl).await?;
        let states = client.state_watcher();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            config,
            acl,
            cipher,
            tls,
            current: watch::Sender::new(Current {
                epoch: 0,
                client: Some(client),
            }),
            ephemerals: Mutex::new(BTreeMap::new()),
            stats: Arc::new(ZkStats::default()),
            shutdown,
        });
        tokio::spawn(supervise(Arc::downgrade(&inner), states, shutdown_rx));
        Ok(Self { inner })
    }

    /// The client of the current session (chrooted). After an expiry this is the new one.
    pub fn client(&self) -> Result<Client> {
        self.inner
            .current
            .borrow()
            .client
            .clone()
            .ok_or(ZkError::Closed)
    }

    /// The configuration this session was built from.
    pub fn config(&self) -> &ZkConfig {
        &self.inner.config
    }

    /// Counters of this session and everything built on it.
    pub fn stats(&self) -> &Arc<ZkStats> {
        &self.inner.stats
    }

    /// How many times the session was replaced after an expiry.
    pub fn epoch(&self) -> u64 {
        self.inner.current.borrow().epoch
    }

    /// Closes the session now: its ephemeral nodes disappear at once.
    pub fn close(&self) {
        let _closed_client = self.inner.current.send_replace(Current {
            epoch: self.epoch(),
            client: None,
        });
        self.inner.shutdown.send_replace(true);
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Current> {
        self.inner.current.subscribe()
    }

    /// The config encryption key (`encryption_key_file`), if one is configured.
    pub fn cipher(&self) -> Option<&ValueCipher> {
        self.inner.cipher.as_ref()
    }

    /// The ACL of nodes this session creates.
    pub fn node_acl(&self) -> &[Acl] {
        &self.inner.acl
    }

    /// `mkdir -p` with this session's node ACL.
    pub(crate) async fn mkdir(&self, path: &str) -> Result<()> {
        let client = self.client()?;
        mkdir(&client, path, &self.inner.acl).await
    }

    /// Creates an ephemeral node (parents as needed) and remembers it for re-creation after
    /// an expiry. A node that exists (ours or not) is an error, never overwritten.
    pub(crate) async fn create_ephemeral(&self, path: &str, data: &[u8]) -> Result<()> {
        let client = self.client()?;
        {
            let mut owned = self.lock_ephemerals();
            if owned.contains_key(path) {
                return Err(ZkError::op(
                    "create",
                    path,
                    zookeeper_client::Error::NodeExists,
                ));
            }
            owned.insert(path.to_owned(), data.to_vec());
        }
        let result = create_ephemeral(&client, path, data, &self.inner.acl).await;
        if result.is_err() {
            self.lock_ephemerals().remove(path);
        }
        result
    }

    /// Forgets an ephemeral node (before deleting it).
    pub(crate) fn forget_ephemeral(&self, path: &str) -> bool {
        self.lock_ephemerals().remove(path).is_some()
    }

    /// Paths of the ephemeral nodes this process owns.
    pub fn ephemerals(&self) -> Vec<String> {
        self.lock_ephemerals().keys().cloned().collect()
    }

    fn lock_ephemerals(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A plain map with no invariant spanning several entries: a panic elsewhere cannot
        // leave it inconsistent.
        self.inner
            .ephemerals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn load_tls(t: &super::config::ZkTlsConfig) -> Result<TlsOptions> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| ZkError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    };
    let ca = read(&t.ca)?;
    let mut opts = TlsOptions::new()
        .with_pem_ca(&ca)
        .map_err(|e| ZkError::File {
            path: t.ca.clone(),
            reason: e.to_string(),
        })?;
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let (c, k) = (read(cert)?, read(key)?);
            opts = opts.with_pem_identity(&c, &k).map_err(|e| ZkError::File {
                path: cert.clone(),
                reason: format!("client certificate/key: {e}"),
            })?;
        }
        (None, None) => {}
        _ => {
            return Err(ZkError::Config(
                "tls: give both cert and key, or neither".into(),
            ));
        }
    }
    Ok(opts)
}

async fn connect_client(
    config: &ZkConfig,
    tls: Option<&TlsOptions>,
    acl: &[Acl],
) -> Result<Client> {
    let mut connector = Client::connector().with_session_timeout(config.session_timeout());
    if let Some(digest) = &config.digest {
        connector = connector.with_auth("digest", digest.as_bytes());
    }
    let connected = match tls {
        Some(tls) => {
            connector
                .with_tls(tls.clone())
                .secure_connect(&config.servers)
                .await
        }
        None => connector.connect(&config.servers).await,
    };
    let client = connected.map_err(|source| ZkError::Connect {
        servers: config.servers.clone(),
        source,
    })?;
    let chroot = config.chroot.as_str();
    if chroot == "/" {
        return Ok(client);
    }
    let exists = client
        .check_stat(chroot)
        .await
        .map_err(|e| ZkError::op("stat", chroot, e))?;
    if exists.is_none() {
        mkdir(&client, chroot, acl).await?;
    }
    client
        .chroot(chroot)
        .map_err(|_| ZkError::Config(format!("chroot {chroot:?} rejected by the client")))
}

pub(crate) async fn mkdir(client: &Client, path: &str, acl: &[Acl]) -> Result<()> {
    let options = CreateMode::Persistent.with_acls(Acls::new(acl));
    client
        .mkdir(path, &options)
        .await
        .map_err(|e| ZkError::op("mkdir", path, e))
}

async fn create_ephemeral(client: &Client, path: &str, data: &[u8], acl: &[Acl]) -> Result<()> {
    // An existing parent is not created again: ZooKeeper checks CREATE on the grandparent
    // even for a node that exists, which an identity allowed to create only below the parent
    // (a gateway under /gateways) does not have.
    if let Some((parent, _)) = path.rsplit_once('/')
        && !parent.is_empty()
        && client
            .check_stat(parent)
            .await
            .map_err(|e| ZkError::op("exists", parent, e))?
            .is_none()
    {
        mkdir(client, parent, acl).await?;
    }
    let options = CreateMode::Ephemeral.with_acls(Acls::new(acl));
    client
        .create(path, data, &options)
        .await
        .map(|_| ())
        .map_err(|e| ZkError::op("create", path, e))
}

/// Watches the session state; on expiry builds a new session and re-creates the ephemerals.
/// Holds only a weak reference, so dropping the last [`ZkSession`] ends it.
async fn supervise(
    inner: Weak<Inner>,
    mut states: zookeeper_client::StateWatcher,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut disconnected = false;
    loop {
        let state = tokio::select! {
            _ = shutdown.changed() => return,
            state = states.changed() => state,
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let servers = strong.config.servers.clone();
        match state {
            SessionState::Disconnected => {
                disconnected = true;
                tracing::warn!(%servers, "zookeeper: disconnected; reconnecting");
            }
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                if disconnected {
                    disconnected = false;
                    ZkStats::bump(&strong.stats.reconnects);
                    tracing::info!(%servers, "zookeeper: reconnected within the session");
                }
            }
            SessionState::Expired | SessionState::AuthFailed | SessionState::Closed => {
                if *shutdown.borrow() {
                    return;
                }
                if state == SessionState::AuthFailed {
                    ZkStats::bump(&strong.stats.errors);
                    tracing::error!(%servers, "zookeeper: authentication failed; trying a new session");
                } else {
                    ZkStats::bump(&strong.stats.session_expiries);
                    tracing::warn!(%servers, ?state, "zookeeper: session ended; starting a new one");
                }
                disconnected = false;
                drop(strong);
                match renew(&inner, &mut shutdown).await {
                    Some(next) => states = next,
                    None => return,
                }
            }
        }
    }
}

/// Connects a new session (retrying with backoff), re-creates the owned ephemerals, then
/// publishes the new client. `None` when the session was dropped or closed meanwhile.
async fn renew(
    inner: &Weak<Inner>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<zookeeper_client::StateWatcher> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (config, tls, acl, stats) = {
            let strong = inner.upgrade()?;
            (
                strong.config.clone(),
                strong.tls.clone(),
                strong.acl.clone(),
                strong.stats.clone(),
            )
        };
        let connected = tokio::select! {
            _ = shutdown.changed() => return None,
            c = connect_client(&config, tls.as_ref(), &acl) => c,
        };
        match connected {
            Ok(client) => {
                let strong = inner.upgrade()?;
                let owned: Vec<(String, Vec<u8>)> = ZkSession {
                    inner: strong.clone(),
                }
                .lock_ephemerals()
                .iter()
                .map(|(p, d)| (p.clone(), d.clone()))
                .collect();
                for (path, data) in owned {
                    match recreate(&client, &path, &data, &acl).await {
                        Ok(()) => ZkStats::bump(&stats.ephemerals_recreated),
                        Err(e) => {
                            ZkStats::bump(&stats.errors);
                            tracing::error!(%path, error = %e, "zookeeper: cannot re-create ephemeral node in the new session");
                        }
                    }
                }
                let states = client.state_watcher();
                let epoch = strong.current.borrow().epoch + 1;
                if *shutdown.borrow() {
                    return None;
                }
                strong.current.send_replace(Current {
                    epoch,
                    client: Some(client),
                });
                tracing::info!(servers = %config.servers, epoch, "zookeeper: new session established");
                return Some(states);
            }
            Err(e) => {
                ZkStats::bump(&stats.errors);
                tracing::warn!(servers = %config.servers, error = %e, ?backoff, "zookeeper: new session failed; retrying");
                tokio::select! {
                    _ = shutdown.changed() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Re-creates one ephemeral in a new session. A leftover node of the dead session (its
/// expiry may not have reached every server yet) is replaced.
async fn recreate(client: &Client, path: &str, data: &[u8], acl: &[Acl]) -> Result<()> {
    match create_ephemeral(client, path, data, acl).await {
        Err(ZkError::Op {
            source: zookeeper_client::Error::NodeExists,
            ..
        }) => {
            let stat = client
                .check_stat(path)
                .await
                .map_err(|e| ZkError::op("stat", path, e))?;
            if let Some(stat) = stat
                && stat.ephemeral_owner != client.session_id().0
            {
                match client.delete(path, Some(stat.version)).await {
                    Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                    Err(e) => return Err(ZkError::op("delete", path, e)),
                }
                return create_ephemeral(client, path, data, acl).await;
            }
            Ok(())
        }
        other => other,
    }
}
