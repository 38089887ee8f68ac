//! caas-gateway: the caas L7 data plane, embeddable in any tokio program.
//!
//! One request takes one path through the crate, readable top to bottom:
//!
//! - [`server`]: [`Gateway::builder`]`(config).discovery(d).serve(listener, shutdown)`:
//!   accept on a pre-bound listener, HTTP/2 (h2c) via hyper, header-read and idle timeouts,
//!   graceful drain on shutdown. `client_h1`: the gateway's own HTTP/1.1 server connection,
//!   which holds no buffer while it waits for the next request (`head`: request heads in,
//!   response heads out; `wire`: the socket, shared with the request body that reads
//!   itself from it). `conn`: the state every connection shares and what is known of each
//!   client connection; `client_io`: the client socket (activity for the timers, and under
//!   hyper JSON in place of its bare parse-error answers).
//! - `proxy`: limits → the request's authority, decided once (`headers::Authority`) → route
//!   through the lock-free [`caas_core::Router`] → blacklist and rate limit → balancer pick →
//!   forward, retrying a failed connect on another endpoint through the same filters;
//!   WebSocket upgrades tunnelled both ways. Blame is decided there: only the upstream's
//!   failures count against its endpoint.
//! - `upstream`: the gateway's own HTTP/1.1 client, run in the request's task: connections,
//!   the exchange of a request for a response head, the streamed response body, and the
//!   per-endpoint pools of idle connections. `h1` is its wire format.
//! - [`body`]: [`ProxyBody`] and the client's request body; bodies stream through in both
//!   directions, never buffered whole.
//! - `headers`: the authority, hop-by-hop removal and `X-Forwarded-*`.
//! - [`error`]: the [`ErrorCode`] table (one code, one status, one party to blame per cause)
//!   and [`ProxyError`], each a short JSON answer; [`stats`]: [`GatewayStats`].
//! - [`tls`]: HTTPS beside the plain listener: [`Gateway::serve_tls`] with a
//!   [`TlsAcceptor`] (rustls, ALPN `h2` / `http/1.1`, session resumption and tickets);
//!   certificates chosen by SNI from the [`CertResolver`] (exact names over `*.{domain}`
//!   wildcards, a default certificate or a refused handshake for unknown names), files
//!   reloaded live, custom domains' certificates from any [`caas_core::CertSource`]. Or
//!   bring your own `rustls::ServerConfig` ([`TlsAcceptor::from_config`]) or resolver
//!   ([`TlsAcceptor::with_resolver`]).
//! - `redirect`: apps with `https_redirect` answer plain HTTP with a 308 to HTTPS.
//! - [`access_log`]: one JSON line per request, written by its own thread through a
//!   bounded queue (a full queue drops and counts, never blocks a request).
//! - [`admin`]: `/healthz`, `/routes`, `/metrics`, `/stats/{appId}` on a separate listener.
//! - [`busy_poll`]: a one-worker runtime that polls for events a little while before it
//!   sleeps (the config's `busy_poll_us`): lower latency at light load for idle CPU time.
//! - [`config`]: [`GatewayConfig`], [`Limits`] and the example server's [`FileConfig`];
//!   [`file`](mod@file): the hot-reloading [`FileDiscovery`].
//!
//! Modules depend one way: `h1` ← `upstream` ← `body` ← `error` ← `stats` ← `conn` ←
//! `proxy` ← `client_h1` ← `server` ← `tls` ← `admin` (`redirect` sits beside `proxy`;
//! `access_log` between `error` and `conn`; `client_h1::wire`, the request body's source,
//! beside `body`).
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
//!
//! HTTPS with the program's own rustls configuration, beside plain HTTP:
//!
//! ```no_run
//! use std::sync::Arc;
//! use caas_gateway::{Gateway, GatewayConfig, TlsAcceptor};
//!
//! # async fn run(server_config: rustls::ServerConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = Gateway::builder(GatewayConfig::default()).build()?;
//! let tls = TlsAcceptor::from_config(Arc::new(server_config)); // alpn_protocols: h2, http/1.1
//! let (plain, secure) = (
//!     tokio::net::TcpListener::bind("0.0.0.0:80").await?,
//!     tokio::net::TcpListener::bind("0.0.0.0:443").await?,
//! );
//! let (stop_tx, stop) = tokio::sync::watch::channel(());
//! let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
//!     let _ = rx.changed().await;
//! };
//! let (a, b) = tokio::join!(
//!     gateway.serve(plain, stopped(stop.clone())),
//!     gateway.serve_tls(secure, tls, stopped(stop)),
//! );
//! # drop(stop_tx);
//! a?;
//! b?;
//! # Ok(()) }
//! ```

pub mod access_log;
pub mod admin;
pub mod body;
pub mod busy_poll;
mod client_h1;
mod client_io;
pub mod config;
mod conn;
pub mod error;
pub mod file;
mod h1;
mod headers;
mod proxy;
mod redirect;
mod routes;
pub mod server;
pub mod stats;
pub mod tls;
mod tunnel;
mod upstream;

pub use access_log::{AccessLogConfig, AccessLogStats, AccessLogTarget};
pub use body::ProxyBody;
pub use config::{ConfigError, FileConfig, GatewayConfig, Limits};
pub use error::{Blame, ErrorCode, GatewayError, ProxyError};
pub use file::{FileDiscovery, ReloadStats};
pub use server::{Gateway, GatewayBuilder, apply_update};
pub use stats::GatewayStats;
pub use tls::{CertResolver, TlsAcceptor, TlsConfig, TlsError, UnknownSni};
