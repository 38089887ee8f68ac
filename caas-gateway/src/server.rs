//! The [`Gateway`]: accepts connections on a pre-bound listener, serves HTTP/1.1 with the
//! gateway's own connection (`client_h1`) and HTTP/2 (h2c with prior knowledge) with hyper,
//! applies discovery updates to its router, and drains in-flight requests on shutdown.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, ready};
use std::time::Duration;

use caas_core::{ApplyReport, Discovery, Router, Update};
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::access_log::{AccessLog, AccessLogConfig, AccessLogStats};
use crate::body::RequestBody;
use crate::client_h1;
use crate::client_h1::wire::Io;
use crate::client_io::{ClientIo, ClientStream};
use crate::config::{GatewayConfig, Limits};
use crate::conn::{ConnInfo, Conns, Shared, Timeouts, Verdict};
use crate::error::GatewayError;
use crate::proxy::serve_request;
use crate::routes::{self, Following, Routes};
use crate::stats::GatewayStats;
use crate::upstream::UpstreamPool;

/// An embeddable L7 gateway. Cheap to clone; clones share routes and stats.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
    discovery: Arc<Mutex<Option<Following>>>,
    /// A listener's loop runs the upstream reaper (one for all listeners).
    reaping: Arc<AtomicBool>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("router", &self.shared.router)
            .finish()
    }
}

/// Builds a [`Gateway`].
pub struct GatewayBuilder {
    config: GatewayConfig,
    hyper_http1: bool,
    router: Option<Arc<Router>>,
    discovery: Option<Following>,
}

impl std::fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("config", &self.config)
            .finish()
    }
}

impl GatewayBuilder {
    /// Where routes come from; updates are applied to the router as they arrive, on a thread
    /// of the gateway's own ("caas-routes", at nice 10 on Linux), never on a serving thread:
    /// a change to one app in a table of 100,000 takes tens of microseconds, a whole rebuild
    /// milliseconds, and requests in flight wait for neither. A discovery that
    /// [updates rarely](Discovery::updates_rarely), such as [`FileDiscovery`](crate::FileDiscovery),
    /// is waited on by the serving runtime instead, and each of its updates applied on a
    /// blocking-pool thread. The discovery's own background tasks, if it has any, run where
    /// it spawned them.
    pub fn discovery(mut self, discovery: impl Discovery) -> Self {
        let router = Arc::clone(self.router_ref());
        self.discovery = Some(routes::follow(discovery, router));
        self
    }

    /// Turns the access log on (the same as setting [`GatewayConfig::access_log`]).
    pub fn access_log(mut self, log: AccessLogConfig) -> Self {
        self.config.access_log = Some(log);
        self
    }

    /// Serves HTTP/1.1 clients with hyper's server instead of the gateway's own connection
    /// (which holds no buffers while a connection waits for its next request). For tests
    /// that compare the two.
    #[doc(hidden)]
    pub fn hyper_http1(mut self, on: bool) -> Self {
        self.hyper_http1 = on;
        self
    }

    /// Uses an existing router (for instance one shared with an admin API, or one a store
    /// client on a thread of its own feeds with [`apply_update`]).
    pub fn router(mut self, router: Arc<Router>) -> Self {
        self.router = Some(router);
        self
    }

    fn router_ref(&mut self) -> &Arc<Router> {
        let domains = self.config.domains.clone();
        self.router
            .get_or_insert_with(|| Arc::new(Router::new(domains)))
    }

