//! Errors: what the gateway answers when it cannot proxy, and failures of the server itself.
//!
//! Every cause is one row of the [`ErrorCode`] table: one code, one status, one party to
//! blame. A [`ProxyError`] names its row in [`ProxyError::code`]; the client gets a short
//! JSON body naming the cause (`{"error":"unknown_host","status":404,...}`), and `/metrics`
//! counts each row under its code and party. Adding a cause is adding a row: the counters,
//! the metrics and the status follow from it.

use std::net::SocketAddr;
use std::time::Duration;

use caas_core::Blocked;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{ClientBodyError, ProxyBody};

/// Who caused a failure. Only [`Blame::Upstream`] failures count against an endpoint's
/// health; a client's mistake never ejects anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Blame {
    /// The client: a malformed, oversized, stalled or abandoned request, or one refused by
    /// the app's policy (blacklist, rate limit).
    Client,
    /// Routing state: no app for the host, or no endpoint to send to.
    Routing,
    /// The upstream: refused, reset, timed out or answered garbage.
    Upstream,
}

impl Blame {
    /// The label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Routing => "routing",
            Self::Upstream => "upstream",
        }
    }
}

/// Declares [`ErrorCode`] from one table, so the list, the codes, the statuses and the
/// parties cannot drift apart.
macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident => ($code:literal, $status:literal, $blame:ident), )*) => {
        /// The cause of an answer the gateway gave itself.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name, )*
        }

        impl ErrorCode {
            /// Every cause, in declaration order (`code as usize` is its index).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The stable machine-readable name (the JSON `error`, the `x-caas-error` header
            /// and the metrics label).
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$name => $code,)* }
            }

            /// The status code the client receives.
            pub fn status(self) -> StatusCode {
                let n = match self { $(ErrorCode::$name => $status,)* };
                StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }

            /// Who caused it.
            pub const fn blame(self) -> Blame {
                match self { $(ErrorCode::$name => Blame::$blame,)* }
            }
        }
    };
}

error_codes! {
    /// A request head that is not HTTP (refused by the parser before routing).
    MalformedRequest => ("malformed_request", 400, Client),
    /// A request target longer than the parser accepts.
    UriTooLong => ("uri_too_long", 414, Client),
    /// What the gateway does not do: a CONNECT (it proxies requests to apps and opens no
    /// tunnels to other hosts), a transfer coding other than chunked.
    NotImplemented => ("not_implemented", 501, Client),
    /// No `Host` (or `:authority`).
    MissingHost => ("missing_host", 400, Client),
    /// Several `Host` fields, an unparsable one, or an HTTP/2 `Host` naming another
    /// authority than `:authority`.
    InvalidHost => ("invalid_host", 400, Client),
    /// A request head over `max_header_bytes` or `max_headers`.
    HeadersTooLarge => ("headers_too_large", 431, Client),
    /// The request body broke its framing (a malformed chunk, a length mismatch).
    BadRequestBody => ("bad_request_body", 400, Client),
    /// The client stopped sending its request body for the response timeout.
    ClientTimeout => ("client_timeout", 408, Client),
    /// The client went away before its request was complete or answered (never seen by
    /// it; counted, as nginx's 499).
    ClientClosed => ("client_closed", 499, Client),
    /// The request matched the gateway's or the app's blacklist.
    Blacklisted => ("blacklisted", 403, Client),
    /// Over the app's rate limit.
    RateLimited => ("rate_limited", 429, Client),
    /// No app is bound to the host.
    UnknownHost => ("unknown_host", 404, Routing),
    /// The app has no endpoint that can take the request.
    NoEndpoint => ("no_healthy_endpoint", 503, Routing),
    /// The app has `max_in_flight` requests in flight already.
    AppOverloaded => ("app_overloaded", 503, Routing),
    /// Connecting to the upstream failed (after the retry).
    UpstreamConnect => ("upstream_connect_failed", 502, Upstream),
    /// The upstream closed, reset or answered garbage before a complete response head.
    UpstreamReset => ("upstream_reset", 502, Upstream),
    /// No response head within the response timeout.
    UpstreamTimeout => ("upstream_timeout", 504, Upstream),
}

impl ErrorCode {
    /// How many causes there are.
    pub const COUNT: usize = Self::ALL.len();
}

