//! The scheduler against a real ZooKeeper 3.8 (one server shared by the tests of this binary
//! when they run in one process, each test under its own chroot; the leader-kill test runs
//! its own three-server ensemble). Hosts are simulated the way an agent publishes itself:
//! a HostInfo node and an `alive` node held by the host's own session; instances become
//! healthy by registering them in `/service/address` as the agent does after a passing check.
//! Every test asserts on what an operator sees: assignments, allocations, the status node.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use caas_backends::scheduler::control;
use caas_backends::scheduler::deployment::Deployment;
use caas_backends::scheduler::snapshot;
use caas_backends::scheduler::status::{DeploymentStatus, Health, Phase};
use caas_backends::store::{EtcdStore, MemStore, Store, WatchEvent, ZkStore};
use caas_backends::testing::logs;
use caas_backends::testing::stores::{EtcdFixture, StoreFixture};
use caas_backends::testing::{ZkEnsemble, ZkServer, shared_zk};
use caas_backends::zk::hosts::{HostInfo, InstanceState, InstanceStatus, Resources};
use caas_backends::zk::{HostStore, Registry, ZkConfig, ZkSession};
use caas_backends::{Scheduler, SchedulerConfig, SchedulerHandle};
use caas_core::{AppId, InstanceId, Version};

