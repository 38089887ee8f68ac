//! [`Registry`]: puts running instances into the store and takes them out.
//!
//! An instance is the ephemeral node `/service/address/{appId}/{version}/{instanceId}`
//! holding exactly `{hostIp}:{port}` (other tools read this format). It lives as long as the
//! store's session (ZooKeeper) or lease (etcd); after a loss the store creates it again.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use caas_core::{AppId, InstanceId, Version};

use super::hosts::is_conflict;
use super::layout::instance_path;
use crate::store::{ConflictKind, Store, StoreError, delete_if_present};

/// Why a registration or deregistration failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `register` found the instance node already there: ids are never silently reused.
    #[error("instance {path} is already registered (holding {existing:?})")]
    AlreadyRegistered {
        /// The instance node.
        path: String,
        /// What it holds now.
        existing: String,
    },
    /// `deregister` of an instance that is not registered.
    #[error("instance {path} is not registered")]
    NotRegistered {
        /// The instance node.
        path: String,
    },
}

/// Registers and deregisters instances of apps.
#[derive(Debug, Clone)]
pub struct Registry<S> {
    store: S,
    /// The instance nodes this registry created and has not removed.
    owned: Arc<Mutex<BTreeSet<String>>>,
}

impl<S: Store> Registry<S> {
    /// A registry writing to `store`.
    pub fn new(store: S) -> Self {
        Self {
            store,
            owned: Arc::default(),
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The instance nodes registered through this registry (and its clones) and not
    /// deregistered since.
    pub fn owned(&self) -> BTreeSet<String> {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Creates the instance node (parents as needed). An instance id that is already
    /// registered is [`RegistryError::AlreadyRegistered`], never overwritten.
    pub async fn register(
        &self,
        app: &AppId,
        version: &Version,
        instance: &InstanceId,
        addr: SocketAddr,
    ) -> Result<(), RegistryError> {
        let path = instance_path(app, version, instance);
        let data = addr.to_string();
        match self.store.create_ephemeral(&path, data.as_bytes()).await {
            Ok(()) => {
                self.own(&path, true);
                tracing::debug!(%path, %addr, "registered");
                Ok(())
            }
            Err(e) if is_conflict(&e, ConflictKind::NodeExists) => {
                let existing = match self.store.get(&path).await {
                    Ok(Some(node)) => String::from_utf8_lossy(&node.data).into_owned(),
                    Ok(None) => "<deleted meanwhile>".to_owned(),
                    Err(e) => format!("<unreadable: {e}>"),
                };
                Err(RegistryError::AlreadyRegistered { path, existing })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stops re-creating the instance node and deletes it (on etcd only when it is still
    /// this registry's: a registration taken over meanwhile stays); [`RegistryError::NotRegistered`]
    /// when there is no node.
    pub async fn deregister(
        &self,
        app: &AppId,
        version: &Version,
        instance: &InstanceId,
    ) -> Result<(), RegistryError> {
        let path = instance_path(app, version, instance);
        self.own(&path, false);
        if self.store.get(&path).await?.is_none() {
            return Err(RegistryError::NotRegistered { path });
        }
        self.store.delete_ephemeral(&path).await?;
        tracing::debug!(%path, "deregistered");
        Ok(())
    }

    /// Deletes an instance node whoever wrote it (a registration left by an earlier session
    /// or lease of the same host, about to be taken over); absent is fine.
    pub async fn remove_stale(
        &self,
        app: &AppId,
        version: &Version,
        instance: &InstanceId,
    ) -> Result<(), RegistryError> {
        let path = instance_path(app, version, instance);
        Ok(delete_if_present(&self.store, &path).await?)
    }

    fn own(&self, path: &str, owned: bool) {
        let mut set = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        if owned {
            set.insert(path.to_owned());
        } else {
            set.remove(path);
        }
    }
}
