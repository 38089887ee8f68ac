//! Socket handling: accept loop, one thread per connection, keep-alive,
//! pipelining, timeouts and size limits.

use crate::app::{self, AppState, Response};
use crate::http::{self, BodyKind, MAX_CHUNK_LINE, MAX_HEAD_BYTES, ParseError, Request};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// How long an idle keep-alive connection is kept open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to receive a complete request head once it has started.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to receive a complete request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for a blocked write to make progress.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Concurrent connections; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 1024;

static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Set by SIGTERM/SIGINT: stop accepting, answer what is in flight with
/// `connection: close`, close idle connections, exit once none is left.
pub static DRAINING: AtomicBool = AtomicBool::new(false);

/// How often idle connections and the drain watcher look at [`DRAINING`].
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Whether a drain was asked for.
pub fn draining() -> bool {
    DRAINING.load(Ordering::SeqCst)
}

/// Connections being served now.
pub fn active() -> usize {
    ACTIVE.load(Ordering::SeqCst)
}

/// Decrements the active-connection count when the connection ends (also
/// when its thread unwinds or fails to spawn).
struct ActiveGuard;

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes one log line to stdout; errors (closed stdout) are ignored rather
/// than panicking like `println!` would.
pub fn log(line: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{} {line}", app::rfc3339(SystemTime::now()));
    let _ = out.flush();
}

/// Accepts connections, one thread each, until a drain is asked for; then returns (the
/// listener is closed when it is dropped) while the connection threads finish.
pub fn serve(listener: TcpListener, state: Arc<AppState>) {
    // accept(2) is not woken by the signal: a watcher connects to the listener once the
    // drain starts, and the loop sees the flag after that accept.
    if let Ok(addr) = listener.local_addr() {
        let wake = SocketAddr::from(([127, 0, 0, 1], addr.port()));
        let _ = thread::Builder::new()
            .name("drain-watch".to_owned())
            .spawn(move || {
                while !draining() {
                    thread::sleep(DRAIN_POLL);
                }
                let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
            });
    }
    loop {
        if draining() {
            return;
        }
        let (stream, peer) = match listener.accept() {
            Ok(conn) => conn,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                log(format_args!("accept error: {e}"));
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if ACTIVE.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            ACTIVE.fetch_sub(1, Ordering::SeqCst);
            let _ = (&stream).write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            log(format_args!("{peer} rejected: too many connections"));
            continue;
        }
        let guard = ActiveGuard;
        let state = Arc::clone(&state);
        let spawned = thread::Builder::new()
            .name("conn".to_owned())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _guard = guard;
                handle_connection(stream, peer, &state);
            });
        if let Err(e) = spawned {
            log(format_args!("{peer} dropped: cannot spawn thread: {e}"));
        }
    }
}

/// Why reading a request stopped.
#[derive(Debug)]
enum ReadError {
    /// Peer went away, I/O error or idle timeout: drop silently.
    Gone,
    /// Answer with this status and message, then close.
    Reply(u16, String),
}

impl From<ParseError> for ReadError {
    fn from(e: ParseError) -> Self {
        ReadError::Reply(e.status(), e.to_string())
    }
}

