//! The gateway's own HTTP/1.1 connection against hyper's server, on the same random
//! requests: every generated connection (methods, targets, header fields, bodies with
//! `Content-Length` or chunked with extensions and trailers, `Expect: 100-continue`,
//! HTTP/1.0, pipelining, `Connection: close`), its bytes cut at random points into separate
//! writes, goes to a gateway of each kind. What each upstream receives (method, target,
//! header fields in order, body, trailers) and what each client gets back (status line,
//! header fields in order but `Date`, body, whether the connection closed) must be the same.
//! A failure names its seed; `CAAS_FUZZ_SEED` replays one.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A small deterministic generator (xorshift64*), so a failure names its seed.
#[derive(Clone)]
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
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Buffered reads from a socket, for both the upstream and the client.
struct Reader {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    /// Reads more; false at the end of the stream (or a reset).
    async fn more(&mut self) -> bool {
        let mut b = [0u8; 8192];
        match self.s.read(&mut b).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
        }
    }

    /// Up to and including `\r\n\r\n`; None when the stream ends first.
    async fn head(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(self.buf.drain(..end + 4).collect());
            }
            if !self.more().await {
                return None;
            }
        }
    }

    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.drain(..end + 2).collect::<Vec<u8>>();
                return Some(line[..end].to_vec());
            }
            if !self.more().await {
                return None;
            }
        }
    }

    async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.more().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    async fn read_to_close(&mut self) -> Vec<u8> {
        while self.more().await {}
        std::mem::take(&mut self.buf)
    }

    /// A chunked body: data and trailer lines.
    async fn chunked(&mut self) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let digits: Vec<u8> = line
                .iter()
                .copied()
                .take_while(u8::is_ascii_hexdigit)
                .collect();
            let size = usize::from_str_radix(std::str::from_utf8(&digits).ok()?, 16).ok()?;
            if size == 0 {
                let mut trailers = Vec::new();
                loop {
                    let t = self.line().await?;
                    if t.is_empty() {
                        return Some((body, trailers));
                    }
                    trailers.push(t);
                }
            }
            body.extend(self.exact(size).await?);
            if self.exact(2).await? != b"\r\n" {
                return None;
            }
        }
    }
}

/// Header fields of a head, in order, names lower-cased.
fn fields(head: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or((l, ""));
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// What an upstream received for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    request_line: String,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<Vec<u8>>,
}

type Recorded = Arc<Mutex<BTreeMap<String, Seen>>>;

