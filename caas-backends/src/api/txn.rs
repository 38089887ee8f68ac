//! Every change the API makes is one [`Store::commit`]: read, decide (and validate), then
//! commit the ops under the versions read; a conflict means someone changed a node in
//! between, so read and decide again. Nothing is ever half-written.
//!
//! Also the app spec node (`/apps/{app}`): read (opened when values are encrypted) and the
//! op that writes it back under the version read.

use std::future::Future;
use std::time::Duration;

use caas_core::{AppId, AppSpec};
use http::StatusCode;

use super::error::ApiError;
use crate::store::{Op, Store, StoreError};
use crate::zk::crypto::{self, ValueCipher};
use crate::zk::layout::app_path;

/// Attempts before a change that keeps conflicting gives up (409 `conflict`).
const ATTEMPTS: u32 = 10;

/// Runs `decide` (which reads and returns the ops and the answer) and commits the ops,
/// again on a conflict. An error from `decide` commits nothing.
pub async fn transact<S, T, F, Fut>(store: &S, mut decide: F) -> Result<T, ApiError>
where
    S: Store,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(Vec<Op>, T), ApiError>>,
{
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        let (ops, answer) = decide().await?;
        if ops.is_empty() {
            return Ok(answer);
        }
        match store.commit(ops).await {
            Ok(_) => return Ok(answer),
            Err(e @ StoreError::Conflict { .. }) => {
                tracing::debug!(error = %e, attempt, "api change conflicted; deciding again");
                last = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 5)).await;
    }
    Err(last.map_or_else(
        || ApiError::conflict("conflict", "the change kept conflicting"),
        ApiError::from,
    ))
}

/// The app's spec node as read: the spec (default when absent) and the node's version.
#[derive(Debug, Clone)]
pub struct SpecNode {
    /// The spec.
    pub spec: AppSpec,
    /// The node's version; `None` when there is no node.
    pub version: Option<i64>,
}

impl SpecNode {
    /// The op writing `spec` back: a `Set` under the version read, or a `Create`.
    pub fn write(
        &self,
        app: &AppId,
        spec: &AppSpec,
        cipher: Option<&ValueCipher>,
    ) -> Result<Op, ApiError> {
        let path = app_path(app);
        let json = serde_json::to_vec(spec).map_err(|e| internal(format!("encode {path}: {e}")))?;
        let data = crypto::seal(cipher, &path, json).map_err(|e| internal(e.to_string()))?;
        Ok(match self.version {
            Some(v) => Op::Set {
                path,
                data,
                version: Some(v),
            },
            None => Op::Create { path, data },
        })
    }

    /// The op deleting the node (under the version read), if there is one.
    pub fn delete(&self, app: &AppId) -> Option<Op> {
        self.version.map(|v| Op::Delete {
            path: app_path(app),
            version: Some(v),
        })
    }
}

/// Reads `/apps/{app}`. A node that does not parse or open is the store's fault (500
/// `store_data_invalid`): the API does not overwrite what it cannot read.
pub async fn read_spec<S: Store>(
    store: &S,
    app: &AppId,
    cipher: Option<&ValueCipher>,
) -> Result<SpecNode, ApiError> {
    let path = app_path(app);
    match store.get(&path).await? {
        None => Ok(SpecNode {
            spec: AppSpec::default(),
            version: None,
        }),
        Some(node) => {
            let spec = crate::zk::apps::parse_app(cipher, &path, node.data).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_data_invalid",
                    format!("{e}; fix or delete the node first"),
                )
            })?;
            Ok(SpecNode {
                spec,
                version: Some(node.version),
            })
        }
    }
}

/// Checks a spec the API is about to write; the message names the key first
/// (`rate_limit: ...`), which becomes the field.
pub fn validate_spec(spec: &AppSpec) -> Result<(), ApiError> {
    spec.validate().map_err(|e| {
        let msg = e.to_string();
        let field = msg.split(':').next().unwrap_or("").trim().to_owned();
        ApiError::invalid(field, msg)
    })
}

fn internal(msg: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
}
