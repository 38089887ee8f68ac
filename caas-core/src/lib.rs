//! caas-core: the contracts of caas and its hot data structures.
//!
//! No sockets, no ZooKeeper, no Docker: the gateway (`caas-gateway`) and the control plane
//! (`caas-backends`) both build on what is here.
//!
//! - [`id`]: validated identifiers ([`AppId`], [`Version`], [`InstanceId`], [`Domain`]).
//! - [`spec`]: the desired state: [`AppSpec`] per app (versions, endpoints, custom domains,
//!   weights, balancer, blacklist, rate limit, HTTPS redirect) and the whole [`Snapshot`].
//! - [`table`]: the immutable [`RouteTable`], O(1) lookup by `Host`.
//! - [`balance`]: [`Pool`]s with round-robin, smooth weighted round-robin and
//!   power-of-two-choices balancers, and the per-endpoint [`EndpointState`].
//! - [`router`]: the [`Router`], one `ArcSwap` of the whole table; lock-free reads.
//! - [`discovery`]: the [`Discovery`] update stream (`Reset` / `Upsert` / `Remove`) and the
//!   in-memory [`Static`] source.
//! - [`certs`]: the [`CertSource`] stream of custom-domain certificates (PEM) for HTTPS.
//! - [`policy`]: the [`Blacklist`] (networks, paths, user agents) and [`RateLimit`] (per app,
//!   per client) of an app, and the gateway-wide blacklist.
//! - [`stats`], [`limit`]: lock-free counters and the rate limiters (per app, and per client
//!   in a bounded cache).
//! - [`clock`]: the one monotonic millisecond / nanosecond clock the data plane reads.

pub mod balance;
pub mod certs;
pub mod clock;
pub mod discovery;
pub mod id;
pub mod limit;
pub mod policy;
pub mod router;
pub mod spec;
pub mod stats;
pub mod table;

pub use balance::{EndpointState, InFlight, Pool};
pub use certs::{CertSource, CertUpdate, DomainCert};
pub use discovery::{Discovery, Static, StaticUpdates, Update};
pub use id::{AppId, Domain, IdError, InstanceId, Version};
pub use policy::{Blacklist, BlacklistMatcher, Blocked};
pub use router::{ApplyReport, BuildStats, Router};
pub use spec::{
    AppSpec, BalancerKind, Endpoint, IpNet, RateLimit, Snapshot, SpecError, VersionSpec,
};
pub use stats::{Counters, CountersSnapshot};
pub use table::{
    AppInFlight, AppRoute, AppState, Apps, BuildWarning, Refused, Route, RouteTable, VersionRoute,
};
