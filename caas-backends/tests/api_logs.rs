//! Container logs through the control API: a real host agent (real ZooKeeper, Docker Engine
//! and registry, the hello-app image) serves `GET /logs/{instanceId}` on its `logs_listen`
//! address and publishes it in its host node; the API finds the instance's host and streams
//! the agent's answer through, with `follow` until the client leaves.
//!
//! In the nextest `docker` group. Without a Docker daemon it prints `SKIPPED` and passes,
//! except under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod agent_world;

use std::time::Duration;

use agent_world::{get, until, world};
use bytes::Bytes;
use caas_backends::api::auth::sha256_hex;
use caas_backends::api::{Api, ApiConfig, Tokens};
use caas_backends::store::{self, Store};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

async fn api_get(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
) -> http::Response<hyper::body::Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "api")
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender.send_request(req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stream_from_the_agent_through_the_api() {
    let Some(w) = world("api-logs", "h-logs", "127.0.0.11").await else {
        return;
    };
    let mut config = w.config();
    config.logs_listen = Some("127.0.0.11:0".parse().unwrap());
    let _agent = caas_backends::Agent::start(config).await.unwrap();
    w.assign(&["logs-0"]).await;
    let addr = until("the instance registered", || async {
        w.registered().await.remove("logs-0")
    })
    .await;

    // The API, on its own session; the app exists (its spec node) and "t" owns it.
    let store = w.fixture.store_config().connect().await.unwrap();
    store::put(&store, "/apps/hello", b"{}").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nsha256 = \"{}\"\ntenant = \"t\"\napps = [\"hello\"]\n",
            sha256_hex(b"t")
        ),
    )
    .unwrap();
    let api = Api::new(
        store.clone(),
        Tokens::load(&tokens).unwrap(),
        None,
        ApiConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = listener.local_addr().unwrap();
    tokio::spawn(api.serve(listener, std::future::pending()));

    // The whole log so far: hello-app's start line and its requests.
    assert_eq!(get(addr, "/first-marker").unwrap().0, 200);
    let text = until("the first request in the logs", || async {
        let resp = api_get(api_addr, "/v1/apps/hello/instances/logs-0/logs", "t").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        text.contains("/first-marker").then_some(text)
    })
    .await;
    assert!(text.contains("hello-app listening on"), "{text}");
    // tail=1: one line.
    let resp = api_get(api_addr, "/v1/apps/hello/instances/logs-0/logs?tail=1", "t").await;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body).trim_end().lines().count(),
        1,
        "{body:?}"
    );

    // follow: a request made after the stream opened shows up in it.
    let resp = api_get(
        api_addr,
        "/v1/apps/hello/instances/logs-0/logs?tail=0&follow=true",
        "t",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut seen = String::new();
    let probe = tokio::spawn(async move {
        loop {
            // Until the stream shows it: the first may race the stream's start.
            let _ = tokio::task::spawn_blocking(move || get(addr, "/followed-marker")).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    tokio::time::timeout(Duration::from_secs(30), async {
        while !seen.contains("/followed-marker") {
            let frame = body.frame().await.unwrap().unwrap();
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
    })
    .await
    .expect("the followed request never appeared in the stream");
    probe.abort();
    drop(body);

    // An instance that is not there, and one of another app, are 404s.
    let resp = api_get(api_addr, "/v1/apps/hello/instances/logs-9/logs", "t").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    store.close().await;
}
