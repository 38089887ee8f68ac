//! The control API over real HTTP on loopback against a real ZooKeeper 3.8 (one server per
//! test process, each test under its own chroot). Hosts are simulated as the scheduler
//! tests do (a HostInfo node and an `alive` node held by the host's own session), and a
//! real in-process Scheduler turns deployments into assignments. Gateways' `/stats/{app}`
//! are tiny fake admin listeners here, announced as gateways announce themselves (the real
//! gateway answers through the API in `tests/walkthrough.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caas_backends::api::auth::sha256_hex;
use caas_backends::api::{Api, ApiConfig, Tokens};
use caas_backends::store::{Store, ZkStore};
use caas_backends::testing::logs;
use caas_backends::testing::{ZkServer, shared_zk};
use caas_backends::zk::hosts::{HostInfo, InstanceState, InstanceStatus, Resources};
use caas_backends::zk::{HostStore, Registry, ZkConfig, ZkSession};
use caas_backends::{Scheduler, SchedulerConfig, SchedulerHandle};
use caas_core::{AppId, InstanceId, Version};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const GIB: u64 = 1 << 30;

const ADMIN: &str = "admin-token";
const ACME: &str = "acme-token";
const GLOBEX: &str = "globex-token";

fn tokens_toml(entries: &[(&str, &str, &[&str], bool)]) -> String {
    let mut s = String::new();
    for (token, tenant, apps, admin) in entries {
        let apps: Vec<String> = apps.iter().map(|a| format!("{a:?}")).collect();
        s.push_str(&format!(
            "[[token]]\nsha256 = \"{}\"\ntenant = \"{tenant}\"\napps = [{}]\nadmin = {admin}\n\n",
            sha256_hex(token.as_bytes()),
            apps.join(", ")
        ));
    }
    s
}

fn default_tokens() -> String {
    tokens_toml(&[
        (ADMIN, "ops", &[], true),
        (ACME, "acme", &["acme-*", "hello"], false),
        (GLOBEX, "globex", &["globex-*"], false),
    ])
}

/// One test's world: a chroot, the API serving on loopback, simulated hosts.
struct World {
    _zk: Arc<ZkServer>,
    _dir: tempfile::TempDir,
    tokens_path: PathBuf,
    servers: String,
    chroot: String,
    store: ZkStore,
    addr: SocketAddr,
    api: Api<ZkStore>,
    hosts: BTreeMap<String, ZkSession>,
    schedulers: Vec<SchedulerHandle>,
}

