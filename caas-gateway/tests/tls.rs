//! HTTPS end to end over loopback, certificates made at test time, real handshakes with a
//! rustls client (and curl / openssl where installed): SNI selection, unknown names, ALPN
//! h2 and http/1.1 through the proxy, `X-Forwarded-Proto: https`, session resumption,
//! `https_redirect`. Certificate reloads and sources: tests/tls_certs.rs.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rustls::pki_types::ServerName;

use bytes::Bytes;
use caas_core::{Domain, Snapshot};
use caas_gateway::tls::{TlsAcceptor, UnknownSni};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::tls::{
    Pki, any_cert_client, connect, h1, h1_get, presented, resolver, start, start_trusting,
    start_with,
};
use support::{Upstream, app, snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn sni_picks_exact_wildcard_and_most_specific_and_handles_unknown_names() {
    let pki = Pki::new();
    let gateway_cert = pki.leaf(&["caas.local", "*.caas.local"]);
    let hello_wild = pki.leaf(&["*.hello.test"]);
    let hello_www = pki.leaf(&["www.hello.test"]);
    let up = Upstream::start("up").await;
    let routes = snapshot(vec![("hello", app(&[("v1", &[up.addr])]))]);

    for unknown in [UnknownSni::Default, UnknownSni::Reject] {
        let certs = resolver(&[&gateway_cert, &hello_wild, &hello_www], unknown);
        let gw = start(routes.clone(), Arc::clone(&certs)).await;
        let client = any_cert_client();
        for (sni, want) in [
            ("www.hello.test", &hello_www),
            ("WWW.hello.test", &hello_www),
            ("api.hello.test", &hello_wild),
            ("caas.local", &gateway_cert),
            ("app01.caas.local", &gateway_cert),
        ] {
            let s = connect(gw.tls, sni, client.clone()).await.unwrap();
            assert_eq!(presented(&s), want.der(), "{unknown:?}: SNI {sni}");
        }
        // A name no certificate serves, a wildcard's bare domain, and no SNI at all (an IP
        // address as the server name sends none).
        let before = certs.stats().unknown_sni.load(Relaxed);
        for sni in [
            "unknown.example",
            "hello.test",
            "a.b.hello.test",
            "127.0.0.1",
        ] {
            let got = connect(gw.tls, sni, client.clone()).await;
            match unknown {
                UnknownSni::Default => {
                    assert_eq!(presented(&got.unwrap()), gateway_cert.der(), "SNI {sni}");
                }
                UnknownSni::Reject => {
                    let Err(err) = got else {
                        panic!("SNI {sni}: the handshake must be refused")
                    };
                    let err = err.to_string();
                    assert!(err.contains("AccessDenied"), "SNI {sni}: {err}");
                }
            }
        }
        assert_eq!(certs.stats().unknown_sni.load(Relaxed), before + 4);
        let failures = gw.gateway.stats().tls_handshake_failures.load(Relaxed);
        match unknown {
            UnknownSni::Default => assert_eq!(failures, 0),
            UnknownSni::Reject => {
                // The server counts it when it has sent the alert: wait for it.
                for _ in 0..200 {
                    if gw.gateway.stats().tls_handshake_failures.load(Relaxed) >= 4 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                assert_eq!(gw.gateway.stats().tls_handshake_failures.load(Relaxed), 4);
            }
        }
    }
}

#[tokio::test]
async fn alpn_h2_and_http11_are_proxied_with_forwarded_proto_https() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["www.hello.test"]);
    let up = Upstream::start("up").await;
    let mut spec = app(&[("v1", &[up.addr])]);
    spec.domains = vec![Domain::new("www.hello.test").unwrap()];
    let gw = start(
        snapshot(vec![("hello", spec)]),
        resolver(&[&leaf], UnknownSni::Reject),
    )
    .await;

    // HTTP/1.1, chosen by ALPN; the certificate verifies against the CA for the name.
    let s = connect(gw.tls, "www.hello.test", pki.client(&[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut sender = h1(s).await;
    let (status, headers, body) = h1_get(&mut sender, "www.hello.test", "/one").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "up GET /one"));
    assert_eq!(headers["x-echo-x-forwarded-proto"], "https");
    assert_eq!(headers["x-echo-host"], "www.hello.test");

    // HTTP/2, chosen by ALPN (h2 first in the client's list).
    let s = connect(gw.tls, "www.hello.test", pki.client(&[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    for path in ["/two", "/three"] {
        let req = Request::get(format!("https://www.hello.test{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-echo-x-forwarded-proto"], "https");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("up GET {path}"));
    }

    // No ALPN at all: HTTP/1.1.
    let s = connect(gw.tls, "www.hello.test", pki.client(&[]))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), None);
    let (status, _, body) = h1_get(&mut h1(s).await, "www.hello.test", "/four").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "up GET /four"));

    // The same app over plain HTTP says http.
    let mut plain = h1(TcpStream::connect(gw.plain).await.unwrap()).await;
    let (_, headers, _) = h1_get(&mut plain, "www.hello.test", "/").await;
    assert_eq!(headers["x-echo-x-forwarded-proto"], "http");
    assert_eq!(gw.gateway.stats().tls_handshakes.load(Relaxed), 3);
}

