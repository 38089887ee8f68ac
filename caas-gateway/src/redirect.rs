//! `https_redirect`: a plain-HTTP request for an app that asks for HTTPS is answered with a
//! 308 Permanent Redirect to the same URL on the gateway's TLS port. 308 rather than 301:
//! the client repeats the same method and body (RFC 9110 §15.4.9).
//!
//! The Location is built from the request's [`Authority`], the one name the request is
//! for (never from another header), with its port replaced by the TLS port. The app's
//! blacklists apply first: a refused client gets its 403 here as over HTTPS.

use std::time::Instant;

use caas_core::{AppRoute, RouteTable};
use http::header::{CONTENT_LENGTH, LOCATION};
use http::{HeaderValue, Response, StatusCode, request};

use crate::body::ProxyBody;
use crate::conn::Shared;
use crate::headers::Authority;

/// `X-Forwarded-Proto` of a request that came over HTTPS (here or at a trusted proxy).
pub(crate) static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// The app of a plain request whose app wants HTTPS; `None` to serve it as usual (it came
/// over HTTPS, no app asks for HTTPS, or not this one). Costs plain requests one branch
/// while no app sets `https_redirect`.
#[inline]
pub(crate) fn wanted<'t>(
    https: bool,
    table: &'t RouteTable,
    authority: &Authority,
) -> Option<&'t AppRoute> {
    if https || !table.any_https_redirect() {
        return None;
    }
    let app = table.lookup(authority.as_str())?.app();
    app.https_redirect().then_some(app)
}

/// The 308 to the same URL on the gateway's TLS port, counted for `app`; `None` when no
/// valid URL comes out (not for an authority that passed `headers::Authority`).
pub(crate) fn to_https(
    shared: &Shared,
    app: &AppRoute,
    authority: &Authority,
    parts: &request::Parts,
    started: Instant,
) -> Option<Response<ProxyBody>> {
    let path = parts.uri.path_and_query().map(|p| p.as_str());
    let location = https_location(authority.as_str(), shared.config.https_port, path)?;
    app.state()
        .stats
        .record_response(StatusCode::PERMANENT_REDIRECT.as_u16(), started.elapsed());
    shared
        .stats
        .https_redirects
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(LOCATION, location);
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    Some(resp)
}

/// `https://{host}[:{port}]{path}`: the authority's host (an IPv6 literal kept in
/// brackets), the TLS port unless it is 443 (or unknown), the request's path and query
/// (`/` for a request without one, such as `OPTIONS *`).
pub(crate) fn https_location(
    authority: &str,
    https_port: Option<u16>,
    path_and_query: Option<&str>,
) -> Option<HeaderValue> {
    let host = if authority.starts_with('[') {
        &authority[..=authority.find(']')?]
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let path = path_and_query.filter(|p| p.starts_with('/')).unwrap_or("/");
    let location = match https_port {
        Some(port) if port != 443 => format!("https://{host}:{port}{path}"),
        _ => format!("https://{host}{path}"),
    };
    HeaderValue::from_str(&location).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_keeps_host_path_and_query_and_takes_the_tls_port() {
        for (authority, port, path, want) in [
            (
                "a.caas.local",
                Some(8443),
                Some("/x?y=1"),
                "https://a.caas.local:8443/x?y=1",
            ),
            (
                "a.caas.local:8080",
                Some(8443),
                Some("/"),
                "https://a.caas.local:8443/",
            ),
            (
                "A.Caas.Local:8080",
                Some(443),
                Some("/p"),
                "https://A.Caas.Local/p",
            ),
            (
                "a.caas.local:8080",
                None,
                Some("/p"),
                "https://a.caas.local/p",
            ),
            (
                "www.hello.test",
                Some(8443),
                None,
                "https://www.hello.test:8443/",
            ),
            (
                "www.hello.test",
                Some(8443),
                Some("*"),
                "https://www.hello.test:8443/",
            ),
            (
                "[::1]:8080",
                Some(8443),
                Some("/v6"),
                "https://[::1]:8443/v6",
            ),
            ("[::1]", Some(443), Some("/v6"), "https://[::1]/v6"),
            (
                "127.0.0.1:80",
                Some(8443),
                Some("/%20a"),
                "https://127.0.0.1:8443/%20a",
            ),
        ] {
            let got = https_location(authority, port, path).unwrap();
            assert_eq!(got, want, "{authority} {port:?} {path:?}");
        }
        assert_eq!(https_location("[::1", Some(1), None), None);
    }
}
