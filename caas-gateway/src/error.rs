//! Errors: what the gateway answers when it cannot proxy, and failures of the server itself.
//!
//! Every cause is one row of the [`ErrorCode`] table: one code, one status, one party to
//! blame. A [`ProxyError`] names its row in [`ProxyError::code`]; the client gets a short
//! JSON body naming the cause (`{"error":"unknown_host","status":404,...}`), and `/metrics`
//! counts each row under its code and party. Adding a cause is adding a row: the counters,
//! the metrics and the status follow from it.

use std::net::SocketAddr;

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
    /// The client is on the app's blacklist.
    Blacklisted => ("blacklisted", 403, Client),
    /// Over the app's rate limit.
    RateLimited => ("rate_limited", 429, Client),
    /// No app is bound to the host.
    UnknownHost => ("unknown_host", 404, Routing),
    /// The app has no endpoint that can take the request.
    NoEndpoint => ("no_healthy_endpoint", 503, Routing),
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
    /// The client's address is on the app's blacklist.
    #[error("client address is blacklisted for this app")]
    Blacklisted,
    /// The app's rate limit is exceeded.
    #[error("rate limit exceeded for this app")]
    RateLimited,
    /// The app exists but has no endpoint that can take the request.
    #[error("app has no healthy endpoint")]
    NoEndpoint,
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
            Self::BadRequestBody(_) => ErrorCode::BadRequestBody,
            Self::ClientTimeout { .. } => ErrorCode::ClientTimeout,
            Self::ClientClosed(_) => ErrorCode::ClientClosed,
            Self::UnknownHost => ErrorCode::UnknownHost,
            Self::Blacklisted => ErrorCode::Blacklisted,
            Self::RateLimited => ErrorCode::RateLimited,
            Self::NoEndpoint => ErrorCode::NoEndpoint,
            Self::Connect { .. } => ErrorCode::UpstreamConnect,
            Self::Upstream { .. } => ErrorCode::UpstreamReset,
            Self::Timeout { .. } => ErrorCode::UpstreamTimeout,
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
        let status = code.status();
        let body = serde_json::json!({
            "error": code.as_str(),
            "status": status.as_u16(),
            "message": self.to_string(),
        })
        .to_string();
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert("x-caas-error", HeaderValue::from_static(code.as_str()));
        resp
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
            // The client's faults are 4xx, the upstream's 5xx.
            match code.blame() {
                Blame::Client => assert!(code.status().is_client_error(), "{code:?}"),
                Blame::Upstream => assert!(code.status().is_server_error(), "{code:?}"),
                Blame::Routing => {}
            }
            let same = ErrorCode::ALL
                .iter()
                .filter(|c| c.as_str() == code.as_str());
            assert_eq!(same.count(), 1, "{code:?}");
        }
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
            (ProxyError::BadRequestBody("bad chunk".into()), 400),
            (ProxyError::ClientTimeout { timeout_ms: 5 }, 408),
            (ProxyError::ClientClosed("eof".into()), 499),
            (ProxyError::Blacklisted, 403),
            (ProxyError::RateLimited, 429),
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
        assert_eq!(cases.len(), ErrorCode::COUNT, "a case per code");
        for (err, status) in cases {
            let code = err.code();
            let resp = err.into_response();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()["x-caas-error"], code.as_str());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"], code.as_str());
            assert_eq!(v["status"], status);
        }
    }
}
