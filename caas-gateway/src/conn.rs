//! Connection state: what every connection of one gateway shares ([`Shared`]), what the
//! gateway knows about one client connection ([`ConnInfo`]), and the guards that keep the
//! connection's idle and head timers truthful while requests are open.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use caas_core::Router;
use caas_core::clock::now_ms;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;

use crate::access_log::{AccessLog, Pending};
use crate::config::GatewayConfig;
use crate::stats::GatewayStats;

/// Timeouts as `Duration`s, computed once.
#[derive(Debug)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
    pub(crate) upstream_idle: Duration,
    pub(crate) idle: Duration,
    pub(crate) head: Duration,
    pub(crate) eject: Duration,
    pub(crate) grace: Duration,
}

/// State shared by every connection of one gateway.
pub(crate) struct Shared {
    pub(crate) router: Arc<Router>,
    pub(crate) config: GatewayConfig,
    pub(crate) timeouts: Timeouts,
    pub(crate) stats: GatewayStats,
    pub(crate) h1: http1::Builder,
    pub(crate) h2: http2::Builder<TokioExecutor>,
    /// HTTP/1.1 clients are served by hyper instead of the gateway's own connection (a
    /// test hook, for comparing the two).
    pub(crate) hyper_http1: bool,
    /// The certificate resolver of the TLS listener, once one serves (for `/metrics`).
    pub(crate) certs: std::sync::OnceLock<Arc<crate::tls::CertResolver>>,
    /// The access log's producing side, when it is on.
    pub(crate) access_log: Option<AccessLog>,
}

/// What the gateway knows about one client connection.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    /// The peer's IP, preformatted for `X-Forwarded-For`.
    pub(crate) peer_ip: HeaderValue,
    /// Requests of this connection waiting for an upstream response head.
    pub(crate) waiting: AtomicUsize,
    /// Reads and writes that moved bytes (the idle timer watches it change).
    pub(crate) activity: AtomicU64,
    /// Requests whose response has not been sent in full.
    open: AtomicUsize,
    /// When the pending request head started ([`now_ms`]): the connection's start, or the
    /// first byte after the last response; 0 while a request is open or the connection waits
    /// on keep-alive with nothing received.
    head_since: AtomicU64,
    /// The client speaks HTTP/2 (no request-head timeout: the connection carries frames
    /// between requests).
    pub(crate) h2: bool,
    /// The connection came in over TLS.
    pub(crate) tls: bool,
    /// The gateway is shutting down: the gateway's HTTP/1.1 connection closes at the end
    /// of the request in progress, or at once between requests.
    pub(crate) draining: AtomicBool,
}

impl ConnInfo {
    pub(crate) fn new(peer: SocketAddr, h2: bool, tls: bool) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        Self {
            peer,
            peer_ip: HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("unknown")),
            waiting: AtomicUsize::new(0),
            activity: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            head_since: AtomicU64::new(now_ms()),
            h2,
            tls,
            draining: AtomicBool::new(false),
        }
    }

    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub(crate) fn proto(&self) -> &'static HeaderValue {
        static HTTP: HeaderValue = HeaderValue::from_static("http");
        static HTTPS: HeaderValue = HeaderValue::from_static("https");
        if self.tls { &HTTPS } else { &HTTP }
    }

    /// Called after each read that brought bytes from the client.
    pub(crate) fn on_read(&self) {
        self.activity.fetch_add(1, Relaxed);
        if self.open.load(Relaxed) == 0 && self.head_since.load(Relaxed) == 0 {
            self.head_since.store(now_ms(), Relaxed);
        }
    }

    /// Whether an HTTP/1 request head has been pending for `timeout_ms` or more.
    pub(crate) fn head_overdue(&self, timeout_ms: u64) -> bool {
        let since = self.head_since.load(Relaxed);
        since != 0 && !self.h2 && now_ms().saturating_sub(since) >= timeout_ms
    }

    /// No request of this HTTP/1 connection is open: whatever hyper writes now is its own
    /// answer to a head it could not parse.
    pub(crate) fn between_http1_requests(&self) -> bool {
        !self.h2 && self.open.load(Relaxed) == 0
    }

    /// A request head is complete: its response is open until [`ResponseDone`] drops.
    pub(crate) fn request_started(self: &Arc<Self>) -> ResponseDone {
        self.open.fetch_add(1, Relaxed);
        self.head_since.store(0, Relaxed);
        ResponseDone(Arc::clone(self))
    }
}

/// Held by a response body: when it drops, the response has been sent (or abandoned).
#[derive(Debug)]
pub(crate) struct ResponseDone(Arc<ConnInfo>);

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// Counts a request as waiting on its connection (the idle timer leaves it alone).
pub(crate) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    pub(crate) fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Relaxed);
        Self(c)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A response body that tells its connection when the response is over (when it drops),
/// and counts the bytes the client took for the request's access log line.
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    // Fields drop in this order: the body (and with it the request body, which adds its
    // bytes to the line), then the connection's count, then the line, which is sent.
    body: B,
    _done: ResponseDone,
    log: Option<Box<Pending>>,
}

impl<B> Tracked<B> {
    pub(crate) fn new(body: B, done: ResponseDone, log: Option<Box<Pending>>) -> Self {
        Self {
            body,
            _done: done,
            log,
        }
    }
}

impl<B: Body<Data = Bytes, Error = io::Error> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = io::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let (Some(log), Poll::Ready(Some(Ok(frame)))) = (this.log.as_mut(), &polled)
            && let Some(data) = frame.data_ref()
        {
            log.bytes_out += data.len() as u64;
        }
        polled
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Yields once before a send that wakes a peer (a response head to a client, a request to
/// an upstream) while other client connections are open, so the send happens after the
/// runtime has run every task made ready by the same batch of events: the receives first,
/// then the sends, as HAProxy's event loop orders them.
///
/// A send on loopback, or to any peer sharing the gateway's CPU, wakes the peer on that CPU
/// in the expectation that the sender sleeps soon. Sent in the middle of a batch, the woken
/// peer preempts the gateway with the rest of the batch still to run. With one connection
/// there is no batch to finish, and the yield (a second poll of the task) would only cost.
pub(crate) async fn send_after_batch(stats: &GatewayStats) {
    if stats.connections_active.load(Relaxed) > 1 {
        BackOfQueue(false).await;
    }
}

/// Pending once, with its task woken: the runtime queues the task behind every task already
/// ready, and runs it in the same pass, before it next asks the kernel for events.
///
/// `tokio::task::yield_now` would defer the wake instead, until the runtime has polled for
/// new events: one more `epoll_wait` (that returns nothing, on a busy gateway) per batch.
struct BackOfQueue(bool);

impl Future for BackOfQueue {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
