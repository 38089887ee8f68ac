//! The host agent against a real ZooKeeper (one server per test), the real Docker Engine and
//! the real private registry, running the hello-app image (built and pushed by the setup).
//!
//! Every test uses its own host id, loopback IP and instance ids, and labels its containers
//! `caas.test=agent-{test}`; leftovers of that label are removed before and after. Without a
//! Docker daemon the tests print `SKIPPED: no Docker daemon` and pass, except under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use caas_backends::assignment::{Assignment, HealthPolicy};
use caas_backends::docker::{DockerRuntime, LABEL_HOST, LABEL_INSTANCE, ManagedContainer, RunSpec};
use caas_backends::testing::docker::{docker_or_skip, hello_image, remove_labelled};
use caas_backends::testing::{ZkServer, ZkServerBuilder};
use caas_backends::zk::{HostStore, ZkConfig, ZkSession};
use caas_backends::{Agent, AgentConfig, AgentHandle};
use caas_core::{AppId, InstanceId, Version};

const WAIT: Duration = Duration::from_secs(60);

/// One test's world: ZooKeeper, Docker, the image, a host id and IP.
struct World {
    zk: ZkServer,
    docker: DockerRuntime,
    image: String,
    host: String,
    ip: IpAddr,
    label: String,
    session: ZkSession,
}

impl Drop for World {
    fn drop(&mut self) {
        remove_labelled(&self.label);
    }
}

