//! The gateway's discovery on every store: `StoreDiscovery` feeding a caas-core `Router`,
//! with the registrations, app specs and bad nodes written through the store contract, run
//! unchanged on ZooKeeper, etcd and the in-memory store (the restart case on the two real
//! ones, each on a private server). Without etcd (or ZooKeeper) its tests print SKIPPED, and
//! fail under `CI=true`. Every wait is on what the router or the counters show.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use caas_backends::store::{
    MemStore, Op, Store, StoreDiscovery, StoreDiscoveryCounters, StoreDiscoveryStats, put,
};
use caas_backends::store_suite;
use caas_backends::testing::routes::{WAIT, eventually_picks};
use caas_backends::testing::stores::{EtcdFixture, MemFixture, StoreFixture, ZkFixture};
use caas_backends::zk::ValueCipher;
use caas_core::{Discovery as _, Domain, Router};

/// What the gateway does: a router fed by the discovery in a background task. Returns the
/// router and the discovery's counters.
fn gateway<S: Store>(mut discovery: StoreDiscovery<S>) -> (Arc<Router>, StoreDiscoveryCounters) {
    let router = Arc::new(Router::new(vec![Domain::new("caas.local").unwrap()]));
    let counters = discovery.counters();
    let r = router.clone();
    tokio::spawn(async move {
        while let Some(update) = discovery.next().await {
            r.apply(update);
        }
    });
    (router, counters)
}

