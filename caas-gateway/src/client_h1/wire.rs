//! A client connection's socket and read buffer ([`Wire`]), shared by the connection's
//! driver and the body of its current request ([`ClientBody`]), which reads itself from the
//! socket as the proxy asks for frames: no task, no channel between them.
//!
//! Between requests the read buffer is empty and holds no memory: the driver waits for
//! readability by reading into a buffer on its stack, and only bytes that arrive take room
//! on the heap.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::head::BodyFraming;
use crate::body::ClientBodyError;
use crate::h1::{ChunkStep, Chunked};
use crate::upstream::body_reserve;

/// A client connection's stream, plain or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// Writes the start of a message whose next bytes are on their way: the kernel may
    /// hold it to go out with them (see `ClientStream::poll_write_more`). By default, a
    /// plain write.
    fn poll_write_more(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write(cx, buf)
    }
}

/// A client connection hyper served, upgraded.
impl Io for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {}

/// Largest read into the stack while no buffer is held.
const STACK_READ: usize = 8 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Where the body of the current request is.
#[derive(Debug, Clone, Copy)]
enum Inbound {
    Done,
    Length(u64),
    Chunked(Chunked),
    /// Broken framing or the client went away: the connection ends after the response.
    Failed,
}

/// One step of decoding the body from the buffer.
enum Decoded {
    Frame(Frame<Bytes>),
    /// The buffer holds too little: read more.
    More,
    /// The body is complete.
    End,
}

/// The socket and what was read from it and not consumed yet.
pub(crate) struct Wire {
    io: Option<Box<dyn Io>>,
    buf: BytesMut,
    /// Most bytes buffered ahead of a request head.
    max_buf: usize,
    /// The request whose body is being read (bodies of earlier ones read nothing more).
    request: u64,
    body: Inbound,
    /// Bytes of `100 Continue` written, while one is due.
    continue_at: Option<usize>,
    /// The client closed its side (or the socket failed).
    eof: bool,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("buffered", &self.buf.len())
            .field("request", &self.request)
            .field("body", &self.body)
            .field("eof", &self.eof)
            .finish()
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection was upgraded")
}

