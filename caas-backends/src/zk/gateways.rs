//! Gateway announcements: each store-fed gateway keeps the ephemeral node
//! `/gateways/{gatewayId}` holding where it can be reached (its admin listener, for
//! `/stats/{appId}` and `/metrics`, and its proxy listeners), so the control plane finds
//! every live gateway. The node lives with the gateway's session or lease: it vanishes when
//! the gateway stops or dies, and the store re-creates it after an expiry.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::hosts::validate_host_id;
use super::layout::{GATEWAYS, gateway_path};
use crate::store::{Store, StoreError, claim_ephemeral};

/// What a gateway announces at `/gateways/{gatewayId}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayInfo {
    /// The admin listener (`/metrics`, `/routes`, `/stats/{appId}`), if it runs one.
    pub admin: Option<SocketAddr>,
    /// The plain HTTP listener.
    pub listen: SocketAddr,
    /// The HTTPS listener, if any.
    pub listen_tls: Option<SocketAddr>,
}

/// Checks a gateway id: the rules of a host id (1-63 characters of `[a-z0-9-]`, not
/// starting or ending with `-`).
pub fn validate_gateway_id(id: &str) -> std::result::Result<(), String> {
    validate_host_id(id).map_err(|e| e.replacen("host id", "gateway id", 1))
}

/// A valid gateway id made of anything (a host name, an address): lower case, every run of
/// other characters than `[a-z0-9]` one `-`, at most 63 characters; `gateway` when nothing
/// is left.
pub fn sanitize_gateway_id(raw: &str) -> String {
    let mut id = String::with_capacity(raw.len().min(63));
    for c in raw.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            id.push(c);
        } else if !id.is_empty() && !id.ends_with('-') {
            id.push('-');
        }
        if id.len() == 63 {
            break;
        }
    }
    let id = id.trim_end_matches('-');
    if id.is_empty() {
        "gateway".to_owned()
    } else {
        id.to_owned()
    }
}

/// Creates `/gateways/{id}` (ephemeral, re-created after an expiry). A node left by another
/// session or lease (this gateway's previous run, not expired yet) is replaced, with a
/// warning: two live gateways must not share an id.
pub async fn announce_gateway<S: Store>(
    store: &S,
    id: &str,
    info: &GatewayInfo,
) -> Result<(), StoreError> {
    let path = gateway_path(id);
    let invalid = |reason: String| StoreError::Invalid {
        op: "announce",
        path: path.clone(),
        reason,
    };
    validate_gateway_id(id).map_err(invalid)?;
    let data = serde_json::to_vec(info).map_err(|e| invalid(e.to_string()))?;
    if claim_ephemeral(store, &path, &data).await? {
        tracing::warn!(%path, "replaced a gateway announcement of another session (a previous run with this id?)");
    }
    Ok(())
}

/// Deletes this gateway's announcement (it also goes with the session or lease).
pub async fn withdraw_gateway<S: Store>(store: &S, id: &str) -> Result<(), StoreError> {
    store.delete_ephemeral(&gateway_path(id)).await
}

/// Every announced gateway by id. A node that does not parse is skipped with a warning.
pub async fn list_gateways<S: Store>(
    store: &S,
) -> Result<BTreeMap<String, GatewayInfo>, StoreError> {
    let mut out = BTreeMap::new();
    for (id, node) in store.list(GATEWAYS).await? {
        match serde_json::from_slice(&node.data) {
            Ok(info) => {
                out.insert(id, info);
            }
            Err(e) => {
                let path = gateway_path(&id);
                tracing::warn!(%path, "skipping a gateway node that does not parse: {e}");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sanitized_into_valid_ones() {
        for (raw, id) in [
            (
                "Web-01.example.com-127.0.0.1:9901",
                "web-01-example-com-127-0-0-1-9901",
            ),
            ("--a__b--", "a-b"),
            ("", "gateway"),
            ("::", "gateway"),
        ] {
            assert_eq!(sanitize_gateway_id(raw), id);
            assert!(validate_gateway_id(&sanitize_gateway_id(raw)).is_ok());
        }
        let long = sanitize_gateway_id(&"ab.".repeat(40));
        assert!(
            long.len() <= 63 && validate_gateway_id(&long).is_ok(),
            "{long}"
        );
        assert!(
            validate_gateway_id("Bad")
                .unwrap_err()
                .contains("gateway id")
        );
    }
}
