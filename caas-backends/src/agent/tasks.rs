//! The agent's helper tasks. They never touch the agent's state: each reports to the
//! reconcile loop over a channel.
//!
//! - [`watch_assignments`]: the store's watch on `/hosts/{hostId}/assignments`; every event
//!   wakes the loop.
//! - [`docker_events`]: the Engine's die/oom events of this host's containers, re-subscribed
//!   from the last event's time when the stream breaks.
//! - [`start_unit`] and [`remove_containers`]: the slow Docker calls of one instance (its
//!   main container and its sidecars, made and removed together).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};

use super::stats::AgentStats;
use crate::docker::{
    ContainerEvent, ContainerInfo, DockerError, DockerRuntime, RegistryAuth, RunSpec, SidecarSpec,
};
use crate::store::{AnyStore, Store};
use crate::zk::hosts::assignments_path;

/// Wakes `changed` on every change under the host's assignments, and on every resync of
/// the watch (set, set again after a reconnect or a new session or lease), so what changed
/// while no watch was set is read. Ends when the store is closed.
pub(super) async fn watch_assignments(store: AnyStore, host: String, changed: Arc<Notify>) {
    let mut watch = store.watch(&assignments_path(&host));
    while watch.next().await.is_some() {
        changed.notify_one();
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

/// A unit that runs: its main container and its sidecars by name.
#[derive(Debug)]
pub(super) struct UnitStarted {
    pub(super) main: ContainerInfo,
    pub(super) sidecars: BTreeMap<String, String>,
}

/// Why a unit could not be started; the text is what the instance's status shows.
#[derive(Debug, thiserror::Error)]
pub(super) enum StartFailure {
    /// The containers of the previous attempt could not be removed.
    #[error("removing the old container failed: {0}")]
    Cleanup(DockerError),
    /// An image (the main one or a sidecar's) could not be pulled.
    #[error("image pull failed: {0}")]
    Pull(DockerError),
    /// The main container could not be created or started.
    #[error("container start failed: {0}")]
    Run(DockerError),
    /// A sidecar could not be created or started (the main container was removed again).
    #[error("sidecar {name} start failed: {source}")]
    Sidecar {
        /// The sidecar's name.
        name: String,
        /// What Docker said.
        source: DockerError,
    },
}

/// Removes `old` (the containers of a failed unit, if any), pulls every image that is not
/// present, runs the main container from `spec`, then each sidecar of `sidecars` in its
/// network namespace. A sidecar that fails takes the whole unit down again: a unit runs
/// complete or not at all. A container of the same name left behind (a crash between create
/// and bookkeeping) is removed and the run tried once more.
pub(super) async fn start_unit(
    docker: DockerRuntime,
    auth: Option<RegistryAuth>,
    spec: RunSpec,
    sidecars: Vec<SidecarSpec>,
    old: Vec<String>,
) -> Result<UnitStarted, StartFailure> {
    for c in old {
        match docker.remove(&c).await {
            Ok(()) | Err(DockerError::NotFound { .. }) => {}
            Err(e) => return Err(StartFailure::Cleanup(e)),
        }
    }
    let images: BTreeSet<&str> = std::iter::once(spec.image.as_str())
        .chain(sidecars.iter().map(|s| s.image.as_str()))
        .collect();
    for image in images {
        if docker.client().inspect_image(image).await.is_err() {
            docker
                .pull(image, auth.as_ref())
                .await
                .map_err(StartFailure::Pull)?;
        }
    }
    let main = replacing(&docker, &spec.container_name(), || docker.run(&spec))
        .await
        .map_err(StartFailure::Run)?;
    let mut started = BTreeMap::new();
    for mut sidecar in sidecars {
        sidecar.network_container = main.id.clone();
        let name = sidecar.name.clone();
        match replacing(&docker, &sidecar.container_name(), || {
            docker.run_sidecar(&sidecar)
        })
        .await
        {
            Ok(info) => {
                started.insert(name, info.id);
            }
            Err(source) => {
                let all = started.into_values().chain(std::iter::once(main.id));
                for c in all {
                    if let Err(e) = docker.remove(&c).await {
                        tracing::warn!(container = %c, error = %e, "cannot remove a container of a unit that failed to start; the next reconcile removes it");
                    }
                }
                return Err(StartFailure::Sidecar { name, source });
            }
        }
    }
    Ok(UnitStarted {
        main,
        sidecars: started,
    })
}

/// Runs `run`; when a container named `name` is in the way, removes it and runs once more.
async fn replacing<F, Fut>(
    docker: &DockerRuntime,
    name: &str,
    run: F,
) -> Result<ContainerInfo, DockerError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<ContainerInfo, DockerError>>,
{
    match run().await {
        Err(DockerError::AlreadyExists { .. }) => {
            tracing::warn!(container = %name, "a container of this name is in the way; replacing it");
            match docker.remove(name).await {
                Ok(()) | Err(DockerError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            run().await
        }
        other => other,
    }
}

/// How containers are stopped before their removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stop {
    /// Left running this long first (a deregistered instance: gateways stop sending to it,
    /// requests they already sent finish).
    pub(super) drain: Duration,
    /// SIGTERM, then SIGKILL after this long; zero kills at once.
    pub(super) grace: Duration,
}

impl Stop {
    /// Killed and removed at once.
    pub(super) const NOW: Stop = Stop {
        drain: Duration::ZERO,
        grace: Duration::ZERO,
    };
}

/// Stops every container of `ids` as `stop` says and removes them, in order (sidecars
/// before their main container). All are tried; the first error is returned.
pub(super) async fn remove_containers(
    docker: DockerRuntime,
    ids: Vec<String>,
    stop: Stop,
) -> Result<(), DockerError> {
    if !stop.drain.is_zero() && !ids.is_empty() {
        tokio::time::sleep(stop.drain).await;
    }
    let mut first = Ok(());
    for id in ids {
        if let Err(e) = remove_container(&docker, &id, stop.grace).await
            && first.is_ok()
        {
            first = Err(e);
        }
    }
    first
}

async fn remove_container(
    docker: &DockerRuntime,
    id: &str,
    grace: Duration,
) -> Result<(), DockerError> {
    if !grace.is_zero() {
        match docker.stop(id, grace).await {
            Ok(()) | Err(DockerError::NotFound { .. }) => {}
            Err(e) => tracing::warn!(container = %id, error = %e, "stop failed; removing by force"),
        }
    }
    match docker.remove(id).await {
        Ok(()) | Err(DockerError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
