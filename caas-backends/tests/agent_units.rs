//! The host agent's units (a main container and its sidecars), the instance status nodes a
//! user reads, and the host node fields the agent owns — against a real ZooKeeper (one per
//! test), the real Docker Engine and the real registry.
//!
//! The sidecar is the hello-app image with `PORT=6379` (`{registry}/hello-cache:v1`); the
//! main container asks it over localhost with hello-app's `GET /_probe?port=6379`. Every
//! test has its own host id, loopback IP and `caas.test` label. Without a Docker daemon the
//! tests print `SKIPPED: no Docker daemon` and pass, except under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod agent_world;

use std::time::{Duration, Instant};

use agent_world::{World, docker_kill, get, inst, until, world};
use caas_backends::assignment::{Assignment, HealthPolicy, Sidecar};
use caas_backends::docker::{LABEL_PORT, LABEL_SIDECAR};
use caas_backends::store::{Op, Store};
use caas_backends::testing::docker::{SIDECAR_PORT, registry, sidecar_image};
use caas_backends::zk::HostInfo;
use caas_backends::zk::hosts::{InstanceState, host_path};
use caas_backends::{Agent, AgentConfig};
use caas_core::AppId;

/// hello-app with a `cache` sidecar (32 MiB, 128 shares).
fn pod(w: &World) -> Assignment {
    let mut a = w.assignment();
    a.sidecars = vec![Sidecar {
        name: "cache".into(),
        image: sidecar_image(),
        memory: "32m".parse().unwrap(),
        cpu_shares: 128,
    }];
    a
}

