//! Upstream connections: connect with a timeout, and a bounded pool of idle HTTP/1.1
//! connections per endpoint.
//!
//! The pool lives in the endpoint's attachment slot (`EndpointState::attachment`), so it
//! survives route-table rebuilds exactly as long as the endpoint does and is found without a
//! map lookup. Checkout and return are lock-free (`crossbeam_queue::ArrayQueue`); the queue's
//! capacity is the idle bound, and a connection that does not fit is closed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;
use crate::error::ProxyError;

/// The sending half of one upstream HTTP/1.1 connection.
pub(crate) type UpstreamSender = http1::SendRequest<RequestBody>;

/// Idle connections of one endpoint.
#[derive(Debug)]
pub(crate) struct UpstreamPool {
    idle: ArrayQueue<Idle>,
}

#[derive(Debug)]
struct Idle {
    sender: UpstreamSender,
    since: Instant,
}

impl UpstreamPool {
    pub(crate) fn new(max_idle: usize) -> Self {
        Self {
            idle: ArrayQueue::new(max_idle.max(1)),
        }
    }

    /// An idle connection that is still open and not older than `max_idle_time`.
    pub(crate) fn take(&self, max_idle_time: Duration) -> Option<UpstreamSender> {
        while let Some(idle) = self.idle.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < max_idle_time {
                return Some(idle.sender);
            }
        }
        None
    }

    /// Returns a connection after a complete response; closed or surplus ones are dropped.
    pub(crate) fn put(&self, sender: UpstreamSender) {
        if sender.is_closed() {
            return;
        }
        // A full pool rejects the push; dropping the sender closes that connection.
        let _surplus = self.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Closes connections idle for longer than `max_idle_time` (called periodically).
    pub(crate) fn reap(&self, max_idle_time: Duration) -> usize {
        let mut closed = 0;
        for _ in 0..self.idle.len() {
            match self.idle.pop() {
                Some(idle) if !idle.sender.is_closed() && idle.since.elapsed() < max_idle_time => {
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

/// Opens a new connection to `addr` and spawns its driver task.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<UpstreamSender, ProxyError> {
    let fail = |reason: String| ProxyError::Connect { addr, reason };
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(fail(e.to_string())),
        Err(_) => return Err(fail(format!("timed out after {} ms", timeout.as_millis()))),
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%addr, "set_nodelay failed: {e}");
    }
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            // The request that was on this connection sees the same error and reports it.
            tracing::debug!(%addr, "upstream connection ended: {e}");
        }
    });
    Ok(sender)
}
