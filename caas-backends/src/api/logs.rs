//! `GET /v1/apps/{app}/instances/{instance}/logs?tail=N&follow=true`: the container's logs,
//! served by the host agent of that instance (the `logs` address in its host node) and
//! streamed through as they come; with `follow` the stream goes on until the client leaves
//! (dropping the answer closes the connection to the agent, which stops reading Docker).

use caas_core::{AppId, InstanceId};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;

use super::Api;
use super::error::ApiError;
use super::http::{ApiBody, BodyError};
use crate::assignment::Assignment;
use crate::store::Store;
use crate::zk::hosts::{HOSTS, HostInfo, assignment_path, host_path};

/// `tail` and `follow`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogQuery {
    /// The last N lines (`None`: all).
    pub tail: Option<u64>,
    /// Keep streaming new lines.
    pub follow: bool,
}

impl LogQuery {
    /// Parses `tail=N|all&follow=true|false` (both optional; default: all lines, no follow).
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut q = Self {
            tail: None,
            follow: false,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "tail" if v == "all" => q.tail = None,
                "tail" => {
                    q.tail = Some(v.parse().map_err(|_| {
                        ApiError::invalid("tail", format!("tail {v:?}: a line count or \"all\""))
                    })?);
                }
                "follow" => {
                    q.follow = match v {
                        "true" | "1" | "" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(ApiError::invalid(
                                "follow",
                                format!("follow {v:?}: true or false"),
                            ));
                        }
                    };
                }
                other => {
                    return Err(ApiError::unknown_field(
                        other,
                        format!("unknown parameter {other:?} (tail, follow)"),
                    ));
                }
            }
        }
        Ok(q)
    }

    /// The query string for the agent.
    pub fn to_query(self) -> String {
        let tail = self.tail.map_or("all".to_owned(), |n| n.to_string());
        format!("tail={tail}&follow={}", self.follow)
    }
}

/// The host an instance of `app` is assigned to, if any.
async fn host_of<S: Store>(
    store: &S,
    app: &AppId,
    instance: &InstanceId,
) -> Result<Option<(String, HostInfo)>, ApiError> {
    for h in store.children(HOSTS).await? {
        let Some(node) = store.get(&assignment_path(&h, instance)).await? else {
            continue;
        };
        let ours = Assignment::from_json(&node.data).is_ok_and(|a| &a.app == app);
        if !ours {
            continue;
        }
        let info = store
            .get(&host_path(&h))
            .await?
            .and_then(|n| serde_json::from_slice::<HostInfo>(&n.data).ok());
        return Ok(info.map(|i| (h, i)));
    }
    Ok(None)
}

/// `GET /v1/apps/{app}/instances/{instance}/logs`.
pub async fn get<S: Store>(
    api: &Api<S>,
    app: &AppId,
    raw: &str,
    query: Option<&str>,
) -> Result<Response<ApiBody>, ApiError> {
    let instance =
        InstanceId::new(raw).map_err(|e| ApiError::invalid("instance", e.to_string()))?;
    let q = LogQuery::parse(query)?;
    super::apps::require(api.store(), app).await?;
    let not_found = || {
        ApiError::not_found(
            "instance_not_found",
            format!("app {app:?} has no instance {raw:?}"),
        )
    };
    let (host, info) = host_of(api.store(), app, &instance)
        .await?
        .ok_or_else(not_found)?;
    let Some(addr) = info.logs else {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "logs_unavailable",
            format!("the agent of host {host:?} serves no logs (start it with --logs-listen)"),
        ));
    };
    let path = format!("/logs/{instance}?{}", q.to_query());
    let resp = super::http::get(&addr, &path, api.config().logs_timeout)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "agent_unavailable",
                format!("the agent of host {host:?} at {addr}: {e}"),
            )
        })?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err(ApiError::not_found(
                "instance_not_found",
                format!("instance {raw:?} has no container on host {host:?} yet"),
            ));
        }
        s => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "agent_unavailable",
                format!("the agent of host {host:?} answered {s}"),
            ));
        }
    }
    let body = resp.into_body().map_err(BodyError::from).boxed_unsync();
    let mut out = Response::new(body);
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_checked() {
        assert_eq!(
            LogQuery::parse(Some("tail=10&follow=true")).unwrap(),
            LogQuery {
                tail: Some(10),
                follow: true
            }
        );
        assert_eq!(
            LogQuery::parse(None).unwrap().to_query(),
            "tail=all&follow=false"
        );
        for (q, field) in [
            ("tail=x", "tail"),
            ("follow=maybe", "follow"),
            ("since=1", "since"),
        ] {
            assert_eq!(
                LogQuery::parse(Some(q)).unwrap_err().field.as_deref(),
                Some(field)
            );
        }
    }
}
