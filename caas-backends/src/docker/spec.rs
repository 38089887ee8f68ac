//! What goes into Docker ([`RunSpec`], [`SidecarSpec`], [`RegistryAuth`]) and what comes back
//! ([`ContainerInfo`], [`ManagedContainer`]), plus the `caas.*` label names that mark a
//! container as ours.
//!
//! A sidecar carries the labels of its instance (`caas.app`, `caas.version`,
//! `caas.instance`, `caas.host`) plus `caas.sidecar={name}`, and no `caas.port`: it publishes
//! nothing and joins the network namespace of the instance's main container.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary};
use caas_core::{AppId, InstanceId, Version};

use crate::assignment::{Assignment, MemoryLimit, Sidecar};

/// Label: the app id.
pub const LABEL_APP: &str = "caas.app";
/// Label: the version.
pub const LABEL_VERSION: &str = "caas.version";
/// Label: the instance id.
pub const LABEL_INSTANCE: &str = "caas.instance";
/// Label: the host id of the agent that owns the container.
pub const LABEL_HOST: &str = "caas.host";
/// Label: the published host port (for port pool recovery).
pub const LABEL_PORT: &str = "caas.port";
/// Label: the container port the host port is bound to.
pub const LABEL_CONTAINER_PORT: &str = "caas.container_port";
/// Label: the sidecar's name; absent on an instance's main container.
pub const LABEL_SIDECAR: &str = "caas.sidecar";

/// Credentials for a private registry (Docker's `X-Registry-Auth`).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
    /// Registry address, e.g. `127.0.0.1:5000`; taken from the image when empty.
    pub server: String,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Everything needed to create and start one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// App id (label and `CAAS_APP`).
    pub app: AppId,
    /// Version (label and `CAAS_VERSION`).
    pub version: Version,
    /// Instance id (label, `CAAS_INSTANCE` and part of the container name).
    pub instance: InstanceId,
    /// Host id of the owning agent (label `caas.host`).
    pub host_id: String,
    /// Image reference; must be present locally (see [`super::DockerRuntime::pull`]).
    pub image: String,
    /// Host IP the port is published on.
    pub host_ip: IpAddr,
    /// Host port from the host's port pool.
    pub host_port: u16,
    /// Port the app listens on inside the container.
    pub container_port: u16,
    /// Memory limit.
    pub memory: MemoryLimit,
    /// CPU shares.
    pub cpu_shares: u32,
    /// More environment variables (`KEY=value`), after the `CAAS_*` ones.
    pub env: Vec<String>,
    /// More labels (tests mark their containers with one).
    pub extra_labels: BTreeMap<String, String>,
}

impl RunSpec {
    /// The spec for an assignment, on `host_ip:host_port` of host `host_id`.
    pub fn from_assignment(
        a: &Assignment,
        instance: InstanceId,
        host_id: &str,
        host_ip: IpAddr,
        host_port: u16,
    ) -> Self {
        Self {
            app: a.app.clone(),
            version: a.version.clone(),
            instance,
            host_id: host_id.to_owned(),
            image: a.image.clone(),
            host_ip,
            host_port,
            container_port: a.container_port,
            memory: a.memory,
            cpu_shares: a.cpu_shares,
            env: Vec::new(),
            extra_labels: BTreeMap::new(),
        }
    }

    /// The container name: `caas-{app}-{version}-{instance}` (unique per instance).
    pub fn container_name(&self) -> String {
        format!("caas-{}-{}-{}", self.app, self.version, self.instance)
    }

    /// All labels: `caas.*` plus the extra ones.
    pub fn labels(&self) -> HashMap<String, String> {
        let mut l: HashMap<String, String> = self
            .extra_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        l.insert(LABEL_APP.into(), self.app.to_string());
        l.insert(LABEL_VERSION.into(), self.version.to_string());
        l.insert(LABEL_INSTANCE.into(), self.instance.to_string());
        l.insert(LABEL_HOST.into(), self.host_id.clone());
        l.insert(LABEL_PORT.into(), self.host_port.to_string());
        l.insert(LABEL_CONTAINER_PORT.into(), self.container_port.to_string());
        l
    }
}

/// Everything needed to create and start one sidecar of an instance: no published port, the
/// main container's network namespace (`NetworkMode: container:{main}`), its own limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarSpec {
    /// App id of the instance.
    pub app: AppId,
    /// Version of the instance.
    pub version: Version,
    /// Instance id.
    pub instance: InstanceId,
    /// Host id of the owning agent.
    pub host_id: String,
    /// The sidecar's name within the instance (label `caas.sidecar`, `CAAS_SIDECAR`).
    pub name: String,
    /// Image reference; must be present locally.
    pub image: String,
    /// Id of the instance's main container, whose network namespace the sidecar joins.
    pub network_container: String,
    /// Memory limit.
    pub memory: MemoryLimit,
    /// CPU shares.
    pub cpu_shares: u32,
    /// More labels (tests mark their containers with one).
    pub extra_labels: BTreeMap<String, String>,
}

impl SidecarSpec {
    /// The spec for `sidecar` of the instance `instance` of `a`, beside `main`.
    pub fn from_assignment(
        a: &Assignment,
        sidecar: &Sidecar,
        instance: InstanceId,
        host_id: &str,
        main: &str,
    ) -> Self {
        Self {
            app: a.app.clone(),
            version: a.version.clone(),
            instance,
            host_id: host_id.to_owned(),
            name: sidecar.name.clone(),
            image: sidecar.image.clone(),
            network_container: main.to_owned(),
            memory: sidecar.memory,
            cpu_shares: sidecar.cpu_shares,
            extra_labels: BTreeMap::new(),
        }
    }

