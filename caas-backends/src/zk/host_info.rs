//! The agent's share of `/hosts/{hostId}` ([`HostInfo`]): `ip`, `labels`, `capacity`,
//! `cpu_idle` and `logs`, written with a read-modify-write under the node's version so that the fields
//! of schedulers (`allocated`) and operators (`draining`) are never overwritten (see
//! [`hosts`](super::hosts) for who owns what).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use super::hosts::{HostInfo, HostStore, Resources, host_path};
use crate::assignment::Assignment;
use crate::store::{NodeError, Op, Store, StoreError, conflict_backoff};

type Result<T> = std::result::Result<T, NodeError>;

/// The fields of [`HostInfo`] the host agent owns and publishes; the rest (`allocated`,
/// `draining`) belongs to schedulers and operators.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentHostFields {
    /// The advertised IP.
    pub ip: IpAddr,
    /// The host's labels.
    pub labels: BTreeMap<String, String>,
    /// What the host offers.
    pub capacity: Resources,
    /// The smoothed CPU idle share, once measured.
    pub cpu_idle: Option<f64>,
    /// Where the agent serves container logs, if it does.
    pub logs: Option<String>,
}

impl From<&HostInfo> for AgentHostFields {
    /// The agent's share of a whole host node (for tools and tests that play an agent).
    fn from(info: &HostInfo) -> Self {
        Self {
            ip: info.ip,
            labels: info.labels.clone(),
            capacity: info.capacity,
            cpu_idle: info.cpu_idle,
            logs: info.logs.clone(),
        }
    }
}

impl AgentHostFields {
    /// `info` with the agent's fields replaced; `allocated` and `draining` as they were.
    pub fn apply(&self, info: HostInfo) -> HostInfo {
        HostInfo {
            ip: self.ip,
            labels: self.labels.clone(),
            capacity: self.capacity,
            cpu_idle: self.cpu_idle,
            logs: self.logs.clone(),
            ..info
        }
    }

    /// A new host node: the agent's fields, `allocated` as given, not draining.
    pub fn new_info(&self, allocated: Resources) -> HostInfo {
        HostInfo {
            ip: self.ip,
            labels: self.labels.clone(),
            capacity: self.capacity,
            allocated,
            cpu_idle: self.cpu_idle,
            draining: false,
            logs: self.logs.clone(),
        }
    }
}

/// What [`HostStore::publish_agent_fields`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The node did not exist (or was empty) and now holds a full HostInfo.
    Created,
    /// The agent's fields changed.
    Updated,
    /// The node already held these fields: nothing written.
    Unchanged,
}

/// The resources a set of assignments takes: memory and CPU shares of every unit (main
/// container and sidecars), one instance per assignment.
pub fn allocated_by<'a>(assignments: impl IntoIterator<Item = &'a Assignment>) -> Resources {
    assignments
        .into_iter()
        .fold(Resources::default(), |r, a| Resources {
            memory: r.memory.saturating_add(a.total_memory()),
            cpu_shares: r.cpu_shares.saturating_add(a.total_cpu_shares()),
            instances: r.instances + 1,
        })
}

/// Read-modify-write rounds before [`HostStore::publish_agent_fields`] gives up.
const PUBLISH_ATTEMPTS: u32 = 20;

/// The random wait after a lost round: below 1 ms, doubling with each, at most 32 ms.
const PUBLISH_BACKOFF: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(32));

fn encode<T: Serialize>(path: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| NodeError::bad(path, format!("cannot encode: {e}")))
}

