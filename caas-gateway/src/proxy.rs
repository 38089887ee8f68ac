//! The request path, top to bottom: limits → route by host → app filters → pick → forward on
//! a pooled connection (retrying a failed connect once on another endpoint) → count → respond.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use caas_core::{AppState, EndpointState, RouteTable};
use http::header::HOST;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::body::{ProxyBody, RequestBody, UpstreamBody, clock_ms};
use crate::error::ProxyError;
use crate::h1;
use crate::headers::{is_upgrade_request, request_host, write_upstream_fields};
use crate::server::Shared;
use crate::upstream::{BodySender, Exchange, ExchangeError, UpstreamConn, UpstreamPool};

/// What the gateway knows about one client connection.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    /// The peer's IP, preformatted for `X-Forwarded-For`.
    pub(crate) peer_ip: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub(crate) proto: HeaderValue,
    /// Requests of this connection waiting for an upstream response head.
    pub(crate) waiting: AtomicUsize,
    /// Reads and writes that moved bytes (the idle timer watches it change).
    pub(crate) activity: AtomicU64,
    /// Requests whose response has not been sent in full.
    open: AtomicUsize,
    /// When the pending request head started ([`clock_ms`] + 1): the connection's start, or
    /// the first byte after the last response; 0 while a request is open or the connection
    /// waits on keep-alive with nothing received.
    head_since: AtomicU64,
    /// The client speaks HTTP/2 (no request-head timeout: the connection carries frames
    /// between requests).
    h2: bool,
}

impl ConnInfo {
    pub(crate) fn new(peer: SocketAddr, h2: bool) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        Self {
            peer,
            peer_ip: HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static("http"),
            waiting: AtomicUsize::new(0),
            activity: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            head_since: AtomicU64::new(clock_ms() + 1),
            h2,
        }
    }

    /// Called after each read that brought bytes from the client.
    pub(crate) fn on_read(&self) {
        self.activity.fetch_add(1, Relaxed);
        if self.open.load(Relaxed) == 0 && self.head_since.load(Relaxed) == 0 {
            self.head_since.store(clock_ms() + 1, Relaxed);
        }
    }

    /// Whether an HTTP/1 request head has been pending for `timeout_ms` or more.
    pub(crate) fn head_overdue(&self, timeout_ms: u64) -> bool {
        let since = self.head_since.load(Relaxed);
        since != 0 && !self.h2 && clock_ms() + 1 - since >= timeout_ms
    }

    /// A request head is complete: its response is open until [`ResponseDone`] drops.
    fn request_started(self: &Arc<Self>) -> ResponseDone {
        self.open.fetch_add(1, Relaxed);
        self.head_since.store(0, Relaxed);
        ResponseDone(Arc::clone(self))
    }
}

/// Held by a response body: when it drops, the response has been sent (or abandoned).
#[derive(Debug)]
pub(crate) struct ResponseDone(Arc<ConnInfo>);

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// Counts a request as waiting on its connection (the idle timer leaves it alone).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Relaxed);
        Self(c)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The hyper service function: never fails, every error becomes a response.
pub(crate) async fn serve_request(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let done = conn.request_started();
    let _waiting = Waiting::new(&conn.waiting);
    shared.stats.requests.fetch_add(1, Relaxed);
    let mut app_state = None;
    let resp = match proxy(&shared, &conn, req, started, &mut app_state).await {
        Ok(resp) => resp,
        Err(err) => {
            shared.stats.count_error(&err);
            if let Some(app) = app_state {
                app.stats.record_error();
                app.stats
                    .record_response(err.status().as_u16(), started.elapsed());
            }
            tracing::debug!(peer = %conn.peer, "answered {}: {err}", err.status());
            err.into_response()
        }
    };
    Ok(resp.map(|body| body.on_done(done)))
}

/// The host a request is for: the URI's authority (HTTP/2, absolute-form) or `Host`.
#[inline]
fn host_of<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().host() {
        Some(h) => Some(h),
        None => req.headers().get(HOST)?.to_str().ok(),
    }
}

/// Rejects request heads over the configured limits with a JSON 431 (hyper's own hard limit,
/// twice as large, is the backstop and answers a bare 431).
#[inline]
fn check_head_limits<B>(shared: &Shared, req: &Request<B>) -> Result<(), ProxyError> {
    let limits = &shared.config.limits;
    if req.headers().len() > limits.max_headers {
        return Err(ProxyError::HeadersTooLarge("too many header fields"));
    }
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if size > limits.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge(
            "request head exceeds max_header_bytes",
        ));
    }
    Ok(())
}

/// The app and endpoint a request goes to.
type Picked = (Arc<AppState>, Arc<EndpointState>);
/// Why no endpoint was picked, and the app when one was found (to count the error against).
type Rejected = (ProxyError, Option<Arc<AppState>>);

