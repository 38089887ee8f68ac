//! The client side's bodies: [`ProxyBody`], what the gateway sends (an upstream response
//! streamed through, or its own small replies), and the client's request body on its way
//! upstream (`RequestBody`), whose failures are classified as the client's own
//! (`ClientBodyError`).

use std::error::Error as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use caas_core::{AppState, EndpointState};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::client_h1::wire::ClientBody;
use crate::upstream::UpstreamBody;

/// The response body type of the gateway.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(Box<UpstreamBody<RequestBody>>),
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

    pub(crate) fn upstream(body: UpstreamBody<RequestBody>) -> Self {
        Self {
            kind: Kind::Upstream(Box::new(body)),
        }
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

/// A client's request body failed: always the client's fault, never the upstream's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientBodyError {
    /// The body broke its framing (a malformed chunk, a length mismatch).
    #[error("{0}")]
    Malformed(String),
    /// The client closed or reset the connection before the end of the body.
    #[error("{0}")]
    Closed(String),
}

impl ClientBodyError {
    /// Sorts hyper's body error: an early end of the stream or a reset is the client going
    /// away; anything else broke the framing.
    fn classify(e: &hyper::Error) -> Self {
        let text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<io::Error>() {
                use io::ErrorKind::*;
                return match io.kind() {
                    UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
                        Self::Closed(format!("{text}: {io}"))
                    }
                    _ => Self::Malformed(format!("{text}: {io}")),
                };
            }
            cause = c.source();
        }
        if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
            Self::Closed(text)
        } else {
            Self::Malformed(text)
        }
    }
}

/// A client request body on its way upstream; counts its bytes against the app and the
/// endpoint it is sent to.
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Inner,
    counted: Option<(Arc<AppState>, Arc<EndpointState>)>,
    bytes: u64,
    /// The request's access log count, when the log is on.
    logged: Option<Arc<AtomicU64>>,
}

/// Where the body comes from: hyper's connection (HTTP/2), or the gateway's own HTTP/1.1
/// connection.
#[derive(Debug)]
enum Inner {
    Hyper(Incoming),
    Client(ClientBody),
}

impl RequestBody {
    /// A body read by hyper.
    pub(crate) fn new(inner: Incoming) -> Self {
        Self::with(Inner::Hyper(inner))
    }

    /// A body read by the gateway's HTTP/1.1 connection.
    pub(crate) fn client(inner: ClientBody) -> Self {
        Self::with(Inner::Client(inner))
    }

    fn with(inner: Inner) -> Self {
        Self {
            inner,
            counted: None,
            bytes: 0,
            logged: None,
        }
    }

    /// Adds the body's bytes to `count` when it drops (for the access log).
    pub(crate) fn log_bytes_to(&mut self, count: Arc<AtomicU64>) {
        self.logged = Some(count);
    }

    /// Whether the body is empty and complete (nothing to stream).
    pub(crate) fn is_empty(&self) -> bool {
        match &self.inner {
            Inner::Hyper(b) => b.is_end_stream(),
            Inner::Client(b) => b.is_end_stream(),
        }
    }

    /// Attributes the bytes to an app and endpoint (set once the endpoint is known; a
    /// resend on another endpoint moves the attribution).
    pub(crate) fn count_to(&mut self, app: &Arc<AppState>, ep: &Arc<EndpointState>) {
        if !self.is_empty() {
            self.counted = Some((Arc::clone(app), Arc::clone(ep)));
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Hyper(b) => ready!(Pin::new(b).poll_frame(cx))
                .map(|f| f.map_err(|e| ClientBodyError::classify(&e))),
            Inner::Client(b) => ready!(b.poll_frame(cx)),
        };
        if let Some(Ok(f)) = &polled
            && let Some(d) = f.data_ref()
        {
            this.bytes += d.len() as u64;
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(b) => b.size_hint(),
            Inner::Client(b) => b.size_hint(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(count) = &self.logged {
            count.fetch_add(self.bytes, Relaxed);
        }
        if let Some((app, ep)) = &self.counted {
            if self.bytes > 0 {
                app.stats.add_bytes_in(self.bytes);
                ep.stats.add_bytes_in(self.bytes);
            }
        }
    }
}
