//! [`EtcdStore`]: the [`Store`] contract on etcd v3.
//!
//! - A node `/a/b` is the key `{root}/a/b` (root `/caas` by default, as the ZooKeeper chroot);
//!   its version is the key's `mod_revision`. No parent keys are written: `children` lists
//!   the next path segment of every key under `{key}/` (see the module docs of
//!   [`crate::store`] for what differs from ZooKeeper).
//! - A commit is one `Txn`: the compares (`mod_revision == 0` for a create, `== v` for a
//!   versioned set, delete or check, `create_revision > 0` for "exists", and no key under
//!   `{key}/` for a delete), then the puts and deletes; the `else` branch reads every node
//!   the commit names, so a refusal says which op failed and why in the same round trip.
//! - Ephemeral nodes are keys attached to the store's lease (granted at connect), kept alive
//!   by a task. When the lease is found expired (a partition longer than the TTL), a new one
//!   is granted and every ephemeral node of this store is put again under it.
//! - A watch is a prefix watch resumed, after any stream error, from the revision after the
//!   last event it delivered; etcd replays what happened meanwhile. When that revision was
//!   compacted, the watch reports [`WatchEvent::Resync`] and starts again from now.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{mpsc, watch};

use super::{
    ConflictKind, Op, Store, StoreError, Versioned, Watch, WatchEvent, check_path, is_under,
};

/// How to reach etcd, as whom, and where the layout lives.
#[derive(Clone)]
pub struct EtcdConfig {
    /// Client endpoints, like `http://127.0.0.1:2379` (`https://` with [`EtcdConfig::tls`]).
    pub endpoints: Vec<String>,
    /// Key prefix of every node (`/caas`; `/` for the whole key space).
    pub root: String,
    /// TTL of the lease that holds this store's ephemeral nodes (etcd's minimum is about
    /// 2 s). Ephemeral nodes of a crashed process vanish after it.
    pub lease_ttl: Duration,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// TLS to etcd's `https://` client URLs: the CA, and the client identity etcd demands
    /// with `--client-cert-auth`.
    pub tls: Option<EtcdTlsConfig>,
    /// etcd user `user:password` (etcd auth: `auth enable`, users bound to roles; see
    /// [`crate::store::etcd_auth`]). Without it requests are anonymous, which etcd refuses
    /// once auth is enabled.
    pub user: Option<String>,
}

/// TLS material for the connection to etcd, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTlsConfig {
    /// CA certificate(s) that signed etcd's server certificate.
    pub ca: PathBuf,
    /// Client certificate chain (etcd demands one with `--client-cert-auth`).
    pub cert: Option<PathBuf>,
    /// Client private key (PEM), with `cert`.
    pub key: Option<PathBuf>,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("root", &self.root)
            .field("lease_ttl", &self.lease_ttl)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .field("user", &self.user_name())
            .finish()
    }
}

