//! caas-backends: the control plane's backends, implementing caas-core's contracts.
//!
//! - [`zk`]: ZooKeeper as registry and configuration store: the session (reconnect,
//!   re-creation of ephemerals after expiry), instance [`zk::Registry`], the
//!   [`zk::ZkDiscovery`] that feeds the gateway's router, app config and domain claims
//!   ([`zk::AppStore`]), digest ACLs, TLS and AES-GCM encrypted values.
//! - `testing` (feature `testing`): a real ZooKeeper server for tests, started on a free
//!   loopback port (`testing::ZkServer`), and a `testing::TcpProxy` that cuts the network
//!   to make sessions expire.

pub mod zk;

pub use zk::{AppStore, Registry, ZkConfig, ZkDiscovery, ZkError, ZkSession};

#[cfg(feature = "testing")]
pub mod testing;
