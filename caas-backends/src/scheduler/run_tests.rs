//! The pass against the in-memory store, where a lost reply, a stale read and the grace
//! period can be produced on demand (paused time: no test waits on a clock).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::scheduler::control;
use crate::scheduler::deployment::Deployment;
use crate::scheduler::status::Phase;
use crate::scheduler::test_support::*;
use crate::store::{MemStore, Store};
use crate::zk::hosts::{HostInfo, Resources, alive_path, host_path};
use crate::zk::layout::deployment_status_path;

fn info(memory: u64, ports: u64) -> HostInfo {
    HostInfo {
        ip: "127.0.0.2".parse().unwrap(),
        labels: BTreeMap::new(),
        capacity: Resources {
            memory,
            cpu_shares: 100_000,
            instances: ports,
        },
        allocated: Resources::default(),
        cpu_idle: None,
        draining: false,
        logs: None,
    }
}

async fn add_host(store: &MemStore, id: &str, memory: u64, ports: u64) {
    crate::store::put(
        store,
        &host_path(id),
        &serde_json::to_vec(&info(memory, ports)).unwrap(),
    )
    .await
    .unwrap();
    crate::store::put(store, &alive_path(id), b"127.0.0.2")
        .await
        .unwrap();
}

fn scheduler(store: &MemStore, grace: Duration) -> Scheduler<MemStore> {
    Scheduler::new(
        store.clone(),
        SchedulerConfig {
            host_grace: grace,
            max_attempts: 4,
            ..SchedulerConfig::default()
        },
    )
}

/// Per host: its instances of every app, and the `allocated` it publishes.
async fn audit(store: &MemStore) -> BTreeMap<String, (BTreeSet<String>, Resources)> {
    let snap = snapshot::read(store).await.unwrap();
    snap.hosts
        .values()
        .map(|h| {
            let ids = h.instances.keys().map(|i| i.to_string()).collect();
            assert_eq!(
                h.info.allocated,
                h.used(),
                "{}: allocated is the sum of its assignments",
                h.id
            );
            (h.id.clone(), (ids, h.info.allocated))
        })
        .collect()
}

fn count(a: &BTreeMap<String, (BTreeSet<String>, Resources)>) -> usize {
    a.values().map(|(ids, _)| ids.len()).sum()
}

