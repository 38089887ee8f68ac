//! Admin only: `GET /v1/hosts` and `POST`/`DELETE /v1/hosts/{host}/drain`.

use futures_util::future::join_all;
use http::{Response, StatusCode};

use super::Api;
use super::error::ApiError;
use super::http::{ApiBody, json};
use super::views::HostView;
use crate::scheduler::{ControlError, control};
use crate::store::Store;
use crate::zk::hosts::{HOSTS, HostInfo, alive_path, host_path, validate_host_id};

/// `GET /v1/hosts`: every host with its capacity, allocation, CPU idle, labels, whether its
/// agent is alive and whether it is draining.
pub async fn list<S: Store>(api: &Api<S>) -> Result<Response<ApiBody>, ApiError> {
    let store = api.store();
    let ids = store.children(HOSTS).await?;
    let info_paths: Vec<String> = ids.iter().map(|h| host_path(h)).collect();
    let alive_paths: Vec<String> = ids.iter().map(|h| alive_path(h)).collect();
    let infos = join_all(info_paths.iter().map(|p| store.get(p))).await;
    let alive = join_all(alive_paths.iter().map(|p| store.get(p))).await;
    let mut hosts = Vec::new();
    for ((id, info), alive) in ids.iter().zip(infos).zip(alive) {
        let info = match info? {
            None => Err("no host node".to_owned()),
            Some(n) if n.data.is_empty() => {
                Err("the agent has not published its info yet".to_owned())
            }
            Some(n) => serde_json::from_slice::<HostInfo>(&n.data)
                .map_err(|e| format!("the host node is not HostInfo JSON: {e}")),
        };
        hosts.push(HostView::new(id, alive?.is_some(), info));
    }
    Ok(json(StatusCode::OK, &serde_json::json!({ "hosts": hosts })))
}

/// `POST /v1/hosts/{host}/drain` (`on`) and `DELETE` (off): sets `draining` under the
/// node's version, nothing else.
pub async fn drain<S: Store>(
    api: &Api<S>,
    host: &str,
    on: bool,
) -> Result<Response<ApiBody>, ApiError> {
    validate_host_id(host).map_err(|e| ApiError::invalid("host", e))?;
    match control::drain(api.store(), host, on).await {
        Ok(()) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({"host": host, "draining": on}),
        )),
        Err(ControlError::NotFound { .. }) => Err(ApiError::not_found(
            "host_not_found",
            format!("no host {host:?}"),
        )),
        Err(e) => Err(e.into()),
    }
}
