//! End to end: rolling updates through the real pieces: a host agent, a scheduler, a rollout
//! controller, a ZooKeeper-fed gateway, the Docker Engine and the registry. Client loops
//! hold keep-alive connections to the gateway and count every answer and every failure
//! while:
//!
//! - (a) hello goes from v1 to v2 in steps 10, 50, 100: zero failed requests, the answers
//!   move from v1 to v2, v1's containers are drained and removed;
//! - (b) v2's `/_ping` always fails (`FAIL_PING=1` baked into its image): the update rolls
//!   back by itself at the health deadline, zero failed requests, every answer from v1, v2
//!   removed and the rollout node saying why;
//! - (c) the controller is killed after the first step; a new one carries the update to
//!   its end from the stored phase.
//!
//! Prints `REQUESTS` lines with the counts. One ZooKeeper and one image build per test
//! process (each test works under its own chroot, on its own loopback address). Without
//! a Docker daemon the tests print `SKIPPED` and pass, except under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caas_backends::assignment::HealthPolicy;
use caas_backends::rollout::controller::{ControllerConfig, ControllerHandle, RolloutController};
use caas_backends::rollout::{Outcome, Phase, RolloutRequest, RolloutState, Rollouts};
use caas_backends::scheduler::control;
use caas_backends::testing::ZkServer;
use caas_backends::testing::docker::{docker_or_skip, hello_image, registry, remove_labelled};
use caas_backends::zk::{AppStore, ZkConfig, ZkDiscovery, ZkSession};
use caas_backends::{
    Agent, AgentConfig, AgentHandle, Deployment, Scheduler, SchedulerConfig, SchedulerHandle,
    Store, ZkStore,
};
use caas_core::{AppId, AppSpec, Domain, Version};
use caas_gateway::{Gateway, GatewayConfig, Limits};
use tokio::net::TcpListener;

const CLIENTS: usize = 4;

fn v(s: &str) -> Version {
    Version::new(s).unwrap()
}

fn sh(args: &[&str]) {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {out:?}");
}

/// `{registry}/{app}:{version}`: the hello image under the app's name, pushed.
fn image(app: &str, version: &str) -> String {
    let hello = hello_image();
    let image = format!("{}/{app}:{version}", registry());
    sh(&["tag", &hello, &image]);
    sh(&["push", &image]);
    image
}