impl EtcdConfig {
    /// Defaults: root `/caas`, lease TTL 10 s, request timeout 5 s, no TLS, anonymous.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoints: vec![endpoint.into()],
            root: "/caas".into(),
            lease_ttl: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            tls: None,
            user: None,
        }
    }

    /// [`EtcdConfig::new`] with a comma-separated list of endpoints, as a command line takes
    /// them: `http://10.0.0.1:2379, http://10.0.0.2:2379` (spaces around each and empty
    /// entries are dropped; [`EtcdConfig::validate`] refuses an empty list).
    pub fn from_endpoint_list(list: &str) -> Self {
        let mut config = Self::new("");
        config.endpoints = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        config
    }

    /// Another root prefix.
    pub fn with_root(mut self, root: impl Into<String>) -> Self {
        self.root = root.into();
        self
    }

    /// Another lease TTL.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// TLS to `https://` endpoints.
    pub fn with_tls(mut self, tls: EtcdTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// etcd credentials `user:password`.
    pub fn with_user(mut self, user_password: impl Into<String>) -> Self {
        self.user = Some(user_password.into());
        self
    }

    /// The user name of [`EtcdConfig::user`] (never the password).
    pub fn user_name(&self) -> Option<&str> {
        self.user
            .as_deref()
            .map(|u| u.split_once(':').map_or(u, |(name, _)| name))
    }

    /// Checks what can be checked without the network: endpoints whose scheme matches the
    /// TLS setting, `user:password`, a client certificate with its key, the root.
    pub fn validate(&self) -> Result<(), StoreError> {
        let invalid = |reason: String| StoreError::Invalid {
            op: "connect",
            path: self.endpoints.join(","),
            reason,
        };
        if self.endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err(invalid("no etcd endpoint".into()));
        }
        for e in &self.endpoints {
            match (
                &self.tls,
                e.starts_with("http://"),
                e.starts_with("https://"),
            ) {
                (Some(_), true, _) => {
                    return Err(invalid(format!(
                        "endpoint {e}: with TLS the endpoints are https:// URLs"
                    )));
                }
                (None, _, true) => {
                    return Err(invalid(format!(
                        "endpoint {e}: an https:// endpoint needs the CA that signed etcd's \
                         certificate (TLS settings)"
                    )));
                }
                _ => {}
            }
        }
        if let Some(user) = &self.user {
            match user.split_once(':') {
                Some((name, pw)) if !name.is_empty() && !pw.is_empty() => {}
                _ => {
                    return Err(invalid(
                        "etcd user: expected `user:password`, both non-empty".into(),
                    ));
                }
            }
        }
        if self
            .tls
            .as_ref()
            .is_some_and(|t| t.cert.is_some() != t.key.is_some())
        {
            return Err(invalid(
                "etcd TLS: a client certificate goes with its private key: give both or neither"
                    .into(),
            ));
        }
        let root = self.root.trim_end_matches('/');
        if !root.is_empty() {
            check_path("connect", root)?;
        }
        Ok(())
    }

    /// The client options: timeouts, keep-alive, TLS material (read from the files now) and
    /// credentials.
    pub(crate) fn connect_options(&self) -> Result<ConnectOptions, StoreError> {
        self.validate()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.request_timeout)
            .with_timeout(self.request_timeout)
            .with_keep_alive(Duration::from_secs(5), self.request_timeout);
        if let Some(tls) = &self.tls {
            let read = |what: &str, path: &Path| {
                std::fs::read(path).map_err(|e| StoreError::Invalid {
                    op: "connect",
                    path: self.endpoints.join(","),
                    reason: format!("etcd TLS {what} {}: {e}", path.display()),
                })
            };
            let mut t =
                TlsOptions::new().ca_certificate(Certificate::from_pem(read("CA", &tls.ca)?));
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                t = t.identity(Identity::from_pem(
                    read("client certificate", cert)?,
                    read("client key", key)?,
                ));
            }
            options = options.with_tls(t);
        }
        if let Some((name, pw)) = self.user.as_deref().and_then(|u| u.split_once(':')) {
            options = options.with_user(name, pw).with_auto_token_refresh(true);
        }
        Ok(options)
    }
}

