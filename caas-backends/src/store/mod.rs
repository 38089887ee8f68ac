//! The store contract the control plane is written against: versioned reads, children
//! listing, an all-or-nothing transaction with version checks (compare-and-set is a one-op
//! commit), ephemeral nodes tied to a session or lease, and watches on a prefix.
//!
//! It is deliberately small so that each control store can implement it:
//!
//! | contract | ZooKeeper ([`ZkStore`]) | etcd v3 ([`EtcdStore`]) | Consul (not implemented) |
//! |---|---|---|---|
//! | node | znode under the chroot | key `{root}{path}` (root `/caas`) | key `{root}{path}` in the KV store |
//! | version | data version (0, +1 per write) | `mod_revision` (cluster-wide, > 0) | `ModifyIndex` |
//! | create if absent | `create` | compare `mod_revision == 0` | check-and-set with `cas=0` |
//! | set / delete at version | `setData` / `delete` with version | compare `mod_revision == v` | `cas=v` / `delete-cas` |
//! | [`Store::commit`] | one `multi` | one `Txn` (compares, then puts/deletes; else ranges to find the failing op) | one `/v1/txn` (`check-index`, `cas`, `delete-cas` verbs; at most 64 ops) |
//! | children | `getChildren` | range over `{key}/`, next path segment | `?keys&separator=/` |
//! | list (children with data) | `getChildren`, then `getData` of each, pipelined | one range over `{key}/` | `?recurse`, direct children kept |
//! | ephemeral | ephemeral znode of the session | key attached to the store's lease, kept alive | key acquired by a session with a TTL, renewed (`/v1/session/renew`), `behavior=delete` |
//! | watch | persistent recursive watch, set again after a reconnect | prefix watch resumed from the last revision seen + 1 | blocking query on the prefix (`?recurse&index=N`), resumed from the last `X-Consul-Index` |
//! | [`WatchEvent::Deleted`] | a `NodeDeleted` event | a `DELETE` event | a key missing from the next answer |
//! | [`WatchEvent::Resync`] | every (re)set of the watch | first set; the resume revision was compacted | first query; the index went backwards (a snapshot restore) |
//!
//! [`MemStore`] is an in-memory implementation with ZooKeeper's semantics, for tests that
//! need to inject a lost reply or a stale read, which a real server cannot be made to produce
//! on demand.
//!
//! Paths are absolute within the store's root (a ZooKeeper chroot, an etcd key prefix),
//! `/`-separated, like `/hosts/h1/assignments/i1`. The layout under the root is the same on
//! every store.
//!
//! What the contract promises (and the scheduler relies on):
//!
//! - A [`Versioned`] read gives the node's data and its version; any later write to the node
//!   changes the version. Versions are opaque: compare them only with versions read from the
//!   same store.
//! - [`Store::commit`] applies every [`Op`] or none. A failed check, a `Create` of an existing
//!   node, or a `Set` / `Delete` of a missing or changed node is a [`StoreError::Conflict`]
//!   and nothing was written. Any other error leaves the outcome **unknown** (the request may
//!   have been applied and its reply lost): the caller must read again before deciding.
//! - Reads made after a successful commit (through the same store) see it.
//! - An ephemeral node ([`Store::create_ephemeral`]) lives as long as the handle's session
//!   or lease. When the store loses it (a partition longer than the session timeout or the
//!   lease TTL), the node disappears for everyone, and the store creates it again with the
//!   same data in its new session or lease. [`Store::close`] ends it for good.
//! - A [`Watch`] reports paths that changed under its prefix, in order, each as created or
//!   changed ([`WatchEvent::Changed`]) or deleted ([`WatchEvent::Deleted`]), and
//!   [`WatchEvent::Resync`] whenever events may have been missed (first set, reconnect, new
//!   session, compaction): then the caller reads everything again. A change is never lost:
//!   it is reported, or a Resync follows it.
//!
//! Where the stores differ (callers must not rely on either behaviour):
//!
//! - **Parents.** ZooKeeper has a real tree: `Create` makes missing parents (empty nodes),
//!   and they stay. etcd keys are flat: a parent exists only if it was written itself;
//!   [`Store::children`] lists the next path segment of every key below, so a parent that
//!   was never written is still listed by its own parent, but reading it gives `None`.
//! - **Deleting a parent.** Both refuse to delete a node that has children
//!   ([`ConflictKind::NotEmpty`]); on etcd a never-written parent cannot be deleted
//!   (`NoNode`), it vanishes with its last child.
//! - **One commit, one node.** etcd refuses a commit that writes the same key twice
//!   ([`StoreError::Invalid`]); ZooKeeper applies the writes in order.
//! - **Which op failed.** etcd evaluates every check at once; when the failing op can only be
//!   explained by an earlier op of the same commit, the conflict names op 0.