/// Why a request was answered by the gateway instead of an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request had no `Host` (or `:authority`).
    #[error("request has no Host header")]
    MissingHost,
    /// The request's authority is ambiguous or unparsable.
    #[error("invalid Host: {0}")]
    InvalidHost(&'static str),
    /// The request head is larger than `limits.max_header_bytes` or has too many headers.
    #[error("request headers too large: {0}")]
    HeadersTooLarge(&'static str),
    /// The request asks for something the gateway does not do (a CONNECT).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// The client's request body broke its framing.
    #[error("malformed request body: {0}")]
    BadRequestBody(String),
    /// The client stopped sending its request body.
    #[error("the request body stalled for {timeout_ms} ms")]
    ClientTimeout {
        /// The timeout that ran out.
        timeout_ms: u64,
    },
    /// The client went away mid-request.
    #[error("the client closed the connection mid-request: {0}")]
    ClientClosed(String),
    /// No app is bound to the host.
    #[error("no app is bound to this host")]
    UnknownHost,
    /// The request matched a blacklist rule.
    #[error("refused by the blacklist ({0})")]
    Blacklisted(Blocked),
    /// A rate limit of the app is exceeded.
    #[error("rate limit exceeded for this app")]
    RateLimited {
        /// When the next request would be admitted.
        retry_after: Duration,
    },
    /// The app exists but has no endpoint that can take the request.
    #[error("app has no healthy endpoint")]
    NoEndpoint,
    /// The app has `max_in_flight` requests in flight already.
    #[error("app has too many requests in flight")]
    AppOverloaded,
    /// Connecting to the upstream failed (after the retry).
    #[error("cannot connect to upstream {addr}: {reason}")]
    Connect {
        /// The endpoint last tried.
        addr: SocketAddr,
        /// Refused, timed out, ...
        reason: String,
    },
    /// The upstream closed, reset or answered garbage before a complete response head.
    #[error("upstream {addr} failed: {reason}")]
    Upstream {
        /// The endpoint.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The upstream did not send a response head in time.
    #[error("upstream {addr} did not answer within {timeout_ms} ms")]
    Timeout {
        /// The endpoint.
        addr: SocketAddr,
        /// The configured response timeout.
        timeout_ms: u64,
    },
}

impl ProxyError {
    /// The row of the [`ErrorCode`] table this error is.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::MissingHost => ErrorCode::MissingHost,
            Self::InvalidHost(_) => ErrorCode::InvalidHost,
            Self::HeadersTooLarge(_) => ErrorCode::HeadersTooLarge,
            Self::NotImplemented(_) => ErrorCode::NotImplemented,
            Self::BadRequestBody(_) => ErrorCode::BadRequestBody,
            Self::ClientTimeout { .. } => ErrorCode::ClientTimeout,
            Self::ClientClosed(_) => ErrorCode::ClientClosed,
            Self::UnknownHost => ErrorCode::UnknownHost,
            Self::Blacklisted(_) => ErrorCode::Blacklisted,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::NoEndpoint => ErrorCode::NoEndpoint,
            Self::AppOverloaded => ErrorCode::AppOverloaded,
            Self::Connect { .. } => ErrorCode::UpstreamConnect,
            Self::Upstream { .. } => ErrorCode::UpstreamReset,
            Self::Timeout { .. } => ErrorCode::UpstreamTimeout,
        }
    }

    /// The upstream endpoint that failed, for the upstream's own failures.
    pub fn upstream_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Connect { addr, .. }
            | Self::Upstream { addr, .. }
            | Self::Timeout { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    /// The status code the client receives.
    pub fn status(&self) -> StatusCode {
        self.code().status()
    }

    /// Who caused it.
    pub fn blame(&self) -> Blame {
        self.code().blame()
    }

    /// The response sent to the client.
    pub fn into_response(self) -> Response<ProxyBody> {
        let code = self.code();
        let mut resp = Response::new(ProxyBody::full(json_body(code, &self.to_string())));
        *resp.status_mut() = code.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert("x-caas-error", HeaderValue::from_static(code.as_str()));
        if let Self::RateLimited { retry_after } = self {
            // Whole seconds, rounded up (RFC 9110 §10.2.3): never tell a client to retry
            // before it would be admitted.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

/// The JSON body of an error answer.
fn json_body(code: ErrorCode, message: &str) -> String {
    serde_json::json!({
        "error": code.as_str(),
        "status": code.status().as_u16(),
        "message": message,
    })
    .to_string()
}

impl ErrorCode {
    /// A whole HTTP/1.1 error response for this cause, `Connection: close`: what the server
    /// sends in place of the bare one hyper writes for a head it could not parse.
    pub(crate) fn http1_response(self, message: &str) -> Vec<u8> {
        let status = self.status();
        let body = json_body(self, message);
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nx-caas-error: {}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.as_str(),
            body.len(),
        )
        .into_bytes()
    }
}

impl From<ClientBodyError> for ProxyError {
    fn from(e: ClientBodyError) -> Self {
        match e {
            ClientBodyError::Malformed(m) => ProxyError::BadRequestBody(m),
            ClientBodyError::Closed(m) => ProxyError::ClientClosed(m),
        }
    }
}

/// Failures of the gateway server itself (not of one request).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration cannot work.
    #[error("invalid gateway config: {0}")]
    Config(String),
    /// Accepting connections failed for good.
    #[error("listener {addr:?} failed: {source}")]
    Listener {
        /// Local address of the listener, if known.
        addr: Option<SocketAddr>,
        /// The I/O error.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn the_table_is_consistent() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "{code:?}");
            assert_ne!(
                code.status(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "{code:?} has no valid status"
            );
            assert!(
                code.status().is_client_error() || code.status().is_server_error(),
                "{code:?}"
            );
            // The client's faults are 4xx (or 501: it asked for what the gateway does not
            // do), the upstream's 5xx.
            match code.blame() {
                Blame::Client => assert!(
                    code.status().is_client_error() || code.status() == StatusCode::NOT_IMPLEMENTED,
                    "{code:?}"
                ),
                Blame::Upstream => assert!(code.status().is_server_error(), "{code:?}"),
                Blame::Routing => {}
            }
            let same = ErrorCode::ALL
                .iter()
                .filter(|c| c.as_str() == code.as_str());
            assert_eq!(same.count(), 1, "{code:?}");
        }
    }

    #[test]
    fn the_parsers_answers_are_whole_json_responses() {
        let resp = ErrorCode::MalformedRequest.http1_response("invalid header");
        let text = String::from_utf8(resp).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "malformed_request");
        let text = String::from_utf8(ErrorCode::UriTooLong.http1_response("x")).unwrap();
        assert!(text.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{text}");
    }

    #[tokio::test]
    async fn each_error_has_one_status_and_a_json_body() {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let cases = [
            (ProxyError::UnknownHost, 404),
            (ProxyError::NoEndpoint, 503),
            (ProxyError::MissingHost, 400),
            (ProxyError::InvalidHost("two Host fields"), 400),
            (ProxyError::HeadersTooLarge("x"), 431),
            (ProxyError::NotImplemented("CONNECT"), 501),
            (ProxyError::BadRequestBody("bad chunk".into()), 400),
            (ProxyError::ClientTimeout { timeout_ms: 5 }, 408),
            (ProxyError::ClientClosed("eof".into()), 499),
            (ProxyError::Blacklisted(Blocked::Ip), 403),
            (
                ProxyError::RateLimited {
                    retry_after: Duration::from_millis(1500),
                },
                429,
            ),
            (ProxyError::AppOverloaded, 503),
            (
                ProxyError::Connect {
                    addr,
                    reason: "refused".into(),
                },
                502,
            ),
            (
                ProxyError::Upstream {
                    addr,
                    reason: "reset".into(),
                },
                502,
            ),
            (
                ProxyError::Timeout {
                    addr,
                    timeout_ms: 5,
                },
                504,
            ),
        ];
        // The parser's causes have no ProxyError: they are answered by `http1_response`.
        assert_eq!(cases.len(), ErrorCode::COUNT - 2, "a case per code");
        for (err, status) in cases {
            let code = err.code();
            let limited = matches!(err, ProxyError::RateLimited { .. });
            let resp = err.into_response();
            if limited {
                assert_eq!(resp.headers()["retry-after"], "2", "rounded up");
            }
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()["x-caas-error"], code.as_str());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"], code.as_str());
            assert_eq!(v["status"], status);
        }
    }
}