/// Counters of one [`EtcdStore`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EtcdStats {
    /// Leases granted after the previous one was found expired.
    pub leases_renewed: u64,
    /// Ephemeral nodes put again under a new lease.
    pub ephemerals_recreated: u64,
    /// Watch streams resumed after an error.
    pub watch_resumes: u64,
    /// Errors of the background tasks (keep-alive, re-creation, watches), each logged.
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    leases_renewed: AtomicU64,
    ephemerals_recreated: AtomicU64,
    watch_resumes: AtomicU64,
    errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Inner {
    client: Client,
    /// The root with no trailing `/` (empty for the whole key space).
    root: String,
    ttl: Duration,
    /// The current lease.
    lease: AtomicI64,
    closed: AtomicBool,
    ephemerals: Mutex<BTreeMap<String, Vec<u8>>>,
    counters: Arc<Counters>,
    /// Dropped with `Inner`: stops the keep-alive task.
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("root", &self.root)
            .field("lease", &self.lease.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The store on etcd v3 (see the module docs). Cheap to clone; clones share the connection
/// and the lease, which is revoked on [`Store::close`] and expires after its TTL once the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

fn unavailable(op: &'static str, path: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        op,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn failed(op: &'static str, path: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    match &e {
        E::GRpcStatus(s) if refuses_identity(s) => StoreError::Denied {
            op,
            path: path.to_owned(),
        },
        E::GRpcStatus(s) if s.code() == Code::InvalidArgument => StoreError::Invalid {
            op,
            path: path.to_owned(),
            reason: s.message().to_owned(),
        },
        E::InvalidArgs(why) => StoreError::Invalid {
            op,
            path: path.to_owned(),
            reason: why.clone(),
        },
        _ => unavailable(op, path, describe(&e)),
    }
}

/// etcd's answers meaning "not as this identity": permission denied, a token refused, no
/// user while auth is enabled (`InvalidArgument` in etcd 3.4), credentials refused.
fn refuses_identity(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated)
        || [USER_EMPTY, AUTH_FAILED]
            .iter()
            .any(|m| s.message().starts_with(m))
}

/// etcd's message when a request carries no user while auth is enabled.
const USER_EMPTY: &str = "etcdserver: user name is empty";
/// etcd's message for an unknown user or a wrong password.
const AUTH_FAILED: &str = "etcdserver: authentication failed";
/// etcd's message when a client authenticates while auth is disabled.
pub(crate) const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";

/// An etcd client error with its causes (a gRPC status says only "transport error"
/// otherwise).
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let (mut out, mut source) = match e {
        etcd_client::Error::GRpcStatus(s) => {
            (format!("{:?}: {}", s.code(), s.message()), s.source())
        }
        etcd_client::Error::TransportError(t) => (t.to_string(), t.source()),
        other => (other.to_string(), None),
    };
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Why connecting failed, naming the user when etcd refused the credentials.
pub(crate) fn connect_failed(config: &EtcdConfig, e: etcd_client::Error) -> StoreError {
    let endpoints = config.endpoints.join(",");
    let user = config.user_name().unwrap_or("anonymous").to_owned();
    match &e {
        etcd_client::Error::GRpcStatus(s) if s.message().starts_with(AUTH_FAILED) => {
            StoreError::Unauthenticated {
                user,
                reason: format!(
                    "etcd at {endpoints} refused the credentials (unknown user or wrong \
                     password): {}",
                    s.message()
                ),
            }
        }
        etcd_client::Error::GRpcStatus(s) if s.message().starts_with(AUTH_NOT_ENABLED) => {
            StoreError::Unauthenticated {
                user,
                reason: format!(
                    "etcd at {endpoints} has authentication disabled: connect without a user, \
                     or enable it (roles and users first: see caas_backends::store::etcd_auth)"
                ),
            }
        }
        etcd_client::Error::GRpcStatus(s) if s.message().starts_with(USER_EMPTY) => {
            StoreError::Unauthenticated {
                user,
                reason: format!(
                    "etcd at {endpoints} has authentication enabled: connect as a user \
                     (user:password)"
                ),
            }
        }
        _ => {
            let mut reason = describe(&e);
            if config.tls.as_ref().is_some_and(|t| t.cert.is_none()) {
                reason.push_str(
                    " (no client certificate is configured: an etcd with --client-cert-auth \
                     drops clients without one)",
                );
            }
            unavailable("connect", &endpoints, reason)
        }
    }
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

impl EtcdStore {
    /// Connects, grants the lease for ephemeral nodes and starts keeping it alive. Needs a
    /// Tokio runtime.
    pub async fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        let options = config.connect_options()?;
        let root = config.root.trim_end_matches('/').to_owned();
        let ttl_secs = i64::try_from(config.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| connect_failed(&config, e))?;
        if config.user.is_none() {
            // etcd grants leases to anyone: find out now whether it demands a user.
            let probe = GetOptions::new().with_count_only();
            match client.get(format!("{root}/"), Some(probe)).await {
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.code() == tonic::Code::PermissionDenied =>
                {
                    // An identity after all (the client certificate's CN), with no read
                    // access there: its own requests will say so.
                }
                Err(e) => return Err(connect_failed(&config, e)),
                Ok(_) => {}
            }
        }
        let lease = client
            .lease_grant(ttl_secs, None)
            .await
            .map_err(|e| connect_failed(&config, e))?
            .id();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            client,
            root,
            ttl: Duration::from_secs(ttl_secs.unsigned_abs()),
            lease: AtomicI64::new(lease),
            closed: AtomicBool::new(false),
            ephemerals: Mutex::new(BTreeMap::new()),
            counters: Arc::default(),
            shutdown,
        });
        tokio::spawn(keep_alive(Arc::downgrade(&inner), shutdown_rx));
        Ok(Self { inner })
    }

    /// The lease holding this store's ephemeral nodes now.
    pub fn lease_id(&self) -> i64 {
        self.inner.lease.load(Ordering::Relaxed)
    }

    /// Counters of this store.
    pub fn stats(&self) -> EtcdStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EtcdStats {
            leases_renewed: get(&c.leases_renewed),
            ephemerals_recreated: get(&c.ephemerals_recreated),
            watch_resumes: get(&c.watch_resumes),
            errors: get(&c.errors),
        }
    }

    /// The underlying client (for tests and tools: compaction, raw reads).
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }

    /// The key of a node path.
    pub fn key(&self, op: &'static str, path: &str) -> Result<String, StoreError> {
        check_path(op, path)?;
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(unavailable(op, path, "the store was closed"));
        }
        Ok(if path == "/" {
            self.inner.root.clone()
        } else {
            format!("{}{path}", self.inner.root)
        })
    }

    /// The node path of a key (`None` for a key outside the root).
    fn path_of(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.inner.root.as_str())?;
        match rest {
            "" => Some("/".to_owned()),
            r if r.starts_with('/') => Some(r.to_owned()),
            _ => None,
        }
    }

    fn lock_ephemerals(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        lock(&self.inner)
    }
}