mod any;
mod backoff;
mod certs;
mod discovery;
mod etcd;
pub mod etcd_auth;
mod follow;
mod memory;
mod zk;

use std::future::Future;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use any::{AnyStore, StoreConfig};
pub(crate) use backoff::{conflict_backoff, random};
pub use certs::{CertSourceStats, StoreCertSource};
pub use discovery::{StoreDiscovery, StoreDiscoveryCounters, StoreDiscoveryStats};
pub use etcd::{EtcdConfig, EtcdStats, EtcdStore, EtcdTlsConfig};
pub use etcd_auth::EtcdAdmin;
pub use memory::MemStore;
pub use zk::ZkStore;

/// A node's data and the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The node's data.
    pub data: Vec<u8>,
    /// The version a conditional write must name to succeed.
    pub version: i64,
}

/// One operation of a [`Store::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Fails the commit unless the node exists at `version`.
    Check {
        /// The node.
        path: String,
        /// The version it must have.
        version: i64,
    },
    /// Creates a persistent node; fails the commit if it exists. Missing parents are created
    /// (empty) by the store, outside the all-or-nothing unit: they are harmless when the
    /// commit fails.
    Create {
        /// The node.
        path: String,
        /// Its data.
        data: Vec<u8>,
    },
    /// Replaces a node's data; fails the commit if the node is missing or, with `version`,
    /// not at that version.
    Set {
        /// The node.
        path: String,
        /// The new data.
        data: Vec<u8>,
        /// The version the node must have (`None`: any).
        version: Option<i64>,
    },
    /// Deletes a node without children; fails the commit if it is missing, has children or,
    /// with `version`, is not at that version.
    Delete {
        /// The node.
        path: String,
        /// The version the node must have (`None`: any).
        version: Option<i64>,
    },
}

impl Op {
    /// The node the operation is about.
    pub fn path(&self) -> &str {
        match self {
            Op::Check { path, .. }
            | Op::Create { path, .. }
            | Op::Set { path, .. }
            | Op::Delete { path, .. } => path,
        }
    }
}

/// Why one operation made a commit fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    /// The node is not at the expected version.
    BadVersion,
    /// The node (or, for a `Create`, its parent) does not exist.
    NoNode,
    /// `Create` of a node that exists.
    NodeExists,
    /// `Delete` of a node that has children.
    NotEmpty,
}

impl std::fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConflictKind::BadVersion => "changed meanwhile (version check failed)",
            ConflictKind::NoNode => "does not exist",
            ConflictKind::NodeExists => "already exists",
            ConflictKind::NotEmpty => "has children",
        })
    }
}

