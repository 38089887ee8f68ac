//! Limits and timeouts on the client edge, malformed input, and graceful shutdown.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use caas_gateway::Limits;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes; returns what arrived.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .expect("connection was not closed in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

async fn raw(gw: &Gw, request: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_to_close(&mut s, Duration::from_secs(10)).await
}

#[tokio::test]
async fn malformed_requests_get_400_and_missing_host_a_json_400() {
    let up = Upstream::start("a").await;
    let gw = Gw::start(snapshot(vec![("a", app(&[("v1", &[up.addr])]))])).await;
    let resp = raw(&gw, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let resp = raw(
        &gw,
        b"GET / HTTP/1.1\r\nHost: a.caas.local\r\nContent-Length: x\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let resp = raw(&gw, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.0 400") || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );
    assert!(resp.contains("\"error\":\"missing_host\""), "{resp}");
    assert_eq!(
        up.requests.load(SeqCst),
        0,
        "nothing malformed reached the upstream"
    );
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let up = Upstream::start("a").await;
    let gw = Gw::start_with(
        snapshot(vec![("a", app(&[("v1", &[up.addr])]))]),
        Limits {
            max_header_bytes: 4096,
            max_headers: 20,
            ..limits()
        },
    )
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.caas.local\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(5000)
    );
    let resp = raw(&gw, big.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert!(resp.contains("headers_too_large"), "{resp}");
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a.caas.local\r\nConnection: close\r\n");
    for i in 0..25 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let resp = raw(&gw, many.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    // Far beyond the limit, hyper's own backstop answers without reading it all.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a.caas.local\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200_000)
    );
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let _ = s.write_all(huge.as_bytes()).await;
    let resp = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert_eq!(up.requests.load(SeqCst), 0);
}

#[tokio::test]
async fn slowloris_client_is_cut_off_and_holds_nothing() {
    let up = Upstream::start("a").await;
    let gw = Gw::start_with(
        snapshot(vec![("a", app(&[("v1", &[up.addr])]))]),
        Limits {
            header_read_timeout_ms: 500,
            ..limits()
        },
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.caas")
        .await
        .unwrap();
    // Trickle a byte every 100 ms: never completing the head.
    let mut closed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            if n == 0 || buf[..n].starts_with(b"HTTP/1.1 408") {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "slow client still connected after 5 s");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for _ in 0..100 {
        if gw.gateway.stats().connections_active.load(SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.gateway.stats().connections_active.load(SeqCst), 0);
    assert_eq!(
        up.connections.load(SeqCst),
        0,
        "nothing was opened upstream"
    );
}

#[tokio::test]
async fn idle_keepalive_connection_is_closed_but_a_waiting_request_is_not() {
    let up = Upstream::start("a").await;
    let gw = Gw::start_with(
        snapshot(vec![("a", app(&[("v1", &[up.addr])]))]),
        Limits {
            idle_timeout_ms: 400,
            ..limits()
        },
    )
    .await;
    // A request slower than the idle timeout is not cut: it is waiting on the upstream.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /sleep/1000 HTTP/1.1\r\nHost: a.caas.local\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Then, idle on keep-alive, it is closed after about the idle timeout.
    let started = Instant::now();
    let rest = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "{rest}");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(350),
        "closed too early: {idle:?}"
    );
    assert_eq!(gw.gateway.stats().idle_closed.load(SeqCst), 1);
}

/// A gateway for app `a` with a 300 ms head timeout and a 5 s idle timeout (and the
/// upstream, kept alive with it).
async fn short_head_timeout() -> (Upstream, Gw) {
    let up = Upstream::start("a").await;
    let gw = Gw::start_with(
        snapshot(vec![("a", app(&[("v1", &[up.addr])]))]),
        Limits {
            header_read_timeout_ms: 300,
            idle_timeout_ms: 5_000,
            ..limits()
        },
    )
    .await;
    (up, gw)
}

/// What one read brings within 5 s (a small response arrives whole).
async fn read_once(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn the_rest_of_a_body_read_after_its_answer_starts_no_head_timer() {
    // No route: the answer goes out before the 20,000-byte body is read, and the rest of
    // the body is read after it. The connection then waits for its next request as any
    // keep-alive connection does, up to the idle timeout, not the head timeout.
    let (_up, gw) = short_head_timeout().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut post =
        b"POST / HTTP/1.1\r\nHost: nobody.caas.local\r\nContent-Length: 20000\r\n\r\n".to_vec();
    post.resize(post.len() + 20_000, b'x');
    s.write_all(&post).await.unwrap();
    let got = read_once(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 404"), "{got}");
    assert!(!got.contains("connection: close"), "{got}");
    tokio::time::sleep(Duration::from_millis(900)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.caas.local\r\n\r\n")
        .await
        .unwrap();
    let got = read_once(&mut s).await;
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "{got} (head timeouts {})",
        gw.gateway.stats().header_timeouts.load(SeqCst),
    );
    assert_eq!(gw.gateway.stats().header_timeouts.load(SeqCst), 0);
}

#[tokio::test]
async fn keep_alive_wait_is_not_a_slow_head_but_a_silent_new_connection_is() {
    let (_up, gw) = short_head_timeout().await;
    // Between requests a keep-alive connection is idle, not slow: it may wait longer than
    // the head timeout (up to the idle timeout) and carry the next request.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.caas.local\r\n\r\n")
            .await
            .unwrap();
        let got = read_once(&mut s).await;
        assert!(
            got.starts_with("HTTP/1.1 200"),
            "{got} (head timeouts {}, idle closed {})",
            gw.gateway.stats().header_timeouts.load(SeqCst),
            gw.gateway.stats().idle_closed.load(SeqCst),
        );
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    // A connection that never sends a request is cut after about the head timeout.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    let rest = read_to_close(&mut silent, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "{rest}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(gw.gateway.stats().header_timeouts.load(SeqCst), 1);
    assert_eq!(gw.gateway.stats().idle_closed.load(SeqCst), 0);
}

#[tokio::test]
async fn graceful_shutdown_stops_accepting_and_drains_in_flight_requests() {
    let up = Upstream::start("a").await;
    let mut gw = Gw::start(snapshot(vec![("a", app(&[("v1", &[up.addr])]))])).await;
    let c = client();
    let in_flight = {
        let (c, url) = (c.clone(), gw.url("/sleep/800"));
        tokio::spawn(async move { send(&c, get(&url, "a.caas.local")).await })
    };
    // Shut down once the request is in flight at the upstream.
    for _ in 0..500 {
        if up.requests.load(SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(up.requests.load(SeqCst), 1);
    let serving = gw.shutdown();
    let mut refused = false;
    for _ in 0..200 {
        if TcpStream::connect(gw.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "listener still accepting after shutdown");
    assert!(
        !in_flight.is_finished(),
        "the request ended before the drain"
    );
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "in-flight request was cut: {body}");
    assert_eq!(body, "a GET /sleep/800");
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("serve did not return after draining")
        .unwrap();
}
