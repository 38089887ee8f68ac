//! The upstream side: the gateway's own HTTP/1.1 client and its per-endpoint pools.
//!
//! Everything here runs in the task of the client request that uses the connection: there is
//! no connection task and no channel between the request and its upstream, so a request
//! costs no task hand-off (the wire format is in `h1`).
//!
//! - [`UpstreamConn`] (here): one connection and its read buffer.
//! - [`exchange`]: [`Exchange`] writes a request head, sends its body ([`BodySender`], generic
//!   over the body so it is tested without a client) and reads the response head, all at
//!   once; its [`ExchangeError`] says whose fault a failure was.
//! - [`body`]: [`UpstreamBody`], the response body read from the connection as the client
//!   takes it, which also finishes sending a request body the upstream started answering
//!   early, and hands the connection back to its pool at the end.
//! - [`pool`]: [`UpstreamPool`], the idle connections of one endpoint, most recently used first.
//!
//! Nothing here knows about client connections, routes or the gateway's errors: failures are
//! reported as this module's own types and the proxy decides what they mean (for a body
//! that breaks after its head went out, through the [`BodyHealth`] the proxy hands it).

pub(crate) mod body;
pub(crate) mod exchange;
pub(crate) mod pool;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

pub(crate) use body::{BodyHealth, UpstreamBody};
pub(crate) use exchange::{BodySender, Exchange, ExchangeError};
pub(crate) use pool::UpstreamPool;

/// Free space the read buffer has before a read: a response head arrives whole, and a
/// response of up to about 16 KiB (an 8 KiB page and its head) in one read.
const READ_RESERVE: usize = 16 * 1024;
/// Read size while streaming a body that is known to be large.
const READ_RESERVE_BODY: usize = 64 * 1024;

/// Read reserve for a body of `left` more bytes.
pub(crate) fn body_reserve(left: Option<u64>) -> usize {
    match left {
        Some(l) if l <= READ_RESERVE as u64 => READ_RESERVE,
        _ => READ_RESERVE_BODY,
    }
}

/// Connecting to an upstream failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {addr}: {reason}")]
pub(crate) struct ConnectError {
    pub(crate) addr: SocketAddr,
    pub(crate) reason: String,
}

/// One upstream HTTP/1.1 connection.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    io: TcpStream,
    /// Bytes read and not consumed yet.
    buf: BytesMut,
    addr: SocketAddr,
    /// The timer of every wait on this connection (for a response head, in the middle of a
    /// body), made on the first and moved for each later one: see [`Self::poll_deadline`].
    timer: Option<Pin<Box<Sleep>>>,
}

impl UpstreamConn {
    /// Opens a new connection to `addr`.
    pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ConnectError> {
        let fail = |reason: String| ConnectError { addr, reason };
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
            timer: None,
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

    /// Lets go of the read buffer (empty: a pool takes no connection with bytes in it) while
    /// the connection waits in a pool. The allocator hands the block freed last to the next
    /// read on any connection, memory the CPU just wrote; kept per connection, 256 pooled
    /// connections would hold 4 MiB of buffers, each cold by its next turn.
    fn release_buf(&mut self) {
        debug_assert!(self.buf.is_empty());
        self.buf = BytesMut::new();
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

    /// Whether `deadline` has passed, waking the task when it does. The connection keeps one
    /// timer for all its waits: moving a registered timer to a later deadline is an atomic
    /// update of its entry, where a timer made for each wait costs an insertion into the
    /// runtime's timer wheel and a removal, each under the wheel's lock. (A timer left set
    /// while the connection sits in its pool fires once, waking its last task for nothing.)
    pub(crate) fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx)
    }

    /// Lets go of the waker of the last task that waited on the timer: a pooled connection's
    /// timer may still fire once, and polled with a no-op waker it then wakes nobody and keeps
    /// no finished task alive until it does.
    fn forget_waiter(&mut self) {
        if let Some(timer) = self.timer.as_mut() {
            let _ = timer.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        }
    }

    /// The stream and the bytes read past the response head, for a protocol switch.
    pub(crate) fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.io, self.buf)
    }
}
