//! Application logic: identity, routing and response serialisation.

use crate::http::{Request, query_param};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest sleep `/_sleep?ms=N` accepts (10 minutes).
pub const MAX_SLEEP_MS: u64 = 600_000;

/// Process-wide application state.
#[derive(Debug)]
pub struct AppState {
    /// `CAAS_APP`, default `hello-app`.
    pub app: String,
    /// `CAAS_VERSION`, default `unknown`.
    pub version: String,
    /// `CAAS_INSTANCE`, default the hostname from `/etc/hostname`, else `unknown`.
    pub instance: String,
    /// Set by `POST /_fail`, cleared by `POST /_recover`.
    pub failing: AtomicBool,
}

impl AppState {
    /// Builds the state from explicit values (control characters are
    /// replaced so they can never break a response header).
    pub fn new(app: &str, version: &str, instance: &str) -> Self {
        AppState {
            app: sanitize(app),
            version: sanitize(version),
            instance: sanitize(instance),
            failing: AtomicBool::new(false),
        }
    }

    /// Reads `CAAS_APP`, `CAAS_VERSION`, `CAAS_INSTANCE` (empty = unset) and
    /// `FAIL_PING` (`1` or `true`: `/_ping` fails from the start, as after
    /// `POST /_fail`).
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let instance = var("CAAS_INSTANCE")
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let state = AppState::new(
            &var("CAAS_APP").unwrap_or_else(|| "hello-app".to_owned()),
            &var("CAAS_VERSION").unwrap_or_else(|| "unknown".to_owned()),
            &instance,
        );
        let fail = var("FAIL_PING").is_some_and(|v| fail_ping(&v));
        state.failing.store(fail, Ordering::SeqCst);
        state
    }

    fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }
}

/// Whether a `FAIL_PING` value turns failing on.
pub fn fail_ping(value: &str) -> bool {
    matches!(value.trim(), "1" | "true")
}

