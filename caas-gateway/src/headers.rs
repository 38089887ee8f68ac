//! The request's authority, decided once ([`Authority`]), and the header rewriting between
//! client and upstream: hop-by-hop removal (RFC 9110 §7.6.1) and the `X-Forwarded-*` family.

use std::net::IpAddr;

use caas_core::IpNet;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, HeaderMap, HeaderName, HeaderValue, UPGRADE};
use http::uri::Authority as UriAuthority;
use http::{Request, Version, request};

use crate::error::ProxyError;
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

/// The authority (`host[:port]`) a request is for, decided once and used for everything:
/// routing, every retry and its filters, the upstream's `Host` and `X-Forwarded-Host`.
///
/// - An HTTP/1 request in absolute form (`GET http://a.example/ HTTP/1.1`): the target's
///   authority wins and replaces `Host`, as RFC 9112 §3.2.2 requires of a server and of a
///   proxy. Rejecting a mismatch would break clients that speak to the gateway as to a
///   forward proxy, and the RFC leaves no doubt which name the request is for.
/// - HTTP/2: `:authority`; a `Host` naming another authority makes the request malformed
///   (RFC 9113 §8.3.1), answered 400 rather than guessed.
/// - Otherwise `Host`: exactly one field (RFC 9112 §3.2: several are a 400), a valid
///   authority without user info.
#[derive(Debug, Clone)]
pub(crate) struct Authority(HeaderValue);

impl Authority {
    /// Decides the authority of a request (see the type's docs).
    pub(crate) fn of(parts: &request::Parts) -> Result<Self, ProxyError> {
        let mut hosts = parts.headers.get_all(HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Err(ProxyError::InvalidHost("more than one Host field"));
        }
        if let Some(target) = parts.uri.authority() {
            let value = without_userinfo(target)?;
            if parts.version == Version::HTTP_2 {
                if let Some(h) = host {
                    if !h.as_bytes().eq_ignore_ascii_case(value.as_bytes()) {
                        return Err(ProxyError::InvalidHost(
                            "Host names another authority than :authority",
                        ));
                    }
                }
            }
            return Ok(Self(value));
        }
        let host = host.ok_or(ProxyError::MissingHost)?;
        if !valid_host_field(host.as_bytes()) {
            return Err(ProxyError::InvalidHost("Host is not a valid host[:port]"));
        }
        Ok(Self(host.clone()))
    }

    /// The authority as text (visible ASCII, checked when it was decided).
    #[inline]
    pub(crate) fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    /// The authority as a field value.
    pub(crate) fn value(&self) -> &HeaderValue {
        &self.0
    }
}

/// Whether a `Host` field value is `host[:port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a
/// registered name or IPv4 address of unreserved, sub-delimiter and `%` characters, or an
/// IP literal in brackets; then an optional port that fits in 16 bits. No user info, no
/// path, no whitespace. Checked byte by byte: no allocation on the request path.
fn valid_host_field(b: &[u8]) -> bool {
    let host_end = if b.first() == Some(&b'[') {
        match b.iter().position(|&c| c == b']') {
            Some(end)
                if end > 1
                    && b[1..end]
                        .iter()
                        .all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.')) =>
            {
                end + 1
            }
            _ => return false,
        }
    } else {
        let end = b.iter().position(|&c| c == b':').unwrap_or(b.len());
        if end == 0 || !is_reg_name(&b[..end]) {
            return false;
        }
        end
    };
    match &b[host_end..] {
        [] | [b':'] => true,
        [b':', digits @ ..] => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits
                    .iter()
                    .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
                    <= u32::from(u16::MAX)
        }
        _ => false,
    }
}

