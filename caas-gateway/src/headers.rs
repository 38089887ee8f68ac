//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 §7.6.1) and
//! the `X-Forwarded-*` family. The client's `Host` is kept as sent.

use http::header::{
    CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{Request, Uri, Version};

/// Hop-by-hop headers that are never forwarded (besides those named in `Connection`).
const HOP_BY_HOP: [&str; 2] = ["keep-alive", "proxy-connection"];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether `Connection` lists `token` (case-insensitive).
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An HTTP/1.1 request asking to switch protocols (WebSocket and friends).
pub(crate) fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

/// Removes hop-by-hop headers. With `keep_upgrade`, `Upgrade` survives and `Connection` is
/// reduced to `upgrade`, as a protocol switch needs both on the next hop.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = headers.get(CONNECTION).cloned() {
        // Names listed in Connection are hop-by-hop too. Multiple Connection headers are rare;
        // the first is inspected without allocating and the rest, if any, after.
        let extra: Vec<HeaderValue> = headers
            .get_all(CONNECTION)
            .iter()
            .skip(1)
            .cloned()
            .collect();
        for value in std::iter::once(&conn).chain(extra.iter()) {
            if let Ok(s) = value.to_str() {
                for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if keep_upgrade && token.eq_ignore_ascii_case("upgrade") {
                        continue;
                    }
                    headers.remove(token);
                }
            }
        }
        headers.remove(CONNECTION);
    }
    headers.remove(TE);
    headers.remove(TRAILER);
    headers.remove(TRANSFER_ENCODING);
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Rewrites a client request for the upstream: origin-form URI over HTTP/1.1, `Host` kept
/// (filled from `:authority` for HTTP/2 clients), hop-by-hop headers removed and
/// `X-Forwarded-For/-Proto/-Host` set. Returns whether it is a protocol upgrade.
pub(crate) fn prepare_request<B>(
    req: &mut Request<B>,
    client_ip: &HeaderValue,
    proto: &HeaderValue,
) -> bool {
    let upgrade = is_upgrade_request(req);
    if req.uri().authority().is_some() {
        if !req.headers().contains_key(HOST) {
            if let Some(v) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(HOST, v);
            }
        }
        let origin = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        if let Ok(uri) = origin.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);

    match headers.get(&X_FORWARDED_FOR) {
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), client_ip.clone());
        }
        Some(prior) => {
            let mut joined = Vec::with_capacity(prior.len() + 2 + client_ip.len());
            for (i, v) in headers.get_all(&X_FORWARDED_FOR).iter().enumerate() {
                if i > 0 {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), proto.clone());
    if let Some(host) = headers.get(HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    upgrade
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/p?q=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut r = req(&[
            ("host", "a.caas.local"),
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]);
        let ip = HeaderValue::from_static("10.0.0.1");
        let up = prepare_request(&mut r, &ip, &HeaderValue::from_static("http"));
        assert!(!up);
        let h = r.headers();
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "te",
            "transfer-encoding",
            "proxy-connection",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["host"], "a.caas.local");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.caas.local");
    }

    #[test]
    fn upgrade_keeps_upgrade_headers() {
        let mut r = req(&[
            ("host", "a"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        let ip = HeaderValue::from_static("10.0.0.1");
        assert!(prepare_request(
            &mut r,
            &ip,
            &HeaderValue::from_static("http")
        ));
        assert_eq!(r.headers()["upgrade"], "websocket");
        assert_eq!(r.headers()["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_appends_and_absolute_uri_becomes_origin_form() {
        let mut r = Request::builder()
            .uri("http://a.caas.local:8080/x?y")
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-for", "2.2.2.2")
            .body(())
            .unwrap();
        let ip = HeaderValue::from_static("10.0.0.1");
        prepare_request(&mut r, &ip, &HeaderValue::from_static("http"));
        assert_eq!(r.uri(), "/x?y");
        assert_eq!(r.headers()["host"], "a.caas.local:8080");
        assert_eq!(r.headers()["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.1");
    }
}
