//! The ZooKeeper backend against a real ZooKeeper 3.8: each test starts its own server on a
//! free loopback port (caas_backends::testing) and drives registry, discovery and config the
//! way the control plane and the gateway do, asserting on what the gateway would route.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caas_backends::store::{self, Store as _, StoreError, ZkStore};
use caas_backends::testing::routes::{eventually_picks, picks};
use caas_backends::testing::{TcpProxy, ZkServer, ZkServerBuilder};
use caas_backends::zk::registry::RegistryError;
use caas_backends::zk::{
    AppStore, GatewayInfo, Registry, ZkConfig, ZkDiscovery, ZkError, ZkSession, ZkTlsConfig,
    announce_gateway, digest_id, grant_app, list_gateways, provision_tree,
};
use caas_core::{AppId, AppSpec, Discovery, Domain, InstanceId, Router, Version};

const WAIT: Duration = Duration::from_secs(30);

fn server(test: &str) -> Option<ZkServer> {
    caas_backends::testing::logs();
    ZkServer::start_or_skip(ZkServerBuilder::default(), test)
}

fn app(s: &str) -> AppId {
    AppId::new(s).unwrap()
}
fn ver(s: &str) -> Version {
    Version::new(s).unwrap()
}
fn inst(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}
fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A config for `server` under a per-test chroot, with a short-ish session timeout.
fn config(server: &ZkServer, chroot: &str) -> ZkConfig {
    ZkConfig::new(server.connect_string())
        .with_chroot(chroot)
        .with_session_timeout(Duration::from_secs(8))
}

/// What the gateway does: a router fed by the discovery in a background task.
fn gateway(mut discovery: ZkDiscovery) -> (Arc<Router>, tokio::task::JoinHandle<ZkDiscovery>) {
    let router = Arc::new(Router::new(vec![Domain::new("caas.local").unwrap()]));
    let r = router.clone();
    let task = tokio::spawn(async move {
        while let Some(update) = discovery.next().await {
            r.apply(update);
        }
        discovery
    });
    (router, task)
}

