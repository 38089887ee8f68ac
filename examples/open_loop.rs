//! `open_loop`: an HTTP/1.1 load generator that sends at a fixed rate (an open loop), for
//! `benches/churn.sh`. wrk keeps every connection busy (a closed loop): the proxy runs flat
//! out, so anything else that takes CPU on the machine shows up in its latency. At a fixed
//! rate below what the proxy can do, latency shows the proxy's own stalls instead.
//!
//! ```sh
//! open_loop --addr 127.0.0.1:8080 --host hello.caas.local --rate 20000 --conns 32 --seconds 5
//! ```
//!
//! A pacer thread releases the requests as they fall due (`RATE` a second, checked every
//! 100 µs, so a handful at a time, not a millisecond's worth); each goes out on whichever
//! connection is free (one request in flight per connection) and must come back whole (200
//! with a `Content-Length`). A request's latency runs from its release: when every
//! connection is still waiting on the server, the time it waits for one counts against the
//! server, as in wrk2 (no coordinated omission); the pacer's own lateness does not.
//!
//! With `--closed` instead of `--rate`, every connection sends its next request as soon as
//! the last one is answered (a closed loop, as wrk), and a latency runs from the send.
//!
//! Prints one line, `requests N rate R p50 P p90 P p99 P p999 P max P` (latencies in ms).
//! With `--phase-ms P` (see `route_churn churn --phase-ms`) two more follow, `on requests N
//! p50 … max P slices K slice_p99_median P` and `off …`: the requests released (or sent) in
//! the "on" and the "off" wall-clock slices of P ms (counted from the Unix epoch and dealt
//! to the two halves as `route_churn --phase-ms` deals them), leaving out
//! those of each slice's first `--guard-ms`, where the other half's effects may linger;
//! `slice_p99_median` is the median over the half's K slices of each slice's own p99.
//!
//! Any failure ends the run with an error and status 1: a connection that cannot be made or
//! breaks, an answer that is not 200.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

#[path = "bench_support/pace.rs"]
// Shared with route_churn, which paces its writes; this one only sorts by slice.
#[allow(dead_code)]
mod pace;
use pace::{Half, Phases};