/// A registered name or IPv4 address: unreserved and sub-delimiter characters, and `%`
/// followed by two hex digits.
fn is_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&c) = name.get(i) {
        if c == b'%' {
            let hex = |k: usize| name.get(k).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else if is_reg_name_char(c) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// Unreserved and sub-delimiter characters (RFC 3986 §2.2, §2.3).
fn is_reg_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// A host that is not empty and, when there is a port, a port that fits in 16 bits.
fn valid_host_port(a: &UriAuthority) -> bool {
    let host = a.host();
    // What follows the host: "" or ":" and the port (an empty port means the default).
    let port = a.as_str().rsplit_once(host).map_or("", |(_, rest)| rest);
    !host.is_empty()
        && match port.strip_prefix(':') {
            None => port.is_empty(),
            Some("") => true,
            Some(p) => p.parse::<u16>().is_ok(),
        }
}

/// `host[:port]` of a URI authority, dropping any `user@` part (never forwarded).
fn without_userinfo(a: &UriAuthority) -> Result<HeaderValue, ProxyError> {
    let s = a.as_str();
    let s = s.rsplit_once('@').map_or(s, |(_, hostport)| hostport);
    if !valid_host_port(a) {
        return Err(ProxyError::InvalidHost(
            "the authority is not a valid host[:port]",
        ));
    }
    HeaderValue::from_str(s).map_err(|_| ProxyError::InvalidHost("unusable authority"))
}

/// The client a request is from: the socket peer, or, when the peer is a trusted proxy, the
/// nearest address in `X-Forwarded-For` that is not itself trusted (read from the right,
/// across all the fields, as each proxy appends). An entry that is not an IP address stops
/// the walk: what lies beyond it cannot be told apart from a client's forgery, so the last
/// trusted hop's view stands.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(peer)) {
        return peer;
    }
    let mut client = peer;
    for field in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = field.to_str() else {
            return client;
        };
        for entry in text.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                return client;
            };
            client = ip.to_canonical();
            if !trusted.iter().any(|n| n.contains(client)) {
                return client;
            }
        }
    }
    client
}

/// Whether a trusted proxy in front of the gateway says the client reached it over HTTPS
/// (the last `X-Forwarded-Proto` value, as the nearest proxy set or appended it, is
/// `https`). Such a request counts as HTTPS: it is not redirected by `https_redirect` (no
/// loop behind a load balancer that terminates TLS) and goes upstream with
/// `X-Forwarded-Proto: https`. From anyone else the field is ignored (and replaced).
pub(crate) fn forwarded_https(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> bool {
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(peer.to_canonical())) {
        return false;
    }
    let last = headers.get_all(&X_FORWARDED_PROTO).iter().next_back();
    last.and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|p| p.trim_ascii().eq_ignore_ascii_case(b"https"))
}

