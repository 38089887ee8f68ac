//! The gateway against real loopback upstreams: routing, balancing, errors, headers,
//! connection reuse, HTTP/2 and protocol upgrades.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use caas_core::{BalancerKind, Domain, Endpoint};
use http_body_util::BodyExt;
use hyper::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn routes_by_every_host_form() {
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let mut hello = app(&[("v1", &[v1.addr]), ("v2", &[v2.addr])]);
    hello.default_version = Some(ver("v1"));
    hello.domains = vec![Domain::new("www.hello.test").unwrap()];
    let gw = Gw::start(snapshot(vec![("hello", hello)])).await;
    let c = client();
    for (host, want) in [
        ("hello.caas.local", "v1"),
        ("HELLO.Caas.Local:8080", "v1"),
        ("hello.apps.test", "v1"),
        ("v2.hello.caas.local", "v2"),
        ("v1.hello.apps.test", "v1"),
        ("www.hello.test", "v1"),
        ("WWW.hello.test.", "v1"),
    ] {
        let (status, headers, body) = send(&c, get(&gw.url("/p"), host)).await;
        assert_eq!(status, 200, "{host}: {body}");
        assert_eq!(headers["x-upstream"], want, "{host}");
        assert_eq!(body, format!("{want} GET /p"));
    }
}