const WAIT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn app(s: &str) -> AppId {
    AppId::new(s).unwrap()
}
fn ver(s: &str) -> Version {
    Version::new(s).unwrap()
}
fn inst(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

/// A deployment of `{app}:{version}` with `memory_mib` and 10 CPU shares per instance.
fn deployment(a: &str, v: &str, replicas: u32, memory_mib: u64) -> Deployment {
    let mut d = Deployment::new(format!("127.0.0.1:5000/{a}:{v}"), 8080, replicas);
    d.memory = caas_backends::assignment::MemoryLimit::from_bytes(memory_mib * MIB);
    d.cpu_shares = 10;
    d
}

fn host_info(memory: u64, ports: u64, labels: &[(&str, &str)]) -> HostInfo {
    HostInfo {
        ip: "127.0.0.2".parse().unwrap(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        capacity: Resources {
            memory,
            cpu_shares: 1_000_000,
            instances: ports,
        },
        allocated: Resources::default(),
        cpu_idle: None,
        draining: false,
        logs: None,
    }
}

/// A simulated host publishes itself as the agent does, in this handle's session or lease:
/// its own read-modify-write of the host node, then `alive`.
async fn publish_host<S: Store>(store: &S, id: &str, info: &HostInfo) {
    let hosts = HostStore::new(store.clone());
    hosts.ensure(id).await.unwrap();
    hosts.publish_agent_fields(id, &info.into()).await.unwrap();
    hosts.mark_alive(id, info.ip).await.unwrap();
}

type Connect<S> = Box<dyn Fn() -> Pin<Box<dyn Future<Output = S> + Send>> + Send + Sync>;

/// One test's view of a store: a namespace (chroot, key prefix), an operator's handle,
/// simulated hosts.
struct World<S> {
    /// Opens a new handle on the test's namespace, with its own session or lease.
    connect: Connect<S>,
    store: S,
    /// Each host's own handle: its session or lease holds the host's `alive` node.
    hosts: BTreeMap<String, S>,
    schedulers: Vec<SchedulerHandle>,
}

impl World<ZkStore> {
    async fn new(servers: String, chroot: &str) -> Self {
        let config = ZkConfig::new(servers)
            .with_chroot(chroot)
            .with_session_timeout(Duration::from_secs(10));
        Self::with(Box::new(move || {
            let config = config.clone();
            Box::pin(async move { ZkStore::new(ZkSession::connect(config).await.unwrap()) })
        }))
        .await
    }

    async fn shared(test: &str) -> Option<(Arc<ZkServer>, Self)> {
        logs();
        let zk = shared_zk(test)?;
        let world = Self::new(zk.connect_string(), &format!("/{test}")).await;
        Some((zk, world))
    }

    /// Changes a host's labels as its agent would (read-modify-write under the version).
    async fn relabel(&self, id: &str, labels: &[(&str, &str)]) {
        let hosts = HostStore::new(self.store.clone());
        let mut info = hosts.info(id).await.unwrap().unwrap();
        info.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        hosts
            .publish_agent_fields(id, &(&info).into())
            .await
            .unwrap();
    }

    async fn register(&self, a: &str, v: &str, id: &str, port: u16) {
        Registry::new(self.store.clone())
            .register(
                &app(a),
                &ver(v),
                &inst(id),
                SocketAddr::from(([127, 0, 0, 2], port)),
            )
            .await
            .unwrap();
    }
}

impl World<EtcdStore> {
    /// On the etcd shared by this test binary, under the key prefix `/{test}`.
    async fn etcd(test: &str) -> Option<Self> {
        logs();
        let f = Arc::new(EtcdFixture::shared(test)?);
        Some(
            Self::with(Box::new(move || {
                let f = f.clone();
                Box::pin(async move { f.connect().await.unwrap() })
            }))
            .await,
        )
    }
}

impl World<MemStore> {
    /// On a fresh in-memory store; every handle is a session of its own.
    async fn memory() -> Self {
        logs();
        let base = MemStore::new();
        Self::with(Box::new(move || {
            let handle = base.new_session();
            Box::pin(async move { handle })
        }))
        .await
    }
}

impl<S: Store> World<S> {
    async fn with(connect: Connect<S>) -> Self {
        let store = connect().await;
        Self {
            connect,
            store,
            hosts: BTreeMap::new(),
            schedulers: Vec::new(),
        }
    }

    /// Publishes a host as its agent would, in the host's own session or lease.
    async fn add_host(&mut self, id: &str, info: HostInfo) {
        let handle = (self.connect)().await;
        publish_host(&handle, id, &info).await;
        self.hosts.insert(id.to_owned(), handle);
    }

    /// The host's agent goes away: its session closes, its `alive` node vanishes.
    async fn kill_host(&mut self, id: &str) {
        self.hosts.remove(id).unwrap().close().await;
    }

    async fn scheduler(&mut self, name: &str, grace: Duration) {
        let store = (self.connect)().await;
        let config = SchedulerConfig {
            host_grace: grace,
            resync: Duration::from_secs(2),
            name: name.into(),
            ..SchedulerConfig::default()
        };
        self.schedulers.push(Scheduler::new(store, config).spawn());
    }

    async fn deploy(&self, d: &Deployment) {
        let (a, v) = key_of(d);
        control::deploy(&self.store, &a, &v, d).await.unwrap();
    }

    async fn status(&self, a: &str, v: &str) -> Option<DeploymentStatus> {
        control::status(&self.store, &app(a), &ver(v))
            .await
            .unwrap()
    }

    /// The status, or `None` also while the read fails (a ZooKeeper leader change).
    async fn try_status(&self, a: &str, v: &str) -> Option<DeploymentStatus> {
        control::status(&self.store, &app(a), &ver(v))
            .await
            .ok()
            .flatten()
    }

    /// Waits until the status of `a:v` satisfies `ok`; returns it.
    async fn wait_status(
        &self,
        a: &str,
        v: &str,
        what: &str,
        ok: impl Fn(&DeploymentStatus) -> bool,
    ) -> DeploymentStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.try_status(a, v).await;
            if let Some(s) = &s
                && ok(s)
            {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{a}:{v}: timed out waiting for {what}; status: {s:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Per host, its instance ids by app:version; checks on the way that every host's
    /// `allocated` is exactly the sum of its assignments and within its capacity.
    async fn audit(&self) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
        let snap = snapshot::read(&self.store).await.unwrap();
        assert!(snap.bad_hosts.is_empty(), "{:?}", snap.bad_hosts);
        let mut out = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for h in snap.hosts.values() {
            let used = h.used();
            assert_eq!(
                h.info.allocated, used,
                "{}: allocated is the sum of its assignments",
                h.id
            );
            let cap = h.info.capacity;
            assert!(
                used.memory <= cap.memory
                    && used.cpu_shares <= cap.cpu_shares
                    && used.instances <= cap.instances,
                "{}: over capacity: {used:?} > {cap:?}",
                h.id
            );
            let mut by_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (id, a) in &h.instances {
                assert!(seen.insert(id.clone()), "instance {id} placed twice");
                by_key
                    .entry(format!("{}:{}", a.app, a.version))
                    .or_default()
                    .insert(id.to_string());
            }
            out.insert(h.id.clone(), by_key);
        }
        out
    }

    /// Waits until every scheduler has run `n` more passes (each reads everything anew).
    async fn more_passes(&self, n: u64) {
        let target: Vec<u64> = self
            .schedulers
            .iter()
            .map(|s| s.stats().passes + n)
            .collect();
        let deadline = Instant::now() + WAIT;
        while self
            .schedulers
            .iter()
            .zip(&target)
            .any(|(s, t)| s.stats().passes < *t)
        {
            assert!(Instant::now() < deadline, "schedulers stopped passing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn key_of(d: &Deployment) -> (AppId, Version) {
    let (_, rest) = d.image.rsplit_once('/').unwrap();
    let (a, v) = rest.split_once(':').unwrap();
    (app(a), ver(v))
}

fn count(audit: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>, key: &str) -> usize {
    audit
        .values()
        .filter_map(|k| k.get(key))
        .map(BTreeSet::len)
        .sum()
}

fn on(
    audit: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    host: &str,
    key: &str,
) -> BTreeSet<String> {
    audit[host].get(key).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_places_all_replicas_and_the_status_follows_registry_and_agents() {
    let Some((_zk, mut w)) = World::shared("sched_deploy").await else {
        return;
    };
    w.add_host("h1", host_info(3 * GIB, 10, &[])).await;
    w.add_host("h2", host_info(2 * GIB, 10, &[])).await;
    w.add_host("h3", host_info(2 * GIB, 10, &[])).await;
    w.scheduler("s1", Duration::from_secs(30)).await;
    let mut d = deployment("web", "v1", 3, 512);
    d.sidecars.push(caas_backends::Sidecar {
        name: "cache".into(),
        image: "127.0.0.1:5000/cache:v1".into(),
        memory: caas_backends::assignment::MemoryLimit::from_bytes(64 * MIB),
        cpu_shares: 5,
    });
    w.deploy(&d).await;
    let s = w
        .wait_status("web", "v1", "3 instances", |s| s.instances.len() == 3)
        .await;
    assert_eq!(s.phase, Phase::Deploying);
    assert!(
        s.instances
            .iter()
            .all(|i| i.state == "assigned" && i.health == Health::Unknown)
    );
    // Most free memory, 576 MiB each: h1 3072 -> 2496 -> 1920 MiB free, then h2 (2048,
    // ahead of h3 by its id).
    let audit = w.audit().await;
    assert_eq!(
        on(&audit, "h1", "web:v1"),
        BTreeSet::from(["web-v1-0".into(), "web-v1-1".into()])
    );
    assert_eq!(
        on(&audit, "h2", "web:v1"),
        BTreeSet::from(["web-v1-2".into()])
    );
    let h1 = HostStore::new(w.store.clone())
        .info("h1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        h1.allocated.memory,
        2 * (512 + 64) * MIB,
        "main container and sidecar"
    );
    assert_eq!(
        (h1.allocated.cpu_shares, h1.allocated.instances),
        (2 * 15, 2)
    );
    // The assignment is the deployment's, sidecar included.
    let a = HostStore::new(w.store.clone())
        .assignments("h2")
        .await
        .unwrap();
    assert_eq!(
        a[0].assignment.as_ref().unwrap(),
        &d.assignment(&app("web"), &ver("v1"))
    );

    // The agent reports an instance; another registers: the status follows both.
    let report = InstanceStatus {
        app: app("web"),
        version: ver("v1"),
        state: InstanceState::Unhealthy,
        address: Some("127.0.0.2:25702".into()),
        container: None,
        restarts: 1,
        started_at_ms: None,
        message: Some("GET /_ping: 500".into()),
    };
    caas_backends::store::put(
        &w.store,
        "/hosts/h2/status/web-v1-2",
        &serde_json::to_vec(&report).unwrap(),
    )
    .await
    .unwrap();
    w.register("web", "v1", "web-v1-0", 25701).await;
    let s = w
        .wait_status("web", "v1", "agent report and registration", |s| {
            s.instances[0].health == Health::Healthy && s.instances[2].state == "unhealthy"
        })
        .await;
    assert_eq!(s.instances[0].address.as_deref(), Some("127.0.0.2:25701"));
    assert_eq!(s.instances[2].health, Health::Unhealthy);
    assert_eq!(s.instances[2].address.as_deref(), Some("127.0.0.2:25702"));
    w.register("web", "v1", "web-v1-1", 25702).await;
    w.register("web", "v1", "web-v1-2", 25703).await;
    w.wait_status("web", "v1", "running", |s| s.phase == Phase::Running)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_says_why_and_is_placed_when_a_host_joins() {
    let Some((_zk, mut w)) = World::shared("sched_unschedulable").await else {
        return;
    };
    w.add_host("h1", host_info(2 * GIB, 10, &[("zone", "a")]))
        .await;
    w.add_host("h2", host_info(8 * GIB, 10, &[("zone", "b")]))
        .await;
    w.scheduler("s1", Duration::from_secs(30)).await;
    // A bad node next to it never stops the scheduler.
    caas_backends::store::put(&w.store, "/deployments/broken/v1", b"{not json")
        .await
        .unwrap();
    let mut d = deployment("big", "v1", 2, 1536);
    d.spread = true;
    d.constraints = vec!["zone==a".parse().unwrap()];
    w.deploy(&d).await;
    let s = w
        .wait_status("big", "v1", "unschedulable", |s| {
            s.phase == Phase::Unschedulable
        })
        .await;
    assert!(s.instances.is_empty(), "all or nothing: {s:?}");
    assert_eq!(s.rejected["constraint zone==a"], ["h2"]);
    assert_eq!(s.rejected["spread (max 1 per host)"], ["h1"]);
    assert_eq!(
        s.message.as_deref(),
        Some(
            "cannot place 2 instances (only 1 fit): constraint zone==a rejected h2; spread (max 1 per host) rejected h1"
        )
    );
    let broken = w
        .wait_status("broken", "v1", "invalid", |s| s.phase == Phase::Invalid)
        .await;
    assert!(broken.message.unwrap().contains("invalid deployment JSON"));
    // A second zone-a host joins: both instances are placed, one per host.
    w.add_host("h3", host_info(2 * GIB, 10, &[("zone", "a")]))
        .await;
    let s = w
        .wait_status("big", "v1", "placed", |s| s.instances.len() == 2)
        .await;
    assert_eq!(s.phase, Phase::Deploying);
    assert!(s.rejected.is_empty());
    let hosts: BTreeSet<&str> = s.instances.iter().map(|i| i.host.as_str()).collect();
    assert_eq!(hosts, BTreeSet::from(["h1", "h3"]));
    w.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_empties_the_most_concentrated_host_and_undeploy_releases_all() {
    let Some((_zk, mut w)) = World::shared("sched_scale").await else {
        return;
    };
    w.add_host("h1", host_info(8 * GIB, 10, &[])).await;
    w.add_host("h2", host_info(6 * GIB, 10, &[])).await;
    w.scheduler("s1", Duration::from_secs(30)).await;
    w.deploy(&deployment("web", "v1", 2, 1024)).await;
    w.wait_status("web", "v1", "2 placed", |s| s.instances.len() == 2)
        .await;
    control::scale(&w.store, &app("web"), &ver("v1"), 5)
        .await
        .unwrap();
    w.wait_status("web", "v1", "5 placed", |s| s.instances.len() == 5)
        .await;
    let audit = w.audit().await;
    // Free memory decides (1 GiB each): h1 8 -> 7 -> 6 for the first two; then h1 and h2
    // tie at 6 (smaller id: h1), h2, h1 again: 4 on h1, 1 on h2.
    assert_eq!(on(&audit, "h1", "web:v1").len(), 4, "{audit:?}");
    control::scale(&w.store, &app("web"), &ver("v1"), 2)
        .await
        .unwrap();
    let s = w
        .wait_status("web", "v1", "2 left", |s| s.instances.len() == 2)
        .await;
    let audit = w.audit().await;
    // Three removed from h1 (the most concentrated) until it ties h2 at one each.
    assert_eq!(on(&audit, "h1", "web:v1").len(), 1, "{audit:?}");
    assert_eq!(on(&audit, "h2", "web:v1").len(), 1, "{audit:?}");
    assert_eq!(s.desired, 2);
    let versions = control::undeploy(&w.store, &app("web"), None)
        .await
        .unwrap();
    assert_eq!(versions, [ver("v1")]);
    let audit = w.audit().await;
    assert_eq!(count(&audit, "web:v1"), 0);
    for h in ["h1", "h2"] {
        let info = HostStore::new(w.store.clone())
            .info(h)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.allocated, Resources::default(), "{h} released");
    }
    assert!(w.store.get("/deployments/web").await.unwrap().is_none());
    // The schedulers keep nothing of it.
    w.more_passes(1).await;
    assert_eq!(count(&w.audit().await, "web:v1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_host_loses_its_instances_after_the_grace_period() {
    let Some((_zk, mut w)) = World::shared("sched_lost").await else {
        return;
    };
    w.add_host("h1", host_info(8 * GIB, 10, &[])).await;
    w.add_host("h2", host_info(4 * GIB, 10, &[])).await;
    w.scheduler("s1", Duration::from_millis(1500)).await;
    w.deploy(&deployment("web", "v1", 2, 512)).await;
    w.wait_status("web", "v1", "placed", |s| s.instances.len() == 2)
        .await;
    assert_eq!(on(&w.audit().await, "h1", "web:v1").len(), 2);
    let killed_at = Instant::now();
    w.kill_host("h1").await;
    let s = w
        .wait_status("web", "v1", "host down", |s| {
            s.instances.iter().all(|i| i.state == "host_down")
        })
        .await;
    assert!(
        s.instances.iter().all(|i| i.host == "h1"),
        "not moved within the grace period"
    );
    let s = w
        .wait_status("web", "v1", "moved", |s| {
            s.instances.len() == 2 && s.instances.iter().all(|i| i.host == "h2")
        })
        .await;
    assert!(
        killed_at.elapsed() >= Duration::from_millis(1500),
        "moved before the grace period"
    );
    let ids: BTreeSet<&str> = s.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from(["web-v1-2", "web-v1-3"]), "new ids");
    let audit = w.audit().await;
    assert!(
        audit["h1"].is_empty(),
        "lost host's assignments deleted: {audit:?}"
    );
    let h1 = HostStore::new(w.store.clone())
        .info("h1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        h1.allocated,
        Resources::default(),
        "and its allocation released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_moves_instances_and_removes_each_once_its_replacement_is_healthy() {
    let Some((_zk, mut w)) = World::shared("sched_drain").await else {
        return;
    };
    w.add_host("h1", host_info(8 * GIB, 10, &[])).await;
    w.add_host("h2", host_info(4 * GIB, 10, &[])).await;
    w.scheduler("s1", Duration::from_secs(30)).await;
    w.deploy(&deployment("web", "v1", 2, 512)).await;
    w.wait_status("web", "v1", "placed", |s| s.instances.len() == 2)
        .await;
    w.register("web", "v1", "web-v1-0", 1).await;
    w.register("web", "v1", "web-v1-1", 2).await;
    w.wait_status("web", "v1", "running", |s| s.phase == Phase::Running)
        .await;
    control::drain(&w.store, "h1", true).await.unwrap();
    let s = w
        .wait_status("web", "v1", "replacements", |s| s.instances.len() == 4)
        .await;
    assert_eq!(s.instances.iter().filter(|i| i.draining).count(), 2);
    // Replacements placed but not healthy: after more passes the old ones are still there.
    w.more_passes(2).await;
    assert_eq!(on(&w.audit().await, "h1", "web:v1").len(), 2);
    w.register("web", "v1", "web-v1-2", 3).await;
    let s = w
        .wait_status("web", "v1", "one old instance removed", |s| {
            s.instances.len() == 3
        })
        .await;
    assert_eq!(s.instances.iter().filter(|i| i.draining).count(), 1);
    w.register("web", "v1", "web-v1-3", 4).await;
    let s = w
        .wait_status("web", "v1", "drained", |s| s.phase == Phase::Running)
        .await;
    assert!(s.instances.iter().all(|i| i.host == "h2"), "{s:?}");
    let audit = w.audit().await;
    assert!(audit["h1"].is_empty());
    // The host takes nothing new while draining.
    w.deploy(&deployment("other", "v1", 1, 64)).await;
    let s = w
        .wait_status("other", "v1", "placed", |s| s.instances.len() == 1)
        .await;
    assert_eq!(s.instances[0].host, "h2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_runs_one_instance_per_eligible_host_and_follows_hosts() {
    let Some((_zk, mut w)) = World::shared("sched_global").await else {
        return;
    };
    w.add_host("h1", host_info(8 * GIB, 10, &[("zone", "a")]))
        .await;
    w.add_host("h2", host_info(8 * GIB, 10, &[("zone", "b")]))
        .await;
    w.scheduler("s1", Duration::from_millis(1000)).await;
    let mut d = deployment("agent", "v1", 0, 64);
    d.replicas = None;
    d.global = true;
    d.constraints = vec!["zone==a".parse().unwrap()];
    w.deploy(&d).await;
    let s = w
        .wait_status("agent", "v1", "on h1", |s| s.instances.len() == 1)
        .await;
    assert_eq!((s.instances[0].host.as_str(), s.desired), ("h1", 1));
    assert_eq!(s.rejected["constraint zone==a"], ["h2"]);
    // A host joins: it gets one.
    w.add_host("h3", host_info(8 * GIB, 10, &[("zone", "a")]))
        .await;
    w.wait_status("agent", "v1", "on h1 and h3", |s| {
        s.instances
            .iter()
            .map(|i| i.host.as_str())
            .collect::<Vec<_>>()
            == ["h1", "h3"]
    })
    .await;
    // h2's labels change: it gets one; h1's change: it loses its own.
    w.relabel("h2", &[("zone", "a")]).await;
    w.relabel("h1", &[("zone", "c")]).await;
    w.wait_status("agent", "v1", "on h2 and h3", |s| {
        let mut hosts: Vec<&str> = s.instances.iter().map(|i| i.host.as_str()).collect();
        hosts.sort();
        hosts == ["h2", "h3"]
    })
    .await;
    // A host leaves: past the grace period its instance is deleted, not moved.
    w.kill_host("h3").await;
    let s = w
        .wait_status("agent", "v1", "only h2", |s| {
            s.instances.len() == 1 && s.instances[0].host == "h2"
        })
        .await;
    assert_eq!(s.desired, 1);
    let audit = w.audit().await;
    assert_eq!(count(&audit, "agent:v1"), 1);
}

/// The race: three schedulers, four hosts, 200 instances in 20 deployments created at once
/// and then rescaled, while a watcher checks every host info it sees against its capacity.
async fn race<S: Store>(w: &mut World<S>, label: &str, mid_race: impl AsyncFnOnce(&World<S>)) {
    // 4 hosts × 54 slots of 64 MiB (3.375 GiB) = 216 slots for 200 instances.
    for h in ["h1", "h2", "h3", "h4"] {
        w.add_host(h, host_info(54 * 64 * MIB, 60, &[])).await;
    }
    for name in ["s1", "s2", "s3"] {
        w.scheduler(name, Duration::from_secs(60)).await;
    }
    // The watcher: every version of every host node it sees must be within capacity.
    let over = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let monitor = {
        let store = (w.connect)().await;
        let (over, seen) = (over.clone(), seen.clone());
        tokio::spawn(async move {
            let mut watch = store.watch("/hosts");
            while let Some(event) = watch.next().await {
                let WatchEvent::Changed(path) = event else {
                    continue;
                };
                if path.matches('/').count() != 2 {
                    continue;
                }
                // Gone, or the empty parent made before the agent's first write.
                let Ok(Some(node)) = store.get(&path).await else {
                    continue;
                };
                let Ok(info) = serde_json::from_slice::<HostInfo>(&node.data) else {
                    continue;
                };
                seen.fetch_add(1, Ordering::Relaxed);
                let (a, c) = (info.allocated, info.capacity);
                if a.memory > c.memory || a.instances > c.instances || a.cpu_shares > c.cpu_shares {
                    over.store(true, Ordering::Relaxed);
                }
            }
        })
    };
    let started = Instant::now();
    // 20 deployments of 6 (120 instances), all at once.
    let world: &World<S> = w;
    let deploys = (0..20).map(|i| deployment(&format!("app{i}"), "v1", 6, 64));
    futures_util::future::join_all(deploys.map(|d| async move { world.deploy(&d).await })).await;
    mid_race(w).await;
    for i in 0..20 {
        w.wait_status(&format!("app{i}"), "v1", "6 instances", |s| {
            s.instances.len() == 6
        })
        .await;
    }
    // Then every one to 10 (200): scale-ups racing across the schedulers for the last slots.
    for i in 0..20 {
        // An operator retries a command that failed on a lost connection.
        let deadline = Instant::now() + WAIT;
        while let Err(e) = control::scale(&w.store, &app(&format!("app{i}")), &ver("v1"), 10).await
        {
            assert!(Instant::now() < deadline, "scale app{i}: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for i in 0..20 {
        w.wait_status(&format!("app{i}"), "v1", "10 instances", |s| {
            s.instances.len() == 10
        })
        .await;
    }
    let elapsed = started.elapsed();
    let audit = w.audit().await;
    let total: usize = (0..20).map(|i| count(&audit, &format!("app{i}:v1"))).sum();
    assert_eq!(total, 200, "none lost, none extra: {audit:#?}");
    for i in 0..20 {
        let s = w.status(&format!("app{i}"), "v1").await.unwrap();
        let listed: BTreeSet<String> = s.instances.iter().map(|x| x.id.to_string()).collect();
        let actual: BTreeSet<String> = audit
            .values()
            .filter_map(|k| k.get(&format!("app{i}:v1")))
            .flatten()
            .cloned()
            .collect();
        assert_eq!(
            listed, actual,
            "app{i}: the status lists exactly the assignments"
        );
    }
    assert!(
        !over.load(Ordering::Relaxed),
        "a host was seen over its capacity"
    );
    assert!(
        seen.load(Ordering::Relaxed) > 0,
        "the watcher saw host changes"
    );
    monitor.abort();
    let stats: Vec<_> = w.schedulers.iter().map(SchedulerHandle::stats).collect();
    let commits: u64 = stats.iter().map(|s| s.commits).sum();
    let conflicts: u64 = stats.iter().map(|s| s.conflicts + s.unknown_outcomes).sum();
    eprintln!(
        "{label}: 200 instances in {:.2} s by 3 schedulers: {commits} commits, {conflicts} refused or unknown, per scheduler {:?}",
        elapsed.as_secs_f64(),
        stats
            .iter()
            .map(|s| (s.commits, s.conflicts, s.unknown_outcomes, s.gave_up))
            .collect::<Vec<_>>()
    );
    assert!(commits >= 20, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_race_200_instances_over_four_hosts() {
    let Some((_zk, mut w)) = World::shared("sched_race").await else {
        return;
    };
    race(&mut w, "race", async |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_race_200_instances_over_four_hosts_on_etcd() {
    let Some(mut w) = World::etcd("sched_race_etcd").await else {
        return;
    };
    race(&mut w, "race on etcd", async |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_race_200_instances_over_four_hosts_in_memory() {
    let mut w = World::memory().await;
    race(&mut w, "race in memory", async |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zookeeper_leader_dies_in_the_middle_of_deploys() {
    logs();
    let Some(mut ensemble) =
        ZkEnsemble::start_or_skip("the_zookeeper_leader_dies_in_the_middle_of_deploys")
    else {
        return;
    };
    let leader = ensemble.leader().expect("a leader");
    let mut w = World::new(ensemble.connect_string(), "/sched_ensemble").await;
    let ens = std::sync::Mutex::new(&mut ensemble);
    race(&mut w, "leader kill", async |w| {
        // Kill the leader while placements are being committed: after the first few.
        let deadline = Instant::now() + WAIT;
        while w.schedulers.iter().map(|s| s.stats().placed).sum::<u64>() < 24 {
            assert!(Instant::now() < deadline, "no placements");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ens.lock().unwrap().kill(leader).unwrap();
        let placed: u64 = w.schedulers.iter().map(|s| s.stats().placed).sum();
        eprintln!(
            "killed the leader (server {}) with {placed} of 120 placed",
            leader + 1
        );
    })
    .await;
    let stats: Vec<_> = w.schedulers.iter().map(SchedulerHandle::stats).collect();
    eprintln!(
        "new leader: server {}; unknown outcomes {}",
        ensemble.leader().map_or(0, |l| l + 1),
        stats.iter().map(|s| s.unknown_outcomes).sum::<u64>()
    );
}
