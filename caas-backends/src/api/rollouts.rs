//! Rolling updates through the API: `POST /v1/apps/{app}/rollouts` starts one,
//! `GET /v1/apps/{app}/rollout` says where it stands, `POST /v1/apps/{app}/rollback` rolls
//! back the one in progress or reverts the last finished one. The work itself is done by the
//! rollout controllers (`caasd rollouts`, or `caasd up`), from the rollout node the API
//! writes: it survives the API and the controllers restarting.

use std::time::Duration;

use caas_core::AppId;
use http::{Request, Response, StatusCode};
use serde::Deserialize;

use super::Api;
use super::apps::require;
use super::error::ApiError;
use super::http::{ApiBody, RequestBody, json, parse_json, read_body};
use super::versions::{check_capacity, deployment_error, version_id};
use crate::rollout::{RolloutError, RolloutRequest, Rollouts};
use crate::scheduler::deployment::Deployment;
use crate::store::Store;

/// The body of `POST /v1/apps/{app}/rollouts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    /// The new version.
    version: String,
    /// The version it replaces (default: the one serving).
    #[serde(default)]
    from: Option<String>,
    /// The new version's whole deployment (default: the old one's with `image`).
    #[serde(default)]
    deployment: Option<Deployment>,
    /// The new image, with no `deployment`.
    #[serde(default)]
    image: Option<String>,
    /// The new version's replicas (default: the old version's).
    #[serde(default)]
    replicas: Option<u32>,
    /// Percentages of the traffic moved, ending at 100.
    #[serde(default)]
    steps: Option<Vec<u32>>,
    /// Time between two steps.
    #[serde(default)]
    step_wait_ms: Option<u64>,
    /// Longest wait for the new version to be healthy before rolling back.
    #[serde(default)]
    health_deadline_ms: Option<u64>,
    /// Time between the new version taking all the traffic and the old one's removal.
    #[serde(default)]
    drain_wait_ms: Option<u64>,
}

fn rollouts<S: Store>(api: &Api<S>) -> Rollouts<S> {
    Rollouts::new(api.store().clone()).with_cipher(api.cipher().cloned())
}

/// `POST /v1/apps/{app}/rollouts`.
pub async fn start<S: Store, B: RequestBody>(
    api: &Api<S>,
    app: &AppId,
    req: Request<B>,
) -> Result<Response<ApiBody>, ApiError> {
    require(api.store(), app).await?;
    let body = read_body(req).await?;
    let b: StartBody = parse_json(&body, None)?;
    let to = version_id(&b.version)?;
    let from = b.from.as_deref().map(version_id).transpose()?;
    if b.deployment.is_some() && (b.image.is_some() || b.replicas.is_some()) {
        return Err(ApiError::invalid(
            "deployment",
            "give either a whole deployment or image/replicas, not both",
        ));
    }
    if b.deployment.is_none() && b.image.is_none() {
        return Err(ApiError::invalid(
            "image",
            "the new version needs an image (or a whole deployment)",
        ));
    }
    if let Some(d) = &b.deployment {
        d.validate(app, &to).map_err(|e| {
            let mut e = deployment_error(d, e);
            e.field = e.field.map(|f| format!("deployment.{f}"));
            e
        })?;
        check_capacity(api.store(), d, app, &to).await?;
    }
    let mut r = RolloutRequest::new(to, b.image.unwrap_or_default());
    if b.deployment.is_some() {
        r.image = None;
    }
    r.from = from;
    r.deployment = b.deployment;
    r.replicas = b.replicas;
    if let Some(s) = b.steps {
        r.steps = s;
    }
    if let Some(ms) = b.step_wait_ms {
        r.step_wait = Duration::from_millis(ms);
    }
    if let Some(ms) = b.health_deadline_ms {
        r.health_deadline = Duration::from_millis(ms);
    }
    if let Some(ms) = b.drain_wait_ms {
        r.drain_wait = Duration::from_millis(ms);
    }
    let state = rollouts(api).start(app, r).await.map_err(rollout_error)?;
    Ok(json(StatusCode::CREATED, &state))
}

/// `GET /v1/apps/{app}/rollout`: the app's rollout node (404 `no_rollout` without one).
pub async fn get<S: Store>(api: &Api<S>, app: &AppId) -> Result<Response<ApiBody>, ApiError> {
    require(api.store(), app).await?;
    match rollouts(api).status(app).await.map_err(rollout_error)? {
        Some(state) => Ok(json(StatusCode::OK, &state)),
        None => Err(ApiError::not_found(
            "no_rollout",
            format!("{app} has had no rolling update"),
        )),
    }
}

/// `POST /v1/apps/{app}/rollback`.
pub async fn rollback<S: Store>(api: &Api<S>, app: &AppId) -> Result<Response<ApiBody>, ApiError> {
    require(api.store(), app).await?;
    let state = rollouts(api).rollback(app).await.map_err(rollout_error)?;
    Ok(json(StatusCode::ACCEPTED, &state))
}

/// A refused rollout as the API's error: the field when the message names one.
fn rollout_error(e: RolloutError) -> ApiError {
    match e {
        RolloutError::Invalid(msg) => {
            let field = msg
                .split_once(':')
                .map(|(f, _)| f)
                .filter(|f| {
                    matches!(
                        *f,
                        "steps" | "version" | "from" | "image" | "replicas" | "deployment"
                    )
                })
                .unwrap_or("rollout")
                .to_owned();
            ApiError::invalid(field, msg)
        }
        RolloutError::NotFound(msg) => ApiError::not_found("not_found", msg),
        RolloutError::Conflict(msg) => ApiError::conflict("rollout_conflict", msg),
        RolloutError::Busy => ApiError::conflict("conflict", RolloutError::Busy.to_string()),
        RolloutError::Store(e) => e.into(),
        RolloutError::BadNode { path, reason } => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_data_invalid",
            format!("{path}: {reason}"),
        ),
    }
}
