//! The HTTP/1.1 wire format on the upstream side: request heads out, response heads and body
//! framing in (RFC 9112). Pure functions over byte buffers; the I/O is in `upstream`.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version, request, response};

/// Most header fields accepted in a response head or a trailer section.
pub(crate) const MAX_RESPONSE_HEADERS: usize = 128;
/// Largest response head accepted (status line and fields).
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Largest chunk-size line (size, extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body is sent.
    Empty,
    /// As is: the client's `Content-Length` is forwarded.
    Length,
    /// Chunked: the body's length is not known in advance.
    Chunked,
}

/// Writes the request head: origin-form target, HTTP/1.1, the fields `write_fields` writes
/// (see [`write_field`]) and, for a body of unknown length, `Transfer-Encoding: chunked`.
///
/// A body with a `Content-Length` goes as that many bytes: `write_fields` must write that
/// field whatever else the request says (a `Connection` field naming it included), or the
/// upstream would read the body as the start of another request.
pub(crate) fn encode_request_head(
    parts: &request::Parts,
    has_body: bool,
    out: &mut Vec<u8>,
    write_fields: impl FnOnce(&mut Vec<u8>),
) -> RequestFraming {
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let target = if target.is_empty() { "/" } else { target };
    let fields: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    out.reserve(parts.method.as_str().len() + target.len() + fields + 160);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(out);
    let framing = if !has_body {
        RequestFraming::Empty
    } else if parts.headers.contains_key(CONTENT_LENGTH) {
        RequestFraming::Length
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        RequestFraming::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// Writes one `name: value` field line.
#[inline]
pub(crate) fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The framing of a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    /// No body (HEAD, 204, 304, or `Content-Length: 0`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) parts: response::Parts,
    pub(crate) framing: ResponseFraming,
    /// The connection may carry another request once this body is complete.
    pub(crate) keep_alive: bool,
}

/// Why a response head was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Not HTTP: a parse error from httparse.
    Invalid(String),
    /// Larger than [`MAX_RESPONSE_HEAD`] or with more than [`MAX_RESPONSE_HEADERS`] fields.
    TooLarge,
    /// Conflicting or unparsable `Content-Length`.
    BadLength,
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(e) => write!(f, "invalid response head: {e}"),
            Self::TooLarge => write!(f, "response head too large"),
            Self::BadLength => write!(f, "invalid Content-Length in response"),
        }
    }
}

