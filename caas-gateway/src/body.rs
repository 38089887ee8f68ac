//! Bodies the gateway sends: upstream responses streamed through, or its own small replies.
//!
//! [`UpstreamBody`] forwards frames as they arrive (nothing is buffered beyond hyper's own
//! read buffer), counts bytes, and hands the upstream connection back to its pool at the end
//! of the body, when the connection is ready for the next request. A body dropped before its
//! end (the client went away) drops the connection instead, since it is mid-response.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use caas_core::{AppState, InFlight};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::{UpstreamPool, UpstreamSender};

/// The response body type of the gateway.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
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
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }

    pub(crate) fn upstream(body: UpstreamBody) -> Self {
        Self {
            kind: Kind::Upstream(Box::new(body)),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(body) => Pin::new(&mut **body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Upstream(body) => body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(body) => body.inner.size_hint(),
        }
    }
}

/// An upstream response body on its way to the client.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: Incoming,
    /// The connection, returned to the endpoint's pool when the body ends.
    conn: Option<UpstreamSender>,
    in_flight: InFlight,
    app: Arc<AppState>,
    bytes: u64,
}

impl UpstreamBody {
    pub(crate) fn new(
        inner: Incoming,
        conn: UpstreamSender,
        in_flight: InFlight,
        app: Arc<AppState>,
    ) -> Self {
        let mut body = Self {
            inner,
            conn: Some(conn),
            in_flight,
            app,
            bytes: 0,
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    /// The response is complete: the connection can serve the next request.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            let ep = self.in_flight.endpoint();
            if let Some(pool) = ep.get_attachment::<UpstreamPool>() {
                pool.put(conn);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            None => this.finish(),
            Some(Err(_)) => this.conn = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
    /// `None` for a request the gateway resends without a body.
    inner: Option<Incoming>,
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
            inner: Some(inner),
            counted: None,
            bytes: 0,
            progress,
        }
    }

    /// An empty body, for resending a bodyless request on another endpoint.
    pub(crate) fn empty() -> Self {
        Self {
            inner: None,
            counted: None,
            bytes: 0,
            progress: None,
        }
    }

    /// Whether the body is empty and complete (nothing to stream).
    pub(crate) fn is_empty(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
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
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
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
        self.inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), Incoming::size_hint)
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
