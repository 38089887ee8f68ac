//! ZooKeeper as the registry and configuration store of caas.
//!
//! Layout under the chroot (default `/caas`), see [`layout`]:
//!
//! ```text
//! /service/address/{appId}/{version}/{containerId}   EPHEMERAL   "{hostIp}:{hostPort}"
//! /apps/{appId}                                      PERSISTENT  AppSpec JSON (optionally encrypted)
//! /domains/{domain}                                  PERSISTENT  "{appId}" (exclusive CNAME claim)
//! /certs/{domain}                                    PERSISTENT  certificate + sealed key (HTTPS)
//! /deployments/{appId}/{version}[/status]            PERSISTENT  see `crate::scheduler`
//! /hosts/{hostId}[/alive|/assignments/{id}|/status/{id}]  see [`hosts`]
//! /gateways/{gatewayId}                              EPHEMERAL   see [`gateways`]
//! ```
//!
//! - [`ZkConfig`] (serde, `deny_unknown_fields`): servers, chroot, session timeout, digest
//!   credentials, ACL readers, TLS files, encryption key file.
//! - [`ZkSession`] ([`session`]): one session that reconnects and, after an expiry, starts a
//!   new one and re-creates the ephemeral nodes it owns (as Curator does).
//! - [`Registry`] ([`registry`]): `register` / `deregister` instances.
//! - [`HostStore`] ([`hosts`]): `/hosts/{hostId}` HostInfo (each writer changes only the
//!   fields it owns), its `alive` node, its assignments and the agent's instance status
//!   nodes.
//! - [`ZkDiscovery`] ([`discovery`]): caas-core's `Discovery`, one persistent recursive watch
//!   plus full reads, cached locally; feed it to a `Router`.
//! - [`gateways`]: each ZooKeeper-fed gateway's EPHEMERAL announcement
//!   `/gateways/{gatewayId}` (its admin and proxy addresses).
//! - [`AppStore`] ([`apps`]): write app specs, claim and release custom domains.
//! - [`certs`]: custom-domain certificates: [`CertStore`] writes them for the claimant app;
//!   [`StoreCertSource`](crate::store::StoreCertSource) feeds them to a gateway's TLS
//!   listener (caas-core's `CertSource`) from any store.
//! - [`acl`]: digest ids and the admin / tenant / gateway ACL helpers.
//! - [`crypto`]: AES-256-GCM envelopes for config values.
//! - [`ZkError`] ([`error`]) and [`ZkStats`] ([`stats`]).

pub mod acl;
pub mod apps;
mod cache;
pub mod certs;
pub mod config;
pub mod crypto;
pub mod discovery;
pub mod error;
pub mod gateways;
mod host_info;
mod host_status;
pub mod hosts;
pub mod layout;
mod read;
pub mod registry;
pub mod session;
pub mod stats;
pub(crate) mod view;

pub use acl::{digest_id, grant_app, provision_tree};
pub use apps::AppStore;
pub use certs::CertStore;
pub use config::{ZkConfig, ZkTlsConfig};
pub use crypto::ValueCipher;
pub use discovery::ZkDiscovery;
pub use error::ZkError;
pub use gateways::{GatewayInfo, announce_gateway, list_gateways, withdraw_gateway};
pub use hosts::{HostInfo, HostStore, Resources};
pub use registry::Registry;
pub use session::ZkSession;
pub use stats::{ZkStats, ZkStatsSnapshot};