fn set(ports: &[u16]) -> BTreeSet<SocketAddr> {
    ports.iter().map(|&p| addr(p)).collect()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn raw_client(server: &ZkServer) -> zookeeper_client::Client {
    zookeeper_client::Client::connect(&server.connect_string())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_writes_exact_ephemeral_and_rejects_duplicates() {
    let Some(zk) = server("register_writes_exact_ephemeral_and_rejects_duplicates") else {
        return;
    };
    let session = ZkSession::connect(config(&zk, "/caas")).await.unwrap();
    let registry = Registry::new(ZkStore::new(session.clone()));
    let (a, v1, c1) = (app("app01"), ver("v1"), inst("c0ffee"));
    registry.register(&a, &v1, &c1, addr(9001)).await.unwrap();

    let raw = raw_client(&zk).await;
    let path = "/caas/service/address/app01/v1/c0ffee";
    let (data, stat) = raw.get_data(path).await.unwrap();
    assert_eq!(data, b"127.0.0.1:9001", "exact {{hostIp}}:{{port}} format");
    assert_eq!(
        stat.ephemeral_owner,
        session.client().unwrap().session_id().0
    );

    let err = registry
        .register(&a, &v1, &c1, addr(9002))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::AlreadyRegistered { existing, .. } if existing == "127.0.0.1:9001"),
        "{err}"
    );
    assert_eq!(raw.get_data(path).await.unwrap().0, b"127.0.0.1:9001");
    // A second process registering the same id is refused as well.
    let other = Registry::new(ZkStore::new(
        ZkSession::connect(config(&zk, "/caas")).await.unwrap(),
    ));
    assert!(matches!(
        other.register(&a, &v1, &c1, addr(9003)).await,
        Err(RegistryError::AlreadyRegistered { .. })
    ));

    registry.deregister(&a, &v1, &c1).await.unwrap();
    assert!(raw.check_stat(path).await.unwrap().is_none());
    assert!(matches!(
        registry.deregister(&a, &v1, &c1).await,
        Err(RegistryError::NotRegistered { .. })
    ));

    // Ephemeral: closing the session removes the registration.
    registry
        .register(&a, &ver("v2"), &inst("c2"), addr(9004))
        .await
        .unwrap();
    session.close();
    drop(registry);
    let deadline = Instant::now() + WAIT;
    while raw
        .check_stat("/caas/service/address/app01/v2/c2")
        .await
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "ephemeral outlived its session");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_feeds_the_router_and_follows_registry_and_config() {
    let Some(zk) = server("discovery_feeds_the_router_and_follows_registry_and_config") else {
        return;
    };
    let session = ZkSession::connect(config(&zk, "/t2")).await.unwrap();
    let registry = Registry::new(ZkStore::new(session.clone()));
    let store = AppStore::new(session.clone());
    let a = app("shop");
    registry
        .register(&a, &ver("v1"), &inst("c1"), addr(9101))
        .await
        .unwrap();
    let watching = ZkSession::connect(config(&zk, "/t2")).await.unwrap();
    let discovery = ZkDiscovery::start(watching.clone());
    let (router, _task) = gateway(discovery);
    eventually_picks(&router, "shop.caas.local", &[9101]).await;

    // New instances of two versions: no app node, so all versions balance together.
    registry
        .register(&a, &ver("v1"), &inst("c2"), addr(9102))
        .await
        .unwrap();
    registry
        .register(&a, &ver("v2"), &inst("c3"), addr(9103))
        .await
        .unwrap();
    eventually_picks(&router, "shop.caas.local", &[9101, 9102, 9103]).await;
    eventually_picks(&router, "v2.shop.caas.local", &[9103]).await;

    // Live app config: default version, a custom domain and a static endpoint.
    let spec: AppSpec = serde_json::from_str(
        r#"{"default_version":"v2","domains":["www.shop.test"],
            "versions":{"v2":{"endpoints":["127.0.0.1:9109"]}}}"#,
    )
    .unwrap();
    store.put_app(&a, &spec).await.unwrap();
    eventually_picks(&router, "shop.caas.local", &[9103, 9109]).await;
    eventually_picks(&router, "WWW.Shop.Test:8080", &[9103, 9109]).await;
    eventually_picks(&router, "v1.shop.caas.local", &[9101, 9102]).await;
    assert_eq!(store.get_app(&a).await.unwrap(), Some(spec.clone()));

    // Policy changes apply live too: a blacklist and a weight split between versions.
    let policy: AppSpec = serde_json::from_str(
        r#"{"weights":{"v1":1,"v2":1},"blacklist":["10.0.0.0/8"],"rate_limit":{"rps":1000}}"#,
    )
    .unwrap();
    store.put_app(&a, &policy).await.unwrap();
    eventually_picks(&router, "shop.caas.local", &[9101, 9102, 9103]).await;
    eventually("blacklist applied", || {
        router.load().lookup("shop.caas.local").is_some_and(|r| {
            r.app()
                .blocked("10.1.2.3".parse().unwrap(), "/", None)
                .is_some()
                && r.app()
                    .blocked("192.168.0.1".parse().unwrap(), "/", None)
                    .is_none()
        })
    })
    .await;
    store.put_app(&a, &spec).await.unwrap();
    eventually_picks(&router, "shop.caas.local", &[9103, 9109]).await;

    // The gateway-wide blacklist (/blacklist) applies live to every app; a broken edit
    // keeps the last good one; deleting it lifts it.
    let global: caas_core::Blacklist =
        serde_json::from_str(r#"{"paths":["/admin"],"user_agents":["sqlmap"]}"#).unwrap();
    store.put_blacklist(&global).await.unwrap();
    let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    eventually("global blacklist applied", || {
        let t = router.load();
        t.blocked(ip, "/admin/x", None).is_some() && t.blocked(ip, "/", Some(b"curl")).is_none()
    })
    .await;
    let raw = raw_client(&zk).await;
    let skipped = watching.stats().snapshot().skipped_nodes;
    raw.set_data("/t2/blacklist", b"{\"paths\": [\"no-slash\"]}", None)
        .await
        .unwrap();
    eventually("the broken blacklist edit skipped", || {
        watching.stats().snapshot().skipped_nodes > skipped
    })
    .await;
    assert!(
        router.load().blocked(ip, "/admin/x", None).is_some(),
        "the last good blacklist stays"
    );
    raw.set_data("/t2/blacklist", b"", None).await.unwrap();
    eventually("an empty blacklist node lifts it", || {
        router.load().blocked(ip, "/admin/x", None).is_none()
    })
    .await;

    // Deregistration evicts at once; deleting the app node falls back to all versions.
    registry
        .deregister(&a, &ver("v2"), &inst("c3"))
        .await
        .unwrap();
    eventually_picks(&router, "shop.caas.local", &[9109]).await;
    store.delete_app(&a).await.unwrap();
    eventually_picks(&router, "shop.caas.local", &[9101, 9102]).await;
    eventually_picks(&router, "www.shop.test", &[]).await;
    registry
        .deregister(&a, &ver("v1"), &inst("c1"))
        .await
        .unwrap();
    registry
        .deregister(&a, &ver("v1"), &inst("c2"))
        .await
        .unwrap();
    eventually("app removed from the table", || {
        router.load().lookup("shop.caas.local").is_none()
    })
    .await;
}

