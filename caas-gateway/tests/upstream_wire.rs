//! The gateway's upstream HTTP/1.1 client against scripted upstreams that answer with exact
//! bytes: every body framing, interim responses, responses that break the protocol, and
//! upstreams that close keep-alive connections under the gateway.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted upstream does with one request.
enum Act {
    /// Write these bytes and wait for the next request on the connection.
    Reply(Vec<u8>),
    /// Write these bytes, then close the connection.
    ReplyClose(Vec<u8>),
    /// Close without answering.
    Close,
    /// Write the first bytes, wait for the gate, then write the rest and wait for the next
    /// request.
    Split(Vec<u8>, Gate, Vec<u8>),
    /// Write the head, then each piece after a pause, and wait for the next request.
    Trickle(Vec<u8>, Vec<Vec<u8>>, Duration),
}

/// What the rest of a `Split` answer waits for.
#[derive(Clone)]
enum Gate {
    After(Duration),
    Opened(Arc<tokio::sync::Notify>),
}

/// An upstream that reads request heads (bodyless requests only) and answers each with what
/// `script(connection number, request number on it, request head)` says.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: impl Fn(usize, usize, &str) -> Act + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let count = connections.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let conn = count.fetch_add(1, SeqCst);
                let script = script.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for req in 0.. {
                        let head = loop {
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                                buf.drain(..end + 4);
                                break head;
                            }
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        match script(conn, req, &head) {
                            Act::Reply(b) => {
                                if s.write_all(&b).await.is_err() {
                                    return;
                                }
                            }
                            Act::ReplyClose(b) => {
                                let _ = s.write_all(&b).await;
                                return;
                            }
                            Act::Close => return,
                            Act::Split(first, gate, rest) => {
                                if s.write_all(&first).await.is_err() {
                                    return;
                                }
                                match gate {
                                    Gate::After(d) => tokio::time::sleep(d).await,
                                    Gate::Opened(n) => n.notified().await,
                                }
                                if s.write_all(&rest).await.is_err() {
                                    return;
                                }
                            }
                            Act::Trickle(head, pieces, every) => {
                                if s.write_all(&head).await.is_err() {
                                    return;
                                }
                                for piece in pieces {
                                    tokio::time::sleep(every).await;
                                    if s.write_all(&piece).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                });
            }
        });
        Self { addr, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(SeqCst)
    }
}

async fn gateway_for(up: &Scripted) -> Gw {
    gateway_with(up, Gw::config()).await
}

/// A gateway for `up` with the test config's limits replaced.
async fn gateway_limited(up: &Scripted, limits: caas_gateway::Limits) -> Gw {
    gateway_with(
        up,
        caas_gateway::GatewayConfig {
            limits,
            ..Gw::config()
        },
    )
    .await
}

async fn gateway_with(up: &Scripted, config: caas_gateway::GatewayConfig) -> Gw {
    Gw::start_config(snapshot(vec![("wire", app(&[("v1", &[up.addr])]))]), config).await
}

/// The counters of the app `wire` and of its one endpoint, and whether that endpoint is in
/// rotation.
fn wire_counters(
    gw: &Gw,
) -> (
    caas_core::CountersSnapshot,
    caas_core::CountersSnapshot,
    bool,
) {
    let table = gw.gateway.router().current();
    let app = table.apps().find(|a| a.id().as_str() == "wire").unwrap();
    let ep = app
        .versions()
        .iter()
        .flat_map(|v| v.pool().endpoints().iter())
        .next()
        .unwrap();
    (
        app.state().stats.snapshot(),
        ep.stats.snapshot(),
        ep.is_available(),
    )
}

fn reply(s: &str) -> Act {
    Act::Reply(s.as_bytes().to_vec())
}