/// Compares that hold when no key lies under `{key}/` except those in `deleted` (deleted by
/// the same commit): one "no key" compare over each gap between them.
fn no_children_but(key: &str, deleted: &BTreeSet<String>) -> Vec<Compare> {
    let below = format!("{key}/");
    let end = prefix_end(below.as_bytes());
    let mut start = below.clone().into_bytes();
    let mut out = Vec::new();
    let inside = deleted.range::<str, _>((
        std::ops::Bound::Excluded(below.as_str()),
        std::ops::Bound::Unbounded,
    ));
    for child in inside.take_while(|k| k.starts_with(below.as_str())) {
        if start.as_slice() < child.as_bytes() {
            out.push(
                Compare::create_revision(start.clone(), CompareOp::Equal, 0)
                    .with_range(child.as_bytes().to_vec()),
            );
        }
        // The next gap starts right after the child's key.
        start = child.as_bytes().to_vec();
        start.push(0);
    }
    out.push(Compare::create_revision(start, CompareOp::Equal, 0).with_range(end));
    out
}

fn lock(inner: &Inner) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
    // A plain map with no invariant spanning several entries.
    inner
        .ephemerals
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// What the `else` branch read about one op's node.
struct Seen {
    version: Option<i64>,
    has_children: bool,
}

/// Which op failed a refused commit, from the state the `else` branch read.
fn explain(ops: &[Op], seen: &[Seen]) -> StoreError {
    for (index, (op, s)) in ops.iter().zip(seen).enumerate() {
        let want = match op {
            Op::Check { version, .. } => Some(*version),
            Op::Set { version, .. } | Op::Delete { version, .. } => *version,
            Op::Create { .. } => None,
        };
        let kind = match (op, s.version) {
            (Op::Create { .. }, Some(_)) => Some(ConflictKind::NodeExists),
            (Op::Create { .. }, None) => None,
            (_, None) => Some(ConflictKind::NoNode),
            (_, Some(v)) if want.is_some_and(|w| w != v) => Some(ConflictKind::BadVersion),
            (Op::Delete { .. }, Some(_)) if s.has_children => Some(ConflictKind::NotEmpty),
            _ => None,
        };
        if let Some(kind) = kind {
            return StoreError::Conflict {
                index,
                path: op.path().to_owned(),
                kind,
            };
        }
    }
    // Only explained by an earlier op of the same commit.
    StoreError::Conflict {
        index: 0,
        path: ops.first().map_or("", Op::path).to_owned(),
        kind: ConflictKind::BadVersion,
    }
}