/// Locks a wire (never held across an await, never poisoned by a panic that matters).
pub(crate) fn lock(wire: &Mutex<Wire>) -> MutexGuard<'_, Wire> {
    wire.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Wire {
    pub(crate) fn new(io: Box<dyn Io>, max_buf: usize) -> Self {
        Self {
            io: Some(io),
            buf: BytesMut::new(),
            max_buf,
            request: 0,
            body: Inbound::Done,
            continue_at: None,
            eof: false,
        }
    }

    fn io(&mut self) -> io::Result<&mut Box<dyn Io>> {
        self.io.as_mut().ok_or_else(gone)
    }

    pub(crate) fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Whether bytes wait in the buffer.
    pub(crate) fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads what is there into a buffer on the stack and appends it to the read buffer:
    /// while nothing arrives, nothing is allocated. `Ok(0)`: the client closed its side.
    pub(crate) fn poll_read_stack(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
        let mut rb = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(self.io()?).poll_read(cx, &mut rb))?;
        let got = rb.filled();
        if !got.is_empty() {
            if self.buf.capacity() - self.buf.len() < got.len() {
                // Taken at the size of what arrived: usually a whole request head, in a
                // block from the allocator's fast path (a 4 KiB one took its slow path on
                // every request). Whatever follows grows the buffer.
                self.buf.reserve(got.len());
            }
            self.buf.extend_from_slice(got);
        }
        Poll::Ready(Ok(got.len()))
    }

    /// Reads into the read buffer with at least `reserve` bytes of room.
    pub(crate) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        reserve: usize,
    ) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < reserve {
            self.buf.reserve(reserve);
        }
        let Self { io, buf, .. } = self;
        let io = io.as_mut().ok_or_else(gone)?;
        tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
    }

    /// While a request is being answered and its body is read: reads ahead (a pipelined
    /// request) up to the head limit, and is `Ready` once the client has gone.
    pub(crate) fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.eof {
                return Poll::Ready(());
            }
            if !matches!(self.body, Inbound::Done) || self.buf.len() >= self.max_buf {
                return Poll::Pending;
            }
            match ready!(self.poll_read_stack(cx)) {
                Ok(0) | Err(_) => self.eof = true,
                Ok(_) => {}
            }
        }
    }

    /// Starts request number `request`: its body is read as `framing` says, after a
    /// `100 Continue` when the client waits for one.
    pub(crate) fn start_request(&mut self, request: u64, framing: BodyFraming, expect: bool) {
        self.request = request;
        self.body = match framing {
            BodyFraming::Empty => Inbound::Done,
            BodyFraming::Length(n) => Inbound::Length(n),
            BodyFraming::Chunked => Inbound::Chunked(Chunked::Size),
        };
        self.continue_at = expect.then_some(0);
    }

    /// The whole request body has been read (or there was none).
    pub(crate) fn body_read(&self) -> bool {
        matches!(self.body, Inbound::Done)
    }

    /// Part of the request body is still to come from a client that is still there.
    pub(crate) fn body_unread(&self) -> bool {
        matches!(self.body, Inbound::Length(_) | Inbound::Chunked(_)) && !self.eof
    }

    /// Reads and drops whatever arrives; `Ready` once the client has closed its side (or
    /// the socket failed). Holds no more than one read's worth of memory.
    pub(crate) fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            self.buf.clear();
            match ready!(self.poll_read_stack(cx)) {
                Ok(0) | Err(_) => {
                    self.eof = true;
                    return Poll::Ready(());
                }
                Ok(_) => {}
            }
        }
    }

    /// The request body broke its framing or the client went away.
    pub(crate) fn body_failed(&self) -> bool {
        matches!(self.body, Inbound::Failed) || self.eof
    }

    /// The response starts: a `100 Continue` not begun never will be, and the rest of one
    /// begun is returned, to go out ahead of the response head.
    pub(crate) fn responding(&mut self) -> &'static [u8] {
        match self.continue_at.take() {
            Some(at) if at > 0 => &CONTINUE[at..],
            _ => &[],
        }
    }

    /// Whether the connection can carry another request once the response is written:
    /// the client is still there and the request body was all read, or the rest of it is
    /// at hand (read now, without waiting).
    pub(crate) fn finish_request(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.eof {
                return false;
            }
            match self.decode() {
                Ok(Decoded::End) => return true,
                Ok(Decoded::Frame(_)) => continue,
                Ok(Decoded::More) => {}
                Err(_) => return false,
            }
            match self.poll_fill(cx, body_reserve(None)) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                _ => return false,
            }
        }
    }

    /// Between requests: gives the read buffer's memory back when nothing waits in it.
    pub(crate) fn release(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Decodes the next frame of the body from the buffer.
    fn decode(&mut self) -> Result<Decoded, ClientBodyError> {
        match &mut self.body {
            Inbound::Done => Ok(Decoded::End),
            Inbound::Failed => Err(ClientBodyError::Closed(
                "the request body already failed".into(),
            )),
            Inbound::Length(left) => {
                if self.buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = usize::try_from(*left).map_or(self.buf.len(), |l| l.min(self.buf.len()));
                let data = self.buf.split_to(n).freeze();
                *left -= n as u64;
                if *left == 0 {
                    self.body = Inbound::Done;
                }
                Ok(Decoded::Frame(Frame::data(data)))
            }
            Inbound::Chunked(state) => match state.step_strict(&mut self.buf) {
                Ok(ChunkStep::Data(data)) => Ok(Decoded::Frame(Frame::data(data))),
                Ok(ChunkStep::End(trailers)) => {
                    self.body = Inbound::Done;
                    Ok(trailers.map_or(Decoded::End, |t| Decoded::Frame(Frame::trailers(t))))
                }
                Ok(ChunkStep::NeedMore) => Ok(Decoded::More),
                Err(e) => {
                    self.body = Inbound::Failed;
                    Err(ClientBodyError::Malformed(e.to_string()))
                }
            },
        }
    }

    fn poll_body(
        &mut self,
        request: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if request != self.request {
            return Poll::Ready(Some(Err(ClientBodyError::Closed(
                "the request is over".into(),
            ))));
        }
        while let Some(at) = self.continue_at {
            if at == 0 && (matches!(self.body, Inbound::Done) || !self.buf.is_empty()) {
                // The client sent its body without waiting.
                self.continue_at = None;
                break;
            }
            let io = match self.io() {
                Ok(io) => io,
                Err(e) => return Poll::Ready(Some(Err(ClientBodyError::Closed(e.to_string())))),
            };
            if at == CONTINUE.len() {
                // Written; out of any buffer of its own (TLS) before the body is awaited.
                match ready!(Pin::new(io).poll_flush(cx)) {
                    Ok(()) => self.continue_at = None,
                    Err(e) => return Poll::Ready(Some(Err(self.fail(&e.to_string())))),
                }
                continue;
            }
            match ready!(Pin::new(io).poll_write(cx, &CONTINUE[at..])) {
                Ok(n) if n > 0 => self.continue_at = Some(at + n),
                Ok(_) => return Poll::Ready(Some(Err(self.fail("the client stopped reading")))),
                Err(e) => return Poll::Ready(Some(Err(self.fail(&e.to_string())))),
            }
        }
        loop {
            match self.decode() {
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Decoded::More) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            let left = match self.body {
                Inbound::Length(left) => Some(left),
                _ => None,
            };
            match ready!(self.poll_fill(cx, body_reserve(left))) {
                Ok(0) => {
                    return Poll::Ready(Some(Err(
                        self.fail("the client closed the connection before the end of the body")
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    use io::ErrorKind::*;
                    let closed = matches!(
                        e.kind(),
                        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
                    );
                    let err = self.fail(&e.to_string());
                    return Poll::Ready(Some(Err(if closed {
                        err
                    } else {
                        ClientBodyError::Malformed(e.to_string())
                    })));
                }
            }
        }
    }

    fn fail(&mut self, why: &str) -> ClientBodyError {
        self.body = Inbound::Failed;
        self.eof = true;
        ClientBodyError::Closed(why.to_owned())
    }

    /// Writes as much of `bufs` as the socket takes now.
    pub(crate) fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io()?).poll_write_vectored(cx, bufs)
    }

    /// Writes as much of `buf` as the socket takes now, as the start of a message whose
    /// next bytes are on their way.
    pub(crate) fn poll_write_more(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io()?.poll_write_more(cx, buf)
    }

    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_flush(cx)
    }

    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_shutdown(cx)
    }

    /// The stream and the bytes read past the request head, for a protocol switch.
    pub(crate) fn take_upgraded(&mut self) -> Option<Upgraded> {
        let io = self.io.take()?;
        Some(Upgraded {
            io,
            read: std::mem::take(&mut self.buf).freeze(),
        })
    }
}