#[tokio::test]
async fn unknown_host_is_404_and_app_without_endpoints_is_503_with_json() {
    let mut empty = app(&[]);
    empty.default_version = Some(ver("v1"));
    let gw = Gw::start(snapshot(vec![("empty", empty)])).await;
    let c = client();
    let (status, headers, body) = send(&c, get(&gw.url("/"), "nope.caas.local")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "unknown_host");
    assert_eq!(v["status"], 404);

    let (status, _, body) = send(&c, get(&gw.url("/"), "empty.caas.local")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no_healthy_endpoint"), "{body}");
    assert_eq!(gw.gateway.stats().errors("unknown_host"), 1);
}

#[tokio::test]
async fn round_robin_alternates_and_weighted_split_holds_over_10000_requests() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let rr = app(&[("v1", &[ups[0].addr, ups[1].addr])]);
    let mut split = app(&[("v1", &[ups[0].addr, ups[1].addr]), ("v2", &[ups[2].addr])]);
    split.weights = [(ver("v1"), 90), (ver("v2"), 10)].into();
    let gw = Gw::start(snapshot(vec![("rr", rr), ("split", split)])).await;
    let c = client();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let (_, h, _) = send(&c, get(&gw.url("/"), "rr.caas.local")).await;
        seen.push(h["x-upstream"].to_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["a", "b", "a", "b", "a", "b"]);

    let before = ups[2].requests.load(SeqCst);
    let n = 10_000;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (c, url) = (c.clone(), gw.url("/"));
        tasks.push(tokio::spawn(async move {
            for _ in (w..n).step_by(8) {
                let (s, _, _) = send(&c, get(&url, "split.caas.local")).await;
                assert_eq!(s, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v2 = ups[2].requests.load(SeqCst) - before;
    assert!(
        (800..=1200).contains(&v2),
        "v2 got {v2} of {n}, want 10% ± 2%"
    );
}

#[tokio::test]
async fn weighted_and_p2c_balancers_serve_through_the_gateway() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut weighted = app(&[("v1", &[])]);
    weighted.balancer = BalancerKind::Weighted;
    weighted.versions.get_mut(&ver("v1")).unwrap().endpoints = vec![
        Endpoint {
            addr: a.addr,
            weight: 3,
        },
        Endpoint {
            addr: b.addr,
            weight: 1,
        },
    ];
    let mut p2c = app(&[("v1", &[a.addr, b.addr])]);
    p2c.balancer = BalancerKind::P2c;
    let gw = Gw::start(snapshot(vec![("w", weighted), ("p", p2c)])).await;
    let c = client();
    for _ in 0..400 {
        send(&c, get(&gw.url("/"), "w.caas.local")).await;
    }
    assert_eq!(
        (a.requests.load(SeqCst), b.requests.load(SeqCst)),
        (300, 100)
    );
    for _ in 0..100 {
        let (s, _, _) = send(&c, get(&gw.url("/"), "p.caas.local")).await;
        assert_eq!(s, 200);
    }
    assert_eq!(a.requests.load(SeqCst) + b.requests.load(SeqCst), 500);
}

#[tokio::test]
async fn hundred_sequential_requests_use_one_upstream_connection() {
    let up = Upstream::start("a").await;
    let gw = Gw::start(snapshot(vec![("a", app(&[("v1", &[up.addr])]))])).await;
    let c = client();
    for _ in 0..100 {
        let (s, _, _) = send(&c, get(&gw.url("/"), "a.caas.local")).await;
        assert_eq!(s, 200);
    }
    assert_eq!(up.requests.load(SeqCst), 100);
    assert_eq!(
        up.connections.load(SeqCst),
        1,
        "upstream connections opened"
    );
    assert_eq!(gw.gateway.stats().upstream_connects.load(SeqCst), 1);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarded_headers_set() {
    let up = Upstream::start("a").await;
    let gw = Gw::start(snapshot(vec![("a", app(&[("v1", &[up.addr])]))])).await;
    let c = client();
    let req = hyper::Request::get(gw.url("/h"))
        .header("host", "a.caas.local:8080")
        .header("connection", "x-private, keep-alive")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-connection", "keep-alive")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-custom", "kept")
        .body(full_body(""))
        .unwrap();
    let (status, h, _) = send(&c, req).await;
    assert_eq!(status, 200);
    for gone in [
        "connection",
        "x-private",
        "keep-alive",
        "te",
        "proxy-connection",
    ] {
        assert!(
            !h.contains_key(format!("x-echo-{gone}")),
            "{gone} reached the upstream"
        );
    }
    assert_eq!(h["x-echo-host"], "a.caas.local:8080", "client Host kept");
    assert_eq!(h["x-echo-x-custom"], "kept");
    assert_eq!(h["x-echo-x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-echo-x-forwarded-proto"], "http");
    assert_eq!(h["x-echo-x-forwarded-host"], "a.caas.local:8080");
}

#[tokio::test]
async fn refused_connect_is_retried_on_another_endpoint() {
    let up = Upstream::start("alive").await;
    let dead = dead_addr().await;
    let gw = Gw::start(snapshot(vec![("a", app(&[("v1", &[dead, up.addr])]))])).await;
    let c = client();
    for _ in 0..20 {
        let (s, h, body) = send(&c, get(&gw.url("/"), "a.caas.local")).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(h["x-upstream"], "alive");
    }
    // The dead endpoint was tried once, then ejected.
    let table = gw.gateway.router().current();
    let eps = table.app(&id("a")).unwrap().versions()[0]
        .pool()
        .endpoints();
    assert!(!eps[0].is_available());
}

#[tokio::test]
async fn dead_upstream_is_502_slow_one_504_dropped_one_502() {
    let dead = dead_addr().await;
    let up = Upstream::start("slow").await;
    let gw = Gw::start(snapshot(vec![
        ("dead", app(&[("v1", &[dead])])),
        ("slow", app(&[("v1", &[up.addr])])),
    ]))
    .await;
    let c = client();
    let (s, _, body) = send(&c, get(&gw.url("/"), "dead.caas.local")).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(body.contains("upstream_connect_failed"), "{body}");

    let started = std::time::Instant::now();
    let (s, _, body) = send(&c, get(&gw.url("/sleep/5000"), "slow.caas.local")).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("upstream_timeout"), "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "answered at the timeout"
    );

    let (s, _, body) = send(&c, get(&gw.url("/drop"), "slow.caas.local")).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(body.contains("upstream_reset"), "{body}");

    // The gateway still serves the app afterwards.
    let (s, _, _) = send(&c, get(&gw.url("/ok"), "slow.caas.local")).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn blacklist_is_403_and_rate_limit_is_429() {
    let up = Upstream::start("a").await;
    let mut blocked = app(&[("v1", &[up.addr])]);
    blocked.blacklist.ips = vec!["127.0.0.0/8".parse().unwrap()];
    let mut limited = app(&[("v1", &[up.addr])]);
    limited.rate_limit = Some(caas_core::RateLimit {
        rps: Some(1),
        burst: Some(2),
        ..Default::default()
    });
    let gw = Gw::start(snapshot(vec![("blocked", blocked), ("limited", limited)])).await;
    let c = client();
    let (s, _, body) = send(&c, get(&gw.url("/"), "blocked.caas.local")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            send(&c, get(&gw.url("/"), "limited.caas.local"))
                .await
                .0
                .as_u16(),
        );
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let up = Upstream::start("a").await;
    let gw = Gw::start(snapshot(vec![("a", app(&[("v1", &[up.addr])]))])).await;
    let req = hyper::Request::get(format!("http://a.caas.local:{}/two", gw.addr.port()))
        .body(full_body(""))
        .unwrap();
    // Connect to the gateway's address while the URI (`:authority`) names the app.
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"a GET /two");
}

#[tokio::test]
async fn websocket_upgrade_passes_through_both_ways() {
    let up = Upstream::start("ws").await;
    let gw = Gw::start(snapshot(vec![("ws", app(&[("v1", &[up.addr])]))])).await;
    let (mut s, head) = open_tunnel(&gw).await;
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    for msg in [&b"ping"[..], b"second message", &[0u8, 255, 1, 254]] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    assert_eq!(gw.gateway.stats().upgrades.load(SeqCst), 1);
}

/// Opens a WebSocket-style tunnel through `gw` to the echoing upstream: the connection and
/// the `101`'s head.
async fn open_tunnel(gw: &Gw) -> (TcpStream, String) {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ws.caas.local\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (s, head)
}

#[tokio::test]
async fn a_tunnel_silent_for_its_idle_timeout_is_closed_and_a_talking_one_is_not() {
    const IDLE: Duration = Duration::from_millis(400);
    let up = Upstream::start("ws").await;
    let gw = Gw::start_with(
        snapshot(vec![("ws", app(&[("v1", &[up.addr])]))]),
        caas_gateway::Limits {
            tunnel_idle_timeout_ms: IDLE.as_millis() as u64,
            ..limits()
        },
    )
    .await;
    // A message every 100 ms for three idle timeouts: the tunnel stays up throughout.
    let (mut talking, _) = open_tunnel(&gw).await;
    let mut quiet_since = std::time::Instant::now();
    for i in 0..12u8 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        talking.write_all(&[i]).await.unwrap();
        let mut back = [0u8; 1];
        talking.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [i], "message {i}");
        quiet_since = std::time::Instant::now();
    }
    // Then silence: the gateway closes both sides, no sooner than the timeout.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), talking.read_to_end(&mut rest))
        .await
        .expect("the gateway closes a silent tunnel");
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    assert!(
        quiet_since.elapsed() >= IDLE - Duration::from_millis(100),
        "closed {:?} into the silence",
        quiet_since.elapsed()
    );
}

#[tokio::test]
async fn admin_endpoints_report_routes_and_metrics() {
    let up = Upstream::start("a").await;
    let gw = Gw::start(snapshot(vec![("a", app(&[("v1", &[up.addr])]))])).await;
    let c = client();
    send(&c, get(&gw.url("/"), "a.caas.local")).await;
    send(&c, get(&gw.url("/"), "zzz.caas.local")).await;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let g = gw.gateway.clone();
    tokio::spawn(async move { g.serve_admin(admin, std::future::pending()).await });
    let (s, _, metrics) = send(&c, get(&format!("http://{admin_addr}/metrics"), "x")).await;
    assert_eq!(s, 200);
    assert!(
        metrics.contains("caas_app_requests_total{app=\"a\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("caas_gateway_errors_total{cause=\"unknown_host\",blame=\"routing\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("caas_app_responses_total{app=\"a\",class=\"2xx\"} 1"),
        "{metrics}"
    );
    // The one table the gateway was started with: a whole build, and the time it took.
    assert!(
        metrics.contains("\ncaas_route_table_whole_builds_total 1\n"),
        "{metrics}"
    );
    let build_seconds: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("caas_route_table_build_seconds_total "))
        .and_then(|v| v.parse().ok())
        .expect("caas_route_table_build_seconds_total");
    assert!(build_seconds > 0.0 && build_seconds < 1.0, "{metrics}");
    let (s, _, routes) = send(&c, get(&format!("http://{admin_addr}/routes"), "x")).await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(v["apps"][0]["app"], "a");
    assert_eq!(
        v["apps"][0]["versions"]["v1"][0]["addr"],
        up.addr.to_string()
    );
    let (s, _, body) = send(&c, get(&format!("http://{admin_addr}/healthz"), "x")).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn upload_slower_than_the_response_timeout_is_not_cut() {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let up = Upstream::start("a").await;
    let gw = Gw::start_with(
        snapshot(vec![("a", app(&[("v1", &[up.addr])]))]),
        caas_gateway::Limits {
            upstream_response_timeout_ms: 500,
            ..limits()
        },
    )
    .await;
    // Ten chunks, 200 ms apart: 2 s of upload against a 500 ms response timeout.
    let chunks = futures_util::stream::unfold(0u32, |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some((
            Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"0123456789"))),
            i + 1,
        ))
    });
    let req = hyper::Request::post(gw.url("/upload"))
        .header("host", "a.caas.local")
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .unwrap();
    let (s, _, body) = send(&client(), req).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "100"));
}