/// Parses a response head from the start of `buf`. `Ok(None)`: incomplete, read more. On
/// success the head is consumed from `buf` and its field values share its memory (no copy).
/// Interim (1xx) responses other than 101 are skipped. Hop-by-hop fields (RFC 9110 §7.6.1:
/// `Connection` and the fields it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`) are read for framing and left out of the result; a 101
/// keeps `Upgrade` and gets `Connection: upgrade`.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
    request_method: &Method,
) -> Result<Option<ResponseHead>, HeadError> {
    loop {
        let mut fields =
            [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= MAX_RESPONSE_HEAD => len,
            Ok(httparse::Status::Complete(_)) => return Err(HeadError::TooLarge),
            Ok(httparse::Status::Partial) => {
                return if buf.len() >= MAX_RESPONSE_HEAD {
                    Err(HeadError::TooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Invalid(e.to_string())),
        };
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|e| HeadError::Invalid(e.to_string()))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints: the final response follows.
            buf.advance(len);
            continue;
        }
        let version = if res.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
        // Framing from the raw fields; the end-to-end ones are kept as offsets into `buf`,
        // so their values can be cut out of one frozen copy of the head.
        let base = buf.as_ptr() as usize;
        let mut frame = FramingFields::default();
        let mut kept = Vec::with_capacity(res.headers.len());
        for h in res.headers.iter() {
            let name = h.name.as_bytes();
            let hop = frame.note(name, h.value)?;
            if !hop || (upgrade && name.eq_ignore_ascii_case(b"upgrade")) {
                let n = h.name.as_ptr() as usize - base;
                let v = h.value.as_ptr() as usize - base;
                kept.push((n, n + name.len(), v, v + h.value.len()));
            }
        }
        let (framing, keep_alive) = frame.decide(status, version, request_method)?;
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(kept.len() + usize::from(upgrade));
        for (n0, n1, v0, v1) in kept {
            let name = HeaderName::from_bytes(&head[n0..n1])
                .map_err(|e| HeadError::Invalid(e.to_string()))?;
            if name == CONTENT_LENGTH && frame.transfer_encoding {
                // Transfer-Encoding wins; the length is not the body's.
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
                .map_err(|e| HeadError::Invalid(e.to_string()))?;
            headers.append(name, value);
        }
        for listed in &frame.connection_listed {
            headers.remove(listed.as_str());
        }
        if upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        return Ok(Some(ResponseHead {
            parts,
            framing,
            keep_alive,
        }));
    }
}

/// Whether a field name is hop-by-hop by definition (not counting those `Connection` names).
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// What the fields of a response head say about its framing.
#[derive(Debug, Default)]
struct FramingFields {
    close: bool,
    keep_alive: bool,
    transfer_encoding: bool,
    last_coding_chunked: bool,
    length: Option<u64>,
    /// Other names listed in `Connection`, lower-cased: hop-by-hop for this message.
    connection_listed: Vec<String>,
}

impl FramingFields {
    /// Notes one field; returns whether it is hop-by-hop.
    fn note(&mut self, name: &[u8], value: &[u8]) -> Result<bool, HeadError> {
        if name.eq_ignore_ascii_case(b"content-length") {
            let s = std::str::from_utf8(value).map_err(|_| HeadError::BadLength)?;
            for part in s.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HeadError::BadLength);
                }
                let n: u64 = part.parse().map_err(|_| HeadError::BadLength)?;
                if self.length.is_some_and(|l| l != n) {
                    return Err(HeadError::BadLength);
                }
                self.length = Some(n);
            }
            return Ok(false);
        }
        if !is_hop_by_hop(name) {
            return Ok(false);
        }
        let tokens = || {
            value
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|t| !t.is_empty())
        };
        if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens() {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if !is_hop_by_hop(token) {
                    if let Ok(t) = std::str::from_utf8(token) {
                        self.connection_listed.push(t.to_ascii_lowercase());
                    }
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            if let Some(last) = tokens().next_back() {
                self.last_coding_chunked = last.eq_ignore_ascii_case(b"chunked");
            }
        }
        Ok(true)
    }

    /// Body framing per RFC 9112 §6.3, and whether the connection stays open after it.
    fn decide(
        &self,
        status: StatusCode,
        version: Version,
        method: &Method,
    ) -> Result<(ResponseFraming, bool), HeadError> {
        let mut keep_alive = if version == Version::HTTP_11 {
            !self.close
        } else {
            self.keep_alive && !self.close
        };
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok((ResponseFraming::Empty, false));
        }
        if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok((ResponseFraming::Empty, keep_alive));
        }
        if self.transfer_encoding {
            // The last coding decides; chunked anywhere else, or not at all, means the body
            // runs until the connection closes. With Content-Length as well, the message is
            // suspect: use the connection once, never again.
            if self.length.is_some() {
                keep_alive = false;
            }
            return Ok(if self.last_coding_chunked {
                (ResponseFraming::Chunked, keep_alive)
            } else {
                (ResponseFraming::UntilClose, false)
            });
        }
        Ok(match self.length {
            Some(0) => (ResponseFraming::Empty, keep_alive),
            Some(n) => (ResponseFraming::Length(n), keep_alive),
            None => (ResponseFraming::UntilClose, false),
        })
    }
}

/// Where a chunked body decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// After a chunk's data, expecting CRLF.
    DataEnd,
    /// After the last chunk, expecting trailer fields and the final CRLF.
    Trailers,
}

/// One step of chunked decoding.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChunkStep {
    /// Body data.
    Data(Bytes),
    /// The body is complete; trailers when there were any.
    End(Option<HeaderMap>),
    /// `buf` holds too little to go on: read more.
    NeedMore,
}

/// A malformed chunked body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ChunkError(pub(crate) &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid chunked body: {}", self.0)
    }
}