async fn world(test: &str, host: &str, ip: &str) -> Option<World> {
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
    fn config(&self) -> AgentConfig {
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

    async fn agent(&self) -> AgentHandle {
        Agent::start(self.config()).await.unwrap()
    }

    fn assignment(&self) -> Assignment {
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

    async fn assign(&self, ids: &[&str]) {
        let hosts = HostStore::new(self.session.clone());
        for id in ids {
            hosts
                .put_assignment(&self.host, &inst(id), &self.assignment())
                .await
                .unwrap();
        }
    }

    async fn unassign(&self, id: &str) {
        HostStore::new(self.session.clone())
            .delete_assignment(&self.host, &inst(id))
            .await
            .unwrap();
    }

    /// Registered instances of hello/v1: id → address.
    async fn registered(&self) -> BTreeMap<String, SocketAddr> {
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

    async fn containers(&self) -> Vec<ManagedContainer> {
        self.docker.list_managed(&self.host).await.unwrap()
    }

    /// Running containers by instance label.
    async fn running(&self) -> BTreeMap<String, ManagedContainer> {
        self.containers()
            .await
            .into_iter()
            .filter(|c| c.running)
            .map(|c| (c.instance().unwrap_or("?").to_owned(), c))
            .collect()
    }
}

fn inst(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

fn names(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// Polls `f` until it returns `Some`, or panics with `what` after [`WAIT`].
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
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
fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
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

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_run_with_limits_register_and_leave_on_deletion() {
    let Some(w) = world("three", "h-three", "127.0.0.2").await else {
        return;
    };
    let agent = w.agent().await;
    let ids = ["three-0", "three-1", "three-2"];
    let t0 = Instant::now();
    w.assign(&ids).await;
    let regs = until("3 registrations", || async {
        let r = w.registered().await;
        (r.len() == 3).then_some(r)
    })
    .await;
    println!(
        "TIMING assignment of 3 -> 3 registrations: {:?}",
        t0.elapsed()
    );
    assert_eq!(regs.keys().cloned().collect::<BTreeSet<_>>(), names(&ids));

    let running = w.running().await;
    assert_eq!(running.len(), 3, "{running:?}");
    for (id, c) in &running {
        let info = w.docker.inspect(&c.id).await.unwrap();
        assert_eq!(info.memory, 512 * 1024 * 1024, "{id} memory");
        assert_eq!(info.cpu_shares, 1024, "{id} cpu shares");
        assert_eq!(
            info.labels.get(LABEL_HOST).map(String::as_str),
            Some("h-three")
        );
        assert_eq!(info.labels.get(LABEL_INSTANCE), Some(id));
        let (ip, port) = info.host_binding.clone().unwrap();
        assert_eq!(ip, "127.0.0.2");
        assert_eq!(
            regs[id],
            SocketAddr::new(w.ip, port),
            "registered where published"
        );
        assert_eq!(http(regs[id], "GET", "/_ping").unwrap(), 200);
    }

    // Host node: alive, capacity, allocated.
    let hosts = HostStore::new(w.session.clone());
    let info = hosts.info("h-three").await.unwrap().unwrap();
    assert_eq!(info.ip, w.ip);
    assert_eq!(info.allocated.memory, 3 * 512 * 1024 * 1024);
    assert_eq!(info.allocated.instances, 3);
    assert!(info.capacity.memory > 0);
    let client = w.session.client().unwrap();
    assert!(
        client
            .check_stat("/hosts/h-three/alive")
            .await
            .unwrap()
            .is_some()
    );

    // Deleting an assignment: deregistered, container gone, port back.
    let gone = running["three-1"].id.clone();
    let t0 = Instant::now();
    w.unassign("three-1").await;
    until("deregistration and removal", || async {
        let r = w.registered().await;
        let cs = w.containers().await;
        (r.len() == 2 && !r.contains_key("three-1") && !cs.iter().any(|c| c.id == gone))
            .then_some(())
    })
    .await;
    println!(
        "TIMING assignment deleted -> deregistered and removed: {:?}",
        t0.elapsed()
    );
    let info = hosts.info("h-three").await.unwrap().unwrap();
    assert_eq!(info.allocated.instances, 2);
    let s = agent.stats();
    assert_eq!(s.started, 3, "{s:?}");
    assert_eq!(s.errors, 0, "{s:?}");

    // Agent stops: its session closes, registrations and alive node go; containers stay.
    agent.shutdown().await;
    until("registrations gone with the session", || async {
        w.registered().await.is_empty().then_some(())
    })
    .await;
    assert!(
        client
            .check_stat("/hosts/h-three/alive")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(w.running().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_adopts_its_containers_and_removes_orphans() {
    let Some(w) = world("adopt", "h-adopt", "127.0.0.3").await else {
        return;
    };
    let agent = w.agent().await;
    let ids = ["adopt-0", "adopt-1"];
    w.assign(&ids).await;
    let before = until("2 registrations", || async {
        let r = w.registered().await;
        (r.len() == 2).then_some(r)
    })
    .await;
    let containers_before: BTreeMap<String, String> = w
        .running()
        .await
        .into_iter()
        .map(|(k, c)| (k, c.id))
        .collect();
    agent.shutdown().await;

    // While no agent runs: an orphan appears (labelled for this host, no assignment).
    let mut spec = RunSpec::from_assignment(
        &w.assignment(),
        inst("adopt-orphan"),
        "h-adopt",
        w.ip,
        25990,
    );
    let (k, v) = w.label.split_once('=').unwrap();
    spec.extra_labels.insert(k.into(), v.into());
    let orphan = w.docker.run(&spec).await.unwrap().id;

    let agent = w.agent().await;
    let after = until("2 registrations again", || async {
        let r = w.registered().await;
        (r.len() == 2).then_some(r)
    })
    .await;
    assert_eq!(after, before, "same instances on the same ports");
    until("orphan removed", || async {
        (!w.containers().await.iter().any(|c| c.id == orphan)).then_some(())
    })
    .await;
    let containers_after: BTreeMap<String, String> = w
        .running()
        .await
        .into_iter()
        .map(|(k, c)| (k, c.id))
        .collect();
    assert_eq!(
        containers_after, containers_before,
        "adopted, not restarted"
    );
    assert_eq!(w.containers().await.len(), 2, "no duplicates");
    let s = agent.stats();
    assert_eq!(
        (s.adopted, s.started, s.orphans_removed),
        (2, 0, 1),
        "{s:?}"
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_ping_deregisters_restarts_and_registers_again() {
    let Some(w) = world("fail", "h-fail", "127.0.0.4").await else {
        return;
    };
    let agent = w.agent().await;
    w.assign(&["fail-0"]).await;
    let addr = until("registration", || async {
        w.registered().await.get("fail-0").copied()
    })
    .await;
    let first = w.running().await["fail-0"].id.clone();

    let t0 = Instant::now();
    assert_eq!(http(addr, "POST", "/_fail").unwrap(), 200);
    until("deregistration", || async {
        w.registered().await.is_empty().then_some(())
    })
    .await;
    let detected = t0.elapsed();
    let second = until("a new container registered", || async {
        let c = w.running().await.get("fail-0").map(|c| c.id.clone())?;
        (c != first && w.registered().await.get("fail-0") == Some(&addr)).then_some(c)
    })
    .await;
    let recovered = t0.elapsed();
    println!(
        "TIMING /_fail -> deregistered {detected:?}, -> restarted and registered {recovered:?}"
    );
    // 2 failed probes 300 ms apart, plus one probe timeout and scheduling slack.
    assert!(
        detected < Duration::from_millis(300 * 2 + 1000),
        "{detected:?}"
    );
    assert_ne!(second, first);
    assert!(
        !w.containers().await.iter().any(|c| c.id == first),
        "the failed container is removed"
    );
    assert_eq!(
        http(addr, "GET", "/_ping").unwrap(),
        200,
        "the new one is healthy"
    );
    let s = agent.stats();
    assert_eq!(
        (s.restarts, s.registered, s.deregistered),
        (1, 2, 1),
        "{s:?}"
    );
    agent.shutdown().await;
}