/// Several writes to one registration in one commit end in the state of the last write: a
/// registration withdrawn at once is not routed, one deleted and created again is routed to
/// its new address. (The discovery applies a deletion without reading the node; how it folds
/// a burst of events is unit-tested with the discovery.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_registry_writes_ends_in_the_state_of_the_last() {
    let Some(zk) = server("a_burst_of_registry_writes_ends_in_the_state_of_the_last") else {
        return;
    };
    let session = ZkSession::connect(config(&zk, "/t-burst")).await.unwrap();
    let store = ZkStore::new(session.clone());
    let registry = Registry::new(store.clone());
    let a = app("burst");
    registry
        .register(&a, &ver("v1"), &inst("c1"), addr(9301))
        .await
        .unwrap();
    let discovery = ZkDiscovery::start(ZkSession::connect(config(&zk, "/t-burst")).await.unwrap());
    let (router, _task) = gateway(discovery);
    eventually_picks(&router, "burst.caas.local", &[9301]).await;

    let node = |i: &str| format!("/service/address/burst/v1/{i}");
    let create = |i: &str, port: u16| store::Op::Create {
        path: node(i),
        data: format!("127.0.0.1:{port}").into_bytes(),
    };
    let delete = |i: &str| store::Op::Delete {
        path: node(i),
        version: None,
    };
    // Created and deleted; deleted and created again at a new address.
    store
        .commit(vec![create("c2", 9302), delete("c2")])
        .await
        .unwrap();
    store
        .commit(vec![delete("c1"), create("c1", 9303)])
        .await
        .unwrap();
    registry
        .register(&a, &ver("v1"), &inst("c3"), addr(9304))
        .await
        .unwrap();
    eventually_picks(&router, "burst.caas.local", &[9303, 9304]).await;
    // Created, deleted, created again; deleted, created, deleted.
    store
        .commit(vec![create("c2", 9305), delete("c2"), create("c2", 9306)])
        .await
        .unwrap();
    store
        .commit(vec![delete("c3"), create("c3", 9307), delete("c3")])
        .await
        .unwrap();
    registry
        .register(&a, &ver("v1"), &inst("c4"), addr(9308))
        .await
        .unwrap();
    eventually_picks(&router, "burst.caas.local", &[9303, 9306, 9308]).await;
}

/// The discovery's next update, within `within`.
async fn next(discovery: &mut ZkDiscovery, within: Duration) -> caas_core::Update {
    let next = tokio::time::timeout(within, discovery.next()).await;
    next.expect("no update in time").expect("discovery ended")
}

/// Changes that need a read wait `gather_ms` for the ones that follow and are read together:
/// instances registered one after another inside the window reach the router as one update
/// holding all of them. A deregistration needs no read and does not wait for the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_in_one_window_land_as_one_update_and_deregistrations_at_once() {
    let test = "registrations_in_one_window_land_as_one_update_and_deregistrations_at_once";
    let Some(zk) = server(test) else {
        return;
    };
    let window = Duration::from_secs(4);
    let registry = Registry::new(ZkStore::new(
        ZkSession::connect(config(&zk, "/t-gather")).await.unwrap(),
    ));
    let (a, v1) = (app("gather"), ver("v1"));
    registry
        .register(&a, &v1, &inst("c0"), addr(9400))
        .await
        .unwrap();
    let mut discovery = ZkDiscovery::connect(config(&zk, "/t-gather").with_gather(window))
        .await
        .unwrap();
    let ports = |spec: &AppSpec| -> BTreeSet<SocketAddr> {
        spec.versions[&v1]
            .endpoints
            .iter()
            .map(|e| e.addr)
            .collect()
    };
    match next(&mut discovery, WAIT).await {
        caas_core::Update::Reset(snapshot) => assert_eq!(ports(&snapshot.apps[&a]), set(&[9400])),
        other => panic!("expected the full read first, got {other:?}"),
    }

    let started = Instant::now();
    for i in 1..=4u16 {
        let id = inst(&format!("c{i}"));
        registry
            .register(&a, &v1, &id, addr(9400 + i))
            .await
            .unwrap();
    }
    let written = started.elapsed();
    assert!(
        written < window / 2,
        "four registrations took {written:?}: too slow to test"
    );
    match next(&mut discovery, WAIT).await {
        caas_core::Update::Upsert(id, spec) => {
            assert_eq!(id, a);
            assert_eq!(ports(&spec), set(&[9400, 9401, 9402, 9403, 9404]));
        }
        other => panic!("expected one upsert of the app, got {other:?}"),
    }

    registry.deregister(&a, &v1, &inst("c2")).await.unwrap();
    match next(&mut discovery, window / 2).await {
        caas_core::Update::Upsert(_, spec) => {
            assert_eq!(ports(&spec), set(&[9400, 9401, 9403, 9404]));
        }
        other => panic!("expected an upsert without c2, got {other:?}"),
    }
}

