//! The access log: one JSON line per request, off by default.
//!
//! A request's line is put together on the worker thread that served it, when its response
//! ends (the body sent in full, or the client gone), and handed to a dedicated writer thread
//! through a bounded queue. A full queue drops the line and counts it: logging never makes a
//! request wait. While lines keep coming, the writer wakes every few milliseconds on its own
//! (producers never wake it) and writes what is queued in one `write`; it counts the lines
//! written; a failed write (disk full, a pipe nobody reads any more) is counted, the lines
//! lost with it too, and logged at most every [`WARN_EVERY`]. A file that was renamed or
//! deleted (rotation) is reopened at its path, checked at most once a second.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use caas_core::{AppId, Version};
use http::{Method, Uri};
use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;

/// Lines queued for the writer by default; beyond this, lines are dropped (and counted).
pub const DEFAULT_QUEUE_LINES: usize = 16 * 1024;
/// Failed writes are logged at most this often (the rest are counted).
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// How often the writer checks whether its file was moved away (rotated) or deleted.
const REOPEN_CHECK: Duration = Duration::from_secs(1);
/// The writer gathers up to this much into one `write`.
const BATCH_BYTES: usize = 64 * 1024;
/// While lines keep coming, the writer sleeps this long between writes.
const TICK: Duration = Duration::from_millis(5);

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AccessLogTarget {
    /// The process's standard output (`access_log = "stdout"`).
    Stdout,
    /// A file, appended to (created when missing; reopened when rotated away).
    File(PathBuf),
}

impl TryFrom<String> for AccessLogTarget {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "" => Err("access_log: give \"stdout\" or a file path".into()),
            "stdout" => Ok(Self::Stdout),
            _ => Ok(Self::File(PathBuf::from(s))),
        }
    }
}

impl From<AccessLogTarget> for String {
    fn from(t: AccessLogTarget) -> Self {
        match t {
            AccessLogTarget::Stdout => "stdout".into(),
            AccessLogTarget::File(p) => p.to_string_lossy().into_owned(),
        }
    }
}

/// The access log's settings (see [`GatewayConfig::access_log`](crate::GatewayConfig)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Where lines go.
    pub target: AccessLogTarget,
    /// Lines waiting for the writer at most; when full, new lines are dropped and counted.
    pub queue_lines: usize,
}

impl AccessLogConfig {
    /// Lines to `target`, with the default queue.
    pub fn new(target: AccessLogTarget) -> Self {
        Self {
            target,
            queue_lines: DEFAULT_QUEUE_LINES,
        }
    }
}

/// Counters of the access log (`/metrics`: `caas_gateway_access_log_*`).
#[derive(Debug, Default)]
pub struct AccessLogStats {
    /// Lines written to the target.
    pub lines: AtomicU64,
    /// Lines dropped because the queue was full (the writer could not keep up or is stuck).
    pub dropped: AtomicU64,
    /// Writes (and reopens) that failed.
    pub write_errors: AtomicU64,
    /// Lines lost in failed writes.
    pub lost: AtomicU64,
    /// Times the file was reopened after it was moved away or deleted.
    pub reopened: AtomicU64,
}

/// The producing side: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub(crate) struct AccessLog {
    tx: SyncSender<String>,
    stats: Arc<AccessLogStats>,
}

impl AccessLog {
    /// Opens the target and starts the writer thread.
    pub(crate) fn start(config: &AccessLogConfig) -> io::Result<Self> {
        let out = match &config.target {
            AccessLogTarget::Stdout => Output::Stdout,
            AccessLogTarget::File(path) => Output::File {
                file: Some(open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("access_log {}: {e}", path.display()))
                })?),
                path: path.clone(),
                checked: Instant::now(),
            },
        };
        let (tx, rx) = sync_channel(config.queue_lines.max(1));
        let stats = Arc::new(AccessLogStats::default());
        let s = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("caas-access-log".into())
            .spawn(move || write_lines(&rx, out, &s))?;
        Ok(Self { tx, stats })
    }

    pub(crate) fn stats(&self) -> &Arc<AccessLogStats> {
        &self.stats
    }

    fn send(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

fn open(path: &std::path::Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o640);
    o.open(path)
}