#[derive(Parser, Debug)]
#[command(about = "Sends HTTP/1.1 requests at a fixed rate and prints latency percentiles")]
struct Args {
    /// Where to send.
    #[arg(long)]
    addr: SocketAddr,
    /// The `Host` header.
    #[arg(long, default_value = "hello.caas.local")]
    host: String,
    /// The request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Requests per second, in all.
    #[arg(long, required_unless_present = "closed", conflicts_with = "closed")]
    rate: Option<u32>,
    /// Every connection busy instead: the next request as soon as the last is answered.
    #[arg(long)]
    closed: bool,
    /// Keep-alive connections the rate is spread over.
    #[arg(long, default_value_t = 32)]
    conns: u32,
    /// How long to send.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Report the "on" and the "off" wall-clock slices of this many milliseconds apart.
    #[arg(long, default_value_t = 0)]
    phase_ms: u64,
    /// The start of each slice left out of both halves.
    #[arg(long, default_value_t = 100)]
    guard_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.rate == Some(0) || args.conns == 0 || args.seconds == 0 {
        eprintln!("open_loop: --rate, --conns and --seconds must be positive");
        return ExitCode::from(2);
    }
    let phases = if args.phase_ms == 0 {
        None
    } else {
        match Phases::new(
            Duration::from_millis(args.phase_ms),
            Duration::from_millis(args.guard_ms),
        ) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("open_loop: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("open_loop: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args, phases)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("open_loop: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One answered request: its latency and the slice it was released in (with phases; `None`
/// in a slice's settling start).
#[derive(Debug, Clone, Copy)]
struct Sample {
    latency: Duration,
    slice: Option<(u64, Half)>,
}

/// A request released by the pacer: when it fell due, and its slice (with phases).
type Released = (Instant, Option<(u64, Half)>);

/// What starts a connection's next request.
#[derive(Clone)]
enum Release {
    /// The pacer's queue: each entry the instant a request fell due, and its slice.
    Paced(Arc<Mutex<mpsc::UnboundedReceiver<Released>>>),
    /// The last answer, until this deadline.
    Closed(Instant, Option<Phases>),
}

async fn run(args: &Args, phases: Option<Phases>) -> Result<String, String> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: open_loop\r\n\r\n",
        args.path, args.host
    );
    let mut streams = Vec::new();
    for _ in 0..args.conns {
        let s = TcpStream::connect(args.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", args.addr))?;
        s.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY on {}: {e}", args.addr))?;
        streams.push(s);
    }
    let length = Duration::from_secs(args.seconds);
    let start = std::time::Instant::now();
    let (release, pacer) = match args.rate {
        Some(rate) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let pacer = std::thread::Builder::new()
                .name("pacer".into())
                .spawn(move || pace(&tx, rate, length, phases))
                .map_err(|e| format!("cannot start the pacer thread: {e}"))?;
            (Release::Paced(Arc::new(Mutex::new(rx))), Some(pacer))
        }
        None => (Release::Closed(Instant::now() + length, phases), None),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for stream in streams {
        tasks.spawn(connection(
            stream,
            request.clone().into_bytes(),
            release.clone(),
        ));
    }
    let mut samples = Vec::new();
    let mut failed = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| format!("connection task: {e}")) {
            Ok(Ok(mut conn)) => samples.append(&mut conn),
            Ok(Err(e)) | Err(e) => {
                // The first failure ends the run: closing the queue stops the pacer, and
                // in a closed loop, the other connections.
                if let Release::Paced(rx) = &release {
                    rx.lock().await.close();
                } else {
                    tasks.abort_all();
                }
                failed.get_or_insert(e);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if pacer.is_some_and(|p| p.join().is_err()) {
        return Err("the pacer thread panicked".into());
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let all: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    let mut report = format!(
        "requests {} rate {:.0} {}",
        all.len(),
        all.len() as f64 / elapsed,
        percentiles(all)
    );
    if phases.is_some() {
        for (name, half) in [("on", Half::On), ("off", Half::Off)] {
            let mut slices: BTreeMap<u64, Vec<Duration>> = BTreeMap::new();
            for s in &samples {
                if let Some((n, h)) = s.slice
                    && h == half
                {
                    slices.entry(n).or_default().push(s.latency);
                }
            }
            let pooled: Vec<Duration> = slices.values().flatten().copied().collect();
            // Each slice's own p99, then the median of those: a stall that hits a slice or
            // two (another tenant of the host) moves it little, a cost every churning slice
            // pays moves it all the same.
            let mut p99s: Vec<Duration> = slices
                .into_values()
                .map(|mut l| {
                    l.sort_unstable();
                    quantile(&l, 0.99)
                })
                .collect();
            p99s.sort_unstable();
            report += &format!(
                "\n{name} requests {} {} slices {} slice_p99_median {:.3}",
                pooled.len(),
                percentiles(pooled),
                p99s.len(),
                quantile(&p99s, 0.5).as_secs_f64() * 1e3
            );
        }
    }
    Ok(report)
}

/// The `q` quantile of sorted `latencies` (zero for none).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// `p50 P p90 P p99 P p999 P max P`, in ms.
fn percentiles(mut latencies: Vec<Duration>) -> String {
    latencies.sort_unstable();
    let ms = |q: f64| quantile(&latencies, q).as_secs_f64() * 1e3;
    format!(
        "p50 {:.3} p90 {:.3} p99 {:.3} p999 {:.3} max {:.3}",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(0.999),
        ms(1.0),
    )
}

/// Releases `rate` requests a second for `total` (each as the instant it was released, and
/// its slice), then closes the queue.
fn pace(tx: &mpsc::UnboundedSender<Released>, rate: u32, total: Duration, phases: Option<Phases>) {
    let start = std::time::Instant::now();
    let mut released: u64 = 0;
    loop {
        let elapsed = start.elapsed().min(total);
        let due = (elapsed.as_secs_f64() * f64::from(rate)) as u64;
        let now = Instant::now();
        let slice = phases.and_then(|p| p.slice(SystemTime::now()));
        for _ in released..due {
            if tx.send((now, slice)).is_err() {
                return; // a connection failed: the run is over
            }
        }
        released = due;
        if elapsed >= total {
            return;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Sends requests on one connection as `release` lets it; the latency of each.
async fn connection(
    mut stream: TcpStream,
    request: Vec<u8>,
    release: Release,
) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (released, slice) = match &release {
            Release::Paced(queue) => match queue.lock().await.recv().await {
                Some(next) => next,
                None => return Ok(samples),
            },
            Release::Closed(deadline, phases) => {
                let now = Instant::now();
                if now >= *deadline {
                    return Ok(samples);
                }
                (now, phases.and_then(|p| p.slice(SystemTime::now())))
            }
        };
        stream
            .write_all(&request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        read_response(&mut stream, &mut buf).await?;
        samples.push(Sample {
            latency: released.elapsed(),
            slice,
        });
    }
}

/// Reads one whole response (200 with a Content-Length) from `stream`.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| "a non-UTF-8 head")?;
            let status = head.split(' ').nth(1).unwrap_or("");
            if status != "200" {
                return Err(format!(
                    "want 200, got {:?}",
                    head.lines().next().unwrap_or("")
                ));
            }
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .ok_or("a response without Content-Length")?;
            if buf.len() >= end + 4 + length {
                if buf.len() > end + 4 + length {
                    return Err("bytes after the response (none were asked for)".into());
                }
                return Ok(());
            }
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err("the connection closed before a whole response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
