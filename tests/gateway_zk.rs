//! The gateway fed by ZooKeeper, end to end over HTTP: a registration becomes routable, the
//! gateway keeps serving its last table while ZooKeeper is down, and converges when it is
//! back.

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caas::backends::testing::ZkServer;
use caas::backends::zk::{Registry, ZkConfig, ZkDiscovery, ZkSession};
use caas::core::{AppId, Domain, InstanceId, Version};
use caas::gateway::{Gateway, GatewayConfig};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream answering every request with its name.
async fn upstream(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(name.as_bytes()),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// One request with a fresh connection; returns (status, body).
async fn get(gw: SocketAddr, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_registrations_route_and_survive_an_outage() {
    let Some(mut zk) = ZkServer::start_or_skip(ZkServer::builder(), "gateway_zk") else {
        return;
    };
    let cfg = ZkConfig::new(zk.connect_string()).with_session_timeout(Duration::from_secs(20));
    let registry = Registry::new(ZkSession::connect(cfg.clone()).await.unwrap());
    let (a, b) = (upstream("one").await, upstream("two").await);
    let (app, v1) = (AppId::new("hello").unwrap(), Version::new("v1").unwrap());

    let gateway = Gateway::builder(GatewayConfig {
        domains: vec![Domain::new("caas.local").unwrap()],
        ..GatewayConfig::default()
    })
    .discovery(ZkDiscovery::connect(cfg.clone()).await.unwrap())
    .build()
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    let g = gateway.clone();
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });

    assert_eq!(
        get(gw, "hello.caas.local").await.0,
        404,
        "nothing registered yet"
    );
    let registered = Instant::now();
    registry
        .register(&app, &v1, &InstanceId::new("c1").unwrap(), a)
        .await
        .unwrap();
    wait_for(
        "the first registration to route",
        Duration::from_secs(10),
        async || get(gw, "hello.caas.local").await == (200, "one".into()),
    )
    .await;
    eprintln!(
        "registration -> routable over HTTP: {:?}",
        registered.elapsed()
    );

    // ZooKeeper goes away: the gateway keeps serving its last table.
    zk.kill().unwrap();
    for _ in 0..10 {
        assert_eq!(get(gw, "hello.caas.local").await, (200, "one".into()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back, and a change made now is routed.
    zk.restart().unwrap();
    let mut registered = false;
    for _ in 0..200 {
        match registry
            .register(&app, &v1, &InstanceId::new("c2").unwrap(), b)
            .await
        {
            Ok(()) => {
                registered = true;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(registered, "could not register after the restart");
    wait_for(
        "both instances to be balanced",
        Duration::from_secs(20),
        async || {
            let (x, y) = (
                get(gw, "hello.caas.local").await,
                get(gw, "hello.caas.local").await,
            );
            let mut seen = [x.1, y.1];
            seen.sort();
            seen == ["one".to_owned(), "two".to_owned()]
        },
    )
    .await;

    registry
        .deregister(&app, &v1, &InstanceId::new("c1").unwrap())
        .await
        .unwrap();
    wait_for(
        "the deregistered instance to leave",
        Duration::from_secs(10),
        async || {
            let mut all_two = true;
            for _ in 0..4 {
                all_two &= get(gw, "hello.caas.local").await == (200, "two".into());
            }
            all_two
        },
    )
    .await;
    let table = gateway.router().current();
    assert_eq!(
        table.app(&app).unwrap().versions()[0]
            .pool()
            .endpoints()
            .len(),
        1
    );
}
