//! Who may do what, on every store: one permission test run against ZooKeeper (digest ACLs)
//! and etcd (users and roles, over mutual TLS), through the store contract; and etcd's TLS
//! and credentials on their own (a refused client certificate, refused credentials, clear
//! configuration errors). Without ZooKeeper or etcd the tests print SKIPPED, and fail under
//! `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use caas_backends::store::{
    ConflictKind, EtcdAdmin, EtcdConfig, EtcdStore, EtcdTlsConfig, Op, Store, StoreDiscovery,
    StoreError, WatchEvent, put,
};
use caas_backends::testing::SECURE_ROOT_USER;
use caas_backends::testing::logs;
use caas_backends::testing::routes::{WAIT, eventually_picks};
use caas_backends::testing::secure::{EtcdSecure, SecureFixture, ZkSecure};
use caas_backends::testing::shared_etcd_secure;
use caas_core::{AppId, Discovery as _, Domain, Router};

fn app(s: &str) -> AppId {
    AppId::new(s).unwrap()
}

fn create(path: &str, data: &str) -> Op {
    Op::Create {
        path: path.into(),
        data: data.into(),
    }
}

#[track_caller]
fn assert_denied<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    match r {
        Err(StoreError::Denied { .. }) => {}
        other => panic!("{what}: expected permission denied, got {other:?}"),
    }
}

/// A gateway: a router fed by the store's discovery.
fn gateway<S: Store>(mut discovery: StoreDiscovery<S>) -> Arc<Router> {
    let router = Arc::new(Router::new(vec![Domain::new("caas.local").unwrap()]));
    let r = router.clone();
    tokio::spawn(async move {
        while let Some(update) = discovery.next().await {
            r.apply(update);
        }
    });
    router
}

/// A tenant writes its app's config and registers instances, and nothing of another app
/// (`hello2` included: a prefix of names is not a grant) nor an app it was not granted; the
/// gateway reads everything, routes the tenant's instances and writes nothing but its own
/// announcement, which the admin reads. Provisioning twice changes nothing.
async fn tenants_write_their_apps_and_gateways_only_announce<F: SecureFixture>(f: F) {
    let name = f.name();
    let admin = f.admin().await.unwrap();
    let (hello, hello2) = (app("hello"), app("hello2"));
    f.grant_app(&hello, "ta:pw-a").await.unwrap();
    f.grant_app(&hello2, "tb:pw-b").await.unwrap();
    // Idempotent: the same again.
    f.admin().await.unwrap();
    f.grant_app(&hello, "ta:pw-a").await.unwrap();

    let ta = f.tenant("ta:pw-a").await.unwrap();
    let spec = br#"{"default_version":"v1"}"#;
    put(&ta, "/apps/hello", spec).await.unwrap();
    ta.create_ephemeral("/service/address/hello/v1/x1", b"127.0.0.1:9601")
        .await
        .unwrap();
    assert_eq!(
        admin.get("/apps/hello").await.unwrap().unwrap().data,
        spec,
        "{name}: the admin reads the tenant's spec"
    );

    // Not another tenant's app, not even one whose name starts with its own.
    assert_denied(
        put(&ta, "/apps/hello2", spec).await,
        "a tenant writes another app's spec",
    );
    assert_denied(
        ta.get("/apps/hello2").await,
        "a tenant reads another app's spec",
    );
    assert_denied(
        ta.create_ephemeral("/service/address/hello2/v1/x2", b"127.0.0.1:9602")
            .await,
        "a tenant registers into another app",
    );
    assert_denied(
        ta.commit(vec![create(
            "/service/address/hello2/v1/x3",
            "127.0.0.1:9603",
        )])
        .await,
        "a tenant commits into another app's registry",
    );
    // Nor an app it was not granted.
    assert_denied(
        put(&ta, "/apps/not-granted", spec).await,
        "a tenant creates an app",
    );
    assert_denied(
        ta.commit(vec![create("/domains/www.hello.test", "hello")])
            .await,
        "a tenant claims a domain",
    );

    // The gateway reads and routes everything...
    let gw = f.gateway().await.unwrap();
    assert_eq!(gw.get("/apps/hello").await.unwrap().unwrap().data, spec);
    assert_eq!(
        gw.children("/service/address/hello/v1").await.unwrap(),
        ["x1"]
    );
    let mut watch = gw.watch("/");
    assert_eq!(
        tokio::time::timeout(WAIT, watch.next()).await.unwrap(),
        Some(WatchEvent::Resync),
        "{name}: the gateway watches the whole tree"
    );
    let router = gateway(StoreDiscovery::start(f.gateway().await.unwrap(), None));
    eventually_picks(&router, "hello.caas.local", &[9601]).await;
    ta.create_ephemeral("/service/address/hello/v1/x4", b"127.0.0.1:9604")
        .await
        .unwrap();
    eventually_picks(&router, "hello.caas.local", &[9601, 9604]).await;
    let deadline = Instant::now() + WAIT;
    while tokio::time::timeout(deadline - Instant::now(), watch.next())
        .await
        .unwrap()
        != Some(WatchEvent::Changed("/service/address/hello/v1/x4".into()))
    {}

    // ... writes none of it ...
    assert_denied(
        put(&gw, "/apps/hello", b"{}").await,
        "the gateway writes a spec",
    );
    assert_denied(
        gw.commit(vec![create(
            "/service/address/hello/v1/g1",
            "127.0.0.1:9700",
        )])
        .await,
        "the gateway registers an instance",
    );
    assert_denied(
        gw.commit(vec![Op::Delete {
            path: "/service/address/hello/v1/x1".into(),
            version: None,
        }])
        .await,
        "the gateway deregisters an instance",
    );
    // ... but announces itself.
    gw.create_ephemeral("/gateways/gw-1", br#"{"listen":"127.0.0.1:8080"}"#)
        .await
        .unwrap();
    assert_eq!(
        admin.get("/gateways/gw-1").await.unwrap().unwrap().data,
        br#"{"listen":"127.0.0.1:8080"}"#,
        "{name}: the admin reads the announcement"
    );
    drop(watch);
    gw.close().await;
    ta.close().await;
    let deadline = Instant::now() + WAIT;
    while admin.get("/gateways/gw-1").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "{name}: the announcement goes with the gateway"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually_picks(&router, "hello.caas.local", &[]).await;
}

macro_rules! suite {
    ($store:ident, $fixture:expr, [$($test:ident),* $(,)?]) => {
        mod $store {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    logs();
                    let name = concat!(stringify!($store), "_", stringify!($test));
                    let Some(f) = $fixture(name) else { return };
                    super::$test(f).await;
                }
            )*
        }
    };
}

