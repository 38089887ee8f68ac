//! The endpoints, in one table, and what every request goes through first: the token
//! (401), admin-only routes (403), the app's id (400) and owner (another tenant's app is a
//! 404 exactly as an app that does not exist).
//!
//! ```text
//! GET    /v1/apps                                           the caller's apps (admin: all)
//! GET    /v1/apps/{app}                                     versions, routing, instances
//! DELETE /v1/apps/{app}                                     every version, the spec, the domains
//! PUT    /v1/apps/{app}/versions/{version}                  the deployment JSON
//! PATCH  /v1/apps/{app}/versions/{version}                  {"replicas": N}
//! DELETE /v1/apps/{app}/versions/{version}
//! PUT    /v1/apps/{app}/weights                             {"v1": 90, "v2": 10}   (DELETE clears)
//! PUT    /v1/apps/{app}/domains/{domain}                    claim                  (DELETE releases)
//! PUT    /v1/apps/{app}/blacklist                           Blacklist JSON         (DELETE clears)
//! PUT    /v1/apps/{app}/rate_limit                          RateLimit JSON         (DELETE clears)
//! POST   /v1/apps/{app}/rollouts                            start a rolling update
//! GET    /v1/apps/{app}/rollout                             where it stands
//! POST   /v1/apps/{app}/rollback                            roll back / revert
//! GET    /v1/apps/{app}/stats                               summed over every gateway
//! GET    /v1/apps/{app}/instances/{instance}/logs?tail=N&follow=true
//! GET    /v1/hosts                                          admin
//! POST   /v1/hosts/{host}/drain                             admin (DELETE undoes)
//! ```

use caas_core::AppId;
use http::{Method, Request, Response, StatusCode, header};

use super::error::ApiError;
use super::http::{ApiBody, RequestBody, error_response};
use super::{Api, Principal, apps, hosts, logs, rollouts, settings, stats, versions};
use crate::store::Store;

/// Answers one request.
pub async fn handle<S: Store, B: RequestBody>(api: &Api<S>, req: Request<B>) -> Response<ApiBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match route(api, req).await {
        Ok(resp) => resp,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(%method, %path, error = %e, "api request failed");
            } else {
                tracing::debug!(%method, %path, error = %e, "api request refused");
            }
            error_response(&e)
        }
    }
}

fn no_route() -> ApiError {
    ApiError::not_found(
        "no_route",
        "no such endpoint (see the README's API section)",
    )
}

fn method_not_allowed(allowed: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this endpoint takes {allowed}"),
    )
}

/// The app named by a path segment, if the caller owns it; 400 for an invalid id, 404
/// (the same as for a missing app) for another tenant's.
pub fn owned_app(who: &Principal, raw: &str) -> Result<AppId, ApiError> {
    let app = AppId::new(raw).map_err(|e| ApiError::invalid("app", e.to_string()))?;
    if who.owns(&app) {
        Ok(app)
    } else {
        Err(ApiError::no_app(raw))
    }
}

/// 403 unless the caller is an admin.
pub fn admin_only(who: &Principal) -> Result<(), ApiError> {
    if who.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

async fn route<S: Store, B: RequestBody>(
    api: &Api<S>,
    req: Request<B>,
) -> Result<Response<ApiBody>, ApiError> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return Ok(super::http::json(
            StatusCode::OK,
            &serde_json::json!({"ok": true}),
        ));
    }
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(no_route());
    };
    let who = api.tokens().authenticate(
        req.headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    )?;
    let seg: Vec<&str> = rest.split('/').collect();
    let m = req.method().clone();
    match seg.as_slice() {
        ["apps"] => match m {
            Method::GET => apps::list(api, &who).await,
            _ => Err(method_not_allowed("GET")),
        },
        ["apps", app] => {
            let app = owned_app(&who, app)?;
            match m {
                Method::GET => apps::get(api, &app).await,
                Method::DELETE => apps::delete(api, &app).await,
                _ => Err(method_not_allowed("GET, DELETE")),
            }
        }
        ["apps", app, "versions", version] => {
            let app = owned_app(&who, app)?;
            let version = versions::version_id(version)?;
            match m {
                Method::PUT => versions::put(api, &app, &version, req).await,
                Method::PATCH => versions::patch(api, &app, &version, req).await,
                Method::DELETE => versions::delete(api, &app, &version).await,
                _ => Err(method_not_allowed("PUT, PATCH, DELETE")),
            }
        }
        ["apps", app, key @ ("weights" | "blacklist" | "rate_limit")] => {
            let app = owned_app(&who, app)?;
            let body = match m {
                Method::PUT => Some(super::http::read_body(req).await?),
                Method::DELETE => None,
                _ => return Err(method_not_allowed("PUT, DELETE")),
            };
            settings::put_setting(api, &app, key, body.as_deref()).await
        }
        ["apps", app, "domains", domain] => {
            let app = owned_app(&who, app)?;
            match m {
                Method::PUT => settings::claim_domain(api, &app, domain).await,
                Method::DELETE => settings::release_domain(api, &app, domain).await,
                _ => Err(method_not_allowed("PUT, DELETE")),
            }
        }
        ["apps", app, "rollouts"] => {
            let app = owned_app(&who, app)?;
            match m {
                Method::POST => rollouts::start(api, &app, req).await,
                _ => Err(method_not_allowed("POST")),
            }
        }
        ["apps", app, "rollout"] => {
            let app = owned_app(&who, app)?;
            match m {
                Method::GET => rollouts::get(api, &app).await,
                _ => Err(method_not_allowed("GET")),
            }
        }
        ["apps", app, "rollback"] => {
            let app = owned_app(&who, app)?;
            match m {
                Method::POST => rollouts::rollback(api, &app).await,
                _ => Err(method_not_allowed("POST")),
            }
        }
        ["apps", app, "stats"] => {
            let app = owned_app(&who, app)?;
            match m {
                Method::GET => stats::get(api, &app).await,
                _ => Err(method_not_allowed("GET")),
            }
        }
        ["apps", app, "instances", instance, "logs"] => {
            let app = owned_app(&who, app)?;
            match m {
                Method::GET => logs::get(api, &app, instance, req.uri().query()).await,
                _ => Err(method_not_allowed("GET")),
            }
        }
        ["hosts"] => {
            admin_only(&who)?;
            match m {
                Method::GET => hosts::list(api).await,
                _ => Err(method_not_allowed("GET")),
            }
        }
        ["hosts", host, "drain"] => {
            admin_only(&who)?;
            match m {
                Method::POST => hosts::drain(api, host, true).await,
                Method::DELETE => hosts::drain(api, host, false).await,
                _ => Err(method_not_allowed("POST, DELETE")),
            }
        }
        _ => Err(no_route()),
    }
}