    /// Finishes the gateway.
    pub fn build(mut self) -> Result<Gateway, GatewayError> {
        let limits = self.config.limits.clone();
        limits.validate().map_err(GatewayError::Config)?;
        let router = Arc::clone(self.router_ref());
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            // The head timeout is the connection task's (see `serve_connection`): hyper's
            // would also cut keep-alive connections waiting for their next request, and
            // arms a new timer for every request.
            .header_read_timeout(None)
            .max_headers(limits.max_headers.saturating_mul(2))
            .max_buf_size(limits.max_header_bytes.saturating_mul(2).max(64 * 1024))
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new()).max_header_list_size(
            u32::try_from(limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
        );
        let timeouts = Timeouts {
            connect: Limits::dur(limits.upstream_connect_timeout_ms),
            response: Limits::dur(limits.upstream_response_timeout_ms),
            upstream_idle: Limits::dur(limits.upstream_idle_timeout_ms),
            idle: Limits::dur(limits.idle_timeout_ms),
            head: Limits::dur(limits.header_read_timeout_ms),
            eject: Limits::dur(limits.eject_ms),
            grace: Limits::dur(limits.shutdown_grace_ms),
            tunnel_idle: Limits::dur(limits.tunnel_idle_timeout_ms),
        };
        let access_log = match &self.config.access_log {
            Some(c) => Some(AccessLog::start(c).map_err(|e| GatewayError::Config(e.to_string()))?),
            None => None,
        };
        Ok(Gateway {
            shared: Arc::new(Shared {
                router,
                config: self.config,
                timeouts,
                stats: GatewayStats::default(),
                h1,
                h2,
                hyper_http1: self.hyper_http1,
                certs: std::sync::OnceLock::new(),
                access_log,
            }),
            discovery: Arc::new(Mutex::new(self.discovery)),
            reaping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Builds the gateway and serves `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), GatewayError> {
        self.build()?.serve(listener, shutdown).await
    }
}

/// Applies one discovery update to `router` and logs what it rebuilt: what the gateway does
/// with each update of its [`GatewayBuilder::discovery`], for routers fed another way (a
/// store client on a thread of its own, sharing the router through
/// [`GatewayBuilder::router`]). Blocks for as long as the rebuild takes: a whole table of
/// many apps takes milliseconds.
pub fn apply_update(router: &Router, update: Update) -> ApplyReport {
    let report = router.apply(update);
    log_applied(&report);
    report
}

fn log_applied(report: &ApplyReport) {
    // One app's routes change with every registration: at debug, so a busy cluster does not
    // fill the log; whole rebuilds stay at info.
    if report.whole {
        tracing::info!(
            generation = report.generation,
            apps = report.apps,
            build_us = report.build_time.as_micros() as u64,
            "route table rebuilt"
        );
    } else {
        tracing::debug!(
            generation = report.generation,
            build_us = report.build_time.as_micros() as u64,
            "one app's routes updated"
        );
    }
}

impl Gateway {
    /// Starts building a gateway.
    pub fn builder(config: GatewayConfig) -> GatewayBuilder {
        GatewayBuilder {
            config,
            hyper_http1: false,
            router: None,
            discovery: None,
        }
    }

    /// The router holding the live route table.
    pub fn router(&self) -> &Arc<Router> {
        &self.shared.router
    }

    /// Gateway-wide counters.
    pub fn stats(&self) -> &GatewayStats {
        &self.shared.stats
    }

    /// The access log's counters, when it is on.
    pub fn access_log_stats(&self) -> Option<&Arc<AccessLogStats>> {
        self.shared.access_log.as_ref().map(AccessLog::stats)
    }

    /// The configuration in force.
    pub fn config(&self) -> &GatewayConfig {
        &self.shared.config
    }

    /// The certificate resolver of the TLS listener, once [`serve_tls`](Self::serve_tls)
    /// serves one.
    pub fn cert_resolver(&self) -> Option<&Arc<crate::tls::CertResolver>> {
        self.shared.certs.get()
    }

    /// Serves `listener` until `shutdown` resolves, then stops accepting, lets in-flight
    /// requests finish (up to `limits.shutdown_grace_ms`) and returns.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), GatewayError> {
        self.accept_loop(listener, shutdown, "gateway", serve_connection)
            .await
    }

    /// Accepts connections on `listener` and runs `conn` for each until `shutdown`, then
    /// drains. The first loop to start also runs the discovery and the upstream reaper
    /// (a plain and a TLS listener share them) and stops them when it ends.
    pub(crate) async fn accept_loop<F, Fut>(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
        kind: &'static str,
        conn: F,
    ) -> Result<(), GatewayError>
    where
        F: Fn(Arc<Shared>, TcpStream, SocketAddr, Arc<Conns>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let local = listener.local_addr().ok();
        let discovery = self
            .discovery
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(Routes::start);
        let reaper = (!self.reaping.swap(true, Relaxed))
            .then(|| tokio::spawn(reap_idle_upstreams(Arc::clone(&self.shared))));
        let open = Arc::new(Conns::default());
        let sweeper = tokio::spawn(sweep(Arc::clone(&self.shared), Arc::clone(&open)));
        let mut conns = JoinSet::new();
        tracing::info!(addr = ?local, "{kind} listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let shared = Arc::clone(&self.shared);
                        conns.spawn(conn(shared, stream, peer, Arc::clone(&open)));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning, keep serving.
                        tracing::error!(addr = ?local, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(listener);
        tracing::info!(
            open = conns.len(),
            "{kind} shutting down: draining connections"
        );
        open.stop_all();
        let drained = tokio::time::timeout(self.shared.timeouts.grace, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = conns.len(),
                "shutdown grace period over; closing remaining connections"
            );
            conns.shutdown().await;
        }
        sweeper.abort();
        if let Some(r) = reaper {
            r.abort();
            self.reaping.store(false, Relaxed);
        }
        if let Some(d) = discovery {
            d.stop().await;
        }
        Ok(())
    }
}

/// Drops the active-connection count when the connection task ends, however it ends.
pub(crate) struct ActiveConn<'a>(&'a AtomicUsize);

impl<'a> ActiveConn<'a> {
    /// Counts a connection accepted and open until the guard drops.
    pub(crate) fn open(stats: &'a GatewayStats) -> Self {
        stats.connections_accepted.fetch_add(1, Relaxed);
        stats.connections_active.fetch_add(1, Relaxed);
        Self(&stats.connections_active)
    }
}

impl Drop for ActiveConn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

// The connection futures below are plain functions around `async move` blocks, not
// `async fn`s: an `async fn`'s future keeps room for its arguments twice (as captured, and
// as moved into its body), and these futures are what an idle connection costs.

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn's future holds its arguments twice, in every connection's task"
)]
fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    conns: Arc<Conns>,
) -> impl Future<Output = ()> + Send {
    async move {
        let _active = ActiveConn::open(&shared.stats);
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "set_nodelay failed: {e}");
        }
        let info = Arc::new(ConnInfo::new(peer, false));
        let _watched = conns.register(&info);
        // HTTP/2 with prior knowledge or HTTP/1, told apart by peeking at the first bytes:
        // hyper then reads straight from the socket into its own buffer (no rewind layer, no
        // copy).
        let sniffed = drive(&shared, &info, pin!(sniff_h2(&stream)), |_| true).await;
        let h2 = match sniffed {
            Ok(Ok(h2)) => h2,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "client connection ended before a request: {e}");
                return;
            }
            Err(_) => return,
        };
        info.protocol_known(h2);
        serve_http(&shared, stream, info).await;
    }
}

/// Serves HTTP on an accepted client connection (plain, or TLS after the handshake) until
/// it ends: HTTP/2 or HTTP/1.1 as `info` says, every request through the proxy. The stream
/// is boxed before the future is made, so the future holds a pointer, not the stream (a
/// TLS stream is over 1 KiB).
pub(crate) fn serve_http<S>(
    shared: &Arc<Shared>,
    stream: S,
    info: Arc<ConnInfo>,
) -> impl Future<Output = ()> + Send + '_
where
    S: ClientStream,
{
    let io: Result<Box<dyn Io>, Box<S>> = if !info.h2() && !shared.hyper_http1 {
        Ok(Box::new(ClientIo::own(
            stream,
            Arc::clone(&info),
            Arc::clone(shared),
        )))
    } else {
        Err(Box::new(stream))
    };
    async move {
        match io {
            Ok(io) => {
                let conn = pin!(client_h1::serve(Arc::clone(shared), io, Arc::clone(&info)));
                let ended = drive(shared, &info, conn, |_| {
                    info.draining.store(true, Relaxed);
                    false
                });
                log_end(&info, ended.await);
            }
            // Boxed: hyper's connection state is large, and an idle HTTP/1.1 connection of
            // the gateway's own should not carry room for it in its task.
            Err(stream) => Box::pin(serve_hyper(shared, stream, info)).await,
        }
    }
}

/// Serves a client connection with hyper: HTTP/2, or HTTP/1.1 when the builder asks for it.
async fn serve_hyper<S>(shared: &Arc<Shared>, stream: S, info: Arc<ConnInfo>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(ClientIo::new(stream, Arc::clone(&info), Arc::clone(shared)));
    let svc = {
        let shared = Arc::clone(shared);
        let info = Arc::clone(&info);
        // Boxed: hyper keeps a slot for the service's future in every connection from its
        // start; a box there costs an idle keep-alive connection 8 bytes instead of the
        // whole request state (about 3 KiB), for one allocation per request.
        service_fn(move |req: Request<Incoming>| {
            Box::pin(serve_request(
                Arc::clone(&shared),
                Arc::clone(&info),
                req.map(RequestBody::new),
            ))
        })
    };
    let ended = if info.h2() {
        let conn = pin!(shared.h2.serve_connection(io, svc));
        drive(shared, &info, conn, |c| {
            c.graceful_shutdown();
            false
        })
        .await
    } else {
        let conn = pin!(shared.h1.serve_connection(io, svc).with_upgrades());
        drive(shared, &info, conn, |c| {
            c.graceful_shutdown();
            false
        })
        .await
    };
    log_end(&info, ended);
}

fn log_end<E: std::fmt::Display>(info: &ConnInfo, ended: Result<Result<(), E>, Verdict>) {
    if let Ok(Err(e)) = ended {
        tracing::debug!(peer = %info.peer, "client connection ended: {e}");
    }
}

/// Runs a phase of a client connection (`conn`: the protocol sniff, the TLS handshake, the
/// HTTP connection) to its end, unless the gateway ends it first: the sweeper closes it when
/// idle or slow to send a request head (`Err`, counted here), and when the gateway stops,
/// `on_stop` starts a graceful shutdown (`false`: the phase goes on, to end on its own) or
/// asks to close at once (`true`).
///
/// The connection is polled on every wake-up; what the gateway asked is one atomic load,
/// and no timer is polled.
pub(crate) fn drive<'a, C>(
    shared: &'a Shared,
    info: &'a ConnInfo,
    // Pinned by the caller: taken by value and pinned here, it would take its room twice in
    // the connection's task.
    mut conn: Pin<&'a mut C>,
    mut on_stop: impl FnMut(Pin<&mut C>) -> bool + Send + 'a,
) -> impl Future<Output = Result<C::Output, Verdict>> + Send + 'a
where
    C: Future + Send,
{
    let mut known = None;
    poll_fn(move |cx| {
        crate::busy_poll::note_work();
        loop {
            if let Poll::Ready(out) = conn.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            match info.verdict(cx, &mut known) {
                None => return Poll::Pending,
                Some(Verdict::Stop) => {
                    // Taken back, so the next wake-up does not start the shutdown again.
                    info.stop_taken();
                    if on_stop(conn.as_mut()) {
                        return Poll::Ready(Err(Verdict::Stop));
                    }
                    // Polled again, to act on the shutdown.
                }
                Some(v @ Verdict::HeadTimeout) => {
                    shared.stats.header_timeouts.fetch_add(1, Relaxed);
                    tracing::debug!(peer = %info.peer, "request head not complete in time; closing");
                    return Poll::Ready(Err(v));
                }
                Some(v @ Verdict::Idle) => {
                    shared.stats.idle_closed.fetch_add(1, Relaxed);
                    tracing::debug!(peer = %info.peer, "closing idle client connection");
                    return Poll::Ready(Err(v));
                }
            }
        }
    })
}

/// Tells the connections of one listener to close when idle or slow to send a request head:
/// one timer for all of them, ticking four times per (shorter) timeout. A connection is
/// idle when no byte moved and no request waited on an upstream for the idle timeout.
async fn sweep(shared: Arc<Shared>, conns: Arc<Conns>) {
    let t = &shared.timeouts;
    let head_ms = u64::try_from(t.head.as_millis()).unwrap_or(u64::MAX);
    let tick = (t.idle.min(t.head) / 4).max(Duration::from_millis(1));
    let idle_ticks = u32::try_from(t.idle.as_nanos().div_ceil(tick.as_nanos())).unwrap_or(u32::MAX);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        conns.sweep(head_ms, idle_ticks);
    }
}

/// The HTTP/2 client preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client opens with the HTTP/2 preface, by peeking (nothing is consumed).
/// Decides as soon as the bytes differ from the preface; `Err` when the client closes or
/// fails before sending anything.
async fn sniff_h2(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        // Peeked with `poll_peek`: `peek`'s future is four times the size, and this one lives
        // in the connection's task.
        let n = poll_fn(|cx| {
            let mut rb = tokio::io::ReadBuf::new(&mut buf);
            ready!(stream.poll_peek(cx, &mut rb))?;
            Poll::Ready(Ok::<_, io::Error>(rb.filled().len()))
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A partial preface (rare: it is one small write): peek again once more arrived.
        // Readiness stays set after a peek, so wait a little instead of spinning. Boxed:
        // the timer would otherwise keep its room in every connection's task.
        Box::pin(tokio::time::sleep(Duration::from_millis(1))).await;
    }
}

/// Closes pooled upstream connections that sat idle past `upstream_idle_timeout_ms`.
async fn reap_idle_upstreams(shared: Arc<Shared>) {
    let every = (shared.timeouts.upstream_idle / 2).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        let table = shared.router.current();
        let mut closed = 0;
        for app in table.apps() {
            for v in app.versions() {
                for ep in v.pool().endpoints() {
                    if let Some(pool) = ep.get_attachment::<UpstreamPool>() {
                        closed += pool.reap(shared.timeouts.upstream_idle);
                    }
                }
            }
        }
        if closed > 0 {
            tracing::debug!(closed, "closed idle upstream connections");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle HTTP/1.1 connection costs beyond its socket is mostly the state of its
    /// task: the connection's future, which must not carry a request's state or buffers.
    #[tokio::test]
    async fn an_idle_connection_task_is_small() {
        let gateway = Gateway::builder(GatewayConfig::default()).build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let task = serve_connection(Arc::clone(&gateway.shared), stream, peer, Arc::default());
        // 336 bytes (344 in a debug build). With hyper's connection inline it was 3.7 KiB,
        // with the gateway's connection twice in it (moved, then pinned) 1.5 KiB, with
        // `async fn`s keeping their arguments twice 848 bytes, with a timer and a stop
        // signal of its own (now the listener's sweeper's) and `peek`'s future 640 bytes.
        // tokio rounds a task up to 128 bytes: 336 bytes of future make a 512-byte task,
        // 640 a 768-byte one.
        let size = std::mem::size_of_val(&task);
        assert!(size <= 352, "{size} bytes");
    }
}