/// A full read of more nodes than one batched read holds (the discovery reads in batches of
/// 64): every app is routed, with its spec, and a bad node among them is skipped alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_read_of_many_apps_routes_every_one() {
    let Some(zk) = server("a_full_read_of_many_apps_routes_every_one") else {
        return;
    };
    let store = ZkStore::new(ZkSession::connect(config(&zk, "/t-many")).await.unwrap());
    let mut ops = Vec::new();
    for i in 0..150u16 {
        ops.push(store::Op::Create {
            path: format!("/service/address/app{i}/v1/c1"),
            data: format!("127.0.0.1:{}", 20000 + i).into_bytes(),
        });
        ops.push(store::Op::Create {
            path: format!("/apps/app{i}"),
            data: format!(r#"{{"domains":["www.app{i}.test"]}}"#).into_bytes(),
        });
    }
    ops.push(store::Op::Create {
        path: "/service/address/app70/v1/c2".into(),
        data: b"not an address".to_vec(),
    });
    store.commit(ops).await.unwrap();

    let watching = ZkSession::connect(config(&zk, "/t-many")).await.unwrap();
    let (router, _task) = gateway(ZkDiscovery::start(watching.clone()));
    eventually("all 150 apps routed", || router.load().apps().len() == 150).await;
    for i in 0..150u16 {
        assert_eq!(
            picks(&router, &format!("app{i}.caas.local")),
            set(&[20000 + i])
        );
        assert_eq!(
            picks(&router, &format!("www.app{i}.test")),
            set(&[20000 + i])
        );
    }
    assert_eq!(
        watching.stats().snapshot().skipped_nodes,
        1,
        "the bad address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_claims_are_exclusive_and_decide_routing() {
    let Some(zk) = server("domain_claims_are_exclusive_and_decide_routing") else {
        return;
    };
    let session = ZkSession::connect(config(&zk, "/caas")).await.unwrap();
    let registry = Registry::new(ZkStore::new(session.clone()));
    let store = AppStore::new(session.clone());
    let (a, b) = (app("alpha"), app("beta"));
    let d = Domain::new("www.example.test").unwrap();
    registry
        .register(&a, &ver("v1"), &inst("a1"), addr(9201))
        .await
        .unwrap();
    registry
        .register(&b, &ver("v1"), &inst("b1"), addr(9202))
        .await
        .unwrap();
    store.claim_domain(&d, &a).await.unwrap();
    store.claim_domain(&d, &a).await.unwrap(); // idempotent for the owner
    let err = store.claim_domain(&d, &b).await.unwrap_err();
    assert!(
        matches!(&err, ZkError::DomainTaken { owner, .. } if owner == "alpha"),
        "{err}"
    );
    assert!(
        err.to_string().contains("already claimed by app alpha"),
        "{err}"
    );

    // beta lists the domain in its spec anyway: the claim wins.
    let spec = AppSpec {
        domains: vec![d.clone()],
        ..AppSpec::default()
    };
    store.put_app(&b, &spec).await.unwrap();
    let discovery = ZkDiscovery::start(session.clone());
    let (router, _task) = gateway(discovery);
    eventually_picks(&router, "www.example.test", &[9201]).await;
    eventually_picks(&router, "beta.caas.local", &[9202]).await;

    // Released and claimed by beta: the domain moves live.
    assert!(matches!(
        store.release_domain(&d, &b).await,
        Err(ZkError::DomainTaken { .. })
    ));
    store.release_domain(&d, &a).await.unwrap();
    store.claim_domain(&d, &b).await.unwrap();
    eventually_picks(&router, "www.example.test", &[9202]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_nodes_are_skipped_and_counted_not_fatal() {
    let Some(zk) = server("bad_nodes_are_skipped_and_counted_not_fatal") else {
        return;
    };
    let session = ZkSession::connect(config(&zk, "/caas")).await.unwrap();
    let registry = Registry::new(ZkStore::new(session.clone()));
    let raw = raw_client(&zk).await;
    let open =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    // Present before the discovery starts (full read) ...
    raw.mkdir("/caas/service/address/good/v1", &open)
        .await
        .unwrap();
    raw.create(
        "/caas/service/address/good/v1/junk",
        b"not-an-address",
        &open,
    )
    .await
    .unwrap();
    raw.mkdir("/caas/service/address/Bad_App/v1", &open)
        .await
        .unwrap();
    raw.create("/caas/service/address/Bad_App/v1/c1", b"127.0.0.1:1", &open)
        .await
        .unwrap();
    raw.mkdir("/caas/apps", &open).await.unwrap();
    raw.create("/caas/apps/broken", b"{not json", &open)
        .await
        .unwrap();
    registry
        .register(&app("good"), &ver("v1"), &inst("ok"), addr(9301))
        .await
        .unwrap();

    let discovery = ZkDiscovery::start(ZkSession::connect(config(&zk, "/caas")).await.unwrap());
    let stats = discovery.session().stats().clone();
    let (router, _task) = gateway(discovery);
    eventually_picks(&router, "good.caas.local", &[9301]).await;
    assert!(router.load().lookup("broken.caas.local").is_none());
    assert!(
        stats.snapshot().skipped_nodes >= 3,
        "{:?}",
        stats.snapshot()
    );

    // ... and arriving later (watch events).
    let before = stats.snapshot().skipped_nodes;
    raw.create("/caas/service/address/good/v1/junk2", b"10.0.0.1", &open)
        .await
        .unwrap();
    raw.create("/caas/service/address/good/v1/UPPER", b"127.0.0.1:2", &open)
        .await
        .unwrap();
    raw.set_data("/caas/apps/broken", br#"{"defualt_version":"v1"}"#, None)
        .await
        .unwrap();
    eventually("three more skipped nodes", || {
        stats.snapshot().skipped_nodes >= before + 3
    })
    .await;
    registry
        .register(&app("good"), &ver("v1"), &inst("ok2"), addr(9302))
        .await
        .unwrap();
    eventually_picks(&router, "good.caas.local", &[9301, 9302]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_serves_last_table_while_zookeeper_is_down_then_converges() {
    let Some(mut zk) = server("gateway_serves_last_table_while_zookeeper_is_down_then_converges")
    else {
        return;
    };
    let cfg = config(&zk, "/caas").with_session_timeout(Duration::from_secs(20));
    let registry = Registry::new(ZkStore::new(ZkSession::connect(cfg.clone()).await.unwrap()));
    registry
        .register(&app("web"), &ver("v1"), &inst("w1"), addr(9401))
        .await
        .unwrap();
    let discovery = ZkDiscovery::start(ZkSession::connect(cfg).await.unwrap());
    let stats = discovery.session().stats().clone();
    let (router, _task) = gateway(discovery);
    eventually_picks(&router, "web.caas.local", &[9401]).await;

    zk.kill().unwrap();
    // ZooKeeper is gone: the gateway keeps routing with its last table.
    for _ in 0..20 {
        assert_eq!(picks(&router, "web.caas.local"), set(&[9401]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    zk.restart().unwrap();
    eventually("discovery reconnected and re-read", || {
        stats.snapshot().full_reads >= 2
    })
    .await;
    assert!(
        stats.snapshot().reconnects >= 1,
        "same session resumed: {:?}",
        stats.snapshot()
    );
    assert_eq!(stats.snapshot().session_expiries, 0);
    // A change made after the restart is routed.
    let mut registered = false;
    let deadline = Instant::now() + WAIT;
    while !registered {
        match registry
            .register(&app("web"), &ver("v1"), &inst("w2"), addr(9402))
            .await
        {
            Ok(()) => registered = true,
            Err(e) => {
                assert!(Instant::now() < deadline, "register after restart: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eventually_picks(&router, "web.caas.local", &[9401, 9402]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_recreates_ephemerals_and_discovery_recovers() {
    // Short ticks so a 2 s session timeout is allowed (ZooKeeper clamps to 2..20 ticks).
    let Some(zk) = ZkServer::start_or_skip(
        ZkServerBuilder::default().tick_ms(500),
        "session_expiry_recreates_ephemerals_and_discovery_recovers",
    ) else {
        return;
    };
    let proxy = TcpProxy::start(([127, 0, 0, 1], zk.port()).into())
        .await
        .unwrap();
    let cfg = ZkConfig::new(proxy.connect_string()).with_session_timeout(Duration::from_secs(2));
    let reg_session = ZkSession::connect(cfg.clone()).await.unwrap();
    let registry = Registry::new(ZkStore::new(reg_session.clone()));
    registry
        .register(&app("api"), &ver("v1"), &inst("i1"), addr(9501))
        .await
        .unwrap();
    let disc_session = ZkSession::connect(cfg).await.unwrap();
    let (router, _task) = gateway(ZkDiscovery::start(disc_session.clone()));
    eventually_picks(&router, "api.caas.local", &[9501]).await;
    // The gateway's announcement rides on its discovery session.
    let info = GatewayInfo {
        admin: Some(addr(9901)),
        listen: addr(8080),
        listen_tls: None,
    };
    announce_gateway(&ZkStore::new(disc_session.clone()), "gw-1", &info)
        .await
        .unwrap();
    let old_owner = reg_session.client().unwrap().session_id().0;

    // A partition longer than the session timeout: ZooKeeper expires both sessions and
    // deletes the ephemeral node; the gateway keeps its last table meanwhile.
    proxy.partition(true);
    let raw = raw_client(&zk).await;
    let node = "/caas/service/address/api/v1/i1";
    let deadline = Instant::now() + WAIT;
    while raw.check_stat(node).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "server never expired the session"
        );
        assert_eq!(picks(&router, "api.caas.local"), set(&[9501]));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("client saw the expiry", || {
        reg_session.stats().snapshot().session_expiries >= 1
    })
    .await;
    proxy.partition(false);

    // New sessions: the node is back, owned by the new session, and routes converge.
    eventually("new registry session", || reg_session.epoch() >= 1).await;
    eventually("new discovery session", || disc_session.epoch() >= 1).await;
    let deadline = Instant::now() + WAIT;
    let (data, stat) = loop {
        match raw.get_data(node).await {
            Ok(found) => break found,
            Err(e) => assert!(Instant::now() < deadline, "node not re-created: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(data, b"127.0.0.1:9501");
    assert_ne!(
        stat.ephemeral_owner, old_owner,
        "re-created by the new session"
    );
    assert_eq!(
        stat.ephemeral_owner,
        reg_session.client().unwrap().session_id().0
    );
    assert_eq!(reg_session.stats().snapshot().ephemerals_recreated, 1);
    eventually_picks(&router, "api.caas.local", &[9501]).await;
    let deadline = Instant::now() + WAIT;
    let (data, stat) = loop {
        match raw.get_data("/caas/gateways/gw-1").await {
            Ok(found) => break found,
            Err(e) => assert!(
                Instant::now() < deadline,
                "announcement not re-created: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(serde_json::from_slice::<GatewayInfo>(&data).unwrap(), info);
    assert_eq!(
        stat.ephemeral_owner,
        disc_session.client().unwrap().session_id().0
    );

    // Both new sessions are fully usable: writes go through, the watch follows them.
    registry
        .register(&app("api"), &ver("v1"), &inst("i2"), addr(9502))
        .await
        .unwrap();
    eventually_picks(&router, "api.caas.local", &[9501, 9502]).await;
    registry
        .deregister(&app("api"), &ver("v1"), &inst("i1"))
        .await
        .unwrap();
    eventually_picks(&router, "api.caas.local", &[9502]).await;
    assert!(disc_session.stats().snapshot().full_reads >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_acls_confine_tenants_and_make_gateways_read_only() {
    let Some(zk) = server("digest_acls_confine_tenants_and_make_gateways_read_only") else {
        return;
    };
    let gateway_id = format!("digest:{}", digest_id("gateway:gw-secret").unwrap());
    let with = |digest: &str| {
        config(&zk, "/secure")
            .with_digest(digest)
            .with_reader(gateway_id.clone())
    };
    let admin = ZkSession::connect(with("admin:admin-secret"))
        .await
        .unwrap();
    provision_tree(&admin).await.unwrap();
    let (a, b) = (app("tenant-a-app"), app("tenant-b-app"));
    grant_app(&admin, &a, &digest_id("ta:pw-a").unwrap())
        .await
        .unwrap();
    grant_app(&admin, &b, &digest_id("tb:pw-b").unwrap())
        .await
        .unwrap();

    let tenant_a = ZkSession::connect(with("ta:pw-a")).await.unwrap();
    let store_a = AppStore::new(tenant_a.clone());
    let spec = AppSpec {
        default_version: Some(ver("v1")),
        ..AppSpec::default()
    };
    store_a.put_app(&a, &spec).await.unwrap();
    Registry::new(ZkStore::new(tenant_a.clone()))
        .register(&a, &ver("v1"), &inst("x1"), addr(9601))
        .await
        .unwrap();
    // Tenant A cannot touch tenant B's app, nor create apps it was not granted.
    let denied = store_a.put_app(&b, &spec).await.unwrap_err();
    assert!(matches!(denied, ZkError::Denied { .. }), "{denied}");
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    assert!(matches!(
        Registry::new(ZkStore::new(tenant_a.clone()))
            .register(&b, &ver("v1"), &inst("x2"), addr(9602))
            .await,
        Err(RegistryError::Store(StoreError::Denied { .. }))
    ));
    assert!(matches!(
        store_a.put_app(&app("not-granted"), &spec).await,
        Err(ZkError::Denied { .. })
    ));
    assert!(matches!(
        store_a.delete_app(&a).await,
        Err(ZkError::Denied { .. })
    ));

    // The gateway identity reads everything and writes nothing.
    // Its own nodes (its announcement) are readable by the control plane's identity.
    let gw = ZkSession::connect(
        config(&zk, "/secure")
            .with_digest("gateway:gw-secret")
            .with_reader(format!(
                "digest:{}",
                digest_id("admin:admin-secret").unwrap()
            )),
    )
    .await
    .unwrap();
    assert!(matches!(
        AppStore::new(gw.clone())
            .put_app(&a, &AppSpec::default())
            .await,
        Err(ZkError::Denied { .. })
    ));
    // ... except its own announcement, which the admin and the API can list.
    let info = GatewayInfo {
        admin: Some(addr(9901)),
        listen: addr(8080),
        listen_tls: None,
    };
    announce_gateway(&ZkStore::new(gw.clone()), "gw-1", &info)
        .await
        .unwrap();
    assert_eq!(
        list_gateways(&ZkStore::new(admin.clone()))
            .await
            .unwrap()
            .get("gw-1"),
        Some(&info),
        "a read-only gateway announces itself under /gateways"
    );
    // A tenant hides a node from the gateways with its own ACL: skipped and counted, the
    // rest of the registry is still routed.
    let tenant_raw = zookeeper_client::Client::connector()
        .with_auth("digest", b"ta:pw-a")
        .connect(&zk.connect_string())
        .await
        .unwrap();
    let private =
        zookeeper_client::CreateMode::Ephemeral.with_acls(zookeeper_client::Acls::creator_all());
    tenant_raw
        .create(
            "/secure/service/address/tenant-a-app/v1/hidden",
            b"127.0.0.1:9609",
            &private,
        )
        .await
        .unwrap();
    let (router, _task) = gateway(ZkDiscovery::start(gw.clone()));
    eventually_picks(&router, "tenant-a-app.caas.local", &[9601]).await;
    assert_eq!(gw.stats().snapshot().skipped_nodes, 1, "the hidden node");
    tenant_raw
        .create(
            "/secure/service/address/tenant-a-app/v1/hidden2",
            b"127.0.0.1:9610",
            &private,
        )
        .await
        .unwrap();
    Registry::new(ZkStore::new(tenant_a.clone()))
        .register(&a, &ver("v1"), &inst("x3"), addr(9603))
        .await
        .unwrap();
    // hidden2 arrived while watching (ZooKeeper may not even notify an identity that cannot
    // read the node): it is never routed, and the registration after it is.
    eventually_picks(&router, "tenant-a-app.caas.local", &[9601, 9603]).await;

    // Anonymous clients can read nothing.
    let raw = raw_client(&zk).await;
    assert!(matches!(
        raw.get_data("/secure/apps/tenant-a-app").await,
        Err(zookeeper_client::Error::NoAuth)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_zookeeper_secure_port() {
    let Some(zk) = ZkServer::start_or_skip(
        ZkServerBuilder::default().tls(true),
        "tls_to_zookeeper_secure_port",
    ) else {
        return;
    };
    let files = zk.tls_files().unwrap().clone();
    let cfg = ZkConfig::new(zk.secure_connect_string().unwrap()).with_tls(ZkTlsConfig {
        ca: files.ca.clone(),
        cert: Some(files.client_cert.clone()),
        key: Some(files.client_key.clone()),
    });
    let session = ZkSession::connect(cfg.clone()).await.unwrap();
    Registry::new(ZkStore::new(session.clone()))
        .register(&app("sec"), &ver("v1"), &inst("s1"), addr(9701))
        .await
        .unwrap();
    let (router, _task) = gateway(ZkDiscovery::start(session));
    eventually_picks(&router, "sec.caas.local", &[9701]).await;

    // Without a client certificate the server (clientAuth=need) refuses the handshake.
    let no_identity = ZkConfig::new(zk.secure_connect_string().unwrap())
        .with_session_timeout(Duration::from_secs(4))
        .with_tls(ZkTlsConfig {
            ca: files.ca,
            cert: None,
            key: None,
        });
    assert!(matches!(
        ZkSession::connect(no_identity).await,
        Err(ZkError::Connect { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_config_values_and_a_wrong_key() {
    let Some(zk) = server("encrypted_config_values_and_a_wrong_key") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (dir.path().join("k1"), dir.path().join("k2"));
    std::fs::write(&k1, [1u8; 32]).unwrap();
    std::fs::write(&k2, [2u8; 32]).unwrap();
    let writer = ZkSession::connect(config(&zk, "/caas").with_encryption_key_file(&k1))
        .await
        .unwrap();
    let a = app("vault");
    let spec = AppSpec {
        domains: vec![Domain::new("secret.test").unwrap()],
        ..AppSpec::default()
    };
    AppStore::new(writer.clone())
        .put_app(&a, &spec)
        .await
        .unwrap();
    Registry::new(ZkStore::new(writer.clone()))
        .register(&a, &ver("v1"), &inst("e1"), addr(9801))
        .await
        .unwrap();
    let raw = raw_client(&zk).await;
    let (stored, _) = raw.get_data("/caas/apps/vault").await.unwrap();
    assert!(stored.starts_with(b"enc:v1:"), "stored encrypted");
    assert!(!String::from_utf8_lossy(&stored).contains("secret.test"));

    // The right key: the config applies.
    let good = ZkSession::connect(config(&zk, "/caas").with_encryption_key_file(&k1))
        .await
        .unwrap();
    let (router, _t1) = gateway(ZkDiscovery::start(good));
    eventually_picks(&router, "secret.test", &[9801]).await;

    // A wrong key: a clear error naming the node; the discovery skips the spec and counts it,
    // the app's instances are still routed.
    let bad = ZkSession::connect(config(&zk, "/caas").with_encryption_key_file(&k2))
        .await
        .unwrap();
    let err = AppStore::new(bad.clone()).get_app(&a).await.unwrap_err();
    assert!(
        matches!(&err, ZkError::Decrypt { path } if path == "/apps/vault"),
        "{err}"
    );
    assert!(err.to_string().contains("wrong encryption key"), "{err}");
    let stats = bad.stats().clone();
    let (router2, _t2) = gateway(ZkDiscovery::start(bad));
    eventually_picks(&router2, "vault.caas.local", &[9801]).await;
    assert!(router2.load().lookup("secret.test").is_none());
    assert!(stats.snapshot().skipped_nodes >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_announcements_live_and_die_with_the_gateway_session() {
    let Some(zk) = server("gateway_announcements_live_and_die_with_the_gateway_session") else {
        return;
    };
    let gw = ZkSession::connect(config(&zk, "/ann")).await.unwrap();
    let control = ZkStore::new(ZkSession::connect(config(&zk, "/ann")).await.unwrap());
    let info = GatewayInfo {
        admin: Some(addr(9901)),
        listen: addr(8080),
        listen_tls: Some(addr(8443)),
    };
    announce_gateway(&ZkStore::new(gw.clone()), "edge-1", &info)
        .await
        .unwrap();
    let raw = raw_client(&zk).await;
    let (data, stat) = raw.get_data("/ann/gateways/edge-1").await.unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&data).unwrap(),
        serde_json::json!({"admin": "127.0.0.1:9901", "listen": "127.0.0.1:8080", "listen_tls": "127.0.0.1:8443"})
    );
    assert_eq!(stat.ephemeral_owner, gw.client().unwrap().session_id().0);
    assert_eq!(list_gateways(&control).await.unwrap()["edge-1"], info);
    assert!(matches!(
        announce_gateway(&ZkStore::new(gw.clone()), "Bad_Id", &info).await,
        Err(StoreError::Invalid { .. })
    ));

    // The same gateway restarted before its old session expired: the new run takes the id.
    let again = ZkSession::connect(config(&zk, "/ann")).await.unwrap();
    announce_gateway(&ZkStore::new(again.clone()), "edge-1", &info)
        .await
        .unwrap();
    let (_, stat) = raw.get_data("/ann/gateways/edge-1").await.unwrap();
    assert_eq!(stat.ephemeral_owner, again.client().unwrap().session_id().0);
    gw.close();

    // The gateway stops: its announcement goes with its session.
    again.close();
    let deadline = Instant::now() + WAIT;
    while !list_gateways(&control).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the announcement outlived the gateway"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