impl Chunked {
    /// Decodes from `buf` until data, the end, or a need for more bytes. Lenient about line
    /// ends (a bare LF ends a line), as upstreams are read.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Result<ChunkStep, ChunkError> {
        self.step_with(buf, false)
    }

    /// As [`step`](Self::step), for a client's request body: every line of the framing must
    /// end with CRLF, so no two parsers can disagree where the body ends.
    pub(crate) fn step_strict(&mut self, buf: &mut BytesMut) -> Result<ChunkStep, ChunkError> {
        self.step_with(buf, true)
    }

    fn step_with(&mut self, buf: &mut BytesMut, strict: bool) -> Result<ChunkStep, ChunkError> {
        loop {
            match *self {
                Self::Size => {
                    let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                        return if buf.len() > MAX_CHUNK_LINE {
                            Err(ChunkError("chunk-size line too long"))
                        } else {
                            Ok(ChunkStep::NeedMore)
                        };
                    };
                    if eol > MAX_CHUNK_LINE {
                        return Err(ChunkError("chunk-size line too long"));
                    }
                    if strict && (eol == 0 || buf[eol - 1] != b'\r') {
                        return Err(ChunkError("chunk-size line without CRLF"));
                    }
                    let size = parse_chunk_size(&buf[..eol], strict)?;
                    buf.advance(eol + 1);
                    *self = if size == 0 {
                        Self::Trailers
                    } else {
                        Self::Data(size)
                    };
                }
                Self::Data(left) => {
                    if buf.is_empty() {
                        return Ok(ChunkStep::NeedMore);
                    }
                    let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    *self = if left == 0 {
                        Self::DataEnd
                    } else {
                        Self::Data(left)
                    };
                    return Ok(ChunkStep::Data(data));
                }
                Self::DataEnd => {
                    if strict && buf.first().is_some_and(|&b| b != b'\r') {
                        return Err(ChunkError("missing CRLF after chunk data"));
                    }
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r' && b != b'\n') {
                            return Err(ChunkError("missing CRLF after chunk data"));
                        }
                        if buf.first() == Some(&b'\n') {
                            buf.advance(1);
                            *self = Self::Size;
                            continue;
                        }
                        return Ok(ChunkStep::NeedMore);
                    }
                    match &buf[..2] {
                        b"\r\n" => buf.advance(2),
                        [b'\n', _] => buf.advance(1),
                        _ => return Err(ChunkError("missing CRLF after chunk data")),
                    }
                    *self = Self::Size;
                }
                Self::Trailers => {
                    if strict && buf.first() == Some(&b'\n') {
                        return Err(ChunkError("trailer section without CRLF"));
                    }
                    if buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
                        buf.advance(if buf[0] == b'\r' { 2 } else { 1 });
                        return Ok(ChunkStep::End(None));
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, _)))
                            if strict && bare_lf(&buf[..len]) =>
                        {
                            return Err(ChunkError("trailer section without CRLF"));
                        }
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                let name = HeaderName::from_bytes(f.name.as_bytes())
                                    .map_err(|_| ChunkError("invalid trailer name"))?;
                                let value = HeaderValue::from_bytes(f.value)
                                    .map_err(|_| ChunkError("invalid trailer value"))?;
                                trailers.append(name, value);
                            }
                            buf.advance(len);
                            return Ok(ChunkStep::End(Some(trailers)));
                        }
                        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {
                            return Ok(ChunkStep::NeedMore);
                        }
                        Ok(httparse::Status::Partial) => {
                            return Err(ChunkError("trailer section too large"));
                        }
                        Err(_) => return Err(ChunkError("invalid trailer section")),
                    }
                }
            }
        }
    }
}

/// Whether a line in `bytes` ends with a bare LF (no CR before it).
fn bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