/// A listener that accepts connections and closes them at once, like Docker's userland
/// proxy in front of a container that just died.
async fn resetting_upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    addr
}

#[tokio::test]
async fn idempotent_request_reset_by_a_dying_upstream_is_resent_elsewhere_once() {
    let good = Upstream::start("good").await;
    let dying = resetting_upstream().await;
    let gw = Gw::start(snapshot(vec![("a", app(&[("v1", &[dying, good.addr])]))])).await;
    let c = client();
    for _ in 0..10 {
        let (s, h, body) = send(&c, get(&gw.url("/"), "a.caas.local")).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(h["x-upstream"], "good");
    }
    // After repeated failures the dying endpoint is out of rotation.
    let table = gw.gateway.router().current();
    assert!(
        !table.app(&id("a")).unwrap().versions()[0]
            .pool()
            .endpoints()[0]
            .is_available()
    );

    // A request with a body is never sent twice.
    let only_dying = Gw::start(snapshot(vec![("b", app(&[("v1", &[dying, good.addr])]))])).await;
    let post = |body: &'static str| {
        hyper::Request::post(only_dying.url("/"))
            .header("host", "b.caas.local")
            .body(full_body(body))
            .unwrap()
    };
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(send(&c, post("payload")).await.0.as_u16());
    }
    assert!(
        statuses.contains(&502),
        "a POST reset by the upstream was resent: {statuses:?}"
    );
    assert_eq!(
        good.requests.load(SeqCst),
        10 + statuses.iter().filter(|s| **s == 200).count()
    );
}

#[tokio::test]
async fn expect_100_continue_is_answered_when_the_body_is_wanted() {
    let up = Upstream::start("a").await;
    let gw = Gw::start(snapshot(vec![("a", app(&[("v1", &[up.addr])]))])).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: a.caas.local\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        // The client sends its body only once told to.
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            "HTTP/1.1 100 Continue\r\n\r\n"
        );
        s.write_all(b"hello").await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n5") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
    // An answer that needs no body (unknown host): no 100, and the connection closes after
    // it, since the body the client still holds would be read as the next request.
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: nobody.caas.local\r\nContent-Length: 5\r\n\
          Expect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 404 "), "{got}");
    assert_eq!(up.requests.load(SeqCst), 2);
}
