//! `GET /v1/apps/{app}/stats`: the app's traffic statistics summed over every gateway.
//!
//! Gateways announce themselves with an ephemeral node `/gateways/{id}` holding JSON with
//! their admin address, `{"admin": "HOST:PORT", ...}`. The API asks each one for
//! `GET http://{admin}/stats/{app}` (within [`ApiConfig::stats_timeout`](super::ApiConfig))
//! and adds the answers up: numbers are summed leaf by leaf, objects merged key by key,
//! arrays of the same length summed element-wise; anything else keeps the first value seen.
//! A gateway that does not answer, or answers with something else than JSON, is listed in
//! `missing` (with why in `errors`); a `404` means it has seen no traffic for the app yet.

use std::collections::BTreeMap;

use caas_core::AppId;
use futures_util::future::join_all;
use http::{Response, StatusCode};
use serde_json::{Map, Number, Value};

use super::Api;
use super::error::ApiError;
use super::http::{ApiBody, get_bytes, json};
use crate::store::Store;
use crate::zk::gateways::GatewayInfo;
use crate::zk::layout::GATEWAYS;

/// `GET /v1/apps/{app}/stats`.
pub async fn get<S: Store>(api: &Api<S>, app: &AppId) -> Result<Response<ApiBody>, ApiError> {
    let store = api.store();
    super::apps::require(store, app).await?;
    let ids = store.children(GATEWAYS).await?;
    let paths: Vec<String> = ids.iter().map(|g| format!("{GATEWAYS}/{g}")).collect();
    let nodes = join_all(paths.iter().map(|p| store.get(p))).await;
    let timeout = api.config().stats_timeout;
    let path = format!("/stats/{app}");
    let asks = ids.iter().zip(nodes).map(|(id, node)| {
        let path = &path;
        async move {
            let node = match node {
                Ok(Some(n)) => n,
                Ok(None) => return (id, Err("gone".to_owned())),
                Err(e) => return (id, Err(e.to_string())),
            };
            let admin = match serde_json::from_slice::<GatewayInfo>(&node.data) {
                Ok(GatewayInfo {
                    admin: Some(admin), ..
                }) => admin.to_string(),
                Ok(_) => return (id, Err("runs no admin listener".to_owned())),
                Err(e) => return (id, Err(format!("bad announcement: {e}"))),
            };
            let answer = match get_bytes(&admin, path, timeout).await {
                Ok((StatusCode::NOT_FOUND, _)) => Ok(None),
                Ok((s, body)) if s.is_success() => serde_json::from_slice::<Value>(&body)
                    .map(Some)
                    .map_err(|e| format!("{admin}: not JSON: {e}")),
                Ok((s, _)) => Err(format!("{admin}: answered {s}")),
                Err(e) => Err(format!("{admin}: {e}")),
            };
            (id, answer)
        }
    });
    let mut total = Value::Object(Map::new());
    let mut answered = 0u64;
    let mut missing = Vec::new();
    let mut errors = BTreeMap::new();
    for (id, answer) in join_all(asks).await {
        match answer {
            Ok(Some(v)) => {
                answered += 1;
                add(&mut total, v);
            }
            Ok(None) => answered += 1,
            Err(e) => {
                tracing::warn!(gateway = %id, error = %e, "gateway stats missing");
                missing.push(id.clone());
                errors.insert(id.clone(), e);
            }
        }
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "app": app, "gateways": answered, "missing": missing, "errors": errors, "stats": total,
        }),
    ))
}

/// Adds `more` into `into` (see the module docs).
pub fn add(into: &mut Value, more: Value) {
    match (into, more) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => add(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (Value::Number(a), Value::Number(b)) => *a = sum(a, &b),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (x, y) in a.iter_mut().zip(b) {
                add(x, y);
            }
        }
        _ => {}
    }
}

fn sum(a: &Number, b: &Number) -> Number {
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64())
        && let Some(s) = x.checked_add(y)
    {
        return s.into();
    }
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64())
        && let Some(s) = x.checked_add(y)
    {
        return s.into();
    }
    let f = a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0);
    Number::from_f64(f).unwrap_or_else(|| a.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_leaves_are_summed() {
        let mut t = serde_json::json!({});
        add(
            &mut t,
            serde_json::json!({"requests": 3, "status": {"2xx": 2, "5xx": 1}, "latency": [1, 2], "name": "a", "rate": 0.5}),
        );
        add(
            &mut t,
            serde_json::json!({"requests": 4, "status": {"2xx": 4, "4xx": 1}, "latency": [10, 20], "name": "b", "rate": 0.25, "neg": -1}),
        );
        assert_eq!(
            t,
            serde_json::json!({"requests": 7, "status": {"2xx": 6, "5xx": 1, "4xx": 1},
                "latency": [11, 22], "name": "a", "rate": 0.75, "neg": -1})
        );
    }
}