#[tokio::test]
async fn chunked_close_delimited_and_bodyless_responses_arrive_whole() {
    let up = Scripted::start(|_, _, head| {
        let path = head.split(' ').nth(1).unwrap_or("");
        match path {
            "/chunked" => reply(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n",
            ),
            "/until-close" => Act::ReplyClose(b"HTTP/1.1 200 OK\r\n\r\nall of this until the close".to_vec()),
            "/no-content" => reply("HTTP/1.1 204 No Content\r\n\r\n"),
            "/not-modified" => reply("HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n"),
            "/continue" => reply(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated",
            ),
            _ if head.starts_with("HEAD ") => reply("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            _ => reply("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain"),
        }
    })
    .await;
    let gw = gateway_for(&up).await;
    let c = client();
    let host = "wire.caas.local";

    let (s, _, body) = send(&c, get(&gw.url("/chunked"), host)).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "hello world"));
    let (s, _, body) = send(&c, get(&gw.url("/continue"), host)).await;
    assert_eq!((s.as_u16(), body.as_str()), (201, "created"));
    let (s, h, body) = send(&c, get(&gw.url("/no-content"), host)).await;
    assert_eq!((s.as_u16(), body.as_str()), (204, ""));
    assert!(!h.contains_key("content-length") || h["content-length"] == "0");
    let (s, h, body) = send(&c, get(&gw.url("/not-modified"), host)).await;
    assert_eq!((s.as_u16(), body.as_str()), (304, ""));
    assert_eq!(h["etag"], "\"e\"");
    let mut head = get(&gw.url("/x"), host);
    *head.method_mut() = http::Method::HEAD;
    let (s, h, body) = send(&c, head).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, ""));
    assert_eq!(
        h["content-length"], "5",
        "HEAD keeps the length of the GET body"
    );
    // Every response so far had a delimited body: they all went over one connection.
    assert_eq!(up.connections(), 1);

    let (s, _, body) = send(&c, get(&gw.url("/until-close"), host)).await;
    assert_eq!(
        (s.as_u16(), body.as_str()),
        (200, "all of this until the close")
    );
    let (s, _, body) = send(&c, get(&gw.url("/plain"), host)).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "plain"));
    assert_eq!(
        up.connections(),
        2,
        "a close-delimited body ends its connection"
    );
}

#[tokio::test]
async fn trailers_reach_an_http2_client() {
    let up = Scripted::start(|_, _, _| {
        reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nGrpc-Status: 0\r\n\r\n")
    })
    .await;
    let gw = gateway_for(&up).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://wire.caas.local:{}/t", gw.addr.port()))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "ok");
}

#[tokio::test]
async fn broken_responses_are_502_and_a_truncated_body_is_cut() {
    let up = Scripted::start(|_, _, head| {
        let path = head.split(' ').nth(1).unwrap_or("");
        match path {
            "/garbage" => Act::ReplyClose(b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()),
            "/two-lengths" => Act::ReplyClose(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            ),
            "/huge-head" => Act::ReplyClose(
                format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            ),
            "/half-head" => Act::ReplyClose(b"HTTP/1.1 200 OK\r\nContent-Len".to_vec()),
            "/truncated" => {
                Act::ReplyClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec())
            }
            "/bad-chunk" => Act::ReplyClose(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
                    .to_vec(),
            ),
            _ => reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        }
    })
    .await;
    let gw = gateway_for(&up).await;
    let c = client();
    let host = "wire.caas.local";
    for path in ["/garbage", "/two-lengths", "/huge-head", "/half-head"] {
        let (s, h, body) = send(&c, get(&gw.url(path), host)).await;
        assert_eq!(s, 502, "{path}: {body}");
        assert_eq!(h["content-type"], "application/json", "{path}");
        assert!(body.contains("upstream_reset"), "{path}: {body}");
        // A good answer in between: three failures in a row would take the endpoint out.
        let (s, _, _) = send(&c, get(&gw.url("/fine"), host)).await;
        assert_eq!(s, 200);
    }
    for path in ["/truncated", "/bad-chunk"] {
        // The head went out before the body broke: the client sees the response cut (the
        // connection aborts, possibly before the head was flushed), never a short body that
        // looks complete.
        if let Ok(resp) = c.request(get(&gw.url(path), host)).await {
            assert_eq!(resp.status(), 200, "{path}");
            let body = resp.into_body().collect().await;
            assert!(body.is_err(), "{path}: a cut body must not look complete");
        }
        let (s, _, _) = send(&c, get(&gw.url("/fine"), host)).await;
        assert_eq!(s, 200);
    }
    // The gateway is unharmed.
    let (s, _, body) = send(&c, get(&gw.url("/fine"), host)).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "ok"));
}

