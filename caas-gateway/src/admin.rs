//! The admin listener: `/healthz`, `/routes` (JSON), `/metrics` (Prometheus text) and
//! `/stats/{appId}` (one app's counters, JSON), served apart from the proxy port so it is
//! never reachable through an app's host name.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use caas_core::stats::LATENCY_BUCKETS_US;
use caas_core::{AppId, AppRoute, CountersSnapshot, RouteTable};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::access_log::AccessLogStats;
use crate::body::ProxyBody;
use crate::error::ErrorCode;
use crate::error::GatewayError;
use crate::server::Gateway;
use crate::upstream::pool::pooled_idle;

impl Gateway {
    /// Serves the admin endpoints on `listener` until `shutdown` resolves.
    pub async fn serve_admin(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), GatewayError> {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => return Ok(()),
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!("admin accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let gw = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let gw = gw.clone();
                    async move { Ok::<_, std::convert::Infallible>(gw.admin_response(&req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, "admin connection ended: {e}");
                }
            });
        }
    }

    /// Answers one admin request (usable without a socket, e.g. from another server).
    pub fn admin_response(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        admin_route(self, req.method(), req.uri().path())
    }
}

fn admin_route(gw: &Gateway, method: &Method, path: &str) -> Response<ProxyBody> {
    let (status, ctype, body) = match (method, path) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/routes") => (
            StatusCode::OK,
            "application/json",
            routes_json(&gw.router().current()),
        ),
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics_text(gw),
        ),
        (&Method::GET, p) if p.starts_with("/stats/") => {
            let (status, body) = app_stats(&gw.router().current(), &p["/stats/".len()..]);
            (status, "application/json", body)
        }
        _ => (
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"not_found","status":404}"#.to_owned(),
        ),
    };
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}

/// The live route table as JSON: apps, their hosts, versions and endpoint states.
pub fn routes_json(table: &RouteTable) -> String {
    let apps: Vec<serde_json::Value> = table
        .apps()
        .map(|app| {
            let versions: serde_json::Map<String, serde_json::Value> = app
                .versions()
                .iter()
                .map(|v| {
                    let eps: Vec<serde_json::Value> = v
                        .pool()
                        .endpoints()
                        .iter()
                        .map(|e| {
                            serde_json::json!({
                                "addr": e.endpoint().addr.to_string(),
                                "weight": e.endpoint().weight,
                                "available": e.is_available(),
                                "in_flight": e.in_flight(),
                                "idle_connections": pooled_idle(e),
                            })
                        })
                        .collect();
                    (v.id().to_string(), serde_json::Value::Array(eps))
                })
                .collect();
            serde_json::json!({
                "app": app.id().to_string(),
                "hosts": table.domains().iter().map(|d| format!("{}.{d}", app.id())).chain(app.domains().iter().map(|d| d.to_string())).collect::<Vec<_>>(),
                "default_version": app.default_version(),
                "weights": app.weights().iter().map(|(v, w)| (v.to_string(), *w)).collect::<std::collections::BTreeMap<_, _>>(),
                "balancer": app.balancer().as_str(),
                "https_redirect": app.https_redirect(),
                "versions": versions,
            })
        })
        .collect();
    serde_json::json!({
        "generation": table.generation(),
        "domains": table.domains(),
        "apps": apps,
    })
    .to_string()
}

/// `/stats/{appId}`: the app's counters as JSON, or a JSON 400 (not an app id) or 404 (no
/// such app in the live table).
fn app_stats(table: &RouteTable, id: &str) -> (StatusCode, String) {
    let error = |status: StatusCode, code: &str, message: String| {
        let body =
            serde_json::json!({"error": code, "status": status.as_u16(), "message": message});
        (status, body.to_string())
    };
    let app = match AppId::new(id) {
        Ok(app) => app,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_app_id", e.to_string()),
    };
    match table.app(&app) {
        Some(route) => (StatusCode::OK, app_stats_json(table, route).to_string()),
        None => error(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("no app {app} in the route table"),
        ),
    }
}

/// One app's counters; every leaf below `app` and `generation` is a number, so the answers
/// of several gateways add up leaf by leaf.
pub fn app_stats_json(table: &RouteTable, app: &AppRoute) -> serde_json::Value {
    let mut versions = serde_json::Map::new();
    for v in app.versions() {
        let mut sum = CountersSnapshot::default();
        let mut endpoints = serde_json::Map::new();
        let mut in_flight = 0;
        for ep in v.pool().endpoints() {
            let c = ep.stats.snapshot();
            add(&mut sum, &c);
            in_flight += ep.in_flight();
            let mut e = counters_json(&c);
            e["in_flight"] = ep.in_flight().into();
            e["available"] = u8::from(ep.is_available()).into();
            e["idle_connections"] = pooled_idle(ep).into();
            endpoints.insert(ep.endpoint().addr.to_string(), e);
        }
        let mut j = counters_json(&sum);
        j["in_flight"] = in_flight.into();
        j["endpoints"] = endpoints.into();
        versions.insert(v.id().to_string(), j);
    }
    let mut j = counters_json(&app.state().stats.snapshot());
    j["in_flight"] = app.state().in_flight().into();
    j["versions"] = versions.into();
    serde_json::json!({
        "app": app.id().to_string(),
        "generation": table.generation(),
        "stats": j,
    })
}

