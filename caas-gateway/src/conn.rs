//! Connection state: what every connection of one gateway shares ([`Shared`]), what the
//! gateway knows about one client connection ([`ConnInfo`]), every open connection of a
//! listener ([`Conns`], which the sweeper walks to close idle and slow ones, and the
//! shutdown to drain them), and the guards that keep the idle and head timers truthful
//! while requests are open.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
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
    pub(crate) tunnel_idle: Duration,
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
    /// between requests). Known once the first bytes (or the TLS handshake's ALPN) are in.
    h2: AtomicBool,
    /// The connection came in over TLS.
    pub(crate) tls: bool,
    /// The gateway is shutting down: the gateway's HTTP/1.1 connection closes at the end
    /// of the request in progress, or at once between requests.
    pub(crate) draining: AtomicBool,
    /// What the gateway wants of the connection ([`Verdict`] as a number; 0: nothing), set
    /// by the sweeper or the shutdown, which then wake `task`.
    verdict: AtomicU8,
    /// The waker of the connection's task.
    task: Mutex<Option<Waker>>,
}

impl ConnInfo {
    pub(crate) fn new(peer: SocketAddr, tls: bool) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        Self {
            peer,
            peer_ip: HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("unknown")),
            waiting: AtomicUsize::new(0),
            activity: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            head_since: AtomicU64::new(now_ms()),
            h2: AtomicBool::new(false),
            tls,
            draining: AtomicBool::new(false),
            verdict: AtomicU8::new(0),
            task: Mutex::new(None),
        }
    }

    /// Whether the client speaks HTTP/2.
    pub(crate) fn h2(&self) -> bool {
        self.h2.load(Relaxed)
    }

    /// Once the protocol is known (sniffed, or the TLS handshake's ALPN): HTTP/2 or not, and
    /// the request-head clock starts again (the handshake had its own head timeout).
    pub(crate) fn protocol_known(&self, h2: bool) {
        self.h2.store(h2, Relaxed);
        self.head_since.store(now_ms(), Relaxed);
    }

    /// Asks the connection's task to act on `v`, and wakes it.
    fn order(&self, v: Verdict) {
        self.verdict.store(v as u8, Relaxed);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }

    /// What the gateway has asked of the connection, if anything. `known`: the waker this
    /// task registered last (kept by the caller, so the steady state takes no lock).
    pub(crate) fn verdict(&self, cx: &Context<'_>, known: &mut Option<Waker>) -> Option<Verdict> {
        if !known.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let w = cx.waker().clone();
            *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(w.clone());
            *known = Some(w);
        }
        match self.verdict.load(Relaxed) {
            1 => Some(Verdict::Idle),
            2 => Some(Verdict::HeadTimeout),
            3 => Some(Verdict::Stop),
            _ => None,
        }
    }

    /// Takes back a [`Verdict::Stop`] once acted on (the connection drains), so that only a
    /// later verdict wakes it again.
    pub(crate) fn stop_taken(&self) {
        let _ = self
            .verdict
            .compare_exchange(Verdict::Stop as u8, 0, Relaxed, Relaxed);
    }

    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub(crate) fn proto(&self) -> &'static HeaderValue {
        static HTTP: HeaderValue = HeaderValue::from_static("http");
        static HTTPS: HeaderValue = HeaderValue::from_static("https");
        if self.tls { &HTTPS } else { &HTTP }
    }

    /// Called after each read that brought bytes from the client. `starts_head`: a read with
    /// no request open starts the request-head timer (under hyper's server, which gives no
    /// other sign of a head begun; the gateway's own HTTP/1 server says when with
    /// [`head_started`](Self::head_started), since its reads between requests may be the
    /// rest of a request body).
    pub(crate) fn on_read(&self, starts_head: bool) {
        self.activity.fetch_add(1, Relaxed);
        if starts_head && self.open.load(Relaxed) == 0 {
            self.head_started();
        }
    }

    /// Bytes of a request head are in: the head timer runs, if it does not already, until
    /// the head is complete ([`request_started`](Self::request_started)).
    pub(crate) fn head_started(&self) {
        if self.head_since.load(Relaxed) == 0 {
            self.head_since.store(now_ms(), Relaxed);
        }
    }

    /// Whether an HTTP/1 request head has been pending for `timeout_ms` or more.
    fn head_overdue(&self, now_ms: u64, timeout_ms: u64) -> bool {
        let since = self.head_since.load(Relaxed);
        since != 0 && !self.h2() && now_ms.saturating_sub(since) >= timeout_ms
    }

    /// No request of this HTTP/1 connection is open: whatever hyper writes now is its own
    /// answer to a head it could not parse.
    pub(crate) fn between_http1_requests(&self) -> bool {
        !self.h2() && self.open.load(Relaxed) == 0
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
        if let (Some(log), Poll::Ready(Some(frame))) = (this.log.as_mut(), &polled) {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        log.bytes_out += data.len() as u64;
                    }
                }
                // Only an upstream body fails: the upstream cut the response, or it was cut
                // after the client's request body broke.
                Err(e) => log.body_failed = crate::upstream::body::is_upstream_failure(e),
            }
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

