//! caas-backends: the control plane of caas.
//!
//! - [`assignment`]: the [`Assignment`] JSON (one container on one host) with its
//!   [`HealthPolicy`], parsed and validated.
//! - [`docker`]: the [`DockerRuntime`] over the Docker Engine API (bollard): pull with registry
//!   credentials, run with port binding, limits and `caas.*` labels, stop, remove, inspect,
//!   list managed containers, and the die/oom/start event stream.
//! - [`ports`]: the per-host [`PortPool`] of published ports.
//! - [`health`]: active `GET /_ping` checks ([`HealthChecker`]) with fall/rise thresholds and a
//!   grace period, restart [`Backoff`], the per-host [`KillLimiter`] and the [`Supervisor`]
//!   that orders register / deregister / restart / remove.
//!
//! The ZooKeeper registry, the host agent and the scheduler build on these.

pub mod assignment;
pub mod docker;
pub mod health;
pub mod ports;

pub use assignment::{
    Assignment, AssignmentError, FailurePolicy, HealthPolicy, ImageRef, MemoryLimit,
};
pub use docker::{
    ContainerEvent, ContainerInfo, DockerError, DockerRuntime, RegistryAuth, RunSpec,
};
pub use health::{Backoff, HealthChecker, HealthEvent, HealthState, KillLimiter, Supervisor};
pub use ports::{PortError, PortPool, PortRange};
