//! The scheduler: turns deployments (`/deployments/{appId}/{version}`) into assignments
//! (`/hosts/{hostId}/assignments/{instanceId}`) and keeps each deployment's status node up to
//! date, through the small [`Store`](crate::store::Store) contract.
//!
//! Decisions are pure functions over a [`Snapshot`], I/O is around them:
//!
//! - [`deployment`]: the deployment JSON, parsed and validated like an assignment.
//! - [`snapshot`]: everything a pass decides from, read with the reads pipelined.
//! - [`placement`]: filters (alive, draining, labels, affinity, spread, resources) and
//!   strategies (`most_free_memory`, `least_cpu`, `spread`, `binpack`) choosing hosts.
//! - [`plan`]: per deployment, what to add and remove (scale, lost hosts, drains, global
//!   deployments, orphans) and the instance ids.
//! - [`commit`]: the plan as one all-or-nothing commit under version checks.
//! - [`status`]: the status node (instances, their host, address, state and health, or why
//!   the deployment cannot be placed).
//! - [`run`]: the [`Scheduler`] loop (watch, pass, re-read and retry on conflicts).
//! - [`control`]: the operator's commands (deploy, scale, undeploy, drain, status).
//!
//! Several schedulers may run at once on one store: correctness comes from the version
//! checks of each commit, never from a lock (see [`run`]).

pub mod commit;
pub mod control;
pub mod deployment;
pub mod placement;
pub mod plan;
pub mod run;
pub mod snapshot;
pub mod stats;
pub mod status;

#[cfg(test)]
mod test_support;

pub use control::ControlError;
pub use deployment::{Deployment, DeploymentError, Strategy};
pub use run::{Scheduler, SchedulerConfig, SchedulerHandle};
pub use snapshot::Snapshot;
pub use stats::{SchedulerStats, SchedulerStatsSnapshot};
pub use status::{DeploymentStatus, Phase};
