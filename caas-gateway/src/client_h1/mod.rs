//! The gateway's own HTTP/1.1 server connection ([`serve`]), for clients that do not speak
//! HTTP/2: an idle keep-alive connection holds its socket and a few words of state, no
//! buffer. hyper's server keeps its read and write buffers and its state machine for the
//! whole life of a connection; here a request's buffers live as long as the request.
//!
//! One request at a time, top to bottom: wait for bytes (read into the stack, so nothing
//! is allocated until some arrive) → read the head (`head`) → the proxy, with the request
//! body read from the socket as it takes frames (`wire`), while the connection watches for
//! the client leaving → write the response, streaming its body → keep alive, close, or hand
//! the socket to an upgrade. Pipelined requests wait in the read buffer and are served in
//! order. Heads the parser refuses get the gateway's JSON answer and the connection closes.
//!
//! Timers (idle, request head) and the graceful shutdown are the connection task's, as for
//! hyper's connections: [`serve`] only stops between requests once `ConnInfo::draining`
//! is set, and closes instead of keeping alive.

pub(crate) mod date;
pub(crate) mod head;
pub(crate) mod wire;

use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;

use self::head::{BodyLength, Encoder, HeadError, HeadLimits, RequestHead, ResponseContext};
pub(crate) use self::wire::OnUpgrade;
use self::wire::{ClientBody, Io, Wire, lock};
use crate::body::{ProxyBody, RequestBody};
use crate::conn::{ConnInfo, Shared, Tracked, send_after_batch};
use crate::proxy::serve_request;

/// What became of a connection after a request.
#[derive(PartialEq, Eq)]
enum Outcome {
    KeepAlive,
    Close,
    /// Close after refusing a request head: the client may still be sending it.
    Refused,
    /// The socket went to an upgrade.
    Upgraded,
    /// The client closed the connection.
    Gone,
}

/// Serves HTTP/1.1 on a client connection until it closes, fails, is upgraded or drains.
///
/// A plain function around an `async move` block rather than an `async fn`: the future of
/// an `async fn` keeps room for its arguments twice (as captured, and as moved into its
/// body), and this one lives in every idle connection's task.
pub(crate) fn serve(
    shared: Arc<Shared>,
    io: Box<dyn Io>,
    info: Arc<ConnInfo>,
) -> impl Future<Output = io::Result<()>> + Send {
    let limits = &shared.config.limits;
    let limits = HeadLimits {
        // As hyper's server was configured: twice the proxy's limits (which answer with
        // the precise cause) as the parser's backstop.
        max_bytes: limits.max_header_bytes.saturating_mul(2).max(64 * 1024),
        max_fields: limits.max_headers.saturating_mul(2),
    };
    let wire = Arc::new(Mutex::new(Wire::new(io, limits.max_bytes)));
    async move {
        let mut requests = 0u64;
        loop {
            // Idle: nothing is held but the socket.
            let arrived = poll_fn(|cx| {
                if info.draining.load(Relaxed) {
                    return Poll::Ready(Ok(false));
                }
                let mut w = lock(&wire);
                if w.has_buffered() {
                    return Poll::Ready(Ok(true));
                }
                w.poll_read_stack(cx).map_ok(|n| n > 0)
            })
            .await?;
            if !arrived {
                return shutdown(&wire).await;
            }
            // The next head has begun (or waits whole in the buffer): the head timer runs.
            info.head_started();
            requests += 1;
            // Boxed: the state of a request lives as long as the request, not in the
            // connection's task.
            match Box::pin(request(&shared, &info, &wire, limits, requests)).await? {
                Outcome::KeepAlive => lock(&wire).release(),
                outcome @ (Outcome::Close | Outcome::Refused) => {
                    let unread = outcome == Outcome::Refused || lock(&wire).body_unread();
                    shutdown(&wire).await?;
                    if unread {
                        // Boxed: rare, and its timer would otherwise take room in every
                        // idle connection's task.
                        Box::pin(linger(&wire)).await;
                    }
                    return Ok(());
                }
                Outcome::Gone | Outcome::Upgraded => return Ok(()),
            }
        }
    }
}

