//! Bodies the gateway sends: upstream responses streamed through, or its own small replies.
//!
//! [`UpstreamBody`] reads the response body straight from the upstream connection, one read
//! at a time as the client connection takes frames (nothing is buffered beyond one read),
//! decodes its framing, counts bytes, and hands the connection back to its pool at the end of
//! the body, when it is ready for the next request. A body dropped before its end (the client
//! went away) closes the connection instead, since it is mid-response.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use caas_core::{AppState, InFlight};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::h1::{ChunkStep, Chunked, ResponseFraming};
use crate::proxy::ResponseDone;
use crate::upstream::{self, BodySender, UpstreamConn, UpstreamPool};

/// The response body type of the gateway.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    /// Tells the client connection the response is over when the body drops.
    done: Option<ResponseDone>,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(Box<UpstreamBody>),
}

impl ProxyBody {
    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self {
            kind: Kind::Full((!data.is_empty()).then_some(data)),
            done: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
            done: None,
        }
    }

    pub(crate) fn upstream(body: UpstreamBody) -> Self {
        Self {
            kind: Kind::Upstream(Box::new(body)),
            done: None,
        }
    }

    pub(crate) fn on_done(mut self, done: ResponseDone) -> Self {
        self.done = Some(done);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = io::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(body) => Pin::new(&mut **body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(body) => body.size_hint(),
        }
    }
}

/// An upstream response body on its way to the client, read from the upstream connection
/// as the client connection asks for the next frame.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    /// The connection, returned to the endpoint's pool when the body ends.
    conn: Option<UpstreamConn>,
    state: BodyState,
    /// The connection may carry another request after this response.
    reusable: bool,
    /// The rest of a request body the upstream started answering before it was all sent.
    sending: Option<BodySender>,
    in_flight: InFlight,
    app: Arc<AppState>,
    bytes: u64,
}

#[derive(Debug, Clone, Copy)]
enum BodyState {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl UpstreamBody {
    /// `reusable`: the response allows keep-alive and the whole request went out (or will,
    /// through `sending`).
    pub(crate) fn new(
        conn: UpstreamConn,
        framing: ResponseFraming,
        reusable: bool,
        sending: Option<BodySender>,
        in_flight: InFlight,
        app: Arc<AppState>,
    ) -> Self {
        let state = match framing {
            ResponseFraming::Empty => BodyState::Done,
            ResponseFraming::Length(n) => BodyState::Length(n),
            ResponseFraming::Chunked => BodyState::Chunked(Chunked::Size),
            ResponseFraming::UntilClose => BodyState::UntilClose,
        };
        let mut body = Self {
            conn: Some(conn),
            state,
            reusable,
            sending,
            in_flight,
            app,
            bytes: 0,
        };
        if matches!(body.state, BodyState::Done) {
            body.finish();
        }
        body
    }

    /// The response is complete: a connection that can serve the next request goes back to
    /// the pool; any other is closed.
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(mut conn) = self.conn.take() {
            if self.reusable && self.sending.is_none() && conn.buf_mut().is_empty() {
                let ep = self.in_flight.endpoint();
                if let Some(pool) = ep.get_attachment::<UpstreamPool>() {
                    pool.put(conn);
                }
            }
        }
        self.sending = None;
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.state = BodyState::Done;
        self.conn = None;
        self.sending = None;
        Poll::Ready(Some(Err(e)))
    }

    fn data(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.bytes += data.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

fn closed_mid_body() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "upstream closed the connection before the end of the response body",
    )
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        // Full duplex: keep sending the request body while the response streams.
        if let Some(sending) = this.sending.as_mut() {
            match sending.poll_send(conn, cx) {
                Poll::Ready(Ok(())) => this.sending = None,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(addr = %conn.addr(), "request body not sent in full: {e}");
                    this.sending = None;
                    this.reusable = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let filled = match &mut this.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(left) => {
                    let buf = conn.buf_mut();
                    if !buf.is_empty() {
                        let n = usize::try_from(*left).map_or(buf.len(), |l| l.min(buf.len()));
                        let data = buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.finish();
                        }
                        return this.data(data);
                    }
                    ready!(conn.poll_fill(cx, upstream::body_reserve(Some(*left))))
                }
                BodyState::Chunked(chunked) => match chunked.step(conn.buf_mut()) {
                    Ok(ChunkStep::Data(data)) => return this.data(data),
                    Ok(ChunkStep::End(trailers)) => {
                        this.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(ChunkStep::NeedMore) => {
                        ready!(conn.poll_fill(cx, upstream::body_reserve(None)))
                    }
                    Err(e) => {
                        return this
                            .fail(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                    }
                },
                BodyState::UntilClose => {
                    let buf = conn.buf_mut();
                    if !buf.is_empty() {
                        let data = buf.split().freeze();
                        return this.data(data);
                    }
                    match ready!(conn.poll_fill(cx, upstream::body_reserve(None))) {
                        Ok(0) => {
                            // The end of this body is the end of the connection.
                            this.reusable = false;
                            this.finish();
                            return Poll::Ready(None);
                        }
                        other => other,
                    }
                }
            };
            match filled {
                Ok(0) => return this.fail(closed_mid_body()),
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.app.stats.add_bytes_out(self.bytes);
            self.in_flight.endpoint().stats.add_bytes_out(self.bytes);
        }
    }
}

/// Milliseconds since the first call: a cheap clock for upload progress.
pub(crate) fn clock_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(
        BASE.get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// A client request body on its way upstream; counts bytes and, for bodies that are not
/// empty, records when the last chunk went out (the response timeout runs from there, so a
/// long upload is not mistaken for a silent upstream).
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    counted: Option<(Arc<AppState>, InFlightRef)>,
    bytes: u64,
    progress: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// The endpoint a request body is counted against.
type InFlightRef = Arc<caas_core::EndpointState>;

impl RequestBody {
    pub(crate) fn new(inner: Incoming) -> Self {
        let progress = (!inner.is_end_stream())
            .then(|| Arc::new(std::sync::atomic::AtomicU64::new(clock_ms())));
        Self {
            inner,
            counted: None,
            bytes: 0,
            progress,
        }
    }

    /// Whether the body is empty and complete (nothing to stream).
    pub(crate) fn is_empty(&self) -> bool {
        self.inner.is_end_stream()
    }

    /// When the last chunk was sent upstream ([`clock_ms`]), for bodies that are not empty.
    pub(crate) fn progress(&self) -> Option<Arc<std::sync::atomic::AtomicU64>> {
        self.progress.clone()
    }

    /// Attributes the bytes to an app and endpoint (set once the endpoint is known).
    pub(crate) fn count_to(&mut self, app: &Arc<AppState>, ep: &InFlightRef) {
        if !self.is_empty() {
            self.counted = Some((Arc::clone(app), Arc::clone(ep)));
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                this.bytes += d.len() as u64;
            }
        }
        if let Some(p) = &this.progress {
            p.store(clock_ms(), std::sync::atomic::Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some((app, ep)) = &self.counted {
            if self.bytes > 0 {
                app.stats.add_bytes_in(self.bytes);
                ep.stats.add_bytes_in(self.bytes);
            }
        }
    }
}
