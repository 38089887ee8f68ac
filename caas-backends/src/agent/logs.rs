//! The agent's logs endpoint (`AgentConfig::logs_listen`): `GET /logs/{instanceId}?tail=N&follow=true`
//! streams the main container's stdout and stderr from the Docker Engine, for the instances
//! of this host only (containers labelled `caas.host={hostId}`). The control API finds the
//! host of an instance and passes this stream through to the tenant; with `follow` it goes
//! on until the client leaves (the body is dropped, which drops Docker's stream).
//!
//! Its address is published as `logs` in the host node, so it must be reachable from the
//! API (and only from there: it has no authentication of its own; bind it to the cluster
//! network).

use std::convert::Infallible;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::error::ApiError;
use crate::api::http::{ApiBody, BodyError, error_response};
use crate::api::logs::LogQuery;
use crate::docker::DockerRuntime;

/// Serves the endpoint on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    docker: DockerRuntime,
    host_id: String,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut shutdown) => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "agent logs accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (docker, host_id) = (docker.clone(), host_id.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (docker, host_id) = (docker.clone(), host_id.clone());
                async move { Ok::<_, Infallible>(answer(&docker, &host_id, &req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "agent logs connection ended");
            }
        });
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender (the agent gone) stops the server too.
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

async fn answer(
    docker: &DockerRuntime,
    host_id: &str,
    req: &Request<Incoming>,
) -> Response<ApiBody> {
    match logs(docker, host_id, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn logs(
    docker: &DockerRuntime,
    host_id: &str,
    req: &Request<Incoming>,
) -> Result<Response<ApiBody>, ApiError> {
    let Some(instance) = req.uri().path().strip_prefix("/logs/") else {
        return Err(ApiError::not_found("no_route", "GET /logs/{instanceId}"));
    };
    let q = LogQuery::parse(req.uri().query())?;
    let containers = docker
        .list_managed(host_id)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "docker_unavailable", e.to_string()))?;
    // The main container (not a sidecar); a running one over a leftover stopped one.
    let Some(main) = containers
        .iter()
        .filter(|c| c.instance() == Some(instance) && c.sidecar().is_none())
        .max_by_key(|c| c.running)
    else {
        return Err(ApiError::not_found(
            "instance_not_found",
            format!("no container of instance {instance:?} on host {host_id:?}"),
        ));
    };
    let options = LogsOptions {
        follow: q.follow,
        stdout: true,
        stderr: true,
        tail: q.tail.map_or_else(|| "all".to_owned(), |n| n.to_string()),
        ..LogsOptions::default()
    };
    let id = main.id.clone();
    let stream = docker.client().logs(&id, Some(options)).map(move |item| match item {
        Ok(out) => Ok(Frame::data(bytes_of(out))),
        Err(e) => {
            tracing::debug!(container = %id, error = %e, "container log stream ended with an error");
            Err(BodyError::from(e))
        }
    });
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

fn bytes_of(out: LogOutput) -> Bytes {
    match out {
        LogOutput::StdErr { message }
        | LogOutput::StdOut { message }
        | LogOutput::StdIn { message }
        | LogOutput::Console { message } => message,
    }
}
