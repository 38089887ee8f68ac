//! Filters and limits through the real gateway: blacklists (gateway-wide and per app; by
//! network, IPv4 and IPv6, path prefix and user agent) applied live, `X-Forwarded-For`
//! believed only from trusted proxies, per-client rate limits with `Retry-After`, a cap on
//! an app's requests in flight, and JSON answers for heads the parser refuses.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use caas_core::{Blacklist, RateLimit};
use caas_gateway::GatewayConfig;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A GET with extra header fields; returns status, headers and body.
async fn get_with(
    gw: &Gw,
    path: &str,
    host: &str,
    fields: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let mut req = get(&gw.url(path), host);
    for (k, v) in fields {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let (s, h, body) = send(&client(), req).await;
    (s.as_u16(), h, body)
}

fn blacklist(ips: &[&str], paths: &[&str], agents: &[&str]) -> Blacklist {
    Blacklist {
        ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        user_agents: agents.iter().map(|a| (*a).to_owned()).collect(),
    }
}

#[tokio::test]
async fn blacklists_refuse_by_network_path_and_agent_globally_and_per_app_live() {
    let (ua, ub) = (Upstream::start("a").await, Upstream::start("b").await);
    let plain = || {
        snapshot(vec![
            ("a", app(&[("v1", &[ua.addr])])),
            ("b", app(&[("v1", &[ub.addr])])),
        ])
    };
    let gw = Gw::start(plain()).await;
    assert_eq!(get_with(&gw, "/admin", "a.caas.local", &[]).await.0, 200);

    let mut s = plain();
    s.blacklist = blacklist(&[], &["/admin"], &[]);
    s.apps.get_mut(&id("a")).unwrap().blacklist = blacklist(&[], &[], &["BadBot"]);
    s.apps.get_mut(&id("b")).unwrap().blacklist = blacklist(&["127.0.0.0/8"], &[], &[]);
    gw.set_routes(s).await;
    let (a_before, b_before) = (ua.requests.load(SeqCst), ub.requests.load(SeqCst));
    for (path, host, agent, want, rule) in [
        // Gateway-wide: the path, for every app.
        ("/admin/x", "a.caas.local", "curl/8", 403, Some("path")),
        // Per app: a's user agents (any case), b's networks.
        (
            "/",
            "a.caas.local",
            "Mozilla badbot/2",
            403,
            Some("user agent"),
        ),
        ("/", "b.caas.local", "curl/8", 403, Some("client address")),
        ("/", "a.caas.local", "curl/8", 200, None),
        (
            "/administration",
            "a.caas.local",
            "curl/8",
            403,
            Some("path"),
        ),
        ("/public/admin", "a.caas.local", "curl/8", 200, None),
    ] {
        let (status, h, body) = get_with(&gw, path, host, &[("user-agent", agent)]).await;
        assert_eq!(status, want, "{path} {host} {agent}: {body}");
        if let Some(rule) = rule {
            assert_eq!(h["x-caas-error"], "blacklisted");
            assert!(body.contains(rule), "{body}");
        }
    }
    // Refused requests never reach an upstream.
    assert_eq!(ua.requests.load(SeqCst) - a_before, 2);
    assert_eq!(ub.requests.load(SeqCst), b_before);
    assert_eq!(gw.gateway.stats().errors("blacklisted"), 4);

    // Applied live: lifting them lets the same requests through at once.
    gw.set_routes(plain()).await;
    assert_eq!(get_with(&gw, "/admin", "b.caas.local", &[]).await.0, 200);
}

#[tokio::test]
async fn ipv6_clients_and_networks() {
    let up = Upstream::start("a").await;
    let mut spec = app(&[("v1", &[up.addr])]);
    spec.blacklist = blacklist(&["2001:db8::/32"], &[], &[]);
    let gw = Gw::start_on("[::1]:0", snapshot(vec![("a", spec.clone())]), Gw::config()).await;
    let url = |gw: &Gw| format!("http://[::1]:{}/", gw.addr.port());
    let c = client();
    let (s, _, body) = send(&c, get(&url(&gw), "a.caas.local")).await;
    assert_eq!(s, 200, "::1 is not in 2001:db8::/32: {body}");
    spec.blacklist = blacklist(&["::1/128"], &[], &[]);
    gw.set_routes(snapshot(vec![("a", spec)])).await;
    let (s, h, _) = send(&c, get(&url(&gw), "a.caas.local")).await;
    assert_eq!(s, 403);
    assert_eq!(h["x-caas-error"], "blacklisted");
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let up = Upstream::start("a").await;
    let mut spec = app(&[("v1", &[up.addr])]);
    spec.blacklist = blacklist(&["203.0.113.0/24"], &[], &[]);
    let routes = || snapshot(vec![("a", spec.clone())]);
    let forged = [("x-forwarded-for", "203.0.113.5")];

    // Nobody trusted: the socket peer (127.0.0.1) is the client, whatever it claims.
    let open = Gw::start(routes()).await;
    assert_eq!(get_with(&open, "/", "a.caas.local", &forged).await.0, 200);

    // Loopback trusted (a load balancer in front): its word is taken.
    let behind_lb = Gw::start_config(
        routes(),
        GatewayConfig {
            trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
            ..Gw::config()
        },
    )
    .await;
    assert_eq!(
        get_with(&behind_lb, "/", "a.caas.local", &forged).await.0,
        403
    );
    // The nearest untrusted hop is the client: a blacklisted address further left is what
    // that client claimed, not who it is.
    let chain = [("x-forwarded-for", "203.0.113.5, 198.51.100.7")];
    assert_eq!(
        get_with(&behind_lb, "/", "a.caas.local", &chain).await.0,
        200
    );
}

#[tokio::test]
async fn per_client_rate_limits_answer_429_with_retry_after() {
    let up = Upstream::start("a").await;
    let mut spec = app(&[("v1", &[up.addr])]);
    spec.rate_limit = Some(RateLimit {
        per_client_rps: Some(1),
        per_client_burst: Some(2),
        ..RateLimit::default()
    });
    // Clients told apart by a trusted proxy's X-Forwarded-For.
    let gw = Gw::start_config(
        snapshot(vec![("a", spec)]),
        GatewayConfig {
            trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
            ..Gw::config()
        },
    )
    .await;
    let x = [("x-forwarded-for", "198.51.100.1")];
    let y = [("x-forwarded-for", "198.51.100.2")];
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get_with(&gw, "/", "a.caas.local", &x).await.0);
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert_eq!(&statuses[3..], [429, 429], "{statuses:?}");
    let (s, h, body) = get_with(&gw, "/", "a.caas.local", &x).await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(h["x-caas-error"], "rate_limited");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    // Another client has its own budget.
    assert_eq!(get_with(&gw, "/", "a.caas.local", &y).await.0, 200);
}

