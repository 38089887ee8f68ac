//! Minimal HTTP/1.x request parsing (std only).
//!
//! Everything here is pure (no I/O) so it can be unit tested; the socket
//! handling lives in `server.rs`. Every malformed input yields a
//! [`ParseError`], never a panic.

use std::fmt;

/// Largest request head (request line + header fields + blank line) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields accepted in one request.
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line / trailer line accepted in a chunked body.
pub const MAX_CHUNK_LINE: usize = 4096;

/// Why a request could not be parsed; maps to the status code we answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Malformed request: 400.
    Bad(&'static str),
    /// Head too large or too many header fields: 431.
    TooLarge,
    /// HTTP major version other than 1: 505.
    Version,
    /// A transfer coding we do not implement: 501.
    Unsupported(&'static str),
}

impl ParseError {
    /// The response status for this error.
    pub fn status(self) -> u16 {
        match self {
            ParseError::Bad(_) => 400,
            ParseError::TooLarge => 431,
            ParseError::Version => 505,
            ParseError::Unsupported(_) => 501,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Bad(why) => write!(f, "bad request: {why}"),
            ParseError::TooLarge => f.write_str("request header fields too large"),
            ParseError::Version => f.write_str("HTTP version not supported"),
            ParseError::Unsupported(what) => write!(f, "not implemented: {what}"),
        }
    }
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `Content-Length: n` (absent means 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method token, e.g. `GET` (case-sensitive, as sent).
    pub method: String,
    /// The request-target exactly as sent (for logging).
    pub target: String,
    /// Path part of the target, always starting with `/` (or `*`).
    pub path: String,
    /// Query string without the leading `?`, if any.
    pub query: Option<String>,
    /// HTTP/1.`minor_version` (0 or 1).
    pub minor_version: u8,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Body framing.
    pub body: BodyKind,
    /// Whether the connection may be reused after this request.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
}

impl Request {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `HTTP/1.0` or `HTTP/1.1`.
    pub fn version_str(&self) -> &'static str {
        if self.minor_version == 0 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        }
    }
}

/// Number of leading empty lines (`\r\n` or `\n`) to skip before a request
/// line (RFC 9112 §2.2 lets servers ignore them).
pub fn leading_blank_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        let rest = &buf[i..];
        if rest.starts_with(b"\r\n") {
            i += 2;
        } else if rest.starts_with(b"\n") {
            i += 1;
        } else {
            return i;
        }
    }
}

/// Length of the request head in `buf` including the terminating blank line,
/// or `None` if the head is not complete yet. Accepts CRLF and bare LF.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(off) = buf[from..].iter().position(|&b| b == b'\n') {
        let nl = from + off;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => from = nl + 1,
        }
    }
    None
}

