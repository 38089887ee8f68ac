//! Upstream HTTP/1.1 connections, their pool, and the exchange of a request for a response
//! head.
//!
//! Everything here runs in the task of the client request that uses the connection: there is
//! no connection task and no channel between the request and its upstream, so a request
//! costs no task hand-off (the wire format is in `h1`). The response body is read by
//! [`crate::body::UpstreamBody`] as the client connection asks for it, which also finishes
//! sending a request body the upstream started answering before it was complete.
//!
//! The pool lives in the endpoint's attachment slot (`EndpointState::attachment`), so it
//! survives route-table rebuilds exactly as long as the endpoint does and is found without a
//! map lookup. Checkout and return are lock-free (`crossbeam_queue::ArrayQueue`); the queue's
//! capacity is the idle bound, and a connection that does not fit is closed.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use caas_core::{AppState, EndpointState};
use crossbeam_queue::ArrayQueue;
use http::Method;
use http_body::Body;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::body::RequestBody;
use crate::error::ProxyError;
use crate::h1::{self, RequestFraming, ResponseHead};

/// Free space the read buffer has before a read: a response head arrives whole, and a
/// response of up to about 16 KiB (an 8 KiB page and its head) in one read.
const READ_RESERVE: usize = 16 * 1024;
/// Read size while streaming a body that is known to be large.
const READ_RESERVE_BODY: usize = 64 * 1024;

/// One upstream HTTP/1.1 connection.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    io: TcpStream,
    /// Bytes read and not consumed yet.
    buf: BytesMut,
    addr: SocketAddr,
}

impl UpstreamConn {
    /// Opens a new connection to `addr`.
    pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ProxyError> {
        let fail = |reason: String| ProxyError::Connect { addr, reason };
        let io = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Err(_) => return Err(fail(format!("timed out after {} ms", timeout.as_millis()))),
        };
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(%addr, "set_nodelay failed: {e}");
        }
        Ok(Self {
            io,
            buf: BytesMut::new(),
            addr,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether an idle connection can carry another request: nothing arrived on it while it
    /// sat in the pool (no FIN, no reset, no stray bytes). Costs no system call unless the
    /// reactor saw the socket become readable.
    fn is_reusable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more bytes into the buffer (at least `reserve` bytes of room). `Ok(0)`: the
    /// upstream closed its side. A read that does not fill the room tells the reactor the
    /// socket is drained, so the next read waits for readiness instead of trying a system
    /// call that would find nothing.
    pub(crate) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        reserve: usize,
    ) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < reserve {
            // Reclaims the buffer's own space when the bytes handed out earlier are gone.
            self.buf.reserve(reserve);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// The buffered bytes not consumed yet.
    pub(crate) fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Writes as much of `buf` as the socket takes now.
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    /// Writes as much of `bufs` as the socket takes now.
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    /// The stream and the bytes read past the response head, for a protocol switch.
    pub(crate) fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.io, self.buf)
    }
}

/// Sends a request body on a connection: the client's frames, chunk-framed when the length
/// is not known, as they arrive.
#[derive(Debug)]
pub(crate) struct BodySender {
    body: RequestBody,
    framing: RequestFraming,
    /// Framing bytes and data not written yet: chunk-size line, data, CRLF.
    prefix: Bytes,
    data: Bytes,
    suffix: &'static [u8],
    /// The last frame was taken from the client.
    ended: bool,
    /// Any frame was taken from the client (the body can no longer be sent again).
    started: bool,
}

impl BodySender {
    pub(crate) fn new(body: RequestBody, framing: RequestFraming) -> Self {
        Self {
            body,
            framing,
            prefix: Bytes::new(),
            data: Bytes::new(),
            suffix: b"",
            ended: framing == RequestFraming::Empty,
            started: false,
        }
    }

    /// Attributes the body's bytes to an app and endpoint.
    pub(crate) fn count_to(&mut self, app: &Arc<AppState>, ep: &Arc<EndpointState>) {
        self.body.count_to(app, ep);
    }

    /// When the last chunk was taken from the client ([`crate::body::clock_ms`]).
    pub(crate) fn progress(&self) -> Option<Arc<AtomicU64>> {
        self.body.progress()
    }

