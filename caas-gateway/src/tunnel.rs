//! An upgraded (WebSocket) connection after its `101`: bytes copied both ways between the
//! client and the upstream until either side closes, or until neither has sent anything for
//! the tunnel's idle timeout (a client that vanished without a FIN, an app that forgot the
//! connection), so a dead tunnel does not hold two sockets forever.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::client_h1::wire::Io;

/// Copies bytes both ways between an upgraded client connection and its upstream (first the
/// bytes each side sent right after the handshake, read along with it) until one side
/// closes or both are silent for `idle`.
pub(crate) async fn run(
    mut client: Box<dyn Io>,
    client_early: Bytes,
    mut upstream: TcpStream,
    upstream_early: &[u8],
    addr: SocketAddr,
    idle: Duration,
) {
    if !upstream_early.is_empty() {
        if let Err(e) = client.write_all(upstream_early).await {
            tracing::debug!(%addr, "upgraded connection ended: {e}");
            return;
        }
    }
    if !client_early.is_empty() {
        if let Err(e) = upstream.write_all(&client_early).await {
            tracing::debug!(%addr, "upgraded connection ended: {e}");
            return;
        }
    }
    let heard = Heard::new();
    let mut client = Noting {
        io: &mut client,
        heard: &heard,
    };
    let mut upstream = Noting {
        io: &mut upstream,
        heard: &heard,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::select! {
        copied = copy => match copied {
            Ok((up, down)) => tracing::debug!(%addr, up, down, "upgraded connection closed"),
            Err(e) => tracing::debug!(%addr, "upgraded connection ended: {e}"),
        },
        () = heard.silent_for(idle) => {
            tracing::debug!(%addr, "upgraded connection idle for {} ms; closed", idle.as_millis());
        }
    }
}

/// When either side of a tunnel last sent bytes, in ms from the tunnel's start.
struct Heard {
    start: Instant,
    last_ms: AtomicU64,
}

impl Heard {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn note(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
    }

    /// Resolves once nothing was heard for `idle`: sleeps to the deadline of the last bytes
    /// heard; when it comes and newer bytes have been heard since, sleeps on to theirs.
    async fn silent_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Relaxed));
            let deadline = self.start + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One side of a tunnel, noting in [`Heard`] when bytes arrive on it.
struct Noting<'a, S> {
    io: &'a mut S,
    heard: &'a Heard,
}

impl<S: AsyncRead + Unpin> AsyncRead for Noting<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.heard.note();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Noting<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_is_timed_from_the_last_bytes_heard() {
        let heard = Heard::new();
        let idle = Duration::from_secs(60);
        let timer = heard.silent_for(idle);
        tokio::pin!(timer);
        // Bytes at 50 s move the deadline to 110 s.
        tokio::time::sleep(Duration::from_secs(50)).await;
        heard.note();
        let started = Instant::now();
        timer.as_mut().await;
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(60)..Duration::from_secs(61)).contains(&waited),
            "closed {waited:?} after the last bytes, not 60 s"
        );
    }
}