/// What the gateway asks of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Close it: nothing moved for the idle timeout.
    Idle = 1,
    /// Close it: its request head (or TLS handshake) took longer than the head timeout.
    HeadTimeout = 2,
    /// The gateway is shutting down: finish what is in progress and close.
    Stop = 3,
}

/// Every open client connection of one listener: the sweeper walks them once a tick to
/// close idle and slow ones, and the shutdown to drain them. One timer for all of them
/// instead of one in each connection's task: an idle connection holds no timer, and a busy
/// one polls none on each wake-up.
#[derive(Default)]
pub(crate) struct Conns {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Option<Watched>>,
    free: Vec<usize>,
    stopping: bool,
}

/// A connection as the sweeper sees it: its activity count at the last tick, and for how
/// many ticks in a row it had not moved.
struct Watched {
    info: Arc<ConnInfo>,
    last: u64,
    quiet: u32,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches a connection until the returned guard drops. A connection registered once
    /// the shutdown began is told to stop at once.
    pub(crate) fn register(self: &Arc<Self>, info: &Arc<ConnInfo>) -> Registered {
        let mut slots = self.lock();
        let watched = Watched {
            info: Arc::clone(info),
            last: 0,
            quiet: 0,
        };
        let slot = match slots.free.pop() {
            Some(i) => {
                slots.entries[i] = Some(watched);
                i
            }
            None => {
                slots.entries.push(Some(watched));
                slots.entries.len() - 1
            }
        };
        if slots.stopping {
            info.order(Verdict::Stop);
        }
        Registered {
            conns: Arc::clone(self),
            slot,
        }
    }

    /// The shutdown: every connection, and every one registered from now on, is told to stop.
    pub(crate) fn stop_all(&self) {
        let mut slots = self.lock();
        slots.stopping = true;
        for w in slots.entries.iter().flatten() {
            w.info.order(Verdict::Stop);
        }
    }

    /// One tick of the sweeper: connections whose request head is overdue (`head_ms`), or
    /// that have not moved for `idle_ticks` ticks with no request waiting on an upstream, are
    /// told to close.
    pub(crate) fn sweep(&self, head_ms: u64, idle_ticks: u32) {
        let now = now_ms();
        let mut slots = self.lock();
        for w in slots.entries.iter_mut().flatten() {
            if w.info.head_overdue(now, head_ms) {
                w.info.order(Verdict::HeadTimeout);
                continue;
            }
            let activity = w.info.activity.load(Relaxed);
            if activity != w.last || w.info.waiting.load(Relaxed) > 0 {
                (w.last, w.quiet) = (activity, 0);
            } else {
                w.quiet = w.quiet.saturating_add(1);
                if w.quiet >= idle_ticks {
                    w.info.order(Verdict::Idle);
                }
            }
        }
    }

    /// Connections watched now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.iter().flatten().count()
    }
}