/// Route, filter and pick, all without awaiting: the table guard is dropped before any I/O.
#[inline]
fn pick(
    table: &RouteTable,
    host: &str,
    peer: SocketAddr,
    avoid: Option<&EndpointState>,
    filter: bool,
) -> Result<Picked, Rejected> {
    let route = table.lookup(host).ok_or((ProxyError::UnknownHost, None))?;
    let app = route.app();
    let state = || Some(Arc::clone(app.state()));
    if filter {
        if app.is_blacklisted(peer.ip()) {
            return Err((ProxyError::Blacklisted, state()));
        }
        if !app.admit() {
            return Err((ProxyError::RateLimited, state()));
        }
    }
    let ep = route
        .pool()
        .and_then(|p| p.pick_avoiding(avoid))
        .ok_or_else(|| (ProxyError::NoEndpoint, state()))?;
    Ok((Arc::clone(app.state()), Arc::clone(ep)))
}

async fn proxy(
    shared: &Shared,
    conn: &ConnInfo,
    req: Request<Incoming>,
    started: Instant,
    app_out: &mut Option<Arc<AppState>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    check_head_limits(shared, &req)?;
    let host = host_of(&req).ok_or(ProxyError::MissingHost)?;
    let (app, mut ep) = match pick(&shared.router.load(), host, conn.peer, None, true) {
        Ok(found) => found,
        Err((e, app)) => {
            *app_out = app;
            return Err(e);
        }
    };
    *app_out = Some(Arc::clone(&app));

    let upgrade = is_upgrade_request(&req);
    let mut req = req.map(RequestBody::new);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let has_body = !body.is_empty();
    // The head is encoded once: sending it again (on a fresh connection, or on another
    // endpoint) costs no copy of the request.
    let mut head = Vec::new();
    let framing = h1::encode_request_head(&parts, has_body, &mut head, |out| {
        write_upstream_fields(&parts, &conn.peer_ip, &conn.proto, upgrade, out);
    });
    let mut body = has_body.then(|| BodySender::new(body, framing));

    // A bodyless idempotent request can be sent again, once, on another endpoint when the
    // first fails before answering: a container that died moments before its deregistration
    // reached the gateway (Docker's proxy accepts, then resets) costs the client nothing.
    let mut may_resend = !upgrade && !has_body && is_idempotent(&parts.method);
    let host = request_host(&parts).unwrap_or_default();
    let (resp_head, upstream, sending, complete, in_flight) = loop {
        let (mut upstream, mut reused) = connect_any(shared, conn, host, &mut ep).await?;
        let in_flight = ep.start_request();
        if let Some(b) = body.as_mut() {
            b.count_to(&app, &ep);
        }
        let addr = ep.endpoint().addr;
        let sent = loop {
            let mut exchange = Exchange::new(&mut upstream, &head, body.take(), &parts.method);
            let res = with_timeout(shared, &mut exchange, addr).await;
            let complete = exchange.request_complete();
            let sender = exchange.take_body();
            match res {
                // The rest of a body the upstream answered early goes on with the response.
                Ok(h) => break Ok((h, sender.filter(|_| !complete), complete)),
                Err(ExchangeError::Closed(_)) if reused => {
                    // A pooled connection the upstream had closed: nothing of the request
                    // was consumed, so it goes again as it is on a fresh connection.
                    body = sender;
                    upstream = Box::pin(UpstreamConn::connect(addr, shared.timeouts.connect))
                        .await
                        .inspect_err(|_| fail_endpoint(shared, &ep))?;
                    shared.stats.upstream_connects.fetch_add(1, Relaxed);
                    reused = false;
                }
                Err(ExchangeError::Closed(reason) | ExchangeError::Failed(reason)) => {
                    body = sender;
                    break Err(ProxyError::Upstream { addr, reason });
                }
                Err(ExchangeError::TimedOut(e)) => break Err(e),
            }
        };
        match sent {
            Ok((h, rest, complete)) => break (h, upstream, rest, complete, in_flight),
            Err(e) => {
                drop(in_flight);
                if ep.record_failure() >= EJECT_AFTER_FAILURES {
                    fail_endpoint(shared, &ep);
                }
                if !(may_resend && matches!(e, ProxyError::Upstream { .. })) {
                    return Err(e);
                }
                may_resend = false;
                match pick(&shared.router.load(), host, conn.peer, Some(&ep), false) {
                    Ok((_, other)) => ep = other,
                    Err(_) => return Err(e),
                }
                tracing::debug!(failed = %addr, next = %ep.endpoint().addr, "resending after: {e}");
            }
        }
    };
    ep.record_success();
    let h1::ResponseHead {
        parts: resp,
        framing,
        keep_alive,
    } = resp_head;
    let status = resp.status;
    let latency = started.elapsed();
    app.stats.record_response(status.as_u16(), latency);
    ep.stats.record_response(status.as_u16(), latency);

    if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ProxyError::Upstream {
                addr: upstream.addr(),
                reason: "101 Switching Protocols to a request that asked for no upgrade".into(),
            });
        };
        shared.stats.upgrades.fetch_add(1, Relaxed);
        let addr = upstream.addr();
        tokio::spawn(tunnel(client_upgrade, upstream, addr));
        drop(in_flight);
        return Ok(Response::from_parts(resp, ProxyBody::empty()));
    }
    let reusable = keep_alive && (complete || sending.is_some());
    let body = UpstreamBody::new(upstream, framing, reusable, sending, in_flight, app);
    Ok(Response::from_parts(resp, ProxyBody::upstream(body)))
}

