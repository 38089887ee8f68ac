//! The HTTP/1.1 wire format on the client side: request heads in, response heads out
//! (RFC 9112). Pure functions over byte buffers; the I/O is the driver's.
//!
//! Heads are read and written as hyper's HTTP/1 server does (the same limits, the same
//! answers, the same fields added to responses), with one defence more: a request with both
//! `Transfer-Encoding` and `Content-Length` is refused, not reinterpreted.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version, request, response};

use crate::error::ErrorCode;

/// Longest request target accepted (hyper's bound).
const MAX_URI_LEN: usize = u16::MAX as usize - 1;
/// Header fields parsed on the stack; more take a heap array.
const STACK_FIELDS: usize = 128;

/// The limits of a request head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    /// Most bytes buffered for an incomplete head.
    pub(crate) max_bytes: usize,
    /// Most header fields.
    pub(crate) max_fields: usize,
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes (more than zero).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A parsed request head and what it says about the connection.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub(crate) parts: request::Parts,
    pub(crate) framing: BodyFraming,
    /// The client allows another request after this one.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue` on a request with a body.
    pub(crate) expect_continue: bool,
    /// An HTTP/1.1 `Upgrade` (or `CONNECT`).
    pub(crate) upgrade: bool,
}

/// Why a request head was refused: the answer's cause and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadError {
    pub(crate) code: ErrorCode,
    pub(crate) message: &'static str,
}

impl HeadError {
    const fn malformed(message: &'static str) -> Self {
        Self {
            code: ErrorCode::MalformedRequest,
            message,
        }
    }
    const TOO_LARGE: Self = Self {
        code: ErrorCode::HeadersTooLarge,
        message: "the request head is larger than the gateway accepts",
    };
    const URI_TOO_LONG: Self = Self {
        code: ErrorCode::UriTooLong,
        message: "the request target is longer than the gateway accepts",
    };
    const INVALID: Self = Self::malformed("the request head is not valid HTTP/1.1");
}