/// `{registry}/{app}:{version}` whose `/_ping` always fails (`FAIL_PING=1`), pushed.
fn failing_image(app: &str, version: &str) -> String {
    let hello = hello_image();
    let image = format!("{}/{app}:{version}", registry());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {hello}\nENV FAIL_PING=1\n"),
    )
    .unwrap();
    let buildx = Command::new("docker")
        .args(["buildx", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let out = Command::new("docker")
        .args(["build", "-q", "-t", &image])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", if buildx { "1" } else { "0" })
        .output()
        .unwrap();
    assert!(out.status.success(), "docker build: {out:?}");
    sh(&["push", &image]);
    image
}

fn deployment(image: String) -> Deployment {
    let mut d = Deployment::new(image, 8080, 2);
    d.memory = "32m".parse().unwrap();
    d.cpu_shares = 64;
    d.health = HealthPolicy {
        interval_ms: 300,
        timeout_ms: 250,
        fall: 2,
        rise: 1,
        grace_ms: 30_000,
        ..HealthPolicy::default()
    };
    d
}

/// Everything one test runs, under its own chroot and loopback address.
struct Cluster {
    app: AppId,
    label: String,
    zk: Arc<ZkServer>,
    chroot: String,
    agent: Option<AgentHandle>,
    scheduler: Option<SchedulerHandle>,
    gateway: SocketAddr,
    rollouts: Rollouts<ZkStore>,
}

impl Cluster {
    fn zk(&self) -> ZkConfig {
        ZkConfig::new(self.zk.connect_string()).with_chroot(&self.chroot)
    }

    async fn start(test: &str, app: &str, ip: &str) -> Option<Self> {
        docker_or_skip(test).await?;
        let zk = caas_backends::testing::shared_zk(test)?;
        let label = format!("caas.test=rollout-{app}");
        remove_labelled(&label);
        let chroot = format!("/rollout-{app}");
        let config = || ZkConfig::new(zk.connect_string()).with_chroot(&chroot);
        let ip: IpAddr = ip.parse().unwrap();
        let mut agent = AgentConfig::new(config(), format!("h-{app}"), ip);
        agent.restart_backoff = Duration::from_millis(200);
        agent.resync = Duration::from_secs(1);
        agent.drain_delay = Duration::from_millis(1_000);
        agent.stop_timeout = Duration::from_secs(5);
        agent.container_labels = BTreeMap::from([("caas.test".into(), format!("rollout-{app}"))]);
        let agent = Agent::start(agent).await.unwrap();
        let scheduler = Scheduler::new(
            ZkStore::new(ZkSession::connect(config()).await.unwrap()),
            SchedulerConfig {
                resync: Duration::from_secs(1),
                name: format!("{app}-scheduler"),
                ..SchedulerConfig::default()
            },
        )
        .spawn();
        let gw = Gateway::builder(GatewayConfig {
            domains: vec![Domain::new("caas.local").unwrap()],
            limits: Limits {
                upstream_connect_timeout_ms: 1_000,
                upstream_response_timeout_ms: 5_000,
                ..Limits::default()
            },
            ..GatewayConfig::default()
        })
        .discovery(ZkDiscovery::connect(config()).await.unwrap())
        .build()
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = listener.local_addr().unwrap();
        tokio::spawn(async move { gw.serve(listener, std::future::pending()).await });
        let rollouts = Rollouts::zk(ZkSession::connect(config()).await.unwrap());
        Some(Self {
            app: AppId::new(app).unwrap(),
            label,
            chroot,
            zk,
            agent: Some(agent),
            scheduler: Some(scheduler),
            gateway,
            rollouts,
        })
    }

    fn controller(&self, name: &str) -> ControllerHandle {
        RolloutController::new(
            self.rollouts.clone(),
            ControllerConfig {
                tick: Duration::from_millis(100),
                name: name.into(),
                ..ControllerConfig::default()
            },
        )
        .spawn()
    }

    /// v1 deployed, routed by default, running healthy, answering through the gateway.
    async fn deploy_v1(&self) {
        let image = tokio::task::spawn_blocking({
            let app = self.app.to_string();
            move || image(&app, "v1")
        })
        .await
        .unwrap();
        let session = ZkSession::connect(self.zk()).await.unwrap();
        let spec = AppSpec {
            default_version: Some(v("v1")),
            ..AppSpec::default()
        };
        AppStore::new(session.clone())
            .put_app(&self.app, &spec)
            .await
            .unwrap();
        session.close();
        control::deploy(
            self.rollouts.store(),
            &self.app,
            &v("v1"),
            &deployment(image),
        )
        .await
        .unwrap();
        self.until("v1 running", Duration::from_secs(120), async || {
            let s = control::status(self.rollouts.store(), &self.app, &v("v1"))
                .await
                .unwrap();
            s.is_some_and(|s| s.phase == caas_backends::scheduler::Phase::Running)
        })
        .await;
        let gw = self.gateway;
        let host = format!("{}.caas.local", self.app);
        self.until(
            "v1 answering through the gateway",
            Duration::from_secs(30),
            async || {
                let host = host.clone();
                tokio::task::spawn_blocking(move || once(gw, &host) == Some("v1".into()))
                    .await
                    .unwrap()
            },
        )
        .await;
    }

    async fn until(&self, what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
        let t0 = Instant::now();
        while !f().await {
            assert!(
                t0.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn state(&self) -> RolloutState {
        self.rollouts.status(&self.app).await.unwrap().unwrap()
    }

    async fn until_phase(
        &self,
        limit: Duration,
        want: impl Fn(&RolloutState) -> bool,
    ) -> RolloutState {
        let t0 = Instant::now();
        loop {
            let s = self.state().await;
            if want(&s) {
                return s;
            }
            assert!(t0.elapsed() < limit, "timed out; the rollout is at {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Running containers of the app's `version`.
    fn containers(&self, version: &str) -> usize {
        let out = Command::new("docker")
            .args(["ps", "-q", "--filter"])
            .arg(format!("label={}", self.label))
            .args(["--filter", &format!("label=caas.app={}", self.app)])
            .args(["--filter", &format!("label=caas.version={version}")])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .count()
    }

    async fn deployed(&self, version: &str) -> bool {
        let path = format!("/deployments/{}/{version}", self.app);
        self.rollouts.store().get(&path).await.unwrap().is_some()
    }

    async fn stop(mut self) {
        if let Some(s) = self.scheduler.take() {
            s.shutdown().await;
        }
        if let Some(a) = self.agent.take() {
            a.shutdown().await;
        }
        self.rollouts.store().session().close();
        remove_labelled(&self.label);
    }
}

/// One request on a new connection: the version that answered.
fn once(gw: SocketAddr, host: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&gw, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.starts_with("HTTP/1.1 200")
        .then(|| version_of(&resp))?
}

fn version_of(body: &str) -> Option<String> {
    let at = body.find("\"version\":\"")? + 11;
    Some(body[at..].split('"').next()?.to_owned())
}

/// What the client loops saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    failures: AtomicU64,
    by_version: Mutex<BTreeMap<String, u64>>,
    /// The failures, for the assertion message (first 20).
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, why: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock().unwrap();
        if e.len() < 20 {
            e.push(why);
        }
    }
    fn versions(&self) -> BTreeMap<String, u64> {
        self.by_version.lock().unwrap().clone()
    }
}

/// `CLIENTS` threads sending keep-alive requests through the gateway until `stop`.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(gw: SocketAddr, host: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let threads = (0..CLIENTS)
            .map(|_| {
                let (stop, tally, host) = (stop.clone(), tally.clone(), host.clone());
                std::thread::spawn(move || client(gw, &host, &stop, &tally))
            })
            .collect();
        Self {
            stop,
            tally,
            threads,
        }
    }

    fn requests(&self) -> u64 {
        self.tally.requests.load(Ordering::Relaxed)
    }

    fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.tally
    }
}

/// Reads one response: status, whether the server closes after it, the body.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, bool, String)> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "closed before a response head ({} bytes read)",
                buf.len()
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no content-length in {head:?}")))?;
    while buf.len() < end + len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("closed inside a body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[end..end + len]).into_owned();
    buf.drain(..end + len);
    Ok((status, head.contains("connection: close"), body))
}

fn client(gw: SocketAddr, host: &str, stop: &AtomicBool, tally: &Tally) {
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect_timeout(&gw, Duration::from_secs(2)) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    buf.clear();
                    conn.insert(s)
                }
                Err(e) => {
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                    tally.fail(format!("connect to the gateway: {e}"));
                    continue;
                }
            },
        };
        tally.requests.fetch_add(1, Ordering::Relaxed);
        let sent = write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let answer = sent.and_then(|()| read_response(s, &mut buf));
        match answer {
            Ok((200, close, body)) => {
                let version = version_of(&body).unwrap_or_else(|| "?".into());
                *tally.by_version.lock().unwrap().entry(version).or_default() += 1;
                if close {
                    conn = None;
                }
            }
            Ok((status, _, body)) => {
                tally.fail(format!("{status}: {body}"));
                conn = None;
            }
            Err(e) => {
                tally.fail(format!("I/O: {e}"));
                conn = None;
            }
        }
    }
}

