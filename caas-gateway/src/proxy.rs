//! The request path, top to bottom: limits → decide the authority once → route by it →
//! filters → pick → forward on a pooled connection (retrying a failed connect on another
//! endpoint, through the same filters) → count → respond.
//!
//! Blame is decided here: only what the upstream did (refused, reset, timed out, answered
//! garbage) counts against its endpoint; what the client did (a malformed, stalled or
//! abandoned body) is the client's error and leaves the endpoint alone.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caas_core::{AppInFlight, AppRoute, AppState, EndpointState, InFlight, Refused, RouteTable};
use http::header::USER_AGENT;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::access_log::Pending;
use crate::body::{ProxyBody, RequestBody};
use crate::client_h1::{self, wire::Io};
use crate::conn::{ConnInfo, Shared, Tracked, Waiting, send_after_batch};
use crate::error::{Blame, ErrorCode, ProxyError};
use crate::h1;
use crate::headers::{
    Authority, client_ip, forwarded_https, is_upgrade_request, write_upstream_fields,
};
use crate::redirect;
use crate::stats::GatewayStats;
use crate::upstream::{
    BodyHealth, BodySender, ConnectError, Exchange, ExchangeError, UpstreamBody, UpstreamConn,
    UpstreamPool,
};

/// Consecutive failures (resets, timeouts) after which an endpoint is ejected like one that
/// refused a connection.
const EJECT_AFTER_FAILURES: u32 = 3;

/// The service of both connections (hyper's and the gateway's own HTTP/1.1): never fails,
/// every error becomes a response.
///
/// This future and those it awaits ([`proxy`], [`forward`]) are plain functions around
/// `async move` blocks: an `async fn`'s future keeps room for its arguments twice, and each
/// of these futures is copied once into the one that awaits it, on every request.
pub(crate) fn serve_request(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<RequestBody>,
) -> impl Future<Output = Result<Response<Tracked<ProxyBody>>, Infallible>> + Send {
    let started = Instant::now();
    let done = conn.request_started();
    shared.stats.requests.fetch_add(1, Relaxed);
    // The access log line, sent when it drops: with the response body, or here when the
    // client leaves before an answer (then as a 499).
    let mut log = shared
        .access_log
        .as_ref()
        .map(|l| Box::new(Pending::new(l, req.method(), req.uri(), conn.peer.ip())));
    async move {
        let _waiting = Waiting::new(&conn.waiting);
        let mut unanswered = Unanswered(Some(&shared.stats));
        let mut app_state = None;
        let resp = match proxy(
            &shared,
            &conn,
            req,
            started,
            &mut app_state,
            log.as_deref_mut(),
        )
        .await
        {
            Ok(resp) => {
                if let Some(l) = log.as_mut() {
                    l.status = resp.status().as_u16();
                    l.error = None;
                }
                resp
            }
            Err(err) => {
                shared.stats.count_error(&err);
                if let Some(app) = app_state {
                    if err.blame() == Blame::Upstream {
                        app.stats.record_error();
                    }
                    app.stats
                        .record_response(err.status().as_u16(), started.elapsed());
                }
                if let Some(l) = log.as_mut() {
                    l.status = err.status().as_u16();
                    l.error = Some(err.code());
                    if let Some(addr) = err.upstream_addr() {
                        l.endpoint = Some(addr);
                    }
                }
                tracing::debug!(peer = %conn.peer, "answered {}: {err}", err.status());
                err.into_response()
            }
        };
        unanswered.0 = None;
        Ok(resp.map(|body| Tracked::new(body, done, log)))
    }
}

/// Puts the app a request's authority routes to in its log line, and the endpoint picked
/// with its version. Only runs with the access log on.
fn log_route(
    log: &mut Pending,
    table: &RouteTable,
    authority: &Authority,
    ep: Option<&Arc<EndpointState>>,
) {
    let Some(route) = table.lookup(authority.as_str()) else {
        return;
    };
    log.app = Some(route.app().id().clone());
    if let Some(ep) = ep {
        log.endpoint = Some(ep.endpoint().addr);
        log.version = route
            .app()
            .versions()
            .iter()
            .find(|v| v.pool().endpoints().iter().any(|e| Arc::ptr_eq(e, ep)))
            .map(|v| v.id().clone());
    }
}

