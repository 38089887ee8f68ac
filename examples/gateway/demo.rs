//! Tiny upstreams for `--demo`: each answers every request with its own address.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Listens on `addr` and answers `hello from {addr}: {method} {path}`.
pub(crate) async fn spawn_upstream(addr: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("demo upstream cannot listen on {addr}: {e}"))?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%addr, "demo upstream accept failed: {e}");
                    continue;
                }
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let text = format!("hello from {addr}: {} {}\n", req.method(), req.uri());
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(%addr, "demo upstream connection: {e}");
                }
            });
        }
    });
    Ok(())
}
