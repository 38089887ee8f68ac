//! The exchange against scripted loopback upstreams, with bodies the test drives frame by
//! frame: what goes on the wire, and whose fault each failure is.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use http_body::{Body, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;
use crate::upstream::UpstreamConn;

/// A request body the test feeds: each message is one frame or the body's error; dropping
/// the sender ends the body, keeping it without sending stalls it.
struct Fed(mpsc::UnboundedReceiver<Result<Frame<Bytes>, &'static str>>);

impl Body for Fed {
    type Data = Bytes;
    type Error = &'static str;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        self.0.poll_recv(cx)
    }
}

type Feed = mpsc::UnboundedSender<Result<Frame<Bytes>, &'static str>>;

fn fed() -> (Feed, Fed) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Fed(rx))
}

fn data(s: &'static str) -> Result<Frame<Bytes>, &'static str> {
    Ok(Frame::data(Bytes::from_static(s.as_bytes())))
}

/// A connection to a fresh listener, and the upstream's side of it.
async fn pair() -> (UpstreamConn, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conn = UpstreamConn::connect(addr, Duration::from_secs(5))
        .await
        .unwrap();
    (conn, listener.accept().await.unwrap().0)
}

/// Reads from the upstream's side until `end` arrives; returns everything read.
async fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(end) {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

const HEAD: &[u8] = b"POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\n";
const CHUNKED_HEAD: &[u8] = b"POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_length_body_goes_out_as_is_and_the_answer_comes_back() {
    let (mut conn, mut up) = pair().await;
    let (tx, body) = fed();
    tx.send(data("hel")).unwrap();
    tx.send(data("lo")).unwrap();
    drop(tx);
    let server = tokio::spawn(async move {
        let got = read_until(&mut up, b"hello").await;
        up.write_all(OK).await.unwrap();
        got
    });
    let sender = BodySender::new(body, RequestFraming::Length);
    let mut ex = Exchange::new(&mut conn, HEAD, Some(sender), &Method::POST);
    let head = ex.response_head(LONG).await.unwrap();
    assert_eq!(head.parts.status, 200);
    assert!(ex.request_complete());
    let mut want = HEAD.to_vec();
    want.extend_from_slice(b"hello");
    assert_eq!(server.await.unwrap(), want);
    assert_eq!(
        &conn.buf_mut()[..],
        b"ok",
        "the body is left for the response body"
    );
}

#[tokio::test]
async fn an_unknown_length_is_chunked_with_trailers_passed_on() {
    let (mut conn, mut up) = pair().await;
    let (tx, body) = fed();
    tx.send(data("ab")).unwrap();
    tx.send(data("")).unwrap();
    tx.send(data("cdefghijklmnopq")).unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", HeaderValue::from_static("42"));
    tx.send(Ok(Frame::trailers(trailers))).unwrap();
    drop(tx);
    let server = tokio::spawn(async move {
        let got = read_until(&mut up, b"\r\n0\r\nx-sum: 42\r\n\r\n").await;
        up.write_all(OK).await.unwrap();
        got
    });
    let sender = BodySender::new(body, RequestFraming::Chunked);
    let mut ex = Exchange::new(&mut conn, CHUNKED_HEAD, Some(sender), &Method::POST);
    ex.response_head(LONG).await.unwrap();
    let mut want = CHUNKED_HEAD.to_vec();
    want.extend_from_slice(b"2\r\nab\r\nf\r\ncdefghijklmnopq\r\n0\r\nx-sum: 42\r\n\r\n");
    assert_eq!(
        String::from_utf8(server.await.unwrap()).unwrap(),
        String::from_utf8(want).unwrap()
    );
}

#[tokio::test]
async fn a_broken_client_body_is_the_clients_fault() {
    let (mut conn, mut up) = pair().await;
    let (tx, body) = fed();
    tx.send(data("ab")).unwrap();
    tx.send(Err("invalid chunk size line")).unwrap();
    let sender = BodySender::new(body, RequestFraming::Chunked);
    let mut ex = Exchange::new(&mut conn, CHUNKED_HEAD, Some(sender), &Method::POST);
    match ex.response_head(LONG).await {
        Err(ExchangeError::ClientBody("invalid chunk size line")) => {}
        other => panic!("{other:?}"),
    }
    assert!(!ex.request_complete());
    // The upstream got the head and the first chunk, nothing that ends the body.
    let got = read_until(&mut up, b"2\r\nab\r\n").await;
    assert!(got.starts_with(CHUNKED_HEAD));
}

#[tokio::test]
async fn a_stalled_client_is_the_clients_fault_a_silent_upstream_is_the_upstreams() {
    // The client sends part of its body, then nothing: the upstream waits for the rest.
    let (mut conn, mut up) = pair().await;
    let (tx, body) = fed();
    tx.send(data("he")).unwrap();
    let sender = BodySender::new(body, RequestFraming::Length);
    let mut ex = Exchange::new(&mut conn, HEAD, Some(sender), &Method::POST);
    match ex.response_head(Duration::from_millis(150)).await {
        Err(ExchangeError::ClientStalled) => {}
        other => panic!("{other:?}"),
    }
    read_until(&mut up, b"he").await;
    drop(tx);

    // The whole request went out and the upstream says nothing: the upstream's fault.
    let (mut conn, mut up) = pair().await;
    let (tx, body) = fed();
    tx.send(data("hello")).unwrap();
    drop(tx);
    let sender = BodySender::new(body, RequestFraming::Length);
    let mut ex = Exchange::new(&mut conn, HEAD, Some(sender), &Method::POST);
    match ex.response_head(Duration::from_millis(150)).await {
        Err(ExchangeError::TimedOut) => {}
        other => panic!("{other:?}"),
    }
    assert!(ex.request_complete());
    read_until(&mut up, b"hello").await;
}

#[tokio::test]
async fn an_upstream_that_stops_reading_a_large_body_is_the_upstreams_fault() {
    let (mut conn, _up) = pair().await;
    let (tx, body) = fed();
    // Far more than the socket buffers hold; the upstream never reads.
    let chunk: &'static str = Box::leak("x".repeat(1 << 20).into_boxed_str());
    for _ in 0..64 {
        tx.send(data(chunk)).unwrap();
    }
    let head = b"POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 67108864\r\n\r\n";
    let sender = BodySender::new(body, RequestFraming::Length);
    let mut ex = Exchange::new(&mut conn, head, Some(sender), &Method::POST);
    match ex.response_head(Duration::from_millis(300)).await {
        Err(ExchangeError::TimedOut) => {}
        other => panic!("{other:?}"),
    }
    drop(tx);
}

#[tokio::test]
async fn an_early_answer_leaves_the_rest_of_the_body_to_send() {
    let (mut conn, mut up) = pair().await;
    let (tx, body) = fed();
    let server = tokio::spawn(async move {
        read_until(&mut up, b"\r\n\r\n").await;
        up.write_all(OK).await.unwrap();
        up
    });
    let sender = BodySender::new(body, RequestFraming::Length);
    let mut ex = Exchange::new(&mut conn, HEAD, Some(sender), &Method::POST);
    let head = ex.response_head(LONG).await.unwrap();
    assert_eq!(head.parts.status, 200);
    assert!(!ex.request_complete());
    let mut rest = ex.take_body().expect("the body is still to send");
    tx.send(data("hello")).unwrap();
    drop(tx);
    std::future::poll_fn(|cx| rest.poll_send(&mut conn, cx))
        .await
        .unwrap();
    let mut up = server.await.unwrap();
    assert_eq!(read_until(&mut up, b"hello").await, b"hello");
}

#[tokio::test]
async fn closing_before_any_answer_is_resendable_only_when_nothing_was_consumed() {
    // Bodyless: nothing of the request is lost, it can go again elsewhere.
    let (mut conn, mut up) = pair().await;
    tokio::spawn(async move {
        read_until(&mut up, b"\r\n\r\n").await;
    });
    let head = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    let mut ex = Exchange::<Fed>::new(&mut conn, head, None, &Method::GET);
    assert!(matches!(
        ex.response_head(LONG).await,
        Err(ExchangeError::Closed(_))
    ));

    // A body was taken from the client: it cannot be sent again, the failure is final.
    let (mut conn, mut up) = pair().await;
    let (tx, body) = fed();
    tx.send(data("hello")).unwrap();
    drop(tx);
    tokio::spawn(async move {
        read_until(&mut up, b"hello").await;
    });
    let sender = BodySender::new(body, RequestFraming::Length);
    let mut ex = Exchange::new(&mut conn, HEAD, Some(sender), &Method::POST);
    assert!(matches!(
        ex.response_head(LONG).await,
        Err(ExchangeError::Upstream(_))
    ));
}

#[tokio::test]
async fn garbage_instead_of_a_response_is_the_upstreams_fault() {
    let (mut conn, mut up) = pair().await;
    tokio::spawn(async move {
        read_until(&mut up, b"\r\n\r\n").await;
        up.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").await.unwrap();
        // Keep the socket open: the failure is the bytes, not a close.
        tokio::time::sleep(LONG).await;
    });
    let head = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    let mut ex = Exchange::<Fed>::new(&mut conn, head, None, &Method::GET);
    match ex.response_head(LONG).await {
        Err(ExchangeError::Upstream(reason)) => assert!(reason.contains("invalid"), "{reason}"),
        other => panic!("{other:?}"),
    }
}
