//! The health checker against real loopback servers: a `/_ping` that flips between 200 and
//! 503, a port nobody listens on, and a server that accepts but never answers.

#![allow(clippy::unwrap_used)] // test code: a failed setup step should panic

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use caas_backends::assignment::HealthPolicy;
use caas_backends::health::{HealthChecker, HealthEvent, HealthState, HttpProbe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A tiny HTTP server: `GET /_ping` answers 200 while `ok` is set, else 503.
async fn ping_server(ok: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let ok = ok.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let resp: &[u8] = if !req.starts_with("GET /_ping ") {
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
                } else if ok.load(Ordering::SeqCst) {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\npong"
                } else {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                };
                let _ = s.write_all(resp).await;
            });
        }
    });
    addr
}

fn policy(fall: u32, grace_ms: u64) -> HealthPolicy {
    HealthPolicy {
        interval_ms: 100,
        timeout_ms: 100,
        fall,
        rise: 1,
        grace_ms,
        ..HealthPolicy::default()
    }
}

async fn next(rx: &mut mpsc::Receiver<HealthEvent<&'static str>>) -> HealthEvent<&'static str> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no health event within 5 s")
        .expect("checker stopped")
}

#[tokio::test]
async fn flipping_ping_is_seen_both_ways() {
    let ok = Arc::new(AtomicBool::new(true));
    let addr = ping_server(ok.clone()).await;
    assert_eq!(HttpProbe::new(addr, "/_ping").status().await.unwrap(), 200);

    let (tx, mut rx) = mpsc::channel(8);
    let _h = HealthChecker::http(addr, &policy(2, 0)).spawn("hello-1", tx);
    let e = next(&mut rx).await;
    assert_eq!((e.key, e.state), ("hello-1", HealthState::Healthy));

    let t = Instant::now();
    ok.store(false, Ordering::SeqCst);
    let e = next(&mut rx).await;
    assert_eq!(e.state, HealthState::Unhealthy);
    assert!(
        e.last_error.as_deref().unwrap().contains("HTTP 503"),
        "{e:?}"
    );
    // fall = 2 at 100 ms: between one and three intervals.
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    ok.store(true, Ordering::SeqCst);
    let e = next(&mut rx).await;
    assert_eq!(
        (e.previous, e.state),
        (HealthState::Unhealthy, HealthState::Healthy)
    );
}

#[tokio::test]
async fn nothing_listening_is_unhealthy_after_grace() {
    // Bind and drop: a loopback port with nobody on it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (tx, mut rx) = mpsc::channel(8);
    let t = Instant::now();
    let _h = HealthChecker::http(addr, &policy(2, 300)).spawn("dead", tx);
    let e = next(&mut rx).await;
    assert_eq!(
        (e.previous, e.state),
        (HealthState::Starting, HealthState::Unhealthy)
    );
    assert!(e.last_error.unwrap().contains("connect"));
    assert!(t.elapsed() >= Duration::from_millis(300), "grace respected");
}

#[tokio::test]
async fn silent_server_times_out() {
    // Accepts (kernel backlog) but never answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, mut rx) = mpsc::channel(8);
    let h = HealthChecker::http(addr, &policy(1, 0)).spawn("silent", tx);
    let e = next(&mut rx).await;
    assert_eq!(e.state, HealthState::Unhealthy);
    assert!(e.last_error.unwrap().contains("no answer within"));
    assert!(h.stats().failures() >= 1);
    drop(l);
}
