//! The host agent against a real store (ZooKeeper; the first test also on etcd), the real
//! Docker Engine and the real private registry, running the hello-app image (built and pushed by the setup).
//!
//! Every test uses its own host id, loopback IP and instance ids, and labels its containers
//! `caas.test=agent-{test}`; leftovers of that label are removed before and after. Without a
//! Docker daemon the tests print `SKIPPED: no Docker daemon` and pass, except under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod agent_world;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_world::{Kind, http, inst, names, until, world, world_on};
use caas_backends::docker::{LABEL_HOST, LABEL_INSTANCE, RunSpec};
use caas_backends::zk::Resources;

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_run_with_limits_register_and_leave_on_deletion() {
    three_instances(Kind::Zk, "three", "127.0.0.2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_etcd() {
    three_instances(Kind::Etcd, "three-etcd", "127.0.0.12").await;
}

/// The agent's whole round on one store: host node, registrations in the common format,
/// limits, deregistration on deletion, and everything ephemeral gone when it stops.
async fn three_instances(kind: Kind, test: &str, ip: &str) {
    let host = format!("h-{test}");
    let Some(w) = world_on(kind, test, &host, ip).await else {
        return;
    };
    let id = |n: usize| format!("{test}-{n}");
    let agent = w.agent().await;
    let hosts = w.hosts();
    // The agent creates its host node with allocated = its assignments then (none here).
    until("the host node", || async {
        hosts.info(&host).await.unwrap().map(drop)
    })
    .await;
    let ids = [id(0), id(1), id(2)];
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
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
            Some(host.as_str())
        );
        assert_eq!(info.labels.get(LABEL_INSTANCE), Some(id));
        let (ip, port) = info.host_binding.clone().unwrap();
        assert_eq!(ip, w.ip.to_string());
        assert_eq!(
            regs[id],
            SocketAddr::new(w.ip, port),
            "registered where published"
        );
        assert_eq!(http(regs[id], "GET", "/_ping").unwrap(), 200);
    }

    // Host node: alive, capacity; allocated is the schedulers' (they change it with the
    // assignments), so the agent left it as it created it.
    let info = hosts.info(&host).await.unwrap().unwrap();
    assert_eq!(info.ip, w.ip);
    assert_eq!(info.allocated, Resources::default());
    assert!(info.capacity.memory > 0);
    assert!(w.exists(&format!("/hosts/{host}/alive")).await);

    // Deleting an assignment: deregistered, container gone, port back.
    let gone = running[&id(1)].id.clone();
    let t0 = Instant::now();
    w.unassign(&id(1)).await;
    until("deregistration and removal", || async {
        let r = w.registered().await;
        let cs = w.containers().await;
        (r.len() == 2 && !r.contains_key(&id(1)) && !cs.iter().any(|c| c.id == gone)).then_some(())
    })
    .await;
    println!(
        "TIMING assignment deleted -> deregistered and removed: {:?}",
        t0.elapsed()
    );
    let s = agent.stats();
    assert_eq!(s.started, 3, "{s:?}");
    assert_eq!(s.errors, 0, "{s:?}");

    // Agent stops: its session closes, registrations and alive node go; containers stay.
    agent.shutdown().await;
    until("registrations gone with the session", || async {
        w.registered().await.is_empty().then_some(())
    })
    .await;
    assert!(!w.exists(&format!("/hosts/{host}/alive")).await);
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