fn report(what: &str, t: &Tally) {
    eprintln!(
        "REQUESTS {what}: {} requests through the gateway ({CLIENTS} keep-alive clients), {} failed, by version {:?}",
        t.requests.load(Ordering::Relaxed),
        t.failures.load(Ordering::Relaxed),
        t.versions()
    );
}

/// The moves left from `s` to Done, one commit each, for steps that end at 100 %: each step
/// not reached yet (the last one leads to Draining), then Draining to Done.
fn moves_left(s: &RolloutState) -> u64 {
    assert_eq!(s.steps.last(), Some(&100), "{s:?}");
    match s.phase {
        Phase::Shifting => (s.steps.len() - s.step.map_or(0, |i| i + 1)) as u64 + 1,
        Phase::Draining => 1,
        _ => 0,
    }
}

fn request(to: &str, image: String) -> RolloutRequest {
    let mut r = RolloutRequest::new(v(to), image);
    r.steps = vec![10, 50, 100];
    r.step_wait = Duration::from_secs(2);
    r.drain_wait = Duration::from_secs(2);
    r.health_deadline = Duration::from_secs(60);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_under_load_loses_no_request() {
    let Some(c) = Cluster::start("update_under_load_loses_no_request", "rolla", "127.0.0.5").await
    else {
        return;
    };
    let controller = c.controller("a");
    c.deploy_v1().await;
    let load = Load::start(c.gateway, format!("{}.caas.local", c.app));
    c.until("load running", Duration::from_secs(10), async || {
        load.requests() > 50
    })
    .await;
    let v2 = tokio::task::spawn_blocking(|| image("rolla", "v2"))
        .await
        .unwrap();
    let t0 = Instant::now();
    c.rollouts.start(&c.app, request("v2", v2)).await.unwrap();
    let done = c
        .until_phase(Duration::from_secs(180), |s| s.phase.is_terminal())
        .await;
    assert_eq!(
        (done.phase, done.outcome, done.reason.as_deref()),
        (Phase::Done, Some(Outcome::Succeeded), None)
    );
    eprintln!("TIMING update v1 -> v2 done in {:?}", t0.elapsed());
    // v1's instances are drained (deregistered, drain delay, SIGTERM) and removed while
    // the load goes on.
    c.until(
        "v1's containers removed",
        Duration::from_secs(60),
        async || c.containers("v1") == 0,
    )
    .await;
    let after = load.requests();
    c.until(
        "more load after v1 is gone",
        Duration::from_secs(10),
        async || load.requests() > after + 200,
    )
    .await;
    let tally = load.finish();
    report("update v1 -> v2", &tally);
    let errors = tally.errors.lock().unwrap().clone();
    assert_eq!(tally.failures.load(Ordering::Relaxed), 0, "{errors:#?}");
    let by = tally.versions();
    assert!(
        by.get("v1").copied().unwrap_or(0) > 0 && by.get("v2").copied().unwrap_or(0) > 0,
        "{by:?}"
    );
    assert!(!c.deployed("v1").await, "v1's deployment removed");
    assert_eq!(c.containers("v2"), 2);
    let host = format!("{}.caas.local", c.app);
    let gw = c.gateway;
    let answers: Vec<Option<String>> =
        tokio::task::spawn_blocking(move || (0..10).map(|_| once(gw, &host)).collect())
            .await
            .unwrap();
    assert!(
        answers.iter().all(|a| a.as_deref() == Some("v2")),
        "{answers:?}"
    );
    controller.shutdown().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_update_rolls_back_under_load_losing_no_request() {
    let Some(c) = Cluster::start(
        "unhealthy_update_rolls_back_under_load_losing_no_request",
        "rollb",
        "127.0.0.6",
    )
    .await
    else {
        return;
    };
    let controller = c.controller("a");
    c.deploy_v1().await;
    let load = Load::start(c.gateway, format!("{}.caas.local", c.app));
    c.until("load running", Duration::from_secs(10), async || {
        load.requests() > 50
    })
    .await;
    let v2 = tokio::task::spawn_blocking(|| failing_image("rollb", "v2"))
        .await
        .unwrap();
    let mut req = request("v2", v2);
    req.health_deadline = Duration::from_secs(8);
    c.rollouts.start(&c.app, req).await.unwrap();
    // v2's containers start (and never pass a ping) before the deadline.
    c.until(
        "v2's containers running",
        Duration::from_secs(60),
        async || c.containers("v2") == 2,
    )
    .await;
    let end = c
        .until_phase(Duration::from_secs(120), |s| s.phase.is_terminal())
        .await;
    assert_eq!(
        (end.phase, end.outcome),
        (Phase::RolledBack, Some(Outcome::RolledBack))
    );
    let why = end.reason.clone().unwrap();
    assert!(
        why.contains("v2 not healthy within 8s: 0 of 2 instances healthy"),
        "{why}"
    );
    c.until(
        "v2's containers removed",
        Duration::from_secs(60),
        async || c.containers("v2") == 0,
    )
    .await;
    let tally = load.finish();
    report("automatic rollback of v2", &tally);
    let errors = tally.errors.lock().unwrap().clone();
    assert_eq!(tally.failures.load(Ordering::Relaxed), 0, "{errors:#?}");
    let by = tally.versions();
    assert_eq!(
        by.keys().collect::<Vec<_>>(),
        vec!["v1"],
        "only v1 answered: {by:?}"
    );
    assert!(!c.deployed("v2").await, "v2's deployment removed");
    assert!(c.deployed("v1").await);
    assert_eq!(c.containers("v1"), 2, "v1 never stopped");
    eprintln!("ROLLBACK reason: {why}");
    controller.shutdown().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_update_is_replaced_and_the_update_finishes() {
    let Some(c) = Cluster::start(
        "a_controller_killed_mid_update_is_replaced_and_the_update_finishes",
        "rollc",
        "127.0.0.7",
    )
    .await
    else {
        return;
    };
    c.deploy_v1().await;
    let first = c.controller("first");
    let v2 = tokio::task::spawn_blocking(|| image("rollc", "v2"))
        .await
        .unwrap();
    let mut req = request("v2", v2);
    req.step_wait = Duration::from_secs(3);
    c.rollouts.start(&c.app, req).await.unwrap();
    let at = c
        .until_phase(Duration::from_secs(120), |s| s.phase == Phase::Shifting)
        .await;
    assert_eq!(at.step, Some(0));
    first.abort().await;
    // Where the first one left it. Read on the session the controllers share, so ordered
    // after any commit the first had in flight when it was killed: under a slow ZooKeeper
    // (its log's fsync on a busy disk) step 0 may have become visible with its wait nearly
    // over, and the first made the next move before the kill.
    let left_at = c.state().await;
    let left = moves_left(&left_at);
    assert!(left >= 1, "killed mid-update: {left_at:?}");
    let second = c.controller("second");
    let done = c
        .until_phase(Duration::from_secs(120), |s| s.phase.is_terminal())
        .await;
    assert_eq!(done.outcome, Some(Outcome::Succeeded));
    // Counted once stopped: its last commit may be seen in the store before it counts it.
    let second = second.shutdown().await;
    assert!(
        second.commits >= left,
        "the second controller made the {left} remaining moves from {:?} step {:?}: {second:?}",
        left_at.phase,
        left_at.step,
    );
    assert!(!c.deployed("v1").await);
    c.stop().await;
}
