//! One request on one upstream connection, up to its response head: the head written, the
//! body sent as it arrives, the response head read, all at once (an upstream may answer
//! before it has the whole body), under the response timeout.
//!
//! Failures say whose they are ([`ExchangeError`]): the upstream's (closed, reset, garbage,
//! silent), or the client's (its body broke its framing, ended early or stalled). The body is
//! any [`Body`]: the gateway passes the client's, tests pass their own.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use caas_core::clock::now_ms;
use http::Method;
use http_body::Body;

use super::UpstreamConn;
use crate::h1::{self, RequestFraming, ResponseHead};

/// Sends a request body on a connection: the client's frames, chunk-framed when the length
/// is not known, as they arrive.
#[derive(Debug)]
pub(crate) struct BodySender<B> {
    body: B,
    framing: RequestFraming,
    /// Framing bytes and data not written yet: chunk-size line, data, CRLF.
    prefix: Bytes,
    data: Bytes,
    suffix: &'static [u8],
    /// The last frame was taken from the client.
    ended: bool,
    /// Any frame was taken from the client (the body can no longer be sent again).
    started: bool,
    /// When a frame last came from the client ([`now_ms`]).
    last_progress_ms: u64,
    /// The last `Pending` was the client's body, not the upstream's socket.
    waiting_on_client: bool,
}

/// Why a request body could not be sent.
#[derive(Debug)]
pub(crate) enum SendBodyError<E> {
    /// Writing to the upstream failed.
    Upstream(io::Error),
    /// The client's body failed (broken framing, or the client went away).
    Client(E),
}

impl<B> BodySender<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    pub(crate) fn new(body: B, framing: RequestFraming) -> Self {
        Self {
            body,
            framing,
            prefix: Bytes::new(),
            data: Bytes::new(),
            suffix: b"",
            ended: framing == RequestFraming::Empty,
            started: false,
            last_progress_ms: now_ms(),
            waiting_on_client: false,
        }
    }

    /// Whether any part of the body was taken from the client.
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    /// The body being sent.
    pub(crate) fn body_mut(&mut self) -> &mut B {
        &mut self.body
    }

    fn pending(&self) -> bool {
        !self.prefix.is_empty() || !self.data.is_empty() || !self.suffix.is_empty()
    }

    /// Sends until the body is complete (`Ready(Ok)`), the socket or the client is not
    /// ready (`Pending`), or something fails.
    pub(crate) fn poll_send(
        &mut self,
        conn: &mut UpstreamConn,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendBodyError<B::Error>>> {
        loop {
            while self.pending() {
                self.waiting_on_client = false;
                let bufs = [
                    io::IoSlice::new(&self.prefix),
                    io::IoSlice::new(&self.data),
                    io::IoSlice::new(self.suffix),
                ];
                let mut n =
                    ready!(conn.poll_write_vectored(cx, &bufs)).map_err(SendBodyError::Upstream)?;
                if n == 0 {
                    return Poll::Ready(Err(SendBodyError::Upstream(
                        io::ErrorKind::WriteZero.into(),
                    )));
                }
                for part in [&mut self.prefix, &mut self.data] {
                    let k = n.min(part.len());
                    part.advance(k);
                    n -= k;
                }
                self.suffix = &self.suffix[n.min(self.suffix.len())..];
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            self.started = true;
            self.waiting_on_client = true;
            let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
            self.waiting_on_client = false;
            self.last_progress_ms = now_ms();
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        if self.framing == RequestFraming::Chunked {
                            self.prefix = Bytes::from(format!("{:x}\r\n", data.len()));
                            self.suffix = b"\r\n";
                        }
                        self.data = data;
                    }
                    Err(frame) => {
                        if let (Ok(trailers), RequestFraming::Chunked) =
                            (frame.into_trailers(), self.framing)
                        {
                            let mut t = Vec::from(&b"0\r\n"[..]);
                            for (name, value) in &trailers {
                                h1::write_field(&mut t, name.as_str().as_bytes(), value.as_bytes());
                            }
                            t.extend_from_slice(b"\r\n");
                            self.prefix = Bytes::from(t);
                            self.ended = true;
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Err(SendBodyError::Client(e))),
                None => {
                    if self.framing == RequestFraming::Chunked {
                        self.suffix = b"0\r\n\r\n";
                    }
                    self.ended = true;
                }
            }
        }
    }
}

/// Why an exchange failed, and whose fault it was.
#[derive(Debug)]
pub(crate) enum ExchangeError<E> {
    /// The upstream closed the connection before any byte of a response arrived and nothing
    /// of the request body was consumed: the request can be sent again as it is, though the
    /// upstream may have acted on it if its head went out ([`Exchange::head_unsent`]).
    Closed(String),
    /// The upstream failed: reset, closed mid-head, or answered something that is not HTTP.
    Upstream(String),
    /// The upstream sent no response head within the response timeout although it had
    /// everything it needed to answer (or stopped reading the body).
    TimedOut,
    /// The client's body failed: broken framing, or the client went away mid-upload.
    ClientBody(E),
    /// The client stopped sending its body for the whole response timeout.
    ClientStalled,
}