/// A connection's place in [`Conns`], given back when it drops.
pub(crate) struct Registered {
    conns: Arc<Conns>,
    slot: usize,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut slots = self.conns.lock();
        if let Some(e) = slots.entries.get_mut(self.slot) {
            *e = None;
            slots.free.push(self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    fn conn() -> Arc<ConnInfo> {
        Arc::new(ConnInfo::new("127.0.0.1:1".parse().unwrap(), false))
    }

    /// Registers `info`'s task waker (as the connection's first poll does) and returns
    /// what the gateway asked of it.
    fn poll_verdict(info: &ConnInfo, waker: &Waker, known: &mut Option<Waker>) -> Option<Verdict> {
        info.verdict(&Context::from_waker(waker), known)
    }

    #[test]
    fn a_closed_connection_gives_its_slot_back() {
        let conns = Arc::new(Conns::default());
        let (a, b) = (conn(), conn());
        let ra = conns.register(&a);
        let rb = conns.register(&b);
        assert_eq!(conns.len(), 2);
        drop(ra);
        assert_eq!(conns.len(), 1);
        let rc = conns.register(&conn());
        assert_eq!(conns.len(), 2);
        assert_eq!(conns.lock().entries.len(), 2, "the freed slot is reused");
        drop((rb, rc));
        assert_eq!(conns.len(), 0);
    }

    #[test]
    fn the_sweeper_closes_a_connection_idle_for_its_ticks_and_wakes_it() {
        let conns = Arc::new(Conns::default());
        let info = conn();
        info.request_started(); // no head pending: only the idle timer applies
        let _r = conns.register(&info);
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut known = None;
        assert_eq!(poll_verdict(&info, &waker, &mut known), None);
        conns.sweep(u64::MAX, 3);
        conns.sweep(u64::MAX, 3);
        info.activity.fetch_add(1, Relaxed); // a byte moved: the count starts again
        conns.sweep(u64::MAX, 3);
        conns.sweep(u64::MAX, 3);
        conns.sweep(u64::MAX, 3);
        assert_eq!(poll_verdict(&info, &waker, &mut known), None);
        assert_eq!(counter.0.load(Relaxed), 0);
        conns.sweep(u64::MAX, 3);
        assert_eq!(poll_verdict(&info, &waker, &mut known), Some(Verdict::Idle));
        assert_eq!(
            counter.0.load(Relaxed),
            1,
            "the connection's task was woken"
        );
    }

    #[test]
    fn a_request_waiting_on_an_upstream_keeps_its_connection_from_idling() {
        let conns = Arc::new(Conns::default());
        let info = conn();
        let _done = info.request_started();
        let _r = conns.register(&info);
        let _waiting = Waiting::new(&info.waiting);
        for _ in 0..10 {
            conns.sweep(u64::MAX, 2);
        }
        assert_eq!(info.verdict.load(Relaxed), 0);
    }

    #[test]
    fn the_sweeper_closes_a_connection_whose_head_is_overdue() {
        let conns = Arc::new(Conns::default());
        let info = conn();
        let _r = conns.register(&info);
        conns.sweep(60_000, u32::MAX);
        assert_eq!(info.verdict.load(Relaxed), 0, "within the head timeout");
        // A head timeout of 0: any pending head is overdue.
        conns.sweep(0, u32::MAX);
        assert_eq!(info.verdict.load(Relaxed), Verdict::HeadTimeout as u8);
        // HTTP/2 carries frames between requests: no head timeout.
        let h2 = conn();
        h2.protocol_known(true);
        let _r2 = conns.register(&h2);
        conns.sweep(0, u32::MAX);
        assert_eq!(h2.verdict.load(Relaxed), 0);
        // Nor while a request is open.
        let busy = conn();
        let _done = busy.request_started();
        let _r3 = conns.register(&busy);
        conns.sweep(0, u32::MAX);
        assert_eq!(busy.verdict.load(Relaxed), 0);
    }

    #[test]
    fn the_shutdown_stops_every_connection_and_those_that_come_after() {
        let conns = Arc::new(Conns::default());
        let info = conn();
        let _r = conns.register(&info);
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut known = None;
        assert_eq!(poll_verdict(&info, &waker, &mut known), None);
        conns.stop_all();
        assert_eq!(counter.0.load(Relaxed), 1);
        assert_eq!(poll_verdict(&info, &waker, &mut known), Some(Verdict::Stop));
        info.stop_taken();
        assert_eq!(
            poll_verdict(&info, &waker, &mut known),
            None,
            "acted on once"
        );
        let late = conn();
        let _r2 = conns.register(&late);
        assert_eq!(late.verdict.load(Relaxed), Verdict::Stop as u8);
    }

    #[test]
    fn a_new_task_waker_is_the_one_woken() {
        let conns = Arc::new(Conns::default());
        let info = conn();
        let _r = conns.register(&info);
        let (first, second) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
        let mut known = None;
        poll_verdict(&info, &Waker::from(Arc::clone(&first)), &mut known);
        poll_verdict(&info, &Waker::from(Arc::clone(&second)), &mut known);
        conns.stop_all();
        assert_eq!(first.0.load(Relaxed), 0);
        assert_eq!(second.0.load(Relaxed), 1);
    }
}
