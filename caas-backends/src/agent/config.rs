//! [`AgentConfig`]: who the agent is (host id, advertised IP), where its ZooKeeper is, and
//! the knobs of its loops. Every field but the first three has a default.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::docker::RegistryAuth;
use crate::ports::PortRange;
use crate::zk::ZkConfig;

/// Configuration of one host agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// How to reach ZooKeeper.
    pub zk: ZkConfig,
    /// The host id: `/hosts/{hostId}` and the `caas.host` label of its containers.
    pub host_id: String,
    /// The advertised IP: ports are published on it, instances registered as `{ip}:{port}`.
    pub ip: IpAddr,
    /// Host ports handed out to containers (default 25701-25999).
    pub ports: PortRange,
    /// Credentials for the private registry, if it needs any.
    pub registry_auth: Option<RegistryAuth>,
    /// Labels published in the HostInfo (scheduling filters).
    pub labels: BTreeMap<String, String>,
    /// Memory capacity in bytes; `None` takes the Docker daemon's total memory.
    pub memory: Option<u64>,
    /// Docker Engine socket; `None` is `$DOCKER_HOST` (unix://) or the default socket.
    pub docker_socket: Option<String>,
    /// Full reconcile this often, besides the watch (heals missed events).
    pub resync: Duration,
    /// At most this many health-triggered kills per minute on this host.
    pub kills_per_minute: u32,
    /// First restart delay; doubles per restart up to [`Self::restart_backoff_max`].
    pub restart_backoff: Duration,
    /// Cap of the restart delay.
    pub restart_backoff_max: Duration,
    /// Healthy this long and the restart backoff starts over.
    pub stable_after: Duration,
    /// `docker stop` grace (SIGTERM, then SIGKILL) when an assignment is deleted.
    pub stop_timeout: Duration,
    /// Extra labels put on every container (tests mark theirs with one).
    pub container_labels: BTreeMap<String, String>,
}

impl AgentConfig {
    /// Defaults for everything but ZooKeeper, host id and IP.
    pub fn new(zk: ZkConfig, host_id: impl Into<String>, ip: IpAddr) -> Self {
        Self {
            zk,
            host_id: host_id.into(),
            ip,
            ports: PortRange::DEFAULT,
            registry_auth: None,
            labels: BTreeMap::new(),
            memory: None,
            docker_socket: None,
            resync: Duration::from_secs(5),
            kills_per_minute: 10,
            restart_backoff: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            container_labels: BTreeMap::new(),
        }
    }
}