#[tokio::test]
async fn keep_alive_connections_the_upstream_closes_are_replaced_without_errors() {
    // Connection 0 closes right after its first response (as an upstream whose keep-alive
    // timeout is shorter than the gateway's); connection 1 closes on its second request
    // without answering (the race where the close and the next request cross).
    let up = Scripted::start(|conn, req, _| match (conn, req) {
        (0, 0) => Act::ReplyClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nc0".to_vec()),
        (1, 0) => reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nc1"),
        (1, _) => Act::Close,
        _ => reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    })
    .await;
    let gw = gateway_for(&up).await;
    let c = client();
    let host = "wire.caas.local";
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let (s, _, body) = send(&c, get(&gw.url("/"), host)).await;
        assert_eq!(s, 200, "{body}");
        bodies.push(body);
        // Let the close reach the gateway while the connection sits in its pool.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(bodies, ["c0", "c1", "ok", "ok"]);
    assert_eq!(up.connections(), 3);
    assert_eq!(gw.gateway.stats().errors("upstream_reset"), 0);
}

#[tokio::test]
async fn a_request_the_upstream_may_have_acted_on_goes_again_only_if_idempotent() {
    // Every connection answers its first request and closes on its second without a word,
    // after reading that request's head: the upstream may have acted on it.
    let posts = Arc::new(AtomicUsize::new(0));
    let seen = posts.clone();
    let up = Scripted::start(move |_, req, head| {
        if head.starts_with("POST ") {
            seen.fetch_add(1, SeqCst);
        }
        match req {
            0 => reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            _ => Act::Close,
        }
    })
    .await;
    let gw = gateway_for(&up).await;
    let c = client();
    let host = "wire.caas.local";
    let (s, _, body) = send(&c, get(&gw.url("/"), host)).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "ok"));
    // A GET on the pooled connection meets the close and goes again on a fresh one.
    let (s, _, body) = send(&c, get(&gw.url("/"), host)).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "ok"));
    assert_eq!(up.connections(), 2);
    // A bodyless POST on the pooled connection meets it too: not run a second time.
    let post = hyper::Request::post(gw.url("/charge"))
        .header("host", host)
        .header("content-length", "0")
        .body(full_body(Bytes::new()))
        .unwrap();
    let (s, _, body) = send(&c, post).await;
    assert_eq!(s.as_u16(), 502, "{body}");
    assert_eq!(posts.load(SeqCst), 1, "the POST reached the upstream twice");
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn a_protocol_switch_nobody_asked_for_is_the_upstream_s_failure() {
    let up = Scripted::start(|_, _, _| {
        Act::ReplyClose(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let gw = gateway_for(&up).await;
    let c = client();
    for _ in 0..3 {
        let (s, _, body) = send(&c, get(&gw.url("/"), "wire.caas.local")).await;
        assert_eq!(s.as_u16(), 502, "{body}");
    }
    assert_eq!(gw.gateway.stats().errors("upstream_reset"), 3);
    let table = gw.gateway.router().current();
    let app = table.apps().find(|a| a.id().as_str() == "wire").unwrap();
    let counted = app.state().stats.snapshot();
    assert_eq!(
        (counted.requests, counted.status[0], counted.status[4]),
        (3, 0, 3),
        "one 502 a request, no 101: {counted:?}"
    );
    for v in app.versions() {
        for ep in v.pool().endpoints() {
            assert!(
                !ep.is_available(),
                "three failures in a row eject {}",
                ep.endpoint().addr
            );
        }
    }
}

#[tokio::test]
async fn request_and_response_bodies_stream_both_ways_at_once() {
    // The upstream echoes each request chunk as it arrives; the client sends the next chunk
    // only after the previous one came back. This completes only if the gateway reads the
    // response while it is still sending the request.
    let up = Upstream::start("echo").await;
    let gw = Gw::start(snapshot(vec![("echo", app(&[("v1", &[up.addr])]))])).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, hyper::Error>(Frame::data(chunk)), rx))
    });
    let req = hyper::Request::post(gw.url("/echo"))
        .header("host", "echo.caas.local")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap();
    let c = client();
    tx.send(Bytes::from_static(b"ping 0;")).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), c.request(req))
        .await
        .expect("response head while the request body is still open")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut echoed = Vec::new();
    for i in 1..=20 {
        let want = format!("ping {};", i - 1);
        let mut got = Vec::new();
        while got.len() < want.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("echo of the last chunk before the next is sent")
                .unwrap()
                .unwrap();
            if let Ok(d) = frame.into_data() {
                got.extend_from_slice(&d);
            }
        }
        assert_eq!(String::from_utf8_lossy(&got), want);
        echoed.extend_from_slice(&got);
        if i < 20 {
            tx.send(Bytes::from(format!("ping {i};"))).await.unwrap();
        }
    }
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(rest.is_empty());
    assert_eq!(
        echoed.len(),
        (0..20).map(|i| format!("ping {i};").len()).sum::<usize>()
    );
}

