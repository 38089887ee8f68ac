//! Gateway announcements: each ZooKeeper-fed gateway keeps the EPHEMERAL node
//! `/gateways/{gatewayId}` holding where it can be reached (its admin listener, for
//! `/stats/{appId}` and `/metrics`, and its proxy listeners), so the control plane finds
//! every live gateway. The node lives with the gateway's session: it vanishes when the
//! gateway stops or dies, and [`ZkSession`] re-creates it in a new session after an expiry.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::error::{Result, ZkError};
use super::hosts::validate_host_id;
use super::layout::{GATEWAYS, gateway_path};
use super::read::children;
use super::session::ZkSession;

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

/// Creates `/gateways/{id}` (EPHEMERAL, re-created after a session expiry). A node left by
/// another session (this gateway's previous run, whose session has not expired yet) is
/// replaced, with a warning: two live gateways must not share an id.
pub async fn announce_gateway(session: &ZkSession, id: &str, info: &GatewayInfo) -> Result<()> {
    validate_gateway_id(id).map_err(ZkError::Config)?;
    let path = gateway_path(id);
    let data = serde_json::to_vec(info).map_err(|e| ZkError::Config(e.to_string()))?;
    match session.create_ephemeral(&path, &data).await {
        Err(ZkError::Op {
            source: zookeeper_client::Error::NodeExists,
            ..
        }) if !session.ephemerals().contains(&path) => {
            let client = session.client()?;
            match client.check_stat(&path).await {
                Ok(Some(stat)) => {
                    tracing::warn!(%path, owner = stat.ephemeral_owner, "replacing a gateway announcement of another session (a previous run with this id?)");
                    match client.delete(&path, Some(stat.version)).await {
                        Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                        Err(e) => return Err(ZkError::op("delete", &path, e)),
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(ZkError::op("stat", &path, e)),
            }
            session.create_ephemeral(&path, &data).await
        }
        other => other,
    }
}

/// Deletes this gateway's announcement (it also goes with the session).
pub async fn withdraw_gateway(session: &ZkSession, id: &str) -> Result<()> {
    let path = gateway_path(id);
    session.forget_ephemeral(&path);
    match session.client()?.delete(&path, None).await {
        Ok(()) | Err(zookeeper_client::Error::NoNode) => Ok(()),
        Err(e) => Err(ZkError::op("delete", &path, e)),
    }
}

/// Every announced gateway by id. A node that does not parse is skipped with a warning.
pub async fn list_gateways(session: &ZkSession) -> Result<BTreeMap<String, GatewayInfo>> {
    let client = session.client()?;
    let mut out = BTreeMap::new();
    for id in children(&client, GATEWAYS).await? {
        let path = gateway_path(&id);
        match client.get_data(&path).await {
            Ok((data, _)) => match serde_json::from_slice(&data) {
                Ok(info) => {
                    out.insert(id, info);
                }
                Err(e) => tracing::warn!(%path, "skipping a gateway node that does not parse: {e}"),
            },
            Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => return Err(ZkError::op("get", &path, e)),
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
