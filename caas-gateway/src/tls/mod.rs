//! HTTPS: TLS termination with rustls beside the plain listener.
//!
//! - [`TlsAcceptor`]: the server side of the handshake. [`TlsAcceptor::new`] serves a
//!   [`CertResolver`] with the gateway's settings (TLS 1.2 and 1.3, ALPN `h2` and
//!   `http/1.1`, a session cache and session tickets for resumption);
//!   [`TlsAcceptor::with_resolver`] does the same for any rustls certificate resolver, and
//!   [`TlsAcceptor::from_config`] takes an embedding program's own `rustls::ServerConfig`.
//! - [`Gateway::serve_tls`]: accepts on a pre-bound listener, completes the handshake
//!   within the head timeout, then serves HTTP/2 or HTTP/1.1 as ALPN chose, through the
//!   same proxy as plain connections (with `X-Forwarded-Proto: https`).
//! - `certs`: the SNI table (exact names, `*.{domain}` wildcards, the most specific wins,
//!   a default certificate or a refusal for unknown names); `x509`: the names of a
//!   certificate; `load`: PEM to a checked certificate and key.
//! - [`CertResolver`] (`resolver`): the table in an `ArcSwap`, rebuilt on every change;
//!   `reload`: certificate files re-read when they change, and a
//!   [`CertSource`](caas_core::CertSource)'s custom-domain certificates applied live.
//! - [`TlsConfig`] (`config`): the `[tls]` table of the config file; [`TlsError`].
//!
//! ```no_run
//! use std::time::Duration;
//! use caas_gateway::{CertResolver, Gateway, GatewayConfig, TlsAcceptor, TlsConfig};
//!
//! # async fn run(tls: TlsConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = Gateway::builder(GatewayConfig::default()).build()?;
//! let certs = CertResolver::from_config(&tls, ".".as_ref())?;
//! tokio::spawn(certs.clone().watch_files(Duration::from_secs(1)));
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
//! gateway
//!     .serve_tls(listener, TlsAcceptor::new(certs)?, std::future::pending())
//!     .await?;
//! # Ok(()) }
//! ```

mod certs;
mod config;
mod load;
mod reload;
mod resolver;
mod x509;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use rustls::ServerConfig;
use rustls::server::{ResolvesServerCert, ServerSessionMemoryCache};
use tokio::net::{TcpListener, TcpStream};

pub use config::{CertError, CertFiles, TlsConfig, TlsError, UnknownSni};
pub use resolver::{CertResolver, CertStats};
/// The rustls this crate is built with, for programs that bring their own `ServerConfig`.
pub use rustls;

use crate::conn::{ConnInfo, Conns, Shared, Verdict};
use crate::error::GatewayError;
use crate::server::{ActiveConn, Gateway, drive, serve_http};

/// TLS sessions remembered for resumption by session id (TLS 1.2; TLS 1.3 clients resume
/// with tickets). About 100 bytes each.
const SESSION_CACHE: usize = 8192;

/// The server side of TLS for [`Gateway::serve_tls`]. Cheap to clone.
#[derive(Clone)]
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    /// The gateway's own resolver, when that is what serves: its counters go to `/metrics`.
    certs: Option<Arc<CertResolver>>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("alpn", &self.acceptor.config().alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Serves the certificates of a [`CertResolver`] with the gateway's TLS settings.
    pub fn new(certs: Arc<CertResolver>) -> Result<Self, TlsError> {
        Self::with_session_resumption(certs, true)
    }

    /// [`new`](Self::new), with session resumption on or off (`[tls] session_resumption`):
    /// off, no session is remembered and no ticket is issued, so every handshake is a full
    /// one.
    pub fn with_session_resumption(
        certs: Arc<CertResolver>,
        resumption: bool,
    ) -> Result<Self, TlsError> {
        let resolver = Arc::clone(&certs) as Arc<dyn ResolvesServerCert>;
        let mut acceptor = Self::from_config(Arc::new(server_config(resolver, resumption)?));
        acceptor.certs = Some(certs);
        Ok(acceptor)
    }

    /// Serves the certificates any rustls resolver picks, with the gateway's TLS settings:
    /// TLS 1.2 and 1.3 (aws-lc-rs), ALPN `h2` then `http/1.1`, an in-memory session cache
    /// and session tickets (keys rotated by rustls every 6 hours, one ticket per handshake)
    /// for resumption.
    pub fn with_resolver(resolver: Arc<dyn ResolvesServerCert>) -> Result<Self, TlsError> {
        Ok(Self::from_config(Arc::new(server_config(resolver, true)?)))
    }

    /// Uses an embedding program's own rustls configuration as it is. HTTP/2 is served
    /// when ALPN picks `h2`: put `h2` in its `alpn_protocols` (before `http/1.1`) to offer
    /// it; a client that negotiates nothing gets HTTP/1.1.
    pub fn from_config(config: Arc<ServerConfig>) -> Self {
        Self {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            certs: None,
        }
    }

    /// The rustls configuration in use.
    pub fn config(&self) -> &Arc<ServerConfig> {
        self.acceptor.config()
    }
}