/// The state of one request on one connection: written head, body in progress.
#[derive(Debug)]
pub(crate) struct Exchange<'a, B> {
    conn: &'a mut UpstreamConn,
    head: &'a [u8],
    written: usize,
    body: Option<BodySender<B>>,
    /// Nothing more of the body to send (all of it went out, or writing it failed).
    body_done: bool,
    /// Writing the body failed: the upstream stopped reading.
    body_broken: bool,
    method: &'a Method,
}

impl<'a, B> Exchange<'a, B>
where
    B: Body<Data = Bytes> + Unpin,
{
    pub(crate) fn new(
        conn: &'a mut UpstreamConn,
        head: &'a [u8],
        body: Option<BodySender<B>>,
        method: &'a Method,
    ) -> Self {
        Self {
            conn,
            head,
            written: 0,
            body_done: body.is_none(),
            body_broken: false,
            body,
            method,
        }
    }

    /// Writes the head, sends the body and reads the response head. The timeout runs from
    /// the later of the start and the last body frame taken from the client, so a long
    /// upload is not mistaken for a silent upstream; when it runs out while the body waits
    /// on the client, the client stalled ([`ExchangeError::ClientStalled`]).
    pub(crate) async fn response_head(
        &mut self,
        timeout: Duration,
    ) -> Result<ResponseHead, ExchangeError<B::Error>> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let mut deadline = tokio::time::Instant::now() + timeout;
        poll_fn(|cx| {
            if let Poll::Ready(res) = self.poll_response_head(cx) {
                return Poll::Ready(res);
            }
            loop {
                ready!(self.conn.poll_deadline(cx, deadline));
                if let Some(body) = &self.body {
                    let due = body.last_progress_ms.saturating_add(timeout_ms);
                    let now = now_ms();
                    if now < due {
                        let left = Duration::from_millis(due - now);
                        deadline = tokio::time::Instant::now() + left;
                        continue;
                    }
                    if !self.body_done && body.waiting_on_client {
                        return Poll::Ready(Err(ExchangeError::ClientStalled));
                    }
                }
                return Poll::Ready(Err(ExchangeError::TimedOut));
            }
        })
        .await
    }

    fn poll_response_head(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<ResponseHead, ExchangeError<B::Error>>> {
        let fresh = |this: &Self| this.body.as_ref().is_none_or(|b| !b.started());
        while self.written < self.head.len() {
            match ready!(self.conn.poll_write(cx, &self.head[self.written..])) {
                Ok(0) => {
                    return Poll::Ready(Err(ExchangeError::Closed("connection closed".into())));
                }
                Ok(n) => self.written += n,
                Err(e) => {
                    return Poll::Ready(Err(if self.written == 0 && fresh(self) {
                        ExchangeError::Closed(e.to_string())
                    } else {
                        ExchangeError::Upstream(e.to_string())
                    }));
                }
            }
        }
        if !self.body_done {
            if let Some(body) = self.body.as_mut() {
                match body.poll_send(self.conn, cx) {
                    Poll::Ready(Ok(())) => self.body_done = true,
                    Poll::Ready(Err(SendBodyError::Client(e))) => {
                        return Poll::Ready(Err(ExchangeError::ClientBody(e)));
                    }
                    // The upstream may have answered before closing: read on; if there is no
                    // answer the read fails too.
                    Poll::Ready(Err(SendBodyError::Upstream(_))) => {
                        self.body_done = true;
                        self.body_broken = true;
                    }
                    Poll::Pending => {}
                }
            }
        }
        loop {
            match h1::parse_response_head(self.conn.buf_mut(), self.method) {
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(ExchangeError::Upstream(e.to_string()))),
            }
            let before = self.conn.buf_mut().len();
            match ready!(self.conn.poll_fill(cx, super::READ_RESERVE)) {
                Ok(0) if before == 0 && fresh(self) => {
                    return Poll::Ready(Err(ExchangeError::Closed(
                        "connection closed before responding".into(),
                    )));
                }
                Ok(0) => {
                    return Poll::Ready(Err(ExchangeError::Upstream(
                        "connection closed before a complete response head".into(),
                    )));
                }
                Ok(_) => {}
                Err(e) if before == 0 && fresh(self) => {
                    return Poll::Ready(Err(ExchangeError::Closed(e.to_string())));
                }
                Err(e) => return Poll::Ready(Err(ExchangeError::Upstream(e.to_string()))),
            }
        }
    }

    /// The request body's sender, with whatever it has not sent yet.
    pub(crate) fn take_body(&mut self) -> Option<BodySender<B>> {
        self.body.take()
    }

    /// Whether no byte of the request reached the connection: the upstream cannot have seen
    /// any of it.
    pub(crate) fn head_unsent(&self) -> bool {
        self.written == 0
    }

    /// Whether the whole request went out.
    pub(crate) fn request_complete(&self) -> bool {
        self.body_done && !self.body_broken && self.written == self.head.len()
    }
}

#[cfg(test)]
mod tests;