    /// Whether any part of the body was taken from the client.
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    fn pending(&self) -> bool {
        !self.prefix.is_empty() || !self.data.is_empty() || !self.suffix.is_empty()
    }

    /// Sends until the body is complete (`Ready(Ok)`), the socket or the client is not
    /// ready (`Pending`), or something fails.
    pub(crate) fn poll_send(
        &mut self,
        conn: &mut UpstreamConn,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendBodyError>> {
        loop {
            while self.pending() {
                let bufs = [
                    io::IoSlice::new(&self.prefix),
                    io::IoSlice::new(&self.data),
                    io::IoSlice::new(self.suffix),
                ];
                let mut n =
                    ready!(conn.poll_write_vectored(cx, &bufs)).map_err(SendBodyError::Upstream)?;
                if n == 0 {
                    return Poll::Ready(Err(SendBodyError::Upstream(
                        io::ErrorKind::WriteZero.into(),
                    )));
                }
                for part in [&mut self.prefix, &mut self.data] {
                    let k = n.min(part.len());
                    part.advance(k);
                    n -= k;
                }
                self.suffix = &self.suffix[n.min(self.suffix.len())..];
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            self.started = true;
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        if self.framing == RequestFraming::Chunked {
                            self.prefix = Bytes::from(format!("{:x}\r\n", data.len()));
                            self.suffix = b"\r\n";
                        }
                        self.data = data;
                    }
                    Err(frame) => {
                        if let (Ok(trailers), RequestFraming::Chunked) =
                            (frame.into_trailers(), self.framing)
                        {
                            let mut t = Vec::from(&b"0\r\n"[..]);
                            for (name, value) in &trailers {
                                t.extend_from_slice(name.as_str().as_bytes());
                                t.extend_from_slice(b": ");
                                t.extend_from_slice(value.as_bytes());
                                t.extend_from_slice(b"\r\n");
                            }
                            t.extend_from_slice(b"\r\n");
                            self.prefix = Bytes::from(t);
                            self.ended = true;
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Err(SendBodyError::Client(e.to_string()))),
                None => {
                    if self.framing == RequestFraming::Chunked {
                        self.suffix = b"0\r\n\r\n";
                    }
                    self.ended = true;
                }
            }
        }
    }
}

/// Why a request body could not be sent.
#[derive(Debug)]
pub(crate) enum SendBodyError {
    /// Writing to the upstream failed.
    Upstream(io::Error),
    /// The client's body failed (it went away mid-upload).
    Client(String),
}

impl std::fmt::Display for SendBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Upstream(e) => write!(f, "writing to the upstream failed: {e}"),
            Self::Client(e) => write!(f, "the client's body failed: {e}"),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// The connection closed before any byte of a response arrived and nothing of the request
    /// body was consumed: the request can be sent again as it is.
    Closed(String),
    /// Anything else.
    Failed(String),
    /// No response head within the response timeout.
    TimedOut(ProxyError),
}

/// The state of one request on one connection: written head, body in progress.
#[derive(Debug)]
pub(crate) struct Exchange<'a> {
    pub(crate) conn: &'a mut UpstreamConn,
    head: &'a [u8],
    written: usize,
    pub(crate) body: Option<BodySender>,
    /// Nothing more of the body to send (all of it went out, or writing it failed).
    body_done: bool,
    /// Writing the body failed: the upstream stopped reading.
    body_broken: bool,
    method: &'a Method,
}

impl<'a> Exchange<'a> {
    pub(crate) fn new(
        conn: &'a mut UpstreamConn,
        head: &'a [u8],
        body: Option<BodySender>,
        method: &'a Method,
    ) -> Self {
        Self {
            conn,
            head,
            written: 0,
            body_done: body.is_none(),
            body_broken: false,
            body,
            method,
        }
    }

    /// Writes the head, sends the body and reads the response head, all at once: an upstream
    /// may answer before it has read the whole body.
    pub(crate) async fn response_head(&mut self) -> Result<ResponseHead, ExchangeError> {
        poll_fn(|cx| self.poll_response_head(cx)).await
    }

