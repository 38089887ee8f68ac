//! End to end: three host agents on one machine (127.0.0.2, .3, .4, each publishing on its
//! own loopback address), a scheduler, a ZooKeeper-fed gateway, the real Docker Engine and
//! registry. Deployments are written as a user's `caasd deploy` would; the test checks where
//! their instances land and that they are routable:
//!
//! - a deployment of 6 with the `spread` strategy lands 2 per host;
//! - one constrained to `zone==a` lands only on the two hosts labelled so;
//! - a global one runs one instance on every host;
//! - one with a sidecar runs both containers on one host, as one unit;
//! - an agent stopped for good (its host gone) sees its instances placed elsewhere and
//!   routable through the gateway within the grace period plus a few seconds.
//!
//! Prints `TIMING` lines. Without a Docker daemon the test prints `SKIPPED` and passes,
//! except under `CI=true`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use caas_backends::assignment::{HealthPolicy, Sidecar};
use caas_backends::scheduler::control;
use caas_backends::scheduler::deployment::{Constraint, Strategy};
use caas_backends::testing::docker::{
    docker_or_skip, hello_image, registry, remove_labelled, sidecar_image,
};
use caas_backends::testing::{ZkServer, ZkServerBuilder};
use caas_backends::zk::{HostStore, ZkConfig, ZkDiscovery, ZkSession};
use caas_backends::{
    Agent, AgentConfig, AgentHandle, Deployment, Scheduler, SchedulerConfig, ZkStore,
};
use caas_core::{AppId, Domain, Version};
use caas_gateway::{Gateway, GatewayConfig, Limits};
use tokio::net::TcpListener;

const LABEL: &str = "caas.test=scheduler-e2e";
const GRACE: Duration = Duration::from_secs(3);

/// `{registry}/{app}:v1`: the hello image under the app's own name (a deployment's image
/// repository must be its app).
fn image_for(app: &str) -> String {
    let hello = hello_image();
    let image = format!("{}/{app}:v1", registry());
    for args in [
        vec!["tag", hello.as_str(), image.as_str()],
        vec!["push", image.as_str()],
    ] {
        let out = Command::new("docker").args(&args).output().unwrap();
        assert!(out.status.success(), "docker {args:?}: {out:?}");
    }
    image
}

fn deployment(app: &str, replicas: u32) -> Deployment {
    let mut d = Deployment::new(image_for(app), 8080, replicas);
    d.memory = "32m".parse().unwrap();
    d.cpu_shares = 64;
    d.health = HealthPolicy {
        interval_ms: 300,
        timeout_ms: 250,
        fall: 2,
        rise: 1,
        grace_ms: 5000,
        ..HealthPolicy::default()
    };
    d
}

/// Endpoints the gateway routes `{app}.caas.local` to now.
fn rotation(gw: &Gateway, app: &str) -> BTreeSet<SocketAddr> {
    let table = gw.router().load();
    table
        .lookup(&format!("{app}.caas.local"))
        .and_then(|r| {
            r.pool()
                .map(|p| p.endpoints().iter().map(|e| e.endpoint().addr).collect())
        })
        .unwrap_or_default()
}

/// One request through the gateway: the status.
fn get(gw: SocketAddr, app: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&gw, Duration::from_secs(2)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET / HTTP/1.1\r\nHost: {app}.caas.local\r\nConnection: close\r\n\r\n"
    );
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

/// The hosts each instance of `app` is assigned to (host id → count).
async fn placement(hosts: &HostStore<ZkStore>, app: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for h in ["h2", "h3", "h4"] {
        let n = hosts
            .assignments(h)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.assignment.as_ref().is_ok_and(|a| a.app.as_str() == app))
            .count();
        if n > 0 {
            out.insert(h.to_owned(), n);
        }
    }
    out
}

/// The running containers labelled for `app` (id, `caas.host` label).
fn containers_of(app: &str) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args(["ps", "--no-trunc", "--filter"])
        .arg(format!("label={LABEL}"))
        .args(["--filter", &format!("label=caas.app={app}")])
        .args(["--format", "{{.ID}} {{.Label \"caas.host\"}}"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, host)| (id.to_owned(), host.to_owned()))
        .collect()
}

