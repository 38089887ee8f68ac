//! The host agent: makes the containers on one Docker host match the assignments in the
//! control store (ZooKeeper or etcd, [`AgentConfig::store`]), keeps them healthy, and keeps the registry and the host's nodes truthful.
//!
//! One agent per host id; several agents on one machine act as several hosts, each
//! publishing on its own loopback IP. What it does:
//!
//! - **Reconcile** (`run`, `plan`, `steps`): the assignments under
//!   `/hosts/{hostId}/assignments` (watched, plus a full resync every
//!   [`AgentConfig::resync`]) against the containers labelled `caas.host={hostId}`. The
//!   decision is a pure function (`plan`: desired assignments + containers found + instances
//!   tracked → steps, table-tested); the loop only executes it: starts what is missing (pull
//!   if absent, a port from the [`PortPool`], run with the assignment's
//!   limits and `caas.*` labels), **adopts** its own containers after a restart (ports
//!   recovered from their `caas.port` labels, no duplicates), removes orphans (labelled for
//!   this host, no assignment), and replaces a unit whose assignment changed. A unit that
//!   lost its assignment is **drained**: deregistered first, left running for
//!   [`AgentConfig::drain_delay`] (gateways stop sending it new requests), then stopped
//!   with SIGTERM and [`AgentConfig::stop_timeout`] to finish what it serves, and removed. Bad assignment nodes are skipped and
//!   counted, and a node with a valid name but invalid JSON leaves its unit alone.
//! - **Units and sidecars**: an instance is a unit of containers, its main container plus
//!   the assignment's `sidecars`, pulled, started, restarted and removed together. Sidecars
//!   join the main container's network namespace (`--network container:{main}`: main and
//!   sidecars reach each other on localhost, as in a Kubernetes pod), get their own memory
//!   and CPU-share limits, and carry the instance's labels plus `caas.sidecar={name}`, so
//!   adoption and orphan removal find them. Only the main container publishes a port, is
//!   health-checked and is registered. A unit is started complete or not at all.
//! - **Health** per unit: a [`HealthChecker`](crate::HealthChecker) on the main container's
//!   published port; registered in `/service/address/{app}/{version}/{instanceId}` only
//!   after its first passing ping. The instance is healthy only while all its containers run
//!   and the check passes: on unhealthy, or at once on a Docker `die`/`oom` event of **any**
//!   container of the unit, it is deregistered first, then the unit is restarted (new
//!   containers, same port, with backoff) or removed per its policy. Kills for failed pings
//!   respect the per-host [`KillLimiter`](crate::KillLimiter).
//! - **Instance status** (`status`): `/hosts/{hostId}/status/{instanceId}`
//!   ([`InstanceStatus`](crate::zk::hosts::InstanceStatus)), written when what it says
//!   changes — `starting`, `unhealthy` (running, no pass yet or failing: `message` holds the
//!   last failed probe's answer), `healthy` (registered, with `address`), `restarting` (with
//!   `restarts` counted), `failed` (`message`: e.g. `image pull failed: ...`), `removing` —
//!   never per probe; deleted once the instance is removed, and stale ones are deleted by
//!   the reconcile.
//! - **Host node**: `/hosts/{hostId}` ([`HostInfo`](crate::zk::HostInfo)) and the ephemeral
//!   `/hosts/{hostId}/alive`. The agent owns only `ip`, `labels`, `capacity` and
//!   `cpu_idle`, and writes them with a read-modify-write under the node's version
//!   ([`HostStore::publish_agent_fields`]); `allocated` belongs to schedulers and
//!   `draining` to operators, and survive every agent write. A missing node is created with
//!   `allocated` summed over the host's assignments.
//! - **CPU idle** (`cpu`): sampled from `/proc/stat` every [`AgentConfig::cpu_sample`],
//!   smoothed (EWMA), written when it moved by [`AgentConfig::cpu_idle_min_change`] or more,
//!   and at every [`AgentConfig::host_refresh`], so an idle host does not churn ZooKeeper.
//!
//! Registrations use the **assignment's instance id**, not the Docker container id: it is a
//! valid DNS label (Docker's ids are 64 characters, `InstanceId` allows 63), it stays the same
//! across restarts of the instance (which get new containers), and it names the assignment
//! node the registration came from.
//!
//! Stopping the agent ([`AgentHandle::shutdown`]) closes its store session or lease (its
//! registrations and `alive` node vanish) but leaves the containers running: the next agent
//! with the same host id adopts them and registers them again after their first ping.

mod actions;
mod config;
mod cpu;
mod events;
mod instance;
mod logs;
mod plan;
mod run;
mod stats;
mod status;
mod steps;
mod tasks;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::AgentConfig;
pub use stats::{AgentStats, AgentStatsSnapshot};