#[tokio::test(start_paused = true)]
async fn a_lost_reply_read_back_from_a_lagging_server_never_places_twice() {
    let store = MemStore::new();
    for h in ["h1", "h2", "h3"] {
        add_host(&store, h, 8 * GIB, 50).await;
    }
    control::deploy(&store, &app("web"), &ver("v1"), &spec(5, 64))
        .await
        .unwrap();
    // The placement commit goes through, its reply is lost, and every read afterwards comes
    // from a server one transaction behind: the scheduler sees no instance at all.
    store.lose_replies(1);
    store.stale_reads(true);
    let mut s = scheduler(&store, Duration::from_secs(30));
    s.pass().await.unwrap();
    let stats = s.stats().snapshot();
    assert_eq!(stats.unknown_outcomes, 1, "{stats:?}");
    assert!(
        stats.conflicts >= 1,
        "the re-planned commit was refused: {stats:?}"
    );
    assert_eq!(stats.commits, 0, "{stats:?}");
    // The server catches up: exactly the five of the first commit, nothing more.
    store.stale_reads(false);
    let placed = audit(&store).await;
    assert_eq!(count(&placed), 5, "{placed:?}");
    s.pass().await.unwrap();
    assert_eq!(
        audit(&store).await,
        placed,
        "the next pass sees them and does nothing"
    );
    let status = control::status(&store, &app("web"), &ver("v1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.instances.len(), 5);
    assert_eq!(status.next_instance, 5);
}

#[tokio::test(start_paused = true)]
async fn a_lost_reply_read_back_from_an_up_to_date_server_is_seen_and_not_redone() {
    let store = MemStore::new();
    add_host(&store, "h1", 8 * GIB, 50).await;
    control::deploy(&store, &app("web"), &ver("v1"), &spec(3, 64))
        .await
        .unwrap();
    store.lose_replies(1);
    let mut s = scheduler(&store, Duration::from_secs(30));
    s.pass().await.unwrap();
    let stats = s.stats().snapshot();
    assert_eq!((stats.unknown_outcomes, stats.commits), (1, 0), "{stats:?}");
    let placed = audit(&store).await;
    assert_eq!(
        placed["h1"].0,
        BTreeSet::from([
            "web-v1-0".to_owned(),
            "web-v1-1".to_owned(),
            "web-v1-2".to_owned()
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_host_is_replaced_only_after_the_grace_period() {
    let store = MemStore::new();
    add_host(&store, "h1", 8 * GIB, 50).await;
    add_host(&store, "h2", GIB, 50).await;
    control::deploy(&store, &app("web"), &ver("v1"), &spec(2, 64))
        .await
        .unwrap();
    let mut s = scheduler(&store, Duration::from_secs(30));
    s.pass().await.unwrap();
    assert_eq!(
        audit(&store).await["h1"].0.len(),
        2,
        "most free memory: both on h1"
    );
    crate::store::delete_tree(&store, &alive_path("h1"))
        .await
        .unwrap();
    s.pass().await.unwrap();
    tokio::time::advance(Duration::from_secs(29)).await;
    s.pass().await.unwrap();
    let status = control::status(&store, &app("web"), &ver("v1"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.instances.iter().all(|i| i.state == "host_down"),
        "{status:?}"
    );
    assert_eq!(
        audit(&store).await["h1"].0.len(),
        2,
        "within the grace period: kept"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    s.pass().await.unwrap();
    let after = audit(&store).await;
    assert!(after["h1"].0.is_empty(), "lost host emptied: {after:?}");
    assert_eq!(
        after["h1"].1,
        Resources::default(),
        "and its allocation released"
    );
    assert_eq!(
        after["h2"].0,
        BTreeSet::from(["web-v1-2".to_owned(), "web-v1-3".to_owned()]),
        "replacements with new ids"
    );
}

#[tokio::test(start_paused = true)]
async fn an_invalid_deployment_is_reported_and_the_others_are_placed() {
    let store = MemStore::new();
    add_host(&store, "h1", 8 * GIB, 50).await;
    crate::store::put(
        &store,
        "/deployments/bad/v1",
        br#"{"image": "127.0.0.1:5000/bad:v1"}"#,
    )
    .await
    .unwrap();
    crate::store::put(&store, "/deployments/Bad-Name/v1", b"{}")
        .await
        .unwrap();
    control::deploy(&store, &app("web"), &ver("v1"), &spec(1, 64))
        .await
        .unwrap();
    let mut s = scheduler(&store, Duration::from_secs(30));
    s.pass().await.unwrap();
    let bad = control::status(&store, &app("bad"), &ver("v1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bad.phase, Phase::Invalid);
    assert!(
        bad.message
            .unwrap()
            .contains("missing field `container_port`")
    );
    assert_eq!(
        audit(&store).await["h1"].0.len(),
        1,
        "web placed all the same"
    );
    assert!(s.stats().snapshot().errors >= 2, "both bad nodes counted");
    // An unchanged status is not written again.
    let writes = s.stats().snapshot().status_writes;
    s.pass().await.unwrap();
    assert_eq!(s.stats().snapshot().status_writes, writes);
}

#[tokio::test(start_paused = true)]
async fn undeploy_releases_everything_in_one_commit_and_orphans_are_collected() {
    let store = MemStore::new();
    add_host(&store, "h1", 8 * GIB, 50).await;
    control::deploy(&store, &app("web"), &ver("v1"), &spec(2, 64))
        .await
        .unwrap();
    control::deploy(&store, &app("web"), &ver("v2"), &{
        let mut d = spec(1, 64);
        d.image = "127.0.0.1:5000/web:v2".into();
        d
    })
    .await
    .unwrap();
    let mut s = scheduler(&store, Duration::from_secs(30));
    s.pass().await.unwrap();
    assert_eq!(count(&audit(&store).await), 3);
    let gone = control::undeploy(&store, &app("web"), Some(&ver("v1")))
        .await
        .unwrap();
    assert_eq!(gone, [ver("v1")]);
    let left = audit(&store).await;
    assert_eq!(left["h1"].0, BTreeSet::from(["web-v2-0".to_owned()]));
    assert!(
        store
            .get(&deployment_status_path(&app("web"), &ver("v1")))
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        control::undeploy(&store, &app("web"), Some(&ver("v1"))).await,
        Err(control::ControlError::NotFound { .. })
    ));
    // A deployment deleted by hand leaves orphans: the next pass removes them.
    crate::store::delete_tree(&store, "/deployments/web/v2")
        .await
        .unwrap();
    s.pass().await.unwrap();
    let left = audit(&store).await;
    assert!(left["h1"].0.is_empty(), "{left:?}");
    assert_eq!(left["h1"].1, Resources::default());
    // Undeploying a whole app removes its node too.
    control::deploy(&store, &app("web"), &ver("v3"), &{
        let mut d = spec(1, 64);
        d.image = "127.0.0.1:5000/web:v3".into();
        d
    })
    .await
    .unwrap();
    s.pass().await.unwrap();
    control::undeploy(&store, &app("web"), None).await.unwrap();
    assert!(store.get("/deployments/web").await.unwrap().is_none());
    assert_eq!(count(&audit(&store).await), 0);
}

#[tokio::test(start_paused = true)]
async fn drain_and_scale_touch_only_their_field() {
    let store = MemStore::new();
    let mut h = info(8 * GIB, 50);
    h.cpu_idle = Some(0.25);
    h.labels.insert("zone".into(), "a".into());
    crate::store::put(&store, &host_path("h1"), &serde_json::to_vec(&h).unwrap())
        .await
        .unwrap();
    control::drain(&store, "h1", true).await.unwrap();
    let got: HostInfo =
        serde_json::from_slice(&store.get(&host_path("h1")).await.unwrap().unwrap().data).unwrap();
    assert_eq!(
        got,
        HostInfo {
            draining: true,
            ..h.clone()
        }
    );
    control::drain(&store, "h1", false).await.unwrap();
    assert!(matches!(
        control::drain(&store, "nope", true).await,
        Err(control::ControlError::NotFound { .. })
    ));
    assert!(matches!(
        control::drain(&store, "Bad", true).await,
        Err(control::ControlError::Invalid(_))
    ));

    let mut d = spec(2, 64);
    d.constraints = vec!["zone==a".parse().unwrap()];
    control::deploy(&store, &app("web"), &ver("v1"), &d)
        .await
        .unwrap();
    control::scale(&store, &app("web"), &ver("v1"), 7)
        .await
        .unwrap();
    let node = store.get("/deployments/web/v1").await.unwrap().unwrap();
    let scaled = Deployment::from_json(&app("web"), &ver("v1"), &node.data).unwrap();
    assert_eq!(
        scaled,
        Deployment {
            replicas: Some(7),
            ..d
        }
    );
    assert!(matches!(
        control::scale(&store, &app("web"), &ver("v9"), 1).await,
        Err(control::ControlError::NotFound { .. })
    ));
    let mut g = spec(1, 64);
    g.replicas = None;
    g.global = true;
    control::deploy(&store, &app("web"), &ver("v1"), &g)
        .await
        .unwrap();
    let e = control::scale(&store, &app("web"), &ver("v1"), 2)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("global"), "{e}");
    let e = control::deploy(&store, &app("web"), &ver("v2"), &g)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not the version"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn two_schedulers_that_disagree_do_not_rewrite_the_status_in_a_loop() {
    let store = MemStore::new();
    add_host(&store, "h1", 8 * GIB, 50).await;
    add_host(&store, "h2", 100 * MIB, 50).await;
    control::deploy(&store, &app("web"), &ver("v1"), &spec(2, 64))
        .await
        .unwrap();
    let mut a = scheduler(&store, Duration::ZERO);
    let mut b = scheduler(&store, Duration::from_secs(3600));
    a.pass().await.unwrap();
    assert_eq!(audit(&store).await["h1"].0.len(), 2);
    // h1 goes away: `a` counts it lost at once but cannot fit both replacements on h2
    // (unschedulable); `b` is within its grace period (deploying).
    crate::store::delete_tree(&store, &alive_path("h1"))
        .await
        .unwrap();
    for _ in 0..10 {
        a.pass().await.unwrap();
        b.pass().await.unwrap();
    }
    let writes = a.stats().snapshot().status_writes + b.stats().snapshot().status_writes;
    assert!(writes <= 3, "{writes} status writes without time passing");
    // Time passes: each may write again, once per spacing.
    tokio::time::advance(Duration::from_secs(1)).await;
    a.pass().await.unwrap();
    b.pass().await.unwrap();
    let later = a.stats().snapshot().status_writes + b.stats().snapshot().status_writes;
    assert!(later <= writes + 2, "{later}");
    assert_eq!(
        audit(&store).await["h1"].0.len(),
        2,
        "nothing moved: all or nothing"
    );
}