impl Store for EtcdStore {
    async fn get(&self, path: &str) -> Result<Option<Versioned>, StoreError> {
        let key = self.key("get", path)?;
        let mut kv = self.inner.client.kv_client();
        let resp = kv
            .get(key, None)
            .await
            .map_err(|e| failed("get", path, e))?;
        Ok(resp.kvs().first().map(|kv| Versioned {
            data: kv.value().to_vec(),
            version: kv.mod_revision(),
        }))
    }

    async fn children(&self, path: &str) -> Result<Vec<String>, StoreError> {
        let key = self.key("children", path)?;
        let prefix = format!("{key}/");
        let mut kv = self.inner.client.kv_client();
        let resp = kv
            .get(
                prefix.as_bytes(),
                Some(
                    GetOptions::new()
                        .with_range(prefix_end(prefix.as_bytes()))
                        .with_keys_only(),
                ),
            )
            .await
            .map_err(|e| failed("children", path, e))?;
        let names: BTreeSet<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let rest = kv.key().strip_prefix(prefix.as_bytes())?;
                let name = rest.split(|b| *b == b'/').next()?;
                (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
            })
            .collect();
        Ok(names.into_iter().collect())
    }

    async fn list(&self, path: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let key = self.key("list", path)?;
        let prefix = format!("{key}/");
        let mut kv = self.inner.client.kv_client();
        let resp = kv
            .get(
                prefix.as_bytes(),
                Some(GetOptions::new().with_range(prefix_end(prefix.as_bytes()))),
            )
            .await
            .map_err(|e| failed("list", path, e))?;
        // Keys come sorted; only direct children are kept.
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = kv.key().strip_prefix(prefix.as_bytes())?;
                let name = std::str::from_utf8(name).ok()?;
                (!name.is_empty() && !name.contains('/')).then(|| {
                    (
                        name.to_owned(),
                        Versioned {
                            data: kv.value().to_vec(),
                            version: kv.mod_revision(),
                        },
                    )
                })
            })
            .collect())
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<Vec<Option<i64>>, StoreError> {
        let Some(first) = ops.first().map(|o| o.path().to_owned()) else {
            return Ok(Vec::new());
        };
        let mut compares = Vec::new();
        let mut then = Vec::new();
        let mut reads = Vec::new();
        // Children deleted by this same commit do not keep their parent from being deleted
        // (etcd evaluates every compare before any delete).
        let mut deleted = BTreeSet::new();
        for op in &ops {
            if let Op::Delete { path, .. } = op {
                deleted.insert(self.key("commit", path)?);
            }
        }
        for op in &ops {
            let key = self.key("commit", op.path())?;
            let exists = || Compare::create_revision(key.as_str(), CompareOp::Greater, 0);
            let at = |v: i64| Compare::mod_revision(key.as_str(), CompareOp::Equal, v);
            match op {
                Op::Check { version, .. } => {
                    compares.extend([exists(), at(*version)]);
                }
                Op::Create { data, .. } => {
                    compares.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, 0));
                    then.push(TxnOp::put(key.as_str(), data.clone(), None));
                }
                Op::Set { data, version, .. } => {
                    compares.push(exists());
                    compares.extend(version.map(at));
                    // An ephemeral node stays attached to its lease.
                    let keep = PutOptions::new().with_ignore_lease();
                    then.push(TxnOp::put(key.as_str(), data.clone(), Some(keep)));
                }
                Op::Delete { version, .. } => {
                    compares.push(exists());
                    compares.extend(version.map(at));
                    compares.extend(no_children_but(&key, &deleted));
                    then.push(TxnOp::delete(key.as_str(), None));
                }
            }
            reads.push(TxnOp::get(
                key.as_str(),
                Some(GetOptions::new().with_keys_only()),
            ));
            if matches!(op, Op::Delete { .. }) {
                let below = format!("{key}/");
                let opts = GetOptions::new()
                    .with_range(prefix_end(below.as_bytes()))
                    .with_keys_only();
                reads.push(TxnOp::get(below.as_str(), Some(opts)));
            }
        }
        let txn = Txn::new().when(compares).and_then(then).or_else(reads);
        let mut kv = self.inner.client.kv_client();
        let resp = kv.txn(txn).await.map_err(|e| failed("commit", &first, e))?;
        if resp.succeeded() {
            let rev = resp.header().map_or(0, |h| h.revision());
            return Ok(ops
                .iter()
                .map(|op| matches!(op, Op::Create { .. } | Op::Set { .. }).then_some(rev))
                .collect());
        }
        let mut responses = resp.op_responses().into_iter();
        let mut seen = Vec::with_capacity(ops.len());
        for op in &ops {
            let version = match responses.next() {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            };
            let has_children = if matches!(op, Op::Delete { .. }) {
                matches!(responses.next(), Some(TxnOpResponse::Get(g))
                    if g.kvs().iter().any(|kv| !deleted.contains(kv.key_str().unwrap_or_default())))
            } else {
                false
            };
            seen.push(Seen {
                version,
                has_children,
            });
        }
        Err(explain(&ops, &seen))
    }

    fn watch(&self, prefix: &str) -> Watch {
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(watch_loop(self.clone(), prefix.to_owned(), tx));
        Watch::new(rx, Some(task))
    }

    async fn create_ephemeral(&self, path: &str, data: &[u8]) -> Result<(), StoreError> {
        let key = self.key("create_ephemeral", path)?;
        {
            let mut owned = self.lock_ephemerals();
            if owned.contains_key(path) {
                return Err(StoreError::Conflict {
                    index: 0,
                    path: path.to_owned(),
                    kind: ConflictKind::NodeExists,
                });
            }
            owned.insert(path.to_owned(), data.to_vec());
        }
        let result = put_if_absent(&self.inner.client, &key, data, self.lease_id()).await;
        let result = match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::Conflict {
                index: 0,
                path: path.to_owned(),
                kind: ConflictKind::NodeExists,
            }),
            Err(e) => Err(failed("create_ephemeral", path, e)),
        };
        if result.is_err() {
            self.lock_ephemerals().remove(path);
        }
        result
    }

    async fn delete_ephemeral(&self, path: &str) -> Result<(), StoreError> {
        let key = self.key("delete_ephemeral", path)?;
        self.lock_ephemerals().remove(path);
        // Only our own key: one put by someone else meanwhile is left alone.
        let txn = Txn::new()
            .when([Compare::lease(
                key.as_str(),
                CompareOp::Equal,
                self.lease_id(),
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let mut kv = self.inner.client.kv_client();
        kv.txn(txn)
            .await
            .map(|_| ())
            .map_err(|e| failed("delete_ephemeral", path, e))
    }

    async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        self.inner.shutdown.send_replace(true);
        let mut lease = self.inner.client.lease_client();
        if let Err(e) = lease.revoke(self.lease_id()).await {
            // The lease expires after its TTL anyway.
            tracing::warn!(error = %e, "etcd: cannot revoke the lease on close; its keys go when it expires");
        }
    }
}

/// Puts `key` under `lease` if it does not exist; `false` when it does.
async fn put_if_absent(
    client: &Client,
    key: &str,
    data: &[u8],
    lease: i64,
) -> Result<bool, etcd_client::Error> {
    let txn = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            data.to_vec(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
    Ok(client.kv_client().txn(txn).await?.succeeded())
}

/// Keeps the lease alive (a keep-alive every third of the TTL). When etcd says the lease is
/// gone, grants a new one and puts every ephemeral node again under it. Holds only a weak
/// reference: dropping the last store ends it.
async fn keep_alive(inner: Weak<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let (client, ttl, id) = (
            strong.client.clone(),
            strong.ttl,
            strong.lease.load(Ordering::Relaxed),
        );
        let counters = strong.counters.clone();
        drop(strong);
        let alive = tokio::select! {
            _ = shutdown.changed() => return,
            r = keep_alive_once(client, id, ttl) => r,
        };
        match alive {
            Ok(true) => {
                backoff = Duration::from_millis(100);
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(ttl / 3) => {}
                }
            }
            Ok(false) => {
                tracing::warn!(
                    lease = id,
                    "etcd: the lease expired; granting a new one and re-creating the ephemeral nodes"
                );
                if let Err(e) = renew(&inner).await {
                    bump(&counters.errors);
                    tracing::warn!(error = %e, "etcd: cannot grant a new lease; retrying");
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            Err(e) => {
                bump(&counters.errors);
                tracing::warn!(lease = id, error = %e, "etcd: lease keep-alive failed; retrying");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One keep-alive round trip: `Ok(false)` when the lease no longer exists.
async fn keep_alive_once(
    mut client: Client,
    id: i64,
    ttl: Duration,
) -> Result<bool, etcd_client::Error> {
    let round = async {
        // Opening the stream sends one keep-alive and reads its answer; the client reports
        // an answer with no TTL left as a keep-alive error: ask etcd what it knows.
        match client.lease_keep_alive(id).await {
            Ok(_) => Ok(true),
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => {
                Ok(client.lease_time_to_live(id, None).await?.ttl() > 0)
            }
            Err(e) => Err(e),
        }
    };
    tokio::time::timeout(ttl, round).await.unwrap_or_else(|_| {
        Err(etcd_client::Error::LeaseKeepAliveError(
            "no keep-alive answer within the TTL".into(),
        ))
    })
}

/// Grants a new lease and puts every owned ephemeral node again under it.
async fn renew(inner: &Weak<Inner>) -> Result<(), etcd_client::Error> {
    let Some(strong) = inner.upgrade() else {
        return Ok(());
    };
    let mut client = strong.client.clone();
    let ttl = i64::try_from(strong.ttl.as_secs()).unwrap_or(i64::MAX);
    let lease = client.lease_grant(ttl, None).await?.id();
    strong.lease.store(lease, Ordering::Relaxed);
    bump(&strong.counters.leases_renewed);
    let owned: Vec<(String, Vec<u8>)> = lock(&strong)
        .iter()
        .map(|(p, d)| (p.clone(), d.clone()))
        .collect();
    for (path, data) in owned {
        let key = format!("{}{path}", strong.root);
        match put_if_absent(&client, &key, &data, lease).await {
            Ok(true) => bump(&strong.counters.ephemerals_recreated),
            Ok(false) => {
                bump(&strong.counters.errors);
                tracing::error!(%path, "etcd: cannot re-create an ephemeral node: someone else's key is there");
            }
            Err(e) => {
                bump(&strong.counters.errors);
                tracing::error!(%path, error = %e, "etcd: cannot re-create an ephemeral node under the new lease");
            }
        }
    }
    Ok(())
}

/// Feeds a watch: Resync once set, then every event under `prefix`, resuming after any
/// error from the revision after the last delivered event. Ends when the receiver is
/// dropped or the store closed.
async fn watch_loop(store: EtcdStore, prefix: String, tx: mpsc::Sender<WatchEvent>) {
    let prefix = prefix.trim_end_matches('/').to_owned();
    let prefix = if prefix.is_empty() {
        "/".to_owned()
    } else {
        prefix
    };
    let Ok(key) = store.key("watch", &prefix) else {
        tracing::error!(%prefix, "store watch: invalid prefix");
        return;
    };
    // The whole tree is `{root}/...`: the root key itself is never a node written by caas,
    // and a gateway's read access is the `{root}/` prefix (see `etcd_auth`).
    let key = if prefix == "/" {
        format!("{key}/")
    } else {
        key
    };
    // The next revision to watch from; `None`: from now, after a Resync.
    let mut next: Option<i64> = None;
    let mut backoff = Duration::from_millis(100);
    let counters = store.inner.counters.clone();
    loop {
        if tx.is_closed() || store.inner.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut established = false;
        let mut shutdown = store.inner.shutdown.subscribe();
        let outcome = tokio::select! {
            _ = shutdown.wait_for(|closed| *closed) => return,
            o = watch_once(&store, &prefix, &key, &mut next, &mut established, &tx) => o,
        };
        if established {
            backoff = Duration::from_millis(100);
        }
        match outcome {
            Ok(Stop::Receiver) => return,
            Ok(Stop::Compacted(rev)) => {
                tracing::warn!(%prefix, rev, "store watch: resume revision compacted; resyncing");
                next = None;
                continue;
            }
            Ok(Stop::Ended) => {}
            Ok(Stop::Canceled(reason)) => {
                bump(&counters.errors);
                tracing::error!(%prefix, %reason, "store watch: etcd canceled the watch; setting it again");
            }
            Err(e) => {
                bump(&counters.errors);
                tracing::warn!(%prefix, error = %e, "store watch: stream failed; resuming");
            }
        }
        bump(&counters.watch_resumes);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

enum Stop {
    Receiver,
    Compacted(i64),
    /// Canceled by etcd for another reason than a compaction (permission denied).
    Canceled(String),
    Ended,
}

async fn watch_once(
    store: &EtcdStore,
    prefix: &str,
    key: &str,
    next: &mut Option<i64>,
    established: &mut bool,
    tx: &mpsc::Sender<WatchEvent>,
) -> Result<Stop, etcd_client::Error> {
    let mut client = store.inner.client.clone();
    let resync = next.is_none();
    let start = match *next {
        Some(rev) => rev,
        None => {
            // Where "now" is: the watch starts right after this read.
            let resp = client
                .get(key, Some(GetOptions::new().with_count_only()))
                .await?;
            resp.header().map_or(0, |h| h.revision()) + 1
        }
    };
    let options = WatchOptions::new()
        .with_range(prefix_end(key.as_bytes()))
        .with_start_revision(start);
    let mut stream = client.watch(key, Some(options)).await?;
    while let Some(resp) = stream.message().await? {
        if resp.compact_revision() > 0 {
            return Ok(Stop::Compacted(resp.compact_revision()));
        }
        if resp.canceled() {
            return Ok(Stop::Canceled(resp.cancel_reason().to_owned()));
        }
        if !*established {
            // The first answer: etcd accepted the watch (until then a failure starts over,
            // Resync included).
            *established = true;
            *next = Some(start);
            if resync && tx.send(WatchEvent::Resync).await.is_err() {
                return Ok(Stop::Receiver);
            }
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            *next = Some(kv.mod_revision() + 1);
            let Some(path) = store.path_of(kv.key()) else {
                continue;
            };
            if !is_under(prefix, &path) {
                continue;
            }
            // A deletion resets a key's version to 0; every live key has 1 or more.
            // (`Event::event_type` would panic on a type it does not know.)
            let event = if kv.version() == 0 {
                WatchEvent::Deleted(path)
            } else {
                WatchEvent::Changed(path)
            };
            if tx.send(event).await.is_err() {
                return Ok(Stop::Receiver);
            }
        }
    }
    Ok(Stop::Ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(config: &EtcdConfig) -> String {
        match config.validate() {
            Err(StoreError::Invalid { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_endpoint_list_is_split_trimmed_and_checked() {
        let c = EtcdConfig::from_endpoint_list(" http://10.0.0.1:2379,http://10.0.0.2:2379 ,,");
        assert_eq!(
            c.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert!(c.validate().is_ok());
        assert_eq!(
            refusal(&EtcdConfig::from_endpoint_list(" , ")),
            "no etcd endpoint"
        );
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let tls = EtcdTlsConfig {
            ca: "ca.pem".into(),
            cert: None,
            key: None,
        };
        let https = EtcdConfig::from_endpoint_list("https://e:2379");
        assert!(
            refusal(&https).contains("needs the CA"),
            "{}",
            refusal(&https)
        );
        assert!(https.clone().with_tls(tls.clone()).validate().is_ok());
        let plain = EtcdConfig::from_endpoint_list("http://e:2379").with_tls(tls.clone());
        assert!(
            refusal(&plain).contains("https:// URLs"),
            "{}",
            refusal(&plain)
        );
        let no_password = EtcdConfig::from_endpoint_list("http://e:2379").with_user("gw");
        assert!(refusal(&no_password).contains("user:password"));
        let half_identity = https.with_tls(EtcdTlsConfig {
            cert: Some("c.pem".into()),
            ..tls
        });
        assert!(half_identity.validate().is_err());
    }
}