async fn pod_world(test: &str, host: &str, ip: &str) -> Option<World> {
    let w = world(test, host, ip).await?;
    tokio::task::spawn_blocking(sidecar_image).await.unwrap();
    Some(w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_runs_talks_over_localhost_dies_and_goes_together() {
    let Some(w) = pod_world("units", "h-units", "127.0.0.6").await else {
        return;
    };
    let agent = w.agent().await;
    w.assign_one("units-0", &pod(&w)).await;
    let addr = until("registration", || async {
        w.registered().await.get("units-0").copied()
    })
    .await;

    // Both containers run, each with its own limits; the sidecar in the main one's network.
    let unit = w.unit("units-0").await;
    assert_eq!(unit.len(), 2, "{unit:?}");
    let (main, side) = (&unit[""], &unit["cache"]);
    assert!(main.running && side.running);
    let main_info = w.docker.inspect(&main.id).await.unwrap();
    let side_info = w.docker.inspect(&side.id).await.unwrap();
    assert_eq!((main_info.memory, main_info.cpu_shares), (512 << 20, 1024));
    assert_eq!((side_info.memory, side_info.cpu_shares), (32 << 20, 128));
    assert_eq!(side_info.network_mode, format!("container:{}", main.id));
    assert_eq!(side_info.labels[LABEL_SIDECAR], "cache");
    assert!(
        !side_info.labels.contains_key(LABEL_PORT),
        "publishes nothing"
    );
    assert!(side_info.host_binding.is_none());
    assert_eq!(
        main_info.host_binding,
        Some((w.ip.to_string(), addr.port())),
        "only the main container publishes, and it is what is registered"
    );

    // From inside the main container, the sidecar answers on localhost.
    let (status, body) = get(addr, &format!("/_probe?port={SIDECAR_PORT}")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains(r#""instance":"units-0""#), "{body}");
    let status = w.status("units-0").await.unwrap();
    assert_eq!(status.state, InstanceState::Healthy);
    assert_eq!(status.address, Some(addr.to_string()));

    // The sidecar dies: the instance leaves the registry, then the whole unit restarts.
    let t0 = Instant::now();
    docker_kill(&side.id);
    until("deregistration", || async {
        w.registered().await.is_empty().then_some(())
    })
    .await;
    let detected = t0.elapsed();
    let again = until("a new unit registered", || async {
        let unit = w.unit("units-0").await;
        let fresh = unit.len() == 2
            && unit.values().all(|c| c.running)
            && unit[""].id != main.id
            && unit["cache"].id != side.id;
        (fresh && w.registered().await.get("units-0") == Some(&addr)).then_some(unit)
    })
    .await;
    println!(
        "TIMING sidecar killed -> deregistered {detected:?}, -> unit restarted and registered {:?}",
        t0.elapsed()
    );
    let side_info = w.docker.inspect(&again["cache"].id).await.unwrap();
    assert_eq!(
        side_info.network_mode,
        format!("container:{}", again[""].id),
        "the new sidecar joins the new main container"
    );
    let (status, body) = get(addr, &format!("/_probe?port={SIDECAR_PORT}")).unwrap();
    assert_eq!(status, 200, "{body}");
    let status = until("status healthy after the restart", || async {
        w.status("units-0")
            .await
            .filter(|s| s.state == InstanceState::Healthy)
    })
    .await;
    assert_eq!(status.restarts, 1);
    assert_eq!(status.container.as_deref(), Some(again[""].id.as_str()));
    let s = agent.stats();
    assert_eq!((s.restarts, s.exits, s.started), (1, 1, 2), "{s:?}");

    // The assignment goes: deregistered, both containers removed, status node deleted.
    w.unassign("units-0").await;
    until("unit removed", || async {
        let gone = w.unit("units-0").await.is_empty();
        let no_status = w.status("units-0").await.is_none();
        (gone && no_status && w.registered().await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(agent.stats().errors, 0, "{:?}", agent.stats());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_the_unit_with_its_sidecar() {
    let Some(w) = pod_world("units-adopt", "h-units-adopt", "127.0.0.7").await else {
        return;
    };
    let agent = w.agent().await;
    w.assign_one("adopt-0", &pod(&w)).await;
    let before = until("registration", || async {
        w.registered().await.get("adopt-0").copied()
    })
    .await;
    let unit_before: Vec<String> = w
        .unit("adopt-0")
        .await
        .into_values()
        .map(|c| c.id)
        .collect();
    assert_eq!(unit_before.len(), 2);
    agent.shutdown().await;

    let agent = w.agent().await;
    let after = until("registration again", || async {
        w.registered().await.get("adopt-0").copied()
    })
    .await;
    assert_eq!(after, before, "same port");
    let unit_after: Vec<String> = w
        .unit("adopt-0")
        .await
        .into_values()
        .map(|c| c.id)
        .collect();
    assert_eq!(unit_after, unit_before, "adopted, not restarted");
    let s = agent.stats();
    assert_eq!(
        (s.adopted, s.started, s.orphans_removed),
        (1, 0, 0),
        "{s:?}"
    );
    let status = until("status healthy", || async {
        w.status("adopt-0")
            .await
            .filter(|s| s.state == InstanceState::Healthy)
    })
    .await;
    assert_eq!(status.restarts, 0);
    assert!(
        status.started_at_ms.is_some(),
        "the container's own start time"
    );

    // An adopted sidecar that dies still takes its unit down and back up.
    let side = w.unit("adopt-0").await["cache"].id.clone();
    docker_kill(&side);
    until("unit restarted", || async {
        let unit = w.unit("adopt-0").await;
        let fresh = unit.len() == 2 && !unit_after.contains(&unit["cache"].id);
        (fresh && w.registered().await.contains_key("adopt-0")).then_some(())
    })
    .await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_crashes_at_start_restarts_its_unit() {
    let Some(w) = world("units-crash", "h-units-crash", "127.0.0.10").await else {
        return;
    };
    let mut config = w.config();
    config.restart_backoff = Duration::from_secs(2);
    let agent = Agent::start(config).await.unwrap();
    // The hello image as the sidecar wants port 8080 too, which the main container holds:
    // it exits with code 1 right after its start.
    let mut a = w.assignment();
    a.sidecars = vec![Sidecar {
        name: "cache".into(),
        image: w.image.clone(),
        memory: "32m".parse().unwrap(),
        cpu_shares: 128,
    }];
    w.assign_one("crash-0", &a).await;
    let status = until("restarting because of the sidecar", || async {
        w.status("crash-0")
            .await
            .filter(|s| s.state == InstanceState::Restarting)
    })
    .await;
    assert_eq!(
        status.message.as_deref(),
        Some("sidecar cache exited (code 1)")
    );
    assert!(status.restarts >= 1);
    assert!(agent.stats().exits >= 1);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_nodes_say_what_a_user_needs() {
    let Some(w) = world("status", "h-status", "127.0.0.8").await else {
        return;
    };
    let mut config = w.config();
    // Long enough to see `restarting` and `failed` between two attempts.
    config.restart_backoff = Duration::from_secs(3);
    let agent = Agent::start(config).await.unwrap();

    // A healthy instance: its address, once registered.
    w.assign_one("st-ok", &w.assignment()).await;
    let ok = until("st-ok healthy", || async {
        w.status("st-ok")
            .await
            .filter(|s| s.state == InstanceState::Healthy)
    })
    .await;
    let addr = w.registered().await["st-ok"];
    assert_eq!(ok.address, Some(addr.to_string()));
    assert_eq!((ok.restarts, ok.message.as_deref()), (0, None));
    assert!(ok.started_at_ms.is_some());

    // An image the registry does not have: failed, with the pull error.
    let mut missing = w.assignment();
    missing.app = AppId::new("nothere").unwrap();
    missing.image = format!("{}/nothere:v1", registry());
    w.assign_one("st-missing", &missing).await;
    let failed = until("st-missing failed", || async {
        w.status("st-missing")
            .await
            .filter(|s| s.state == InstanceState::Failed)
    })
    .await;
    let message = failed.message.unwrap_or_default();
    assert!(message.starts_with("image pull failed: "), "{message}");
    assert!(message.contains("nothere"), "{message}");
    assert!(failed.address.is_none());

    // Running but never passing its check (it answers after 2 s, the probe waits 250 ms):
    // unhealthy, with its address, not registered.
    let mut slow = w.assignment();
    slow.health = HealthPolicy {
        path: "/_sleep?ms=2000".into(),
        grace_ms: 600_000,
        ..slow.health
    };
    w.assign_one("st-slow", &slow).await;
    let unhealthy = until("st-slow unhealthy", || async {
        w.status("st-slow")
            .await
            .filter(|s| s.state == InstanceState::Unhealthy)
    })
    .await;
    assert!(unhealthy.address.is_some());
    assert!(!w.registered().await.contains_key("st-slow"));

    // Written on change only: neither node changes while two reconciles and a dozen
    // probes pass.
    let version = |id: &'static str| {
        let store = w.store.clone();
        async move {
            let path = format!("/hosts/h-status/status/{id}");
            store.get(&path).await.unwrap().unwrap().version
        }
    };
    let (v_ok, v_slow) = (version("st-ok").await, version("st-slow").await);
    let reconciles = agent.stats().reconciles;
    until("two reconciles", || async {
        (agent.stats().reconciles >= reconciles + 2).then_some(())
    })
    .await;
    assert_eq!(
        (version("st-ok").await, version("st-slow").await),
        (v_ok, v_slow)
    );
    assert_eq!(w.status("st-ok").await.unwrap(), ok, "st-ok untouched");

    // Killed: restarting (restarts counted, why), then healthy again.
    let killed = w.unit("st-ok").await[""].id.clone();
    docker_kill(&killed);
    let restarting = until("st-ok restarting", || async {
        w.status("st-ok")
            .await
            .filter(|s| s.state == InstanceState::Restarting)
    })
    .await;
    assert_eq!(restarting.restarts, 1);
    assert_eq!(
        restarting.message.as_deref(),
        Some("container exited (code 137)")
    );
    assert!(restarting.address.is_none(), "nothing bound while it waits");
    let back = until("st-ok healthy again", || async {
        w.status("st-ok")
            .await
            .filter(|s| s.state == InstanceState::Healthy)
    })
    .await;
    assert_eq!(back.restarts, 1);
    assert_ne!(back.container, ok.container);
    assert_eq!(back.address, ok.address, "same port");

    // A status node of nothing (left by a crash) is cleaned up; removal deletes its own.
    w.hosts()
        .put_status(&w.host, &inst("st-ghost"), &ok)
        .await
        .unwrap();
    w.unassign("st-missing").await;
    until("status nodes cleaned", || async {
        let gone = w.status("st-ghost").await.is_none() && w.status("st-missing").await.is_none();
        gone.then_some(())
    })
    .await;
    agent.shutdown().await;
}

/// Writes `/proc/stat`-like counters atomically (the agent never reads half a file).
fn write_stat(path: &std::path::Path, busy: u64, idle: u64) {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\nintr 0\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_idle_updates_keep_the_schedulers_and_operators_fields() {
    let Some(w) = world("hostinfo", "h-hostinfo", "127.0.0.9").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let stat = dir.path().join("stat");
    write_stat(&stat, 0, 0);
    let mut config: AgentConfig = w.config();
    config.proc_stat = stat.clone();
    config.cpu_sample = Duration::from_millis(100);
    let agent = Agent::start(config).await.unwrap();
    let hosts = w.hosts();
    let info = |want: f64| {
        let hosts = hosts.clone();
        async move {
            hosts
                .info("h-hostinfo")
                .await
                .unwrap()
                .filter(|i| i.cpu_idle == Some(want))
        }
    };

    // Half idle since the first sample: published.
    until("the first sample", || async {
        (agent.stats().cpu_samples >= 1).then_some(())
    })
    .await;
    write_stat(&stat, 50, 50);
    until("cpu_idle 0.5", || info(0.5)).await;

    // A scheduler and an operator write their fields under the node's version.
    let node = w
        .store
        .get(&host_path("h-hostinfo"))
        .await
        .unwrap()
        .unwrap();
    let mut theirs: HostInfo = serde_json::from_slice(&node.data).unwrap();
    theirs.allocated.instances = 7;
    theirs.allocated.memory = 7 << 30;
    theirs.draining = true;
    w.store
        .commit(vec![Op::Set {
            path: host_path("h-hostinfo"),
            data: serde_json::to_vec(&theirs).unwrap(),
            version: Some(node.version),
        }])
        .await
        .unwrap();

    // All idle since: s = 0.5 * 1.0 + 0.5 * 0.5. The agent writes, theirs survive.
    write_stat(&stat, 50, 150);
    let after = until("cpu_idle 0.75", || info(0.75)).await;
    assert_eq!(after.allocated, theirs.allocated);
    assert!(after.draining);
    // The agent counts a write once the store has answered it, which can be after the node
    // shows it; it samples and writes in turn, so a sample counted after this point comes
    // after the write seen above was counted.
    let seen = agent.stats().cpu_samples;
    until("a sample after the write", || async {
        (agent.stats().cpu_samples > seen).then_some(())
    })
    .await;

    // A move under 0.02 (x = 27/37, s = 0.74) is not worth a write.
    let (writes, samples) = (agent.stats().host_writes, agent.stats().cpu_samples);
    write_stat(&stat, 60, 177);
    until("3 more samples", || async {
        (agent.stats().cpu_samples >= samples + 3).then_some(())
    })
    .await;
    assert_eq!(agent.stats().host_writes, writes, "{:?}", agent.stats());
    assert!(info(0.75).await.is_some(), "still the last written value");

    // Garbage in the file: an error counted, nothing written, the agent goes on.
    let errors = agent.stats().errors;
    std::fs::write(stat.with_extension("tmp"), "cpu x\n").unwrap();
    std::fs::rename(stat.with_extension("tmp"), &stat).unwrap();
    until("the bad sample counted", || async {
        (agent.stats().errors > errors).then_some(())
    })
    .await;
    write_stat(&stat, 60, 377);
    let last = until("cpu_idle moves again", || async {
        hosts
            .info("h-hostinfo")
            .await
            .unwrap()
            .filter(|i| i.cpu_idle.is_some_and(|c| c > 0.8))
    })
    .await;
    assert_eq!(
        (last.allocated, last.draining),
        (theirs.allocated, true),
        "still theirs"
    );
    agent.shutdown().await;
}
