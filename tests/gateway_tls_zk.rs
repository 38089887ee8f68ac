//! HTTPS for custom domains from the store, end to end: a certificate stored at
//! `/caas/certs/{domain}` (key sealed with the config key) is served by a store-fed gateway
//! (`StoreCertSource`) for the app holding the domain's claim, and never for a domain whose
//! claim belongs to another app, including after the claim moves; the same run on
//! ZooKeeper (written with `AppStore` and `CertStore`) and on etcd (nodes written as the
//! layout says).

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caas::backends::store::{
    EtcdConfig, EtcdStore, Op, Store, StoreCertSource, StoreDiscovery, ZkStore, put,
};
use caas::backends::testing::{EtcdServer, ZkServer};
use caas::backends::zk::certs::CertNode;
use caas::backends::zk::{
    AppStore, CertStore, ValueCipher, ZkConfig, ZkDiscovery, ZkError, ZkSession,
};
use caas::core::{AppId, AppSpec, Discovery, Domain, Endpoint, Version, VersionSpec};
use caas::gateway::{CertResolver, Gateway, GatewayConfig, TlsAcceptor, UnknownSni};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

mod support {
    pub(crate) mod tls;
    pub(crate) mod upstream;
}
use support::tls::{Ca, der, presented};
use support::upstream::upstream;

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn spec(endpoint: SocketAddr) -> AppSpec {
    AppSpec {
        versions: [(
            Version::new("v1").unwrap(),
            VersionSpec {
                endpoints: vec![Endpoint::new(endpoint)],
            },
        )]
        .into(),
        ..AppSpec::default()
    }
}

/// How the control plane writes apps, claims and certificates: ZooKeeper's `AppStore` and
/// `CertStore`, or the nodes of the layout written directly (etcd).
enum Writer {
    Zk {
        apps: AppStore,
        certs: CertStore,
        nodes: ZkStore,
    },
    Nodes {
        store: EtcdStore,
        cipher: Box<ValueCipher>,
    },
}

impl Writer {
    /// Writes a node directly, around the checks of the writer.
    async fn put_node(&self, path: &str, data: &[u8]) {
        match self {
            Writer::Zk { nodes, .. } => put(nodes, path, data).await.unwrap(),
            Writer::Nodes { store, .. } => put(store, path, data).await.unwrap(),
        }
    }

    async fn put_app(&self, app: &AppId, spec: &AppSpec) {
        match self {
            Writer::Zk { apps, .. } => apps.put_app(app, spec).await.unwrap(),
            Writer::Nodes { store, .. } => {
                let data = serde_json::to_vec(spec).unwrap();
                put(store, &format!("/apps/{app}"), &data).await.unwrap();
            }
        }
    }

    async fn claim(&self, domain: &Domain, app: &AppId) {
        match self {
            Writer::Zk { apps, .. } => apps.claim_domain(domain, app).await.unwrap(),
            Writer::Nodes { store, .. } => {
                let op = Op::Create {
                    path: format!("/domains/{domain}"),
                    data: app.as_str().as_bytes().to_vec(),
                };
                store.commit(vec![op]).await.unwrap();
            }
        }
    }

    async fn release(&self, domain: &Domain, app: &AppId) {
        match self {
            Writer::Zk { apps, .. } => apps.release_domain(domain, app).await.unwrap(),
            Writer::Nodes { store, .. } => delete(store, &format!("/domains/{domain}")).await,
        }
    }

    async fn put_cert(
        &self,
        domain: &Domain,
        app: &AppId,
        (cert, key): &(String, String),
    ) -> Result<(), String> {
        match self {
            Writer::Zk { certs, .. } => certs
                .put_cert(domain, app, cert, key)
                .await
                .map_err(|e| e.to_string()),
            Writer::Nodes { store, cipher } => {
                let path = format!("/certs/{domain}");
                let node = sealed_node(cipher, &path, app, cert, key);
                put(store, &path, &node).await.map_err(|e| e.to_string())
            }
        }
    }

    async fn delete_cert(&self, domain: &Domain, app: &AppId) {
        match self {
            Writer::Zk { certs, .. } => certs.delete_cert(domain, app).await.unwrap(),
            Writer::Nodes { store, .. } => delete(store, &format!("/certs/{domain}")).await,
        }
    }
}

async fn delete(store: &impl Store, path: &str) {
    let op = Op::Delete {
        path: path.to_owned(),
        version: None,
    };
    store.commit(vec![op]).await.unwrap();
}

/// The JSON of a certificate node at `path`, its key sealed for that path.
fn sealed_node(cipher: &ValueCipher, path: &str, app: &AppId, cert: &str, key: &str) -> Vec<u8> {
    let sealed = cipher.encrypt(path, key.as_bytes()).unwrap();
    serde_json::to_vec(&CertNode {
        app: app.clone(),
        cert: cert.to_owned(),
        key: String::from_utf8(sealed).unwrap(),
    })
    .unwrap()
}