/// Writes the fields of a client request as the upstream gets them, straight into its head
/// (the request's own header map is not touched): `Host` is the request's [`Authority`],
/// hop-by-hop fields dropped (RFC 9110 §7.6.1, with those `Connection` names),
/// `X-Forwarded-For` appended to, `X-Forwarded-Proto` set, `X-Forwarded-Host` the authority.
/// For a protocol upgrade, `Upgrade` is kept and `Connection: upgrade` sent. `Content-Length`
/// is always written: [`h1::encode_request_head`] frames the body by it.
pub(crate) fn write_upstream_fields(
    parts: &request::Parts,
    authority: &Authority,
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
    let mut prior_xff = false;
    for (name, value) in headers {
        let n = name.as_str();
        if h1::is_hop_by_hop(n.as_bytes()) {
            if upgrade && *name == UPGRADE {
                h1::write_field(out, n.as_bytes(), value.as_bytes());
            }
            continue;
        }
        if *name == X_FORWARDED_FOR {
            prior_xff = true;
            continue;
        }
        // Never the Content-Length that frames the body (`h1::encode_request_head`): were
        // a Connection field naming it obeyed, the body would follow a head that does not
        // announce it, and the upstream would read it as another request.
        if *name == HOST
            || *name == X_FORWARDED_PROTO
            || *name == X_FORWARDED_HOST
            || (listed.iter().any(|t| t.eq_ignore_ascii_case(n)) && *name != CONTENT_LENGTH)
        {
            continue;
        }
        h1::write_field(out, n.as_bytes(), value.as_bytes());
    }
    h1::write_field(out, b"host", authority.value().as_bytes());
    out.extend_from_slice(b"x-forwarded-for: ");
    // Looked up only when the client sent one: the lookup hashes the name, a fifth of
    // what this function costs.
    if prior_xff {
        for prior in headers.get_all(&X_FORWARDED_FOR) {
            out.extend_from_slice(prior.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(client_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    h1::write_field(out, b"x-forwarded-proto", proto.as_bytes());
    h1::write_field(out, b"x-forwarded-host", authority.value().as_bytes());
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
        let authority = Authority::of(&parts).unwrap();
        let ip = HeaderValue::from_static("10.0.0.1");
        let mut out = Vec::new();
        h1::encode_request_head(&parts, false, &mut out, |out| {
            let proto = HeaderValue::from_static("http");
            write_upstream_fields(&parts, &authority, &ip, &proto, upgrade, out);
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
            "GET /p?q=1 HTTP/1.1\r\nx-kept: yes\r\nhost: a.caas.local\r\n\
             x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: a.caas.local\r\n\r\n"
        );
    }

    #[test]
    fn a_connection_field_cannot_take_the_length_out_of_a_body_s_head() {
        // Were Content-Length dropped as a name the Connection field lists, the body would
        // follow a head that announces none, and the upstream would read it as a request.
        let (parts, ()) = req(&[
            ("host", "a.caas.local"),
            ("connection", "content-length, keep-alive"),
            ("content-length", "44"),
        ])
        .into_parts();
        let authority = Authority::of(&parts).unwrap();
        let (ip, proto) = (
            HeaderValue::from_static("10.0.0.1"),
            HeaderValue::from_static("http"),
        );
        let mut out = Vec::new();
        let framing = h1::encode_request_head(&parts, true, &mut out, |out| {
            write_upstream_fields(&parts, &authority, &ip, &proto, false, out);
        });
        let head = String::from_utf8(out).unwrap();
        assert_eq!(framing, h1::RequestFraming::Length);
        assert!(head.contains("\r\ncontent-length: 44\r\n"), "{head}");
        assert_eq!(head.matches("content-length").count(), 1, "{head}");
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
            .header("host", "b.caas.local")
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-for", "2.2.2.2")
            .body(())
            .unwrap();
        let head = upstream_head(r);
        assert!(head.starts_with("GET /x?y HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nhost: a.caas.local:8080\r\n"), "{head}");
        assert!(
            head.contains("\r\nx-forwarded-host: a.caas.local:8080\r\n"),
            "{head}"
        );
        assert!(!head.contains("b.caas.local"), "{head}");
        assert!(
            head.contains("\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.1\r\n"),
            "{head}"
        );
    }

    fn authority_of(version: Version, uri: &str, hosts: &[&str]) -> Result<String, &'static str> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header("host", *h);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        Authority::of(&parts)
            .map(|a| a.as_str().to_owned())
            .map_err(|e| e.code().as_str())
    }

    #[test]
    fn the_authority_is_decided_once_by_the_rfc_rules() {
        use Version as V;
        for (version, uri, hosts, want) in [
            (V::HTTP_11, "/", &["a.caas.local"][..], Ok("a.caas.local")),
            (
                V::HTTP_11,
                "/",
                &["A.caas.local:8080"],
                Ok("A.caas.local:8080"),
            ),
            (V::HTTP_10, "/", &["a.caas.local"], Ok("a.caas.local")),
            // RFC 9112 §3.2.2: the absolute form's authority wins and replaces Host.
            (
                V::HTTP_11,
                "http://a.caas.local/",
                &["b.caas.local"],
                Ok("a.caas.local"),
            ),
            (
                V::HTTP_11,
                "http://a.caas.local:81/x",
                &[],
                Ok("a.caas.local:81"),
            ),
            (
                V::HTTP_11,
                "http://u:p@a.caas.local/",
                &["b"],
                Ok("a.caas.local"),
            ),
            // HTTP/2: :authority; a different Host is malformed (RFC 9113 §8.3.1).
            (V::HTTP_2, "http://a.caas.local/", &[], Ok("a.caas.local")),
            (
                V::HTTP_2,
                "http://a.caas.local/",
                &["A.CAAS.local"],
                Ok("a.caas.local"),
            ),
            (
                V::HTTP_2,
                "http://a.caas.local/",
                &["b.caas.local"],
                Err("invalid_host"),
            ),
            (V::HTTP_2, "/", &["a.caas.local"], Ok("a.caas.local")),
            // RFC 9112 §3.2: no Host, several, or an invalid one is a 400.
            (V::HTTP_11, "/", &[], Err("missing_host")),
            (
                V::HTTP_11,
                "/",
                &["a.caas.local", "b.caas.local"],
                Err("invalid_host"),
            ),
            (
                V::HTTP_11,
                "/",
                &["a.caas.local", "a.caas.local"],
                Err("invalid_host"),
            ),
            (
                V::HTTP_11,
                "http://a.caas.local/",
                &["a", "b"],
                Err("invalid_host"),
            ),
            (V::HTTP_11, "/", &[""], Err("invalid_host")),
            (V::HTTP_11, "/", &["user@a.caas.local"], Err("invalid_host")),
            (V::HTTP_11, "/", &["a.caas.local/x"], Err("invalid_host")),
            (V::HTTP_11, "/", &["a b"], Err("invalid_host")),
            (
                V::HTTP_11,
                "/",
                &["a.caas.local:99999999"],
                Err("invalid_host"),
            ),
        ] {
            let got = authority_of(version, uri, hosts);
            assert_eq!(
                got.as_deref().map_err(|e| *e),
                want,
                "{version:?} {uri} {hosts:?}"
            );
        }
    }

    #[test]
    fn arbitrary_host_values_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            const CHARS: &[u8] = b"a.:@[]-_0912 /%\x7f\xff";
            let bytes: Vec<u8> = (0..len)
                .map(|i| CHARS[((seed >> (i % 56)) % CHARS.len() as u64) as usize])
                .collect();
            let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                continue;
            };
            let mut req = Request::new(());
            req.headers_mut().insert(HOST, value);
            let (parts, ()) = req.into_parts();
            if let Ok(a) = Authority::of(&parts) {
                assert!(!a.as_str().is_empty(), "{bytes:?}");
                // Never looser than the http crate's own authority parser.
                assert!(UriAuthority::try_from(&bytes[..]).is_ok(), "{bytes:?}");
            }
        }
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_vouches() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (peer, xff, want) in [
            // Untrusted peers are taken as they are, whatever they claim.
            ("192.0.2.7", &["1.2.3.4"][..], "192.0.2.7"),
            // A trusted proxy: the nearest untrusted address.
            ("10.0.0.1", &["1.2.3.4"], "1.2.3.4"),
            ("10.0.0.1", &["6.6.6.6, 1.2.3.4, 10.0.0.9"], "1.2.3.4"),
            ("10.0.0.1", &["6.6.6.6", "1.2.3.4, 10.0.0.9"], "1.2.3.4"),
            ("::ffff:10.0.0.1", &["1.2.3.4"], "1.2.3.4"),
            ("::1", &["2001:db8::5"], "2001:db8::5"),
            // Nothing but trusted hops: the farthest one.
            ("10.0.0.1", &["10.0.0.3, 10.0.0.2"], "10.0.0.3"),
            // No field: the peer itself.
            ("10.0.0.1", &[], "10.0.0.1"),
            // Garbage stops the walk at the last trusted hop.
            ("10.0.0.1", &["1.2.3.4, junk, 10.0.0.2"], "10.0.0.2"),
            ("10.0.0.1", &["unknown"], "10.0.0.1"),
        ] {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append(X_FORWARDED_FOR.clone(), HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(
                client_ip(ip(peer), &h, &trusted),
                ip(want),
                "{peer} {xff:?}"
            );
        }
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR.clone(), HeaderValue::from_static("1.2.3.4"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &[]),
            ip("10.0.0.1"),
            "nothing trusted"
        );
    }

    #[test]
    fn only_a_trusted_proxy_can_say_the_client_used_https() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (peer, xfp, want) in [
            ("10.0.0.1", &["https"][..], true),
            ("10.0.0.1", &["HTTPS "], true),
            ("::ffff:10.0.0.1", &["https"], true),
            ("10.0.0.1", &["http"], false),
            ("10.0.0.1", &[], false),
            // The nearest proxy's word is the last value.
            ("10.0.0.1", &["http, https"], true),
            ("10.0.0.1", &["https", "http"], false),
            ("10.0.0.1", &["https, http"], false),
            // Anyone else: ignored.
            ("192.0.2.7", &["https"], false),
        ] {
            let mut h = HeaderMap::new();
            for v in xfp {
                h.append(X_FORWARDED_PROTO.clone(), HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(
                forwarded_https(ip(peer), &h, &trusted),
                want,
                "{peer} {xfp:?}"
            );
        }
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        assert!(!forwarded_https(ip("10.0.0.1"), &h, &[]), "nothing trusted");
    }
}
