//! The world of the agent tests (`agent.rs`, `agent_units.rs`): one real ZooKeeper per test,
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
use caas_backends::testing::docker::{docker_or_skip, hello_image, remove_labelled};
use caas_backends::testing::{ZkServer, ZkServerBuilder};
use caas_backends::zk::hosts::InstanceStatus;
use caas_backends::zk::{HostStore, ZkConfig, ZkSession};
use caas_backends::{Agent, AgentConfig, AgentHandle};
use caas_core::{AppId, InstanceId, Version};

pub const WAIT: Duration = Duration::from_secs(60);

/// One test's world: ZooKeeper, Docker, the image, a host id and IP.
pub struct World {
    pub zk: ZkServer,
    pub docker: DockerRuntime,
    pub image: String,
    pub host: String,
    pub ip: IpAddr,
    pub label: String,
    pub session: ZkSession,
}

impl Drop for World {
    fn drop(&mut self) {
        remove_labelled(&self.label);
    }
}

pub async fn world(test: &str, host: &str, ip: &str) -> Option<World> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "caas_backends=info".into()),
        )
        .with_test_writer()
        .try_init();
    let docker = docker_or_skip(test).await?;
    let zk = ZkServer::start_or_skip(ZkServerBuilder::default(), test)?;
    let label = format!("caas.test=agent-{test}");
    remove_labelled(&label);
    let image = tokio::task::spawn_blocking(hello_image).await.unwrap();
    let session = ZkSession::connect(ZkConfig::new(zk.connect_string()))
        .await
        .unwrap();
    Some(World {
        zk,
        docker,
        image,
        host: host.into(),
        ip: ip.parse().unwrap(),
        label,
        session,
    })
}

impl World {
    pub fn config(&self) -> AgentConfig {
        let mut c = AgentConfig::new(
            ZkConfig::new(self.zk.connect_string()).with_session_timeout(Duration::from_secs(6)),
            &self.host,
            self.ip,
        );
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
        let hosts = HostStore::new(self.session.clone());
        for id in ids {
            hosts
                .put_assignment(&self.host, &inst(id), &self.assignment())
                .await
                .unwrap();
        }
    }

    pub async fn unassign(&self, id: &str) {
        HostStore::new(self.session.clone())
            .delete_assignment(&self.host, &inst(id))
            .await
            .unwrap();
    }

    /// Registered instances of hello/v1: id → address.
    pub async fn registered(&self) -> BTreeMap<String, SocketAddr> {
        let client = self.session.client().unwrap();
        let dir = "/service/address/hello/v1";
        let mut out = BTreeMap::new();
        let Ok(names) = client.list_children(dir).await else {
            return out;
        };
        for n in names {
            if let Ok((d, _)) = client.get_data(&format!("{dir}/{n}")).await {
                out.insert(n, String::from_utf8(d).unwrap().parse().unwrap());
            }
        }
        out
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
    /// The host store on the test's own session.
    pub fn hosts(&self) -> HostStore {
        HostStore::new(self.session.clone())
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