/// A raw upstream that records every request by its `x-req` field and answers as its
/// `x-resp` field says: `len:N`, `chunked:N` (with a trailer), `close:N` (no length, closes
/// after the body), `204`, `304`.
async fn recorder() -> (SocketAddr, Recorded) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Recorded = Arc::default();
    let rec = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let rec = Arc::clone(&rec);
            tokio::spawn(async move {
                let mut r = Reader { s, buf: Vec::new() };
                while let Some(head) = r.head().await {
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let request_line = text.split("\r\n").next().unwrap_or("").to_owned();
                    let fields = fields(&head);
                    let chunked = field(&fields, "transfer-encoding")
                        .is_some_and(|v| v.to_ascii_lowercase().ends_with("chunked"));
                    let (body, trailers) = if chunked {
                        match r.chunked().await {
                            Some(b) => b,
                            None => return,
                        }
                    } else {
                        let n = field(&fields, "content-length").map_or(0, |v| v.parse().unwrap());
                        match r.exact(n).await {
                            Some(b) => (b, Vec::new()),
                            None => return,
                        }
                    };
                    let id = field(&fields, "x-req").unwrap_or("?").to_owned();
                    let resp = field(&fields, "x-resp").unwrap_or("len:2").to_owned();
                    let head_only = request_line.starts_with("HEAD ");
                    rec.lock().unwrap().insert(
                        id.clone(),
                        Seen {
                            request_line,
                            fields,
                            body,
                            trailers,
                        },
                    );
                    let (kind, n) = resp.split_once(':').unwrap_or((&resp, "0"));
                    let n: usize = n.parse().unwrap_or(0);
                    let payload: Vec<u8> = (0..n).map(|i| b'a' + (i % 23) as u8).collect();
                    let common = format!(
                        "x-id: {id}\r\nSet-Cookie: a=1\r\nx-up: yes\r\nSet-Cookie: b=2\r\n"
                    );
                    let mut out = Vec::new();
                    let mut close = false;
                    match kind {
                        "204" => {
                            out.extend(format!("HTTP/1.1 204 No Content\r\n{common}\r\n").bytes())
                        }
                        "304" => {
                            out.extend(format!("HTTP/1.1 304 Not Modified\r\n{common}\r\n").bytes())
                        }
                        "chunked" => {
                            out.extend(
                                format!(
                                    "HTTP/1.1 200 OK\r\n{common}Transfer-Encoding: chunked\r\n\r\n"
                                )
                                .bytes(),
                            );
                            if !head_only {
                                for piece in payload.chunks(777) {
                                    out.extend(format!("{:x}\r\n", piece.len()).bytes());
                                    out.extend(piece);
                                    out.extend(b"\r\n");
                                }
                                out.extend(b"0\r\nx-sum: 1\r\n\r\n");
                            }
                        }
                        "close" => {
                            out.extend(format!("HTTP/1.1 201 Created\r\n{common}\r\n").bytes());
                            if !head_only {
                                out.extend(&payload);
                                close = true;
                            }
                        }
                        _ => {
                            out.extend(
                                format!("HTTP/1.1 200 OK\r\n{common}Content-Length: {n}\r\n\r\n")
                                    .bytes(),
                            );
                            if !head_only {
                                out.extend(&payload);
                            }
                        }
                    }
                    if r.s.write_all(&out).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// One generated request: its bytes and what the client expects of its response.
#[derive(Debug, Clone)]
struct Req {
    id: String,
    bytes: Vec<u8>,
    method: &'static str,
    target: String,
    body: Vec<u8>,
}

const TOKEN: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~";

fn word(rng: &mut Rng, max: usize) -> String {
    (0..1 + rng.below(max))
        .map(|_| *rng.pick(TOKEN) as char)
        .collect()
}

fn target(rng: &mut Rng) -> String {
    let mut t = String::new();
    for _ in 0..1 + rng.below(4) {
        t.push('/');
        t.push_str(&word(rng, 12));
        if rng.chance(10) {
            let extra: &&str = rng.pick(&["%20", "%2F", "!", "$", "'()", "*+,;=", ":@"]);
            t.push_str(extra);
        }
    }
    if rng.chance(40) {
        t.push('?');
        for i in 0..1 + rng.below(3) {
            if i > 0 {
                t.push('&');
            }
            t.push_str(&format!("{}={}", word(rng, 6), word(rng, 10)));
        }
    }
    t
}

fn value(rng: &mut Rng) -> String {
    const CHARS: &[u8] = b"abcXYZ019 !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
    let n = rng.below(40);
    let v: String = (0..n).map(|_| *rng.pick(CHARS) as char).collect();
    v.trim().to_owned()
}

/// A request; `last` on a connection's last request (the only place for HTTP/1.0 and
/// `Connection: close`, so pipelined requests after it are never lost).
fn request(rng: &mut Rng, id: String, last: bool) -> Req {
    let method = *rng.pick(&[
        "GET", "GET", "GET", "HEAD", "DELETE", "OPTIONS", "POST", "POST", "PUT", "PATCH",
    ]);
    let has_body = matches!(method, "POST" | "PUT" | "PATCH");
    let http10 = last && rng.chance(15);
    let target = target(rng);
    let mut head = format!(
        "{method} {target} HTTP/1.{}\r\n",
        if http10 { 0 } else { 1 }
    );
    let host = rng.pick(&["Host", "host", "HOST"]);
    let mut lines = vec![format!("{host}: diff.caas.local"), format!("x-req: {id}")];
    let resp = match rng.below(10) {
        0 => "204".to_owned(),
        1 => "304".to_owned(),
        2 => format!("chunked:{}", rng.below(3000)),
        3 if !http10 => format!("close:{}", rng.below(3000)),
        _ => format!("len:{}", rng.below(3000)),
    };
    lines.push(format!("X-Resp: {resp}"));
    for _ in 0..rng.below(8) {
        let name = rng.pick(&[
            "X-A",
            "x-b",
            "X-Long-Field-Name",
            "Accept",
            "User-Agent",
            "Cookie",
            "x-dup",
            "X-Dup",
        ]);
        let pad = rng.pick(&["", " ", "  ", "\t"]);
        lines.push(format!("{name}:{pad}{}{pad}", value(rng)));
    }
    if rng.chance(15) {
        lines.push("Connection: keep-alive, X-Hop".into());
        lines.push("X-Hop: dropped".into());
    }
    if rng.chance(10) {
        lines.push("Keep-Alive: timeout=5".into());
    }
    if rng.chance(10) {
        lines.push("TE: trailers".into());
    }
    if http10 && rng.chance(50) {
        lines.push("Connection: keep-alive".into());
    }
    if last && !http10 && rng.chance(30) {
        lines.push("Connection: close".into());
    }
    let body_len = if has_body { rng.below(4000) } else { 0 };
    let body: Vec<u8> = (0..body_len).map(|_| (rng.next() & 0xff) as u8).collect();
    let chunked = has_body && !http10 && rng.chance(45);
    if has_body && rng.chance(20) && !http10 {
        lines.push("Expect: 100-continue".into());
    }
    if chunked {
        lines.push("Transfer-Encoding: chunked".into());
    } else if has_body {
        lines.push(format!("Content-Length: {body_len}"));
    }
    // Shuffle the field order (the Host field too).
    for i in (1..lines.len()).rev() {
        lines.swap(i, rng.below(i + 1));
    }
    for l in &lines {
        head.push_str(l);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if chunked {
        let mut rest = &body[..];
        while !rest.is_empty() {
            let n = (1 + rng.below(1500)).min(rest.len());
            let ext = if rng.chance(15) { ";ext=1" } else { "" };
            bytes.extend(format!("{n:x}{ext}\r\n").bytes());
            bytes.extend(&rest[..n]);
            bytes.extend(b"\r\n");
            rest = &rest[n..];
        }
        bytes.extend(b"0\r\n");
        if rng.chance(30) {
            bytes.extend(b"X-Trailer: t1\r\n");
        }
        bytes.extend(b"\r\n");
    } else {
        bytes.extend(&body);
    }
    Req {
        id,
        bytes,
        method,
        target,
        body,
    }
}

/// What a client got back for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    status_line: String,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A connection's requests and how they are sent.
#[derive(Debug, Clone)]
struct Plan {
    reqs: Vec<Req>,
    pipelined: bool,
    split_seed: u64,
}

/// Sends a plan's requests, each cut into random writes; returns the responses (final
/// ones: interim `100 Continue`s are skipped) and whether the gateway closed afterwards.
async fn run(addr: SocketAddr, plan: Plan) -> (Vec<Option<Got>>, bool) {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut r = Reader { s, buf: Vec::new() };
    let mut rng = Rng(plan.split_seed);
    let mut got = Vec::new();
    if plan.pipelined {
        let all: Vec<u8> = plan.reqs.iter().flat_map(|q| q.bytes.clone()).collect();
        send_split(&mut r.s, &all, &mut rng).await;
        for q in &plan.reqs {
            got.push(response(&mut r, q).await);
        }
    } else {
        for q in &plan.reqs {
            send_split(&mut r.s, &q.bytes, &mut rng).await;
            got.push(response(&mut r, q).await);
        }
    }
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(1), r.more()).await,
        Ok(false)
    );
    (got, closed)
}

async fn send_split(s: &mut TcpStream, bytes: &[u8], rng: &mut Rng) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let max = if rng.chance(30) { 8 } else { 700 };
        let n = (1 + rng.below(max)).min(rest.len());
        if s.write_all(&rest[..n]).await.is_err() {
            return;
        }
        rest = &rest[n..];
        if rng.chance(20) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

async fn response(r: &mut Reader, q: &Req) -> Option<Got> {
    loop {
        let head = r.head().await?;
        let text = String::from_utf8_lossy(&head).into_owned();
        let status_line = text.split("\r\n").next().unwrap_or("").to_owned();
        let status: u16 = status_line.get(9..12)?.parse().ok()?;
        if status == 100 {
            continue;
        }
        let mut fields = fields(&head);
        let body = if q.method == "HEAD" || status == 204 || status == 304 {
            Vec::new()
        } else if field(&fields, "transfer-encoding").is_some() {
            r.chunked().await?.0
        } else if let Some(n) = field(&fields, "content-length") {
            r.exact(n.parse().ok()?).await?
        } else {
            r.read_to_close().await
        };
        fields.retain(|(n, _)| n != "date");
        return Some(Got {
            status_line,
            fields,
            body,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_http1_connection_answers_as_hypers_did() {
    let seed = std::env::var("CAAS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xd1ff_5eed_u64);
    let (old_up, old_seen) = recorder().await;
    let (new_up, new_seen) = recorder().await;
    let old = Gw::start_hyper_http1(snapshot(vec![("diff", app(&[("v1", &[old_up])]))])).await;
    let new = Gw::start(snapshot(vec![("diff", app(&[("v1", &[new_up])]))])).await;
    let mut rng = Rng(seed);
    let mut plans = Vec::new();
    let mut next_id = 0;
    for _ in 0..160 {
        let n = 1 + rng.below(4);
        let reqs = (0..n)
            .map(|i| {
                next_id += 1;
                request(&mut rng, next_id.to_string(), i + 1 == n)
            })
            .collect();
        plans.push(Plan {
            reqs,
            pipelined: rng.chance(30),
            split_seed: rng.next(),
        });
    }
    let requests: usize = plans.iter().map(|p| p.reqs.len()).sum();
    for batch in plans.chunks(32) {
        let mut runs = Vec::new();
        for plan in batch {
            let (a, b) = (plan.clone(), plan.clone());
            runs.push((
                plan.clone(),
                tokio::spawn(run(old.addr, a)),
                tokio::spawn(run(new.addr, b)),
            ));
        }
        for (plan, a, b) in runs {
            let (a, b) = (a.await.unwrap(), b.await.unwrap());
            let show = || {
                plan.reqs
                    .iter()
                    .map(|q| {
                        String::from_utf8_lossy(&q.bytes[..q.bytes.len().min(600)]).into_owned()
                    })
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            };
            assert_eq!(
                a.0,
                b.0,
                "seed {seed:#x}: responses differ (hyper, then ours) for\n{}",
                show()
            );
            assert_eq!(
                a.1,
                b.1,
                "seed {seed:#x}: hyper closed: {}, ours closed: {} after\n{}",
                a.1,
                b.1,
                show()
            );
            for (q, got) in plan.reqs.iter().zip(&b.0) {
                let got = got.as_ref().unwrap_or_else(|| {
                    panic!(
                        "seed {seed:#x}: no response to request {} of\n{}",
                        q.id,
                        show()
                    )
                });
                assert!(
                    got.status_line.ends_with(" OK")
                        || got.status_line.contains(" 201 ")
                        || got.status_line.contains(" 204 ")
                        || got.status_line.contains(" 304 "),
                    "seed {seed:#x}: {} for\n{}",
                    got.status_line,
                    show()
                );
            }
        }
    }
    let (old_seen, new_seen) = (
        old_seen.lock().unwrap().clone(),
        new_seen.lock().unwrap().clone(),
    );
    assert_eq!(old_seen.len(), requests, "seed {seed:#x}: hyper's upstream");
    assert_eq!(new_seen.len(), requests, "seed {seed:#x}: our upstream");
    for plan in &plans {
        for q in &plan.reqs {
            let (a, b) = (&old_seen[&q.id], &new_seen[&q.id]);
            assert_eq!(a, b, "seed {seed:#x}: the upstreams saw different requests");
            // And both saw the request the client sent.
            assert!(
                b.request_line
                    .starts_with(&format!("{} {} ", q.method, q.target)),
                "seed {seed:#x}: {} for {} {}",
                b.request_line,
                q.method,
                q.target
            );
            assert_eq!(b.body, q.body, "seed {seed:#x}: request {} body", q.id);
        }
    }
}