/// The store server, to take it away and bring it back.
enum Server {
    Zk(ZkServer),
    Etcd(EtcdServer),
}

impl Server {
    fn kill(&mut self) {
        match self {
            Server::Zk(s) => s.kill().unwrap(),
            Server::Etcd(s) => s.kill().unwrap(),
        }
    }

    fn restart(&mut self) {
        match self {
            Server::Zk(s) => s.restart().unwrap(),
            Server::Etcd(s) => s.restart().unwrap(),
        }
    }
}

/// Apps a and b claim www.a.test and www.b.test; a stores a certificate for its domain, and
/// a node naming app a is written around the writer at b's domain. A gateway fed by
/// `discovery`, its certificates from `gateway_store` with `cipher`, serves a's certificate
/// and routes over it, refuses the forged one, follows the claim as it moves, and keeps its
/// certificates while the store is away.
async fn claimant_certificates_are_served<S: Store>(
    server: &mut Server,
    writer: &Writer,
    gateway_store: S,
    cipher: ValueCipher,
    discovery: impl Discovery,
    ca: &Ca,
    cert_a: &(String, String),
) {
    let (a, b) = (AppId::new("a").unwrap(), AppId::new("b").unwrap());
    let www_a = Domain::new("www.a.test").unwrap();
    // Written around the writer (a stale writer, a hand edit): a node naming app a at b's
    // domain, its key properly sealed. The gateway must still refuse it.
    let forged = ca.leaf(&["www.b.test"]);
    let node = sealed_node(&cipher, "/certs/www.b.test", &a, &forged.0, &forged.1);
    writer.put_node("/certs/www.b.test", &node).await;

    // The gateway: routes and certificates from the store, its own certificate for the
    // gateway domain, unknown names refused.
    let gateway_cert = ca.leaf(&["*.caas.local"]);
    let resolver =
        CertResolver::from_pem(&[(&gateway_cert.0, &gateway_cert.1)], UnknownSni::Reject).unwrap();
    let source = StoreCertSource::start(gateway_store, Some(cipher));
    let source_stats = source.stats();
    tokio::spawn(Arc::clone(&resolver).follow(source));
    let gateway = Gateway::builder(GatewayConfig {
        domains: vec![Domain::new("caas.local").unwrap()],
        ..GatewayConfig::default()
    })
    .discovery(discovery)
    .build()
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::new(Arc::clone(&resolver)).unwrap();
    let g = gateway.clone();
    tokio::spawn(async move {
        g.serve_tls(listener, acceptor, std::future::pending())
            .await
    });

    wait_for("a's certificate to be served", async || {
        presented(gw, "www.a.test", ca).await == Ok(der(&cert_a.0))
    })
    .await;
    // And requests over it reach a's app (the handshake verified the chain for the name).
    wait_for("www.a.test to route", async || {
        let tcp = TcpStream::connect(gw).await.unwrap();
        let name = ServerName::try_from("www.a.test").unwrap();
        let tls = TlsConnector::from(ca.client())
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("/")
            .header("host", "www.a.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let ok = resp.status() == 200;
        ok && resp.into_body().collect().await.unwrap().to_bytes() == "one"
    })
    .await;
    // The forged certificate for b's domain is not served.
    let refused = presented(gw, "www.b.test", ca).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("AccessDenied")),
        "{refused:?}"
    );
    assert!(source_stats.refused.load(Relaxed) >= 1);

    // The claim of www.a.test moves to b: a's certificate leaves service at once.
    writer.release(&www_a, &a).await;
    writer.claim(&www_a, &b).await;
    wait_for("a's certificate to leave service", async || {
        presented(gw, "www.a.test", ca).await.is_err()
    })
    .await;
    // b stores its own for the domain it now holds: served.
    let cert_b = ca.leaf(&["www.a.test"]);
    writer.put_cert(&www_a, &b, &cert_b).await.unwrap();
    wait_for("b's certificate to be served", async || {
        presented(gw, "www.a.test", ca).await == Ok(der(&cert_b.0))
    })
    .await;
    // Deleting it takes it out of service.
    writer.delete_cert(&www_a, &b).await;
    wait_for("the deleted certificate to leave service", async || {
        presented(gw, "www.a.test", ca).await.is_err()
    })
    .await;
    assert!(presented(gw, "app.caas.local", ca).await.is_ok());

    // The store goes away: the certificates in service stay; back, changes flow again.
    writer.put_cert(&www_a, &b, &cert_b).await.unwrap();
    wait_for("b's certificate to be served again", async || {
        presented(gw, "www.a.test", ca).await == Ok(der(&cert_b.0))
    })
    .await;
    server.kill();
    for _ in 0..5 {
        assert_eq!(presented(gw, "www.a.test", ca).await, Ok(der(&cert_b.0)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.restart();
    let renewed = ca.leaf(&["www.a.test"]);
    let mut stored = false;
    for _ in 0..200 {
        if writer.put_cert(&www_a, &b, &renewed).await.is_ok() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "could not store after the restart");
    wait_for("the renewed certificate after the restart", async || {
        presented(gw, "www.a.test", ca).await == Ok(der(&renewed.0))
    })
    .await;
}

/// The apps a and b with an upstream each, their claims, and a's certificate stored.
async fn seed(writer: &Writer, ca: &Ca) -> (String, String) {
    let (a, b) = (AppId::new("a").unwrap(), AppId::new("b").unwrap());
    writer.put_app(&a, &spec(upstream("one").await)).await;
    writer.put_app(&b, &spec(upstream("two").await)).await;
    writer.claim(&Domain::new("www.a.test").unwrap(), &a).await;
    writer.claim(&Domain::new("www.b.test").unwrap(), &b).await;
    let cert_a = ca.leaf(&["www.a.test"]);
    writer
        .put_cert(&Domain::new("www.a.test").unwrap(), &a, &cert_a)
        .await
        .unwrap();
    cert_a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_certificates_are_served_only_for_the_app_holding_the_claim() {
    let Some(zk) = ZkServer::start_or_skip(ZkServer::builder(), "gateway_tls_zk") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("config.key");
    std::fs::write(&key_file, [9u8; 32]).unwrap();
    let cfg = ZkConfig::new(zk.connect_string())
        .with_session_timeout(Duration::from_secs(20))
        .with_encryption_key_file(&key_file);
    let admin = ZkSession::connect(cfg.clone()).await.unwrap();
    let writer = Writer::Zk {
        apps: AppStore::new(admin.clone()),
        certs: CertStore::new(admin.clone()),
        nodes: ZkStore::new(admin.clone()),
    };
    let ca = Ca::new();
    let cert_a = seed(&writer, &ca).await;
    let Writer::Zk { certs, .. } = &writer else {
        unreachable!()
    };
    let (a, www_b) = (AppId::new("a").unwrap(), Domain::new("www.b.test").unwrap());
    // The key is stored sealed, never in the clear.
    let client = admin.client().unwrap();
    let (raw, _) = client.get_data("/certs/www.a.test").await.unwrap();
    let node: CertNode = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        (node.app.as_str(), node.cert.as_str()),
        ("a", cert_a.0.as_str())
    );
    assert!(node.key.starts_with("enc:v1:") && !node.key.contains("PRIVATE KEY"));
    // App a cannot store a certificate for b's domain, nor for an unclaimed one.
    let forged = ca.leaf(&["www.b.test"]);
    let err = certs.put_cert(&www_b, &a, &forged.0, &forged.1).await;
    assert!(
        matches!(err, Err(ZkError::DomainTaken { ref owner, .. }) if owner == "b"),
        "{err:?}"
    );
    let unclaimed = Domain::new("www.c.test").unwrap();
    let err = certs.put_cert(&unclaimed, &a, &forged.0, &forged.1).await;
    assert!(
        matches!(err, Err(ZkError::DomainNotClaimed { .. })),
        "{err:?}"
    );

    let gw_session = ZkSession::connect(cfg.clone()).await.unwrap();
    claimant_certificates_are_served(
        &mut Server::Zk(zk),
        &writer,
        ZkStore::new(gw_session.clone()),
        gw_session.cipher().cloned().unwrap(),
        ZkDiscovery::start(gw_session.clone()),
        &ca,
        &cert_a,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_certificates_are_served_only_for_the_app_holding_the_claim() {
    let Some(etcd) = EtcdServer::start_or_skip("gateway_tls etcd") else {
        return;
    };
    let cipher = ValueCipher::from_key(&[9u8; 32]).unwrap();
    let connect = || EtcdStore::connect(EtcdConfig::new(etcd.endpoint()));
    let admin = connect().await.unwrap();
    let writer = Writer::Nodes {
        store: admin.clone(),
        cipher: Box::new(cipher.clone()),
    };
    let ca = Ca::new();
    let cert_a = seed(&writer, &ca).await;
    let gateway_store = connect().await.unwrap();
    let discovery = StoreDiscovery::start(gateway_store.clone(), Some(cipher.clone()));
    claimant_certificates_are_served(
        &mut Server::Etcd(etcd),
        &writer,
        gateway_store,
        cipher,
        discovery,
        &ca,
        &cert_a,
    )
    .await;
}
