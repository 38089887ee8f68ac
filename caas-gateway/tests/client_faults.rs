//! A client's faults are the client's: malformed, truncated, stalled and abandoned requests
//! get a 4xx or a closed connection, are counted as client errors, and never touch an
//! upstream's health. And one request has one authority: routing, retries, filters and the
//! forwarded `Host` all use the same name.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use caas_gateway::{Blame, ErrorCode, Gateway, Limits};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Limits for these tests: ejection long enough that a wrongly counted failure would still
/// show at the end, a short response timeout so stalled bodies end quickly.
fn strict() -> Limits {
    Limits {
        eject_ms: 60_000,
        upstream_response_timeout_ms: 300,
        ..limits()
    }
}

/// Sends raw bytes on a fresh connection, optionally closes the sending half, and returns
/// what came back: one complete response, or what arrived until the gateway closed the
/// connection (or `wait` passed).
async fn raw(addr: SocketAddr, bytes: &[u8], close_write: bool, wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The gateway may answer and close before everything is written: that is an answer.
    let _ = s.write_all(bytes).await;
    if close_write {
        let _ = s.shutdown().await;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(wait, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if complete_response(&got) {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether `bytes` hold a whole response with a `content-length` body.
fn complete_response(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| bytes.len() >= end + 4 + len)
}

/// The status of the first response in `text`, if any.
fn status_of(text: &str) -> Option<u16> {
    text.strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
}

/// Nothing the upstreams did went wrong: no upstream error counted anywhere, every endpoint
/// in rotation.
fn assert_upstreams_untouched(gw: &Gateway) {
    let stats = gw.stats();
    for code in ErrorCode::ALL
        .iter()
        .filter(|c| c.blame() == Blame::Upstream)
    {
        assert_eq!(stats.error_count(*code), 0, "{} counted", code.as_str());
    }
    let table = gw.router().current();
    for app in table.apps() {
        assert_eq!(
            app.state().stats.snapshot().errors,
            0,
            "app {} has upstream errors",
            app.id()
        );
        for v in app.versions() {
            for ep in v.pool().endpoints() {
                assert!(ep.is_available(), "{} ejected", ep.endpoint().addr);
                assert_eq!(ep.stats.snapshot().errors, 0, "{}", ep.endpoint().addr);
            }
        }
    }
}

/// Each app answers 200 at once, from each of its endpoints.
async fn assert_all_apps_answer(gw: &Gw, apps: &[&str]) {
    let c = client();
    for app in apps {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let (s, h, body) = send(&c, get(&gw.url("/"), &format!("{app}.caas.local"))).await;
            assert_eq!(s, 200, "{app}: {body}");
            seen.insert(h["x-upstream"].to_str().unwrap().to_owned());
        }
        assert_eq!(seen.len(), 2, "{app}: both endpoints serve: {seen:?}");
    }
}

#[tokio::test]
async fn a_malformed_chunked_body_is_a_400_and_never_ejects_the_upstream() {
    let (u1, u2) = (Upstream::start("a1").await, Upstream::start("a2").await);
    let gw = Gw::start_with(
        snapshot(vec![("a", app(&[("v1", &[u1.addr, u2.addr])]))]),
        strict(),
    )
    .await;
    // The example, repeated well past the ejection threshold.
    let req = b"POST /upload HTTP/1.1\r\nHost: a.caas.local\r\nTransfer-Encoding: chunked\r\n\r\n\
                5\r\nhelloXX\r\n0\r\n\r\n";
    for _ in 0..10 {
        let got = raw(gw.addr, req, false, Duration::from_secs(5)).await;
        assert_eq!(status_of(&got), Some(400), "{got}");
        assert!(got.contains("x-caas-error: bad_request_body"), "{got}");
    }
    assert_eq!(gw.gateway.stats().errors("bad_request_body"), 10);
    assert_upstreams_untouched(&gw.gateway);
    assert_all_apps_answer(&gw, &["a"]).await;
}

#[tokio::test]
async fn each_kind_of_client_fault_is_the_clients() {
    let (u1, u2) = (Upstream::start("a1").await, Upstream::start("a2").await);
    let gw = Gw::start_with(
        snapshot(vec![("a", app(&[("v1", &[u1.addr, u2.addr])]))]),
        strict(),
    )
    .await;
    let head = "POST /upload HTTP/1.1\r\nHost: a.caas.local\r\n";
    // (what, request bytes, close the sending half, the status it gets or None for a
    // connection closed without one, the cause counted)
    type Case = (
        &'static str,
        String,
        bool,
        Option<u16>,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "bad chunk size",
            format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
            false,
            Some(400),
            Some("bad_request_body"),
        ),
        (
            "chunk size overflow",
            format!("{head}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n"),
            false,
            Some(400),
            Some("bad_request_body"),
        ),
        (
            "truncated length body, then the client leaves",
            format!("{head}Content-Length: 100\r\n\r\nonly ten b"),
            true,
            None,
            Some("client_closed"),
        ),
        (
            "truncated chunked body, then the client leaves",
            format!("{head}Transfer-Encoding: chunked\r\n\r\n5\r\nhel"),
            true,
            None,
            Some("client_closed"),
        ),
        (
            "stalled body",
            format!("{head}Content-Length: 100\r\n\r\nonly ten b"),
            false,
            Some(408),
            Some("client_timeout"),
        ),
        (
            "two Host fields",
            "GET / HTTP/1.1\r\nHost: a.caas.local\r\nHost: a.caas.local\r\n\r\n".into(),
            false,
            Some(400),
            Some("invalid_host"),
        ),
        (
            "an unparsable Host",
            "GET / HTTP/1.1\r\nHost: a.caas.local:99999999\r\n\r\n".into(),
            false,
            Some(400),
            Some("invalid_host"),
        ),
        (
            "two different lengths",
            format!("{head}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            false,
            Some(400),
            None,
        ),
        (
            "a header line without a colon",
            "GET / HTTP/1.1\r\nHost: a.caas.local\r\nnonsense\r\n\r\n".into(),
            false,
            Some(400),
            None,
        ),
    ];
    for (what, bytes, close, want, cause) in cases {
        let before = cause.map(|c| gw.gateway.stats().errors(c));
        let got = raw(gw.addr, bytes.as_bytes(), close, Duration::from_secs(5)).await;
        let status = status_of(&got);
        match want {
            // A 499 may reach a client that closed only its sending half.
            None => assert!(matches!(status, None | Some(499)), "{what}: {got}"),
            Some(s) => assert_eq!(status, Some(s), "{what}: {got}"),
        }
        if let (Some(cause), Some(before)) = (cause, before) {
            // The count lands when the gateway's side of the exchange ends.
            let mut now = gw.gateway.stats().errors(cause);
            for _ in 0..200 {
                if now > before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                now = gw.gateway.stats().errors(cause);
            }
            assert_eq!(now, before + 1, "{what}: {cause} not counted");
        }
    }
    // A client that leaves while its request waits on a slow upstream.
    let before = gw.gateway.stats().errors("client_closed");
    {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /sleep/200 HTTP/1.1\r\nHost: a.caas.local\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..400 {
            if u1.requests.load(SeqCst) + u2.requests.load(SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for _ in 0..400 {
        if gw.gateway.stats().errors("client_closed") > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(gw.gateway.stats().errors("client_closed"), before + 1);
    assert_upstreams_untouched(&gw.gateway);
    assert_all_apps_answer(&gw, &["a"]).await;
}

/// A small deterministic generator (xorshift64*), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A request that is wrong in a random way (and what to do after sending it).
fn malformed(rng: &mut Rng, app: &str) -> (Vec<u8>, bool) {
    let host = format!("{app}.caas.local");
    let path = ["/upload", "/x", "/"][rng.below(3)];
    let valid =
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 11\r\n\r\nhello world");
    let chunked =
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n");
    match rng.below(8) {
        // Broken chunk framing: data longer than its size, a bad size, a bad end.
        0 => {
            let bodies = [
                "5\r\nhelloXX\r\n0\r\n\r\n",
                "g\r\nhello\r\n0\r\n\r\n",
                "5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
                "5;\0ext\r\nhello\r\n0\r\n\r\n",
                "-1\r\n",
            ];
            let b = bodies[rng.below(bodies.len())];
            ((chunked + b).into_bytes(), false)
        }
        // A body cut short, the client leaving.
        1 => {
            let cut = 40 + rng.below(valid.len() - 45);
            (valid.as_bytes()[..cut].to_vec(), true)
        }
        // A chunked body cut short, the client leaving.
        2 => ((chunked + "b\r\nhello").into_bytes(), true),
        // A body that stalls (the client stays, sends nothing more).
        3 => (valid.as_bytes()[..valid.len() - 3].to_vec(), false),
        // Random bytes overwritten, inserted or deleted anywhere in a valid request.
        _ => {
            let mut b = valid.into_bytes();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(b.len());
                let byte = b"\r\n: \0\t9x\xff"[rng.below(9)];
                match rng.below(3) {
                    0 => b[at] = byte,
                    1 => b.insert(at, byte),
                    _ => {
                        b.remove(at);
                    }
                }
            }
            let close = rng.below(2) == 0;
            (b, close)
        }
    }
}

#[tokio::test]
async fn randomly_malformed_requests_never_take_an_app_down() {
    let apps = ["a", "b", "c"];
    let mut ups = Vec::new();
    let mut specs = Vec::new();
    for name in apps {
        let (u1, u2) = (
            Upstream::start(&format!("{name}1")).await,
            Upstream::start(&format!("{name}2")).await,
        );
        specs.push((name, app(&[("v1", &[u1.addr, u2.addr])])));
        ups.push((u1, u2));
    }
    let gw = Gw::start_with(snapshot(specs), strict()).await;
    let seed = std::env::var("CAAS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_f00d_u64);
    let mut rng = Rng(seed);
    let mut sent = 0;
    for _batch in 0..12 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..25 {
            let app = apps[rng.below(apps.len())];
            let (bytes, close) = malformed(&mut rng, app);
            let addr = gw.addr;
            batch.spawn(async move {
                let got = raw(addr, &bytes, close, Duration::from_secs(3)).await;
                (bytes, got)
            });
            sent += 1;
        }
        while let Some(done) = batch.join_next().await {
            let (bytes, got) = done.unwrap();
            // No fault of the client's is ever answered as the gateway's or an upstream's.
            if let Some(status) = status_of(&got) {
                assert!(
                    status < 500,
                    "seed {seed:#x}: {:?} was answered {got}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }
    assert_eq!(sent, 300);
    let stats = gw.gateway.stats();
    let client_errors: u64 = ErrorCode::ALL
        .iter()
        .filter(|c| c.blame() == Blame::Client)
        .map(|c| stats.error_count(*c))
        .sum();
    // Heads hyper cannot parse are refused before they reach the proxy (not counted here);
    // the broken, cut and stalled bodies, about a third of the requests, are.
    assert!(
        client_errors > 60,
        "seed {seed:#x}: only {client_errors} client errors"
    );
    assert_upstreams_untouched(&gw.gateway);
    assert_all_apps_answer(&gw, &apps).await;
}

#[tokio::test]
async fn an_absolute_form_request_is_routed_filtered_and_forwarded_by_its_own_authority() {
    // `a` is down; `b` answers but refuses this client (127.0.0.1).
    let b_up = Upstream::start("b").await;
    let mut b = app(&[("v1", &[b_up.addr])]);
    b.blacklist.ips = vec!["127.0.0.0/8".parse().unwrap()];
    let gw = Gw::start_with(
        snapshot(vec![
            ("a", app(&[("v1", &[dead_addr().await, dead_addr().await])])),
            ("b", b),
        ]),
        strict(),
    )
    .await;
    // Routed by the target's authority (RFC 9112 §3.2.2), retried within `a` only: the
    // answer is `a`'s failure, never `b`'s response.
    let got = raw(
        gw.addr,
        b"GET http://a.caas.local/ HTTP/1.1\r\nHost: b.caas.local\r\n\r\n",
        false,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&got), Some(502), "{got}");
    assert!(
        got.contains("x-caas-error: upstream_connect_failed"),
        "{got}"
    );
    assert_eq!(b_up.requests.load(SeqCst), 0, "b was reached");
    // And the other way round: the target names `b`, whose filter refuses this client,
    // whatever the Host field says.
    let got = raw(
        gw.addr,
        b"GET http://b.caas.local/ HTTP/1.1\r\nHost: a.caas.local\r\n\r\n",
        false,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&got), Some(403), "{got}");
    assert_eq!(b_up.requests.load(SeqCst), 0);
}

#[tokio::test]
async fn a_retry_keeps_the_authority_and_the_upstream_sees_it_as_host() {
    // `a`'s first endpoint refuses connections, its second answers; `b` would answer too.
    let (a_up, b_up) = (Upstream::start("a").await, Upstream::start("b").await);
    let dead = dead_addr().await;
    let gw = Gw::start_with(
        snapshot(vec![
            ("a", app(&[("v1", &[dead, a_up.addr])])),
            ("b", app(&[("v1", &[b_up.addr])])),
        ]),
        strict(),
    )
    .await;
    for _ in 0..4 {
        let got = raw(
            gw.addr,
            b"GET http://user@a.caas.local:8080/p HTTP/1.1\r\nHost: b.caas.local\r\n\
              Connection: close\r\n\r\n",
            false,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status_of(&got), Some(200), "{got}");
        assert!(got.contains("x-upstream: a\r\n"), "{got}");
        // The upstream saw one name: the authority, without user info, as Host and as
        // X-Forwarded-Host.
        assert!(got.contains("x-echo-host: a.caas.local:8080\r\n"), "{got}");
        assert!(
            got.contains("x-echo-x-forwarded-host: a.caas.local:8080\r\n"),
            "{got}"
        );
        assert!(!got.contains("b.caas.local"), "{got}");
    }
    assert_eq!(b_up.requests.load(SeqCst), 0);
}

#[tokio::test]
async fn an_answer_before_the_body_says_it_closes_and_reaches_a_client_still_uploading() {
    // No route: the gateway answers without reading the 4 MiB body, so the connection
    // cannot carry another request. The response says so, and closing does not reset the
    // connection under a client that is still sending (it would destroy the response).
    let gw = Gw::start_with(snapshot(vec![]), strict()).await;
    let len = 4 << 20;
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: nobody.caas.local\r\nContent-Length: {len}\r\n\r\n"
        );
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        let mut write = w.write_all(head.as_bytes()).await;
        while write.is_ok() && sent < len {
            write = w.write_all(&chunk).await;
            sent += chunk.len();
        }
        w
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(matches!(read, Ok(Ok(_))), "{read:?} after {got:?}");
    assert!(got.starts_with("HTTP/1.1 404 "), "{got}");
    assert!(got.contains("\r\nconnection: close\r\n"), "{got}");
    let body = got.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert!(
        body.contains("\"unknown_host\"") && body.ends_with('}'),
        "{got}"
    );
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn a_content_length_named_by_connection_still_frames_the_body_upstream() {
    // Connection names fields that end at this hop; Content-Length is not one the gateway
    // may drop while it forwards the body by that length: the upstream would take the
    // body for a second request, one the gateway never routed or filtered.
    let up = Upstream::start("a").await;
    let gw = Gw::start_with(snapshot(vec![("a", app(&[("v1", &[up.addr])]))]), strict()).await;
    let body = "GET /smuggled HTTP/1.1\r\nHost: a.caas.local\r\n\r\n";
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: a.caas.local\r\nConnection: content-length, close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let got = raw(gw.addr, request.as_bytes(), false, Duration::from_secs(5)).await;
    assert_eq!(status_of(&got), Some(200), "{got}");
    assert!(
        got.ends_with(&format!("\r\n\r\n{}", body.len())),
        "the upstream read: {got}"
    );
    assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{got}");
    assert_eq!(
        up.requests.load(SeqCst),
        1,
        "the body reached the upstream as a request"
    );
}

#[tokio::test]
async fn smuggling_attempts_are_refused_and_end_the_connection() {
    let up = Upstream::start("a").await;
    let gw = Gw::start_with(snapshot(vec![("a", app(&[("v1", &[up.addr])]))]), strict()).await;
    let next = "GET /smuggled HTTP/1.1\r\nHost: a.caas.local\r\n\r\n";
    let post = "POST /upload HTTP/1.1\r\nHost: a.caas.local\r\n";
    // (what, bytes before the next request, refused before anything goes upstream)
    let cases = [
        (
            "Content-Length and Transfer-Encoding",
            format!("{post}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            true,
        ),
        (
            "Transfer-Encoding and Content-Length",
            format!("{post}Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n"),
            true,
        ),
        (
            "two lengths",
            format!("{post}Content-Length: 0\r\nContent-Length: 5\r\n\r\nhello"),
            true,
        ),
        (
            "a coding after chunked",
            format!("{post}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
            true,
        ),
        (
            "an obs-folded field",
            format!("{post}Content-Length: 0\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n"),
            true,
        ),
        (
            "a space before the colon",
            format!("{post}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
            true,
        ),
        (
            "a chunk-size line ended by a bare LF",
            format!("{post}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
            false,
        ),
        (
            "text after a chunk size",
            format!("{post}Transfer-Encoding: chunked\r\n\r\n5 xyz\r\nhello\r\n0\r\n\r\n"),
            false,
        ),
        (
            "a trailer section ended by bare LFs",
            format!("{post}Transfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\n"),
            false,
        ),
        (
            "chunk data longer than its size",
            format!("{post}Transfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n"),
            false,
        ),
    ];
    for (what, bytes, before_upstream) in cases {
        let before = up.requests.load(SeqCst);
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let _ = s.write_all(format!("{bytes}{next}").as_bytes()).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        let got = String::from_utf8_lossy(&got);
        assert!(read.is_ok(), "{what}: the connection stayed open: {got}");
        assert_eq!(status_of(&got), Some(400), "{what}: {got}");
        assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{what}: {got}");
        if before_upstream {
            assert_eq!(
                up.requests.load(SeqCst),
                before,
                "{what} reached the upstream"
            );
        }
    }
    assert_upstreams_untouched(&gw.gateway);
}

#[tokio::test]
async fn what_the_gateway_does_not_do_is_a_501_that_reaches_no_upstream() {
    let up = Upstream::start("a").await;
    let routes = snapshot(vec![("a", app(&[("v1", &[up.addr])]))]);
    let own = Gw::start_with(routes.clone(), strict()).await;
    let hyper = Gw::start_hyper_http1(routes).await;
    // A CONNECT (to the app's own host, or anywhere) opens no tunnel: the connection goes on.
    for gw in [&own, &hyper] {
        for target in ["a.caas.local:443", "example.com:443"] {
            let request = format!(
                "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n\
                 GET /after HTTP/1.1\r\nHost: a.caas.local\r\n\r\n"
            );
            let mut s = TcpStream::connect(gw.addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(b"a GET /after") {
                let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                    .await
                    .unwrap_or_else(|_| {
                        panic!("both answers within 5 s: {}", String::from_utf8_lossy(&got))
                    })
                    .unwrap();
                assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            let got = String::from_utf8_lossy(&got);
            assert_eq!(status_of(&got), Some(501), "{target}: {got}");
            assert!(got.contains("x-caas-error: not_implemented\r\n"), "{got}");
        }
    }
    // A transfer coding the gateway would not decode: refused, the connection closed.
    let post = "POST /upload HTTP/1.1\r\nHost: a.caas.local\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    let got = raw(own.addr, post.as_bytes(), false, Duration::from_secs(5)).await;
    assert_eq!(status_of(&got), Some(501), "{got}");
    assert!(got.contains("not_implemented"), "{got}");
    assert_eq!(
        up.requests.load(SeqCst),
        4,
        "only the GET after each CONNECT reaches the upstream"
    );
    for (gw, refused) in [(&own, 3), (&hyper, 2)] {
        assert_eq!(gw.gateway.stats().errors("not_implemented"), refused);
        assert_upstreams_untouched(&gw.gateway);
    }
}