/// What can go wrong with a store call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A commit was refused because operation `index` found its node changed: nothing was
    /// written. Read again, decide again, retry.
    #[error("commit refused: op {index} on {path}: node {kind}")]
    Conflict {
        /// Index of the failing operation in the commit.
        index: usize,
        /// Its node.
        path: String,
        /// What was wrong.
        kind: ConflictKind,
    },
    /// The store could not be reached or the request failed in flight. For a commit the
    /// outcome is unknown: it may have been applied.
    #[error("store {op} {path}: {reason}")]
    Unavailable {
        /// The call (`get`, `children`, `commit`, `watch`).
        op: &'static str,
        /// The node (for a commit, the first op's).
        path: String,
        /// What the client reported.
        reason: String,
    },
    /// This identity may not read or write the node.
    #[error("store {op} {path}: permission denied")]
    Denied {
        /// The call.
        op: &'static str,
        /// The node.
        path: String,
    },
    /// The store refused this process's credentials, or demands some and none were given
    /// (etcd: unknown user or wrong password, auth enabled for an anonymous client, a user
    /// given while auth is disabled).
    #[error("store connect as {user}: {reason}")]
    Unauthenticated {
        /// The user (`anonymous` without credentials).
        user: String,
        /// What the store said, and where.
        reason: String,
    },
    /// The request itself is malformed (bad path, version out of range).
    #[error("store {op} {path}: invalid request: {reason}")]
    Invalid {
        /// The call.
        op: &'static str,
        /// The node.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// A store call failed, or a node holds something its reader cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A node holds something that cannot be used.
    #[error("{path}: {reason}")]
    Bad {
        /// The node.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl NodeError {
    /// A node whose data cannot be used.
    pub fn bad(path: &str, reason: impl std::fmt::Display) -> Self {
        NodeError::Bad {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

impl StoreError {
    /// Whether a commit that failed with this error may nevertheless have been applied.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// A change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The node at this path was created or its data changed: read it for the data.
    Changed(String),
    /// The node at this path was deleted. Nothing to read back: if it is created again,
    /// a later `Changed` says so.
    Deleted(String),
    /// Events may have been missed (the watch was just set, or set again after a reconnect
    /// or a new session): read everything again.
    Resync,
}

impl WatchEvent {
    /// The path of a `Changed` or `Deleted` event.
    pub fn path(&self) -> Option<&str> {
        match self {
            WatchEvent::Changed(p) | WatchEvent::Deleted(p) => Some(p),
            WatchEvent::Resync => None,
        }
    }
}

/// The event stream of [`Store::watch`]. Dropping it stops the watch.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<WatchEvent>,
    task: Option<JoinHandle<()>>,
}

impl Watch {
    /// A watch fed by `rx`; `task` (if any) is aborted when the watch is dropped.
    pub fn new(rx: mpsc::Receiver<WatchEvent>, task: Option<JoinHandle<()>>) -> Self {
        Self { rx, task }
    }

    /// The next event; `None` once the store is closed for good.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        self.rx.recv().await
    }

    /// An event that is already queued, without waiting.
    pub fn try_next(&mut self) -> Option<WatchEvent> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A versioned, transactional, watchable tree of nodes (see the module docs for the
/// guarantees). Cheap to clone; clones share the connection.
pub trait Store: Clone + Send + Sync + 'static {
    /// Reads a node; `None` when it does not exist.
    fn get(&self, path: &str)
    -> impl Future<Output = Result<Option<Versioned>, StoreError>> + Send;

    /// The names (not paths) of a node's children, sorted; a missing node has none.
    fn children(&self, path: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Every child of `path` that exists as a node, by name (sorted), with its data and
    /// version; a missing node has none. One range read on etcd; on ZooKeeper the children
    /// and then every child's data, all requests in flight at once (a child deleted in
    /// between is left out). On etcd a never-written parent is not a node, so it is listed
    /// by [`Store::children`] but not here.
    fn list(
        &self,
        path: &str,
    ) -> impl Future<Output = Result<Vec<(String, Versioned)>, StoreError>> + Send;

    /// Applies every op or none (see [`Op`] and [`StoreError::Conflict`]). On success, one
    /// entry per op: the node's new version for `Create` and `Set`, `None` for the others.
    fn commit(
        &self,
        ops: Vec<Op>,
    ) -> impl Future<Output = Result<Vec<Option<i64>>, StoreError>> + Send;

    /// Starts watching every node under `prefix` (the prefix node included). The first
    /// event is [`WatchEvent::Resync`] once the watch is set.
    fn watch(&self, prefix: &str) -> Watch;

    /// Creates an ephemeral node owned by this handle's session (ZooKeeper) or lease (etcd),
    /// with missing parents as [`Op::Create`] does. It disappears when the session or lease
    /// is lost or closed; after a loss the store creates it again, with the same data, in
    /// its new session or lease. A node that exists (ephemeral or not, ours or not) is a
    /// [`ConflictKind::NodeExists`] conflict and is never overwritten.
    fn create_ephemeral(
        &self,
        path: &str,
        data: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stops re-creating an ephemeral node of this handle and deletes it (a missing node is
    /// fine).
    fn delete_ephemeral(&self, path: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Ends this handle's session or lease now: its ephemeral nodes disappear at once and
    /// later calls fail with [`StoreError::Unavailable`]. Other clones share the session, so
    /// they are closed too.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// Creates the node with `data`, or replaces its data whatever its version (last writer
/// wins). Retries when the node appears or disappears meanwhile.
pub async fn put<S: Store>(store: &S, path: &str, data: &[u8]) -> Result<(), StoreError> {
    let mut last = None;
    for _ in 0..10 {
        let op = match store.get(path).await? {
            Some(_) => Op::Set {
                path: path.to_owned(),
                data: data.to_vec(),
                version: None,
            },
            None => Op::Create {
                path: path.to_owned(),
                data: data.to_vec(),
            },
        };
        match store.commit(vec![op]).await {
            Ok(_) => return Ok(()),
            Err(e @ StoreError::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| StoreError::Invalid {
        op: "put",
        path: path.to_owned(),
        reason: "no attempt made".into(),
    }))
}

/// Creates an ephemeral node of this handle like [`Store::create_ephemeral`], but replaces
/// a node another session or lease holds at `path` (a previous run of the same identity —
/// an agent's host id, a gateway's id — whose session has not timed out yet): one identity
/// belongs to one live process. Returns whether a node was replaced; the caller says so.
pub async fn claim_ephemeral<S: Store>(
    store: &S,
    path: &str,
    data: &[u8],
) -> Result<bool, StoreError> {
    match store.create_ephemeral(path, data).await {
        Err(StoreError::Conflict {
            kind: ConflictKind::NodeExists,
            ..
        }) => {}
        other => return other.map(|()| false),
    }
    delete_if_present(store, path).await?;
    store.create_ephemeral(path, data).await.map(|()| true)
}

/// Deletes a node whatever its version; a missing node is fine.
pub async fn delete_if_present<S: Store>(store: &S, path: &str) -> Result<(), StoreError> {
    let op = Op::Delete {
        path: path.to_owned(),
        version: None,
    };
    match store.commit(vec![op]).await {
        Ok(_)
        | Err(StoreError::Conflict {
            kind: ConflictKind::NoNode,
            ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// [`Store::list`] as `children` and then a `get` of each, all in flight at once: for stores
/// with no cheaper way.
pub(crate) async fn list_by_gets<S: Store>(
    store: &S,
    path: &str,
) -> Result<Vec<(String, Versioned)>, StoreError> {
    let names = store.children(path).await?;
    let base = if path == "/" { "" } else { path };
    let paths: Vec<String> = names.iter().map(|n| format!("{base}/{n}")).collect();
    let reads = futures_util::future::join_all(paths.iter().map(|p| store.get(p))).await;
    let mut out = Vec::with_capacity(names.len());
    for (name, read) in names.into_iter().zip(reads) {
        if let Some(v) = read? {
            out.push((name, v));
        }
    }
    Ok(out)
}

/// Deletes a node and everything under it (children first), each delete unconditional.
/// Not atomic; a node deleted meanwhile is fine.
pub async fn delete_tree<S: Store>(store: &S, path: &str) -> Result<(), StoreError> {
    let mut stack = vec![path.to_owned()];
    let mut order = Vec::new();
    while let Some(p) = stack.pop() {
        for c in store.children(&p).await? {
            stack.push(format!("{p}/{c}"));
        }
        order.push(p);
    }
    for p in order.iter().rev() {
        delete_if_present(store, p).await?;
    }
    Ok(())
}

/// Checks that `path` is absolute, `/`-separated, without empty segments.
pub(crate) fn check_path(op: &'static str, path: &str) -> Result<(), StoreError> {
    let ok = path.starts_with('/') && (path == "/" || !path.ends_with('/')) && !path.contains("//");
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            op,
            path: path.to_owned(),
            reason: "not an absolute /-separated path".into(),
        })
    }
}

/// Whether `path` is `prefix` or below it: what a watch on `prefix` reports (`/` holds
/// every path).
pub(crate) fn is_under(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('/'))
}

/// The parent of a node path (`/a/b` → `/a`; `/a` → `/`).
pub(crate) fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}