fn add(sum: &mut CountersSnapshot, c: &CountersSnapshot) {
    sum.requests += c.requests;
    for (s, n) in sum.status.iter_mut().zip(c.status) {
        *s += n;
    }
    sum.errors += c.errors;
    sum.body_errors += c.body_errors;
    sum.bytes_in += c.bytes_in;
    sum.bytes_out += c.bytes_out;
    sum.latency.resize(c.latency.len(), 0);
    for (s, n) in sum.latency.iter_mut().zip(&c.latency) {
        *s += n;
    }
    sum.latency_sum_us += c.latency_sum_us;
}

fn counters_json(c: &CountersSnapshot) -> serde_json::Value {
    let responses: serde_json::Map<String, serde_json::Value> = c
        .status
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("{}xx", i + 1), (*n).into()))
        .collect();
    let buckets: serde_json::Map<String, serde_json::Value> = c
        .latency
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let le = LATENCY_BUCKETS_US
                .get(i)
                .map_or("+Inf".to_owned(), u64::to_string);
            (le, (*n).into())
        })
        .collect();
    serde_json::json!({
        "requests": c.requests,
        "responses": responses,
        "upstream_errors": c.errors,
        "upstream_body_errors": c.body_errors,
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
        "latency_us": {"sum": c.latency_sum_us, "le": buckets},
    })
}