struct Conn {
    stream: TcpStream,
    /// Received but not yet consumed bytes (supports pipelining).
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more bytes into `buf`, waiting at most `timeout`.
    /// `Ok(0)` means EOF.
    fn fill(&mut self, timeout: Duration) -> io::Result<usize> {
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Like `fill`, but against a deadline; maps errors to `ReadError`.
    fn fill_until(&mut self, deadline: Instant) -> Result<(), ReadError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Reply(408, "request timeout".to_owned()));
        }
        match self.fill(left) {
            Ok(0) => Err(ReadError::Gone),
            Ok(_) => Ok(()),
            Err(e) if is_timeout(&e) => Err(ReadError::Reply(408, "request timeout".to_owned())),
            Err(_) => Err(ReadError::Gone),
        }
    }

    /// Reads the next request head. `Ok(None)`: the peer closed (or idled
    /// out) cleanly between requests.
    fn read_head(&mut self) -> Result<Option<Request>, ReadError> {
        let mut deadline = (!self.buf.is_empty()).then(|| Instant::now() + HEAD_TIMEOUT);
        loop {
            let skip = http::leading_blank_lines(&self.buf);
            self.buf.drain(..skip);
            if let Some(end) = http::find_head_end(&self.buf) {
                let parsed = http::parse_head(&self.buf[..end]);
                self.buf.drain(..end);
                return Ok(Some(parsed?));
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(ParseError::TooLarge.into());
            }
            match deadline {
                Some(d) => self.fill_until(d)?,
                None => {
                    // Idle between requests: closed after IDLE_TIMEOUT, or at once when a
                    // drain starts (checked every DRAIN_POLL).
                    let idle_since = Instant::now();
                    loop {
                        if draining() {
                            return Ok(None);
                        }
                        let left = IDLE_TIMEOUT.saturating_sub(idle_since.elapsed());
                        if left.is_zero() {
                            return Ok(None);
                        }
                        match self.fill(left.min(DRAIN_POLL)) {
                            Ok(0) => return Ok(None),
                            Ok(_) => break,
                            Err(e) if is_timeout(&e) => {}
                            Err(_) => return Ok(None),
                        }
                    }
                    deadline = Some(Instant::now() + HEAD_TIMEOUT);
                }
            }
        }
    }

    /// Reads one line (for chunked framing), without its line ending.
    fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_CHUNK_LINE {
                return Err(ParseError::Bad("chunk line too long").into());
            }
            self.fill_until(deadline)?;
        }
    }

    /// Reads the request body, sending `100 Continue` first if asked to.
    fn read_body(&mut self, req: &Request) -> Result<Vec<u8>, ReadError> {
        let too_large = || ReadError::Reply(413, "request body too large".to_owned());
        let deadline = Instant::now() + BODY_TIMEOUT;
        let len = match req.body {
            BodyKind::Length(0) => return Ok(Vec::new()),
            BodyKind::Length(n) => match usize::try_from(n) {
                Ok(n) if n <= MAX_BODY_BYTES => Some(n),
                _ => return Err(too_large()),
            },
            BodyKind::Chunked => None,
        };
        if req.expect_continue && self.buf.is_empty() {
            self.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| ReadError::Gone)?;
        }
        if let Some(len) = len {
            while self.buf.len() < len {
                self.fill_until(deadline)?;
            }
            return Ok(self.buf.drain(..len).collect());
        }
        let mut body = Vec::new();
        loop {
            let size = http::parse_chunk_size(&self.read_line(deadline)?)?;
            if size == 0 {
                // Trailer section: skip fields up to the blank line.
                let mut trailer_bytes = 0;
                loop {
                    let line = self.read_line(deadline)?;
                    if line.is_empty() {
                        return Ok(body);
                    }
                    trailer_bytes += line.len();
                    if trailer_bytes > MAX_HEAD_BYTES {
                        return Err(ParseError::TooLarge.into());
                    }
                }
            }
            let size = match usize::try_from(size) {
                Ok(n) if n <= MAX_BODY_BYTES - body.len() => n,
                _ => return Err(too_large()),
            };
            while self.buf.len() < size + 2 {
                self.fill_until(deadline)?;
            }
            body.extend_from_slice(&self.buf[..size]);
            let crlf = match &self.buf[size..size + 2] {
                b"\r\n" => 2,
                [b'\n', _] => 1,
                _ => return Err(ParseError::Bad("chunk not followed by CRLF").into()),
            };
            self.buf.drain(..size + crlf);
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Half-closes and drains briefly so the peer sees our last response
    /// instead of a reset caused by unread input.
    fn close(mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut drained = 0;
        while drained < 256 * 1024 {
            self.buf.clear();
            let left = deadline.saturating_duration_since(Instant::now());
            match self.fill(left) {
                Ok(n) if n > 0 && !left.is_zero() => drained += n,
                _ => break,
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Serves requests on one connection until it closes.
fn handle_connection(stream: TcpStream, peer: SocketAddr, state: &AppState) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(4096),
    };
    loop {
        let head_started = Instant::now();
        let req = match conn.read_head() {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Gone) => return,
            Err(ReadError::Reply(status, msg)) => {
                reply_error(conn, peer, None, status, &msg, head_started, state);
                return;
            }
        };
        let started = Instant::now();
        let body = match conn.read_body(&req) {
            Ok(body) => body,
            Err(ReadError::Gone) => return,
            Err(ReadError::Reply(status, msg)) => {
                reply_error(conn, peer, Some(&req), status, &msg, started, state);
                return;
            }
        };
        let resp = app::route(&req, &body, state);
        // Draining: this answer is the connection's last.
        let keep_alive = req.keep_alive && !resp.close && !draining();
        let wire = resp.serialize(
            req.method == "HEAD",
            keep_alive,
            req.minor_version,
            &state.instance,
        );
        let written = conn.write_all(&wire).is_ok();
        log_request(peer, Some(&req), &resp, started);
        if resp.exit_after {
            log(format_args!(
                "exit requested by {peer}: exiting with code 1"
            ));
            thread::spawn(|| {
                thread::sleep(Duration::from_millis(100));
                std::process::exit(1);
            });
        }
        if !written {
            return;
        }
        if !keep_alive {
            conn.close();
            return;
        }
    }
}

fn reply_error(
    mut conn: Conn,
    peer: SocketAddr,
    req: Option<&Request>,
    status: u16,
    msg: &str,
    started: Instant,
    state: &AppState,
) {
    let resp = Response::text(status, msg);
    let minor = req.map_or(1, |r| r.minor_version);
    let head_only = req.is_some_and(|r| r.method == "HEAD");
    let _ = conn.write_all(&resp.serialize(head_only, false, minor, &state.instance));
    log_request(peer, req, &resp, started);
    conn.close();
}

fn log_request(peer: SocketAddr, req: Option<&Request>, resp: &Response, started: Instant) {
    let micros = started.elapsed().as_micros();
    let (ms, frac) = (micros / 1000, micros % 1000 / 10);
    match req {
        Some(r) => log(format_args!(
            "{peer} \"{} {} {}\" {} {} {ms}.{frac:02}ms",
            r.method,
            r.target,
            r.version_str(),
            resp.status,
            resp.body.len()
        )),
        None => log(format_args!(
            "{peer} \"-\" {} {} {ms}.{frac:02}ms ({})",
            resp.status,
            resp.body.len(),
            String::from_utf8_lossy(&resp.body)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a server on an ephemeral loopback port (it lives until the
    /// test process exits).
    fn start() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(AppState::new("t", "v1", "i-test"));
        thread::spawn(move || serve(listener, state));
        addr
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// Reads one response: (status, lowercase head, body). Uses `pending`
    /// to keep bytes that belong to the next response.
    fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>) -> (u16, String, Vec<u8>) {
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(end) = http::find_head_end(pending) {
                break end;
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "EOF before response head");
            pending.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(pending.drain(..end).collect())
            .unwrap()
            .to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        while pending.len() < len {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "EOF inside body");
            pending.extend_from_slice(&chunk[..n]);
        }
        (status, head, pending.drain(..len).collect())
    }

    fn assert_closed(s: &mut TcpStream) {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "unexpected trailing data: {rest:?}");
    }

    #[test]
    fn keep_alive_and_pipelining() {
        let addr = start();
        let mut s = connect(addr);
        let mut pending = Vec::new();
        s.write_all(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (status, head, body) = read_response(&mut s, &mut pending);
        assert_eq!((status, body.as_slice()), (200, &b"pong"[..]));
        assert!(head.contains("x-instance: i-test\r\n"));
        assert!(!head.contains("connection: close"));

        // Three pipelined requests in one write, the middle one with a body.
        s.write_all(
            b"GET /a HTTP/1.1\r\n\r\nPOST /_echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
              \r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let (_, _, body) = read_response(&mut s, &mut pending);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"app":"t","version":"v1","instance":"i-test","path":"/a"}"#
        );
        assert_eq!(read_response(&mut s, &mut pending).2, b"hello");
        let (status, head, _) = read_response(&mut s, &mut pending);
        assert_eq!(status, 200);
        assert!(head.contains("connection: close\r\n"));
        assert!(pending.is_empty());
        assert_closed(&mut s);
    }

    #[test]
    fn http10_closes_by_default() {
        let addr = start();
        let mut s = connect(addr);
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let (status, head, _) = read_response(&mut s, &mut Vec::new());
        assert_eq!(status, 200);
        assert!(head.contains("connection: close"));
        assert_closed(&mut s);
    }

    #[test]
    fn bad_requests_get_an_answer_and_close() {
        let addr = start();
        for (raw, want) in [
            (&b"garbage\r\n\r\n"[..], 400),
            (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"\xff\xff\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (
                b"POST /_echo HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
                413,
            ),
            (
                b"POST /_echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                400,
            ),
        ] {
            let mut s = connect(addr);
            s.write_all(raw).unwrap();
            let (status, head, _) = read_response(&mut s, &mut Vec::new());
            assert_eq!(status, want, "{:?}", String::from_utf8_lossy(raw));
            assert!(head.contains("connection: close"));
            assert_closed(&mut s);
        }
    }

    #[test]
    fn oversized_head_is_431() {
        let addr = start();
        let mut s = connect(addr);
        let mut raw = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        raw.resize(MAX_HEAD_BYTES + 100, b'a');
        // The server may answer before we finish writing; ignore write errors.
        let _ = s.write_all(&raw);
        let (status, _, _) = read_response(&mut s, &mut Vec::new());
        assert_eq!(status, 431);
    }

    #[test]
    fn chunked_echo_and_expect_continue() {
        let addr = start();
        let mut s = connect(addr);
        let mut pending = Vec::new();
        s.write_all(
            b"POST /_echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        .unwrap();
        assert_eq!(read_response(&mut s, &mut pending).2, b"hello world");

        s.write_all(b"POST /_echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .unwrap();
        let (status, _, _) = read_response(&mut s, &mut pending);
        assert_eq!(status, 100);
        s.write_all(b"ok").unwrap();
        let (status, _, body) = read_response(&mut s, &mut pending);
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    }

    #[test]
    fn head_request_has_no_body() {
        let addr = start();
        let mut s = connect(addr);
        s.write_all(b"HEAD /_ping HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let text = String::from_utf8(all).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("content-length: 4\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
