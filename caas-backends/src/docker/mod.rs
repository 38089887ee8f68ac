//! The Docker runtime: users' containers through the Docker Engine API (bollard, unix socket).
//!
//! [`DockerRuntime`] pulls images with registry credentials, runs a container as
//! `-p {hostIp}:{hostPort}:{containerPort} -m {memory} -c {cpuShares}` with `caas.*` labels
//! and `CAAS_*` environment, runs an instance's sidecars in its main container's network
//! namespace (`--network container:{main}`, as the containers of a Kubernetes pod: they talk
//! over localhost), stops, removes, inspects and lists the containers of one host, and
//! streams their start/die/oom events. Docker's own restart policy stays off: restarts are
//! the host agent's decision (after deregistration, with backoff and a kill-rate limit).
//!
//! Every failure is one [`DockerError`] variant with context. Nothing is left half-made: if a
//! container is created but cannot start (a host port taken, say), it is removed before the
//! error is returned; a failed clean-up is logged and counted
//! ([`DockerRuntime::cleanup_failures`]).

mod error;
mod events;
mod spec;
mod time;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use bollard::{API_DEFAULT_VERSION, Docker};
use futures_util::{Stream, StreamExt, TryStreamExt};

pub use error::DockerError;
pub use events::{ContainerEvent, EventKind};
pub use spec::{
    ContainerInfo, ContainerState, LABEL_APP, LABEL_CONTAINER_PORT, LABEL_HOST, LABEL_INSTANCE,
    LABEL_PORT, LABEL_SIDECAR, LABEL_VERSION, ManagedContainer, RegistryAuth, RunSpec, SidecarSpec,
};

use error::{classify_container, classify_image, is_daemon_unreachable, is_port_taken};

/// The default Engine socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Seconds bollard waits for the Engine to answer one request (not for a whole stream).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// A pull that has not finished after this long is reported as a registry problem.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// A handle on the Docker Engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    endpoint: String,
    cleanup_failures: Arc<AtomicU64>,
}