#[tokio::test]
async fn max_in_flight_caps_an_apps_concurrency_with_503() {
    let up = Upstream::start("a").await;
    let other = Upstream::start("b").await;
    let mut spec = app(&[("v1", &[up.addr])]);
    spec.max_in_flight = Some(2);
    let gw = Gw::start(snapshot(vec![
        ("a", spec),
        ("b", app(&[("v1", &[other.addr])])),
    ]))
    .await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (c, url) = (client(), gw.url("/sleep/400"));
            tokio::spawn(async move { send(&c, get(&url, "a.caas.local")).await.0 })
        })
        .collect();
    for _ in 0..400 {
        if up.requests.load(SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(up.requests.load(SeqCst), 2);
    let (s, h, body) = get_with(&gw, "/", "a.caas.local", &[]).await;
    assert_eq!(
        (s, h["x-caas-error"].to_str().unwrap()),
        (503, "app_overloaded"),
        "{body}"
    );
    assert_eq!(
        up.requests.load(SeqCst),
        2,
        "the third never reached the upstream"
    );
    // Another tenant's app is not affected.
    assert_eq!(get_with(&gw, "/", "b.caas.local", &[]).await.0, 200);
    for t in slow {
        assert_eq!(t.await.unwrap(), 200);
    }
    // The places are given back when the responses end.
    let table = gw.gateway.router().current();
    assert_eq!(table.app(&id("a")).unwrap().state().in_flight(), 0);
    assert_eq!(get_with(&gw, "/", "a.caas.local", &[]).await.0, 200);
}

/// Sends raw bytes and reads until the gateway closes the connection.
async fn raw(gw: &Gw, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn heads_the_parser_refuses_get_json_answers_too() {
    let up = Upstream::start("a").await;
    let gw = Gw::start(snapshot(vec![("a", app(&[("v1", &[up.addr])]))])).await;
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a.caas.local\r\nx-big: {}\r\n\r\n",
        "x".repeat(200 * 1024)
    );
    for (bytes, status, code) in [
        (
            b"GET / HTTP/1.1\r\nHost: a.caas.local\r\nno colon here\r\n\r\n".to_vec(),
            "400",
            "malformed_request",
        ),
        (
            b"G\x00T / HTTP/1.1\r\n\r\n".to_vec(),
            "400",
            "malformed_request",
        ),
        (huge.into_bytes(), "431", "headers_too_large"),
    ] {
        let got = raw(&gw, &bytes).await;
        let (head, body) = got.split_once("\r\n\r\n").unwrap_or((&got, ""));
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{got}");
        assert!(head.contains(&format!("x-caas-error: {code}")), "{got}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], code);
    }
    assert_eq!(gw.gateway.stats().errors("malformed_request"), 2);
    assert_eq!(up.requests.load(SeqCst), 0);
    // A well-formed request still gets the upstream's answer, untouched.
    assert_eq!(get_with(&gw, "/", "a.caas.local", &[]).await.0, 200);
}
