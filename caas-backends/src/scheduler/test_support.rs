//! Builders for the scheduler's unit tests: hosts, instances and snapshots in one line.

use std::collections::BTreeMap;

use caas_core::{AppId, InstanceId, Version};

use super::deployment::Deployment;
use super::snapshot::{DeploymentState, HostState, Snapshot};
use crate::assignment::MemoryLimit;
use crate::zk::hosts::{HostInfo, Resources};

pub(crate) const GIB: u64 = 1 << 30;
pub(crate) const MIB: u64 = 1 << 20;

pub(crate) fn app(s: &str) -> AppId {
    AppId::new(s).unwrap()
}
pub(crate) fn ver(s: &str) -> Version {
    Version::new(s).unwrap()
}
pub(crate) fn inst(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

/// An alive host with this capacity and nothing on it.
pub(crate) fn host(id: &str, memory: u64, cpu: u64, ports: u64) -> HostState {
    HostState::new(
        id,
        HostInfo {
            ip: "127.0.0.1".parse().unwrap(),
            labels: BTreeMap::new(),
            capacity: Resources {
                memory,
                cpu_shares: cpu,
                instances: ports,
            },
            allocated: Resources::default(),
            cpu_idle: None,
            draining: false,
            logs: None,
        },
    )
}

/// A deployment of `web:v1` with `memory_mib` and 100 CPU shares per instance.
pub(crate) fn spec(replicas: u32, memory_mib: u64) -> Deployment {
    let mut d = Deployment::new("127.0.0.1:5000/web:v1", 8080, replicas);
    d.memory = MemoryLimit::from_bytes(memory_mib * MIB);
    d.cpu_shares = 100;
    d
}

/// Puts the instance `id` of `app`:`version` using `memory_mib` (and 100 shares) on `h`.
pub(crate) fn run_as(h: &mut HostState, id: &str, app_id: &str, version: &str, memory_mib: u64) {
    let image = format!("127.0.0.1:5000/{app_id}:{version}");
    let mut d = Deployment::new(image, 80, 1);
    d.memory = MemoryLimit::from_bytes(memory_mib * MIB);
    d.cpu_shares = 100;
    h.instances
        .insert(inst(id), d.assignment(&app(app_id), &ver(version)));
}

/// Puts an instance of `app`:`version` (id made from the host and a counter) on `h`.
pub(crate) fn run(h: &mut HostState, app_id: &str, version: &str, memory_mib: u64) {
    let id = format!("{}-{app_id}-{}", h.id, h.instances.len());
    run_as(h, &id, app_id, version, memory_mib);
}

/// A snapshot of these hosts and no deployments.
pub(crate) fn snap(hosts: Vec<HostState>) -> Snapshot {
    Snapshot {
        hosts: hosts.into_iter().map(|h| (h.id.clone(), h)).collect(),
        ..Snapshot::default()
    }
}

/// Adds the deployment `web:v1` to `s` with these registered (healthy) instances.
pub(crate) fn with_web(s: &mut Snapshot, d: &Deployment, healthy: &[&str]) {
    let key = (app("web"), ver("v1"));
    s.listed_after.insert(key.clone());
    s.deployments.insert(
        key,
        DeploymentState {
            spec: Ok(d.clone()),
            spec_version: 0,
            status: None,
            registered: healthy
                .iter()
                .map(|i| (inst(i), "127.0.0.1:1".to_owned()))
                .collect(),
        },
    );
}