impl DockerRuntime {
    /// Connects to the Engine at `socket` (a path, with or without `unix://`) and negotiates
    /// the API version (bollard speaks 1.53; Engine 20.10 speaks 1.41).
    pub async fn connect(socket: &str) -> Result<Self, DockerError> {
        let unreachable = |e: bollard::errors::Error| DockerError::DaemonUnreachable {
            endpoint: socket.to_owned(),
            op: "connect",
            message: e.to_string(),
        };
        let docker = Docker::connect_with_unix(socket, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(unreachable)?
            .negotiate_version()
            .await
            .map_err(|e| {
                if is_daemon_unreachable(&e) {
                    unreachable(e)
                } else {
                    DockerError::Other {
                        op: "negotiate API version",
                        target: socket.to_owned(),
                        source: e,
                    }
                }
            })?;
        Ok(Self {
            docker,
            endpoint: socket.to_owned(),
            cleanup_failures: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Connects to `$DOCKER_HOST` if it is a `unix://` URL, else to [`DEFAULT_SOCKET`].
    pub async fn connect_default() -> Result<Self, DockerError> {
        match std::env::var("DOCKER_HOST") {
            Ok(h) if h.starts_with("unix://") => Self::connect(&h).await,
            _ => Self::connect(DEFAULT_SOCKET).await,
        }
    }

    /// The underlying bollard client, for calls this type does not wrap.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// How many times removing a half-made container failed (each one is also logged).
    pub fn cleanup_failures(&self) -> u64 {
        self.cleanup_failures.load(Ordering::Relaxed)
    }

    /// Checks the daemon answers.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.docker
            .ping()
            .await
            .map(drop)
            .map_err(|e| DockerError::DaemonUnreachable {
                endpoint: self.endpoint.clone(),
                op: "ping",
                message: e.to_string(),
            })
    }

    /// Pulls `image` (`{registry}/{repo}:{tag}`; `latest` if no tag) with optional registry
    /// credentials, and waits for the pull to finish.
    pub async fn pull(&self, image: &str, auth: Option<&RegistryAuth>) -> Result<(), DockerError> {
        let (repo, tag) = split_tag(image);
        let options = CreateImageOptions {
            from_image: Some(repo.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let creds = auth.map(|a| DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            serveraddress: Some(if a.server.is_empty() {
                registry_of(image).to_owned()
            } else {
                a.server.clone()
            }),
            ..Default::default()
        });
        let pull = self
            .docker
            .create_image(Some(options), None, creds)
            .try_for_each(|_progress| async { Ok(()) });
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classify_image("pull", &self.endpoint, image, e)),
            Err(_) => Err(DockerError::RegistryUnreachable {
                image: image.to_owned(),
                message: format!("pull did not finish within {PULL_TIMEOUT:?}"),
            }),
        }
    }

    /// Creates and starts a container; on any failure after create, removes it again.
    pub async fn run(&self, spec: &RunSpec) -> Result<ContainerInfo, DockerError> {
        let name = spec.container_name();
        let port_key = format!("{}/tcp", spec.container_port);
        let memory = i64::try_from(spec.memory.bytes()).unwrap_or(i64::MAX);
        let mut env = vec![
            format!("CAAS_APP={}", spec.app),
            format!("CAAS_VERSION={}", spec.version),
            format!("CAAS_INSTANCE={}", spec.instance),
        ];
        env.extend(spec.env.iter().cloned());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(env),
            labels: Some(spec.labels()),
            exposed_ports: Some(vec![port_key.clone()]),
            host_config: Some(HostConfig {
                port_bindings: Some(HashMap::from([(
                    port_key,
                    Some(vec![PortBinding {
                        host_ip: Some(spec.host_ip.to_string()),
                        host_port: Some(spec.host_port.to_string()),
                    }]),
                )])),
                memory: Some(memory),
                // Equal to memory: no swap on top of the limit (Docker's default doubles it).
                memory_swap: Some(memory),
                cpu_shares: Some(i64::from(spec.cpu_shares)),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_and_start(&name, &spec.image, body, |e| {
            is_port_taken(e).then(|| DockerError::PortTaken {
                host_ip: spec.host_ip.to_string(),
                host_port: spec.host_port,
                message: error::message_of(e).1,
            })
        })
        .await
    }

    /// Creates and starts a sidecar in the network namespace of its instance's main
    /// container, with its own limits and labels; on any failure after create, removes it.
    pub async fn run_sidecar(&self, spec: &SidecarSpec) -> Result<ContainerInfo, DockerError> {
        let name = spec.container_name();
        let memory = i64::try_from(spec.memory.bytes()).unwrap_or(i64::MAX);
        let env = vec![
            format!("CAAS_APP={}", spec.app),
            format!("CAAS_VERSION={}", spec.version),
            format!("CAAS_INSTANCE={}", spec.instance),
            format!("CAAS_SIDECAR={}", spec.name),
        ];
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(env),
            labels: Some(spec.labels()),
            host_config: Some(HostConfig {
                network_mode: Some(spec.network_mode()),
                memory: Some(memory),
                memory_swap: Some(memory),
                cpu_shares: Some(i64::from(spec.cpu_shares)),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_and_start(&name, &spec.image, body, |_| None)
            .await
    }

    /// Creates `name` from `body` and starts it; `start_error` may sort a start failure
    /// (the port check of a main container). Nothing is left behind on failure.
    async fn create_and_start(
        &self,
        name: &str,
        image: &str,
        body: ContainerCreateBody,
        start_error: impl FnOnce(&bollard::errors::Error) -> Option<DockerError>,
    ) -> Result<ContainerInfo, DockerError> {
        let options = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| match error::message_of(&e) {
                (Some(404), _) => classify_image("create", &self.endpoint, image, e),
                _ => classify_container("create", &self.endpoint, name, e),
            })?;
        let id = created.id;
        for w in created.warnings {
            tracing::warn!(container = %name, warning = %w, "docker create warning");
        }

        if let Err(e) = self.docker.start_container(&id, None).await {
            self.remove_half_made(&id, "start failed").await;
            return Err(start_error(&e)
                .unwrap_or_else(|| classify_container("start", &self.endpoint, name, e)));
        }
        match self.inspect(&id).await {
            Ok(info) => Ok(info),
            Err(e) => {
                self.remove_half_made(&id, "inspect after start failed")
                    .await;
                Err(e)
            }
        }
    }

    async fn remove_half_made(&self, id: &str, why: &str) {
        if let Err(e) = self.remove(id).await {
            self.cleanup_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(container = %id, error = %e, "{why}; removing the half-made container failed too");
        }
    }

    /// Stops a container: SIGTERM, then SIGKILL after `timeout`. Stopping a stopped container
    /// is not an error.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<(), DockerError> {
        let options = StopContainerOptions {
            t: Some(i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX)),
            signal: None,
        };
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if error::message_of(&e).0 == Some(304) => Ok(()),
            Err(e) => Err(classify_container("stop", &self.endpoint, id, e)),
        }
    }

    /// Removes a container (killing it if still running) and its anonymous volumes.
    pub async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        self.docker
            .remove_container(id, Some(options))
            .await
            .map_err(|e| classify_container("remove", &self.endpoint, id, e))
    }

    /// Inspects a container.
    pub async fn inspect(&self, id: &str) -> Result<ContainerInfo, DockerError> {
        self.docker
            .inspect_container(id, None)
            .await
            .map(ContainerInfo::from_inspect)
            .map_err(|e| classify_container("inspect", &self.endpoint, id, e))
    }

    /// All containers (running or not) labelled `caas.host={host_id}`.
    pub async fn list_managed(&self, host_id: &str) -> Result<Vec<ManagedContainer>, DockerError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{LABEL_HOST}={host_id}")],
            )])),
            ..Default::default()
        };
        self.docker
            .list_containers(Some(options))
            .await
            .map(|v| v.into_iter().map(ManagedContainer::from_summary).collect())
            .map_err(|e| classify_container("list", &self.endpoint, host_id, e))
    }

    /// start/die/oom events of managed containers (those of `host_id`, or all with a
    /// `caas.app` label) from the moment of this call on, even if the stream is first polled
    /// later. The stream ends (after an error item) when the daemon connection breaks; the
    /// caller re-subscribes with [`Self::events_since`] the time of the last event it saw.
    pub fn events(
        &self,
        host_id: Option<&str>,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + use<> {
        self.events_since(host_id, SystemTime::now())
    }

    /// [`Self::events`] from `since` on (the Engine replays what it still has in memory).
    pub fn events_since(
        &self,
        host_id: Option<&str>,
        since: SystemTime,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + use<> {
        let since = since.duration_since(UNIX_EPOCH).unwrap_or_default();
        let label = match host_id {
            Some(h) => format!("{LABEL_HOST}={h}"),
            None => LABEL_APP.to_owned(),
        };
        let options = EventsOptions {
            filters: Some(HashMap::from([
                ("type".to_owned(), vec!["container".to_owned()]),
                (
                    "event".to_owned(),
                    vec!["start".to_owned(), "die".to_owned(), "oom".to_owned()],
                ),
                ("label".to_owned(), vec![label]),
            ])),
            since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())),
            until: None,
        };
        let endpoint = self.endpoint.clone();
        self.docker.events(Some(options)).filter_map(move |item| {
            let out = match item {
                Ok(m) => ContainerEvent::from_message(m).map(Ok),
                Err(e) if is_daemon_unreachable(&e) => Some(Err(DockerError::DaemonUnreachable {
                    endpoint: endpoint.clone(),
                    op: "events",
                    message: e.to_string(),
                })),
                Err(e) => Some(Err(DockerError::Other {
                    op: "events",
                    target: endpoint.clone(),
                    source: e,
                })),
            };
            std::future::ready(out)
        })
    }
}

/// Splits `repo:tag` (a `:` after the last `/`); `latest` when there is no tag.
fn split_tag(image: &str) -> (&str, &str) {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (&image[..slash + i], &image[slash + i + 1..]),
        None => (image, "latest"),
    }
}

/// The registry part of `{registry}/{repo}:{tag}` (empty for a Docker Hub name).
fn registry_of(image: &str) -> &str {
    image.split_once('/').map_or("", |(r, _)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert_eq!(
            split_tag("127.0.0.1:5000/hello:v1"),
            ("127.0.0.1:5000/hello", "v1")
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/hello"),
            ("127.0.0.1:5000/hello", "latest")
        );
        assert_eq!(split_tag("busybox"), ("busybox", "latest"));
        assert_eq!(registry_of("127.0.0.1:5000/hello:v1"), "127.0.0.1:5000");
    }

    #[tokio::test]
    async fn missing_socket_is_daemon_unreachable() {
        let e = DockerRuntime::connect("/nonexistent/docker.sock")
            .await
            .unwrap_err();
        assert!(matches!(e, DockerError::DaemonUnreachable { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/docker.sock"), "{e}");
    }
}
