//! Test support: real loopback upstreams with scripted behaviours, a gateway on port 0 fed
//! by a `Static` discovery, and a plain HTTP client.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use caas_core::{AppId, AppSpec, Domain, Endpoint, Snapshot, Static, Version, VersionSpec};
use caas_gateway::{Gateway, GatewayConfig, Limits};
use futures_util::stream;
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub mod tls;

pub type TestBody = BoxBody<Bytes, hyper::Error>;

fn full(s: impl Into<Bytes>) -> TestBody {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// A loopback upstream. Paths:
/// - `/sleep/{ms}`: answers after a delay;
/// - `/upload`: reads the whole body, answers its length;
/// - `/download/{bytes}`: streams that many bytes in 64 KiB chunks;
/// - `/ws`: accepts an `Upgrade` and echoes bytes on the upgraded connection;
/// - `/drop`: closes the connection without answering;
/// - anything else: `{name} {method} {path}` with the request headers echoed back as
///   `x-echo-{name}` response headers.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, name)
    }

    pub fn serve(listener: TcpListener, name: &str) -> Self {
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = oneshot::channel();
        let (c, r, n) = (connections.clone(), requests.clone(), name.to_owned());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut rx => return,
                    a = listener.accept() => a.unwrap(),
                };
                c.fetch_add(1, SeqCst);
                let (r, n) = (r.clone(), n.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        r.fetch_add(1, SeqCst);
                        handle(n.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self {
            addr,
            name: name.to_owned(),
            connections,
            requests,
            stop: Some(tx),
        }
    }

    /// Stops accepting (the port is closed; existing connections finish).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn handle(name: String, mut req: Request<Incoming>) -> Result<Response<TestBody>, String> {
    let path = req.uri().path().to_owned();
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if path == "/drop" {
        return Err("dropping the connection on purpose".into());
    }
    if path == "/echo" {
        // Streams the request body back as it arrives (the response starts at once).
        return Ok(Response::new(req.into_body().boxed()));
    }
    if path == "/upload" {
        let mut n = 0u64;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(d) = frame.map_err(|e| e.to_string())?.into_data() {
                n += d.len() as u64;
            }
        }
        return Ok(Response::new(full(n.to_string())));
    }
    if let Some(n) = path.strip_prefix("/download/") {
        let total: u64 = n.parse().unwrap();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = stream::unfold(0u64, move |sent| {
            let chunk = chunk.clone();
            async move {
                if sent >= total {
                    return None;
                }
                let n = (total - sent).min(chunk.len() as u64);
                Some((
                    Ok::<_, hyper::Error>(Frame::data(chunk.slice(..n as usize))),
                    sent + n,
                ))
            }
        });
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
        resp.headers_mut().insert("content-length", total.into());
        return Ok(resp);
    }
    if path == "/ws" {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = on_upgrade.await.unwrap();
            let mut io = TokioIo::new(upgraded);
            let (mut r, mut w) = tokio::io::split(&mut io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("upgrade", "echo".parse().unwrap());
        resp.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        return Ok(resp);
    }
    let mut resp = Response::new(full(format!("{name} {} {}", req.method(), path)));
    for (k, v) in req.headers() {
        if let Ok(name) = format!("x-echo-{k}").parse::<http::HeaderName>() {
            resp.headers_mut().append(name, v.clone());
        }
    }
    resp.headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    Ok(resp)
}

pub fn id(s: &str) -> AppId {
    AppId::new(s).unwrap()
}

pub fn ver(s: &str) -> Version {
    Version::new(s).unwrap()
}

/// An app spec with the given versions and endpoint addresses.
pub fn app(versions: &[(&str, &[SocketAddr])]) -> AppSpec {
    AppSpec {
        versions: versions
            .iter()
            .map(|(v, addrs)| {
                let endpoints = addrs.iter().map(|a| Endpoint::new(*a)).collect();
                (ver(v), VersionSpec { endpoints })
            })
            .collect(),
        ..AppSpec::default()
    }
}

pub fn snapshot(apps: Vec<(&str, AppSpec)>) -> Snapshot {
    Snapshot {
        apps: apps
            .into_iter()
            .map(|(a, s)| (id(a), s))
            .collect::<BTreeMap<_, _>>(),
        ..Snapshot::default()
    }
}