/// The body of a client's request, read from the connection as the proxy takes frames.
pub(crate) struct ClientBody {
    wire: Arc<Mutex<Wire>>,
    request: u64,
    empty: bool,
}

impl std::fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBody")
            .field("request", &self.request)
            .finish()
    }
}

impl ClientBody {
    pub(crate) fn new(wire: Arc<Mutex<Wire>>, request: u64, framing: BodyFraming) -> Self {
        Self {
            wire,
            request,
            empty: framing == BodyFraming::Empty,
        }
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if self.empty {
            return Poll::Ready(None);
        }
        lock(&self.wire).poll_body(self.request, cx)
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        if self.empty {
            return true;
        }
        let w = lock(&self.wire);
        w.request == self.request && matches!(w.body, Inbound::Done)
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        if self.empty {
            return SizeHint::with_exact(0);
        }
        let w = lock(&self.wire);
        match w.body {
            Inbound::Done => SizeHint::with_exact(0),
            Inbound::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// A client connection handed over after a `101 Switching Protocols`.
pub(crate) struct Upgraded {
    pub(crate) io: Box<dyn Io>,
    /// Bytes the client sent past its request head.
    pub(crate) read: Bytes,
}

/// The client's side of an upgrade, once its `101` is written (a request extension).
#[derive(Clone)]
pub(crate) struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    pub(crate) fn pair() -> (oneshot::Sender<Upgraded>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self(Arc::new(Mutex::new(Some(rx)))))
    }

    /// The connection, once the driver wrote the `101`.
    pub(crate) async fn wait(self) -> io::Result<Upgraded> {
        let rx = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        match rx {
            Some(rx) => rx.await.map_err(|_| {
                io::Error::new(io::ErrorKind::NotConnected, "the client connection ended")
            }),
            None => Err(io::Error::other("upgrade already taken")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Io for tokio::io::DuplexStream {}

    #[tokio::test]
    async fn a_100_continue_cut_short_is_finished_ahead_of_the_response() {
        // The client's socket takes 5 bytes, then nothing until it reads.
        let (ours, mut client) = tokio::io::duplex(5);
        let wire = Arc::new(Mutex::new(Wire::new(Box::new(ours), 1024)));
        lock(&wire).start_request(1, BodyFraming::Length(3), true);
        let mut body = ClientBody::new(Arc::clone(&wire), 1, BodyFraming::Length(3));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(body.poll_frame(&mut cx).is_pending());
        let rest = lock(&wire).responding();
        assert_eq!(
            rest,
            &CONTINUE[5..],
            "the 100 was begun: its rest must go out"
        );
        let mut got = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"HTTP/");
        // A 100 not begun is not sent at all.
        lock(&wire).start_request(2, BodyFraming::Length(3), true);
        assert!(lock(&wire).responding().is_empty());
    }
}