async fn agent(zk: &ZkServer, id: &str, ip: &str, zone: &str) -> AgentHandle {
    let ip: IpAddr = ip.parse().unwrap();
    let mut config = AgentConfig::new(ZkConfig::new(zk.connect_string()), id, ip);
    config.restart_backoff = Duration::from_millis(200);
    config.resync = Duration::from_secs(1);
    config.labels = BTreeMap::from([("zone".into(), zone.into())]);
    config.container_labels = BTreeMap::from([("caas.test".into(), "scheduler-e2e".into())]);
    Agent::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_place_spread_constrained_global_sidecar_and_heal_a_lost_host() {
    let test = "scheduler_e2e";
    let Some(_docker) = docker_or_skip(test).await else {
        return;
    };
    let Some(zk) = ZkServer::start_or_skip(ZkServerBuilder::default(), test) else {
        return;
    };
    remove_labelled(LABEL);
    struct Clean;
    impl Drop for Clean {
        fn drop(&mut self) {
            remove_labelled(LABEL);
        }
    }
    let _clean = Clean;
    let cache = tokio::task::spawn_blocking(sidecar_image).await.unwrap();

    let h2 = agent(&zk, "h2", "127.0.0.2", "a").await;
    let h3 = agent(&zk, "h3", "127.0.0.3", "a").await;
    let h4 = agent(&zk, "h4", "127.0.0.4", "b").await;
    let session = ZkSession::connect(ZkConfig::new(zk.connect_string()))
        .await
        .unwrap();
    let store = ZkStore::new(session.clone());
    let hosts = HostStore::new(ZkStore::new(session.clone()));
    let scheduler = Scheduler::new(
        ZkStore::new(
            ZkSession::connect(ZkConfig::new(zk.connect_string()))
                .await
                .unwrap(),
        ),
        SchedulerConfig {
            host_grace: GRACE,
            resync: Duration::from_secs(1),
            name: "e2e".into(),
            ..SchedulerConfig::default()
        },
    )
    .spawn();

    let gateway = Gateway::builder(GatewayConfig {
        domains: vec![Domain::new("caas.local").unwrap()],
        limits: Limits {
            upstream_connect_timeout_ms: 1_000,
            upstream_response_timeout_ms: 5_000,
            ..Limits::default()
        },
        ..GatewayConfig::default()
    })
    .discovery(
        ZkDiscovery::connect(ZkConfig::new(zk.connect_string()))
            .await
            .unwrap(),
    )
    .build()
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_addr = listener.local_addr().unwrap();
    let g = gateway.clone();
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });

    // The four deployments, as `caasd deploy` writes them.
    let v1 = Version::new("v1").unwrap();
    let app = |s: &str| AppId::new(s).unwrap();
    let mut web = deployment("web", 6);
    web.strategy = Strategy::Spread;
    let mut zoned = deployment("zoned", 2);
    zoned.constraints = vec!["zone==a".parse::<Constraint>().unwrap()];
    let mut everywhere = deployment("everywhere", 1);
    everywhere.replicas = None;
    everywhere.global = true;
    let mut withcache = deployment("withcache", 1);
    withcache.sidecars = vec![Sidecar {
        name: "cache".into(),
        image: cache,
        memory: "16m".parse().unwrap(),
        cpu_shares: 32,
    }];
    let t0 = Instant::now();
    for (name, d) in [
        ("web", &web),
        ("zoned", &zoned),
        ("everywhere", &everywhere),
        ("withcache", &withcache),
    ] {
        control::deploy(&store, &app(name), &v1, d).await.unwrap();
    }
    let want = [
        ("web", 6),
        ("zoned", 2),
        ("everywhere", 3),
        ("withcache", 1),
    ];
    let ready = until(
        "every instance registered and routed",
        Duration::from_secs(120),
        || want.iter().all(|(a, n)| rotation(&gateway, a).len() == *n),
    )
    .await;
    eprintln!(
        "TIMING deploy of 12 instances on 3 hosts -> all routable: {ready:?} ({:?} since the writes)",
        t0.elapsed()
    );

    // Where they landed.
    assert_eq!(
        placement(&hosts, "web").await,
        BTreeMap::from([("h2".into(), 2), ("h3".into(), 2), ("h4".into(), 2)]),
        "spread: 2 per host"
    );
    let zoned_at = placement(&hosts, "zoned").await;
    assert!(
        zoned_at.keys().all(|h| h == "h2" || h == "h3") && zoned_at.values().sum::<usize>() == 2,
        "zone==a only: {zoned_at:?}"
    );
    assert_eq!(
        placement(&hosts, "everywhere").await,
        BTreeMap::from([("h2".into(), 1), ("h3".into(), 1), ("h4".into(), 1)]),
        "global: one per host"
    );
    let unit = containers_of("withcache");
    assert_eq!(unit.len(), 2, "main and sidecar: {unit:?}");
    assert_eq!(unit[0].1, unit[1].1, "one host for the unit: {unit:?}");
    for a in ["web", "zoned", "everywhere", "withcache"] {
        assert_eq!(get(gw_addr, a), 200, "{a} through the gateway");
    }

    // h4 goes away for good: its agent stops, its containers with it.
    h4.shutdown().await;
    let lost = Instant::now();
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={LABEL}")])
        .args(["--filter", "label=caas.host=h4"])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !ids.is_empty() {
        Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output()
            .unwrap();
    }
    let on_h4 = |set: BTreeSet<SocketAddr>| set.iter().any(|a| a.ip().to_string() == "127.0.0.4");
    // Its registrations vanish with its session at once...
    until(
        "h4's instances out of rotation",
        Duration::from_secs(10),
        || !on_h4(rotation(&gateway, "web")),
    )
    .await;
    // ...and after the grace period its instances run elsewhere and are routable.
    let healed = until(
        "web back to 6 instances on h2 and h3",
        GRACE + Duration::from_secs(60),
        || {
            let r = rotation(&gateway, "web");
            r.len() == 6 && !on_h4(r)
        },
    )
    .await;
    let total = lost.elapsed();
    eprintln!(
        "TIMING host lost -> its instances routable elsewhere: {total:?} (grace {GRACE:?}; \
         {healed:?} after they left the rotation)"
    );
    assert!(
        total < GRACE + Duration::from_secs(30),
        "healing took {total:?}"
    );
    assert_eq!(
        placement(&hosts, "web").await,
        BTreeMap::from([("h2".into(), 3), ("h3".into(), 3)])
    );
    assert_eq!(
        rotation(&gateway, "everywhere").len(),
        2,
        "global follows the hosts"
    );
    for _ in 0..6 {
        assert_eq!(get(gw_addr, "web"), 200);
    }

    scheduler.shutdown().await;
    h2.shutdown().await;
    h3.shutdown().await;
    session.close();
}
