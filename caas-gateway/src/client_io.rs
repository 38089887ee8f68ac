//! The client connection's socket as hyper and the gateway's own HTTP/1.1 server see it
//! ([`ClientIo`]): counts reads and writes for the idle timer, notes when a request head
//! starts for the head timer, sends small responses in one `send`, lets a response head wait
//! in the kernel for the body right behind it ([`ClientStream::poll_write_more`]), and puts
//! the gateway's JSON answer in place of the bare one hyper writes for a request head it
//! cannot parse.
//!
//! hyper answers an unparsable head itself (400, 431 for one too large, 414 for a target too
//! long) with an empty body and closes the connection; no service runs, so the proxy never
//! sees the request. Such an answer is the only thing hyper writes on an HTTP/1 connection
//! with no request open, so it is recognised there by its status line and replaced whole by
//! the same JSON answer every other error gets, and counted.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::client_h1::wire::Io;
use crate::conn::{ConnInfo, Shared};
use crate::error::ErrorCode;

/// Largest write gathered into one buffer instead of a vectored write.
const SMALL_WRITE: usize = 1024;

/// A client connection's socket, plain or TLS (see the module docs).
pub(crate) struct ClientIo<S> {
    inner: S,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    /// The JSON answer being written in place of hyper's bare one (boxed: rare, and an idle
    /// connection should not carry its room).
    replacing: Option<Box<Replacement>>,
    /// hyper serves the connection: its bare answers are replaced.
    under_hyper: bool,
}

struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    /// The length of hyper's answer, reported as written once ours is.
    claimed: usize,
}

impl<S> ClientIo<S> {
    /// The socket of a connection hyper serves.
    pub(crate) fn new(inner: S, info: Arc<ConnInfo>, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            info,
            shared,
            replacing: None,
            under_hyper: true,
        }
    }

    /// The socket of a connection the gateway serves itself (it writes its own answers).
    pub(crate) fn own(inner: S, info: Arc<ConnInfo>, shared: Arc<Shared>) -> Self {
        Self {
            under_hyper: false,
            ..Self::new(inner, info, shared)
        }
    }

    fn counted(&self, res: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.info.activity.fetch_add(1, Relaxed);
        }
        res
    }
}

/// The cause of one of hyper's own answers to an unparsable head, by its status line.
fn parser_answer(buf: &[u8]) -> Option<(ErrorCode, &'static str)> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let answer = match rest.get(..4)? {
        b"400 " => (
            ErrorCode::MalformedRequest,
            "the request head is not valid HTTP/1.1",
        ),
        b"431 " => (
            ErrorCode::HeadersTooLarge,
            "the request head is larger than the gateway accepts",
        ),
        b"414 " => (
            ErrorCode::UriTooLong,
            "the request target is longer than the gateway accepts",
        ),
        _ => return None,
    };
    // hyper's answers have no body; anything else is not one of them.
    let head_only = buf.ends_with(b"\r\n\r\n")
        && buf
            .windows(b"content-length: 0\r\n".len())
            .any(|w| w.eq_ignore_ascii_case(b"content-length: 0\r\n"));
    head_only.then_some(answer)
}

/// A client connection's stream: plain TCP or TLS over it.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Writes the start of a message whose next bytes are on their way (a response head
    /// whose body has not arrived from the upstream yet). On a TCP socket the kernel may
    /// hold what this writes (`MSG_MORE`) to go out in one segment with the next write, for
    /// at most about 200 ms; HAProxy writes incomplete messages the same way. Other
    /// streams write it at once.
    fn poll_write_more(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write(cx, buf)
    }
}

impl ClientStream for TcpStream {
    #[cfg(target_os = "linux")]
    fn poll_write_more(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let flags = libc::MSG_MORE | libc::MSG_NOSIGNAL;
        loop {
            ready!(self.poll_write_ready(cx))?;
            let sent = self.try_io(tokio::io::Interest::WRITABLE, || {
                socket2::SockRef::from(&*self).send_with_flags(buf, flags)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                sent => return Poll::Ready(sent),
            }
        }
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {}

impl<S: ClientStream> Io for ClientIo<S> {
    fn poll_write_more(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_more(cx, buf);
        self.counted(res)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() != before {
            self.info.on_read(self.under_hyper);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.under_hyper && self.replacing.is_none() && self.info.between_http1_requests() {
            if let Some((code, message)) = parser_answer(buf) {
                self.shared.stats.count(code);
                tracing::debug!(peer = %self.info.peer, "unparsable request head: {}", code.as_str());
                self.replacing = Some(Box::new(Replacement {
                    bytes: code.http1_response(message),
                    written: 0,
                    claimed: buf.len(),
                }));
            }
        }
        let this = &mut *self;
        if let Some(r) = this.replacing.as_mut() {
            while r.written < r.bytes.len() {
                match ready!(Pin::new(&mut this.inner).poll_write(cx, &r.bytes[r.written..])) {
                    Ok(0) => return Poll::Ready(Ok(0)),
                    Ok(n) => r.written += n,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            let claimed = r.claimed;
            this.replacing = None;
            this.info.activity.fetch_add(1, Relaxed);
            return Poll::Ready(Ok(claimed));
        }
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.counted(res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // A small response (head plus a short body) goes out in one plain send: cheaper in
        // the kernel than a writev of several pieces. A single piece is a plain write too.
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if bufs.len() == 1 {
            return self.poll_write(cx, &bufs[0]);
        }
        if total <= SMALL_WRITE {
            let mut flat = [0u8; SMALL_WRITE];
            let mut at = 0;
            for b in bufs {
                flat[at..at + b.len()].copy_from_slice(b);
                at += b.len();
            }
            return self.poll_write(cx, &flat[..total]);
        }
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.counted(res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bodyless_parser_answers_are_recognised() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(
            parser_answer(hyper_400).map(|a| a.0),
            Some(ErrorCode::MalformedRequest)
        );
        let hyper_431 =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            parser_answer(hyper_431).map(|a| a.0),
            Some(ErrorCode::HeadersTooLarge)
        );
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nbody",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 40",
            b"0\r\n\r\n",
            b"",
        ] {
            assert!(
                parser_answer(other).is_none(),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