impl World {
    async fn new(test: &str) -> Option<Self> {
        logs();
        let zk = shared_zk(test)?;
        let servers = zk.connect_string();
        let chroot = format!("/{test}");
        let store = ZkStore::new(ZkSession::connect(config(&servers, &chroot)).await.unwrap());
        let dir = tempfile::tempdir().unwrap();
        let tokens_path = dir.path().join("tokens.toml");
        std::fs::write(&tokens_path, default_tokens()).unwrap();
        let tokens = Tokens::load(&tokens_path).unwrap();
        let config = ApiConfig {
            stats_timeout: Duration::from_millis(500),
            ..ApiConfig::default()
        };
        let api = Api::new(store.clone(), tokens, None, config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(api.clone().serve(listener, std::future::pending()));
        Some(Self {
            _zk: zk,
            _dir: dir,
            tokens_path,
            servers,
            chroot,
            store,
            addr,
            api,
            hosts: BTreeMap::new(),
            schedulers: Vec::new(),
        })
    }

    /// A request over a new loopback connection; the status, the `WWW-Authenticate`
    /// header and the body as JSON (`Value::Null` when not JSON).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Option<String>, Value) {
        let (status, headers, bytes) = self.raw(method, path, token, body).await;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, value)
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Option<String>, Bytes) {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "api");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let www = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, www, bytes)
    }

    async fn ok(&self, method: Method, path: &str, token: &str, body: Option<&str>) -> Value {
        let (status, _, v) = self.call(method.clone(), path, Some(token), body).await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    /// Every node under the chroot with its data and version, to compare before and after.
    async fn dump(&self) -> BTreeMap<String, (Vec<u8>, i64)> {
        let mut out = BTreeMap::new();
        let mut stack = vec!["/".to_owned()];
        while let Some(p) = stack.pop() {
            for c in self.store.children(&p).await.unwrap() {
                let child = if p == "/" {
                    format!("/{c}")
                } else {
                    format!("{p}/{c}")
                };
                if let Some(n) = self.store.get(&child).await.unwrap() {
                    out.insert(child.clone(), (n.data, n.version));
                }
                stack.push(child);
            }
        }
        out
    }

    /// Publishes a host as its agent would: info, then `alive` in the host's own session.
    async fn add_host(&mut self, id: &str, memory: u64) {
        let session = ZkSession::connect(config(&self.servers, &self.chroot))
            .await
            .unwrap();
        let hosts = HostStore::new(ZkStore::new(session.clone()));
        hosts.ensure(id).await.unwrap();
        let info = HostInfo {
            ip: "127.0.0.2".parse().unwrap(),
            labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
            capacity: Resources {
                memory,
                cpu_shares: 1_000_000,
                instances: 100,
            },
            allocated: Resources::default(),
            cpu_idle: Some(0.5),
            draining: false,
            logs: None,
        };
        hosts
            .publish_agent_fields(id, &(&info).into())
            .await
            .unwrap();
        hosts.mark_alive(id, info.ip).await.unwrap();
        self.hosts.insert(id.to_owned(), session);
    }

    fn start_scheduler(&mut self) {
        let config = SchedulerConfig {
            resync: Duration::from_millis(500),
            name: "api-test".into(),
            ..SchedulerConfig::default()
        };
        self.schedulers
            .push(Scheduler::new(self.store.clone(), config).spawn());
    }

    /// Waits until `GET path` satisfies `check`, and returns it.
    async fn wait_get(&self, path: &str, token: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, _, v) = self.call(Method::GET, path, Some(token), None).await;
            if status.is_success() && check(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} never matched; last: {status} {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn config(servers: &str, chroot: &str) -> ZkConfig {
    ZkConfig::new(servers)
        .with_chroot(chroot)
        .with_session_timeout(Duration::from_secs(10))
}

fn deployment(app: &str, version: &str, replicas: u32, memory: &str) -> String {
    json!({"image": format!("127.0.0.1:5000/{app}:{version}"), "replicas": replicas,
           "container_port": 8080, "memory": memory, "cpu_shares": 10})
    .to_string()
}

#[tokio::test]
async fn no_token_or_an_unknown_one_is_401() {
    let Some(w) = World::new("api_401").await else {
        return;
    };
    for token in [None, Some("nope"), Some("")] {
        let (status, www, body) = w.call(Method::GET, "/v1/apps", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert!(www.unwrap().starts_with("Bearer"), "{token:?}");
        assert_eq!(body["error"], "unauthorized");
    }
    // Another scheme is no token either.
    let (status, _, bytes) = {
        let stream = tokio::net::TcpStream::connect(w.addr).await.unwrap();
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/v1/apps")
            .header("host", "api")
            .header("authorization", format!("Basic {ADMIN}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = s.send_request(req).await.unwrap();
        (
            resp.status(),
            (),
            resp.into_body().collect().await.unwrap().to_bytes(),
        )
    };
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{bytes:?}");
    let v = w.ok(Method::GET, "/v1/apps", ACME, None).await;
    assert_eq!(v, json!({"apps": []}));
}

#[tokio::test]
async fn another_tenants_app_is_404_on_every_route_and_nothing_changes() {
    let Some(mut w) = World::new("api_tenant_404").await else {
        return;
    };
    w.add_host("h1", 4 * GIB).await;
    w.ok(
        Method::PUT,
        "/v1/apps/globex-web/versions/v1",
        GLOBEX,
        Some(&deployment("globex-web", "v1", 1, "64m")),
    )
    .await;
    w.ok(
        Method::PUT,
        "/v1/apps/globex-web/domains/www.globex.test",
        GLOBEX,
        None,
    )
    .await;
    let listed = w.ok(Method::GET, "/v1/apps", ACME, None).await;
    assert_eq!(
        listed,
        json!({"apps": []}),
        "acme must not see globex's app"
    );
    let before = w.dump().await;
    let dep = deployment("globex-web", "v2", 1, "64m");
    let routes: Vec<(Method, &str, Option<&str>)> = vec![
        (Method::GET, "/v1/apps/{}", None),
        (Method::DELETE, "/v1/apps/{}", None),
        (Method::PUT, "/v1/apps/{}/versions/v1", Some(dep.as_str())),
        (
            Method::PATCH,
            "/v1/apps/{}/versions/v1",
            Some(r#"{"replicas": 5}"#),
        ),
        (Method::DELETE, "/v1/apps/{}/versions/v1", None),
        (Method::PUT, "/v1/apps/{}/weights", Some(r#"{"v1": 100}"#)),
        (Method::DELETE, "/v1/apps/{}/weights", None),
        (Method::PUT, "/v1/apps/{}/domains/evil.test", None),
        (Method::DELETE, "/v1/apps/{}/domains/www.globex.test", None),
        (
            Method::PUT,
            "/v1/apps/{}/blacklist",
            Some(r#"["10.0.0.0/8"]"#),
        ),
        (Method::PUT, "/v1/apps/{}/rate_limit", Some(r#"{"rps": 1}"#)),
        (Method::GET, "/v1/apps/{}/stats", None),
        (
            Method::POST,
            "/v1/apps/{}/rollouts",
            Some(r#"{"version": "v2", "image": "127.0.0.1:5000/globex-web:v2"}"#),
        ),
        (Method::GET, "/v1/apps/{}/rollout", None),
        (Method::POST, "/v1/apps/{}/rollback", None),
        (
            Method::GET,
            "/v1/apps/{}/instances/globex-web-v1-0/logs?tail=5",
            None,
        ),
    ];
    for (method, template, body) in routes {
        let theirs = template.replace("{}", "globex-web");
        let (status, _, answer) = w.call(method.clone(), &theirs, Some(ACME), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {theirs}: {answer}");
        // Exactly what a missing app of the caller's own gets, name aside (creating a
        // version is the one route where the caller's own missing app is no error).
        let ghost = if method == Method::PUT && template.contains("/versions/") {
            "/v1/apps/acme-ghost".to_owned()
        } else {
            template.replace("{}", "acme-ghost")
        };
        let gmethod = if ghost == "/v1/apps/acme-ghost" {
            Method::GET
        } else {
            method.clone()
        };
        let (gstatus, _, ganswer) = w.call(gmethod, &ghost, Some(ACME), body).await;
        assert_eq!(gstatus, StatusCode::NOT_FOUND, "{ghost}: {ganswer}");
        assert_eq!(answer["error"], ganswer["error"], "{method} {theirs}");
        assert_eq!(
            answer["message"]
                .as_str()
                .unwrap()
                .replace("globex-web", "acme-ghost"),
            ganswer["message"].as_str().unwrap(),
            "{method} {theirs}"
        );
    }
    assert_eq!(w.dump().await, before, "a refused tenant changed the store");
    // The owner still sees and can change it.
    let v = w.ok(Method::GET, "/v1/apps/globex-web", GLOBEX, None).await;
    assert_eq!(v["domains"], json!(["www.globex.test"]));
}

#[tokio::test]
async fn admin_routes_are_403_for_tenants() {
    let Some(mut w) = World::new("api_admin_403").await else {
        return;
    };
    w.add_host("h1", 4 * GIB).await;
    for (method, path) in [
        (Method::GET, "/v1/hosts"),
        (Method::POST, "/v1/hosts/h1/drain"),
        (Method::DELETE, "/v1/hosts/h1/drain"),
    ] {
        let (status, _, v) = w.call(method.clone(), path, Some(ACME), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {v}");
        assert_eq!(v["error"], "forbidden");
    }
    let hosts = w.ok(Method::GET, "/v1/hosts", ADMIN, None).await;
    let h = &hosts["hosts"][0];
    assert_eq!(
        (
            h["id"].as_str(),
            h["alive"].as_bool(),
            h["draining"].as_bool()
        ),
        (Some("h1"), Some(true), Some(false))
    );
    assert_eq!(h["capacity"]["memory"], 4 * GIB);
    assert_eq!(h["labels"], json!({"zone": "a"}));
    assert_eq!(h["cpu_idle"], 0.5);
    let v = w.ok(Method::POST, "/v1/hosts/h1/drain", ADMIN, None).await;
    assert_eq!(v["draining"], true);
    let hosts = w.ok(Method::GET, "/v1/hosts", ADMIN, None).await;
    assert_eq!(hosts["hosts"][0]["draining"], true);
    w.ok(Method::DELETE, "/v1/hosts/h1/drain", ADMIN, None)
        .await;
    let hosts = w.ok(Method::GET, "/v1/hosts", ADMIN, None).await;
    assert_eq!(hosts["hosts"][0]["draining"], false);
    let (status, _, v) = w
        .call(Method::POST, "/v1/hosts/h9/drain", Some(ADMIN), None)
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("host_not_found"))
    );
    let (status, _, v) = w
        .call(Method::POST, "/v1/hosts/H_1/drain", Some(ADMIN), None)
        .await;
    assert_eq!(
        (status, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("host"))
    );
}

#[tokio::test]
async fn bad_input_is_400_naming_the_field_and_writes_nothing() {
    let Some(mut w) = World::new("api_validation").await else {
        return;
    };
    w.add_host("h1", GIB).await;
    w.ok(
        Method::PUT,
        "/v1/apps/hello/versions/v1",
        ACME,
        Some(&deployment("hello", "v1", 1, "64m")),
    )
    .await;
    w.ok(
        Method::PUT,
        "/v1/apps/other-app/versions/v1",
        ADMIN,
        Some(&deployment("other-app", "v1", 1, "64m")),
    )
    .await;
    w.ok(
        Method::PUT,
        "/v1/apps/other-app/domains/taken.test",
        ADMIN,
        None,
    )
    .await;
    let before = w.dump().await;
    let base = r#""image": "127.0.0.1:5000/hello:v2", "container_port": 8080"#;
    // method, path, body, status, error code, field
    type Case<'a> = (
        Method,
        &'a str,
        String,
        StatusCode,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case<'_>> = vec![
        (Method::PUT, "/v1/apps/Hello/versions/v2", deployment("hello", "v2", 1, "64m"), StatusCode::BAD_REQUEST, "invalid_field", Some("app")),
        (Method::PUT, "/v1/apps/hello/versions/v_2", deployment("hello", "v2", 1, "64m"), StatusCode::BAD_REQUEST, "invalid_field", Some("version")),
        (Method::PUT, "/v1/apps/hello/versions/v2", format!(r#"{{{base}, "replicas": 1, "colour": "red"}}"#), StatusCode::BAD_REQUEST, "unknown_field", Some("colour")),
        (Method::PUT, "/v1/apps/hello/versions/v2", format!(r#"{{{base}, "replicas": 1, "health": {{"pth": "/"}}}}"#), StatusCode::BAD_REQUEST, "unknown_field", Some("health.pth")),
        (Method::PUT, "/v1/apps/hello/versions/v2", format!(r#"{{{base}, "replicas": 1, "memory": "2g"}}"#), StatusCode::BAD_REQUEST, "invalid_field", Some("memory")),
        (Method::PUT, "/v1/apps/hello/versions/v2", format!(r#"{{{base}, "replicas": "three"}}"#), StatusCode::BAD_REQUEST, "invalid_field", Some("replicas")),
        (Method::PUT, "/v1/apps/hello/versions/v2", format!(r#"{{{base}, "replicas": 1, "global": true}}"#), StatusCode::BAD_REQUEST, "invalid_field", Some("replicas")),
        (Method::PUT, "/v1/apps/hello/versions/v2", r#"{"image": "127.0.0.1:5000/other-app:v2", "container_port": 8080, "replicas": 1}"#.into(), StatusCode::BAD_REQUEST, "invalid_field", Some("image")),
        (Method::PUT, "/v1/apps/hello/versions/v2", r#"{"image": "127.0.0.1:5000/hello:v2", "container_port": 8080, "replicas": 1, "sidecars": [{"name": "c", "image": "nope", "memory": "64m"}]}"#.into(), StatusCode::BAD_REQUEST, "invalid_field", Some("sidecars[0].image")),
        (Method::PUT, "/v1/apps/hello/versions/v2", format!(r#"{{{base}, "replicas": 1"#), StatusCode::BAD_REQUEST, "malformed_json", None),
        (Method::PATCH, "/v1/apps/hello/versions/v1", r#"{"replicas": 2, "x": 1}"#.into(), StatusCode::BAD_REQUEST, "unknown_field", Some("x")),
        (Method::PATCH, "/v1/apps/hello/versions/v1", r#"{"replicas": 20000}"#.into(), StatusCode::BAD_REQUEST, "invalid_field", Some("replicas")),
        (Method::PATCH, "/v1/apps/hello/versions/v9", r#"{"replicas": 2}"#.into(), StatusCode::NOT_FOUND, "version_not_found", None),
        (Method::PUT, "/v1/apps/hello/weights", r#"{"v1": 90, "v9": 10}"#.into(), StatusCode::BAD_REQUEST, "invalid_field", Some("weights.v9")),
        (Method::PUT, "/v1/apps/hello/weights", r#"{"v1": 0}"#.into(), StatusCode::BAD_REQUEST, "invalid_field", Some("weights")),
        (Method::PUT, "/v1/apps/hello/weights", r#"{"V1": 10}"#.into(), StatusCode::BAD_REQUEST, "invalid_field", Some("weights.V1")),
        (Method::PUT, "/v1/apps/hello/rate_limit", r#"{"burst": 5}"#.into(), StatusCode::BAD_REQUEST, "invalid_field", Some("rate_limit")),
        (Method::PUT, "/v1/apps/hello/rate_limit", r#"{"rps": 5, "per_client_burst": 3}"#.into(), StatusCode::BAD_REQUEST, "invalid_field", Some("rate_limit.per_client_burst")),
        (Method::PUT, "/v1/apps/hello/rate_limit", r#"{"rps": 5, "rsp": 1}"#.into(), StatusCode::BAD_REQUEST, "unknown_field", Some("rate_limit.rsp")),
        (Method::PUT, "/v1/apps/hello/blacklist", r#"{"paths": ["admin"]}"#.into(), StatusCode::BAD_REQUEST, "invalid_field", Some("blacklist.paths")),
        (Method::PUT, "/v1/apps/hello/domains/not a domain", String::new(), StatusCode::BAD_REQUEST, "invalid_field", Some("domain")),
        (Method::PUT, "/v1/apps/hello/domains/taken.test", String::new(), StatusCode::CONFLICT, "domain_taken", None),
        (Method::DELETE, "/v1/apps/hello/domains/taken.test", String::new(), StatusCode::NOT_FOUND, "domain_not_found", None),
        (Method::DELETE, "/v1/apps/hello/versions/v9", String::new(), StatusCode::NOT_FOUND, "version_not_found", None),
    ];
    for (method, path, body, status, code, field) in cases {
        let path = path.replace(' ', "%20");
        let (got, _, v) = w.call(method.clone(), &path, Some(ACME), Some(&body)).await;
        assert_eq!(
            (got, v["error"].as_str(), v["field"].as_str()),
            (status, Some(code), field),
            "{method} {path} {body}: {v}"
        );
        assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{v}");
    }
    assert_eq!(w.dump().await, before, "a refused change wrote something");
}

#[tokio::test]
async fn deploy_shows_instances_then_scale_route_and_remove() {
    let Some(mut w) = World::new("api_deploy").await else {
        return;
    };
    w.add_host("h1", 4 * GIB).await;
    w.add_host("h2", 4 * GIB).await;
    w.start_scheduler();
    let v = w
        .ok(
            Method::PUT,
            "/v1/apps/hello/versions/v1",
            ACME,
            Some(&deployment("hello", "v1", 2, "64m")),
        )
        .await;
    assert_eq!(v["created"], true);
    let app = w
        .wait_get("/v1/apps/hello", ACME, |v| {
            v["instances"].as_array().is_some_and(|i| i.len() == 2)
        })
        .await;
    assert_eq!(app["versions"][0]["version"], "v1");
    assert_eq!(app["versions"][0]["deployment"]["replicas"], 2);
    let inst = &app["instances"][0];
    assert_eq!(inst["health"], "unknown");
    assert_eq!(inst["state"], "assigned");
    // The agent's part, played by hand: a status report and a registration.
    let id = inst["id"].as_str().unwrap().to_owned();
    let host = inst["host"].as_str().unwrap().to_owned();
    let session = w.hosts[&host].clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    HostStore::new(ZkStore::new(session.clone()))
        .put_status(
            &host,
            &InstanceId::new(&id).unwrap(),
            &InstanceStatus {
                app: AppId::new("hello").unwrap(),
                version: Version::new("v1").unwrap(),
                state: InstanceState::Healthy,
                address: Some("127.0.0.2:25701".into()),
                container: Some("c0ffee".into()),
                restarts: 2,
                started_at_ms: Some(now - 5_000),
                message: None,
            },
        )
        .await
        .unwrap();
    Registry::new(ZkStore::new(session))
        .register(
            &AppId::new("hello").unwrap(),
            &Version::new("v1").unwrap(),
            &InstanceId::new(&id).unwrap(),
            "127.0.0.2:25701".parse().unwrap(),
        )
        .await
        .unwrap();
    let app = w
        .wait_get("/v1/apps/hello", ACME, |v| {
            v["instances"][0]["health"] == "healthy"
        })
        .await;
    let inst = &app["instances"][0];
    assert_eq!(
        (
            inst["state"].as_str(),
            inst["address"].as_str(),
            inst["restarts"].as_u64()
        ),
        (Some("healthy"), Some("127.0.0.2:25701"), Some(2))
    );
    assert!(inst["age_s"].as_u64().unwrap() >= 5);
    w.wait_get("/v1/apps/hello", ACME, |v| {
        v["versions"][0]["status"]["desired"] == 2
    })
    .await;

    // Scale, a second version, weights, a domain, policies.
    w.ok(
        Method::PATCH,
        "/v1/apps/hello/versions/v1",
        ACME,
        Some(r#"{"replicas": 3}"#),
    )
    .await;
    w.wait_get("/v1/apps/hello", ACME, |v| {
        v["instances"].as_array().is_some_and(|i| i.len() == 3)
    })
    .await;
    w.ok(
        Method::PUT,
        "/v1/apps/hello/versions/v2",
        ACME,
        Some(&deployment("hello", "v2", 1, "64m")),
    )
    .await;
    let v = w
        .ok(
            Method::PUT,
            "/v1/apps/hello/weights",
            ACME,
            Some(r#"{"v1": 90, "v2": 10}"#),
        )
        .await;
    assert_eq!(v["weights"], json!({"v1": 90, "v2": 10}));
    let (status, _, _) = w
        .call(
            Method::PUT,
            "/v1/apps/hello/domains/www.hello.test",
            Some(ACME),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = w
        .call(
            Method::PUT,
            "/v1/apps/hello/domains/www.hello.test",
            Some(ACME),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "claiming a held domain again is fine"
    );
    w.ok(
        Method::PUT,
        "/v1/apps/hello/rate_limit",
        ACME,
        Some(r#"{"rps": 100}"#),
    )
    .await;
    w.ok(
        Method::PUT,
        "/v1/apps/hello/blacklist",
        ACME,
        Some(r#"{"paths": ["/admin"]}"#),
    )
    .await;
    let app = w.ok(Method::GET, "/v1/apps/hello", ACME, None).await;
    assert_eq!(app["weights"], json!({"v1": 90, "v2": 10}));
    assert_eq!(app["domains"], json!(["www.hello.test"]));
    assert_eq!(app["rate_limit"], json!({"rps": 100}));
    assert_eq!(app["blacklist"], json!({"paths": ["/admin"]}));
    let listed = w.ok(Method::GET, "/v1/apps", ACME, None).await;
    assert_eq!(
        listed,
        json!({"apps": [{"app": "hello", "versions": ["v1", "v2"]}]})
    );
    // The app node is the gateway's AppSpec JSON.
    let spec = w.store.get("/apps/hello").await.unwrap().unwrap();
    let spec: caas_core::AppSpec = serde_json::from_slice(&spec.data).unwrap();
    assert_eq!(spec.weights.len(), 2);

    // Deleting v2 takes it out of the weights in the same commit.
    w.ok(Method::DELETE, "/v1/apps/hello/versions/v2", ACME, None)
        .await;
    let app = w.ok(Method::GET, "/v1/apps/hello", ACME, None).await;
    assert_eq!(app["weights"], json!({"v1": 90}));
    assert_eq!(app["versions"].as_array().unwrap().len(), 1);

    // Deleting the app removes every node of it.
    w.ok(Method::DELETE, "/v1/apps/hello", ACME, None).await;
    let (status, _, _) = w
        .call(Method::GET, "/v1/apps/hello", Some(ACME), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let left: Vec<String> = w
        .dump()
        .await
        .into_keys()
        // Registrations and instance reports are the agent's, cleaned by its reconcile.
        .filter(|p| {
            p.contains("hello") && !p.starts_with("/service/") && !p.contains("/status/hello")
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    for h in ["h1", "h2"] {
        let info: HostInfo = serde_json::from_slice(
            &w.store
                .get(&format!("/hosts/{h}"))
                .await
                .unwrap()
                .unwrap()
                .data,
        )
        .unwrap();
        assert_eq!(info.allocated, Resources::default(), "{h}");
    }
    for s in std::mem::take(&mut w.schedulers) {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn the_tokens_file_is_read_again_when_it_changes() {
    let Some(w) = World::new("api_tokens_reload").await else {
        return;
    };
    let (status, _, _) = w
        .call(Method::GET, "/v1/apps", Some("fresh-token"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    std::fs::write(
        &w.tokens_path,
        tokens_toml(&[("fresh-token", "fresh", &["fresh-*"], false)]),
    )
    .unwrap();
    let (status, _, _) = w
        .call(Method::GET, "/v1/apps", Some("fresh-token"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = w.call(Method::GET, "/v1/apps", Some(ACME), None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a removed token must stop working"
    );
    assert_eq!(w.api.tokens().reloads(), 1);
    // A broken edit keeps the last good version.
    std::fs::write(&w.tokens_path, "[[token]]\nsha256 = \"x\"\n").unwrap();
    let (status, _, _) = w
        .call(Method::GET, "/v1/apps", Some("fresh-token"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(w.api.tokens().rejected(), 1);
    // Replaced by rename, as editors and config tools do.
    let tmp = w.tokens_path.with_extension("tmp");
    std::fs::write(&tmp, default_tokens()).unwrap();
    std::fs::rename(&tmp, &w.tokens_path).unwrap();
    let (status, _, _) = w.call(Method::GET, "/v1/apps", Some(ACME), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(w.api.tokens().reloads(), 2);
}

/// A fake gateway admin listener answering `/stats/hello` with `body` (the real endpoint
/// lands with the gateway's announcement).
async fn fake_admin(body: Value) -> SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        let (status, text) = if req.uri().path() == "/stats/hello" {
                            (200, body.to_string())
                        } else {
                            (404, "{}".to_owned())
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(text)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn stats_are_summed_over_gateways_and_a_dead_one_is_listed_missing() {
    let Some(w) = World::new("api_stats").await else {
        return;
    };
    w.ok(
        Method::PUT,
        "/v1/apps/hello/versions/v1",
        ACME,
        Some(&deployment("hello", "v1", 1, "64m")),
    )
    .await;
    let g1 = fake_admin(json!({"requests": 10, "status": {"2xx": 9, "5xx": 1}, "bytes_out": 1000}))
        .await;
    let g2 =
        fake_admin(json!({"requests": 5, "status": {"2xx": 4, "4xx": 1}, "bytes_out": 24})).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // closed again: connections are refused
    // Announced as gateways do: ephemeral nodes of their own sessions.
    let session = ZkSession::connect(config(&w.servers, &w.chroot))
        .await
        .unwrap();
    let client = session.client().unwrap();
    client
        .mkdir(
            "/gateways",
            &zookeeper_client::CreateMode::Persistent
                .with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await
        .unwrap();
    for (id, addr) in [("gw-1", g1), ("gw-2", g2), ("gw-3", dead)] {
        client
            .create(
                &format!("/gateways/{id}"),
                json!({"admin": addr.to_string(), "listen": "127.0.0.1:8080"})
                    .to_string()
                    .as_bytes(),
                &zookeeper_client::CreateMode::Ephemeral
                    .with_acls(zookeeper_client::Acls::anyone_all()),
            )
            .await
            .unwrap();
    }
    let v = w.ok(Method::GET, "/v1/apps/hello/stats", ACME, None).await;
    assert_eq!(
        v["stats"],
        json!({"requests": 15, "status": {"2xx": 13, "5xx": 1, "4xx": 1}, "bytes_out": 1024})
    );
    assert_eq!(v["gateways"], 2);
    assert_eq!(v["missing"], json!(["gw-3"]));
    assert!(
        v["errors"]["gw-3"]
            .as_str()
            .unwrap()
            .contains(&dead.to_string()),
        "{v}"
    );
    session.close();
}

/// A store through which another writer changes `path` just before the API's first commit
/// touching it, as a concurrent operator or scheduler would.
#[derive(Clone)]
struct Racing {
    inner: ZkStore,
    path: String,
    raced: Arc<std::sync::atomic::AtomicBool>,
    edit: fn(&mut Value),
}

impl Store for Racing {
    fn get(
        &self,
        path: &str,
    ) -> impl std::future::Future<
        Output = Result<Option<caas_backends::store::Versioned>, caas_backends::store::StoreError>,
    > + Send {
        self.inner.get(path)
    }

    fn children(
        &self,
        path: &str,
    ) -> impl std::future::Future<Output = Result<Vec<String>, caas_backends::store::StoreError>> + Send
    {
        self.inner.children(path)
    }

    fn commit(
        &self,
        ops: Vec<caas_backends::store::Op>,
    ) -> impl std::future::Future<
        Output = Result<Vec<Option<i64>>, caas_backends::store::StoreError>,
    > + Send {
        let this = self.clone();
        async move {
            if ops.iter().any(|o| o.path() == this.path)
                && !this.raced.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                let node = this.inner.get(&this.path).await?.unwrap();
                let mut v: Value = serde_json::from_slice(&node.data).unwrap();
                (this.edit)(&mut v);
                caas_backends::store::put(
                    &this.inner,
                    &this.path,
                    &serde_json::to_vec(&v).unwrap(),
                )
                .await?;
            }
            this.inner.commit(ops).await
        }
    }

    fn watch(&self, prefix: &str) -> caas_backends::store::Watch {
        self.inner.watch(prefix)
    }

    fn list(
        &self,
        path: &str,
    ) -> impl std::future::Future<
        Output = Result<
            Vec<(String, caas_backends::store::Versioned)>,
            caas_backends::store::StoreError,
        >,
    > + Send {
        self.inner.list(path)
    }

    fn create_ephemeral(
        &self,
        path: &str,
        data: &[u8],
    ) -> impl std::future::Future<Output = Result<(), caas_backends::store::StoreError>> + Send
    {
        self.inner.create_ephemeral(path, data)
    }

    fn delete_ephemeral(
        &self,
        path: &str,
    ) -> impl std::future::Future<Output = Result<(), caas_backends::store::StoreError>> + Send
    {
        self.inner.delete_ephemeral(path)
    }

    fn close(&self) -> impl std::future::Future<Output = ()> + Send {
        self.inner.close()
    }
}

/// `PATCH` through `api` without a socket (`Api::handle` takes any body).
async fn patch_replicas<S: Store>(api: &Api<S>, replicas: u32) -> (StatusCode, Value) {
    let req = Request::patch("/v1/apps/hello/versions/v1")
        .header("authorization", format!("Bearer {ACME}"))
        .body(Full::new(Bytes::from(format!(
            "{{\"replicas\": {replicas}}}"
        ))))
        .unwrap();
    let resp = api.handle(req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn a_change_that_conflicts_is_decided_again_and_never_half_written() {
    let Some(w) = World::new("api_race").await else {
        return;
    };
    w.ok(
        Method::PUT,
        "/v1/apps/hello/versions/v1",
        ACME,
        Some(&deployment("hello", "v1", 1, "64m")),
    )
    .await;
    let racing = |edit: fn(&mut Value)| {
        let store = Racing {
            inner: w.store.clone(),
            path: "/deployments/hello/v1".into(),
            raced: Arc::default(),
            edit,
        };
        let api = Api::new(
            store.clone(),
            Tokens::load(&w.tokens_path).unwrap(),
            None,
            ApiConfig::default(),
        );
        (store, api)
    };
    let node = || async {
        let n = w.store.get("/deployments/hello/v1").await.unwrap().unwrap();
        serde_json::from_slice::<Value>(&n.data).unwrap()
    };

    // Someone changes cpu_shares between the API's read and its commit: the commit is
    // refused, the API reads again and scales the new version; both changes stand.
    let (store, api) = racing(|v| v["cpu_shares"] = json!(20));
    let (status, body) = patch_replicas(&api, 4).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(store.raced.load(std::sync::atomic::Ordering::SeqCst));
    let d = node().await;
    assert_eq!(
        (d["replicas"].as_u64(), d["cpu_shares"].as_u64()),
        (Some(4), Some(20))
    );

    // The concurrent change makes the request invalid (the deployment became global): the
    // decision taken again refuses it, and the node is exactly what the other writer left.
    let (_, api) = racing(|v| {
        v.as_object_mut().unwrap().remove("replicas");
        v["global"] = json!(true);
    });
    let (status, body) = patch_replicas(&api, 6).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("replicas")),
        "{body}"
    );
    let d = node().await;
    assert_eq!(
        (d.get("replicas"), d["global"].as_bool()),
        (None, Some(true))
    );
}

/// Plays the agents' part for every instance of `app:version`: a healthy status report and a
/// registration, then waits until the scheduler calls the deployment running.
async fn serve_healthy(w: &World, app: &str, version: &str, replicas: usize) {
    let path = format!("/v1/apps/{app}");
    let view = w
        .wait_get(&path, ACME, |v| {
            v["instances"]
                .as_array()
                .is_some_and(|i| i.iter().filter(|i| i["version"] == version).count() == replicas)
        })
        .await;
    for (n, inst) in view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["version"] == version)
        .enumerate()
    {
        let id = InstanceId::new(inst["id"].as_str().unwrap()).unwrap();
        let host = inst["host"].as_str().unwrap();
        let session = w.hosts[host].clone();
        let addr: SocketAddr = format!("127.0.0.2:{}", 25701 + n).parse().unwrap();
        HostStore::new(ZkStore::new(session.clone()))
            .put_status(
                host,
                &id,
                &InstanceStatus {
                    app: AppId::new(app).unwrap(),
                    version: Version::new(version).unwrap(),
                    state: InstanceState::Healthy,
                    address: Some(addr.to_string()),
                    container: Some(format!("c{n}")),
                    restarts: 0,
                    started_at_ms: None,
                    message: None,
                },
            )
            .await
            .unwrap();
        Registry::new(ZkStore::new(session))
            .register(
                &AppId::new(app).unwrap(),
                &Version::new(version).unwrap(),
                &id,
                addr,
            )
            .await
            .unwrap();
    }
    w.wait_get(&path, ACME, |v| {
        v["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|x| x["version"] == version))
            .is_some_and(|x| x["status"]["phase"] == "running")
    })
    .await;
}

#[tokio::test]
async fn rolling_updates_start_through_the_api_one_at_a_time_and_bad_ones_write_nothing() {
    let Some(mut w) = World::new("api_rollouts").await else {
        return;
    };
    w.add_host("h1", 4 * GIB).await;
    w.start_scheduler();
    w.ok(
        Method::PUT,
        "/v1/apps/hello/versions/v1",
        ACME,
        Some(&deployment("hello", "v1", 1, "64m")),
    )
    .await;
    // Nothing serves yet: an update has nothing to replace.
    let (status, _, answer) = w
        .call(
            Method::POST,
            "/v1/apps/hello/rollouts",
            Some(ACME),
            Some(r#"{"version": "v2", "image": "127.0.0.1:5000/hello:v2"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("hello:v1"),
        "{answer}"
    );
    serve_healthy(&w, "hello", "v1", 1).await;

    let (status, _, answer) = w
        .call(Method::GET, "/v1/apps/hello/rollout", Some(ACME), None)
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_rollout"))
    );

    // Bad requests name the field and write nothing.
    let before = w.dump().await;
    for (body, field) in [
        (
            r#"{"version": "v2", "image": "127.0.0.1:5000/hello:v2", "steps": [50, 10, 100]}"#,
            "steps",
        ),
        (
            r#"{"version": "v2", "image": "127.0.0.1:5000/hello:v2", "steps": [10, 50]}"#,
            "steps",
        ),
        (
            r#"{"version": "v 2", "image": "127.0.0.1:5000/hello:v2"}"#,
            "version",
        ),
        (r#"{"version": "v2"}"#, "image"),
        (
            r#"{"version": "v2", "image": "127.0.0.1:5000/hello:v2", "colour": "red"}"#,
            "colour",
        ),
        (
            r#"{"version": "v2", "deployment": {"image": "127.0.0.1:5000/other:v2", "replicas": 1, "container_port": 8080}}"#,
            "deployment.image",
        ),
        (
            r#"{"version": "v2", "deployment": {"image": "127.0.0.1:5000/hello:v2", "replicas": 1, "container_port": 8080, "memory": "64g"}}"#,
            "memory",
        ),
    ] {
        let (status, _, answer) = w
            .call(
                Method::POST,
                "/v1/apps/hello/rollouts",
                Some(ACME),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["field"].as_str(), Some(field), "{body}: {answer}");
    }
    assert_eq!(w.dump().await, before, "a refused rollout wrote something");

    // A good one: the rollout node, in phase starting, with the defaults filled in.
    let (status, _, started) = w
        .call(
            Method::POST,
            "/v1/apps/hello/rollouts",
            Some(ACME),
            Some(r#"{"version": "v2", "image": "127.0.0.1:5000/hello:v2", "steps": [25, 100], "step_wait_ms": 100}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!(
        (
            started["from"].as_str(),
            started["to"].as_str(),
            started["phase"].as_str()
        ),
        (Some("v1"), Some("v2"), Some("starting"))
    );
    assert_eq!(started["deployment"]["image"], "127.0.0.1:5000/hello:v2");
    assert_eq!(started["deployment"]["replicas"], 1, "v1's replicas");
    assert_eq!(started["steps"], json!([25, 100]));
    let read = w
        .ok(Method::GET, "/v1/apps/hello/rollout", ACME, None)
        .await;
    assert_eq!(read, started);
    // One at a time.
    let (status, _, answer) = w
        .call(
            Method::POST,
            "/v1/apps/hello/rollouts",
            Some(ACME),
            Some(r#"{"version": "v3", "image": "127.0.0.1:5000/hello:v3"}"#),
        )
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::CONFLICT, Some("rollout_conflict")),
        "{answer}"
    );
    // Rolled back before any controller moved it: the node says so.
    let (status, _, back) = w
        .call(Method::POST, "/v1/apps/hello/rollback", Some(ACME), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{back}");
    assert!(
        matches!(back["phase"].as_str(), Some("rolling_back" | "rolled_back")),
        "{back}"
    );
}
