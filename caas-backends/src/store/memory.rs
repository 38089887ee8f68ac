//! [`MemStore`]: the [`Store`] contract in memory, with ZooKeeper's semantics (per-node data
//! versions from 0, +1 per write; ops of a commit applied in order, all or none).
//!
//! Besides embedding and fast tests, it can do what a real server cannot be made to do on
//! demand: [`MemStore::lose_replies`] applies a commit and then reports it failed (a reply
//! lost in a leader change), and [`MemStore::stale_reads`] serves reads from the state
//! before the last commit (a lagging follower).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{broadcast, mpsc};

use super::{
    ConflictKind, Op, Store, StoreError, Versioned, Watch, WatchEvent, check_path, is_under, parent,
};

type Tree = BTreeMap<String, Versioned>;

#[derive(Debug, Default)]
struct State {
    tree: Tree,
    /// The tree before the last commit, served to reads while `stale` is on.
    previous: Option<Tree>,
    stale: bool,
    lose_replies: usize,
    /// Ephemeral node → the session that owns it.
    owners: BTreeMap<String, u64>,
    next_session: u64,
}

/// A session of a [`MemStore`] handle: it owns the ephemeral nodes created through it.
#[derive(Debug, Default)]
struct Session {
    id: u64,
    closed: AtomicBool,
    /// Nodes read ([`Store::get`]) through this session's handles.
    gets: AtomicU64,
}

/// An in-memory store (see the module docs). Clones share the tree and the session;
/// [`MemStore::new_session`] gives a handle on the same tree with a session of its own.
#[derive(Debug, Clone)]
pub struct MemStore {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<WatchEvent>,
    session: Arc<Session>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            events: broadcast::Sender::new(4096),
            session: Arc::default(),
        }
    }

    /// A handle on the same tree with its own session (as another process connecting).
    pub fn new_session(&self) -> Self {
        let id = {
            let mut s = self.lock();
            s.next_session += 1;
            s.next_session
        };
        Self {
            state: self.state.clone(),
            events: self.events.clone(),
            session: Arc::new(Session {
                id,
                ..Session::default()
            }),
        }
    }

    fn open(&self, op: &'static str, path: &str) -> Result<(), StoreError> {
        if self.session.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable {
                op,
                path: path.to_owned(),
                reason: "the session is closed".into(),
            });
        }
        Ok(())
    }

    fn notify(&self, changed: Vec<WatchEvent>) {
        for event in changed {
            // No receiver is fine: nobody watches.
            let _ = self.events.send(event);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every mutation below is completed before the guard is released.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many nodes were read ([`Store::get`], which [`Store::list`] uses too) through
    /// this handle, its clones and no other session: what a reader costs the store.
    pub fn gets(&self) -> u64 {
        self.session.gets.load(Ordering::Relaxed)
    }

    /// The next `n` commits that succeed are applied but reported as
    /// [`StoreError::Unavailable`], as when the reply is lost.
    pub fn lose_replies(&self, n: usize) {
        self.lock().lose_replies = n;
    }

    /// While on, reads see the tree as it was before the most recent commit (a follower one
    /// transaction behind); commits still check against the latest state.
    pub fn stale_reads(&self, on: bool) {
        let mut s = self.lock();
        s.stale = on;
        if !on {
            s.previous = None;
        }
    }

    /// Every node's path and data, for assertions.
    pub fn dump(&self) -> BTreeMap<String, Vec<u8>> {
        self.lock()
            .tree
            .iter()
            .map(|(k, v)| (k.clone(), v.data.clone()))
            .collect()
    }

    fn read_tree<T>(&self, f: impl FnOnce(&Tree) -> T) -> T {
        let s = self.lock();
        match (&s.previous, s.stale) {
            (Some(prev), true) => f(prev),
            _ => f(&s.tree),
        }
    }
}

fn conflict(index: usize, path: &str, kind: ConflictKind) -> StoreError {
    StoreError::Conflict {
        index,
        path: path.to_owned(),
        kind,
    }
}

fn has_children(tree: &Tree, path: &str) -> bool {
    let prefix = format!("{}/", path.trim_end_matches('/'));
    tree.range(prefix.clone()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(&prefix))
}

/// Applies `ops` to `tree` in order; on error `tree` is left partly changed (the caller
/// works on a copy).
fn apply(
    tree: &mut Tree,
    ops: &[Op],
    changed: &mut Vec<WatchEvent>,
) -> Result<Vec<Option<i64>>, StoreError> {
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        check_path("commit", op.path())?;
        let version_ok = |tree: &Tree, path: &str, want: Option<i64>| match tree.get(path) {
            None => Err(conflict(i, path, ConflictKind::NoNode)),
            Some(v) if want.is_some_and(|w| w != v.version) => {
                Err(conflict(i, path, ConflictKind::BadVersion))
            }
            Some(v) => Ok(v.version),
        };
        match op {
            Op::Check { path, version } => {
                version_ok(tree, path, Some(*version))?;
                out.push(None);
            }
            Op::Create { path, data } => {
                if path == "/" || tree.contains_key(path) {
                    return Err(conflict(i, path, ConflictKind::NodeExists));
                }
                let mut p = parent(path);
                while p != "/" && !tree.contains_key(p) {
                    tree.insert(
                        p.to_owned(),
                        Versioned {
                            data: Vec::new(),
                            version: 0,
                        },
                    );
                    changed.push(WatchEvent::Changed(p.to_owned()));
                    p = parent(p);
                }
                tree.insert(
                    path.clone(),
                    Versioned {
                        data: data.clone(),
                        version: 0,
                    },
                );
                changed.push(WatchEvent::Changed(path.clone()));
                out.push(Some(0));
            }
            Op::Set {
                path,
                data,
                version,
            } => {
                let v = version_ok(tree, path, *version)? + 1;
                tree.insert(
                    path.clone(),
                    Versioned {
                        data: data.clone(),
                        version: v,
                    },
                );
                changed.push(WatchEvent::Changed(path.clone()));
                out.push(Some(v));
            }
            Op::Delete { path, version } => {
                version_ok(tree, path, *version)?;
                if has_children(tree, path) {
                    return Err(conflict(i, path, ConflictKind::NotEmpty));
                }
                tree.remove(path);
                changed.push(WatchEvent::Deleted(path.clone()));
                out.push(None);
            }
        }
    }
    Ok(out)
}