/// `1a2b[;ext...][\r]` → 0x1a2b. `strict` (a client's body): after the size only
/// whitespace before a `;` and its extensions, which hold no control character; upstreams
/// are read leniently, whatever follows the size.
fn parse_chunk_size(line: &[u8], strict: bool) -> Result<u64, ChunkError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let end = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    if strict && !rest.is_empty() {
        let blank = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        let ext = &rest[blank..];
        if !ext.starts_with(b";") {
            return Err(ChunkError("invalid chunk size"));
        }
        if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(ChunkError("a control character in a chunk extension"));
        }
    }
    if digits.is_empty() || digits.len() > 16 {
        return Err(ChunkError("invalid chunk size"));
    }
    let mut size = 0u64;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(ChunkError("invalid chunk size")),
        };
        size = (size << 4) | u64::from(d);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: Method) -> Result<Option<ResponseHead>, HeadError> {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse_response_head(&mut buf, &method)
    }

    /// The head of `req` with its fields as they are.
    fn encoded(req: http::Request<()>, has_body: bool) -> (String, RequestFraming) {
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        let framing = encode_request_head(&parts, has_body, &mut out, |out| {
            for (k, v) in &parts.headers {
                write_field(out, k.as_str().as_bytes(), v.as_bytes());
            }
        });
        (String::from_utf8(out).unwrap(), framing)
    }

    #[test]
    fn request_head_is_origin_form_http11_with_framing() {
        let req = http::Request::post("http://a.example/up?x=1")
            .header("host", "a.example")
            .header("x-one", "1")
            .body(())
            .unwrap();
        assert_eq!(
            encoded(req, true),
            (
                "POST /up?x=1 HTTP/1.1\r\nhost: a.example\r\nx-one: 1\r\ntransfer-encoding: chunked\r\n\r\n".to_string(),
                RequestFraming::Chunked
            )
        );
        let req = http::Request::get("/")
            .header("content-length", "0")
            .body(())
            .unwrap();
        assert_eq!(
            encoded(req, false),
            (
                "GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\n".to_string(),
                RequestFraming::Empty
            )
        );
    }

    #[test]
    fn response_framing_follows_rfc9112() {
        let cases: &[(&str, Method, ResponseFraming, bool)] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Method::GET,
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::HEAD,
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                Method::GET,
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET,
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Method::GET,
                ResponseFraming::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                Method::GET,
                ResponseFraming::Chunked,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Method::GET,
                ResponseFraming::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                Method::GET,
                ResponseFraming::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(1),
                true,
            ),
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                Method::GET,
                ResponseFraming::Empty,
                false,
            ),
        ];
        for (raw, method, framing, keep_alive) in cases {
            let h = head(raw, method.clone()).unwrap().unwrap();
            assert_eq!(h.framing, *framing, "{raw:?}");
            assert_eq!(h.keep_alive, *keep_alive, "{raw:?}");
        }
    }

    #[test]
    fn hop_by_hop_response_fields_are_left_out() {
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\n\
             X-Internal: 1\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nUpgrade: h2c\r\n\
             Trailer: X-Sum\r\nX-Kept: yes\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = h.parts.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["x-kept"],
            "chunked wins over (and drops) Content-Length"
        );
        assert_eq!(h.framing, ResponseFraming::Chunked);
        let h = head(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.parts.headers["upgrade"], "websocket");
        assert_eq!(h.parts.headers["connection"], "upgrade");
    }

    #[test]
    fn interim_responses_are_skipped_and_the_rest_stays_in_the_buffer() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 2\r\n\r\nokNEXT"[..],
        );
        let h = parse_response_head(&mut buf, &Method::POST)
            .unwrap()
            .unwrap();
        assert_eq!(h.parts.status, 201);
        assert_eq!(h.parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"okNEXT");
    }

    #[test]
    fn partial_invalid_and_oversized_heads() {
        assert!(
            head("HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            head("SSH-2.0-OpenSSH\r\n\r\n", Method::GET),
            Err(HeadError::Invalid(_))
        ));
        assert_eq!(
            head(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                Method::GET
            )
            .unwrap_err(),
            HeadError::BadLength
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", Method::GET).unwrap_err(),
            HeadError::BadLength
        );
        let big = format!(
            "HTTP/1.1 200 OK\r\nX: {}\r\n",
            "a".repeat(MAX_RESPONSE_HEAD)
        );
        assert_eq!(head(&big, Method::GET).unwrap_err(), HeadError::TooLarge);
        let many: String = (0..=MAX_RESPONSE_HEADERS)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect();
        assert_eq!(
            head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), Method::GET).unwrap_err(),
            HeadError::TooLarge
        );
    }

    fn decode_all(input: &[u8], piece: usize) -> Result<(Vec<u8>, Option<HeaderMap>), ChunkError> {
        decode_with(input, piece, false)
    }

    fn decode_with(
        mut input: &[u8],
        piece: usize,
        strict: bool,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), ChunkError> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        loop {
            match state.step_with(&mut buf, strict)? {
                ChunkStep::Data(d) => body.extend_from_slice(&d),
                ChunkStep::End(t) => return Ok((body, t)),
                ChunkStep::NeedMore => {
                    if input.is_empty() {
                        return Err(ChunkError("eof"));
                    }
                    let n = piece.min(input.len());
                    buf.extend_from_slice(&input[..n]);
                    input = &input[n..];
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Sum: 42\r\n\r\n";
        for piece in [1, 2, 3, 7, 64] {
            let (body, trailers) = decode_all(wire, piece).unwrap();
            assert_eq!(body, b"hello 0123456789", "piece {piece}");
            assert_eq!(trailers.unwrap()["x-sum"], "42");
        }
        let (body, trailers) = decode_all(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(body, b"abc");
        assert!(trailers.is_none());
    }

    /// Upstream bytes are untrusted: no input may panic the parsers, whatever it is and
    /// wherever reads cut it.
    #[test]
    fn arbitrary_upstream_bytes_never_panic() {
        let seeds: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: a, b, close\r\n\r\nhello",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
            b"HTTP/1.0 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nTransfer-Encoding: ,,\r\n\r\n",
            b"5\r\nhello\r\nffffffffffffffff\r\n0;x\r\nT: 1\r\n\r\n",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..(next() % 6) {
                let i = usize::try_from(next()).unwrap() % input.len().max(1);
                match next() % 4 {
                    0 => input.truncate(i),
                    1 => input.insert(i, (next() % 256) as u8),
                    2 if !input.is_empty() => input[i] = b"\r\n:, 0;fHT"[(next() % 10) as usize],
                    _ => input.extend_from_within(..i),
                }
            }
            let mut buf = BytesMut::from(&input[..]);
            let _ = parse_response_head(&mut buf, &Method::GET);
            let mut state = Chunked::Size;
            let mut buf = BytesMut::from(&input[..]);
            for _ in 0..64 {
                match state.step(&mut buf) {
                    Ok(ChunkStep::Data(_)) => {}
                    _ => break,
                }
            }
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        assert!(decode_all(b"zz\r\nabc\r\n0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"3\r\nabcX\r\n0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"11111111111111111\r\n", 64).is_err());
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE + 1));
        assert!(decode_all(long.as_bytes(), 64).is_err());
        // Too long also when the whole line arrives in one read.
        let long = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE + 1));
        assert!(decode_all(long.as_bytes(), long.len()).is_err());
    }

    /// A client's chunked body leaves no two parsers room to disagree on where it ends:
    /// nothing after a chunk size but extensions, no control bytes in them, CRLF on every
    /// line of the trailer section too.
    #[test]
    fn strict_chunked_framing_refuses_what_lenient_reading_lets_pass() {
        let ok = b"5 ;a=1\r\nhello\r\n1;b=\"x y\"\r\n!\r\n0\r\nX-Sum: 1\r\n\r\n";
        for piece in [1, 3, 64] {
            let (body, trailers) = decode_with(ok, piece, true).unwrap();
            assert_eq!(body, b"hello!");
            assert_eq!(trailers.unwrap()["x-sum"], "1");
        }
        for (what, wire) in [
            ("text after the size", &b"5 xyz\r\nhello\r\n0\r\n\r\n"[..]),
            (
                "a tab and text after the size",
                b"5\tjunk\r\nhello\r\n0\r\n\r\n",
            ),
            ("a bare CR in an extension", b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
            ("a NUL in an extension", b"5;a\0\r\nhello\r\n0\r\n\r\n"),
            ("a bare LF ending the trailers", b"0\r\nX: 1\n\n"),
            ("a bare LF inside the trailers", b"0\r\nX: 1\nY: 2\r\n\r\n"),
        ] {
            for piece in [1, 64] {
                assert!(
                    decode_with(wire, piece, true).is_err(),
                    "{what}, reads of {piece}"
                );
            }
            // Read from an upstream, the same bytes go through (the gateway re-frames
            // them for the client).
            assert!(decode_with(wire, 64, false).is_ok(), "{what}, leniently");
        }
    }
}
