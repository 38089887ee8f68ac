//! Rolling updates: an app's traffic moves from one version to another in steps while
//! both run, and moves back by itself when the new version is not healthy.
//!
//! A rollout is a node, `/rollouts/{appId}` ([`RolloutState`]), and goes through phases:
//!
//! 1. `starting`: the request is accepted ([`Rollouts::start`]).
//! 2. `waiting_healthy`: the new version's deployment is written beside the old one (the
//!    app's routing pinned to the old version in the same commit, so new instances get no
//!    traffic as they register); the schedulers place it, the agents start it. When every
//!    instance is healthy (its deployment status), the first step is applied; if not within
//!    `health_deadline_ms`, the rollout rolls back.
//! 3. `shifting`: each step moves a share of the old version's traffic (the app's
//!    `weights`), `step_wait_ms` apart. The new version must stay healthy throughout, or the
//!    rollout rolls back.
//! 4. `draining`: at 100 the new version is the `default_version` and takes the old one's
//!    weight; the old one gets no new requests. After `drain_wait_ms` its deployment is
//!    removed (the agents deregister each instance, wait their drain delay, then stop it
//!    with SIGTERM and a grace period, so requests in flight finish).
//! 5. `done`, `rolled_back` (routing as before, the new version removed; the old one never
//!    stopped) or `failed` (refused before anything changed).
//!
//! Modules: [`state`] (the node), [`machine`] (the decisions as a pure function),
//! [`nodes`] (reads and the one-commit writes), [`control`] (start, status, rollback),
//! [`controller`] (the driver; several may run).

pub mod control;
pub mod controller;
pub mod machine;
pub mod nodes;
pub mod state;

#[cfg(test)]
mod controller_tests;
#[cfg(test)]
mod machine_tests;

pub use control::{RolloutError, RolloutRequest, Rollouts};
pub use controller::{Advance, ControllerConfig, ControllerHandle, RolloutController};
pub use machine::{Action, Decision, Observation, VersionView, next, routing_at};
pub use nodes::{ROLLOUTS, rollout_path};
pub use state::{Kind, Outcome, Phase, RolloutState, Routing};