#[tokio::test]
async fn raw_client_sees_a_keep_alive_response_and_can_pipeline_on() {
    // Through a raw socket, to see exactly what the gateway writes back for a chunked
    // upstream body: a well-formed HTTP/1.1 message the connection can continue after.
    let up = Scripted::start(|_, _, _| {
        reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    })
    .await;
    let gw = gateway_for(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: wire.caas.local\r\n\r\n")
            .await
            .unwrap();
        let text = read_chunked(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), "{text}");
    }
}

/// Reads one chunked response from a raw client socket, up to its last chunk.
async fn read_chunked(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    while !got.ends_with(b"0\r\n\r\n") {
        let mut b = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("the response within 5 s")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads one response with a 5-byte body from a raw client socket: the response, and the
/// bytes the first read returned.
async fn read_response(s: &mut TcpStream) -> (String, usize) {
    let mut got = Vec::new();
    let mut first = None;
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if got.len() >= end + 4 + 5 {
                break;
            }
        }
        let mut b = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("the response within 5 s")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
        first.get_or_insert(n);
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        first.unwrap_or(0),
    )
}

#[tokio::test]
async fn a_head_goes_out_with_a_body_close_behind_it_and_alone_ahead_of_a_stalled_one() {
    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    let stalled = Arc::new(tokio::sync::Notify::new());
    let gate = stalled.clone();
    let up = Scripted::start(move |_, _, head| {
        let gate = if head.starts_with("GET /stalled ") {
            Gate::Opened(gate.clone())
        } else {
            Gate::After(Duration::from_millis(10))
        };
        Act::Split(HEAD.to_vec(), gate, b"hello".to_vec())
    })
    .await;
    let gw = gateway_for(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();

    // The body 10 ms behind its head: the head waits in the kernel for it, and the client
    // gets the whole response in one read instead of two. (Were the body later than the
    // kernel holds a head, ~200 ms, on a starved machine, the head would come alone, but
    // not sooner than that.)
    for _ in 0..3 {
        let asked = Instant::now();
        s.write_all(b"GET /late HTTP/1.1\r\nHost: wire.caas.local\r\n\r\n")
            .await
            .unwrap();
        let (text, first) = read_response(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");
        assert!(
            first == text.len() || asked.elapsed() >= Duration::from_millis(150),
            "the head came alone {:?} after the request, ahead of a body 10 ms behind it",
            asked.elapsed()
        );
    }

    // A body that does not come: the head still reaches the client.
    s.write_all(b"GET /stalled HTTP/1.1\r\nHost: wire.caas.local\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
            .await
            .expect("the head while its body is stalled")
            .unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 5\r\n"),
        "{head}"
    );
    stalled.notify_one();
    let mut body = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut body))
        .await
        .expect("the body once the upstream sends it")
        .unwrap();
    assert_eq!(&body, b"hello");
}

