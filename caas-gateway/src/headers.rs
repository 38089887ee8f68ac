//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 §7.6.1) and
//! the `X-Forwarded-*` family. The client's `Host` is kept as sent.

use http::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, UPGRADE};
use http::{Request, Version, request};

use crate::h1;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Tokens of every `Connection` field value.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// An HTTP/1.1 request asking to switch protocols (WebSocket and friends).
pub(crate) fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The host a request is for: `Host`, or the URI's authority (HTTP/2, absolute-form).
pub(crate) fn request_host(parts: &request::Parts) -> Option<&str> {
    match parts.headers.get(HOST) {
        Some(h) => h.to_str().ok(),
        None => parts.uri.authority().map(|a| a.as_str()),
    }
}

/// Writes the fields of a client request as the upstream gets them, straight into its head
/// (the request's own header map is not touched): `Host` kept (from `:authority` for HTTP/2
/// clients), hop-by-hop fields dropped (RFC 9110 §7.6.1, with those `Connection` names),
/// `X-Forwarded-For` appended to, `X-Forwarded-Proto/-Host` set. For a protocol upgrade,
/// `Upgrade` is kept and `Connection: upgrade` sent.
pub(crate) fn write_upstream_fields(
    parts: &request::Parts,
    client_ip: &HeaderValue,
    proto: &HeaderValue,
    upgrade: bool,
    out: &mut Vec<u8>,
) {
    let headers = &parts.headers;
    // Names listed in Connection are hop-by-hop for this message; rare, so only looked at
    // when there is a Connection field.
    let listed: Vec<&str> = if headers.contains_key(CONNECTION) {
        connection_tokens(headers).collect()
    } else {
        Vec::new()
    };
    for (name, value) in headers {
        let n = name.as_str();
        if h1::is_hop_by_hop(n.as_bytes()) {
            if upgrade && *name == UPGRADE {
                h1::write_field(out, n.as_bytes(), value.as_bytes());
            }
            continue;
        }
        if *name == X_FORWARDED_FOR
            || *name == X_FORWARDED_PROTO
            || *name == X_FORWARDED_HOST
            || listed.iter().any(|t| t.eq_ignore_ascii_case(n))
        {
            continue;
        }
        h1::write_field(out, n.as_bytes(), value.as_bytes());
    }
    let host = request_host(parts);
    if !headers.contains_key(HOST) {
        if let Some(authority) = host {
            h1::write_field(out, b"host", authority.as_bytes());
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        out.extend_from_slice(prior.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    h1::write_field(out, b"x-forwarded-proto", proto.as_bytes());
    if let Some(host) = host {
        h1::write_field(out, b"x-forwarded-host", host.as_bytes());
    }
    if upgrade {
        h1::write_field(out, b"connection", b"upgrade");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upstream head for a request, as text.
    fn upstream_head(req: Request<()>) -> String {
        let upgrade = is_upgrade_request(&req);
        let (parts, ()) = req.into_parts();
        let ip = HeaderValue::from_static("10.0.0.1");
        let mut out = Vec::new();
        h1::encode_request_head(&parts, false, &mut out, |out| {
            write_upstream_fields(&parts, &ip, &HeaderValue::from_static("http"), upgrade, out);
        });
        String::from_utf8(out).unwrap()
    }

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/p?q=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let head = upstream_head(req(&[
            ("host", "a.caas.local"),
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
            ("x-forwarded-proto", "spoofed"),
        ]));
        assert_eq!(
            head,
            "GET /p?q=1 HTTP/1.1\r\nhost: a.caas.local\r\nx-kept: yes\r\n\
             x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: a.caas.local\r\n\r\n"
        );
    }

    #[test]
    fn upgrade_keeps_upgrade_headers() {
        let head = upstream_head(req(&[
            ("host", "a"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]));
        assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
        assert_eq!(head.matches("connection").count(), 1, "{head}");
    }

    #[test]
    fn forwarded_for_appends_and_absolute_uri_becomes_origin_form() {
        let r = Request::builder()
            .uri("http://a.caas.local:8080/x?y")
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-for", "2.2.2.2")
            .body(())
            .unwrap();
        let head = upstream_head(r);
        assert!(head.starts_with("GET /x?y HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nhost: a.caas.local:8080\r\n"), "{head}");
        assert!(
            head.contains("\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.1\r\n"),
            "{head}"
        );
    }
}
