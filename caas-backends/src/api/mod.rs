//! The control API: tenants deploy, scale, route and remove their apps over HTTP and JSON
//! (`/v1/...`), without touching the store; the API writes with its own identity.
//!
//! - [`auth`]: bearer tokens (the tokens file maps each token's SHA-256 to a tenant, the
//!   apps it owns and an admin flag; re-read when it changes).
//! - [`routes`]: the one table of endpoints, and what every route checks first (the token,
//!   admin-only routes, the app's owner: another tenant's app is a 404, exactly as an app
//!   that does not exist).
//! - [`apps`], [`versions`], [`settings`], [`hosts`], [`stats`], [`logs`]: the handlers.
//! - [`views`]: the JSON the API answers with.
//! - [`txn`]: every change is one store commit under the versions it read, decided again
//!   on a conflict; [`error`]: one status, one code, one JSON body per failure;
//!   [`http`]: bodies, strict JSON parsing that names the field at fault, a small client.
//!
//! The API is written against the [`Store`] contract, so another store can serve it.

pub mod apps;
pub mod auth;
pub mod error;
pub mod hosts;
pub mod http;
pub mod logs;
pub mod rollouts;
pub mod routes;
pub mod settings;
pub mod stats;
pub mod txn;
pub mod versions;
pub mod views;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

pub use auth::{Principal, Tokens};
pub use error::ApiError;
pub use http::ApiBody;

use crate::store::Store;
use crate::zk::ValueCipher;

/// Knobs of the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// How long a gateway has to answer `/stats/{app}` before it is listed as missing.
    pub stats_timeout: Duration,
    /// How long a host agent has to start answering a logs request.
    pub logs_timeout: Duration,
    /// A client must send a complete request head within this.
    pub header_read_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            stats_timeout: Duration::from_secs(2),
            logs_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
struct Inner<S> {
    store: S,
    tokens: Tokens,
    cipher: Option<ValueCipher>,
    config: ApiConfig,
}

/// The control API over a store. Cheap to clone.
#[derive(Debug)]
pub struct Api<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Api<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Store> Api<S> {
    /// An API writing to `store`, authenticating with `tokens`. `cipher` seals app spec
    /// nodes as the rest of the platform does when config values are encrypted.
    pub fn new(store: S, tokens: Tokens, cipher: Option<ValueCipher>, config: ApiConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                tokens,
                cipher,
                config,
            }),
        }
    }

    /// The store the API writes to.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The tokens in force.
    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    /// The key sealing app spec values, if any.
    pub fn cipher(&self) -> Option<&ValueCipher> {
        self.inner.cipher.as_ref()
    }

    /// The server's knobs.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// Answers one request (usable without a socket).
    pub async fn handle<B: http::RequestBody>(
        &self,
        req: ::http::Request<B>,
    ) -> ::http::Response<ApiBody> {
        routes::handle(self, req).await
    }

    /// Serves HTTP/1.1 on `listener` until `shutdown` resolves; connections in progress
    /// (a log being followed) end with the process.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => return Ok(()),
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: pause instead of spinning.
                        tracing::error!(error = %e, "api accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let api = self.clone();
            let head_timeout = self.inner.config.header_read_timeout;
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, std::convert::Infallible>(api.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(head_timeout)
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "api connection ended");
                }
            });
        }
    }
}