impl<S: Store> HostStore<S> {
    /// Publishes the agent's fields of `/hosts/{host}` (see [`AgentHostFields`]): a
    /// read-modify-write under the node's version that keeps `allocated` and `draining` as
    /// they are, retried when another writer got in between (a version conflict). A missing
    /// node (or one created empty as a parent) is created with `allocated` = the sum over the
    /// host's current assignments ([`allocated_by`]) and `draining` false. Nothing is written
    /// when the agent's fields are already what the node holds. A node that holds something
    /// else than HostInfo JSON is an error and is left as it is.
    pub async fn publish_agent_fields(
        &self,
        host: &str,
        fields: &AgentHostFields,
    ) -> Result<Published> {
        let path = host_path(host);
        let mut last = None;
        for attempt in 0..PUBLISH_ATTEMPTS {
            if attempt > 0 {
                // Without a wait, a writer that keeps losing to a busier one (a scheduler
                // placing instance after instance) retries in lock step with it and can
                // lose every round.
                let wait = conflict_backoff(attempt, PUBLISH_BACKOFF.0, PUBLISH_BACKOFF.1);
                tokio::time::sleep(wait).await;
            }
            let (op, outcome) = match self.store().get(&path).await? {
                Some(node) if !node.data.is_empty() => {
                    let old: HostInfo = serde_json::from_slice(&node.data).map_err(|e| {
                        NodeError::bad(&path, format!("not HostInfo JSON, left as it is: {e}"))
                    })?;
                    let new = fields.apply(old.clone());
                    if new == old {
                        return Ok(Published::Unchanged);
                    }
                    let data = encode(&path, &new)?;
                    (
                        Op::Set {
                            path: path.clone(),
                            data,
                            version: Some(node.version),
                        },
                        Published::Updated,
                    )
                }
                found => {
                    let data = encode(&path, &fields.new_info(self.allocated(host).await?))?;
                    let op = match found {
                        // Created empty, as the parent of the assignments.
                        Some(node) => Op::Set {
                            path: path.clone(),
                            data,
                            version: Some(node.version),
                        },
                        None => Op::Create {
                            path: path.clone(),
                            data,
                        },
                    };
                    (op, Published::Created)
                }
            };
            match self.store().commit(vec![op]).await {
                Ok(_) => return Ok(outcome),
                Err(e @ StoreError::Conflict { .. }) => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        // Other writers won every round: the caller logs it and tries again later.
        Err(last.map_or_else(|| NodeError::bad(&path, "not written"), NodeError::from))
    }

    /// The sum over the host's valid assignments (see [`allocated_by`]).
    async fn allocated(&self, host: &str) -> Result<Resources> {
        let nodes = self.assignments(host).await?;
        Ok(allocated_by(
            nodes.iter().filter_map(|n| n.assignment.as_ref().ok()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_fields_leave_allocated_and_draining_alone() {
        let fields = AgentHostFields {
            ip: "127.0.0.3".parse().unwrap(),
            labels: BTreeMap::from([("disk".into(), "ssd".into())]),
            capacity: Resources {
                memory: 8 << 30,
                cpu_shares: 4096,
                instances: 100,
            },
            cpu_idle: Some(0.75),
            logs: None,
        };
        let scheduled = Resources {
            memory: 1 << 30,
            cpu_shares: 1024,
            instances: 2,
        };
        let old = HostInfo {
            ip: "127.0.0.2".parse().unwrap(),
            labels: BTreeMap::new(),
            capacity: Resources::default(),
            allocated: scheduled,
            cpu_idle: None,
            draining: true,
            logs: None,
        };
        let new = fields.apply(old);
        assert_eq!((new.allocated, new.draining), (scheduled, true));
        assert_eq!(new.ip, fields.ip);
        assert_eq!(new.labels, fields.labels);
        assert_eq!(new.capacity, fields.capacity);
        assert_eq!(new.cpu_idle, Some(0.75));
        let fresh = fields.new_info(scheduled);
        assert_eq!((fresh.allocated, fresh.draining), (scheduled, false));
    }

    #[test]
    fn allocated_counts_units_with_their_sidecars() {
        let plain = Assignment::from_json(
            br#"{"app": "a", "version": "v1", "image": "r.io/a:v1", "container_port": 80,
                 "memory": "512m", "cpu_shares": 1024}"#,
        )
        .unwrap();
        let pod = Assignment::from_json(
            br#"{"app": "a", "version": "v1", "image": "r.io/a:v1", "container_port": 80,
                 "memory": "512m", "cpu_shares": 1024,
                 "sidecars": [{"name": "c", "image": "r.io/c:v1", "memory": "64m"}]}"#,
        )
        .unwrap();
        assert_eq!(allocated_by([]), Resources::default());
        assert_eq!(
            allocated_by([&plain, &pod]),
            Resources {
                memory: (512 + 512 + 64) << 20,
                cpu_shares: 1024 + 1024 + 256,
                instances: 2,
            }
        );
    }
}
