//! `PUT`, `PATCH` and `DELETE /v1/apps/{app}/versions/{version}`: the deployment of one
//! version, validated by the deployment's own parser plus what only the API can check (the
//! memory some host can hold).

use caas_core::{AppId, Version};
use http::{Request, Response, StatusCode};
use serde::Deserialize;

use super::Api;
use super::error::ApiError;
use super::http::{ApiBody, RequestBody, json, parse_json, read_body};
use super::txn::{read_spec, transact, validate_spec};
use crate::assignment::AssignmentError;
use crate::scheduler::deployment::{Deployment, DeploymentError, MAX_REPLICAS};
use crate::scheduler::{ControlError, control};
use crate::store::{Op, Store};
use crate::zk::hosts::{HOSTS, HostInfo, host_path};
use crate::zk::layout::deployment_path;

/// The version named by a path segment; 400 naming `version` when it is not a valid id.
pub fn version_id(raw: &str) -> Result<Version, ApiError> {
    Version::new(raw).map_err(|e| ApiError::invalid("version", e.to_string()))
}

/// A deployment the validator refused, as a 400 naming the field.
pub fn deployment_error(d: &Deployment, e: DeploymentError) -> ApiError {
    let msg = e.to_string();
    match e {
        DeploymentError::Json(_) => ApiError::malformed(msg),
        DeploymentError::Replicas(why) => {
            let field = if why.contains("max_per_host") {
                "max_per_host"
            } else {
                "replicas"
            };
            ApiError::invalid(field, msg)
        }
        DeploymentError::Assignment(a) => match a {
            AssignmentError::Image { image, .. } | AssignmentError::ImageId { image, .. } => {
                let field = if image == d.image {
                    "image".to_owned()
                } else {
                    d.sidecars
                        .iter()
                        .position(|s| s.image == image)
                        .map_or("sidecars".to_owned(), |i| format!("sidecars[{i}].image"))
                };
                ApiError::invalid(field, msg)
            }
            AssignmentError::Range { field, .. } => ApiError::invalid(field, msg),
            AssignmentError::Json(_) => ApiError::malformed(msg),
        },
    }
}

/// 400 `memory` when no known host could ever hold one instance (with its sidecars). With
/// no host known yet nothing is refused: hosts may join later.
pub(super) async fn check_capacity<S: Store>(
    store: &S,
    d: &Deployment,
    app: &AppId,
    version: &Version,
) -> Result<(), ApiError> {
    let need = d.assignment(app, version).total_memory();
    let mut largest: Option<u64> = None;
    for h in store.children(HOSTS).await? {
        let Some(node) = store.get(&host_path(&h)).await? else {
            continue;
        };
        if let Ok(info) = serde_json::from_slice::<HostInfo>(&node.data) {
            largest = Some(largest.unwrap_or(0).max(info.capacity.memory));
        }
    }
    match largest {
        Some(max) if need > max => Err(ApiError::invalid(
            "memory",
            format!(
                "an instance needs {} MiB (with its sidecars) but the largest host offers {} MiB",
                need >> 20,
                max >> 20
            ),
        )),
        _ => Ok(()),
    }
}

/// `PUT /v1/apps/{app}/versions/{version}`: creates or replaces the deployment.
pub async fn put<S: Store, B: RequestBody>(
    api: &Api<S>,
    app: &AppId,
    version: &Version,
    req: Request<B>,
) -> Result<Response<ApiBody>, ApiError> {
    let body = read_body(req).await?;
    let d: Deployment = parse_json(&body, None)?;
    d.validate(app, version)
        .map_err(|e| deployment_error(&d, e))?;
    let store = api.store();
    check_capacity(store, &d, app, version).await?;
    let path = deployment_path(app, version);
    let data = d.to_json();
    let created = transact(store, || {
        let (path, data) = (path.clone(), data.clone());
        async move {
            Ok(match store.get(&path).await? {
                Some(node) if node.data == data => (Vec::new(), false),
                Some(node) => (
                    vec![Op::Set {
                        path,
                        data,
                        version: Some(node.version),
                    }],
                    false,
                ),
                None => (vec![Op::Create { path, data }], true),
            })
        }
    })
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(
        status,
        &serde_json::json!({"app": app, "version": version, "created": created, "deployment": d}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scale {
    replicas: u32,
}

/// `PATCH /v1/apps/{app}/versions/{version}` with `{"replicas": N}`.
pub async fn patch<S: Store, B: RequestBody>(
    api: &Api<S>,
    app: &AppId,
    version: &Version,
    req: Request<B>,
) -> Result<Response<ApiBody>, ApiError> {
    let body = read_body(req).await?;
    let Scale { replicas } = parse_json(&body, None)?;
    if replicas > MAX_REPLICAS {
        return Err(ApiError::invalid(
            "replicas",
            format!("replicas {replicas} is over the maximum of {MAX_REPLICAS}"),
        ));
    }
    let store = api.store();
    super::apps::require(store, app).await?;
    let path = deployment_path(app, version);
    let d = transact(store, || {
        let path = path.clone();
        async move {
            let node = store.get(&path).await?.ok_or_else(|| no_version(app, version))?;
            let mut d = Deployment::from_json(app, version, &node.data).map_err(|e| {
                ApiError::conflict(
                    "deployment_invalid",
                    format!("the stored deployment is invalid ({e}): replace it with PUT"),
                )
            })?;
            if d.global {
                return Err(ApiError::invalid(
                    "replicas",
                    "a global deployment runs one instance per eligible host: it has no replica count",
                ));
            }
            d.replicas = Some(replicas);
            d.validate(app, version)
                .map_err(|e| deployment_error(&d, e))?;
            let op = Op::Set {
                path,
                data: d.to_json(),
                version: Some(node.version),
            };
            Ok((vec![op], d))
        }
    })
    .await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"app": app, "version": version, "deployment": d}),
    ))
}

fn no_version(app: &AppId, version: &Version) -> ApiError {
    ApiError::not_found(
        "version_not_found",
        format!("app {app:?} has no version {version:?}"),
    )
}

/// `DELETE /v1/apps/{app}/versions/{version}`: the version's instances, allocations,
/// status and deployment nodes, and its place in the app's weights and default version,
/// in one commit.
pub async fn delete<S: Store>(
    api: &Api<S>,
    app: &AppId,
    version: &Version,
) -> Result<Response<ApiBody>, ApiError> {
    let store = api.store();
    super::apps::require(store, app).await?;
    transact(store, || async move {
        let mut ops = match control::undeploy_ops(store, app, Some(version)).await {
            Ok((ops, _)) => ops,
            Err(ControlError::NotFound { .. }) => return Err(no_version(app, version)),
            Err(e) => return Err(e.into()),
        };
        let node = read_spec(store, app, api.cipher()).await?;
        let mut spec = node.spec.clone();
        let mut changed = spec.weights.remove(version).is_some();
        if spec.weights.values().all(|&w| w == 0) && !spec.weights.is_empty() {
            spec.weights.clear();
        }
        if spec.default_version.as_ref() == Some(version) {
            spec.default_version = None;
            changed = true;
        }
        if changed {
            validate_spec(&spec)?;
            ops.push(node.write(app, &spec, api.cipher())?);
        }
        Ok((ops, ()))
    })
    .await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"app": app, "version": version, "deleted": true}),
    ))
}
