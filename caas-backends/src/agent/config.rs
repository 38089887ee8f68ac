//! [`AgentConfig`]: who the agent is (host id, advertised IP), where its store is, and
//! the knobs of its loops. Every field but the first three has a default.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::docker::RegistryAuth;
use crate::ports::PortRange;
use crate::store::StoreConfig;

/// Configuration of one host agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// How to reach the control store (ZooKeeper or etcd).
    pub store: StoreConfig,
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
    /// A registered instance whose assignment is deleted (or replaced) is deregistered,
    /// then keeps running this long before its SIGTERM, so every gateway has stopped
    /// sending it new requests (default 2 s; gateways see a deregistration within
    /// milliseconds).
    pub drain_delay: Duration,
    /// Extra labels put on every container (tests mark theirs with one).
    pub container_labels: BTreeMap<String, String>,
    /// Read the CPU counters this often (the idle share between two reads is smoothed and
    /// published as `cpu_idle`).
    pub cpu_sample: Duration,
    /// The smoothed idle share is written to the store when it moved this much since the
    /// last write (0.0..=1.0), so an idle host does not rewrite its node every sample.
    pub cpu_idle_min_change: f64,
    /// The host node's agent fields are written this often anyway (with the latest
    /// `cpu_idle`), besides the writes on a meaningful change.
    pub host_refresh: Duration,
    /// Serve the instances' container logs here (`GET /logs/{instanceId}`, for the control
    /// API) and publish the address as `logs` in the host node; `None`: no logs endpoint.
    /// An unspecified IP (`0.0.0.0:7071`) is published with the advertised IP.
    pub logs_listen: Option<std::net::SocketAddr>,
    /// Where the CPU counters are read: the host's `/proc/stat` (an agent in a container
    /// reads the host's, mounted e.g. at `/host/proc/stat`).
    pub proc_stat: PathBuf,
}

impl AgentConfig {
    /// Defaults for everything but the store, host id and IP.
    pub fn new(store: impl Into<StoreConfig>, host_id: impl Into<String>, ip: IpAddr) -> Self {
        Self {
            store: store.into(),
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
            drain_delay: Duration::from_secs(2),
            container_labels: BTreeMap::new(),
            cpu_sample: Duration::from_secs(5),
            cpu_idle_min_change: 0.02,
            host_refresh: Duration::from_secs(60),
            proc_stat: PathBuf::from("/proc/stat"),
            logs_listen: None,
        }
    }

    /// Checks the values [`super::Agent::start`] cannot work with.
    pub(super) fn validate(&self) -> Result<(), String> {
        crate::zk::hosts::validate_host_id(&self.host_id)?;
        if self.ip.is_unspecified() {
            return Err(format!(
                "advertised ip {} is unspecified: give the address gateways reach",
                self.ip
            ));
        }
        for (name, d) in [
            ("resync", self.resync),
            ("cpu_sample", self.cpu_sample),
            ("host_refresh", self.host_refresh),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be longer than zero"));
            }
        }
        if !(0.0..=1.0).contains(&self.cpu_idle_min_change) {
            return Err(format!(
                "cpu_idle_min_change {} is outside 0.0..=1.0",
                self.cpu_idle_min_change
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_refused_with_the_field() {
        let zk = crate::zk::ZkConfig::new("127.0.0.1:2181");
        let ok = AgentConfig::new(zk, "h1", [127, 0, 0, 2].into());
        assert_eq!(ok.validate(), Ok(()));
        type Edit = fn(&mut AgentConfig);
        let rows: Vec<(Edit, &str)> = vec![
            (|c| c.host_id = "H1".into(), "invalid host id"),
            (|c| c.ip = [0, 0, 0, 0].into(), "unspecified"),
            (|c| c.cpu_sample = Duration::ZERO, "cpu_sample"),
            (|c| c.host_refresh = Duration::ZERO, "host_refresh"),
            (|c| c.resync = Duration::ZERO, "resync"),
            (|c| c.cpu_idle_min_change = 1.5, "cpu_idle_min_change"),
            (|c| c.cpu_idle_min_change = f64::NAN, "cpu_idle_min_change"),
        ];
        for (edit, needle) in rows {
            let mut c = ok.clone();
            edit(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
