//! [`ZkStore`]: the [`Store`] contract over a [`ZkSession`]: data versions are ZooKeeper's
//! node data versions, a commit is one `multi`, a watch is a persistent recursive watch set
//! again after every reconnect and every new session.

use std::time::Duration;

use tokio::sync::mpsc;
use zookeeper_client::{
    Acls, AddWatchMode, Client, CreateMode, EventType, MultiWriteError, MultiWriteResult,
    SessionState,
};

use super::{
    ConflictKind, Op, Store, StoreError, Versioned, Watch, WatchEvent, check_path, parent,
};
use crate::zk::{ZkError, ZkSession};

/// The store on ZooKeeper (paths are relative to the session's chroot).
#[derive(Debug, Clone)]
pub struct ZkStore {
    session: ZkSession,
}

impl ZkStore {
    /// A store using `session`.
    pub fn new(session: ZkSession) -> Self {
        Self { session }
    }

    /// The session underneath.
    pub fn session(&self) -> &ZkSession {
        &self.session
    }

    fn client(&self, op: &'static str, path: &str) -> Result<Client, StoreError> {
        self.session.client().map_err(|e| StoreError::Unavailable {
            op,
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

fn failed(op: &'static str, path: &str, e: zookeeper_client::Error) -> StoreError {
    use zookeeper_client::Error as E;
    match e {
        E::NoAuth => StoreError::Denied {
            op,
            path: path.to_owned(),
        },
        E::BadArguments(why) => StoreError::Invalid {
            op,
            path: path.to_owned(),
            reason: (*why).to_owned(),
        },
        e => StoreError::Unavailable {
            op,
            path: path.to_owned(),
            reason: e.to_string(),
        },
    }
}

fn zk_version(op: &'static str, path: &str, v: i64) -> Result<i32, StoreError> {
    i32::try_from(v).map_err(|_| StoreError::Invalid {
        op,
        path: path.to_owned(),
        reason: format!("version {v} is out of ZooKeeper's range"),
    })
}

impl Store for ZkStore {
    fn get(
        &self,
        path: &str,
    ) -> impl std::future::Future<Output = Result<Option<Versioned>, StoreError>> + Send {
        // The request is sent now, not at the first poll: callers that create many reads
        // before awaiting them get them pipelined on the connection.
        let path = path.to_owned();
        let sent = self
            .client("get", &path)
            .map(|client| client.get_data(&path));
        async move {
            match sent?.await {
                Ok((data, stat)) => Ok(Some(Versioned {
                    data,
                    version: i64::from(stat.version),
                })),
                Err(zookeeper_client::Error::NoNode) => Ok(None),
                Err(e) => Err(failed("get", &path, e)),
            }
        }
    }

    fn children(
        &self,
        path: &str,
    ) -> impl std::future::Future<Output = Result<Vec<String>, StoreError>> + Send {
        let path = path.to_owned();
        let sent = self
            .client("children", &path)
            .map(|client| client.get_children(&path));
        async move {
            match sent?.await {
                Ok((mut names, _)) => {
                    names.sort();
                    Ok(names)
                }
                Err(zookeeper_client::Error::NoNode) => Ok(Vec::new()),
                Err(e) => Err(failed("children", &path, e)),
            }
        }
    }

    async fn list(&self, path: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        super::list_by_gets(self, path).await
    }

    fn commit(
        &self,
        ops: Vec<Op>,
    ) -> impl std::future::Future<Output = Result<Vec<Option<i64>>, StoreError>> + Send {
        let store = self.clone();
        async move {
            if ops.is_empty() {
                return Ok(Vec::new());
            }
            let first = ops[0].path().to_owned();
            let client = store.client("commit", &first)?;
            // A Create whose parent is missing fails the whole multi (nothing written): make
            // the parent and try once more. Parents are made lazily so the common commit is
            // one round trip.
            let mut made_parents = false;
            loop {
                match multi(&client, &store.session, &ops).await {
                    Err(StoreError::Conflict {
                        index,
                        kind: ConflictKind::NoNode,
                        ..
                    }) if !made_parents && matches!(ops[index], Op::Create { .. }) => {
                        made_parents = true;
                        for op in &ops {
                            if let Op::Create { path, .. } = op {
                                let p = parent(path);
                                if p != "/" {
                                    store
                                        .session
                                        .mkdir(p)
                                        .await
                                        .map_err(|e| zk_err("commit", p, e))?;
                                }
                            }
                        }
                    }
                    other => return other,
                }
            }
        }
    }

    fn watch(&self, prefix: &str) -> Watch {
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(watch_loop(self.session.clone(), prefix.to_owned(), tx));
        Watch::new(rx, Some(task))
    }

    async fn create_ephemeral(&self, path: &str, data: &[u8]) -> Result<(), StoreError> {
        check_path("create_ephemeral", path)?;
        match self.session.create_ephemeral(path, data).await {
            Ok(()) => Ok(()),
            Err(ZkError::Op {
                source: zookeeper_client::Error::NodeExists,
                ..
            }) => Err(StoreError::Conflict {
                index: 0,
                path: path.to_owned(),
                kind: ConflictKind::NodeExists,
            }),
            Err(e) => Err(zk_err("create_ephemeral", path, e)),
        }
    }

    async fn delete_ephemeral(&self, path: &str) -> Result<(), StoreError> {
        check_path("delete_ephemeral", path)?;
        self.session.forget_ephemeral(path);
        let client = self.client("delete_ephemeral", path)?;
        match client.delete(path, None).await {
            Ok(()) | Err(zookeeper_client::Error::NoNode) => Ok(()),
            Err(e) => Err(failed("delete_ephemeral", path, e)),
        }
    }

    async fn close(&self) {
        self.session.close();
    }
}

fn zk_err(op: &'static str, path: &str, e: ZkError) -> StoreError {
    match e {
        ZkError::Op { source, .. } => failed(op, path, source),
        ZkError::Denied { .. } => StoreError::Denied {
            op,
            path: path.to_owned(),
        },
        e => StoreError::Unavailable {
            op,
            path: path.to_owned(),
            reason: e.to_string(),
        },
    }
}

async fn multi(
    client: &Client,
    session: &ZkSession,
    ops: &[Op],
) -> Result<Vec<Option<i64>>, StoreError> {
    let acl = session.node_acl();
    let create = CreateMode::Persistent.with_acls(Acls::new(acl));
    let mut writer = client.new_multi_writer();
    for op in ops {
        let added = match op {
            Op::Check { path, version } => {
                writer.add_check_version(path, zk_version("commit", path, *version)?)
            }
            Op::Create { path, data } => writer.add_create(path, data, &create),
            Op::Set {
                path,
                data,
                version,
            } => {
                let v = version.map(|v| zk_version("commit", path, v)).transpose()?;
                writer.add_set_data(path, data, v)
            }
            Op::Delete { path, version } => {
                let v = version.map(|v| zk_version("commit", path, v)).transpose()?;
                writer.add_delete(path, v)
            }
        };
        added.map_err(|e| failed("commit", op.path(), e))?;
    }
    match writer.commit().await {
        Ok(results) => Ok(results
            .into_iter()
            .map(|r| match r {
                // A created node is at version 0 (the Stat of a Create inside a multi is not
                // filled in by ZooKeeper 3.8).
                MultiWriteResult::Create { .. } => Some(0),
                MultiWriteResult::SetData { stat } => Some(i64::from(stat.version)),
                _ => None,
            })
            .collect()),
        Err(MultiWriteError::OperationFailed { index, source }) => {
            use zookeeper_client::Error as E;
            let path = ops.get(index).map_or("", Op::path).to_owned();
            let kind = match source {
                E::BadVersion => ConflictKind::BadVersion,
                E::NoNode => ConflictKind::NoNode,
                E::NodeExists => ConflictKind::NodeExists,
                E::NotEmpty => ConflictKind::NotEmpty,
                e => return Err(failed("commit", &path, e)),
            };
            Err(StoreError::Conflict { index, path, kind })
        }
        Err(MultiWriteError::RequestFailed { source }) => {
            Err(failed("commit", ops[0].path(), source))
        }
    }
}

/// Keeps a persistent recursive watch on `prefix` set, across reconnects and new sessions,
/// forwarding its events. Ends when the session is closed or the receiver is dropped.
async fn watch_loop(session: ZkSession, prefix: String, tx: mpsc::Sender<WatchEvent>) {
    let mut clients = session.subscribe();
    loop {
        let current = clients.borrow_and_update().clone();
        let Some(client) = current.client else {
            return; // closed for good
        };
        // Only a missing node is created: the root cannot be, and a read-only identity may
        // not create what exists (ZooKeeper checks CREATE on the parent first).
        let missing = prefix != "/" && matches!(client.check_stat(&prefix).await, Ok(None));
        if missing && let Err(e) = session.mkdir(&prefix).await {
            tracing::warn!(%prefix, error = %e, "store watch: cannot create the watched node; retrying");
        }
        match client
            .watch(&prefix, AddWatchMode::PersistentRecursive)
            .await
        {
            Ok(mut watcher) => {
                if tx.send(WatchEvent::Resync).await.is_err() {
                    return;
                }
                loop {
                    let event = watcher.changed().await;
                    if event.event_type == EventType::Session {
                        // A persistent watch does not survive a server restart (3.8), and
                        // events may have been missed while disconnected: set it again.
                        if event.session_state.is_terminated()
                            || event.session_state == SessionState::SyncConnected
                        {
                            break;
                        }
                        continue;
                    }
                    let event = if event.event_type == EventType::NodeDeleted {
                        WatchEvent::Deleted(event.path)
                    } else {
                        WatchEvent::Changed(event.path)
                    };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%prefix, error = %e, "store watch: cannot set the watch; retrying");
            }
        }
        if tx.is_closed() {
            return;
        }
        // A new session replaces a dead client; otherwise retry on the same one.
        if client.state().is_terminated() {
            let epoch = current.epoch;
            if clients
                .wait_for(|c| c.epoch != epoch || c.client.is_none())
                .await
                .is_err()
            {
                return;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