    fn poll_response_head(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<ResponseHead, ExchangeError>> {
        let fresh = |this: &Self| this.body.as_ref().is_none_or(|b| !b.started());
        while self.written < self.head.len() {
            match ready!(self.conn.poll_write(cx, &self.head[self.written..])) {
                Ok(0) => {
                    return Poll::Ready(Err(ExchangeError::Closed("connection closed".into())));
                }
                Ok(n) => self.written += n,
                Err(e) => {
                    return Poll::Ready(Err(if self.written == 0 && fresh(self) {
                        ExchangeError::Closed(e.to_string())
                    } else {
                        ExchangeError::Failed(e.to_string())
                    }));
                }
            }
        }
        if !self.body_done {
            if let Some(body) = self.body.as_mut() {
                match body.poll_send(self.conn, cx) {
                    Poll::Ready(Ok(())) => self.body_done = true,
                    Poll::Ready(Err(SendBodyError::Client(e))) => {
                        return Poll::Ready(Err(ExchangeError::Failed(format!(
                            "client body failed: {e}"
                        ))));
                    }
                    // The upstream may have answered before closing: read on; if there is no
                    // answer the read fails too.
                    Poll::Ready(Err(SendBodyError::Upstream(_))) => {
                        self.body_done = true;
                        self.body_broken = true;
                    }
                    Poll::Pending => {}
                }
            }
        }
        loop {
            match h1::parse_response_head(&mut self.conn.buf, self.method) {
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(ExchangeError::Failed(e.to_string()))),
            }
            let before = self.conn.buf.len();
            match ready!(self.conn.poll_fill(cx, READ_RESERVE)) {
                Ok(0) if before == 0 && fresh(self) => {
                    return Poll::Ready(Err(ExchangeError::Closed(
                        "connection closed before responding".into(),
                    )));
                }
                Ok(0) => {
                    return Poll::Ready(Err(ExchangeError::Failed(
                        "connection closed before a complete response head".into(),
                    )));
                }
                Ok(_) => {}
                Err(e) if before == 0 && fresh(self) => {
                    return Poll::Ready(Err(ExchangeError::Closed(e.to_string())));
                }
                Err(e) => return Poll::Ready(Err(ExchangeError::Failed(e.to_string()))),
            }
        }
    }

    /// The request body's sender, with whatever it has not sent yet.
    pub(crate) fn take_body(&mut self) -> Option<BodySender> {
        self.body.take()
    }

    /// Whether the whole request went out.
    pub(crate) fn request_complete(&self) -> bool {
        self.body_done && !self.body_broken && self.written == self.head.len()
    }
}

/// Read reserve for a body of `left` more bytes.
pub(crate) fn body_reserve(left: Option<u64>) -> usize {
    match left {
        Some(l) if l <= READ_RESERVE as u64 => READ_RESERVE,
        _ => READ_RESERVE_BODY,
    }
}

/// Idle connections of one endpoint.
#[derive(Debug)]
pub(crate) struct UpstreamPool {
    idle: ArrayQueue<Idle>,
}

#[derive(Debug)]
struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

impl UpstreamPool {
    pub(crate) fn new(max_idle: usize) -> Self {
        Self {
            idle: ArrayQueue::new(max_idle.max(1)),
        }
    }

    /// An idle connection that is still open and not older than `max_idle_time`.
    pub(crate) fn take(&self, max_idle_time: Duration) -> Option<UpstreamConn> {
        while let Some(idle) = self.idle.pop() {
            if idle.since.elapsed() < max_idle_time && idle.conn.is_reusable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Returns a connection after a complete exchange; surplus ones are closed.
    pub(crate) fn put(&self, conn: UpstreamConn) {
        // A full pool rejects the push; dropping the connection closes it.
        let _surplus = self.idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes connections idle for longer than `max_idle_time` or closed by the upstream
    /// (called periodically).
    pub(crate) fn reap(&self, max_idle_time: Duration) -> usize {
        let mut closed = 0;
        for _ in 0..self.idle.len() {
            match self.idle.pop() {
                Some(idle) if idle.since.elapsed() < max_idle_time && idle.conn.is_reusable() => {
                    if self.idle.push(idle).is_err() {
                        closed += 1;
                    }
                }
                Some(_) => closed += 1,
                None => break,
            }
        }
        closed
    }

    /// Idle connections now in the pool.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.len()
    }
}