/// Counts a request whose future hyper dropped before it was answered: the client went away
/// while it waited (the client's doing, like nginx's 499).
struct Unanswered<'a>(Option<&'a GatewayStats>);

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(stats) = self.0 {
            stats.count(ErrorCode::ClientClosed);
        }
    }
}

/// Rejects, before anything else, a CONNECT (501) and request heads over the configured
/// limits with a JSON 431 (hyper's own hard limit, twice as large, is the backstop and
/// answers a bare 431).
#[inline]
fn check_head<B>(shared: &Shared, req: &Request<B>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        // A reverse proxy for apps, not a forward proxy: forwarded, a CONNECT would reach
        // the app as `CONNECT /` and its tunnel would go nowhere (nginx answers it 405).
        return Err(ProxyError::NotImplemented(
            "CONNECT: the gateway routes requests to apps and opens no tunnels",
        ));
    }
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

/// Who a request is from and what it is for: decided once, used by the first pick and by
/// every retry.
struct Target<'a> {
    authority: &'a Authority,
    /// The client's address (the peer, or what a trusted proxy says).
    client: IpAddr,
    path: &'a str,
    user_agent: Option<&'a [u8]>,
}

/// The filters every try passes, the first and each retry: the gateway's blacklist, then
/// the app's.
#[inline]
fn filter(table: &RouteTable, app: &AppRoute, t: &Target<'_>) -> Result<(), ProxyError> {
    let blocked = table
        .blocked(t.client, t.path, t.user_agent)
        .or_else(|| app.blocked(t.client, t.path, t.user_agent));
    match blocked {
        Some(rule) => Err(ProxyError::Blacklisted(rule)),
        None => Ok(()),
    }
}

/// The app and endpoint a request goes to first; the app's admission lasts until the
/// response ends.
type Routed = (AppInFlight, Arc<EndpointState>);
/// Why a request was not routed, and its app when one was found (to count the error against).
type Unrouted = (ProxyError, Option<Arc<AppState>>);

/// The first pick: route, filter, admit (max_in_flight and the rate limits), pick; all
/// without awaiting (the table guard is dropped before any I/O).
#[inline]
fn route(table: &RouteTable, target: &Target<'_>) -> Result<Routed, Unrouted> {
    let route = table
        .lookup(target.authority.as_str())
        .ok_or((ProxyError::UnknownHost, None))?;
    let app = route.app();
    let state = || Some(Arc::clone(app.state()));
    filter(table, app, target).map_err(|e| (e, state()))?;
    let admitted = app.admit(target.client).map_err(|refused| {
        let e = match refused {
            Refused::RateLimited(retry_after) => ProxyError::RateLimited { retry_after },
            Refused::Overloaded => ProxyError::AppOverloaded,
        };
        (e, state())
    })?;
    let ep = route
        .pool()
        .and_then(|p| p.pick())
        .ok_or_else(|| (ProxyError::NoEndpoint, state()))?;
    Ok((admitted, Arc::clone(ep)))
}

/// A retry's pick: the same authority looked up in the current table, the same filters,
/// another endpoint of the same app. The request was admitted once (rate limits,
/// max_in_flight). When the authority now belongs to another app, there is no retry: one
/// app's failure is never sent to another.
fn reroute(
    table: &RouteTable,
    target: &Target<'_>,
    app: &Arc<AppState>,
    avoid: &EndpointState,
) -> Result<Arc<EndpointState>, ProxyError> {
    let route = table
        .lookup(target.authority.as_str())
        .filter(|r| Arc::ptr_eq(r.app().state(), app))
        .ok_or(ProxyError::NoEndpoint)?;
    filter(table, route.app(), target)?;
    route
        .pool()
        .and_then(|p| p.pick_avoiding(Some(avoid)))
        .map(Arc::clone)
        .ok_or(ProxyError::NoEndpoint)
}

