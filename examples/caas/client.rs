//! The control API over HTTP/1.1: one connection per call (a CLI makes a handful), a bearer
//! token on every request, JSON in and out, and the failures a script can tell apart.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::exit::Failure;

/// How long connecting and each whole non-streaming call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the API is and who we are.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    /// `host:port` of the API.
    authority: String,
    /// The path prefix before `/v1` (empty for an API at the root).
    base: String,
    token: Option<String>,
}

impl Client {
    /// `api`: `http://host:port[/prefix]`.
    pub(crate) fn new(api: &str, token: Option<String>) -> Result<Self, Failure> {
        let uri: Uri = api
            .parse()
            .map_err(|e| Failure::usage(format!("--api {api}: not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(Failure::usage(format!(
                "--api {api}: only http:// is supported (put TLS in front with the gateway)"
            )));
        }
        let Some(authority) = uri.authority() else {
            return Err(Failure::usage(format!("--api {api}: no host")));
        };
        let authority = if authority.port().is_some() {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority,
            base: uri.path().trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Sends one request and returns the response with its body still streaming.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response<Incoming>, Failure> {
        let stream = tokio::time::timeout(CALL_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| Failure::unreachable(format!("{}: connect timed out", self.authority)))?
            .map_err(|e| Failure::unreachable(format!("{}: {e}", self.authority)))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::unreachable(format!("{}: {e}", self.authority)))?;
        tokio::spawn(async move {
            // The connection ends with the call; an error here is the call's own error.
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let bytes = match body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| Failure::internal(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| Failure::usage(format!("bad request to {path}: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| Failure::unreachable(format!("{}: {e}", self.authority)))
    }

    /// One call whose answer is JSON: `Ok` for a 2xx (`Value::Null` for an empty body), the
    /// API's error as a [`Failure`] otherwise.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let work = async {
            let resp = self.send(method, path, body).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Failure::unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, Failure>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, work)
            .await
            .map_err(|_| Failure::unreachable(format!("{path}: no answer within 30 s")))??;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            Ok(value)
        } else {
            Err(api_failure(status, &value))
        }
    }

    /// `GET` returning JSON.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::GET, path, None).await
    }
}

/// The API's error answer as a failure: its code, message and field, and the exit code its
/// status maps to.
pub(crate) fn api_failure(status: StatusCode, body: &Value) -> Failure {
    let code = body.get("error").and_then(Value::as_str).unwrap_or("error");
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    let text = match body.get("field").and_then(Value::as_str) {
        Some(f) => format!("{status} {code}: {f}: {message}"),
        None => format!("{status} {code}: {message}"),
    };
    Failure::from_status(status, text)
}

/// Percent-encodes one path segment (ids are plain, but a domain or a host id may not be).
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
