//! Reads for the discovery: children and data of many nodes, batched into `MultiRead`
//! requests with every batch in flight at once (the client sends each request when the call
//! is made, so issuing them all before awaiting any turns N round trips into about one), and
//! the decoding of domain claims.

use caas_core::AppId;
use zookeeper_client::{Client, MultiReadResult, MultiReader};

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

/// Reads per `MultiRead` request (ZooKeeper 3.6 and later, as the persistent watch the
/// discovery sets). ZooKeeper's own cost of a read is mostly per request (the packet, its
/// processor pipeline), so batching the reads of a full read cuts the CPU a reconnect costs
/// ZooKeeper, on a machine the gateway may share. Small enough that a batch of large app
/// specs stays a modest response.
const BATCH: usize = 64;

/// Lists the children of many nodes, in `MultiRead` batches with all batches in flight at once.
pub(crate) async fn pipelined_children<K>(
    client: &Client,
    nodes: Vec<(K, String)>,
) -> Vec<((K, String), Read<Vec<String>>)> {
    let add = |r: &mut MultiReader<'_>, path: &str| r.add_get_children(path);
    batched(client, nodes, add, |r| match r {
        MultiReadResult::Children { children } => Ok(children),
        other => Err(unexpected(other)),
    })
    .await
}

/// Reads the data of many nodes, in `MultiRead` batches with all batches in flight at once.
pub(crate) async fn pipelined_data<K>(
    client: &Client,
    nodes: Vec<(K, String)>,
) -> Vec<((K, String), Read<Vec<u8>>)> {
    let add = |r: &mut MultiReader<'_>, path: &str| r.add_get_data(path);
    batched(client, nodes, add, |r| match r {
        MultiReadResult::Data { data, .. } => Ok(data),
        other => Err(unexpected(other)),
    })
    .await
}

fn unexpected(result: MultiReadResult) -> zookeeper_client::Error {
    match result {
        MultiReadResult::Error { err } => err,
        other => zookeeper_client::Error::UnexpectedError(format!(
            "multi read answered with the wrong kind of result: {other:?}"
        )),
    }
}

/// The reads `add` puts in a batch for each of `nodes`, `BATCH` to a `MultiRead`, each node's
/// result taken out of its batch's answer by `take` (a node's own error, such as `NoNode`,
/// comes back as its result; a failed batch fails each of its nodes).
async fn batched<K, T>(
    client: &Client,
    nodes: Vec<(K, String)>,
    add: impl Fn(&mut MultiReader<'_>, &str) -> Read<()>,
    take: impl Fn(MultiReadResult) -> Read<T>,
) -> Vec<((K, String), Read<T>)> {
    // Every batch is sent when committed: issue them all, then await them in order.
    let mut batches = Vec::new();
    let mut nodes = nodes.into_iter().peekable();
    while nodes.peek().is_some() {
        let batch: Vec<(K, String)> = nodes.by_ref().take(BATCH).collect();
        let mut reader = client.new_multi_reader();
        let added = batch
            .iter()
            .try_for_each(|(_, path)| add(&mut reader, path));
        let sent = added.map(|()| reader.commit());
        batches.push((batch, sent));
    }
    let mut out = Vec::new();
    for (batch, sent) in batches {
        let answer = match sent {
            Ok(fut) => fut.await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(results) if results.len() == batch.len() => {
                out.extend(batch.into_iter().zip(results.into_iter().map(&take)));
            }
            Ok(results) => {
                let e = zookeeper_client::Error::UnexpectedError(format!(
                    "multi read answered {} results for {} reads",
                    results.len(),
                    batch.len()
                ));
                out.extend(batch.into_iter().map(|node| (node, Err(e.clone()))));
            }
            Err(e) => out.extend(batch.into_iter().map(|node| (node, Err(e.clone())))),
        }
    }
    out
}