/// Reads a request head and serves the request, or refuses the head.
///
/// The request's state is split so that each part lives only while it is needed: the head
/// is taken apart without awaiting ([`start`]), the proxy's future is dropped once the
/// response head is in, and the response is written by [`respond`]. This future is boxed
/// (copied) once per request, and each of its parts is copied into it.
async fn request(
    shared: &Arc<Shared>,
    info: &Arc<ConnInfo>,
    wire: &Arc<Mutex<Wire>>,
    limits: HeadLimits,
    request: u64,
) -> io::Result<Outcome> {
    let head = match read_head(wire, limits).await {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(Outcome::Gone),
        Err(Refused::Head(e)) => {
            shared.stats.count(e.code);
            tracing::debug!(peer = %info.peer, "unparsable request head: {}", e.code.as_str());
            let answer = e.code.http1_response(e.message);
            write_all(wire, &mut [&answer]).await?;
            return Ok(Outcome::Refused);
        }
        Err(Refused::Io(e)) => return Err(e),
    };
    let (req, asked) = start(wire, head, request);
    // The proxy runs; once the request body is all read, the socket is watched for the
    // client leaving (the request is then dropped, and counted as abandoned).
    let resp = {
        let mut service = pin!(serve_request(Arc::clone(shared), Arc::clone(info), req));
        poll_fn(|cx| {
            if let Poll::Ready(Ok(resp)) = service.as_mut().poll(cx) {
                return Poll::Ready(Some(resp));
            }
            match lock(wire).poll_client_gone(cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    };
    let Some(resp) = resp else {
        tracing::debug!(peer = %info.peer, "client left before its response");
        return Ok(Outcome::Close);
    };
    respond(shared, info, wire, resp, asked).await
}

enum Refused {
    Head(HeadError),
    Io(io::Error),
}

/// Reads until a whole request head is buffered and parses it. `Ok(None)`: the client
/// closed before completing one.
async fn read_head(wire: &Mutex<Wire>, limits: HeadLimits) -> Result<Option<RequestHead>, Refused> {
    poll_fn(|cx| {
        let mut w = lock(wire);
        loop {
            match head::parse_request_head(w.buf_mut(), limits) {
                Ok(Some(head)) => return Poll::Ready(Ok(Some(head))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(Refused::Head(e))),
            }
            match ready!(w.poll_fill(cx, 4096)) {
                Ok(0) => return Poll::Ready(Ok(None)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(Refused::Io(e))),
            }
        }
    })
    .await
}

/// What a request asked that shapes its response.
struct Asked {
    method: Method,
    version: Version,
    keep_alive: bool,
    /// Where the connection goes if the upstream switches protocols.
    upgrade_to: Option<tokio::sync::oneshot::Sender<wire::Upgraded>>,
}

/// Starts request number `request`: its body is read from the socket as its head says,
/// and the request goes to the proxy.
fn start(
    wire: &Arc<Mutex<Wire>>,
    head: RequestHead,
    request: u64,
) -> (Request<RequestBody>, Asked) {
    let RequestHead {
        mut parts,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
    } = head;
    lock(wire).start_request(request, framing, expect_continue);
    let asked = Asked {
        method: parts.method.clone(),
        version: parts.version,
        keep_alive,
        upgrade_to: upgrade.then(|| {
            let (tx, on) = OnUpgrade::pair();
            parts.extensions.insert(on);
            tx
        }),
    };
    let body = RequestBody::client(ClientBody::new(Arc::clone(wire), request, framing));
    (Request::from_parts(parts, body), asked)
}

/// Writes the response to a request.
async fn respond(
    shared: &Arc<Shared>,
    info: &Arc<ConnInfo>,
    wire: &Arc<Mutex<Wire>>,
    resp: Response<Tracked<ProxyBody>>,
    asked: Asked,
) -> io::Result<Outcome> {
    let Asked {
        method,
        version,
        keep_alive,
        upgrade_to,
    } = asked;
    send_after_batch(&shared.stats).await;
    let (mut parts, mut body) = resp.into_parts();
    let (continued, body_read, body_failed) = {
        let mut w = lock(wire);
        (w.responding(), w.body_read(), w.body_failed())
    };
    // An answer given before the request body was all read (no route, a filter, an
    // upstream that did not wait for it): when nothing else holds the body to read it
    // (as a response streaming while the body still goes upstream does), what has arrived
    // of it is consumed now. A body still unfinished then ends the connection after the
    // response, and the response says so.
    let body_ends = body_read
        || Arc::strong_count(wire) > 1
        || poll_fn(|cx| Poll::Ready(lock(wire).finish_request(cx))).await;
    let keep_alive = keep_alive && body_ends && !body_failed && !info.draining.load(Relaxed);
    let length = if body.is_end_stream() {
        BodyLength::None
    } else {
        body.size_hint()
            .exact()
            .map_or(BodyLength::Unknown, BodyLength::Known)
    };
    // A `100 Continue` partly written: its rest goes first.
    let mut out = continued.to_vec();
    let ctx = ResponseContext {
        method: &method,
        version,
    };
    let (encoder, last) =
        match head::encode_response_head(&mut parts, ctx, length, keep_alive, &mut out) {
            Ok(e) => e,
            Err(why) => {
                tracing::warn!(peer = %info.peer, "response not sent: {why}");
                return Ok(Outcome::Close);
            }
        };
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    drop(parts);
    let complete = if length == BodyLength::None || encoder == Encoder::Length(0) {
        drop(body);
        write_all(wire, &mut [&out]).await?;
        flush(wire).await?;
        true
    } else {
        let complete = write_body(wire, out, &mut body, encoder).await?;
        drop(body);
        complete
    };
    if switching {
        return Ok(match (upgrade_to, lock(wire).take_upgraded()) {
            (Some(tx), Some(up)) => {
                if tx.send(up).is_err() {
                    tracing::debug!(peer = %info.peer, "upgrade abandoned by its tunnel; closing");
                }
                Outcome::Upgraded
            }
            _ => Outcome::Close,
        });
    }
    if !complete || last {
        return Ok(Outcome::Close);
    }
    let reusable = poll_fn(|cx| Poll::Ready(lock(wire).finish_request(cx))).await;
    Ok(if reusable && !info.draining.load(Relaxed) {
        Outcome::KeepAlive
    } else {
        Outcome::Close
    })
}

/// Streams a response body after its head (`head`, sent with the first data when that is
/// ready at once). Returns whether the whole body went out; a body that fails or breaks
/// its length ends the connection (the client sees an incomplete message).
async fn write_body<B>(
    wire: &Mutex<Wire>,
    head: Vec<u8>,
    body: &mut B,
    encoder: Encoder,
) -> io::Result<bool>
where
    B: Body<Data = Bytes, Error = io::Error> + Unpin,
{
    let mut head = Some(head);
    let mut left = match encoder {
        Encoder::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                // Nothing more now: what is written goes out before waiting, except a head
                // whose body has a length: that may wait in the kernel for the body's first
                // bytes, so the client gets both in one segment as from the upstream.
                match head.take() {
                    Some(h) if matches!(encoder, Encoder::Length(_)) => {
                        write_more(wire, &h).await?
                    }
                    Some(h) => write_all(wire, &mut [&h]).await?,
                    None => {}
                }
                flush(wire).await?;
                body.frame().await
            }
        };
        let pending_head = head.take();
        let pending_head = pending_head.as_deref().unwrap_or_default();
        let data = match frame {
            None => {
                let tail: &[u8] = if encoder == Encoder::Chunked {
                    b"0\r\n\r\n"
                } else {
                    b""
                };
                write_all(wire, &mut [pending_head, tail]).await?;
                flush(wire).await?;
                return Ok(matches!(encoder, Encoder::Chunked) || left == 0 || left == u64::MAX);
            }
            Some(Err(e)) => {
                tracing::debug!("response body failed: {e}");
                write_all(wire, &mut [pending_head]).await?;
                flush(wire).await?;
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: not sent to HTTP/1.1 clients (hyper's server did not either).
                Err(_) => Bytes::new(),
            },
        };
        if data.is_empty() {
            if !pending_head.is_empty() {
                head = Some(pending_head.to_vec());
            }
            continue;
        }
        match encoder {
            Encoder::Chunked => {
                let mut line = [0u8; 18];
                let line = head::chunk_line(data.len(), &mut line);
                write_all(wire, &mut [pending_head, line, &data, b"\r\n"]).await?;
            }
            Encoder::Length(_) => {
                let take = usize::try_from(left).map_or(data.len(), |l| l.min(data.len()));
                write_all(wire, &mut [pending_head, &data[..take]]).await?;
                left -= take as u64;
                if take < data.len() {
                    tracing::warn!("response body longer than its Content-Length; cut");
                    flush(wire).await?;
                    return Ok(false);
                }
                if left == 0 {
                    flush(wire).await?;
                    return Ok(true);
                }
            }
            Encoder::CloseDelimited => write_all(wire, &mut [pending_head, &data]).await?,
        }
    }
}

/// Writes every byte of `parts`, in order.
async fn write_all(wire: &Mutex<Wire>, parts: &mut [&[u8]]) -> io::Result<()> {
    poll_fn(|cx| poll_write_all(&mut lock(wire), cx, parts)).await
}

fn poll_write_all(w: &mut Wire, cx: &mut Context<'_>, parts: &mut [&[u8]]) -> Poll<io::Result<()>> {
    loop {
        let mut slices = [io::IoSlice::new(&[]); 4];
        let mut k = 0;
        for p in parts.iter().filter(|p| !p.is_empty()).take(slices.len()) {
            slices[k] = io::IoSlice::new(p);
            k += 1;
        }
        if k == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut n = ready!(w.poll_write_vectored(cx, &slices[..k]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        for p in parts.iter_mut() {
            let k = n.min(p.len());
            *p = &p[k..];
            n -= k;
        }
    }
}

/// Writes every byte of `bytes` as the start of a message whose next bytes are on their way.
async fn write_more(wire: &Mutex<Wire>, mut bytes: &[u8]) -> io::Result<()> {
    poll_fn(|cx| {
        let mut w = lock(wire);
        while !bytes.is_empty() {
            match ready!(w.poll_write_more(cx, bytes))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => bytes = &bytes[n..],
            }
        }
        Poll::Ready(Ok(()))
    })
    .await
}

async fn flush(wire: &Mutex<Wire>) -> io::Result<()> {
    poll_fn(|cx| lock(wire).poll_flush(cx)).await
}

/// How long a connection closed with its request body unread goes on reading.
const LINGER: Duration = Duration::from_secs(5);

/// After the response to a request whose body was left unread, with the sending side
/// closed: reads and drops what the client still sends, until it closes or for [`LINGER`].
/// Closing a socket with unread bytes in it sends a reset, and a reset that reaches the
/// client before it has read the response destroys the response (nginx's lingering close).
async fn linger(wire: &Mutex<Wire>) {
    let mut deadline = pin!(tokio::time::sleep(LINGER));
    poll_fn(|cx| {
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        lock(wire).poll_discard(cx)
    })
    .await;
}

/// Closes the sending side (a TLS stream sends its close_notify).
async fn shutdown(wire: &Mutex<Wire>) -> io::Result<()> {
    poll_fn(|cx| lock(wire).poll_shutdown(cx)).await
}
