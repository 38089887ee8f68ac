//! The app's routing settings: `weights`, `blacklist` and `rate_limit` (keys of its
//! [`AppSpec`](caas_core::AppSpec), validated by `AppSpec::validate`), and its custom
//! domains (the exclusive claim `/domains/{domain}`).

use std::collections::BTreeMap;

use caas_core::{AppId, Blacklist, Domain, RateLimit, Version};
use http::{Response, StatusCode};

use super::Api;
use super::apps::{cert_delete, deployed_versions};
use super::error::ApiError;
use super::http::{ApiBody, json, parse_json};
use super::txn::{read_spec, transact, validate_spec};
use crate::store::{Op, Store};
use crate::zk::layout::{deployment_path, domain_path};

/// One setting's new value, parsed.
enum Setting {
    Weights(BTreeMap<Version, u32>),
    Blacklist(Blacklist),
    RateLimit(Option<RateLimit>),
}

fn parse_setting(key: &str, body: Option<&[u8]>) -> Result<Setting, ApiError> {
    Ok(match (key, body) {
        ("weights", None) => Setting::Weights(BTreeMap::new()),
        ("weights", Some(b)) => {
            let raw: BTreeMap<String, u32> = parse_json(b, Some("weights"))?;
            let mut weights = BTreeMap::new();
            for (k, w) in raw {
                let v = Version::new(&k)
                    .map_err(|e| ApiError::invalid(format!("weights.{k}"), e.to_string()))?;
                weights.insert(v, w);
            }
            Setting::Weights(weights)
        }
        ("blacklist", None) => Setting::Blacklist(Blacklist::default()),
        ("blacklist", Some(b)) => Setting::Blacklist(parse_json(b, Some("blacklist"))?),
        ("rate_limit", None) => Setting::RateLimit(None),
        ("rate_limit", Some(b)) => Setting::RateLimit(Some(parse_json(b, Some("rate_limit"))?)),
        (other, _) => {
            return Err(ApiError::not_found(
                "no_route",
                format!("no setting {other:?}"),
            ));
        }
    })
}

/// `PUT` (`body` given) or `DELETE` (`None`: back to the default) of
/// `/v1/apps/{app}/{weights|blacklist|rate_limit}`: the spec written under the version
/// read; for weights, each named version's deployment node is checked in the same commit,
/// so a version deleted meanwhile refuses the change.
pub async fn put_setting<S: Store>(
    api: &Api<S>,
    app: &AppId,
    key: &str,
    body: Option<&[u8]>,
) -> Result<Response<ApiBody>, ApiError> {
    let setting = parse_setting(key, body)?;
    let setting = &setting;
    let store = api.store();
    let spec = transact(store, || async move {
        let node = read_spec(store, app, api.cipher()).await?;
        let versions = deployed_versions(store, app).await?;
        if node.version.is_none() && versions.is_empty() {
            return Err(ApiError::no_app(app.as_str()));
        }
        let mut spec = node.spec.clone();
        let mut ops = Vec::new();
        match setting {
            Setting::Weights(w) => {
                for v in w.keys() {
                    let path = deployment_path(app, v);
                    let Some(d) = store.get(&path).await? else {
                        return Err(ApiError::invalid(
                            format!("weights.{v}"),
                            format!(
                                "app {app:?} has no version {v:?} (deployed: {})",
                                list(&versions)
                            ),
                        ));
                    };
                    ops.push(Op::Check {
                        path,
                        version: d.version,
                    });
                }
                spec.weights = w.clone();
            }
            Setting::Blacklist(b) => spec.blacklist = b.clone(),
            Setting::RateLimit(r) => spec.rate_limit = *r,
        }
        validate_spec(&spec)?;
        if spec == node.spec && node.version.is_some() {
            return Ok((Vec::new(), spec));
        }
        ops.push(node.write(app, &spec, api.cipher())?);
        Ok((ops, spec))
    })
    .await?;
    let value = match key {
        "weights" => serde_json::to_value(&spec.weights),
        "blacklist" => serde_json::to_value(&spec.blacklist),
        _ => serde_json::to_value(spec.rate_limit),
    }
    .unwrap_or_default();
    let mut answer = serde_json::Map::new();
    answer.insert("app".into(), app.as_str().into());
    answer.insert(key.to_owned(), value);
    Ok(json(StatusCode::OK, &answer))
}

fn list(versions: &[Version]) -> String {
    if versions.is_empty() {
        return "none".into();
    }
    versions
        .iter()
        .map(Version::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn domain_id(raw: &str) -> Result<Domain, ApiError> {
    Domain::new(raw).map_err(|e| ApiError::invalid("domain", e.to_string()))
}

/// `PUT /v1/apps/{app}/domains/{domain}`: creates the claim. Claiming a domain the app
/// holds is fine (200); one another app holds is 409 `domain_taken`.
pub async fn claim_domain<S: Store>(
    api: &Api<S>,
    app: &AppId,
    raw: &str,
) -> Result<Response<ApiBody>, ApiError> {
    let domain = domain_id(raw)?;
    let store = api.store();
    super::apps::require(store, app).await?;
    let path = domain_path(&domain);
    let domain_ref = &domain;
    let created = transact(store, || {
        let path = path.clone();
        async move {
            match store.get(&path).await? {
                Some(n) if n.data == app.as_str().as_bytes() => Ok((Vec::new(), false)),
                Some(_) => Err(ApiError::conflict(
                    "domain_taken",
                    format!("{domain_ref} is claimed by another app"),
                )),
                None => Ok((
                    vec![Op::Create {
                        path,
                        data: app.as_str().as_bytes().to_vec(),
                    }],
                    true,
                )),
            }
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
        &serde_json::json!({"app": app, "domain": domain, "claimed": true, "created": created}),
    ))
}

/// `DELETE /v1/apps/{app}/domains/{domain}`: releases the claim (under its version), takes
/// the domain out of the app's spec and deletes the app's certificate for it, in one commit.
pub async fn release_domain<S: Store>(
    api: &Api<S>,
    app: &AppId,
    raw: &str,
) -> Result<Response<ApiBody>, ApiError> {
    let domain = domain_id(raw)?;
    let store = api.store();
    super::apps::require(store, app).await?;
    let path = domain_path(&domain);
    let domain_ref = &domain;
    transact(store, || {
        let path = path.clone();
        async move {
            let claim = store.get(&path).await?;
            let Some(claim) = claim.filter(|n| n.data == app.as_str().as_bytes()) else {
                return Err(ApiError::not_found(
                    "domain_not_found",
                    format!("app {app:?} holds no claim on {domain_ref}"),
                ));
            };
            let mut ops = vec![Op::Delete {
                path,
                version: Some(claim.version),
            }];
            ops.extend(cert_delete(store, domain_ref, app).await?);
            let node = read_spec(store, app, api.cipher()).await?;
            if node.spec.domains.contains(domain_ref) {
                let mut spec = node.spec.clone();
                spec.domains.retain(|d| d != domain_ref);
                ops.push(node.write(app, &spec, api.cipher())?);
            }
            Ok((ops, ()))
        }
    })
    .await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"app": app, "domain": domain, "claimed": false}),
    ))
}
