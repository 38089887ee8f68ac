//! [`Registry`]: puts running instances into ZooKeeper and takes them out.
//!
//! An instance is the EPHEMERAL node `/service/address/{appId}/{version}/{containerId}`
//! holding exactly `{hostIp}:{port}` (other tools read this format). It lives as long as the
//! session; after a session expiry [`ZkSession`] re-creates it.

use std::net::SocketAddr;

use caas_core::{AppId, InstanceId, Version};

use super::error::{Result, ZkError};
use super::layout::instance_path;
use super::session::ZkSession;

/// Registers and deregisters instances of apps.
#[derive(Debug, Clone)]
pub struct Registry {
    session: ZkSession,
}

impl Registry {
    /// A registry writing through `session`.
    pub fn new(session: ZkSession) -> Self {
        Self { session }
    }

    /// The session underneath.
    pub fn session(&self) -> &ZkSession {
        &self.session
    }

    /// Creates the instance node (parents as needed). An instance id that is already
    /// registered is [`ZkError::AlreadyRegistered`], never overwritten.
    pub async fn register(
        &self,
        app: &AppId,
        version: &Version,
        instance: &InstanceId,
        addr: SocketAddr,
    ) -> Result<()> {
        let path = instance_path(app, version, instance);
        let data = addr.to_string();
        match self.session.create_ephemeral(&path, data.as_bytes()).await {
            Err(ZkError::Op {
                source: zookeeper_client::Error::NodeExists,
                ..
            }) => {
                let existing = match self.session.client()?.get_data(&path).await {
                    Ok((d, _)) => String::from_utf8_lossy(&d).into_owned(),
                    Err(e) => format!("<unreadable: {e}>"),
                };
                Err(ZkError::AlreadyRegistered { path, existing })
            }
            other => {
                if other.is_ok() {
                    tracing::debug!(%path, %addr, "registered");
                }
                other
            }
        }
    }

    /// Deletes the instance node; [`ZkError::NotRegistered`] when it is not there.
    pub async fn deregister(
        &self,
        app: &AppId,
        version: &Version,
        instance: &InstanceId,
    ) -> Result<()> {
        let path = instance_path(app, version, instance);
        self.session.forget_ephemeral(&path);
        match self.session.client()?.delete(&path, None).await {
            Ok(()) => {
                tracing::debug!(%path, "deregistered");
                Ok(())
            }
            Err(zookeeper_client::Error::NoNode) => Err(ZkError::NotRegistered { path }),
            Err(e) => Err(ZkError::op("delete", &path, e)),
        }
    }
}