    /// The container name: `caas-{app}-{version}-{instance}_{sidecar}` (ids never contain
    /// `_`, so it cannot be another instance's main container name).
    pub fn container_name(&self) -> String {
        format!(
            "caas-{}-{}-{}_{}",
            self.app, self.version, self.instance, self.name
        )
    }

    /// The `NetworkMode` value: `container:{main}`.
    pub fn network_mode(&self) -> String {
        format!("container:{}", self.network_container)
    }

    /// All labels: the instance's `caas.*` ones, `caas.sidecar`, plus the extra ones.
    pub fn labels(&self) -> HashMap<String, String> {
        let mut l: HashMap<String, String> = self
            .extra_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        l.insert(LABEL_APP.into(), self.app.to_string());
        l.insert(LABEL_VERSION.into(), self.version.to_string());
        l.insert(LABEL_INSTANCE.into(), self.instance.to_string());
        l.insert(LABEL_HOST.into(), self.host_id.clone());
        l.insert(LABEL_SIDECAR.into(), self.name.clone());
        l
    }
}

/// Coarse container state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running (or paused/restarting: the process exists).
    Running,
    /// Exited or dead.
    Exited,
    /// Being removed, or a state this code does not know.
    Other,
}

/// What the runtime knows about one of our containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Full container id.
    pub id: String,
    /// Container name without the leading `/`.
    pub name: String,
    /// Image reference it was created from.
    pub image: String,
    /// State.
    pub state: ContainerState,
    /// Exit code, once exited.
    pub exit_code: Option<i64>,
    /// Whether the kernel OOM killer ended it.
    pub oom_killed: bool,
    /// All labels.
    pub labels: HashMap<String, String>,
    /// The published `hostIp`/`hostPort` for the container port, if any.
    pub host_binding: Option<(String, u16)>,
    /// Memory limit in bytes (0 = none).
    pub memory: i64,
    /// CPU shares (0 = default).
    pub cpu_shares: i64,
    /// `HostConfig.NetworkMode` (`container:{id}` for a sidecar).
    pub network_mode: String,
    /// When the container last started, Unix milliseconds (`None` if it never did).
    pub started_at_ms: Option<u64>,
}

impl ContainerInfo {
    /// The `caas.app` label.
    pub fn app(&self) -> Option<&str> {
        self.labels.get(LABEL_APP).map(String::as_str)
    }

    /// The `caas.instance` label.
    pub fn instance(&self) -> Option<&str> {
        self.labels.get(LABEL_INSTANCE).map(String::as_str)
    }

    /// The `caas.sidecar` label: `Some(name)` for a sidecar, `None` for a main container.
    pub fn sidecar(&self) -> Option<&str> {
        self.labels.get(LABEL_SIDECAR).map(String::as_str)
    }

    /// The `caas.port` label, parsed.
    pub fn port_label(&self) -> Option<u16> {
        self.labels.get(LABEL_PORT).and_then(|p| p.parse().ok())
    }

    pub(crate) fn from_inspect(r: ContainerInspectResponse) -> Self {
        let state = r.state.unwrap_or_default();
        let cfg = r.config.unwrap_or_default();
        let host = r.host_config.unwrap_or_default();
        let labels = cfg.labels.unwrap_or_default();
        let port: Option<u16> = labels
            .get(LABEL_CONTAINER_PORT)
            .and_then(|p| p.parse().ok());
        // Bindings as requested (HostConfig) survive a stop; NetworkSettings only while running.
        let host_binding = port.and_then(|p| {
            host.port_bindings
                .as_ref()?
                .get(&format!("{p}/tcp"))?
                .as_ref()?
                .first()
                .and_then(|b| {
                    let port = b.host_port.as_deref()?.parse().ok()?;
                    Some((b.host_ip.clone().unwrap_or_default(), port))
                })
        });
        Self {
            id: r.id.unwrap_or_default(),
            name: r
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            image: cfg.image.unwrap_or_default(),
            state: match state.status {
                Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
                Some(
                    ContainerStateStatusEnum::RUNNING
                    | ContainerStateStatusEnum::PAUSED
                    | ContainerStateStatusEnum::RESTARTING,
                ) => ContainerState::Running,
                Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => {
                    ContainerState::Exited
                }
                _ => ContainerState::Other,
            },
            started_at_ms: state
                .started_at
                .as_deref()
                .and_then(super::time::rfc3339_to_unix_ms),
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            labels,
            host_binding,
            memory: host.memory.unwrap_or(0),
            cpu_shares: host.cpu_shares.unwrap_or(0),
            network_mode: host.network_mode.unwrap_or_default(),
        }
    }
}

/// One of our containers as listed (cheaper than an inspect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    /// Full container id.
    pub id: String,
    /// All labels (`caas.app`, `caas.instance`, `caas.port`...).
    pub labels: HashMap<String, String>,
    /// Whether it is running.
    pub running: bool,
}

impl ManagedContainer {
    /// The `caas.port` label, parsed: the port to give back to the pool on recovery.
    pub fn port(&self) -> Option<u16> {
        self.labels.get(LABEL_PORT).and_then(|p| p.parse().ok())
    }

    /// The `caas.instance` label.
    pub fn instance(&self) -> Option<&str> {
        self.labels.get(LABEL_INSTANCE).map(String::as_str)
    }

    /// The `caas.sidecar` label: `Some(name)` for a sidecar, `None` for a main container.
    pub fn sidecar(&self) -> Option<&str> {
        self.labels.get(LABEL_SIDECAR).map(String::as_str)
    }

    pub(crate) fn from_summary(s: ContainerSummary) -> Self {
        Self {
            id: s.id.unwrap_or_default(),
            labels: s.labels.unwrap_or_default(),
            running: matches!(
                s.state,
                Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            ),
        }
    }
}