/// A gateway on 127.0.0.1:0 serving `routes`, with test-friendly limits.
pub struct Gw {
    pub addr: SocketAddr,
    pub routes: Static,
    pub gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

pub fn limits() -> Limits {
    Limits {
        upstream_connect_timeout_ms: 1_000,
        upstream_response_timeout_ms: 2_000,
        shutdown_grace_ms: 5_000,
        ..Limits::default()
    }
}

impl Gw {
    pub async fn start(snapshot: Snapshot) -> Self {
        Self::start_with(snapshot, limits()).await
    }

    pub async fn start_with(snapshot: Snapshot, limits: Limits) -> Self {
        Self::start_config(
            snapshot,
            GatewayConfig {
                limits,
                ..Self::config()
            },
        )
        .await
    }

    /// The config `start` uses: domains `caas.local` and `apps.test`, test limits.
    pub fn config() -> GatewayConfig {
        GatewayConfig {
            domains: vec![
                Domain::new("caas.local").unwrap(),
                Domain::new("apps.test").unwrap(),
            ],
            limits: limits(),
            ..GatewayConfig::default()
        }
    }

    pub async fn start_config(snapshot: Snapshot, config: GatewayConfig) -> Self {
        Self::start_on("127.0.0.1:0", snapshot, config).await
    }

    /// A gateway listening on `bind` (e.g. `[::1]:0`).
    pub async fn start_on(bind: &str, snapshot: Snapshot, config: GatewayConfig) -> Self {
        Self::start_built(bind, snapshot, config, false).await
    }

    /// A gateway serving HTTP/1.1 clients with hyper's server instead of its own connection.
    pub async fn start_hyper_http1(snapshot: Snapshot) -> Self {
        Self::start_built("127.0.0.1:0", snapshot, Self::config(), true).await
    }

    async fn start_built(
        bind: &str,
        snapshot: Snapshot,
        config: GatewayConfig,
        hyper_http1: bool,
    ) -> Self {
        let routes = Static::new(snapshot);
        let gateway = Gateway::builder(config)
            .discovery(routes.subscribe())
            .hyper_http1(hyper_http1)
            .build()
            .unwrap();
        let (addr, tx, task) = serve(&gateway, bind).await;
        let me = Self {
            addr,
            routes,
            gateway,
            stop: Some(tx),
            task: Some(task),
        };
        me.wait_for_generation(1).await;
        me
    }

    /// Waits until the router has applied at least `generation` updates.
    pub async fn wait_for_generation(&self, generation: u64) {
        for _ in 0..500 {
            if self.gateway.router().load().generation() >= generation {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("route table never reached generation {generation}");
    }

    /// Replaces the routes and waits until the gateway serves them.
    pub async fn set_routes(&self, snapshot: Snapshot) {
        let before = self.gateway.router().load().generation();
        self.routes.set(snapshot);
        self.wait_for_generation(before + 1).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Signals shutdown; returns the serve task to await.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap()
    }
}

/// An HTTP/1.1 client with keep-alive.
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn get(url: &str, host: &str) -> Request<TestBody> {
    Request::get(url)
        .header("host", host)
        .body(full(Bytes::new()))
        .unwrap()
}

/// Sends a request; returns status, headers and the whole body as a string.
pub async fn send(
    c: &Client<HttpConnector, TestBody>,
    req: Request<TestBody>,
) -> (StatusCode, http::HeaderMap, String) {
    let resp = c.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Serves `gateway` on a listener bound to `bind` in a task of its own: the address, the
/// sender that stops it, and the task (it panics if serving fails).
pub async fn serve(
    gateway: &Gateway,
    bind: &str,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let gw = gateway.clone();
    let task = tokio::spawn(async move {
        gw.serve(listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (addr, tx, task)
}

/// Resident set size of this process in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A closed loopback port (bound then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

pub fn full_body(s: impl Into<Bytes>) -> TestBody {
    full(s)
}

/// Makes a named pipe at `path` (`mkfifo`): a file whose reads wait for a writer, as a dead
/// network mount's would.
pub fn mkfifo(path: &std::path::Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("cannot run mkfifo");
    assert!(made.success(), "mkfifo {} failed", path.display());
}
