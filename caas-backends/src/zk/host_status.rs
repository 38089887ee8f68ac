//! The instance status nodes `/hosts/{hostId}/status/{instanceId}` ([`InstanceStatus`] JSON,
//! persistent): written by the host agent whenever an instance changes state, deleted when the
//! instance is removed, read by schedulers and users (`caas status`).

use caas_core::InstanceId;

use super::hosts::{HostStore, InstanceStatus, status_path, statuses_path};
use crate::store::{NodeError, Store, delete_if_present};

impl<S: Store> HostStore<S> {
    /// Writes (creates or overwrites) one status node.
    pub async fn put_status(
        &self,
        host: &str,
        instance: &InstanceId,
        status: &InstanceStatus,
    ) -> Result<(), NodeError> {
        let path = status_path(host, instance);
        let data = serde_json::to_vec(status)
            .map_err(|e| NodeError::bad(&path, format!("cannot encode: {e}")))?;
        Ok(crate::store::put(self.store(), &path, &data).await?)
    }

    /// Deletes one status node; absent is fine.
    pub async fn delete_status(&self, host: &str, instance: &str) -> Result<(), NodeError> {
        let path = format!("{}/{instance}", statuses_path(host));
        Ok(delete_if_present(self.store(), &path).await?)
    }

    /// The names of the children of `/hosts/{host}/status` (valid instance ids or not); a
    /// missing parent is no children.
    pub async fn status_names(&self, host: &str) -> Result<Vec<String>, NodeError> {
        Ok(self.store().children(&statuses_path(host)).await?)
    }

    /// Reads one status node; `None` when absent.
    pub async fn status(
        &self,
        host: &str,
        instance: &InstanceId,
    ) -> Result<Option<InstanceStatus>, NodeError> {
        let path = status_path(host, instance);
        match self.store().get(&path).await? {
            Some(node) => serde_json::from_slice(&node.data)
                .map(Some)
                .map_err(|e| NodeError::bad(&path, format!("not InstanceStatus JSON: {e}"))),
            None => Ok(None),
        }
    }
}