use crate::docker::{DockerError, DockerRuntime};
use crate::ports::PortPool;
use crate::store::{AnyStore, NodeError, Store};
use crate::zk::hosts::AgentHostFields;
use crate::zk::{HostStore, Registry};

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A configuration value is invalid.
    #[error("agent config: {0}")]
    Config(String),
    /// The store could not be reached or written at start.
    #[error("agent start: {0}")]
    Store(#[from] NodeError),
    /// The Docker Engine could not be reached at start.
    #[error("agent start: {0}")]
    Docker(#[from] DockerError),
}

/// The host agent (see the module docs).
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Connects to the store and Docker, recovers the port pool from the host's containers,
    /// publishes its fields of the host node, marks the host alive, and starts the reconcile
    /// loop.
    pub async fn start(config: AgentConfig) -> Result<AgentHandle, AgentError> {
        config.validate().map_err(AgentError::Config)?;
        let docker = match &config.docker_socket {
            Some(s) => DockerRuntime::connect(s).await?,
            None => DockerRuntime::connect_default().await?,
        };
        let store = config.store.connect().await.map_err(NodeError::from)?;
        let hosts = HostStore::new(store.clone());
        hosts.ensure(&config.host_id).await?;

        let mut pool = PortPool::new(config.ip, config.ports);
        let containers = docker.list_managed(&config.host_id).await?;
        let outside = pool.recover(containers.iter().filter_map(|c| c.port()));
        if !outside.is_empty() {
            tracing::warn!(host = %config.host_id, ports = ?outside, "containers hold ports outside the configured range");
        }
        let capacity = run::capacity(&docker, &config).await;
        let stats = Arc::new(AgentStats::default());
        let logs_listener = match config.logs_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                AgentError::Config(format!("logs_listen {addr}: cannot listen: {e}"))
            })?),
            None => None,
        };
        let logs = match &logs_listener {
            Some(l) => {
                let mut addr = l.local_addr().map_err(|e| {
                    AgentError::Config(format!("logs_listen: no local address: {e}"))
                })?;
                if addr.ip().is_unspecified() {
                    addr.set_ip(config.ip);
                }
                Some(addr.to_string())
            }
            None => None,
        };
        // Before `alive`: a scheduler never sees a live host without its capacity.
        let fields = AgentHostFields {
            ip: config.ip,
            labels: config.labels.clone(),
            capacity,
            cpu_idle: None,
            logs: logs.clone(),
        };
        if let Err(e) = hosts.publish_agent_fields(&config.host_id, &fields).await {
            // The loop tries again; containers are managed meanwhile.
            AgentStats::bump(&stats.errors);
            tracing::error!(host = %config.host_id, error = %e, "cannot write the host info");
        }
        hosts.mark_alive(&config.host_id, config.ip).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        if let Some(listener) = logs_listener {
            tokio::spawn(logs::serve(
                listener,
                docker.clone(),
                config.host_id.clone(),
                shutdown_rx.clone(),
            ));
        }
        let state = run::State::new(run::Parts {
            config,
            docker,
            registry: Registry::new(store.clone()),
            hosts,
            pool,
            capacity,
            stats: stats.clone(),
            logs,
        });
        let task = tokio::spawn(state.run(shutdown_rx));
        Ok(AgentHandle {
            stats,
            shutdown,
            task: Some(task),
            store,
        })
    }
}

/// A running agent. Dropping it stops the agent like [`Self::shutdown`] (without waiting).
#[derive(Debug)]
pub struct AgentHandle {
    stats: Arc<AgentStats>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    store: AnyStore,
}

impl AgentHandle {
    /// The agent's counters.
    pub fn stats(&self) -> AgentStatsSnapshot {
        self.stats.snapshot()
    }

    /// The agent's store connection (its session or lease holds the registrations).
    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    /// Stops the loops and closes the store session or lease; containers keep running.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "agent task ended abnormally");
        }
        self.store.close().await;
    }

    /// Waits until the agent task ends (it only ends on shutdown).
    pub async fn wait(&mut self) {
        if let Some(task) = self.task.as_mut()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "agent task ended abnormally");
        }
        self.task = None;
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        close_in_background(self.store.clone());
    }
}

/// Closes the store from a `Drop`: at once for ZooKeeper; for etcd the lease is revoked by a
/// spawned task when a runtime is there (else it expires after its TTL).
fn close_in_background(store: AnyStore) {
    match store {
        AnyStore::Zk(s) => s.session().close(),
        AnyStore::Etcd(s) => {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { s.close().await });
            }
        }
    }
}