/// Runs an exchange up to the response head under the response timeout, which runs from the
/// last request-body chunk sent, so an upload taking longer than the timeout is not cut.
async fn with_timeout(
    shared: &Shared,
    exchange: &mut Exchange<'_>,
    addr: SocketAddr,
) -> Result<h1::ResponseHead, ExchangeError> {
    let timeout = shared.timeouts.response;
    let progress = exchange.body.as_ref().and_then(BodySender::progress);
    let response = exchange.response_head();
    tokio::pin!(response);
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            res = &mut response => return res,
            () = tokio::time::sleep_until(deadline) => {
                if let Some(p) = &progress {
                    let quiet = clock_ms().saturating_sub(p.load(Relaxed));
                    if let Some(left) = timeout.checked_sub(Duration::from_millis(quiet)) {
                        if !left.is_zero() {
                            deadline = tokio::time::Instant::now() + left;
                            continue;
                        }
                    }
                }
                return Err(ExchangeError::TimedOut(ProxyError::Timeout {
                    addr,
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                }));
            }
        }
    }
}

/// Consecutive failures (resets, timeouts) after which an endpoint is ejected like one that
/// refused a connection.
const EJECT_AFTER_FAILURES: u32 = 3;

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A connection to `ep`, or, when connecting fails, to another endpoint of the same app
/// (once); `ep` is updated to the endpoint connected to.
async fn connect_any(
    shared: &Shared,
    conn: &ConnInfo,
    host: &str,
    ep: &mut Arc<EndpointState>,
) -> Result<(UpstreamConn, bool), ProxyError> {
    match checkout(shared, ep).await {
        Ok(c) => Ok(c),
        Err(first) => {
            fail_endpoint(shared, ep);
            match pick(&shared.router.load(), host, conn.peer, Some(ep), false) {
                Ok((_, other)) => {
                    *ep = other;
                    checkout(shared, ep)
                        .await
                        .inspect_err(|_| fail_endpoint(shared, ep))
                }
                Err(_) => Err(first),
            }
        }
    }
}

/// An idle pooled connection to `ep`, or a new one. The flag says whether it was reused.
async fn checkout(shared: &Shared, ep: &EndpointState) -> Result<(UpstreamConn, bool), ProxyError> {
    let pool =
        ep.attachment(|| UpstreamPool::new(shared.config.limits.upstream_max_idle_per_endpoint));
    if let Some(conn) = pool.and_then(|p| p.take(shared.timeouts.upstream_idle)) {
        return Ok((conn, true));
    }
    let conn = Box::pin(UpstreamConn::connect(
        ep.endpoint().addr,
        shared.timeouts.connect,
    ))
    .await?;
    shared.stats.upstream_connects.fetch_add(1, Relaxed);
    Ok((conn, false))
}

fn fail_endpoint(shared: &Shared, ep: &EndpointState) {
    ep.record_failure();
    ep.eject_for(shared.timeouts.eject);
    tracing::warn!(
        endpoint = %ep.endpoint().addr,
        "upstream connect failed; out of rotation for {} ms",
        shared.timeouts.eject.as_millis()
    );
}

/// Copies bytes both ways between an upgraded client connection and its upstream (first the
/// bytes the upstream sent right after its 101, read along with it).
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: UpstreamConn, addr: SocketAddr) {
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%addr, "upgrade failed: {e}");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let (mut upstream, early) = upstream.into_parts();
    if !early.is_empty() {
        if let Err(e) = client.write_all(&early).await {
            tracing::debug!(%addr, "upgraded connection ended: {e}");
            return;
        }
    }
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(%addr, up, down, "upgraded connection closed"),
        Err(e) => tracing::debug!(%addr, "upgraded connection ended: {e}"),
    }
}
