//! `GET /v1/apps`, `GET /v1/apps/{app}`, `DELETE /v1/apps/{app}`.

use std::collections::BTreeSet;

use caas_core::{AppId, Domain, Version};
use futures_util::future::join_all;
use http::{Response, StatusCode};

use super::error::ApiError;
use super::http::{ApiBody, json};
use super::txn::{read_spec, transact};
use super::views::{AppSummary, AppView, StatusView, VersionView, instances};
use super::{Api, Principal};
use crate::scheduler::snapshot;
use crate::scheduler::{ControlError, control};
use crate::store::{Op, Store};
use crate::zk::layout::{APPS, CERTS, DEPLOYMENTS, app_path};

/// The versions deployed of `app` (children of `/deployments/{app}` with valid names).
pub async fn deployed_versions<S: Store>(store: &S, app: &AppId) -> Result<Vec<Version>, ApiError> {
    Ok(store
        .children(&format!("{DEPLOYMENTS}/{app}"))
        .await?
        .iter()
        .filter_map(|v| Version::new(v).ok())
        .collect())
}

/// Whether `app` exists: it has a spec node or a deployment.
pub async fn exists<S: Store>(store: &S, app: &AppId) -> Result<bool, ApiError> {
    Ok(store.get(&app_path(app)).await?.is_some()
        || !deployed_versions(store, app).await?.is_empty())
}

/// 404 `app_not_found` unless `app` exists (the same answer as for another tenant's app).
pub async fn require<S: Store>(store: &S, app: &AppId) -> Result<(), ApiError> {
    if exists(store, app).await? {
        Ok(())
    } else {
        Err(ApiError::no_app(app.as_str()))
    }
}

/// The domains whose claim (`/domains/{domain}`) names `app`, with the claim's version.
pub async fn claims_of<S: Store>(store: &S, app: &AppId) -> Result<Vec<(Domain, i64)>, ApiError> {
    let names = store.children(crate::zk::layout::DOMAINS).await?;
    let domains: Vec<Domain> = names.iter().filter_map(|n| Domain::new(n).ok()).collect();
    let paths: Vec<String> = domains.iter().map(crate::zk::layout::domain_path).collect();
    let reads = join_all(paths.iter().map(|p| store.get(p))).await;
    let mut out = Vec::new();
    for (d, r) in domains.into_iter().zip(reads) {
        if let Some(node) = r?
            && node.data == app.as_str().as_bytes()
        {
            out.push((d, node.version));
        }
    }
    Ok(out)
}

/// `GET /v1/apps`.
pub async fn list<S: Store>(api: &Api<S>, who: &Principal) -> Result<Response<ApiBody>, ApiError> {
    let store = api.store();
    let mut ids: BTreeSet<AppId> = BTreeSet::new();
    for parent in [APPS, DEPLOYMENTS] {
        for name in store.children(parent).await? {
            if let Ok(app) = AppId::new(&name)
                && who.owns(&app)
            {
                ids.insert(app);
            }
        }
    }
    let versions = join_all(ids.iter().map(|a| deployed_versions(store, a))).await;
    let apps = ids
        .into_iter()
        .zip(versions)
        .map(|(app, v)| Ok(AppSummary { app, versions: v? }))
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "apps": apps })))
}

/// `GET /v1/apps/{app}`.
pub async fn get<S: Store>(api: &Api<S>, app: &AppId) -> Result<Response<ApiBody>, ApiError> {
    let store = api.store();
    let spec = read_spec(store, app, api.cipher()).await?;
    // The scheduler's own view of the cluster: assignments, agents' reports, registry.
    let snap = snapshot::read(store).await?;
    let mut versions = Vec::new();
    for ((a, v), d) in &snap.deployments {
        if a != app {
            continue;
        }
        let (deployment, invalid) = match &d.spec {
            Ok(d) => (Some(d.clone()), None),
            Err(e) => (None, Some(e.clone())),
        };
        versions.push(VersionView {
            version: v.clone(),
            deployment,
            invalid,
            status: d
                .status
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .map(StatusView::from),
        });
    }
    if spec.version.is_none() && versions.is_empty() {
        return Err(ApiError::no_app(app.as_str()));
    }
    let domains = claims_of(store, app)
        .await?
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    let view = AppView {
        app: app.clone(),
        default_version: spec.spec.default_version.clone(),
        weights: spec.spec.weights.clone(),
        domains,
        blacklist: spec.spec.blacklist.clone(),
        rate_limit: spec.spec.rate_limit,
        versions,
        instances: instances(&snap, app),
    };
    Ok(json(StatusCode::OK, &view))
}

/// `DELETE /v1/apps/{app}`: every version undeployed (assignments, allocations, status and
/// deployment nodes), the spec, the domain claims and their certificates: one commit.
pub async fn delete<S: Store>(api: &Api<S>, app: &AppId) -> Result<Response<ApiBody>, ApiError> {
    let store = api.store();
    let removed = transact(store, || async move {
        let undeploy = match control::undeploy_ops(store, app, None).await {
            Ok(u) => Some(u),
            Err(ControlError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let spec = read_spec(store, app, api.cipher()).await?;
        if undeploy.is_none() && spec.version.is_none() {
            return Err(ApiError::no_app(app.as_str()));
        }
        let (mut ops, versions) = undeploy.unwrap_or_default();
        // Nodes under the spec (older layouts kept static versions there), deepest first.
        let mut below = Vec::new();
        let mut stack = vec![app_path(app)];
        while let Some(p) = stack.pop() {
            for c in store.children(&p).await? {
                let child = format!("{p}/{c}");
                below.push(child.clone());
                stack.push(child);
            }
        }
        for p in below.into_iter().rev() {
            ops.push(Op::Delete {
                path: p,
                version: None,
            });
        }
        ops.extend(spec.delete(app));
        let mut domains = Vec::new();
        for (d, version) in claims_of(store, app).await? {
            ops.extend(cert_delete(store, &d, app).await?);
            ops.push(Op::Delete {
                path: crate::zk::layout::domain_path(&d),
                version: Some(version),
            });
            domains.push(d);
        }
        Ok((ops, (versions, domains)))
    })
    .await?;
    tracing::info!(%app, versions = ?removed.0, domains = ?removed.1, "app deleted through the api");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"app": app, "deleted": true, "versions": removed.0, "domains": removed.1}),
    ))
}

/// The op deleting `/certs/{domain}` when the certificate there is `app`'s.
pub async fn cert_delete<S: Store>(
    store: &S,
    domain: &Domain,
    app: &AppId,
) -> Result<Option<Op>, ApiError> {
    let path = format!("{CERTS}/{domain}");
    let Some(node) = store.get(&path).await? else {
        return Ok(None);
    };
    #[derive(serde::Deserialize)]
    struct CertApp {
        app: String,
    }
    let owner = serde_json::from_slice::<CertApp>(&node.data).ok();
    Ok(owner.filter(|c| c.app == app.as_str()).map(|_| Op::Delete {
        path,
        version: Some(node.version),
    }))
}