fn proxy<'a>(
    shared: &'a Shared,
    conn: &'a ConnInfo,
    mut req: Request<RequestBody>,
    started: Instant,
    app_out: &'a mut Option<Arc<AppState>>,
    mut log: Option<&'a mut Pending>,
) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + 'a {
    // The request is taken apart before the future is made: it holds the parts, not the
    // request as well.
    let within_limits = check_head(shared, &req);
    let upgrade = within_limits.is_ok() && is_upgrade_request(&req);
    let client_upgrade = upgrade.then(|| ClientUpgrade::of(&mut req));
    let (parts, mut body) = req.into_parts();
    async move {
        within_limits?;
        if let Some(l) = &log {
            body.log_bytes_to(Arc::clone(&l.bytes_in));
        }
        let authority = Authority::of(&parts)?;
        let target = Target {
            authority: &authority,
            client: client_ip(
                conn.peer.ip(),
                &parts.headers,
                &shared.config.trusted_proxies,
            ),
            path: parts.uri.path(),
            user_agent: parts.headers.get(USER_AGENT).map(HeaderValue::as_bytes),
        };
        if let Some(l) = &mut log {
            l.client = target.client;
        }
        // Over TLS here, or at a trusted proxy in front (which then said so).
        let https = conn.tls
            || forwarded_https(
                conn.peer.ip(),
                &parts.headers,
                &shared.config.trusted_proxies,
            );
        let routed = {
            let table = shared.router.load();
            // A plain request for an app that wants HTTPS, past its blacklists: sent there.
            if let Some(app) = redirect::wanted(https, &table, &authority)
                && filter(&table, app, &target).is_ok()
                && let Some(to) = redirect::to_https(shared, app, &authority, &parts, started)
            {
                if let Some(l) = &mut log {
                    log_route(l, &table, &authority, None);
                }
                return Ok(to);
            }
            let routed = route(&table, &target);
            if let Some(l) = &mut log {
                log_route(
                    l,
                    &table,
                    &authority,
                    routed.as_ref().ok().map(|(_, ep)| ep),
                );
            }
            routed
        };
        let (admitted, ep) = routed.map_err(|(e, app)| {
            *app_out = app;
            e
        })?;
        let app = admitted.state();
        *app_out = Some(Arc::clone(app));

        // The head is encoded once: sending it again (on a fresh connection, or on another
        // endpoint) costs no copy of the request.
        let has_body = !body.is_empty();
        let mut head = Vec::new();
        let framing = h1::encode_request_head(&parts, has_body, &mut head, |out| {
            let proto = if https {
                &redirect::HTTPS
            } else {
                conn.proto()
            };
            write_upstream_fields(&parts, &authority, &conn.peer_ip, proto, upgrade, out);
            if !upgrade && shared.config.limits.upstream_max_idle_per_endpoint == 0 {
                // No pool: the upstream closes first, and its side keeps the TIME_WAIT
                // rather than the gateway's ephemeral ports.
                out.extend_from_slice(b"connection: close\r\n");
            }
        });
        let request = Outgoing {
            head: &head,
            method: &parts.method,
            body: has_body.then(|| BodySender::new(body, framing)),
            // A bodyless idempotent request can be sent again, once, on another endpoint when
            // the first fails before answering: a container that died moments before its
            // deregistration reached the gateway (Docker's proxy accepts, then resets) costs
            // the client nothing.
            may_resend: !upgrade && !has_body && is_idempotent(&parts.method),
        };
        let fwd = forward(shared, &target, app, ep, request).await?;
        let status = fwd.head.parts.status;
        if status == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_none() {
            // A protocol switch nobody asked for: the upstream broke the protocol, as with
            // a head that does not parse. Neither a success nor a response of the app's.
            upstream_failed(&fwd.ep, shared.timeouts.eject);
            return Err(ProxyError::Upstream {
                addr: fwd.conn.addr(),
                reason: "101 Switching Protocols to a request that asked for no upgrade".into(),
            });
        }
        if let Some(l) = &mut log
            && l.endpoint != Some(fwd.ep.endpoint().addr)
        {
            // Retried on another endpoint, maybe of another version.
            log_route(l, &shared.router.load(), &authority, Some(&fwd.ep));
        }
        let h1::ResponseHead {
            parts: resp,
            framing,
            keep_alive,
        } = fwd.head;
        let latency = started.elapsed();
        app.stats.record_response(status.as_u16(), latency);
        fwd.ep.stats.record_response(status.as_u16(), latency);

        if let Some(client_upgrade) =
            client_upgrade.filter(|_| status == StatusCode::SWITCHING_PROTOCOLS)
        {
            let addr = fwd.conn.addr();
            shared.stats.upgrades.fetch_add(1, Relaxed);
            succeeded(&fwd.ep);
            tokio::spawn(tunnel(
                client_upgrade,
                fwd.conn,
                addr,
                shared.timeouts.tunnel_idle,
            ));
            return Ok(Response::from_parts(resp, ProxyBody::empty()));
        }
        let reusable = keep_alive && (fwd.complete || fwd.sending.is_some());
        let body = UpstreamBody::new(
            fwd.conn,
            framing,
            reusable,
            fwd.sending,
            fwd.in_flight,
            admitted,
            BodyHealth {
                read_timeout: shared.timeouts.response,
                report: body_ended,
                eject: shared.timeouts.eject,
            },
        );
        Ok(Response::from_parts(resp, ProxyBody::upstream(body)))
    }
}

