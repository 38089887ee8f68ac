//! The control API on every store: one tenant flow (deploy, scale, an exclusive domain claim,
//! another tenant kept out, a refused change writing nothing, removal) run unchanged on
//! ZooKeeper, etcd and the in-memory store, through `Api::handle` (no socket: the store is
//! what differs). Without etcd (or ZooKeeper) its tests print SKIPPED, and fail under
//! `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;

use bytes::Bytes;
use caas_backends::api::auth::sha256_hex;
use caas_backends::api::{Api, ApiConfig, Tokens};
use caas_backends::store::Store;
use caas_backends::store_suite;
use caas_backends::testing::stores::{EtcdFixture, MemFixture, StoreFixture, ZkFixture};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

const ACME: &str = "acme-token";
const GLOBEX: &str = "globex-token";

fn tokens(dir: &tempfile::TempDir) -> Tokens {
    let path = dir.path().join("tokens.toml");
    let mut toml = String::new();
    for (token, tenant, apps) in [(ACME, "acme", "acme-*"), (GLOBEX, "globex", "globex-*")] {
        toml.push_str(&format!(
            "[[token]]\nsha256 = \"{}\"\ntenant = \"{tenant}\"\napps = [\"{apps}\"]\nadmin = false\n",
            sha256_hex(token.as_bytes())
        ));
    }
    std::fs::write(&path, toml).unwrap();
    Tokens::load(&path).unwrap()
}

async fn call<S: Store>(
    api: &Api<S>,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(body))
        .unwrap();
    let resp = api.handle(req).await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Every node under `path` with its data and version.
async fn dump<S: Store>(store: &S, path: &str, out: &mut BTreeMap<String, (Vec<u8>, i64)>) {
    for name in store.children(path).await.unwrap() {
        let child = if path == "/" {
            format!("/{name}")
        } else {
            format!("{path}/{name}")
        };
        if let Some(v) = store.get(&child).await.unwrap() {
            out.insert(child.clone(), (v.data, v.version));
        }
        Box::pin(dump(store, &child, out)).await;
    }
}

async fn tree<S: Store>(store: &S) -> BTreeMap<String, (Vec<u8>, i64)> {
    let mut out = BTreeMap::new();
    dump(store, "/", &mut out).await;
    out
}

fn deployment(app: &str, replicas: u32) -> Value {
    json!({"image": format!("127.0.0.1:5000/{app}:v1"), "replicas": replicas,
           "container_port": 8080, "memory": "64m"})
}

async fn tenants_deploy_claim_and_remove<F: StoreFixture>(f: F) {
    let store = f.connect().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api = Api::new(store.clone(), tokens(&dir), None, ApiConfig::default());
    let put = Method::PUT;

    let (s, v) = call(
        &api,
        put.clone(),
        "/v1/apps/acme-web/versions/v1",
        ACME,
        Some(deployment("acme-web", 2)),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}: {v}", f.name());
    let (s, v) = call(
        &api,
        put.clone(),
        "/v1/apps/acme-web/domains/www.acme.test",
        ACME,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}: {v}", f.name());

    // Another tenant: the app does not exist for it, and the domain is taken.
    let (s, v) = call(&api, Method::GET, "/v1/apps/acme-web", GLOBEX, None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("app_not_found")),
        "{}",
        f.name()
    );
    let (s, v) = call(
        &api,
        put.clone(),
        "/v1/apps/globex-web/versions/v1",
        GLOBEX,
        Some(deployment("globex-web", 1)),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}: {v}", f.name());
    let before = tree(&store).await;
    let (s, v) = call(
        &api,
        put.clone(),
        "/v1/apps/globex-web/domains/www.acme.test",
        GLOBEX,
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::CONFLICT, Some("domain_taken")),
        "{}: {v}",
        f.name()
    );
    let (s, _) = call(
        &api,
        put.clone(),
        "/v1/apps/acme-web/weights",
        GLOBEX,
        Some(json!({"v1": 100})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{}", f.name());
    // A refused change of the owner's writes nothing either.
    let (s, v) = call(
        &api,
        put.clone(),
        "/v1/apps/acme-web/weights",
        ACME,
        Some(json!({"v9": 100})),
    )
    .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("weights.v9")),
        "{}: {v}",
        f.name()
    );
    assert_eq!(
        tree(&store).await,
        before,
        "{}: a refused request changed the store",
        f.name()
    );

    // The owner scales and sees its app.
    let (s, v) = call(
        &api,
        Method::PATCH,
        "/v1/apps/acme-web/versions/v1",
        ACME,
        Some(json!({"replicas": 3})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}: {v}", f.name());
    let (s, app) = call(&api, Method::GET, "/v1/apps/acme-web", ACME, None).await;
    assert_eq!(s, StatusCode::OK, "{}: {app}", f.name());
    assert_eq!(
        app["versions"][0]["deployment"]["replicas"],
        3,
        "{}: {app}",
        f.name()
    );
    assert_eq!(
        app["domains"],
        json!(["www.acme.test"]),
        "{}: {app}",
        f.name()
    );
    let (_, listed) = call(&api, Method::GET, "/v1/apps", GLOBEX, None).await;
    assert_eq!(
        listed["apps"].as_array().map(Vec::len),
        Some(1),
        "{}: {listed}",
        f.name()
    );

    // Removal frees everything, the domain included.
    let (s, v) = call(&api, Method::DELETE, "/v1/apps/acme-web", ACME, None).await;
    assert_eq!(s, StatusCode::OK, "{}: {v}", f.name());
    let left: Vec<String> = tree(&store)
        .await
        .into_keys()
        .filter(|k| k.contains("acme-web") || k.contains("www.acme.test"))
        .collect();
    assert!(left.is_empty(), "{}: left behind: {left:?}", f.name());
    let (s, v) = call(
        &api,
        put,
        "/v1/apps/globex-web/domains/www.acme.test",
        GLOBEX,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}: {v}", f.name());
    store.close().await;
}

store_suite!(
    zookeeper,
    ZkFixture::shared,
    [tenants_deploy_claim_and_remove]
);
store_suite!(etcd, EtcdFixture::shared, [tenants_deploy_claim_and_remove]);
store_suite!(memory, MemFixture::new, [tenants_deploy_claim_and_remove]);
