//! The upstream response body on its way to the client ([`UpstreamBody`]), read straight
//! from the upstream connection one read at a time as the client connection takes frames
//! (nothing is buffered beyond one read). It decodes the framing, counts bytes, keeps sending
//! a request body the upstream started answering early, and hands the connection back to
//! its pool at the end of the body, when it is ready for the next request. A body dropped
//! before its end (the client went away) closes the connection instead, since it is
//! mid-response.
//!
//! The exchange's outcome for the endpoint's health is known only here: a body that arrives
//! whole is the endpoint's success, one the upstream breaks (closes, resets, frames wrongly
//! or leaves silent for the read timeout) is its failure, told to the [`BodyHealth`] the
//! proxy gave. A body the client abandons is neither, nor one cut after the client's own
//! request body broke.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use caas_core::{AppInFlight, EndpointState, InFlight};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::{BodySender, UpstreamConn, UpstreamPool, body_reserve};
use crate::h1::{ChunkStep, Chunked, ResponseFraming};
use crate::upstream::exchange::SendBodyError;

/// What an upstream body reports about its endpoint, and how long it waits for the upstream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyHealth {
    /// The longest the upstream may stay silent in the middle of a body.
    pub(crate) read_timeout: Duration,
    /// Called once when the body ends: `true` when it arrived whole, `false` when the
    /// upstream broke it.
    pub(crate) report: fn(&EndpointState, Duration, bool),
    /// Passed to `report` (how long a failing endpoint sits out).
    pub(crate) eject: Duration,
}

/// An upstream response body on its way to the client, read from the upstream connection
/// as the client connection asks for the next frame.
#[derive(Debug)]
pub(crate) struct UpstreamBody<B> {
    /// The connection, returned to the endpoint's pool when the body ends.
    conn: Option<UpstreamConn>,
    state: BodyState,
    /// The connection may carry another request after this response.
    reusable: bool,
    /// The rest of a request body the upstream started answering before it was all sent.
    sending: Option<BodySender<B>>,
    in_flight: InFlight,
    /// The app's request, counted in flight until the response ends.
    app: AppInFlight,
    bytes: u64,
    health: BodyHealth,
    /// When the current wait for the upstream began (`None`: bytes came since the last).
    waiting_since: Option<Instant>,
    /// The client's request body broke while the response streamed: whatever happens to the
    /// response after that is not the upstream's failure.
    client_broke: bool,
}

/// The error of a response cut after the client's request body broke (the upstream may
/// have been waiting for the rest of it): not the upstream's failure.
#[derive(Debug, thiserror::Error)]
#[error("response cut after the client's request body broke: {0}")]
pub(crate) struct AfterClientFault(io::Error);

/// Whether a response body's error is the upstream's failure (else the client's).
pub(crate) fn is_upstream_failure(e: &io::Error) -> bool {
    !e.get_ref()
        .is_some_and(|inner| inner.is::<AfterClientFault>())
}

#[derive(Debug, Clone, Copy)]
enum BodyState {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl<B> UpstreamBody<B> {
    /// `reusable`: the response allows keep-alive and the whole request went out (or will,
    /// through `sending`).
    pub(crate) fn new(
        conn: UpstreamConn,
        framing: ResponseFraming,
        reusable: bool,
        sending: Option<BodySender<B>>,
        in_flight: InFlight,
        app: AppInFlight,
        health: BodyHealth,
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
            health,
            waiting_since: None,
            client_broke: false,
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
        let ep = self.in_flight.endpoint();
        (self.health.report)(ep, self.health.eject, true);
        if let Some(mut conn) = self.conn.take() {
            if self.reusable && self.sending.is_none() && conn.buf_mut().is_empty() {
                if let Some(pool) = ep.get_attachment::<UpstreamPool>() {
                    pool.put(conn);
                }
            }
        }
        self.sending = None;
    }

    /// The upstream broke the body: the connection is closed, the failure counted against
    /// the endpoint and the app, and the client's response ends cut. After the client's
    /// request body broke, the response is cut the same way but nothing is counted.
    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.state = BodyState::Done;
        let addr = self.conn.take().map(|c| c.addr());
        self.sending = None;
        if self.client_broke {
            tracing::debug!(?addr, "response cut after the client's body broke: {e}");
            let kind = e.kind();
            return Poll::Ready(Some(Err(io::Error::new(kind, AfterClientFault(e)))));
        }
        let ep = self.in_flight.endpoint();
        tracing::debug!(?addr, "upstream response body failed: {e}");
        ep.stats.record_body_error();
        self.app.state().stats.record_body_error();
        (self.health.report)(ep, self.health.eject, false);
        Poll::Ready(Some(Err(e)))
    }

    fn data(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.bytes += data.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    /// Nothing to read from the upstream now: waits, unless it has been silent for the read
    /// timeout. While a request body is still going up the upstream may be waiting for the
    /// client, so the upstream's silence is not timed then.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.sending.is_some() {
            return Poll::Pending;
        }
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let timeout = self.health.read_timeout;
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        if conn.poll_deadline(cx, since + timeout).is_pending() {
            return Poll::Pending;
        }
        let ms = timeout.as_millis();
        self.fail(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("upstream sent nothing for {ms} ms in the middle of the body"),
        ))
    }
}

fn closed_mid_body() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "upstream closed the connection before the end of the response body",
    )
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
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
                // Either side failing ends this exchange's request, not its response: the
                // connection is closed at the end instead of pooled, and nobody's failure
                // count changes (the response is already the upstream's answer).
                Poll::Ready(Err(SendBodyError::Client(e))) => {
                    tracing::debug!(addr = %conn.addr(), "client body failed mid-response: {e}");
                    this.sending = None;
                    this.reusable = false;
                    this.client_broke = true;
                }
                Poll::Ready(Err(SendBodyError::Upstream(e))) => {
                    tracing::debug!(addr = %conn.addr(), "upstream stopped reading the body: {e}");
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
                    conn.poll_fill(cx, body_reserve(Some(*left)))
                }
                BodyState::Chunked(chunked) => match chunked.step(conn.buf_mut()) {
                    Ok(ChunkStep::Data(data)) => return this.data(data),
                    Ok(ChunkStep::End(trailers)) => {
                        this.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(ChunkStep::NeedMore) => conn.poll_fill(cx, body_reserve(None)),
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
                    match conn.poll_fill(cx, body_reserve(None)) {
                        Poll::Ready(Ok(0)) => {
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
                Poll::Pending => return this.wait(cx),
                Poll::Ready(Ok(0)) => return this.fail(closed_mid_body()),
                // Bytes came (maybe only framing): a wait that follows is a new one.
                Poll::Ready(Ok(_)) => this.waiting_since = None,
                Poll::Ready(Err(e)) => return this.fail(e),
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

impl<B> Drop for UpstreamBody<B> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.app.state().stats.add_bytes_out(self.bytes);
            self.in_flight.endpoint().stats.add_bytes_out(self.bytes);
        }
    }
}