/// A client's session cache that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountingTickets {
    cache: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingTickets {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.cache.set_kx_hint(name, group);
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.cache.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.cache.set_tls12_session(name, value);
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.cache.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.cache.remove_tls12_session(name);
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, Relaxed);
        self.cache.insert_tls13_ticket(name, value);
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.cache.take_tls13_ticket(name)
    }
}

/// Three connections from one client (one client config = one session cache, as in a
/// browser), each reading its answer (TLS 1.3 tickets arrive after the handshake): how each
/// handshake went, and how many tickets the client was given in all.
async fn three_handshakes(
    gw: &support::tls::TlsGw,
    pki: &Pki,
) -> (Vec<rustls::HandshakeKind>, usize) {
    let store = Arc::new(CountingTickets {
        cache: rustls::client::ClientSessionMemoryCache::new(16),
        tickets: Default::default(),
    });
    let mut config = (*pki.client(&[b"http/1.1"])).clone();
    config.resumption = rustls::client::Resumption::store(store.clone());
    let client = Arc::new(config);
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let mut s = connect(gw.tls, "www.hello.test", client.clone())
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: www.hello.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 404"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        kinds.push(s.get_ref().1.handshake_kind().unwrap());
    }
    (kinds, store.tickets.load(Relaxed))
}

#[tokio::test]
async fn a_returning_client_resumes_its_session_unless_resumption_is_off() {
    use rustls::HandshakeKind::{Full, Resumed};
    let pki = Pki::new();
    let leaf = pki.leaf(&["www.hello.test"]);
    let gw = start(Snapshot::default(), resolver(&[&leaf], UnknownSni::Reject)).await;
    // One ticket per handshake (rustls' default is two; each costs the client a session
    // object, and a resumed handshake needs one).
    assert_eq!(
        three_handshakes(&gw, &pki).await,
        (vec![Full, Resumed, Resumed], 3)
    );
    let stats = gw.gateway.stats();
    assert_eq!(stats.tls_handshakes.load(Relaxed), 3);
    assert_eq!(stats.tls_resumed_handshakes.load(Relaxed), 2);

    let certs = resolver(&[&leaf], UnknownSni::Reject);
    let acceptor = TlsAcceptor::with_session_resumption(certs, false).unwrap();
    let gw = start_with(Snapshot::default(), acceptor, Vec::new()).await;
    assert_eq!(
        three_handshakes(&gw, &pki).await,
        (vec![Full, Full, Full], 0)
    );
    let stats = gw.gateway.stats();
    assert_eq!(stats.tls_handshakes.load(Relaxed), 3);
    assert_eq!(stats.tls_resumed_handshakes.load(Relaxed), 0);
}