impl Store for MemStore {
    async fn get(&self, path: &str) -> Result<Option<Versioned>, StoreError> {
        check_path("get", path)?;
        self.open("get", path)?;
        self.session.gets.fetch_add(1, Ordering::Relaxed);
        Ok(self.read_tree(|t| t.get(path).cloned()))
    }

    async fn children(&self, path: &str) -> Result<Vec<String>, StoreError> {
        check_path("children", path)?;
        self.open("children", path)?;
        let prefix = if path == "/" {
            "/".to_owned()
        } else {
            format!("{path}/")
        };
        Ok(self.read_tree(|t| {
            t.range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter_map(|(k, _)| {
                    let rest = &k[prefix.len()..];
                    (!rest.contains('/')).then(|| rest.to_owned())
                })
                .collect()
        }))
    }

    async fn list(&self, path: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        super::list_by_gets(self, path).await
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<Vec<Option<i64>>, StoreError> {
        self.open("commit", ops.first().map_or("", Op::path))?;
        let mut changed = Vec::new();
        let (result, lost) = {
            let mut s = self.lock();
            let mut next = s.tree.clone();
            match apply(&mut next, &ops, &mut changed) {
                Ok(out) => {
                    s.owners.retain(|path, _| next.contains_key(path));
                    let before = std::mem::replace(&mut s.tree, next);
                    if s.stale {
                        s.previous = Some(before);
                    }
                    let lost = s.lose_replies > 0;
                    s.lose_replies = s.lose_replies.saturating_sub(1);
                    (Ok(out), lost)
                }
                Err(e) => {
                    changed.clear();
                    (Err(e), false)
                }
            }
        };
        self.notify(changed);
        if lost {
            return Err(StoreError::Unavailable {
                op: "commit",
                path: ops.first().map_or("", Op::path).to_owned(),
                reason: "connection lost before the reply (injected)".into(),
            });
        }
        result
    }

    fn watch(&self, prefix: &str) -> Watch {
        let (tx, rx) = mpsc::channel(1024);
        let mut events = self.events.subscribe();
        let prefix = prefix.to_owned();
        let task = tokio::spawn(async move {
            if tx.send(WatchEvent::Resync).await.is_err() {
                return;
            }
            loop {
                let event = match events.recv().await {
                    Ok(event) => {
                        if !event.path().is_some_and(|path| is_under(&prefix, path)) {
                            continue;
                        }
                        event
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => WatchEvent::Resync,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Watch::new(rx, Some(task))
    }

    async fn create_ephemeral(&self, path: &str, data: &[u8]) -> Result<(), StoreError> {
        check_path("create_ephemeral", path)?;
        self.open("create_ephemeral", path)?;
        let mut changed = Vec::new();
        {
            let mut s = self.lock();
            let mut next = s.tree.clone();
            let create = Op::Create {
                path: path.to_owned(),
                data: data.to_vec(),
            };
            apply(&mut next, &[create], &mut changed)?;
            s.tree = next;
            s.owners.insert(path.to_owned(), self.session.id);
        }
        self.notify(changed);
        Ok(())
    }

    async fn delete_ephemeral(&self, path: &str) -> Result<(), StoreError> {
        check_path("delete_ephemeral", path)?;
        self.open("delete_ephemeral", path)?;
        let removed = {
            let mut s = self.lock();
            let ours = s.owners.get(path) == Some(&self.session.id);
            ours && {
                s.owners.remove(path);
                s.tree.remove(path).is_some()
            }
        };
        if removed {
            self.notify(vec![WatchEvent::Deleted(path.to_owned())]);
        }
        Ok(())
    }

    async fn close(&self) {
        self.session.closed.store(true, Ordering::Relaxed);
        let removed: Vec<WatchEvent> = {
            let mut s = self.lock();
            let id = self.session.id;
            let owned: Vec<String> = s
                .owners
                .iter()
                .filter(|(_, owner)| **owner == id)
                .map(|(p, _)| p.clone())
                .collect();
            for p in &owned {
                s.owners.remove(p);
                s.tree.remove(p);
            }
            owned.into_iter().map(WatchEvent::Deleted).collect()
        };
        self.notify(removed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(path: &str, data: &str) -> Op {
        Op::Create {
            path: path.into(),
            data: data.into(),
        }
    }

    #[tokio::test]
    async fn commits_are_all_or_nothing_with_versions() {
        let s = MemStore::new();
        assert_eq!(
            s.commit(vec![create("/a/b", "1"), create("/a/c", "2")])
                .await
                .unwrap(),
            vec![Some(0), Some(0)]
        );
        assert_eq!(s.children("/a").await.unwrap(), vec!["b", "c"]);
        assert_eq!(s.children("/").await.unwrap(), vec!["a"]);
        assert_eq!(s.children("/nope").await.unwrap(), Vec::<String>::new());
        let set = |v| Op::Set {
            path: "/a/b".into(),
            data: b"x".to_vec(),
            version: v,
        };
        assert_eq!(s.commit(vec![set(Some(0))]).await.unwrap(), vec![Some(1)]);
        // A stale version fails the whole commit: the create before it is not applied.
        let e = s
            .commit(vec![create("/a/d", "3"), set(Some(0))])
            .await
            .unwrap_err();
        assert_eq!(e, conflict(1, "/a/b", ConflictKind::BadVersion));
        assert!(s.get("/a/d").await.unwrap().is_none());
        let got = s.get("/a/b").await.unwrap().unwrap();
        assert_eq!((got.data, got.version), (b"x".to_vec(), 1));
        for (ops, kind) in [
            (vec![create("/a/b", "")], ConflictKind::NodeExists),
            (
                vec![Op::Delete {
                    path: "/a".into(),
                    version: None,
                }],
                ConflictKind::NotEmpty,
            ),
            (
                vec![Op::Check {
                    path: "/zz".into(),
                    version: 0,
                }],
                ConflictKind::NoNode,
            ),
        ] {
            match s.commit(ops).await {
                Err(StoreError::Conflict { kind: k, .. }) => assert_eq!(k, kind),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            s.get("bad").await,
            Err(StoreError::Invalid { .. })
        ));
    }

    #[tokio::test]
    async fn lost_replies_and_stale_reads() {
        let s = MemStore::new();
        s.lose_replies(1);
        let e = s.commit(vec![create("/x", "1")]).await.unwrap_err();
        assert!(e.outcome_unknown(), "{e}");
        assert!(s.get("/x").await.unwrap().is_some(), "applied all the same");
        s.stale_reads(true);
        s.commit(vec![create("/y", "1")]).await.unwrap();
        assert!(s.get("/y").await.unwrap().is_none(), "read lags one commit");
        assert!(
            s.commit(vec![create("/y", "2")]).await.is_err(),
            "commits check the latest state"
        );
        s.stale_reads(false);
        assert!(s.get("/y").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn watch_reports_changes_under_the_prefix() {
        let s = MemStore::new();
        let mut w = s.watch("/hosts");
        assert_eq!(w.next().await, Some(WatchEvent::Resync));
        s.commit(vec![create("/other", ""), create("/hosts/h1", "")])
            .await
            .unwrap();
        assert_eq!(w.next().await, Some(WatchEvent::Changed("/hosts".into())));
        assert_eq!(
            w.next().await,
            Some(WatchEvent::Changed("/hosts/h1".into()))
        );
    }
}