/// Parses a request head from the start of `buf`. `Ok(None)`: incomplete, read more. On
/// success the head is consumed from `buf`; the target and field values share its memory.
pub(crate) fn parse_request_head(
    buf: &mut BytesMut,
    limits: HeadLimits,
) -> Result<Option<RequestHead>, HeadError> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    let mut heap;
    let fields: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_fields <= STACK_FIELDS {
        &mut stack[..limits.max_fields]
    } else {
        heap = Vec::with_capacity(limits.max_fields);
        heap.resize_with(limits.max_fields, MaybeUninit::uninit);
        &mut heap[..]
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, fields)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() < limits.max_bytes {
                return Ok(None);
            }
            // Still inside the request line: it is the target that is too long.
            return Err(if buf.contains(&b'\n') {
                HeadError::TOO_LARGE
            } else {
                HeadError::URI_TOO_LONG
            });
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TOO_LARGE),
        Err(_) => return Err(HeadError::INVALID),
    };
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::INVALID);
    };
    if path.len() > MAX_URI_LEN {
        return Err(HeadError::URI_TOO_LONG);
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::INVALID)?;
    let base = buf.as_ptr() as usize;
    let path_at = path.as_ptr() as usize - base;
    let path_range = path_at..path_at + path.len();
    let http11 = minor == 1;
    // Field positions, so names and values can be cut out of one frozen copy of the head.
    let spans: Vec<(usize, usize, usize, usize)> = req
        .headers
        .iter()
        .map(|h| {
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            (n, n + h.name.len(), v, v + h.value.len())
        })
        .collect();
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_range)).map_err(|_| HeadError::INVALID)?;

    let mut keep_alive = http11;
    let mut saw_close = false;
    let mut expect_continue = false;
    let mut upgrade = method == Method::CONNECT;
    let mut length: Option<u64> = None;
    let mut te = false;
    let mut te_chunked = false;
    let mut te_codings = 0usize;
    let mut te_chunks = 0usize;
    // `http`'s map holds at most 24,576 fields: a head with more is refused, whatever the
    // configured limit (`with_capacity` would panic).
    let mut headers =
        HeaderMap::try_with_capacity(spans.len()).map_err(|_| HeadError::TOO_LARGE)?;
    for (n0, n1, v0, v1) in spans {
        let name = HeaderName::from_bytes(&head[n0..n1]).map_err(|_| HeadError::INVALID)?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(v0..v1)).map_err(|_| HeadError::INVALID)?;
        match name {
            header::TRANSFER_ENCODING => {
                if !http11 {
                    return Err(HeadError::malformed(
                        "Transfer-Encoding in an HTTP/1.0 request",
                    ));
                }
                te = true;
                te_chunked = last_token_is(&value, b"chunked");
                for t in tokens(&value) {
                    te_codings += 1;
                    te_chunks += usize::from(t.eq_ignore_ascii_case(b"chunked"));
                }
            }
            header::CONTENT_LENGTH => {
                let n = parse_length(value.as_bytes())
                    .ok_or(HeadError::malformed("invalid Content-Length"))?;
                match length {
                    Some(prev) if prev != n => {
                        return Err(HeadError::malformed("conflicting Content-Length fields"));
                    }
                    // The same length again says nothing new.
                    Some(_) => continue,
                    None => length = Some(n),
                }
            }
            header::CONNECTION => {
                if saw_close || has_token(&value, b"close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(&value, b"keep-alive");
                }
            }
            header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            header::UPGRADE => upgrade = http11,
            _ => {}
        }
        headers.append(name, value);
    }
    let framing = if te {
        if !te_chunked {
            return Err(HeadError::malformed(
                "Transfer-Encoding does not end with chunked",
            ));
        }
        if te_chunks > 1 {
            return Err(HeadError::malformed("chunked applied more than once"));
        }
        if te_codings > 1 {
            // The gateway decodes chunked only: forwarded as chunked, a body sent gzip-coded
            // would reach the upstream as if it were the content itself. RFC 9112 §6.1: a
            // coding the server does not understand is a 501.
            return Err(HeadError {
                code: ErrorCode::NotImplemented,
                message: "a transfer coding other than chunked, which the gateway does not decode",
            });
        }
        if length.is_some() {
            // Two framings: whichever one a peer picked, the other could smuggle a request.
            return Err(HeadError::malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        BodyFraming::Chunked
    } else {
        match length {
            None | Some(0) => BodyFraming::Empty,
            Some(n) => BodyFraming::Length(n),
        }
    };
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        expect_continue: expect_continue && framing != BodyFraming::Empty && http11,
        framing,
        keep_alive,
        upgrade,
    }))
}

