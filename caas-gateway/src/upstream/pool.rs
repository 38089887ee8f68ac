//! The idle connections of one endpoint ([`UpstreamPool`]).
//!
//! The pool lives in the endpoint's attachment slot (`EndpointState::attachment`), so it
//! survives route-table rebuilds exactly as long as the endpoint does and is found without a
//! map lookup. Checkout and return are lock-free (`crossbeam_queue::ArrayQueue`); the queue's
//! capacity is the idle bound, and a connection that does not fit is closed.

use std::time::{Duration, Instant};

use caas_core::EndpointState;
use crossbeam_queue::ArrayQueue;

use super::UpstreamConn;

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
    /// (called periodically); returns how many.
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