fn sanitize(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A response to be serialised by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `content-type` value.
    pub content_type: String,
    /// Body (omitted on the wire for `HEAD`).
    pub body: Vec<u8>,
    /// Extra header fields (e.g. `allow`).
    pub headers: Vec<(&'static str, String)>,
    /// Close the connection after this response.
    pub close: bool,
    /// Exit the process (code 1) shortly after sending this response.
    pub exit_after: bool,
}

impl Response {
    /// A `text/plain` response.
    pub fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8".to_owned(),
            body: body.as_bytes().to_vec(),
            headers: Vec::new(),
            close: false,
            exit_after: false,
        }
    }

    fn method_not_allowed(allow: &str) -> Self {
        let mut r = Response::text(405, "method not allowed");
        r.headers.push(("allow", allow.to_owned()));
        r
    }

    /// Serialises status line, headers and (unless `head_only`) body.
    pub fn serialize(
        &self,
        head_only: bool,
        keep_alive: bool,
        minor: u8,
        instance: &str,
    ) -> Vec<u8> {
        let mut head = String::with_capacity(256);
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nx-instance: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
            instance
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if !keep_alive {
            head.push_str("connection: close\r\n");
        } else if minor == 0 {
            head.push_str("connection: keep-alive\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Reason phrase for the status codes this app uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Escapes `s` as the contents of a JSON string.
pub fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// The `GET /` body: `{"app":..,"version":..,"instance":..,"path":..}`.
pub fn info_json(state: &AppState, path: &str) -> String {
    format!(
        r#"{{"app":"{}","version":"{}","instance":"{}","path":"{}"}}"#,
        json_escape(&state.app),
        json_escape(&state.version),
        json_escape(&state.instance),
        json_escape(path)
    )
}

/// Routes one request. May block (`/_sleep`, `/_probe`) and may flip `state.failing`.
pub fn route(req: &Request, body: &[u8], state: &AppState) -> Response {
    let method = req.method.as_str();
    let is_get = matches!(method, "GET" | "HEAD");
    let is_post = method == "POST";
    match req.path.as_str() {
        "/_ping" if is_get => {
            if state.is_failing() {
                Response::text(503, "unhealthy")
            } else {
                Response::text(200, "pong")
            }
        }
        "/_sleep" if is_get => sleep(req),
        "/_probe" if is_get => crate::probe::probe(req),
        "/_ping" | "/_sleep" | "/_probe" => Response::method_not_allowed("GET, HEAD"),
        "/_fail" if is_post => {
            state.failing.store(true, Ordering::SeqCst);
            Response::text(200, "failing")
        }
        "/_recover" if is_post => {
            state.failing.store(false, Ordering::SeqCst);
            Response::text(200, "recovered")
        }
        "/_exit" if is_post => {
            let mut r = Response::text(200, "exiting");
            r.close = true;
            r.exit_after = true;
            r
        }
        "/_echo" if is_post => {
            let mut r = Response::text(200, "");
            r.content_type = req
                .header("content-type")
                .unwrap_or("application/octet-stream")
                .to_owned();
            r.body = body.to_vec();
            r
        }
        "/_fail" | "/_recover" | "/_exit" | "/_echo" => Response::method_not_allowed("POST"),
        path => {
            let mut r = Response::text(200, &info_json(state, path));
            r.content_type = "application/json".to_owned();
            r
        }
    }
}

/// `GET /_sleep?ms=N`: sleeps N ms (0..=MAX_SLEEP_MS), then answers 200.
fn sleep(req: &Request) -> Response {
    let ms = match req.query.as_deref().and_then(|q| query_param(q, "ms")) {
        None => return Response::text(400, "missing ?ms=N"),
        Some(v) if !v.is_empty() && v.len() <= 9 && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.parse::<u64>().unwrap_or(u64::MAX)
        }
        Some(_) => return Response::text(400, "ms must be a non-negative integer"),
    };
    if ms > MAX_SLEEP_MS {
        return Response::text(400, "ms too large (max 600000)");
    }
    std::thread::sleep(Duration::from_millis(ms));
    Response::text(200, &format!("slept {ms}ms"))
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2023-11-14T22:13:20.000Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{find_head_end, parse_head};

    fn req(s: &str) -> Request {
        let end = find_head_end(s.as_bytes()).expect("complete head");
        parse_head(&s.as_bytes()[..end]).expect("valid request")
    }

    fn state() -> AppState {
        AppState::new("web", "v2", "i1")
    }

    fn body(r: &Response) -> &str {
        std::str::from_utf8(&r.body).unwrap()
    }

    #[test]
    fn ping_fail_recover() {
        let st = state();
        let ping = req("GET /_ping HTTP/1.1\r\n\r\n");
        assert_eq!(
            (route(&ping, b"", &st).status, body(&route(&ping, b"", &st))),
            (200, "pong")
        );
        assert_eq!(
            route(&req("POST /_fail HTTP/1.1\r\n\r\n"), b"", &st).status,
            200
        );
        assert_eq!(route(&ping, b"", &st).status, 503);
        assert_eq!(
            route(&req("HEAD /_ping HTTP/1.1\r\n\r\n"), b"", &st).status,
            503
        );
        assert_eq!(
            route(&req("POST /_recover HTTP/1.1\r\n\r\n"), b"", &st).status,
            200
        );
        assert_eq!(route(&ping, b"", &st).status, 200);
    }

    #[test]
    fn fail_ping_values() {
        for (v, want) in [
            ("1", true),
            ("true", true),
            (" 1 ", true),
            ("0", false),
            ("no", false),
        ] {
            assert_eq!(fail_ping(v), want, "{v:?}");
        }
    }

    #[test]
    fn wrong_methods_are_405() {
        let st = state();
        for (r, allow) in [
            ("POST /_ping HTTP/1.1\r\n\r\n", "GET, HEAD"),
            ("GET /_fail HTTP/1.1\r\n\r\n", "POST"),
            ("GET /_exit HTTP/1.1\r\n\r\n", "POST"),
            ("PUT /_echo HTTP/1.1\r\n\r\n", "POST"),
            ("DELETE /_sleep?ms=1 HTTP/1.1\r\n\r\n", "GET, HEAD"),
        ] {
            let resp = route(&req(r), b"", &st);
            assert_eq!(resp.status, 405, "{r:?}");
            assert_eq!(resp.headers, vec![("allow", allow.to_owned())]);
        }
        assert!(!st.is_failing());
    }

    #[test]
    fn info_and_catch_all() {
        let st = state();
        let r = route(&req("GET /some/where?x=1 HTTP/1.1\r\n\r\n"), b"", &st);
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, "application/json");
        assert_eq!(
            body(&r),
            r#"{"app":"web","version":"v2","instance":"i1","path":"/some/where"}"#
        );
        assert_eq!(
            route(&req("DELETE /x HTTP/1.1\r\n\r\n"), b"", &st).status,
            200
        );
        let weird = AppState::new("a\"b", "\\", "i\n1");
        assert_eq!(
            info_json(&weird, "/\"q"),
            r#"{"app":"a\"b","version":"\\","instance":"i?1","path":"/\"q"}"#
        );
    }

    #[test]
    fn echo_and_exit() {
        let st = state();
        let r = route(
            &req("POST /_echo HTTP/1.1\r\nContent-Type: text/x-test\r\nContent-Length: 3\r\n\r\n"),
            b"abc",
            &st,
        );
        assert_eq!(
            (r.status, body(&r), r.content_type.as_str()),
            (200, "abc", "text/x-test")
        );
        let r = route(&req("POST /_echo HTTP/1.1\r\n\r\n"), b"", &st);
        assert_eq!(r.content_type, "application/octet-stream");
        let r = route(&req("POST /_exit HTTP/1.1\r\n\r\n"), b"", &st);
        assert!(r.exit_after && r.close && r.status == 200);
    }

    #[test]
    fn sleep_validation() {
        let st = state();
        let sleep = |q: &str| route(&req(&format!("GET /_sleep{q} HTTP/1.1\r\n\r\n")), b"", &st);
        let r = sleep("?ms=20");
        assert_eq!((r.status, body(&r)), (200, "slept 20ms"));
        for bad in [
            "",
            "?",
            "?ms=",
            "?ms=-1",
            "?ms=1.5",
            "?ms=abc",
            "?ms=600001",
            "?ms=99999999999",
        ] {
            assert_eq!(sleep(bad).status, 400, "{bad:?}");
        }
    }

    #[test]
    fn serialize_headers() {
        let r = Response::text(200, "pong");
        let wire = String::from_utf8(r.serialize(false, true, 1, "i1")).unwrap();
        assert_eq!(
            wire,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 4\r\n\
             x-instance: i1\r\n\r\npong"
        );
        let wire = String::from_utf8(r.serialize(true, false, 1, "i1")).unwrap();
        assert!(wire.ends_with("content-length: 4\r\nx-instance: i1\r\nconnection: close\r\n\r\n"));
        let wire = String::from_utf8(r.serialize(false, true, 0, "i1")).unwrap();
        assert!(wire.contains("connection: keep-alive\r\n"));
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        // Leap days (2000 is a 400-year leap year), and the day after.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_164_800)),
            "2024-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_868_800)),
            "2000-03-01T00:00:00.000Z"
        );
    }
}
