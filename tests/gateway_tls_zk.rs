//! HTTPS for custom domains from ZooKeeper, end to end: a certificate stored at
//! `/caas/certs/{domain}` (key sealed with the config key) is served by a ZooKeeper-fed
//! gateway for the app holding the domain's claim, and never for a domain whose claim
//! belongs to another app, including after the claim moves.

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caas::backends::testing::ZkServer;
use caas::backends::zk::certs::CertNode;
use caas::backends::zk::{
    AppStore, CertStore, ValueCipher, ZkCertSource, ZkConfig, ZkDiscovery, ZkError, ZkSession,
};
use caas::core::{AppId, AppSpec, Domain, Endpoint, Version, VersionSpec};
use caas::gateway::{CertResolver, Gateway, GatewayConfig, TlsAcceptor, UnknownSni};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use zookeeper_client::{Acls, CreateMode};

/// An upstream answering every request with its name.
async fn upstream(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(name.as_bytes()),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

struct Ca(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl Ca {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        Self(
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap(),
        )
    }

    /// (chain PEM, key PEM) for `names`.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.0.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every connection does a full handshake: it shows the certificate served now.
        cfg.resumption = rustls::client::Resumption::disabled();
        Arc::new(cfg)
    }
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The leaf certificate the gateway presents for `sni`, verified against the CA; the
/// handshake error when there is none.
async fn presented(gw: SocketAddr, sni: &str, ca: &Ca) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(gw).await.unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let tls = TlsConnector::from(ca.client())
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_certificates_are_served_only_for_the_app_holding_the_claim() {
    let Some(mut zk) = ZkServer::start_or_skip(ZkServer::builder(), "gateway_tls_zk") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("config.key");
    std::fs::write(&key_file, [9u8; 32]).unwrap();
    let cfg = ZkConfig::new(zk.connect_string())
        .with_session_timeout(Duration::from_secs(20))
        .with_encryption_key_file(&key_file);
    let admin = ZkSession::connect(cfg.clone()).await.unwrap();
    let (apps, certs) = (AppStore::new(admin.clone()), CertStore::new(admin.clone()));
    let (a, b) = (AppId::new("a").unwrap(), AppId::new("b").unwrap());
    let (www_a, www_b) = (
        Domain::new("www.a.test").unwrap(),
        Domain::new("www.b.test").unwrap(),
    );
    apps.put_app(&a, &spec(upstream("one").await))
        .await
        .unwrap();
    apps.put_app(&b, &spec(upstream("two").await))
        .await
        .unwrap();
    apps.claim_domain(&www_a, &a).await.unwrap();
    apps.claim_domain(&www_b, &b).await.unwrap();

    let ca = Ca::new();
    let cert_a = ca.leaf(&["www.a.test"]);
    certs
        .put_cert(&www_a, &a, &cert_a.0, &cert_a.1)
        .await
        .unwrap();
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
    // Written around the store (a stale writer, a hand edit): a node naming app a at b's
    // domain, its key properly sealed. The gateway must still refuse it.
    let cipher = ValueCipher::from_file(&key_file).unwrap();
    let sealed = cipher
        .encrypt("/certs/www.b.test", forged.1.as_bytes())
        .unwrap();
    let node = CertNode {
        app: a.clone(),
        cert: forged.0.clone(),
        key: String::from_utf8(sealed).unwrap(),
    };
    client
        .create(
            "/certs/www.b.test",
            &serde_json::to_vec(&node).unwrap(),
            &CreateMode::Persistent.with_acls(Acls::anyone_all()),
        )
        .await
        .unwrap();

    // The gateway: routes and certificates from ZooKeeper, its own certificate for the
    // gateway domain, unknown names refused.
    let gateway_cert = ca.leaf(&["*.caas.local"]);
    let gw_session = ZkSession::connect(cfg.clone()).await.unwrap();
    let resolver =
        CertResolver::from_pem(&[(&gateway_cert.0, &gateway_cert.1)], UnknownSni::Reject).unwrap();
    let source = ZkCertSource::start(&gw_session);
    let source_stats = source.stats();
    tokio::spawn(Arc::clone(&resolver).follow(source));
    let gateway = Gateway::builder(GatewayConfig {
        domains: vec![Domain::new("caas.local").unwrap()],
        ..GatewayConfig::default()
    })
    .discovery(ZkDiscovery::start(gw_session.clone()))
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
        presented(gw, "www.a.test", &ca).await == Ok(der(&cert_a.0))
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
    let refused = presented(gw, "www.b.test", &ca).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("AccessDenied")),
        "{refused:?}"
    );
    assert!(source_stats.refused.load(Relaxed) >= 1);

    // The claim of www.a.test moves to b: a's certificate leaves service at once.
    apps.release_domain(&www_a, &a).await.unwrap();
    apps.claim_domain(&www_a, &b).await.unwrap();
    wait_for("a's certificate to leave service", async || {
        presented(gw, "www.a.test", &ca).await.is_err()
    })
    .await;
    // b stores its own for the domain it now holds: served.
    let cert_b = ca.leaf(&["www.a.test"]);
    certs
        .put_cert(&www_a, &b, &cert_b.0, &cert_b.1)
        .await
        .unwrap();
    wait_for("b's certificate to be served", async || {
        presented(gw, "www.a.test", &ca).await == Ok(der(&cert_b.0))
    })
    .await;
    // Deleting it takes it out of service.
    certs.delete_cert(&www_a, &b).await.unwrap();
    wait_for("the deleted certificate to leave service", async || {
        presented(gw, "www.a.test", &ca).await.is_err()
    })
    .await;
    assert!(presented(gw, "app.caas.local", &ca).await.is_ok());

    // ZooKeeper goes away: the certificates in service stay; back, changes flow again.
    certs
        .put_cert(&www_a, &b, &cert_b.0, &cert_b.1)
        .await
        .unwrap();
    wait_for("b's certificate to be served again", async || {
        presented(gw, "www.a.test", &ca).await == Ok(der(&cert_b.0))
    })
    .await;
    zk.kill().unwrap();
    for _ in 0..5 {
        assert_eq!(presented(gw, "www.a.test", &ca).await, Ok(der(&cert_b.0)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    zk.restart().unwrap();
    let renewed = ca.leaf(&["www.a.test"]);
    let mut stored = false;
    for _ in 0..200 {
        if certs
            .put_cert(&www_a, &b, &renewed.0, &renewed.1)
            .await
            .is_ok()
        {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "could not store after the restart");
    wait_for("the renewed certificate after the restart", async || {
        presented(gw, "www.a.test", &ca).await == Ok(der(&renewed.0))
    })
    .await;
}
