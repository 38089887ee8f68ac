//! The instance status nodes `/hosts/{hostId}/status/{instanceId}` ([`InstanceStatus`] JSON,
//! persistent): written by the host agent whenever an instance changes state, deleted when the
//! instance is removed, read by schedulers and users (`caas status`).

use caas_core::InstanceId;
use zookeeper_client::{Acls, CreateMode};

use super::error::{Result, ZkError};
use super::hosts::{HostStore, InstanceStatus, status_path, statuses_path};

impl HostStore {
    /// Writes (creates with the session's node ACL, or overwrites) one status node.
    pub async fn put_status(
        &self,
        host: &str,
        instance: &InstanceId,
        status: &InstanceStatus,
    ) -> Result<()> {
        let path = status_path(host, instance);
        let data = serde_json::to_vec(status).map_err(|e| ZkError::BadData {
            path: path.clone(),
            reason: format!("cannot encode: {e}"),
        })?;
        let client = self.session().client()?;
        // Set first: after the first write of an instance every write is a set.
        match client.set_data(&path, &data, None).await {
            Ok(_) => return Ok(()),
            Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => return Err(ZkError::op("set", &path, e)),
        }
        let opts = CreateMode::Persistent.with_acls(Acls::new(self.session().node_acl()));
        match client.create(&path, &data, &opts).await {
            Ok(_) => Ok(()),
            Err(zookeeper_client::Error::NoNode) => {
                self.session().mkdir(&statuses_path(host)).await?;
                client
                    .create(&path, &data, &opts)
                    .await
                    .map(drop)
                    .map_err(|e| ZkError::op("create", &path, e))
            }
            // Created between our set and create (only this host's agent writes here).
            Err(zookeeper_client::Error::NodeExists) => client
                .set_data(&path, &data, None)
                .await
                .map(drop)
                .map_err(|e| ZkError::op("set", &path, e)),
            Err(e) => Err(ZkError::op("create", &path, e)),
        }
    }

    /// Deletes one status node; absent is fine.
    pub async fn delete_status(&self, host: &str, instance: &str) -> Result<()> {
        let path = format!("{}/{instance}", statuses_path(host));
        match self.session().client()?.delete(&path, None).await {
            Ok(()) | Err(zookeeper_client::Error::NoNode) => Ok(()),
            Err(e) => Err(ZkError::op("delete", &path, e)),
        }
    }

    /// The names of the children of `/hosts/{host}/status` (valid instance ids or not); a
    /// missing parent is no children.
    pub async fn status_names(&self, host: &str) -> Result<Vec<String>> {
        let parent = statuses_path(host);
        match self.session().client()?.list_children(&parent).await {
            Ok(n) => Ok(n),
            Err(zookeeper_client::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(ZkError::op("list", &parent, e)),
        }
    }

    /// Reads one status node; `None` when absent.
    pub async fn status(
        &self,
        host: &str,
        instance: &InstanceId,
    ) -> Result<Option<InstanceStatus>> {
        let path = status_path(host, instance);
        match self.session().client()?.get_data(&path).await {
            Ok((data, _)) => {
                serde_json::from_slice(&data)
                    .map(Some)
                    .map_err(|e| ZkError::BadData {
                        path,
                        reason: format!("not InstanceStatus JSON: {e}"),
                    })
            }
            Err(zookeeper_client::Error::NoNode) => Ok(None),
            Err(e) => Err(ZkError::op("get", &path, e)),
        }
    }
}