/// The gateway's TLS settings around `resolver`; with `resumption` off no session is
/// remembered (rustls' default keeps 256) and no ticket issued (its default ticketer makes
/// none, but it would send two TLS 1.3 tickets it remembers itself).
fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    resumption: bool,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::clone(load::provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if resumption {
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        // One ticket per handshake, for the client's next connection, as Go's crypto/tls
        // issues them: rustls' two cost each client a second session object it seldom uses
        // (OpenSSL issues two after a full handshake, one after a resumed one).
        config.send_tls13_tickets = 1;
    } else {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(config)
}

impl Gateway {
    /// Serves HTTPS on `listener` until `shutdown` resolves, like [`serve`](Self::serve)
    /// does plain HTTP (run both side by side with the same shutdown signal; they share
    /// routes, stats and upstream pools). A handshake must complete within the head timeout
    /// (`limits.header_read_timeout_ms`); ALPN `h2` gets HTTP/2, anything else HTTP/1.1.
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        tls: TlsAcceptor,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), GatewayError> {
        if let Some(certs) = &tls.certs {
            certs.reserve(&self.shared.config.domains);
            // The first resolver served is the one `/metrics` reports on.
            let _ = self.shared.certs.set(Arc::clone(certs));
        }
        self.accept_loop(
            listener,
            shutdown,
            "gateway (TLS)",
            move |shared, s, peer, conns| {
                tls_connection(shared, tls.acceptor.clone(), s, peer, conns)
            },
        )
        .await
    }
}

/// A plain function around an `async move` block, as the plain-text connection's (an
/// `async fn` would keep room for its arguments twice in every connection's task).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn's future holds its arguments twice, in every connection's task"
)]
fn tls_connection(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    conns: Arc<Conns>,
) -> impl Future<Output = ()> + Send {
    async move {
        let _active = ActiveConn::open(&shared.stats);
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "set_nodelay failed: {e}");
        }
        let info = Arc::new(ConnInfo::new(peer, true));
        let _watched = conns.register(&info);
        // Boxed: the handshake's state (over 1 KiB) lives as long as the handshake, not in
        // the connection's task for its whole life. The sweeper holds it to the head timeout.
        let mut handshake = Box::pin(acceptor.accept(stream));
        // The ALPN answer is read in the arm, so the stream is only moved afterwards, never
        // borrowed: a borrowed local keeps its room in the task for the connection's life.
        let (tls, h2) = match drive(&shared, &info, handshake.as_mut(), |_| true).await {
            Ok(Ok(tls)) => {
                let session = tls.get_ref().1;
                if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    shared.stats.tls_resumed_handshakes.fetch_add(1, Relaxed);
                }
                let h2 = session.alpn_protocol() == Some(b"h2");
                (tls, h2)
            }
            Ok(Err(e)) => {
                shared.stats.tls_handshake_failures.fetch_add(1, Relaxed);
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                return;
            }
            Err(Verdict::Stop) => return,
            Err(_) => {
                shared.stats.tls_handshake_failures.fetch_add(1, Relaxed);
                return;
            }
        };
        drop(handshake);
        shared.stats.tls_handshakes.fetch_add(1, Relaxed);
        info.protocol_known(h2);
        serve_http(&shared, tls, info).await;
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::ClientHello;
    use rustls::sign::CertifiedKey;

    use super::*;
    use crate::GatewayConfig;

    #[derive(Debug)]
    struct NoCertificate;

    impl ResolvesServerCert for NoCertificate {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            None
        }
    }

    /// An idle HTTPS connection costs what a plain one does: the handshake's state (over
    /// 1 KiB) and the TLS stream are on the heap, not in the connection's task.
    #[tokio::test]
    async fn an_idle_tls_connection_task_is_small() {
        let gateway = Gateway::builder(GatewayConfig::default()).build().unwrap();
        let acceptor = TlsAcceptor::with_resolver(Arc::new(NoCertificate)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let task = tls_connection(
            Arc::clone(&gateway.shared),
            acceptor.acceptor.clone(),
            stream,
            peer,
            Arc::default(),
        );
        // 336 bytes (344 in a debug build); 3.2 KiB with the handshake inline and `async
        // fn`s keeping their arguments twice, 640 with a timer and stop signal of its own.
        let size = std::mem::size_of_val(&task);
        assert!(size <= 352, "{size} bytes");
    }
}
