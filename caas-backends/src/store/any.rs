//! [`AnyStore`]: one of the real stores, chosen at run time (a `--zk` or an `--etcd` flag),
//! for code that is generic over [`Store`] but picks the store from its configuration.

use super::{EtcdConfig, EtcdStore, Op, Store, StoreError, Versioned, Watch, ZkStore};
use crate::zk::{ZkConfig, ZkSession};

/// Which store to connect to, and how: what a `--zk` or an `--etcd` flag gives.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// ZooKeeper.
    Zk(ZkConfig),
    /// etcd v3.
    Etcd(EtcdConfig),
}

impl From<ZkConfig> for StoreConfig {
    fn from(c: ZkConfig) -> Self {
        StoreConfig::Zk(c)
    }
}

impl From<EtcdConfig> for StoreConfig {
    fn from(c: EtcdConfig) -> Self {
        StoreConfig::Etcd(c)
    }
}

impl StoreConfig {
    /// Connects: a ZooKeeper session, or an etcd client with its lease.
    pub async fn connect(&self) -> Result<AnyStore, StoreError> {
        match self {
            StoreConfig::Zk(c) => {
                let session =
                    ZkSession::connect(c.clone())
                        .await
                        .map_err(|e| StoreError::Unavailable {
                            op: "connect",
                            path: c.servers.clone(),
                            reason: e.to_string(),
                        })?;
                Ok(AnyStore::Zk(ZkStore::new(session)))
            }
            StoreConfig::Etcd(c) => Ok(AnyStore::Etcd(EtcdStore::connect(c.clone()).await?)),
        }
    }
}

/// ZooKeeper or etcd behind the [`Store`] contract.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// ZooKeeper.
    Zk(ZkStore),
    /// etcd v3.
    Etcd(EtcdStore),
}

impl AnyStore {
    /// The store's name, for logs and messages.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyStore::Zk(_) => "zookeeper",
            AnyStore::Etcd(_) => "etcd",
        }
    }
}

/// Calls the same method on whichever store it is.
macro_rules! dispatch {
    ($self:expr, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Zk($s) => $call,
            AnyStore::Etcd($s) => $call,
        }
    };
}

impl Store for AnyStore {
    async fn get(&self, path: &str) -> Result<Option<Versioned>, StoreError> {
        dispatch!(self, s => s.get(path).await)
    }

    async fn children(&self, path: &str) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.children(path).await)
    }

    async fn list(&self, path: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        dispatch!(self, s => s.list(path).await)
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<Vec<Option<i64>>, StoreError> {
        dispatch!(self, s => s.commit(ops).await)
    }

    fn watch(&self, prefix: &str) -> Watch {
        dispatch!(self, s => s.watch(prefix))
    }

    async fn create_ephemeral(&self, path: &str, data: &[u8]) -> Result<(), StoreError> {
        dispatch!(self, s => s.create_ephemeral(path, data).await)
    }

    async fn delete_ephemeral(&self, path: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.delete_ephemeral(path).await)
    }

    async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }
}
