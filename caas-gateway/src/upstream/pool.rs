//! The idle connections of one endpoint ([`UpstreamPool`]).
//!
//! The pool lives in the endpoint's attachment slot (`EndpointState::attachment`), so it
//! survives route-table rebuilds exactly as long as the endpoint does and is found without a
//! map lookup.
//!
//! Checkout takes the connection returned last (a stack, as nginx's upstream keepalive cache
//! does). After a burst of 256 concurrent requests the pool holds 256 connections; at 32 in
//! flight a first-in-first-out queue would still cycle through all 256 — every request on the
//! coldest socket and buffer, and none ever idle long enough to be reaped — where the stack
//! keeps reusing the same 32, and the rest age out. The lock is held for a push or a pop,
//! never across an await or a close.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use caas_core::EndpointState;

use super::UpstreamConn;

/// Idle connections of one endpoint: the most recently returned at the back.
#[derive(Debug)]
pub(crate) struct UpstreamPool {
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
}

#[derive(Debug)]
struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

impl Idle {
    fn usable(&self, max_idle_time: Duration) -> bool {
        self.since.elapsed() < max_idle_time && self.conn.is_reusable()
    }
}

impl UpstreamPool {
    /// A pool of at most `max_idle` connections; 0 keeps none (every request connects anew).
    pub(crate) fn new(max_idle: usize) -> Self {
        Self {
            idle: Mutex::new(VecDeque::with_capacity(max_idle.min(64))),
            max_idle,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        // A push or a pop cannot leave the deque half-changed.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently returned idle connection that is still open and not older than
    /// `max_idle_time`.
    pub(crate) fn take(&self, max_idle_time: Duration) -> Option<UpstreamConn> {
        loop {
            let idle = self.lock().pop_back()?;
            if idle.usable(max_idle_time) {
                return Some(idle.conn);
            }
            // Dropped (closed) here, outside the lock.
        }
    }

    /// Returns a connection after a complete exchange. When the pool is full, the connection
    /// idle the longest is closed to make room. The connection waits without a read buffer.
    pub(crate) fn put(&self, mut conn: UpstreamConn) {
        if self.max_idle == 0 {
            return;
        }
        conn.release_buf();
        conn.forget_waiter();
        let idle = Idle {
            conn,
            since: Instant::now(),
        };
        let _oldest = {
            let mut q = self.lock();
            let oldest = if q.len() >= self.max_idle {
                q.pop_front()
            } else {
                None
            };
            q.push_back(idle);
            oldest
        };
    }

    /// Closes connections idle for longer than `max_idle_time` or closed by the upstream
    /// (called periodically); returns how many.
    pub(crate) fn reap(&self, max_idle_time: Duration) -> usize {
        let idle = std::mem::take(&mut *self.lock());
        let (keep, close): (VecDeque<Idle>, VecDeque<Idle>) =
            idle.into_iter().partition(|i| i.usable(max_idle_time));
        let mut q = self.lock();
        // Connections returned while the lock was released are newer: they stay on top.
        let returned = std::mem::replace(&mut *q, keep);
        q.extend(returned);
        let surplus = q.len().saturating_sub(self.max_idle);
        let evicted: Vec<Idle> = q.drain(..surplus).collect();
        drop(q);
        close.len() + evicted.len()
    }

    /// Idle connections now in the pool.
    pub(crate) fn idle_count(&self) -> usize {
        self.lock().len()
    }
}

/// Idle upstream connections pooled for one endpoint (for the admin API).
pub(crate) fn pooled_idle(ep: &EndpointState) -> usize {
    ep.get_attachment::<UpstreamPool>()
        .map_or(0, UpstreamPool::idle_count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// `n` connections to a loopback listener, and the listener's side of each.
    async fn conns(n: usize) -> (Vec<UpstreamConn>, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..n {
            ours.push(
                UpstreamConn::connect(addr, Duration::from_secs(5))
                    .await
                    .unwrap(),
            );
            theirs.push(listener.accept().await.unwrap().0);
        }
        (ours, theirs)
    }

    /// Which server-side socket a client connection is: write a byte, see who gets it.
    async fn peer_index(conn: &mut UpstreamConn, servers: &mut [TcpStream]) -> usize {
        conn.io.write_all(b"?").await.unwrap();
        loop {
            for (i, s) in servers.iter_mut().enumerate() {
                let mut b = [0u8; 1];
                if let Ok(1) = s.try_read(&mut b) {
                    return i;
                }
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn returned_connections_are_reused_and_the_bound_closes_surplus() {
        let (ours, mut theirs) = conns(3).await;
        let pool = UpstreamPool::new(2);
        for c in ours {
            pool.put(c);
        }
        assert_eq!(pool.idle_count(), 2, "the third did not fit");
        // The surplus connection was closed: its server side reads EOF.
        let mut eof = 0;
        for s in &mut theirs {
            let mut b = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await
            {
                eof += 1;
            }
        }
        assert_eq!(eof, 1);
        let mut a = pool.take(Duration::from_secs(60)).unwrap();
        let mut b = pool.take(Duration::from_secs(60)).unwrap();
        assert!(pool.take(Duration::from_secs(60)).is_none());
        let (i, j) = (
            peer_index(&mut a, &mut theirs).await,
            peer_index(&mut b, &mut theirs).await,
        );
        assert_ne!(i, j, "two distinct pooled connections");
    }

    #[tokio::test]
    async fn a_pooled_connection_holds_no_read_buffer() {
        let (mut ours, _theirs) = conns(1).await;
        let mut conn = ours.pop().unwrap();
        conn.buf.reserve(16 * 1024);
        assert!(conn.buf.capacity() >= 16 * 1024);
        let pool = UpstreamPool::new(4);
        pool.put(conn);
        let conn = pool.take(Duration::from_secs(60)).unwrap();
        assert_eq!(conn.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn the_connection_returned_last_is_reused_and_the_rest_age_out() {
        let (ours, mut theirs) = conns(4).await;
        let pool = UpstreamPool::new(8);
        for c in ours {
            pool.put(c);
        }
        // One request at a time: every checkout gets the same, most recently used connection.
        let mut first = None;
        for _ in 0..5 {
            let mut c = pool.take(Duration::from_secs(60)).unwrap();
            let peer = peer_index(&mut c, &mut theirs).await;
            assert_eq!(*first.get_or_insert(peer), peer, "the hot connection again");
            pool.put(c);
        }
        assert_eq!(first, Some(3), "the one returned last");
        // The three never used since are the oldest: a reap with a limit between their age
        // and the hot one's closes exactly them.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let mut c = pool.take(Duration::from_secs(60)).unwrap();
        pool.put(c);
        assert_eq!(pool.reap(Duration::from_millis(30)), 3);
        c = pool.take(Duration::from_secs(60)).unwrap();
        assert_eq!(peer_index(&mut c, &mut theirs).await, 3);
        assert!(pool.take(Duration::from_secs(60)).is_none());
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_never_handed_out() {
        let (mut ours, mut theirs) = conns(2).await;
        let pool = UpstreamPool::new(4);
        let (keep, gone) = (ours.remove(1), ours.remove(0));
        pool.put(gone);
        pool.put(keep);
        // The upstream closes the first one while it is idle; the reactor sees the FIN.
        drop(theirs.remove(0));
        let mut got = None;
        for _ in 0..1000 {
            if pool.reap(Duration::from_secs(60)) == 1 {
                got = pool.take(Duration::from_secs(60));
                break;
            }
            tokio::task::yield_now().await;
        }
        let mut got = got.expect("the closed connection was reaped");
        assert_eq!(peer_index(&mut got, &mut theirs).await, 0, "the open one");
        assert!(pool.take(Duration::from_secs(60)).is_none());
    }

    #[tokio::test]
    async fn stray_bytes_or_age_make_a_connection_unusable() {
        let (ours, mut theirs) = conns(2).await;
        let pool = UpstreamPool::new(4);
        for c in ours {
            pool.put(c);
        }
        // Bytes nobody asked for (a late response, garbage) poison a pooled connection.
        theirs[0]
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .unwrap();
        theirs[1].write_all(b"junk").await.unwrap();
        let mut left = 2;
        for _ in 0..1000 {
            left -= pool.reap(Duration::from_secs(60));
            if left == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(left, 0, "both were closed");
        let (ours, _theirs) = conns(1).await;
        pool.put(ours.into_iter().next().unwrap());
        assert!(
            pool.take(Duration::ZERO).is_none(),
            "older than the idle limit"
        );
    }
}