#[tokio::test]
async fn bodies_the_upstream_cuts_are_its_failures_counted_logged_and_ejected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let up = Scripted::start(|_, _, head| {
        let path = head.split(' ').nth(1).unwrap_or("");
        match path {
            "/truncated" => {
                Act::ReplyClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec())
            }
            "/bad-chunk" => Act::ReplyClose(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n".to_vec(),
            ),
            _ => reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        }
    })
    .await;
    let gw = gateway_with(
        &up,
        caas_gateway::GatewayConfig {
            access_log: Some(caas_gateway::AccessLogConfig {
                target: caas_gateway::AccessLogTarget::File(file.clone()),
                queue_lines: 64,
            }),
            ..Gw::config()
        },
    )
    .await;
    let c = client();
    let host = "wire.caas.local";
    let cut = |path: &'static str| {
        let c = c.clone();
        let url = gw.url(path);
        async move {
            if let Ok(resp) = c.request(get(&url, host)).await {
                assert_eq!(resp.status(), 200, "{path}");
                assert!(
                    resp.into_body().collect().await.is_err(),
                    "{path}: a cut body must not look complete"
                );
            }
        }
    };
    // A good exchange between two cut ones: failures in a row only eject.
    cut("/truncated").await;
    let (s, _, body) = send(&c, get(&gw.url("/fine"), host)).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "ok"));
    cut("/bad-chunk").await;
    let (app, ep, available) = wire_counters(&gw);
    assert_eq!((app.body_errors, ep.body_errors), (2, 2));
    assert!(
        available,
        "a cut body, a good one, a cut one: still in rotation"
    );
    // Two more in a row make three: the endpoint sits out its eject period, as one that
    // resets before its head would. (Its head alone used to count as a success.)
    cut("/truncated").await;
    cut("/truncated").await;
    let (app, ep, available) = wire_counters(&gw);
    assert_eq!((app.body_errors, ep.body_errors), (4, 4));
    assert_eq!(app.errors, 0, "no answer of the gateway's own: {app:?}");
    assert!(!available, "three cut bodies in a row eject the endpoint");
    let (s, h, _) = send(&c, get(&gw.url("/fine"), host)).await;
    assert_eq!(
        (s.as_u16(), h["x-caas-error"].to_str().unwrap()),
        (503, "no_healthy_endpoint")
    );

    // `/metrics` and the access log say so.
    let metrics = caas_gateway::admin::metrics_text(&gw.gateway);
    assert!(
        metrics.contains("caas_app_upstream_body_errors_total{app=\"wire\"} 4\n"),
        "{metrics}"
    );
    let stats = gw.gateway.access_log_stats().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.lines.load(SeqCst) < 6 {
        assert!(Instant::now() < deadline, "six access log lines");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let errors: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["path"].as_str().unwrap().to_owned(),
                format!("{} {}", v["status"], v["error"]),
            )
        })
        .collect();
    let want = [
        ("/truncated", "200 \"upstream_body_failed\""),
        ("/fine", "200 null"),
        ("/bad-chunk", "200 \"upstream_body_failed\""),
        ("/truncated", "200 \"upstream_body_failed\""),
        ("/truncated", "200 \"upstream_body_failed\""),
        ("/fine", "503 \"no_healthy_endpoint\""),
    ]
    .map(|(p, e)| (p.to_owned(), e.to_owned()));
    assert_eq!(errors, want, "{text}");
}