/// Writes `content-length: n`.
fn length_line(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    write_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Writes `n` in decimal.
fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A `Content-Length` value: digits only.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn tokens(value: &HeaderValue) -> impl DoubleEndedIterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

fn has_token(value: &HeaderValue, token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

fn last_token_is(value: &HeaderValue, token: &[u8]) -> bool {
    tokens(value)
        .next_back()
        .is_some_and(|t| t.eq_ignore_ascii_case(token))
}

/// The length of a response body as its [`http_body::Body`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyLength {
    /// No body at all (it is at its end already).
    None,
    Known(u64),
    Unknown,
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoder {
    /// Exactly this many bytes (0: nothing is written).
    Length(u64),
    Chunked,
    /// Until the connection closes.
    CloseDelimited,
}

/// What the request said that shapes its response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponseContext<'a> {
    pub(crate) method: &'a Method,
    pub(crate) version: Version,
}

/// Writes a response head to `out` (status line, fields, `Content-Length` or
/// `Transfer-Encoding` for `body`, `Date`), fixing up `Connection` for the client's version
/// and `keep_alive`. Returns the body's encoder and whether the connection closes after
/// this response. Errors name a response the gateway must not send (conflicting lengths).
pub(crate) fn encode_response_head(
    parts: &mut response::Parts,
    req: ResponseContext<'_>,
    body: BodyLength,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> Result<(Encoder, bool), &'static str> {
    let mut keep_alive = keep_alive;
    let connection_has = |h: &HeaderMap, t: &[u8]| {
        h.get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, t))
    };
    if req.version == Version::HTTP_10 {
        if !connection_has(&parts.headers, b"keep-alive") {
            if parts.version == Version::HTTP_10 {
                keep_alive = false;
            } else if keep_alive {
                parts
                    .headers
                    .append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
            }
        }
        parts.version = Version::HTTP_10;
    } else {
        // The gateway's own version, whatever the upstream's (RFC 9110 §6.2): an HTTP/1.0
        // upstream's answer reaches an HTTP/1.1 client as HTTP/1.1, chunked when it has no
        // length, on a connection that stays open.
        parts.version = Version::HTTP_11;
        if !keep_alive && !connection_has(&parts.headers, b"close") {
            parts
                .headers
                .append(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    let status = parts.status;
    let connect_ok = *req.method == Method::CONNECT && status.is_success();
    let mut wrote_len = false;
    let mut is_last = if status == StatusCode::SWITCHING_PROTOCOLS {
        true
    } else if connect_ok {
        wrote_len = true;
        true
    } else if status.is_informational() {
        return Err("an interim status as the final response");
    } else {
        !keep_alive
    };
    let http10 = parts.version == Version::HTTP_10;
    let can_chunk = !http10 && can_have_body(req.method, status);
    out.reserve(64 + parts.headers.len() * 32);
    if !http10 && status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut encoder = Encoder::Length(0);
    let mut wrote_date = false;
    // By field, with the values of a name together; a name with one value (nearly every
    // one) is not looked up again.
    let mut fields = parts.headers.iter().peekable();
    while let Some((name, first)) = fields.next() {
        let mut many = false;
        while fields.next_if(|(n, _)| *n == name).is_some() {
            many = true;
        }
        let values = if many {
            Values::Many(parts.headers.get_all(name))
        } else {
            Values::One(first)
        };
        match *name {
            header::CONTENT_LENGTH => {
                if wrote_len {
                    return Err("Content-Length after the body's framing was decided");
                }
                match body {
                    BodyLength::Known(n) => {
                        // The length the body will have, as a number: an upstream's
                        // `5, 5` (accepted as 5) goes out as `5`.
                        encoder = Encoder::Length(n);
                        length_line(out, n);
                    }
                    BodyLength::Unknown => {
                        let mut len = None;
                        for v in values.iter() {
                            let n = parse_length(v.as_bytes())
                                .ok_or("an invalid Content-Length in the response")?;
                            if len.is_some_and(|l| l != n) {
                                return Err("conflicting Content-Length values");
                            }
                            len = Some(n);
                        }
                        let Some(n) = len else { continue };
                        encoder = Encoder::Length(n);
                        length_line(out, n);
                    }
                    BodyLength::None => {
                        if *req.method != Method::HEAD {
                            continue;
                        }
                        for v in values.iter() {
                            line(out, b"content-length", v.as_bytes());
                        }
                    }
                }
                wrote_len = true;
                continue;
            }
            header::TRANSFER_ENCODING => {
                if wrote_len {
                    return Err("Transfer-Encoding after the body's framing was decided");
                }
                if !can_chunk {
                    continue;
                }
                wrote_len = true;
                encoder = Encoder::Chunked;
                let mut last = None;
                out.extend_from_slice(b"transfer-encoding: ");
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(v.as_bytes());
                    last = Some(v);
                }
                if !last.is_some_and(|v| last_token_is(v, b"chunked")) {
                    out.extend_from_slice(b", chunked");
                }
                out.extend_from_slice(b"\r\n");
                continue;
            }
            header::CONNECTION | header::TRAILER => {
                if *name == header::TRAILER && !can_chunk {
                    continue;
                }
                if *name == header::CONNECTION && values.iter().any(|v| has_token(v, b"close")) {
                    is_last = true;
                }
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(v.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                continue;
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        for v in values.iter() {
            line(out, name.as_str().as_bytes(), v.as_bytes());
        }
    }
    if !wrote_len {
        encoder = match body {
            BodyLength::Unknown if can_chunk => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Encoder::Chunked
            }
            BodyLength::Unknown => Encoder::CloseDelimited,
            BodyLength::None | BodyLength::Known(0) => {
                if can_have_length(req.method, status) && *req.method != Method::HEAD {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Encoder::Length(0)
            }
            BodyLength::Known(n) => {
                if can_have_length(req.method, status) {
                    length_line(out, n);
                    Encoder::Length(n)
                } else {
                    Encoder::Length(0)
                }
            }
        };
    }
    if !can_have_body(req.method, status) {
        encoder = Encoder::Length(0);
    }
    if encoder == Encoder::CloseDelimited {
        is_last = true;
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        super::date::extend(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok((encoder, is_last))
}

/// The values of one field name in a header map.
enum Values<'a> {
    One(&'a HeaderValue),
    Many(header::GetAll<'a, HeaderValue>),
}

impl<'a> Values<'a> {
    fn iter(&self) -> impl Iterator<Item = &'a HeaderValue> + use<'a> {
        let (one, many) = match self {
            Self::One(v) => (Some(*v), None),
            Self::Many(all) => (None, Some(all.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a response to `method` with `status` carries a body (RFC 9112 §6.3).
fn can_have_body(method: &Method, status: StatusCode) -> bool {
    !(*method == Method::HEAD
        || *method == Method::CONNECT && status.is_success()
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Whether a response to `method` with `status` may carry `Content-Length`.
fn can_have_length(method: &Method, status: StatusCode) -> bool {
    !(status.is_informational()
        || *method == Method::CONNECT && status.is_success()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Encodes one chunk's size line.
pub(crate) fn chunk_line(len: usize, out: &mut [u8; 18]) -> &[u8] {
    let mut at = out.len() - 2;
    out[at..].copy_from_slice(b"\r\n");
    let mut n = len;
    loop {
        at -= 1;
        out[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    &out[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 4096,
        max_fields: 8,
    };

    fn parse(raw: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        parse_request_head(&mut BytesMut::from(raw), LIMITS)
    }

    fn refused(raw: &[u8]) -> ErrorCode {
        match parse(raw) {
            Err(e) => e.code,
            Ok(h) => panic!("{:?} accepted: {h:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn heads_are_read_with_their_framing_and_the_rest_stays_buffered() {
        let mut buf = BytesMut::from(
            &b"\r\nPOST /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Dup: 1\r\nx-other: 2\r\nX-Dup: 3\r\n\
               Content-Length: 5\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhelloGET"[..],
        );
        let h = parse_request_head(&mut buf, LIMITS).unwrap().unwrap();
        assert_eq!(&buf[..], b"helloGET");
        assert_eq!(h.parts.method, Method::POST);
        assert_eq!(h.parts.uri, "/a?b=1");
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert!(h.keep_alive && h.expect_continue && !h.upgrade);
        let dups: Vec<_> = h.parts.headers.get_all("x-dup").iter().collect();
        assert_eq!(dups, ["1", "3"]);
        assert_eq!(h.parts.headers.get_all("content-length").iter().count(), 1);

        let h = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BodyFraming::Chunked);
        let h = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        assert_eq!(h.parts.version, Version::HTTP_10);
        let h = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse(b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive, "a close is not undone");
        let h = parse(b"GET /ws HTTP/1.1\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.upgrade);
        let h = parse(b"GET / HTTP/1.1\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BodyFraming::Empty);
        assert!(!h.expect_continue, "nothing to wait for");
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn more_fields_than_a_header_map_holds_are_refused_not_a_panic() {
        let limits = HeadLimits {
            max_bytes: 1 << 20,
            max_fields: 30_000,
        };
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..24_577 {
            raw.extend_from_slice(b"a:\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&raw[..]);
        let refused = parse_request_head(&mut buf, limits).err().map(|e| e.code);
        assert_eq!(refused, Some(ErrorCode::HeadersTooLarge));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            // Both framings: one peer's body end is another's next request.
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            // Chunked twice.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            // obs-fold, a space before the colon, a bare LF inside a field line.
            b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length : 3\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: 1\rX-B: 2\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"G\0T / HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                refused(raw),
                ErrorCode::MalformedRequest,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn codings_the_gateway_does_not_decode_are_501() {
        for raw in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n",
        ] {
            assert_eq!(
                refused(raw),
                ErrorCode::NotImplemented,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn oversized_heads_are_431_and_long_targets_414() {
        let many: String = (0..9).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(
            refused(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            ErrorCode::HeadersTooLarge
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(4096));
        assert_eq!(refused(big.as_bytes()), ErrorCode::HeadersTooLarge);
        let long = format!("GET /{}", "a".repeat(4096));
        assert_eq!(refused(long.as_bytes()), ErrorCode::UriTooLong);
    }

    fn encoded(
        status: u16,
        fields: &[(&'static str, &'static str)],
        method: Method,
        version: Version,
        body: BodyLength,
        keep_alive: bool,
    ) -> (String, Encoder, bool) {
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = StatusCode::from_u16(status).unwrap();
        for (n, v) in fields {
            parts.headers.append(*n, HeaderValue::from_static(v));
        }
        let mut out = Vec::new();
        let (enc, last) = encode_response_head(
            &mut parts,
            ResponseContext {
                method: &method,
                version,
            },
            body,
            keep_alive,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let date = text.find("date: ").unwrap();
        let text = format!("{}{}", &text[..date], &text[date + 37..]);
        (text, enc, last)
    }

    #[test]
    fn a_response_length_goes_out_as_the_number_the_body_has() {
        // An upstream's `5, 5` is accepted as 5: the client gets `5`, which every client
        // parses (some refuse a list).
        let (text, enc, _) = encoded(
            200,
            &[("content-length", "5, 5")],
            Method::GET,
            Version::HTTP_11,
            BodyLength::Known(5),
            true,
        );
        assert_eq!(text, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(enc, Encoder::Length(5));
    }

    #[test]
    fn response_heads_get_framing_connection_and_date() {
        let get = Method::GET;
        assert_eq!(
            encoded(
                200,
                &[("x-a", "1"), ("x-a", "2")],
                get.clone(),
                Version::HTTP_11,
                BodyLength::Known(3),
                true
            ),
            (
                "HTTP/1.1 200 OK\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 3\r\n\r\n".into(),
                Encoder::Length(3),
                false
            )
        );
        assert_eq!(
            encoded(
                404,
                &[],
                get.clone(),
                Version::HTTP_11,
                BodyLength::Unknown,
                false
            ),
            (
                "HTTP/1.1 404 Not Found\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
                    .into(),
                Encoder::Chunked,
                true
            )
        );
        assert_eq!(
            encoded(
                200,
                &[],
                get.clone(),
                Version::HTTP_10,
                BodyLength::Unknown,
                true
            ),
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\n".into(),
                Encoder::CloseDelimited,
                true
            )
        );
        assert_eq!(
            encoded(
                200,
                &[("content-length", "9")],
                Method::HEAD,
                Version::HTTP_11,
                BodyLength::None,
                true
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n".into(),
                Encoder::Length(0),
                false
            )
        );
        assert_eq!(
            encoded(
                204,
                &[],
                get.clone(),
                Version::HTTP_11,
                BodyLength::None,
                true
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n".into(),
                Encoder::Length(0),
                false
            )
        );
        assert_eq!(
            encoded(
                200,
                &[],
                get.clone(),
                Version::HTTP_11,
                BodyLength::None,
                true
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".into(),
                Encoder::Length(0),
                false
            )
        );
        assert_eq!(
            encoded(
                101,
                &[("upgrade", "x"), ("connection", "upgrade")],
                get,
                Version::HTTP_11,
                BodyLength::None,
                true
            ),
            (
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n"
                    .into(),
                Encoder::Length(0),
                true
            )
        );
    }

    #[test]
    fn chunk_lines_are_hex() {
        let mut b = [0u8; 18];
        assert_eq!(chunk_line(0x1a2b, &mut b), b"1a2b\r\n");
        assert_eq!(chunk_line(1, &mut b), b"1\r\n");
        assert_eq!(chunk_line(usize::MAX, &mut b), b"ffffffffffffffff\r\n");
    }
}
