//! caas-gateway: the caas L7 data plane, embeddable in any tokio program.
//!
//! One request takes one path through the crate, readable top to bottom:
//!
//! - [`server`]: [`Gateway::builder`]`(config).discovery(d).serve(listener, shutdown)`:
//!   accept on a pre-bound listener, HTTP/1.1 and HTTP/2 (h2c) via hyper, header-read and
//!   idle timeouts, graceful drain on shutdown.
//! - [`proxy`](crate::proxy): limits → route by `Host` through the lock-free
//!   [`caas_core::Router`] → blacklist and rate limit → balancer pick → forward, retrying a
//!   failed connect once on another endpoint; WebSocket upgrades tunnelled both ways.
//! - `upstream`: per-endpoint pools of idle HTTP/1.1 connections, lock-free.
//! - [`body`]: bodies stream through in both directions, never buffered whole.
//! - `headers`: hop-by-hop removal and `X-Forwarded-*`.
//! - [`error`]: each [`ProxyError`] is one status code with a short JSON body.
//! - [`admin`]: `/healthz`, `/routes`, `/metrics` on a separate listener.
//! - [`config`]: [`GatewayConfig`], [`Limits`] and the example server's [`FileConfig`];
//!   [`file`]: the hot-reloading [`FileDiscovery`].
//!
//! ```no_run
//! use caas_core::Static;
//! use caas_gateway::{FileConfig, Gateway};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = FileConfig::load("gateway.toml".as_ref())?;
//! let routes = Static::new(cfg.snapshot());
//! let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
//! Gateway::builder(cfg.gateway_config())
//!     .discovery(routes.subscribe())
//!     .serve(listener, async { let _ = tokio::signal::ctrl_c().await; })
//!     .await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod body;
pub mod config;
pub mod error;
pub mod file;
mod h1;
mod headers;
mod proxy;
pub mod server;
mod upstream;

pub use body::ProxyBody;
pub use config::{ConfigError, FileConfig, GatewayConfig, Limits};
pub use error::{GatewayError, ProxyError};
pub use file::FileDiscovery;
pub use server::{Gateway, GatewayBuilder, GatewayStats};
