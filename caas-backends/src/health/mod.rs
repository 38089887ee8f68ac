//! Health of running containers, and the brakes on acting on it.
//!
//! - [`HealthChecker`]: one task per container that probes `GET {path}` on its published
//!   port every interval (with a timeout) and reports state changes
//!   ([`HealthState::Healthy`] / [`HealthState::Unhealthy`]) on a channel. The decision logic
//!   is the pure [`Tracker`] (fall/rise thresholds, start grace period).
//! - [`Backoff`]: exponential delay with a cap between restarts of a failing container.
//! - [`KillLimiter`]: at most N kills per minute per host, so a host under load that makes
//!   every ping slow is not emptied by its own health checker.
//!
//! - [`Supervisor`]: the order of operations as pure logic: register after the first pass;
//!   on failure deregister first, then ask the limiter, then restart (after the backoff
//!   delay) or remove per [`FailurePolicy`]. The host agent executes its [`Action`]s.
//!
//! [`FailurePolicy`]: crate::assignment::FailurePolicy

mod backoff;
mod checker;
mod limiter;
mod probe;
mod supervisor;

pub use backoff::Backoff;
pub use checker::{
    HealthChecker, HealthConfig, HealthEvent, HealthHandle, HealthState, HealthStats, Tracker,
};
pub use limiter::KillLimiter;
pub use probe::{HttpProbe, Probe};
pub use supervisor::{Action, Supervisor};
