//! HTTP plumbing of the API: the response body type, JSON answers, request bodies read with
//! a size limit and parsed strictly (the field at fault named), and a tiny HTTP/1.1 client
//! for the gateways' and agents' small endpoints on the cluster network.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Errors of a streamed response body.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every API response: small JSON, or a stream passed through (logs).
pub type ApiBody = UnsyncBoxBody<Bytes, BodyError>;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// A whole body.
pub fn full(data: impl Into<Bytes>) -> ApiBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ApiBody> {
    match serde_json::to_vec(value) {
        Ok(body) => with_json(status, body),
        Err(e) => error_response(&ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot encode the answer: {e}"),
        )),
    }
}

fn with_json(status: StatusCode, mut body: Vec<u8>) -> Response<ApiBody> {
    body.push(b'\n');
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The answer for an error (with `WWW-Authenticate: Bearer` on a 401).
pub fn error_response(e: &ApiError) -> Response<ApiBody> {
    let mut resp = with_json(e.status, e.to_json());
    if e.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"caas\""),
        );
    }
    resp
}

/// What a request body may be: hyper's `Incoming` from a socket, or any other body (a
/// `Full` in tests, a body from another server embedding the API).
pub trait RequestBody:
    http_body::Body<Data = Bytes, Error: Into<BodyError>> + Send + 'static
{
}

impl<B> RequestBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<BodyError>> + Send + 'static
{
}

/// Reads a request body of at most [`MAX_BODY`] bytes.
pub async fn read_body<B: RequestBody>(req: Request<B>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is over {MAX_BODY} bytes"),
        )),
        Err(e) => Err(ApiError::malformed(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

/// Parses a JSON body into `T` (whose structs deny unknown fields), naming the field at
/// fault: `unknown_field` for a key `T` does not have, `invalid_field` for a bad value,
/// `malformed_json` for what is not JSON at all. `prefix` is put before the field path
/// (`blacklist`, `weights`).
pub fn parse_json<T: DeserializeOwned>(body: &[u8], prefix: Option<&str>) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = match parsed {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() || inner.is_io() {
                return Err(ApiError::malformed(format!(
                    "the body is not valid JSON: {inner}"
                )));
            }
            let msg = inner.to_string();
            let join = |field: &str| match (prefix, field) {
                (Some(p), "." | "") => p.to_owned(),
                (Some(p), f) => format!("{p}.{f}"),
                (None, "." | "") => String::new(),
                (None, f) => f.to_owned(),
            };
            // Name the key itself (the path may end at its parent).
            let with_key = |key: &str| {
                if path == key || path.ends_with(&format!(".{key}")) {
                    path.clone()
                } else if path == "." {
                    key.to_owned()
                } else {
                    format!("{path}.{key}")
                }
            };
            if let Some(key) = between(&msg, "unknown field `", "`") {
                return Err(ApiError::unknown_field(join(&with_key(key)), msg));
            }
            if let Some(key) = between(&msg, "missing field `", "`") {
                return Err(ApiError::invalid(join(&with_key(key)), msg));
            }
            let field = join(&path);
            return Err(if field.is_empty() {
                ApiError::malformed(msg)
            } else {
                ApiError::invalid(field, msg)
            });
        }
    };
    de.end()
        .map_err(|e| ApiError::malformed(format!("trailing data after the JSON: {e}")))?;
    Ok(value)
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// Why a call to another component failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connect, send or read failed.
    #[error("{0}")]
    Io(String),
}

/// Sends `GET http://{addr}{path_and_query}` on a new connection; the response head within
/// `timeout`. The body is left to the caller (to collect or to stream).
pub async fn get(
    addr: &str,
    path_and_query: &str,
    timeout: Duration,
) -> Result<Response<Incoming>, ClientError> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| ClientError::Io(format!("connect {addr}: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Io(format!("{addr}: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "api client connection ended");
            }
        });
        let req = Request::get(path_and_query)
            .header(header::HOST, addr)
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| ClientError::Io(format!("{addr}{path_and_query}: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Io(format!("{addr}: {e}")))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

/// [`get`] and the whole body (at most [`MAX_BODY`] bytes), all within `timeout`.
pub async fn get_bytes(
    addr: &str,
    path_and_query: &str,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ClientError> {
    let whole = async {
        let resp = get(addr, path_and_query, timeout).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| ClientError::Io(format!("{addr}: reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, whole)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: u32,
        #[serde(default)]
        inner: Vec<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        b: u32,
    }

    #[test]
    fn parse_errors_name_the_field() {
        for (body, code, field) in [
            (&b"{"[..], "malformed_json", None),
            (b"{\"a\": 1} x", "malformed_json", None),
            (b"{\"a\": \"x\"}", "invalid_field", Some("p.a")),
            (b"{\"a\": 1, \"z\": 2}", "unknown_field", Some("p.z")),
            (b"{}", "invalid_field", Some("p.a")),
            (
                b"{\"a\": 1, \"inner\": [{\"b\": -1}]}",
                "invalid_field",
                Some("p.inner[0].b"),
            ),
            (
                b"{\"a\": 1, \"inner\": [{\"c\": 1}]}",
                "unknown_field",
                Some("p.inner[0].c"),
            ),
        ] {
            let e = parse_json::<T>(body, Some("p")).unwrap_err();
            assert_eq!((e.code, e.field.as_deref()), (code, field), "{body:?}: {e}");
        }
        let e = parse_json::<BTreeMap<String, u32>>(b"{\"v1\": -3}", Some("weights")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("weights.v1"));
    }
}