/// Waits until the discovery's counters satisfy `cond`.
async fn eventually_stats(
    counters: &StoreDiscoveryCounters,
    what: &str,
    mut cond: impl FnMut(&StoreDiscoveryStats) -> bool,
) -> StoreDiscoveryStats {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = counters.snapshot();
        if cond(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The registry path of an instance.
fn instance(app: &str, version: &str, id: &str) -> String {
    format!("/service/address/{app}/{version}/{id}")
}

async fn create<S: Store>(store: &S, path: &str, data: &str) {
    store
        .commit(vec![Op::Create {
            path: path.into(),
            data: data.into(),
        }])
        .await
        .unwrap();
}

/// Registrations (ephemerals of an agent's handle) become routable; an app spec's
/// default_version and weights apply and follow edits; closing the agent's session removes
/// its endpoints while another agent's stay.
async fn registrations_specs_and_deregistration<F: StoreFixture>(f: F) {
    let agent1 = f.connect().await.unwrap();
    let agent2 = f.connect().await.unwrap();
    let admin = f.connect().await.unwrap();
    agent1
        .create_ephemeral(&instance("shop", "v1", "c1"), b"127.0.0.1:9101")
        .await
        .unwrap();
    let (router, _stats) = gateway(StoreDiscovery::start(f.connect().await.unwrap(), None));
    eventually_picks(&router, "shop.caas.local", &[9101]).await;

    // Arriving after the full read: no app node, so every version balances together.
    agent1
        .create_ephemeral(&instance("shop", "v1", "c2"), b"127.0.0.1:9102")
        .await
        .unwrap();
    agent2
        .create_ephemeral(&instance("shop", "v2", "c3"), b"127.0.0.1:9103")
        .await
        .unwrap();
    eventually_picks(&router, "shop.caas.local", &[9101, 9102, 9103]).await;
    eventually_picks(&router, "v2.shop.caas.local", &[9103]).await;

    // An app spec: default_version, then a weight split, then back.
    let default_v2 = r#"{"default_version":"v2"}"#;
    put(&admin, "/apps/shop", default_v2.as_bytes())
        .await
        .unwrap();
    eventually_picks(&router, "shop.caas.local", &[9103]).await;
    eventually_picks(&router, "v1.shop.caas.local", &[9101, 9102]).await;
    put(&admin, "/apps/shop", br#"{"weights":{"v1":0,"v2":1}}"#)
        .await
        .unwrap();
    eventually_picks(&router, "shop.caas.local", &[9103]).await;
    put(&admin, "/apps/shop", br#"{"weights":{"v1":1,"v2":0}}"#)
        .await
        .unwrap();
    eventually_picks(&router, "shop.caas.local", &[9101, 9102]).await;
    // A domain claim routes the domain to the app.
    create(&admin, "/domains/www.shop.test", "shop").await;
    eventually_picks(&router, "www.shop.test", &[9101, 9102]).await;

    // agent1 goes away: its two instances go, agent2's stays.
    put(&admin, "/apps/shop", b"").await.unwrap();
    eventually_picks(&router, "shop.caas.local", &[9101, 9102, 9103]).await;
    agent1.close().await;
    eventually_picks(&router, "shop.caas.local", &[9103]).await;
    // A deregistration by the agent itself.
    agent2
        .delete_ephemeral(&instance("shop", "v2", "c3"))
        .await
        .unwrap();
    eventually_picks(&router, "shop.caas.local", &[]).await;
    agent2.close().await;
}

/// A deregistration is applied from its watch event alone: the discovery reads a new
/// instance's node, never a deleted one (every store reports deletions as such, see
/// tests/store.rs; the memory store is the one that counts its reads).
#[tokio::test]
async fn a_deleted_instance_is_not_read_back() {
    let store = MemStore::new();
    let agent = store.new_session();
    let (router, stats) = gateway(StoreDiscovery::start(store.clone(), None));
    eventually_stats(&stats, "the first full read", |s| s.full_reads >= 1).await;
    let path = instance("shop", "v1", "c1");
    for round in 0..3 {
        let before = store.gets();
        agent
            .create_ephemeral(&path, b"127.0.0.1:9101")
            .await
            .unwrap();
        eventually_picks(&router, "shop.caas.local", &[9101]).await;
        let registered = store.gets();
        assert!(registered > before, "round {round}: a registration is read");
        agent.delete_ephemeral(&path).await.unwrap();
        eventually_picks(&router, "shop.caas.local", &[]).await;
        assert_eq!(
            store.gets(),
            registered,
            "round {round}: a deregistration is not read back"
        );
    }
    assert_eq!(stats.snapshot().full_reads, 1, "no full read since");
}

/// Bad nodes are skipped and counted, present at the full read (three: an address that does
/// not parse, an invalid app id directory, an app spec that is not JSON) or arriving later
/// (three more), while the rest routes.
async fn bad_nodes_are_skipped_and_counted<F: StoreFixture>(f: F) {
    let s = f.connect().await.unwrap();
    create(&s, &instance("good", "v1", "junk"), "not-an-address").await;
    create(&s, &instance("Bad_App", "v1", "c1"), "127.0.0.1:1").await;
    create(&s, "/apps/broken", "{not json").await;
    create(&s, &instance("good", "v1", "ok"), "127.0.0.1:9301").await;

    let (router, stats) = gateway(StoreDiscovery::start(f.connect().await.unwrap(), None));
    eventually_picks(&router, "good.caas.local", &[9301]).await;
    assert!(router.load().lookup("broken.caas.local").is_none());
    let after_read = eventually_stats(&stats, "the full read", |s| s.full_reads >= 1).await;
    assert_eq!(
        after_read.skipped_nodes,
        3 * after_read.full_reads,
        "three bad nodes per full read: {after_read:?}"
    );

    create(&s, &instance("good", "v1", "junk2"), "10.0.0.1").await;
    create(&s, &instance("good", "v1", "UPPER"), "127.0.0.1:2").await;
    put(&s, "/apps/broken", br#"{"defualt_version":"v1"}"#)
        .await
        .unwrap();
    let before = after_read.skipped_nodes;
    eventually_stats(&stats, "three more skipped nodes", |s| {
        s.skipped_nodes >= before + 3
    })
    .await;
    create(&s, &instance("good", "v1", "ok2"), "127.0.0.1:9302").await;
    eventually_picks(&router, "good.caas.local", &[9301, 9302]).await;
    assert!(router.load().lookup("broken.caas.local").is_none());
}

/// App specs sealed with the config key: a discovery with the key applies them; one with
/// another key skips the node (counted) and routes the app's instances with the default
/// spec.
async fn encrypted_app_specs_open_with_the_key<F: StoreFixture>(f: F) {
    let key = ValueCipher::from_key(&[7; 32]).unwrap();
    let s = f.connect().await.unwrap();
    create(&s, &instance("vault", "v1", "c1"), "127.0.0.1:9701").await;
    create(&s, &instance("vault", "v2", "c2"), "127.0.0.1:9702").await;
    let sealed = key
        .encrypt("/apps/vault", br#"{"default_version":"v2"}"#)
        .unwrap();
    put(&s, "/apps/vault", &sealed).await.unwrap();

    let connect = || async { f.connect().await.unwrap() };
    let (router, _) = gateway(StoreDiscovery::start(connect().await, Some(key)));
    eventually_picks(&router, "vault.caas.local", &[9702]).await;

    let wrong = ValueCipher::from_key(&[8; 32]).unwrap();
    let (router, stats) = gateway(StoreDiscovery::start(connect().await, Some(wrong)));
    eventually_picks(&router, "vault.caas.local", &[9701, 9702]).await;
    let read = eventually_stats(&stats, "the full read", |s| s.full_reads >= 1).await;
    assert_eq!(
        read.skipped_nodes, read.full_reads,
        "the sealed spec: {read:?}"
    );
}

/// Retries a write until the restarted server takes it.
async fn write_after_restart<S: Store>(s: &S, path: &str, data: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match put(s, path, data.as_bytes()).await {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "no write after restart: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server restarts: the discovery converges on what is written afterwards, and the
/// registration made before is still routed.
async fn discovery_converges_after_a_store_restart<F: StoreFixture>(f: F) {
    let agent = f.connect().await.unwrap();
    agent
        .create_ephemeral(&instance("app", "v1", "c1"), b"127.0.0.1:9501")
        .await
        .unwrap();
    let (router, _stats) = gateway(StoreDiscovery::start(f.connect().await.unwrap(), None));
    eventually_picks(&router, "app.caas.local", &[9501]).await;

    tokio::task::block_in_place(|| f.restart()).unwrap();
    let writer = f.connect().await.unwrap();
    write_after_restart(&writer, &instance("app", "v1", "c2"), "127.0.0.1:9502").await;
    write_after_restart(&writer, "/apps/app", r#"{"weights":{"v1":1}}"#).await;
    write_after_restart(&writer, &instance("app", "v2", "c3"), "127.0.0.1:9503").await;
    eventually_picks(&router, "app.caas.local", &[9501, 9502]).await;
    eventually_picks(&router, "v2.app.caas.local", &[9503]).await;
}

store_suite!(
    zookeeper,
    ZkFixture::shared,
    [
        registrations_specs_and_deregistration,
        bad_nodes_are_skipped_and_counted,
        encrypted_app_specs_open_with_the_key,
    ]
);
store_suite!(
    etcd,
    EtcdFixture::shared,
    [
        registrations_specs_and_deregistration,
        bad_nodes_are_skipped_and_counted,
        encrypted_app_specs_open_with_the_key,
    ]
);
store_suite!(
    memory,
    MemFixture::new,
    [
        registrations_specs_and_deregistration,
        bad_nodes_are_skipped_and_counted,
        encrypted_app_specs_open_with_the_key,
    ]
);
store_suite!(
    zookeeper_private,
    ZkFixture::private,
    [discovery_converges_after_a_store_restart]
);
store_suite!(
    etcd_private,
    EtcdFixture::private,
    [discovery_converges_after_a_store_restart]
);
