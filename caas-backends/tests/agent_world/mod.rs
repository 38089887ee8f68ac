//! The world of the agent tests (`agent.rs`, `agent_units.rs`): a real store (ZooKeeper, or
//! etcd for the tests that run on both; the process's shared server, a namespace per test),
//! the real Docker Engine and registry, the hello-app image, a host id and a loopback IP per
//! test, and helpers that read what a user would look at (registrations, containers by
//! label, status nodes).
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use caas_backends::assignment::{Assignment, HealthPolicy};
use caas_backends::docker::{DockerRuntime, ManagedContainer};
use caas_backends::store::{AnyStore, Store, StoreConfig};
use caas_backends::testing::docker::{docker_or_skip, hello_image, remove_labelled};
use caas_backends::testing::stores::{EtcdFixture, ZkFixture};
use caas_backends::zk::HostStore;
use caas_backends::zk::hosts::InstanceStatus;
use caas_backends::{Agent, AgentConfig, AgentHandle};
use caas_core::{AppId, InstanceId, Version};

pub const WAIT: Duration = Duration::from_secs(60);

/// Which store the agent runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Zk,
    Etcd,
}

/// The test's namespace on the shared server of its store.
pub enum Fixture {
    Zk(ZkFixture),
    Etcd(EtcdFixture),
}

impl Fixture {
    pub fn store_config(&self) -> StoreConfig {
        match self {
            Fixture::Zk(f) => f.store_config(),
            Fixture::Etcd(f) => f.store_config(),
        }
    }
}

/// One test's world: the store, Docker, the image, a host id and IP.
pub struct World {
    pub fixture: Fixture,
    pub docker: DockerRuntime,
    pub image: String,
    pub host: String,
    pub ip: IpAddr,
    pub label: String,
    /// The test's own handle on the store (not the agent's).
    pub store: AnyStore,
}

impl Drop for World {
    fn drop(&mut self) {
        remove_labelled(&self.label);
    }
}

/// A world on ZooKeeper.
pub async fn world(test: &str, host: &str, ip: &str) -> Option<World> {
    world_on(Kind::Zk, test, host, ip).await
}

pub async fn world_on(kind: Kind, test: &str, host: &str, ip: &str) -> Option<World> {
    caas_backends::testing::logs();
    let docker = docker_or_skip(test).await?;
    // Namespaces are per test: fixture names must be valid path segments.
    let ns = format!("agent-{test}");
    let fixture = match kind {
        Kind::Zk => Fixture::Zk(ZkFixture::shared(&ns)?),
        Kind::Etcd => Fixture::Etcd(EtcdFixture::shared(&ns)?),
    };
    let label = format!("caas.test=agent-{test}");
    remove_labelled(&label);
    let image = tokio::task::spawn_blocking(hello_image).await.unwrap();
    let store = fixture.store_config().connect().await.unwrap();
    Some(World {
        fixture,
        docker,
        image,
        host: host.into(),
        ip: ip.parse().unwrap(),
        label,
        store,
    })
}

impl World {
    pub fn config(&self) -> AgentConfig {
        let store = match self.fixture.store_config() {
            StoreConfig::Zk(c) => StoreConfig::Zk(c.with_session_timeout(Duration::from_secs(6))),
            other => other,
        };
        let mut c = AgentConfig::new(store, &self.host, self.ip);
        c.resync = Duration::from_secs(2);
        c.restart_backoff = Duration::from_millis(200);
        let (k, v) = self.label.split_once('=').unwrap();
        c.container_labels = BTreeMap::from([(k.to_owned(), v.to_owned())]);
        c
    }

    pub async fn agent(&self) -> AgentHandle {
        Agent::start(self.config()).await.unwrap()
    }

    pub fn assignment(&self) -> Assignment {
        Assignment {
            app: AppId::new("hello").unwrap(),
            version: Version::new("v1").unwrap(),
            image: self.image.clone(),
            container_port: 8080,
            memory: "512m".parse().unwrap(),
            cpu_shares: 1024,
            health: HealthPolicy {
                interval_ms: 300,
                timeout_ms: 250,
                fall: 2,
                rise: 1,
                grace_ms: 5000,
                ..HealthPolicy::default()
            },
            sidecars: Vec::new(),
        }
    }

    pub async fn assign(&self, ids: &[&str]) {
        let hosts = self.hosts();
        for id in ids {
            hosts
                .put_assignment(&self.host, &inst(id), &self.assignment())
                .await
                .unwrap();
        }
    }

    pub async fn unassign(&self, id: &str) {
        self.hosts()
            .delete_assignment(&self.host, &inst(id))
            .await
            .unwrap();
    }

    /// Registered instances of hello/v1: id → address.
    pub async fn registered(&self) -> BTreeMap<String, SocketAddr> {
        let nodes = self.store.list("/service/address/hello/v1").await.unwrap();
        nodes
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8(v.data).unwrap().parse().unwrap()))
            .collect()
    }

    pub async fn containers(&self) -> Vec<ManagedContainer> {
        self.docker.list_managed(&self.host).await.unwrap()
    }

    /// Running containers by instance label.
    pub async fn running(&self) -> BTreeMap<String, ManagedContainer> {
        self.containers()
            .await
            .into_iter()
            .filter(|c| c.running)
            .map(|c| (c.instance().unwrap_or("?").to_owned(), c))
            .collect()
    }
}

pub fn inst(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

pub fn names(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// Polls `f` until it returns `Some`, or panics with `what` after [`WAIT`].
pub async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.1 request with `Connection: close`; returns the status code.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0))
}

impl World {
    /// The host store on the test's own handle.
    pub fn hosts(&self) -> HostStore<AnyStore> {
        HostStore::new(self.store.clone())
    }

    /// Whether the node exists, as the test's handle reads it.
    pub async fn exists(&self, path: &str) -> bool {
        self.store.get(path).await.unwrap().is_some()
    }

    /// Writes one assignment.
    pub async fn assign_one(&self, id: &str, a: &Assignment) {
        self.hosts()
            .put_assignment(&self.host, &inst(id), a)
            .await
            .unwrap();
    }

    /// The status node of `id`, as a user reads it.
    pub async fn status(&self, id: &str) -> Option<InstanceStatus> {
        self.hosts().status(&self.host, &inst(id)).await.unwrap()
    }

    /// The containers of one instance by sidecar name (`""` for the main one).
    pub async fn unit(&self, id: &str) -> BTreeMap<String, ManagedContainer> {
        self.containers()
            .await
            .into_iter()
            .filter(|c| c.instance() == Some(id))
            .map(|c| (c.sidecar().unwrap_or("").to_owned(), c))
            .collect()
    }
}

/// `docker kill` (SIGKILL), as a crash would.
pub fn docker_kill(id: &str) {
    let out = std::process::Command::new("docker")
        .args(["kill", id])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker kill {id}: {out:?}");
}

/// A plain `GET` with `Connection: close`; returns status and body.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
