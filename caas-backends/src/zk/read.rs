//! Reads for the discovery: children and data of many nodes with every request in flight at
//! once (the client sends each request when the call is made, so issuing them all before
//! awaiting any turns N round trips into about one), and the decoding of domain claims.

use caas_core::AppId;
use zookeeper_client::Client;

use super::error::{Result, ZkError};

/// Decodes a domain claim: the owning app id.
pub(crate) fn parse_owner(data: &[u8]) -> std::result::Result<AppId, String> {
    let text = std::str::from_utf8(data).map_err(|_| "owner is not UTF-8".to_owned())?;
    AppId::new(text).map_err(|e| format!("owner: {e}"))
}

/// Children of `path`; a missing node has none.
pub(crate) async fn children(client: &Client, path: &str) -> Result<Vec<String>> {
    match client.list_children(path).await {
        Ok(c) => Ok(c),
        Err(zookeeper_client::Error::NoNode) => Ok(Vec::new()),
        Err(e) => Err(ZkError::op("list_children", path, e)),
    }
}

/// One node's read result: `Ok(None)` when it vanished meanwhile.
pub(crate) type Read<T> = std::result::Result<T, zookeeper_client::Error>;

/// Lists the children of many nodes with all requests in flight at once.
pub(crate) async fn pipelined_children<K>(
    client: &Client,
    nodes: Vec<(K, String)>,
) -> Vec<((K, String), Read<Vec<String>>)> {
    let futs: Vec<_> = nodes
        .into_iter()
        .map(|(k, path)| {
            let fut = client.list_children(&path);
            ((k, path), fut)
        })
        .collect();
    let mut out = Vec::with_capacity(futs.len());
    for (node, fut) in futs {
        out.push((node, fut.await));
    }
    out
}

/// Reads the data of many nodes with all requests in flight at once.
pub(crate) async fn pipelined_data<K>(
    client: &Client,
    nodes: Vec<(K, String)>,
) -> Vec<((K, String), Read<Vec<u8>>)> {
    let futs: Vec<_> = nodes
        .into_iter()
        .map(|(k, path)| {
            let fut = client.get_data(&path);
            ((k, path), fut)
        })
        .collect();
    let mut out = Vec::with_capacity(futs.len());
    for (node, fut) in futs {
        out.push((node, fut.await.map(|(d, _)| d)));
    }
    out
}