fn write_counters(out: &mut String, prefix: &str, labels: &str, c: &CountersSnapshot) {
    let _ = writeln!(out, "{prefix}_requests_total{{{labels}}} {}", c.requests);
    for (i, n) in c.status.iter().enumerate() {
        let _ = writeln!(
            out,
            "{prefix}_responses_total{{{labels},class=\"{}xx\"}} {n}",
            i + 1
        );
    }
    let _ = writeln!(
        out,
        "{prefix}_upstream_errors_total{{{labels}}} {}",
        c.errors
    );
    let _ = writeln!(
        out,
        "{prefix}_upstream_body_errors_total{{{labels}}} {}",
        c.body_errors
    );
    let _ = writeln!(
        out,
        "{prefix}_request_bytes_total{{{labels}}} {}",
        c.bytes_in
    );
    let _ = writeln!(
        out,
        "{prefix}_response_bytes_total{{{labels}}} {}",
        c.bytes_out
    );
    let mut cumulative = 0;
    for (i, n) in c.latency.iter().enumerate() {
        cumulative += n;
        let le = LATENCY_BUCKETS_US
            .get(i)
            .map_or("+Inf".to_owned(), |us| format!("{}", *us as f64 / 1e6));
        let _ = writeln!(
            out,
            "{prefix}_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "{prefix}_request_duration_seconds_sum{{{labels}}} {}",
        c.latency_sum_us as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "{prefix}_request_duration_seconds_count{{{labels}}} {cumulative}"
    );
}

fn write_cert_metrics(out: &mut String, certs: &crate::tls::CertResolver) {
    let c = certs.stats();
    let _ = writeln!(out, "# TYPE caas_gateway_tls_cert_updates_total counter");
    for (source, result, v) in [
        ("file", "applied", c.file_reloads.load(Relaxed)),
        ("file", "rejected", c.file_rejected.load(Relaxed)),
        ("store", "applied", c.store_applied.load(Relaxed)),
        ("store", "rejected", c.store_rejected.load(Relaxed)),
    ] {
        let _ = writeln!(
            out,
            "caas_gateway_tls_cert_updates_total{{source=\"{source}\",result=\"{result}\"}} {v}"
        );
    }
    let _ = writeln!(out, "# TYPE caas_gateway_tls_unknown_sni_total counter");
    let _ = writeln!(
        out,
        "caas_gateway_tls_unknown_sni_total {}",
        c.unknown_sni.load(Relaxed)
    );
    let _ = writeln!(out, "# TYPE caas_gateway_tls_names gauge");
    let _ = writeln!(out, "caas_gateway_tls_names {}", certs.name_count());
}

fn write_access_log_metrics(out: &mut String, log: &AccessLogStats) {
    for (name, v) in [
        ("lines_total", &log.lines),
        ("dropped_total", &log.dropped),
        ("write_errors_total", &log.write_errors),
        ("lost_total", &log.lost),
        ("reopened_total", &log.reopened),
    ] {
        let _ = writeln!(out, "# TYPE caas_gateway_access_log_{name} counter");
        let _ = writeln!(out, "caas_gateway_access_log_{name} {}", v.load(Relaxed));
    }
}

/// Prometheus text exposition of gateway, app and endpoint counters.
pub fn metrics_text(gw: &Gateway) -> String {
    // Writing to a String cannot fail; the `let _` below discard an always-Ok fmt::Result.
    let mut out = String::with_capacity(4096);
    let s = gw.stats();
    let _ = writeln!(
        out,
        "# TYPE caas_gateway_connections_accepted_total counter"
    );
    let _ = writeln!(
        out,
        "caas_gateway_connections_accepted_total {}",
        s.connections_accepted.load(Relaxed)
    );
    let _ = writeln!(out, "# TYPE caas_gateway_connections_active gauge");
    let _ = writeln!(
        out,
        "caas_gateway_connections_active {}",
        s.connections_active.load(Relaxed)
    );
    for (name, v) in [
        ("requests_total", s.requests.load(Relaxed)),
        ("upstream_connects_total", s.upstream_connects.load(Relaxed)),
        ("upgrades_total", s.upgrades.load(Relaxed)),
        ("idle_closed_total", s.idle_closed.load(Relaxed)),
        ("header_timeouts_total", s.header_timeouts.load(Relaxed)),
        ("tls_handshakes_total", s.tls_handshakes.load(Relaxed)),
        (
            "tls_resumed_handshakes_total",
            s.tls_resumed_handshakes.load(Relaxed),
        ),
        (
            "tls_handshake_failures_total",
            s.tls_handshake_failures.load(Relaxed),
        ),
        ("https_redirects_total", s.https_redirects.load(Relaxed)),
    ] {
        let _ = writeln!(out, "# TYPE caas_gateway_{name} counter");
        let _ = writeln!(out, "caas_gateway_{name} {v}");
    }
    if let Some(certs) = gw.cert_resolver() {
        write_cert_metrics(&mut out, certs);
    }
    if let Some(log) = gw.access_log_stats() {
        write_access_log_metrics(&mut out, log);
    }
    let _ = writeln!(out, "# TYPE caas_gateway_errors_total counter");
    for code in ErrorCode::ALL {
        let _ = writeln!(
            out,
            "caas_gateway_errors_total{{cause=\"{}\",blame=\"{}\"}} {}",
            code.as_str(),
            code.blame().as_str(),
            s.error_count(*code)
        );
    }
    let table = gw.router().current();
    let _ = writeln!(out, "# TYPE caas_route_table_generation gauge");
    let _ = writeln!(out, "caas_route_table_generation {}", table.generation());
    let built = gw.router().build_stats();
    let _ = writeln!(out, "# TYPE caas_route_table_whole_builds_total counter");
    let _ = writeln!(
        out,
        "caas_route_table_whole_builds_total {}",
        built.whole_builds
    );
    let _ = writeln!(out, "# TYPE caas_route_table_build_seconds_total counter");
    let _ = writeln!(
        out,
        "caas_route_table_build_seconds_total {}",
        built.build_time.as_secs_f64()
    );
    for prefix in ["caas_app", "caas_endpoint"] {
        let _ = writeln!(out, "# TYPE {prefix}_requests_total counter");
        let _ = writeln!(out, "# TYPE {prefix}_responses_total counter");
        let _ = writeln!(out, "# TYPE {prefix}_upstream_errors_total counter");
        let _ = writeln!(out, "# TYPE {prefix}_upstream_body_errors_total counter");
        let _ = writeln!(out, "# TYPE {prefix}_request_bytes_total counter");
        let _ = writeln!(out, "# TYPE {prefix}_response_bytes_total counter");
        let _ = writeln!(out, "# TYPE {prefix}_request_duration_seconds histogram");
    }
    for app in table.apps() {
        let labels = format!("app=\"{}\"", app.id());
        write_counters(&mut out, "caas_app", &labels, &app.state().stats.snapshot());
        for v in app.versions() {
            for ep in v.pool().endpoints() {
                let labels = format!(
                    "app=\"{}\",version=\"{}\",endpoint=\"{}\"",
                    app.id(),
                    v.id(),
                    ep.endpoint().addr
                );
                write_counters(&mut out, "caas_endpoint", &labels, &ep.stats.snapshot());
                let _ = writeln!(
                    out,
                    "caas_endpoint_in_flight{{{labels}}} {}",
                    ep.in_flight()
                );
                let _ = writeln!(
                    out,
                    "caas_endpoint_available{{{labels}}} {}",
                    u8::from(ep.is_available())
                );
            }
        }
    }
    out
}
