//! The agent's helper tasks. They never touch the agent's state: each reports to the
//! reconcile loop over a channel.
//!
//! - [`watch_assignments`]: a persistent recursive watch on `/hosts/{hostId}/assignments`,
//!   set again after a reconnect or a new session; every event wakes the loop.
//! - [`docker_events`]: the Engine's die/oom events of this host's containers, re-subscribed
//!   from the last event's time when the stream breaks.
//! - [`start_container`] and [`remove_container`]: the slow Docker calls of one instance.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};
use zookeeper_client::{AddWatchMode, EventType, SessionState};

use super::stats::AgentStats;
use crate::docker::{ContainerEvent, ContainerInfo, DockerError, DockerRuntime, RunSpec};
use crate::zk::ZkSession;
use crate::zk::hosts::assignments_path;

/// Wakes `changed` on every change under the host's assignments (and once per new watch, so
/// what changed while no watch was set is read). Ends when the session is closed.
pub(super) async fn watch_assignments(
    session: ZkSession,
    host: String,
    changed: Arc<Notify>,
    stats: Arc<AgentStats>,
) {
    let path = assignments_path(&host);
    loop {
        let Ok(client) = session.client() else {
            return; // closed: the agent is stopping
        };
        match client.watch(&path, AddWatchMode::PersistentRecursive).await {
            Ok(mut watcher) => {
                changed.notify_one();
                loop {
                    let event = watcher.changed().await;
                    if event.event_type == EventType::Session {
                        // After a reconnect the watch is set again: a persistent watch does
                        // not survive a server restart (ZooKeeper 3.8).
                        if event.session_state.is_terminated()
                            || event.session_state == SessionState::SyncConnected
                        {
                            break;
                        }
                        continue;
                    }
                    changed.notify_one();
                }
            }
            Err(e) => {
                AgentStats::bump(&stats.errors);
                tracing::warn!(%host, %path, error = %e, "cannot watch the assignments; retrying (the periodic resync still runs)");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Forwards die/oom events of the host's containers. Ends when the receiver is gone.
pub(super) async fn docker_events(
    docker: DockerRuntime,
    host: String,
    tx: mpsc::Sender<ContainerEvent>,
    stats: Arc<AgentStats>,
) {
    let mut since = SystemTime::now();
    loop {
        let mut events = Box::pin(docker.events_since(Some(&host), since));
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => {
                    if let Ok(nanos) = u64::try_from(event.time_nano)
                        && nanos > 0
                    {
                        since = UNIX_EPOCH + Duration::from_nanos(nanos);
                    }
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    AgentStats::bump(&stats.errors);
                    tracing::warn!(%host, error = %e, "docker event stream broke; re-subscribing");
                    break;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Removes `old` (the failed container, if any), pulls the image when it is not present,
/// and runs `spec`. A container of the same name left behind (a crash between create and
/// bookkeeping) is removed and the run tried once more.
pub(super) async fn start_container(
    docker: DockerRuntime,
    auth: Option<crate::docker::RegistryAuth>,
    spec: RunSpec,
    old: Option<String>,
) -> Result<ContainerInfo, DockerError> {
    if let Some(old) = old {
        match docker.remove(&old).await {
            Ok(()) | Err(DockerError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if docker.client().inspect_image(&spec.image).await.is_err() {
        docker.pull(&spec.image, auth.as_ref()).await?;
    }
    match docker.run(&spec).await {
        Err(DockerError::AlreadyExists { name, .. }) => {
            tracing::warn!(container = %name, "a container of this name is in the way; replacing it");
            match docker.remove(&name).await {
                Ok(()) | Err(DockerError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            docker.run(&spec).await
        }
        other => other,
    }
}

/// Stops `id` (SIGTERM, SIGKILL after `grace`; zero kills at once) and removes it.
pub(super) async fn remove_container(
    docker: DockerRuntime,
    id: String,
    grace: Duration,
) -> Result<(), DockerError> {
    if !grace.is_zero() {
        match docker.stop(&id, grace).await {
            Ok(()) | Err(DockerError::NotFound { .. }) => {}
            Err(e) => tracing::warn!(container = %id, error = %e, "stop failed; removing by force"),
        }
    }
    match docker.remove(&id).await {
        Ok(()) | Err(DockerError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