/// Whether `b` is a `tchar` (RFC 9110 §5.6.2), the alphabet of methods and
/// header names.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Parses a complete request head (as delimited by [`find_head_end`]).
pub fn parse_head(head: &[u8]) -> Result<Request, ParseError> {
    if head.len() > MAX_HEAD_BYTES {
        return Err(ParseError::TooLarge);
    }
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let (method, target, minor_version) = parse_request_line(request_line)?;
    let (path, query) = split_target(&method, &target)?;

    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ParseError::TooLarge);
        }
        headers.push(parse_header_line(line)?);
    }

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<String> = None;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("content-length") {
            // A list of identical values ("5, 5") is tolerated (RFC 9110 §8.6).
            for part in value.split(',') {
                let n = parse_content_length(part.trim_matches([' ', '\t']))?;
                if content_length.is_some_and(|prev| prev != n) {
                    return Err(ParseError::Bad("conflicting Content-Length"));
                }
                content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let te = transfer_encoding.get_or_insert_with(String::new);
            if !te.is_empty() {
                te.push(',');
            }
            te.push_str(value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(|t| t.trim_matches([' ', '\t'])) {
                conn_close |= token.eq_ignore_ascii_case("close");
                conn_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue |= value.eq_ignore_ascii_case("100-continue");
        }
    }

    let body = match (transfer_encoding, content_length) {
        (Some(_), Some(_)) => {
            // Classic request-smuggling vector: refuse.
            return Err(ParseError::Bad("both Transfer-Encoding and Content-Length"));
        }
        (Some(te), None) => {
            let codings: Vec<&str> = te
                .split(',')
                .map(|t| t.trim_matches([' ', '\t']))
                .filter(|t| !t.is_empty())
                .collect();
            match codings.as_slice() {
                [only] if only.eq_ignore_ascii_case("chunked") => BodyKind::Chunked,
                _ => return Err(ParseError::Unsupported("transfer coding")),
            }
        }
        (None, n) => BodyKind::Length(n.unwrap_or(0)),
    };

    let keep_alive = !conn_close && (minor_version == 1 || conn_keep_alive);
    Ok(Request {
        method,
        target,
        path,
        query,
        minor_version,
        headers,
        body,
        keep_alive,
        expect_continue: expect_continue && minor_version == 1,
    })
}

fn parse_request_line(line: &[u8]) -> Result<(String, String, u8), ParseError> {
    let line =
        std::str::from_utf8(line).map_err(|_| ParseError::Bad("request line is not ASCII"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Bad("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(ParseError::Bad("invalid method"));
    }
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ParseError::Bad("invalid request target"));
    }
    let minor = parse_version(version)?;
    Ok((method.to_owned(), target.to_owned(), minor))
}

/// `HTTP/1.0` → 0, `HTTP/1.1` (or a later 1.x) → 1, other majors → 505.
pub fn parse_version(version: &str) -> Result<u8, ParseError> {
    let Some(rest) = version.strip_prefix("HTTP/") else {
        return Err(ParseError::Bad("invalid HTTP version"));
    };
    match rest.as_bytes() {
        [b'1', b'.', minor] if minor.is_ascii_digit() => Ok(u8::from(*minor != b'0')),
        [major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            Err(ParseError::Version)
        }
        _ => Err(ParseError::Bad("invalid HTTP version")),
    }
}

/// Splits a request-target into path and query. Accepts origin-form
/// (`/p?q`), absolute-form (`http://host/p?q`) and `*` for `OPTIONS`.
pub fn split_target(method: &str, target: &str) -> Result<(String, Option<String>), ParseError> {
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(("*".to_owned(), None))
        } else {
            Err(ParseError::Bad("'*' target is only valid for OPTIONS"))
        };
    }
    let origin = if target.starts_with('/') {
        target.to_owned()
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return Err(ParseError::Bad("unsupported request-target form"));
        };
        match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => rest[i..].to_owned(),
            Some(i) => format!("/{}", &rest[i..]),
            None => "/".to_owned(),
        }
    };
    Ok(match origin.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (origin, None),
    })
}

/// Parses one `name: value` field line.
pub fn parse_header_line(line: &[u8]) -> Result<(String, String), ParseError> {
    if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err(ParseError::Bad("obsolete header line folding"));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(ParseError::Bad("header line without ':'"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(ParseError::Bad("invalid header name"));
    }
    let value = trim_ows(&line[colon + 1..]);
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ParseError::Bad("invalid header value"));
    }
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// Strict `Content-Length` value: 1–18 ASCII digits (no sign, no spaces).
pub fn parse_content_length(s: &str) -> Result<u64, ParseError> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Bad("invalid Content-Length"));
    }
    s.parse()
        .map_err(|_| ParseError::Bad("invalid Content-Length"))
}

/// Parses a chunk-size line (without its line ending): hex size, optionally
/// followed by `;extensions`, which are ignored.
pub fn parse_chunk_size(line: &[u8]) -> Result<u64, ParseError> {
    let size = match line.iter().position(|&b| b == b';') {
        Some(i) => &line[..i],
        None => line,
    };
    let size = trim_ows(size);
    if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(ParseError::Bad("invalid chunk size"));
    }
    let mut n: u64 = 0;
    for &b in size {
        // Cannot overflow: at most 15 hex digits = 60 bits.
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        n = n * 16 + u64::from(digit);
    }
    Ok(n)
}