enum Output {
    Stdout,
    File {
        path: PathBuf,
        /// `None` after a reopen failed (tried again at the next check).
        file: Option<File>,
        checked: Instant,
    },
}

impl Output {
    fn write(&mut self, buf: &[u8], stats: &AccessLogStats, warn: &mut Throttle) -> io::Result<()> {
        match self {
            Self::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                out.flush()
            }
            Self::File {
                path,
                file,
                checked,
            } => {
                if file.is_none() || checked.elapsed() >= REOPEN_CHECK {
                    *checked = Instant::now();
                    if file.as_ref().is_none_or(|f| moved_away(path, f)) {
                        match open(path) {
                            Ok(f) => {
                                if file.replace(f).is_some() {
                                    stats.reopened.fetch_add(1, Relaxed);
                                    tracing::info!(path = %path.display(), "access log reopened (the file was moved or deleted)");
                                }
                            }
                            Err(e) => {
                                stats.write_errors.fetch_add(1, Relaxed);
                                warn.warn(|| {
                                    format!("access log {}: cannot reopen: {e}", path.display())
                                });
                            }
                        }
                    }
                }
                match file {
                    Some(f) => f.write_all(buf),
                    None => Err(io::Error::new(io::ErrorKind::NotFound, "no file open")),
                }
            }
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Stdout => "stdout".into(),
            Self::File { path, .. } => path.display().to_string(),
        }
    }
}

/// Whether `path` no longer names the open file (renamed, deleted, replaced).
fn moved_away(path: &std::path::Path, f: &File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(path), f.metadata()) {
            (Ok(p), Ok(o)) => p.ino() != o.ino() || p.dev() != o.dev(),
            (Err(_), _) => true,
            (_, Err(_)) => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        !path.exists()
    }
}

/// Logs a recurring failure at most every [`WARN_EVERY`], with how many were not logged.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn warn(&mut self, message: impl FnOnce() -> String) {
        if self.last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            self.suppressed += 1;
            return;
        }
        self.last = Some(Instant::now());
        let suppressed = std::mem::take(&mut self.suppressed);
        tracing::warn!(suppressed, "{}", message());
    }
}

