//! Errors: what the gateway answers when it cannot proxy, and failures of the server itself.
//!
//! Every [`ProxyError`] maps to exactly one status code in [`ProxyError::status`], and the
//! client gets a short JSON body naming the cause: `{"error":"unknown_host","status":404,...}`.

use std::net::SocketAddr;

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::ProxyBody;

/// Why a request was answered by the gateway instead of an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request had no usable `Host` (or `:authority`).
    #[error("request has no valid Host header")]
    MissingHost,
    /// The request head is larger than `limits.max_header_bytes` or has too many headers.
    #[error("request headers too large: {0}")]
    HeadersTooLarge(&'static str),
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
    /// The upstream closed or reset the connection before a complete response head.
    #[error("upstream {addr} failed: {reason}")]
    Upstream {
        /// The endpoint.
        addr: SocketAddr,
        /// What hyper reported.
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
    /// The status code the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingHost => StatusCode::BAD_REQUEST,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UnknownHost => StatusCode::NOT_FOUND,
            Self::Blacklisted => StatusCode::FORBIDDEN,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect { .. } | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A stable machine-readable name of the cause.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHost => "missing_host",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::UnknownHost => "unknown_host",
            Self::Blacklisted => "blacklisted",
            Self::RateLimited => "rate_limited",
            Self::NoEndpoint => "no_healthy_endpoint",
            Self::Connect { .. } => "upstream_connect_failed",
            Self::Upstream { .. } => "upstream_reset",
            Self::Timeout { .. } => "upstream_timeout",
        }
    }

    /// The response sent to the client.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let body = serde_json::json!({
            "error": self.code(),
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
            .insert("x-caas-error", HeaderValue::from_static(self.code()));
        resp
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

    #[tokio::test]
    async fn each_error_has_one_status_and_a_json_body() {
        let cases = [
            (ProxyError::UnknownHost, 404),
            (ProxyError::NoEndpoint, 503),
            (ProxyError::MissingHost, 400),
            (ProxyError::HeadersTooLarge("x"), 431),
            (ProxyError::Blacklisted, 403),
            (ProxyError::RateLimited, 429),
            (
                ProxyError::Timeout {
                    addr: ([127, 0, 0, 1], 1).into(),
                    timeout_ms: 5,
                },
                504,
            ),
        ];
        for (err, status) in cases {
            let code = err.code();
            let resp = err.into_response();
            assert_eq!(resp.status().as_u16(), status);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"], code);
            assert_eq!(v["status"], status);
        }
    }
}