#[tokio::test]
async fn an_upstream_silent_mid_body_is_cut_after_the_response_timeout_but_a_slow_one_is_not() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let up = Scripted::start(|_, _, head| {
        let path = head.split(' ').nth(1).unwrap_or("");
        match path {
            // Eight pieces 100 ms apart: 800 ms in all, longer than the timeout, but never
            // silent for as long.
            "/slow" => Act::Trickle(
                b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n".to_vec(),
                vec![b"x".to_vec(); 8],
                Duration::from_millis(100),
            ),
            // Chunk data 600 ms apart, but a chunk-size line between them: bytes come every
            // 300 ms, so the upstream is never silent for the timeout.
            "/slow-chunks" => Act::Trickle(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
                [&b"5\r\n"[..], b"world\r\n", b"0\r\n\r\n"]
                    .map(<[u8]>::to_vec)
                    .to_vec(),
                Duration::from_millis(300),
            ),
            // Half the body, then nothing.
            _ => Act::Split(
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcde".to_vec(),
                Gate::After(Duration::from_secs(3600)),
                b"fghij".to_vec(),
            ),
        }
    })
    .await;
    let gw = gateway_limited(
        &up,
        caas_gateway::Limits {
            upstream_response_timeout_ms: TIMEOUT.as_millis() as u64,
            ..limits()
        },
    )
    .await;
    let c = client();
    let host = "wire.caas.local";
    let (s, _, body) = send(&c, get(&gw.url("/slow"), host)).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "xxxxxxxx"));
    let (s, _, body) = send(&c, get(&gw.url("/slow-chunks"), host)).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "helloworld"));

    let resp = c.request(get(&gw.url("/silent"), host)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"abcde");
    let waiting = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the gateway cuts a body the upstream left silent");
    assert!(rest.is_err(), "a cut body must not look complete");
    assert!(
        waiting.elapsed() >= TIMEOUT - Duration::from_millis(100),
        "cut after {:?}, before the timeout",
        waiting.elapsed()
    );
    let (app, ep, _) = wire_counters(&gw);
    assert_eq!((app.body_errors, ep.body_errors), (1, 1), "{app:?}");
    // Per version too: a version sums its endpoints.
    let table = gw.gateway.router().current();
    let stats = caas_gateway::admin::app_stats_json(&table, table.apps().next().unwrap());
    assert_eq!(
        stats["stats"]["versions"]["v1"]["upstream_body_errors"], 1,
        "{stats}"
    );
    assert_eq!(stats["stats"]["upstream_body_errors"], 1, "{stats}");
}

#[tokio::test]
async fn an_http_1_0_upstream_answers_http_1_1_clients_in_http_1_1() {
    // No length: the body ends with the upstream's connection. The client still gets an
    // HTTP/1.1 message (the gateway's own version), chunked, on a connection that goes on.
    let up = Scripted::start(|_, _, _| {
        Act::ReplyClose(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfrom 1.0".to_vec())
    })
    .await;
    let gw = gateway_for(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: wire.caas.local\r\n\r\n")
            .await
            .unwrap();
        let text = read_chunked(&mut s).await.to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n8\r\nfrom 1.0\r\n0\r\n\r\n"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn no_idle_pool_means_a_connection_per_request() {
    let up =
        Scripted::start(|_, _, _| reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
    let gw = gateway_limited(
        &up,
        caas_gateway::Limits {
            upstream_max_idle_per_endpoint: 0,
            ..limits()
        },
    )
    .await;
    let c = client();
    for _ in 0..3 {
        let (s, _, body) = send(&c, get(&gw.url("/"), "wire.caas.local")).await;
        assert_eq!((s.as_u16(), body.as_str()), (200, "ok"));
    }
    assert_eq!(up.connections(), 3);
}

#[tokio::test]
async fn a_response_cut_after_the_client_s_body_broke_is_not_the_upstream_s_failure() {
    // The upstream answers as soon as it has the head and sends half its body, then waits
    // (for the rest of the request body, say). The client's chunked body then breaks.
    let up = Scripted::start(|_, _, _| {
        Act::Split(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcde".to_vec(),
            Gate::After(Duration::from_secs(3600)),
            b"fghij".to_vec(),
        )
    })
    .await;
    let gw = gateway_limited(
        &up,
        caas_gateway::Limits {
            upstream_response_timeout_ms: 300,
            ..limits()
        },
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: wire.caas.local\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"abcde") {
        let mut b = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("the response's first half")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    s.write_all(b"zz\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the gateway ends the response");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let (app, ep, available) = wire_counters(&gw);
    assert_eq!((app.body_errors, ep.body_errors), (0, 0), "{app:?}");
    assert!(available);
}