/// The writer thread. Idle, it blocks for the next line; busy, it sleeps [`TICK`] between
/// writes and takes whatever was queued meanwhile, so producers never have to wake it (a
/// wake-up is a system call on the request's thread) and a batch is one `write`. It ends
/// when every producer is gone (the gateway dropped), after writing what is queued.
fn write_lines(rx: &Receiver<String>, mut out: Output, stats: &AccessLogStats) {
    let mut buf = Vec::with_capacity(BATCH_BYTES);
    let mut warn = Throttle::default();
    'idle: while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        loop {
            // `next` and everything queued, one write per BATCH_BYTES or so.
            let mut n = 0;
            let mut open = true;
            if let Some(line) = next.take() {
                buf.extend_from_slice(line.as_bytes());
                n = 1;
            }
            loop {
                match rx.try_recv() {
                    Ok(line) => {
                        buf.extend_from_slice(line.as_bytes());
                        n += 1;
                        if buf.len() >= BATCH_BYTES {
                            flush(&mut out, &buf, n, stats, &mut warn);
                            buf.clear();
                            n = 0;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if n > 0 {
                flush(&mut out, &buf, n, stats, &mut warn);
                buf.clear();
            }
            if !open {
                return;
            }
            std::thread::sleep(TICK);
            match rx.try_recv() {
                Ok(line) => next = Some(line),
                // A quiet tick: back to waiting for a line.
                Err(TryRecvError::Empty) => continue 'idle,
                Err(TryRecvError::Disconnected) => return,
            }
        }
    }
}

fn flush(out: &mut Output, buf: &[u8], n: u64, stats: &AccessLogStats, warn: &mut Throttle) {
    match out.write(buf, stats, warn) {
        Ok(()) => {
            stats.lines.fetch_add(n, Relaxed);
        }
        Err(e) => {
            stats.write_errors.fetch_add(1, Relaxed);
            stats.lost.fetch_add(n, Relaxed);
            warn.warn(|| {
                format!(
                    "access log {}: write failed, {n} lines lost: {e}",
                    out.name()
                )
            });
        }
    }
}

/// The access log's `error` for a response the upstream cut after its head: the status is
/// the upstream's, the body is incomplete.
pub const BODY_FAILED: &str = "upstream_body_failed";

/// One request's line in the making; sent when dropped (the end of its response, or of the
/// request when the client left before an answer).
#[derive(Debug)]
pub(crate) struct Pending {
    log: AccessLog,
    time: SystemTime,
    started: Instant,
    method: Method,
    uri: Uri,
    pub(crate) client: IpAddr,
    pub(crate) app: Option<AppId>,
    pub(crate) version: Option<Version>,
    pub(crate) endpoint: Option<SocketAddr>,
    /// 499 with `client_closed` until an answer is known.
    pub(crate) status: u16,
    pub(crate) error: Option<ErrorCode>,
    /// The upstream broke the response body after its head went out (logged as the error
    /// [`BODY_FAILED`], with the upstream's status).
    pub(crate) body_failed: bool,
    /// Request body bytes sent upstream (added by the request body when it drops).
    pub(crate) bytes_in: Arc<AtomicU64>,
    /// Response body bytes the client took.
    pub(crate) bytes_out: u64,
}

impl Pending {
    pub(crate) fn new(log: &AccessLog, method: &Method, uri: &Uri, client: IpAddr) -> Self {
        Self {
            log: log.clone(),
            time: SystemTime::now(),
            started: Instant::now(),
            method: method.clone(),
            uri: uri.clone(),
            client: client.to_canonical(),
            app: None,
            version: None,
            endpoint: None,
            status: ErrorCode::ClientClosed.status().as_u16(),
            error: Some(ErrorCode::ClientClosed),
            body_failed: false,
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: 0,
        }
    }

    fn line(&self) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            time: &'a str,
            app: Option<&'a AppId>,
            version: Option<&'a Version>,
            endpoint: Option<SocketAddr>,
            client: IpAddr,
            method: &'a str,
            path: &'a str,
            status: u16,
            bytes_in: u64,
            bytes_out: u64,
            duration_ms: f64,
            error: Option<&'static str>,
        }
        let time = rfc3339_millis(self.time);
        let micros = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let line = Line {
            time: &time,
            app: self.app.as_ref(),
            version: self.version.as_ref(),
            endpoint: self.endpoint,
            client: self.client,
            method: self.method.as_str(),
            path: self.uri.path(),
            status: self.status,
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out,
            duration_ms: micros as f64 / 1000.0,
            error: match self.error {
                Some(code) => Some(code.as_str()),
                None => self.body_failed.then_some(BODY_FAILED),
            },
        };
        // Serializing plain fields into a String cannot fail.
        let mut out = serde_json::to_string(&line).unwrap_or_default();
        out.push('\n');
        out
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let line = self.line();
        self.log.send(line);
    }
}

/// `2026-11-27T10:04:05.123Z`: RFC 3339, UTC, milliseconds.
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
    s
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's
/// algorithm: eras of 400 years, years starting in March).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_millis() {
        let at = |s: u64, ms: u64| {
            rfc3339_millis(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(1_798_761_600, 0), "2027-01-01T00:00:00.000Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
    }

    #[test]
    fn targets_parse_from_the_config_string() {
        assert_eq!(
            AccessLogTarget::try_from("stdout".to_owned()),
            Ok(AccessLogTarget::Stdout)
        );
        assert_eq!(
            AccessLogTarget::try_from("logs/a.log".to_owned()),
            Ok(AccessLogTarget::File("logs/a.log".into()))
        );
        assert!(AccessLogTarget::try_from(String::new()).is_err());
    }
}