/// Value of `key` in a `a=1&b=2` query string (no percent-decoding).
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if pair == key => Some(""),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, ParseError> {
        let bytes = s.as_bytes();
        let end = find_head_end(bytes).expect("complete head");
        parse_head(&bytes[..end])
    }

    #[test]
    fn head_end_crlf_and_lf() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY"),
            Some(27)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: a\n\nBODY"), Some(24));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(find_head_end(b""), None);
        assert_eq!(find_head_end(b"\n"), None);
    }

    #[test]
    fn leading_blank_lines_are_skipped() {
        assert_eq!(leading_blank_lines(b"\r\n\nGET"), 3);
        assert_eq!(leading_blank_lines(b"GET"), 0);
        assert_eq!(leading_blank_lines(b"\r"), 0);
        assert_eq!(leading_blank_lines(b""), 0);
    }

    #[test]
    fn simple_get() {
        let r = parse("GET /a/b?ms=5&x HTTP/1.1\r\nHost: example\r\nX-Y:  z \r\n\r\n").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/a/b?ms=5&x");
        assert_eq!(r.path, "/a/b");
        assert_eq!(r.query.as_deref(), Some("ms=5&x"));
        assert_eq!(r.minor_version, 1);
        assert_eq!(r.header("host"), Some("example"));
        assert_eq!(r.header("x-y"), Some("z"));
        assert_eq!(r.header("missing"), None);
        assert_eq!(r.body, BodyKind::Length(0));
        assert!(r.keep_alive);
        assert!(!r.expect_continue);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(
            !parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            !parse("GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(parse("GET / HTTP/1.1\r\n\r\n").unwrap().keep_alive);
    }

    #[test]
    fn content_length_and_chunked() {
        let r = parse("POST /_echo HTTP/1.1\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(r.body, BodyKind::Length(12));
        let r = parse("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n").unwrap();
        assert_eq!(r.body, BodyKind::Length(3));
        let r = parse("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(r.body, BodyKind::Chunked);

        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(parse(bad).unwrap_err().status(), 400, "{bad:?}");
        }
        let e = parse("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap_err();
        assert_eq!(e.status(), 501);
    }

    #[test]
    fn expect_continue() {
        let r = parse("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
        assert!(r.unwrap().expect_continue);
        let r = parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert!(!r.unwrap().expect_continue);
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("HTTP/1.0"), Ok(0));
        assert_eq!(parse_version("HTTP/1.1"), Ok(1));
        assert_eq!(parse_version("HTTP/1.2"), Ok(1));
        assert_eq!(parse_version("HTTP/2.0"), Err(ParseError::Version));
        assert_eq!(
            parse_version("HTTP/0.9").map_err(ParseError::status),
            Err(505)
        );
        assert!(matches!(parse_version("HTTP/1"), Err(ParseError::Bad(_))));
        assert!(matches!(parse_version("http/1.1"), Err(ParseError::Bad(_))));
        assert!(matches!(parse_version(""), Err(ParseError::Bad(_))));
    }

    #[test]
    fn bad_request_lines_are_400() {
        for bad in [
            "\r\n\r\n",
            "GET\r\n\r\n",
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 extra\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET foo HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
            "GET /é HTTP/1.1\r\n\r\n",
            "GET / FTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\0c\r\n\r\n",
        ] {
            let err = parse(bad).expect_err(bad);
            assert_eq!(err.status(), 400, "{bad:?} -> {err}");
        }
        // Non-UTF-8 bytes must not panic either.
        assert_eq!(
            parse_head(b"\xff\xfe / HTTP/1.1\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn obs_text_header_values_are_tolerated() {
        let r = parse_head(b"GET / HTTP/1.1\r\nX: caf\xe9\r\n\r\n").unwrap();
        assert_eq!(r.header("x"), Some("caf\u{fffd}"));
    }

    #[test]
    fn target_forms() {
        let split = |m, t| split_target(m, t).unwrap();
        assert_eq!(split("GET", "/"), ("/".into(), None));
        assert_eq!(split("GET", "/p?"), ("/p".into(), Some(String::new())));
        assert_eq!(
            split("GET", "http://h:1/p?q=1"),
            ("/p".into(), Some("q=1".into()))
        );
        assert_eq!(split("GET", "HTTPS://h"), ("/".into(), None));
        assert_eq!(split("GET", "http://h?x"), ("/".into(), Some("x".into())));
        assert_eq!(split("OPTIONS", "*"), ("*".into(), None));
        assert!(split_target("CONNECT", "h:443").is_err());
        assert!(split_target("GET", "ftp://h/").is_err());
        assert!(split_target("GET", "http:").is_err());
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut req = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            req.push_str(&format!("X-{i}: v\r\n"));
        }
        req.push_str("\r\n");
        assert_eq!(parse(&req).unwrap_err(), ParseError::TooLarge);
        assert_eq!(
            parse_head(&vec![b'a'; MAX_HEAD_BYTES + 1])
                .unwrap_err()
                .status(),
            431
        );
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"0"), Ok(0));
        assert_eq!(parse_chunk_size(b"1a"), Ok(26));
        assert_eq!(parse_chunk_size(b"FF;name=value"), Ok(255));
        assert_eq!(parse_chunk_size(b"10 ; ext"), Ok(16));
        assert_eq!(
            parse_chunk_size(b"fffffffffffffff"),
            Ok(0x0fff_ffff_ffff_ffff)
        );
        for bad in [
            &b""[..],
            b";x",
            b"+1",
            b"-1",
            b"0x10",
            b"g",
            b"1 2",
            b"1000000000000000",
        ] {
            assert!(parse_chunk_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("ms=250", "ms"), Some("250"));
        assert_eq!(query_param("a=1&ms=2&ms=3", "ms"), Some("2"));
        assert_eq!(query_param("flag&ms=", "flag"), Some(""));
        assert_eq!(query_param("ms=", "ms"), Some(""));
        assert_eq!(query_param("xms=1", "ms"), None);
        assert_eq!(query_param("", "ms"), None);
    }
}