suite!(
    zookeeper,
    ZkSecure::shared,
    [tenants_write_their_apps_and_gateways_only_announce]
);
suite!(
    etcd,
    EtcdSecure::shared,
    [tenants_write_their_apps_and_gateways_only_announce]
);

/// Over mutual TLS the store works; without a client certificate etcd refuses the handshake
/// and the error says so; a wrong password, or no user, is refused naming the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_mutual_tls_and_refused_identities() {
    logs();
    let Some(server) = shared_etcd_secure("etcd_over_mutual_tls") else {
        return;
    };
    let config = server.config("/etcd_tls").with_user(SECURE_ROOT_USER);
    let s = EtcdStore::connect(config.clone()).await.unwrap();
    s.commit(vec![create("/a/b", "1")]).await.unwrap();
    let v = s.get("/a/b").await.unwrap().unwrap();
    assert_eq!(v.data, b"1");
    let stale = s
        .commit(vec![Op::Set {
            path: "/a/b".into(),
            data: b"2".to_vec(),
            version: Some(v.version + 1),
        }])
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::Conflict {
                kind: ConflictKind::BadVersion,
                ..
            })
        ),
        "{stale:?}"
    );
    let mut w = s.watch("/a");
    assert_eq!(
        tokio::time::timeout(WAIT, w.next()).await.unwrap(),
        Some(WatchEvent::Resync)
    );
    s.create_ephemeral("/a/e", b"here").await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, w.next()).await.unwrap(),
        Some(WatchEvent::Changed("/a/e".into()))
    );
    assert_eq!(s.children("/a").await.unwrap(), ["b", "e"]);
    assert_eq!(s.list("/a").await.unwrap().len(), 2);
    s.close().await;

    // No client certificate: the handshake is refused.
    let mut no_identity = config.clone();
    no_identity.request_timeout = Duration::from_secs(2);
    if let Some(tls) = &mut no_identity.tls {
        tls.cert = None;
        tls.key = None;
    }
    let e = EtcdStore::connect(no_identity).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    assert!(
        text.contains(&server.endpoint()) && text.to_lowercase().contains("certificate"),
        "the error names the server and the certificate: {text}"
    );

    // A wrong password is refused naming the user.
    let e = EtcdStore::connect(config.clone().with_user("root:wrong"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Unauthenticated { user, .. } if user == "root"),
        "{e:?}"
    );
    assert!(e.to_string().contains("wrong password"), "{e}");
    // Without a user, etcd takes the client certificate's common name as the user: unknown
    // here, so it may do nothing.
    let mut anonymous = config.clone();
    anonymous.user = None;
    let s = EtcdStore::connect(anonymous).await.unwrap();
    assert_denied(
        s.get("/a/b").await,
        "a client with a certificate but no user",
    );
    s.close().await;
}

/// Bad TLS or credential settings are refused before any connection, naming what is wrong.
#[tokio::test]
async fn etcd_security_settings_are_checked_before_connecting() {
    let refused = |config: EtcdConfig| async move {
        match EtcdStore::connect(config).await {
            Err(StoreError::Invalid { reason, .. }) => reason,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    };
    let tls = EtcdTlsConfig {
        ca: "/nonexistent/ca.pem".into(),
        cert: None,
        key: None,
    };
    let reason = refused(EtcdConfig::new("https://127.0.0.1:1").with_tls(tls.clone())).await;
    assert!(reason.contains("/nonexistent/ca.pem"), "{reason}");
    let reason = refused(EtcdConfig::new("https://127.0.0.1:1")).await;
    assert!(reason.contains("CA"), "{reason}");
    let reason = refused(EtcdConfig::new("http://127.0.0.1:1").with_tls(tls.clone())).await;
    assert!(reason.contains("https://"), "{reason}");
    let half = EtcdTlsConfig {
        cert: Some("/tmp/cert.pem".into()),
        ..tls
    };
    let reason = refused(EtcdConfig::new("https://127.0.0.1:1").with_tls(half)).await;
    assert!(reason.contains("private key"), "{reason}");
    let reason = refused(EtcdConfig::new("http://127.0.0.1:1").with_user("nopassword")).await;
    assert!(reason.contains("user:password"), "{reason}");
    // The password never shows in a config's debug output.
    let shown = format!(
        "{:?}",
        EtcdConfig::new("http://127.0.0.1:1").with_user("ta:s3cret")
    );
    assert!(shown.contains("ta") && !shown.contains("s3cret"), "{shown}");
    // Enabling auth creates etcd's root user: it needs root's credentials (checked before
    // any request; connecting without credentials sends none).
    let mut admin = EtcdAdmin::connect(EtcdConfig::new("http://127.0.0.1:1"))
        .await
        .unwrap();
    match admin.enable_auth().await {
        Err(StoreError::Invalid { reason, .. }) => assert!(reason.contains("root"), "{reason}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}
