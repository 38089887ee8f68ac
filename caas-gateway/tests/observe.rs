//! What an operator observes, through the real gateway on loopback: the access log (one JSON
//! line per request, with the client, the app, the endpoint, the status, the error code and
//! the body bytes; a stuck writer drops and counts lines and never holds a request up; a
//! rotated file is reopened; a full disk is counted) and `/stats/{appId}` on the admin
//! listener.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use caas_gateway::{AccessLogConfig, AccessLogStats, AccessLogTarget, GatewayConfig};
use http_body_util::BodyExt;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn logged_to(path: &Path, queue_lines: usize) -> GatewayConfig {
    GatewayConfig {
        access_log: Some(AccessLogConfig {
            target: AccessLogTarget::File(path.to_owned()),
            queue_lines,
        }),
        // The loopback peer is a trusted proxy: its X-Forwarded-For names the client.
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..Gw::config()
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `n` lines were written, then returns every line of the file by path.
async fn lines(stats: &AccessLogStats, file: &Path, n: u64) -> BTreeMap<String, Value> {
    wait_until(&format!("{n} access log lines"), || {
        stats.lines.load(Relaxed) >= n
    })
    .await;
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let path = v["path"].as_str().unwrap().to_owned();
        assert!(
            out.insert(path, v).is_none(),
            "one line per request:\n{text}"
        );
    }
    assert_eq!(out.len() as u64, n, "{text}");
    out
}

#[tokio::test]
async fn every_request_gets_one_line_with_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let up = Upstream::start("one").await;
    let dead = dead_addr().await;
    let gw = Gw::start_config(
        snapshot(vec![
            ("a", app(&[("v1", &[up.addr])])),
            ("gone", app(&[("v2", &[dead])])),
        ]),
        logged_to(&file, 1024),
    )
    .await;
    let stats = Arc::clone(gw.gateway.access_log_stats().unwrap());
    let c = client();

    let mut req = get(&gw.url("/ok?q=1"), "a.caas.local");
    req.headers_mut()
        .insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    assert_eq!(send(&c, req).await.0, 200);
    let (s, h, _) = send(&c, get(&gw.url("/nope"), "nope.caas.local")).await;
    assert_eq!(
        (s.as_u16(), h["x-caas-error"].to_str().unwrap()),
        (404, "unknown_host")
    );
    let (s, h, _) = send(&c, get(&gw.url("/dead"), "gone.caas.local")).await;
    let code = h["x-caas-error"].to_str().unwrap().to_owned();
    assert_eq!(
        (s.as_u16(), code.as_str()),
        (502, "upstream_connect_failed")
    );
    let upload = http::Request::post(gw.url("/upload"))
        .header("host", "a.caas.local")
        .body(full_body(vec![b'u'; 100_000]))
        .unwrap();
    let (s, _, body) = send(&c, upload).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "100000"));
    let (s, _, body) = send(&c, get(&gw.url("/download/300000"), "a.caas.local")).await;
    assert_eq!((s.as_u16(), body.len()), (200, 300_000));

    let l = lines(&stats, &file, 5).await;
    let ok = &l["/ok"];
    assert_eq!(ok["app"], "a");
    assert_eq!(ok["version"], "v1");
    assert_eq!(ok["endpoint"], up.addr.to_string());
    assert_eq!(
        ok["client"], "203.0.113.9",
        "the client behind the trusted proxy"
    );
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["error"], Value::Null);
    assert_eq!(ok["bytes_in"], 0);
    assert_eq!(ok["bytes_out"], "one GET /ok".len());
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0);
    let time = ok["time"].as_str().unwrap();
    assert_eq!(
        (time.len(), &time[10..11], &time[19..20]),
        (24, "T", "."),
        "{time}"
    );
    assert!(time.ends_with('Z'), "{time}");

    let nope = &l["/nope"];
    assert_eq!(nope["status"], 404);
    assert_eq!(nope["error"], "unknown_host");
    assert_eq!(
        (&nope["app"], &nope["endpoint"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(nope["client"], "127.0.0.1");
    assert!(
        nope["bytes_out"].as_u64().unwrap() > 0,
        "the JSON error body"
    );

    let failed = &l["/dead"];
    assert_eq!(failed["status"], 502);
    assert_eq!(failed["error"], "upstream_connect_failed");
    assert_eq!(failed["app"], "gone");
    assert_eq!(failed["version"], "v2");
    assert_eq!(failed["endpoint"], dead.to_string());

    let up_line = &l["/upload"];
    assert_eq!(up_line["method"], "POST");
    assert_eq!(
        (&up_line["bytes_in"], &up_line["bytes_out"]),
        (&Value::from(100_000), &Value::from(6))
    );
    let down = &l["/download/300000"];
    assert_eq!(
        (&down["status"], &down["bytes_out"]),
        (&Value::from(200), &Value::from(300_000))
    );

    // A client that leaves mid-body: the line is written when it goes, with what it took.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /download/50000000 HTTP/1.1\r\nHost: a.caas.local\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 100_000 {
        got += s.read(&mut buf).await.unwrap();
    }
    drop(s);
    let l = lines(&stats, &file, 6).await;
    let cut = &l["/download/50000000"];
    assert_eq!(cut["status"], 200);
    let sent = cut["bytes_out"].as_u64().unwrap();
    assert!(sent > 0 && sent < 50_000_000, "{sent}");
    assert_eq!(stats.dropped.load(Relaxed), 0);
    assert_eq!(stats.write_errors.load(Relaxed), 0);
    let metrics = caas_gateway::admin::metrics_text(&gw.gateway);
    assert!(
        metrics.contains("caas_gateway_access_log_lines_total 6\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("caas_gateway_access_log_dropped_total 0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stuck_writer_drops_and_counts_lines_and_never_holds_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    // The test holds the pipe open for reading (and writing, so opening does not wait for a
    // writer) and fills it up: the log's writer thread blocks in its first write().
    let mut pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let filler = vec![b'#'; 4096];
    loop {
        match pipe.write(&filler) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    let up = Upstream::start("one").await;
    let queue = 2;
    let gw = Gw::start_config(
        snapshot(vec![("a", app(&[("v1", &[up.addr])]))]),
        logged_to(&fifo, queue),
    )
    .await;
    let stats = Arc::clone(gw.gateway.access_log_stats().unwrap());
    let c = client();
    let requests = 25;
    for _ in 0..requests {
        let answered = tokio::time::timeout(
            Duration::from_secs(5),
            send(&c, get(&gw.url("/x"), "a.caas.local")),
        )
        .await
        .expect("a request waited on the access log");
        assert_eq!(answered.0, 200);
    }
    // The writer holds what it took before its write() blocked, `queue` lines wait, and
    // the rest are dropped and counted; nothing is written meanwhile.
    wait_until("lines dropped", || stats.dropped.load(Relaxed) > 0).await;
    assert_eq!(stats.lines.load(Relaxed), 0);
    let dropped = stats.dropped.load(Relaxed);
    assert!(dropped >= requests / 2, "{dropped} of {requests} dropped");
    let metrics = caas_gateway::admin::metrics_text(&gw.gateway);
    let shown: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("caas_gateway_access_log_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(shown >= dropped, "{shown} < {dropped}");

    // Someone reads the pipe: the writer goes on with what it held, then with new lines.
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
    });
    // Every request is accounted for: written or dropped.
    wait_until("the held lines written", || {
        stats.lines.load(Relaxed) + stats.dropped.load(Relaxed) == requests
    })
    .await;
    let written = stats.lines.load(Relaxed);
    assert!(written > u64::try_from(queue).unwrap(), "{written}");
    assert_eq!(send(&c, get(&gw.url("/x"), "a.caas.local")).await.0, 200);
    wait_until("the next line", || stats.lines.load(Relaxed) == written + 1).await;
    assert_eq!(stats.write_errors.load(Relaxed), 0);
}

/// `O_NONBLOCK` on Linux (x86-64, AArch64): the test fills the pipe without blocking.
const O_NONBLOCK: i32 = 0o4000;

/// A GET to the admin listener; returns status and the JSON body.
async fn admin_get(admin: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let resp = client()
        .request(get(&format!("http://{admin}{path}"), "admin"))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn stats_of_one_app_on_the_admin_listener() {
    let (u1, u2) = (Upstream::start("one").await, Upstream::start("two").await);
    let gw = Gw::start(snapshot(vec![
        ("a", app(&[("v1", &[u1.addr]), ("v2", &[u2.addr])])),
        ("b", app(&[("v1", &[u1.addr])])),
    ]))
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    let g = gw.gateway.clone();
    tokio::spawn(async move { g.serve_admin(listener, std::future::pending()).await });
    let c = client();
    for _ in 0..3 {
        assert_eq!(send(&c, get(&gw.url("/"), "v1.a.caas.local")).await.0, 200);
    }
    assert_eq!(send(&c, get(&gw.url("/"), "v2.a.caas.local")).await.0, 200);
    assert_eq!(send(&c, get(&gw.url("/"), "b.caas.local")).await.0, 200);

    let (status, s) = admin_get(admin, "/stats/a").await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["app"], "a");
    let st = &s["stats"];
    assert_eq!(st["requests"], 4, "{s}");
    assert_eq!(st["responses"]["2xx"], 4);
    assert_eq!(st["responses"]["5xx"], 0);
    assert_eq!(st["in_flight"], 0);
    assert_eq!(st["bytes_out"], 4 * "one GET /".len());
    assert_eq!(st["versions"]["v1"]["requests"], 3);
    assert_eq!(st["versions"]["v2"]["requests"], 1);
    let ep = &st["versions"]["v1"]["endpoints"][u1.addr.to_string()];
    assert_eq!(
        (&ep["requests"], &ep["available"]),
        (&Value::from(3), &Value::from(1))
    );
    let latency = &st["latency_us"]["le"];
    let counted: u64 = latency
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted, 4);

    let (status, e) = admin_get(admin, "/stats/nope").await;
    assert_eq!((status, &e["error"]), (404, &Value::from("unknown_app")));
    let (status, e) = admin_get(admin, "/stats/Not_An_Id").await;
    assert_eq!((status, &e["error"]), (400, &Value::from("invalid_app_id")));
}

#[tokio::test]
async fn a_rotated_file_is_reopened_and_a_full_disk_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let up = Upstream::start("one").await;
    let routes = || snapshot(vec![("a", app(&[("v1", &[up.addr])]))]);
    let gw = Gw::start_config(routes(), logged_to(&file, 1024)).await;
    let stats = Arc::clone(gw.gateway.access_log_stats().unwrap());
    let c = client();
    assert_eq!(
        send(&c, get(&gw.url("/before"), "a.caas.local")).await.0,
        200
    );
    wait_until("the first line", || stats.lines.load(Relaxed) == 1).await;

    // logrotate's way: the file is renamed; the gateway notices (checked once a second
    // while it writes) and opens a new one at the path.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.reopened.load(Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the rotated file was never reopened"
        );
        assert_eq!(
            send(&c, get(&gw.url("/during"), "a.caas.local")).await.0,
            200
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = stats.lines.load(Relaxed);
    assert_eq!(
        send(&c, get(&gw.url("/after"), "a.caas.local")).await.0,
        200
    );
    wait_until("the line after", || stats.lines.load(Relaxed) == before + 1).await;
    let new = std::fs::read_to_string(&file).unwrap();
    assert!(new.contains(r#""path":"/after""#), "{new}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        old.starts_with('{') && old.contains(r#""path":"/before""#),
        "{old}"
    );
    assert!(!old.contains(r#""path":"/after""#), "{old}");
    assert_eq!(stats.write_errors.load(Relaxed), 0);

    // A device that is always full: every write fails, is counted with its lines, and the
    // requests go on.
    let full = Gw::start_config(routes(), logged_to(Path::new("/dev/full"), 1024)).await;
    let stats = Arc::clone(full.gateway.access_log_stats().unwrap());
    for _ in 0..3 {
        assert_eq!(send(&c, get(&full.url("/x"), "a.caas.local")).await.0, 200);
    }
    wait_until("the lost lines counted", || stats.lost.load(Relaxed) == 3).await;
    assert!(stats.write_errors.load(Relaxed) >= 1);
    assert_eq!(stats.lines.load(Relaxed), 0);
    let metrics = caas_gateway::admin::metrics_text(&full.gateway);
    assert!(
        metrics.contains("caas_gateway_access_log_lost_total 3\n"),
        "{metrics}"
    );
}