/// A request as it goes upstream: its encoded head and the sender of its body.
struct Outgoing<'a> {
    head: &'a [u8],
    method: &'a Method,
    body: Option<BodySender<RequestBody>>,
    may_resend: bool,
}

/// A request that got a response head from an upstream.
struct Forwarded {
    head: h1::ResponseHead,
    conn: UpstreamConn,
    ep: Arc<EndpointState>,
    /// The rest of a body the upstream answered before it was all sent.
    sending: Option<BodySender<RequestBody>>,
    /// The whole request went out.
    complete: bool,
    in_flight: InFlight,
}

/// Sends the request until an upstream answers with a response head: a failed connect is
/// retried on another endpoint, a pooled connection found closed is replaced (after the
/// request's head went out on it, only for an idempotent request), and a bodyless
/// idempotent request reset before any answer is resent once on another endpoint.
/// Each retry goes through the same authority and filters as the first try.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn's future holds its arguments twice, copied on every request"
)]
fn forward<'a>(
    shared: &'a Shared,
    target: &'a Target<'a>,
    app: &'a Arc<AppState>,
    mut ep: Arc<EndpointState>,
    mut req: Outgoing<'a>,
) -> impl Future<Output = Result<Forwarded, ProxyError>> + Send + 'a {
    async move {
        loop {
            let (mut upstream, mut reused) = connect_any(shared, target, app, &mut ep).await?;
            let in_flight = ep.start_request();
            if let Some(b) = req.body.as_mut() {
                b.body_mut().count_to(app, &ep);
            }
            let addr = ep.endpoint().addr;
            let failed = loop {
                let mut exchange =
                    Exchange::new(&mut upstream, req.head, req.body.take(), req.method);
                send_after_batch(&shared.stats).await;
                let res = exchange.response_head(shared.timeouts.response).await;
                let complete = exchange.request_complete();
                let unsent = exchange.head_unsent();
                req.body = exchange.take_body();
                match res {
                    Ok(head) => {
                        return Ok(Forwarded {
                            head,
                            conn: upstream,
                            ep,
                            // The rest of a body the upstream answered early goes on with the
                            // response.
                            sending: req.body.filter(|_| !complete),
                            complete,
                            in_flight,
                        });
                    }
                    // A pooled connection the upstream had closed: nothing of the request was
                    // consumed, so it can go again as it is on a fresh connection. Once its
                    // head went out, though, the upstream may have acted on it before closing
                    // (a crash mid-request looks the same as a keep-alive timeout racing the
                    // request): then only an idempotent request goes again (RFC 9110 §9.2.2),
                    // and a POST is answered 502 rather than run twice.
                    Err(ExchangeError::Closed(_))
                        if reused && (unsent || is_idempotent(req.method)) =>
                    {
                        upstream = Box::pin(UpstreamConn::connect(addr, shared.timeouts.connect))
                            .await
                            .map_err(|e| connect_failed(shared, &ep, e))?;
                        shared.stats.upstream_connects.fetch_add(1, Relaxed);
                        reused = false;
                    }
                    // The client's faults end the exchange (the connection is dropped with it)
                    // and touch no endpoint's health.
                    Err(ExchangeError::ClientBody(e)) => return Err(e.into()),
                    Err(ExchangeError::ClientStalled) => {
                        return Err(ProxyError::ClientTimeout {
                            timeout_ms: millis(shared.timeouts.response),
                        });
                    }
                    Err(ExchangeError::Closed(reason) | ExchangeError::Upstream(reason)) => {
                        break ProxyError::Upstream { addr, reason };
                    }
                    Err(ExchangeError::TimedOut) => {
                        break ProxyError::Timeout {
                            addr,
                            timeout_ms: millis(shared.timeouts.response),
                        };
                    }
                }
            };
            drop(in_flight);
            upstream_failed(&ep, shared.timeouts.eject);
            if !(req.may_resend && matches!(failed, ProxyError::Upstream { .. })) {
                return Err(failed);
            }
            req.may_resend = false;
            let Ok(other) = reroute(&shared.router.load(), target, app, &ep) else {
                return Err(failed);
            };
            tracing::debug!(failed = %addr, next = %other.endpoint().addr, "resending after: {failed}");
            ep = other;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A connection to `ep`, or, when connecting fails, to another endpoint of the same app
/// (once, through the same filters); `ep` is updated to the endpoint connected to. The flag
/// says whether the connection came from the pool.
async fn connect_any(
    shared: &Shared,
    target: &Target<'_>,
    app: &Arc<AppState>,
    ep: &mut Arc<EndpointState>,
) -> Result<(UpstreamConn, bool), ProxyError> {
    let first = match checkout(shared, ep).await {
        Ok(c) => return Ok(c),
        Err(e) => connect_failed(shared, ep, e),
    };
    match reroute(&shared.router.load(), target, app, ep) {
        Ok(other) => {
            *ep = other;
            checkout(shared, ep)
                .await
                .map_err(|e| connect_failed(shared, ep, e))
        }
        Err(ProxyError::NoEndpoint) => Err(first),
        Err(refused) => Err(refused),
    }
}

/// An idle pooled connection to `ep`, or a new one. The flag says whether it was reused.
async fn checkout(
    shared: &Shared,
    ep: &EndpointState,
) -> Result<(UpstreamConn, bool), ConnectError> {
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

/// A refused or timed-out connect: the endpoint sits out `eject_ms`.
fn connect_failed(shared: &Shared, ep: &EndpointState, e: ConnectError) -> ProxyError {
    ep.record_failure();
    eject(ep, shared.timeouts.eject);
    ProxyError::Connect {
        addr: e.addr,
        reason: e.reason,
    }
}

/// The upstream reset, timed out or broke the protocol on an exchange: after
/// [`EJECT_AFTER_FAILURES`] in a row the endpoint sits out `period`.
fn upstream_failed(ep: &EndpointState, period: Duration) {
    if ep.record_failure() >= EJECT_AFTER_FAILURES {
        eject(ep, period);
    }
}

/// The end of a response body: one that arrived whole is the endpoint's success (an
/// exchange counts as good only once its body is in, so an upstream that always cuts its
/// bodies is ejected as one that resets); one the upstream broke is its failure.
fn body_ended(ep: &EndpointState, eject: Duration, whole: bool) {
    if whole {
        succeeded(ep);
    } else {
        upstream_failed(ep, eject);
    }
}

/// A good exchange clears the endpoint's failure count, unless the endpoint was ejected
/// while it ran: a long download that ends well does not cut an ejection short (the failures
/// that caused it came later); once the period is over, the next success clears both.
fn succeeded(ep: &EndpointState) {
    if ep.is_available() {
        ep.record_success();
    }
}

fn eject(ep: &EndpointState, period: Duration) {
    ep.eject_for(period);
    tracing::warn!(
        endpoint = %ep.endpoint().addr,
        "upstream failing; out of rotation for {} ms",
        period.as_millis()
    );
}

/// The client's side of an upgrade: from hyper's connection or the gateway's own.
enum ClientUpgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    Own(client_h1::OnUpgrade),
}

impl ClientUpgrade {
    fn of(req: &mut Request<RequestBody>) -> Self {
        match req.extensions_mut().remove::<client_h1::OnUpgrade>() {
            Some(own) => Self::Own(own),
            None => Self::Hyper(hyper::upgrade::on(req)),
        }
    }

    /// The client's connection once its 101 is written, and the bytes it sent past its
    /// request head.
    async fn wait(self) -> Result<(Box<dyn Io>, Bytes), String> {
        match self {
            Self::Hyper(on) => match on.await {
                Ok(c) => Ok((Box::new(TokioIo::new(c)), Bytes::new())),
                Err(e) => Err(e.to_string()),
            },
            Self::Own(on) => match on.wait().await {
                Ok(up) => Ok((up.io, up.read)),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// The tunnel of an upgrade the upstream accepted, once the client has its `101`.
async fn tunnel(client: ClientUpgrade, upstream: UpstreamConn, addr: SocketAddr, idle: Duration) {
    let (client, client_early) = match client.wait().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%addr, "upgrade failed: {e}");
            return;
        }
    };
    let (upstream, early) = upstream.into_parts();
    crate::tunnel::run(client, client_early, upstream, &early, addr, idle).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use caas_core::{AppId, AppSpec, Domain, Endpoint, Snapshot, Version, VersionSpec};
    use http::HeaderValue;

    #[test]
    fn a_late_success_does_not_cut_an_ejection_short() {
        let ep = EndpointState::new(Endpoint::new(([127, 0, 0, 1], 9).into()));
        for _ in 0..EJECT_AFTER_FAILURES {
            body_ended(&ep, Duration::from_secs(60), false);
        }
        assert!(!ep.is_available(), "three cut bodies eject");
        // A download that started before the ejection ends well: still out.
        body_ended(&ep, Duration::from_secs(60), true);
        assert!(!ep.is_available());
        // Once the period is over, a success clears the count: one failure does not eject.
        ep.eject_for(Duration::ZERO);
        body_ended(&ep, Duration::from_secs(60), true);
        body_ended(&ep, Duration::from_secs(60), false);
        assert!(ep.is_available());
    }

    fn spec(ports: &[u16], blacklist: &[&str]) -> AppSpec {
        let endpoints = ports
            .iter()
            .map(|p| Endpoint::new(([127, 0, 0, 1], *p).into()))
            .collect();
        AppSpec {
            versions: [(Version::new("v1").unwrap(), VersionSpec { endpoints })].into(),
            blacklist: caas_core::Blacklist {
                ips: blacklist.iter().map(|b| b.parse().unwrap()).collect(),
                ..Default::default()
            },
            ..AppSpec::default()
        }
    }

    fn table(apps: &[(&str, AppSpec)]) -> RouteTable {
        let snapshot = Snapshot {
            apps: apps
                .iter()
                .map(|(id, s)| (AppId::new(id).unwrap(), s.clone()))
                .collect(),
            ..Snapshot::default()
        };
        RouteTable::build(&snapshot, &[Domain::new("caas.local").unwrap()], None, 1).0
    }

    fn authority(s: &'static str) -> Authority {
        let mut req = Request::new(());
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static(s));
        Authority::of(&req.into_parts().0).unwrap()
    }

    #[test]
    fn a_retry_goes_through_the_same_authority_and_filters() {
        let t = table(&[("a", spec(&[1, 2], &[])), ("b", spec(&[3], &[]))]);
        let a = authority("a.caas.local");
        let client: IpAddr = [10, 0, 0, 1].into();
        let target = Target {
            authority: &a,
            client,
            path: "/",
            user_agent: None,
        };
        let (admitted, first) = route(&t, &target).unwrap();
        let app = admitted.state();
        let other = reroute(&t, &target, app, &first).unwrap();
        assert_ne!(other.endpoint().addr, first.endpoint().addr);
        assert!([1, 2].contains(&other.endpoint().addr.port()), "stays in a");

        // The blacklist changed between the tries: the retry is refused like a first try.
        // (Built from the previous table, as the router does, so the app keeps its state.)
        let t2 = RouteTable::build(
            &Snapshot {
                apps: [
                    (AppId::new("a").unwrap(), spec(&[1, 2], &["10.0.0.0/8"])),
                    (AppId::new("b").unwrap(), spec(&[3], &[])),
                ]
                .into(),
                ..Snapshot::default()
            },
            &[Domain::new("caas.local").unwrap()],
            Some(&t),
            2,
        )
        .0;
        assert!(matches!(
            reroute(&t2, &target, app, &first),
            Err(ProxyError::Blacklisted(_))
        ));

        // The authority now belongs to another app: no retry there.
        let moved = RouteTable::build(
            &Snapshot {
                apps: [(AppId::new("c").unwrap(), {
                    let mut s = spec(&[9], &[]);
                    s.domains = vec![Domain::new("a.caas.local").unwrap()];
                    s
                })]
                .into(),
                ..Snapshot::default()
            },
            &[Domain::new("other.test").unwrap()],
            Some(&t),
            3,
        )
        .0;
        assert!(moved.lookup("a.caas.local").is_some());
        assert!(matches!(
            reroute(&moved, &target, app, &first),
            Err(ProxyError::NoEndpoint)
        ));
    }
}