#[tokio::test]
async fn https_redirect_answers_plain_http_with_308_to_the_tls_port() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["*.caas.local"]);
    let up = Upstream::start("up").await;
    let mut secure = app(&[("v1", &[up.addr])]);
    secure.https_redirect = true;
    secure.blacklist.paths = vec!["/admin".into()];
    let gw = start(
        snapshot(vec![
            ("secure", secure),
            ("open", app(&[("v1", &[up.addr])])),
        ]),
        resolver(&[&leaf], UnknownSni::Default),
    )
    .await;
    let tls_port = gw.tls.port();
    let mut plain = h1(TcpStream::connect(gw.plain).await.unwrap()).await;

    let (status, headers, body) = h1_get(&mut plain, "secure.caas.local:8080", "/a/b?c=1&d").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        headers["location"],
        format!("https://secure.caas.local:{tls_port}/a/b?c=1&d")
    );
    assert_eq!(body, "");
    assert_eq!(
        up.requests.load(Relaxed),
        0,
        "a redirect never reaches the app"
    );

    // The authority decides, not a contradicting Host: absolute form wins (RFC 9112).
    let req = Request::post("http://secure.caas.local/form")
        .header("host", "open.caas.local")
        .body(Empty::new())
        .unwrap();
    let resp = plain.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        resp.headers()["location"],
        format!("https://secure.caas.local:{tls_port}/form")
    );
    resp.into_body().collect().await.unwrap();

    // The app's blacklist applies first: refused over plain HTTP as over HTTPS.
    let (status, headers, _) = h1_get(&mut plain, "secure.caas.local", "/admin/x").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!headers.contains_key("location"));

    // Apps without the flag, and the same app over TLS, are served.
    let (status, _, body) = h1_get(&mut plain, "open.caas.local", "/x").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "up GET /x"));
    let s = connect(gw.tls, "secure.caas.local", pki.client(&[b"http/1.1"]))
        .await
        .unwrap();
    let (status, headers, body) = h1_get(&mut h1(s).await, "secure.caas.local", "/a/b").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "up GET /a/b"));
    assert_eq!(headers["x-echo-x-forwarded-proto"], "https");
    assert_eq!(gw.gateway.stats().https_redirects.load(Relaxed), 2);

    // Behind a load balancer that terminates TLS: its word (X-Forwarded-Proto) is believed
    // when it is a trusted proxy, so there is no redirect loop; anyone else's is not.
    let routes = snapshot(vec![("secure", {
        let mut s = app(&[("v1", &[up.addr])]);
        s.https_redirect = true;
        s
    })]);
    for (trusted, want) in [
        ("127.0.0.1", StatusCode::OK),
        ("10.0.0.0/8", StatusCode::PERMANENT_REDIRECT),
    ] {
        let certs = resolver(&[&leaf], UnknownSni::Default);
        let gw = start_trusting(routes.clone(), certs, vec![trusted.parse().unwrap()]).await;
        let mut plain = h1(TcpStream::connect(gw.plain).await.unwrap()).await;
        let req = Request::get("/lb")
            .header("host", "secure.caas.local")
            .header("x-forwarded-proto", "https")
            .body(Empty::new())
            .unwrap();
        let resp = plain.send_request(req).await.unwrap();
        assert_eq!(resp.status(), want, "trusting {trusted}");
        if want == StatusCode::OK {
            assert_eq!(resp.headers()["x-echo-x-forwarded-proto"], "https");
        }
        resp.into_body().collect().await.unwrap();
        // Without the field, the trusted proxy's plain request is redirected.
        let (status, _, _) = h1_get(&mut plain, "secure.caas.local", "/lb").await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT, "trusting {trusted}");
    }
}

/// Runs an external TLS client; `None` (after a loud notice) when it is not installed,
/// which fails under CI=true: scripts/install-deps.sh installs curl and openssl.
async fn external(program: &str, args: &[&str], stdin: &[u8]) -> Option<(bool, String)> {
    let ci = matches!(std::env::var("CI").as_deref(), Ok("true" | "1"));
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !ci => {
            use std::io::Write as _;
            let _ = std::io::stderr().write_all(
                format!("\n!!! SKIPPED the {program} part: {program} is not installed (scripts/install-deps.sh)\n").as_bytes(),
            );
            return None;
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    };
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the external client hung")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[tokio::test]
async fn curl_and_openssl_handshake_with_the_gateway() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["www.hello.test"]);
    let up = Upstream::start("up").await;
    let mut spec = app(&[("v1", &[up.addr])]);
    spec.domains = vec![Domain::new("www.hello.test").unwrap()];
    let gw = start(
        snapshot(vec![("hello", spec)]),
        resolver(&[&leaf], UnknownSni::Reject),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let (ca, port) = (ca.display().to_string(), gw.tls.port());
    let resolve = format!("www.hello.test:{port}:127.0.0.1");
    let url = format!("https://www.hello.test:{port}/curl");

    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let args = [
            "-sS",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            flag,
            "-w",
            "\n%{http_version} %{http_code}",
            "-H",
            "x-probe: 1",
            &url,
        ];
        if let Some((ok, out)) = external("curl", &args, b"").await {
            assert!(ok, "curl {flag}: {out}");
            assert!(out.starts_with("up GET /curl"), "curl {flag}: {out}");
            assert!(
                out.ends_with(&format!("\n{version} 200")),
                "curl {flag}: {out}"
            );
        }
    }

    let connect = format!("127.0.0.1:{port}");
    for (sni, alpn, want) in [
        ("www.hello.test", "h2", "ALPN protocol: h2"),
        ("www.hello.test", "http/1.1", "ALPN protocol: http/1.1"),
        ("www.hello.test", "h2", "Verify return code: 0 (ok)"),
    ] {
        let args = [
            "s_client",
            "-connect",
            &connect,
            "-servername",
            sni,
            "-alpn",
            alpn,
            "-CAfile",
            &ca,
            "-verify_return_error",
        ];
        if let Some((ok, out)) = external("openssl", &args, b"").await {
            assert!(ok, "openssl s_client: {out}");
            assert!(out.contains(want), "want {want:?}: {out}");
        }
    }
    // An unknown name is refused cleanly (an alert, no certificate).
    let args = ["s_client", "-connect", &connect, "-servername", "nope.test"];
    if let Some((ok, out)) = external("openssl", &args, b"").await {
        assert!(!ok, "handshake for an unknown name must fail: {out}");
        assert!(out.contains("alert"), "{out}");
    }
}
