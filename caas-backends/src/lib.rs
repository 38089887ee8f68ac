//! caas-backends: the control plane of caas, implementing caas-core's contracts.
//!
//! - [`zk`]: ZooKeeper as registry and configuration store: the session (reconnect,
//!   re-creation of ephemerals after expiry), instance [`zk::Registry`], the
//!   [`zk::ZkDiscovery`] that feeds the gateway's router, app config and domain claims
//!   ([`zk::AppStore`]), digest ACLs, TLS and AES-GCM encrypted values.
//! - [`assignment`]: the [`Assignment`] JSON (one container on one host) with its
//!   [`HealthPolicy`], parsed and validated.
//! - [`docker`]: the [`DockerRuntime`] over the Docker Engine API (bollard): pull with registry
//!   credentials, run with port binding, limits and `caas.*` labels, sidecars in a main
//!   container's network namespace, stop, remove, inspect, list managed containers, and the
//!   die/oom/start event stream.
//! - [`persisted`]: the [`PersistedDiscovery`] wrapper: keeps the last routes a discovery
//!   passed on in a file (written atomically, at most once a second) and serves them when
//!   the live source is not there at start.
//! - [`ports`]: the per-host [`PortPool`] of published ports.
//! - [`health`]: active `GET /_ping` checks ([`HealthChecker`]) with fall/rise thresholds and a
//!   grace period, restart [`Backoff`], the per-host [`KillLimiter`] and the [`Supervisor`]
//!   that orders register / deregister / restart / remove.
//! - [`agent`]: the host [`Agent`]: reconciles the host's assignments in ZooKeeper with its
//!   units of containers (main + sidecars: start, adopt, remove orphans) through a pure
//!   plan, health-checks them, registers the healthy ones and deregisters, restarts or
//!   removes the failing ones; publishes each instance's status, and the host's own fields
//!   of its HostInfo (capacity, labels, measured CPU idle).
//! - [`store`]: the small [`Store`] contract (versioned reads, children, an all-or-nothing
//!   commit with version checks, ephemeral nodes on a session or lease, prefix watches)
//!   with [`ZkStore`], [`EtcdStore`] (etcd v3), the in-memory [`MemStore`] and
//!   [`AnyStore`] (ZooKeeper or etcd, chosen at run time), and [`store::StoreDiscovery`],
//!   the gateway's discovery on any of them (validation shared with `ZkDiscovery`), and
//!   [`store::StoreCertSource`], its custom-domain certificates.
//! - [`scheduler`]: the [`Scheduler`]: deployments in, assignments out; filters and
//!   strategies as pure functions, each deployment's change as one commit under version
//!   checks, several schedulers safe at once.
//! - [`rollout`]: rolling updates: a new version started beside the old one, traffic moved
//!   in steps while it stays healthy, the old one drained and removed, or everything rolled
//!   back; the state in the store, each move one commit, several controllers safe at once.
//! - [`api`]: the control API tenants use (HTTP + JSON under `/v1`, bearer tokens per
//!   tenant): apps, versions (deployments), weights, domains, blacklist and rate limits,
//!   hosts and drain, stats summed over the gateways, logs streamed from the host agents;
//!   each change one store commit.
//! - `testing` (feature `testing`): real ZooKeeper and etcd servers for tests, started on
//!   free loopback ports (`testing::ZkServer`, `testing::EtcdServer`), a `testing::TcpProxy`
//!   that cuts the network to make sessions and leases expire, `testing::stores`, the
//!   fixtures that run one test function on every store, and `testing::routes`, what a
//!   router fed by a discovery picks for a host.

pub mod agent;
pub mod api;
pub mod assignment;
pub mod docker;
pub mod health;
pub mod persisted;
pub mod ports;
pub mod rollout;
pub mod scheduler;
pub mod store;
pub mod zk;

pub use agent::{Agent, AgentConfig, AgentError, AgentHandle};
pub use assignment::{
    Assignment, AssignmentError, FailurePolicy, HealthPolicy, ImageRef, MemoryLimit, Sidecar,
};
pub use docker::{
    ContainerEvent, ContainerInfo, DockerError, DockerRuntime, RegistryAuth, RunSpec, SidecarSpec,
};
pub use health::{Backoff, HealthChecker, HealthEvent, HealthState, KillLimiter, Supervisor};
pub use persisted::{PersistStats, PersistedDiscovery, SnapshotFileError};
pub use ports::{PortError, PortPool, PortRange};
pub use scheduler::{Deployment, Scheduler, SchedulerConfig, SchedulerHandle};
pub use store::{AnyStore, EtcdStore, MemStore, NodeError, Store, StoreConfig, ZkStore};
pub use zk::{AppStore, Registry, ZkConfig, ZkDiscovery, ZkError, ZkSession};

#[cfg(feature = "testing")]
pub mod testing;
