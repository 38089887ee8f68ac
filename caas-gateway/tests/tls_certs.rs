//! The gateway's certificates over real handshakes: files re-read under open connections
//! (a broken version keeps the last good one), custom-domain certificates from a
//! certificate source, and a bad `[tls]` table failing at start with the key, the file and
//! why.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use caas_core::{CertUpdate, Domain, DomainCert, Snapshot};
use caas_gateway::tls::{CertFiles, TlsConfig, UnknownSni};
use caas_gateway::{CertResolver, FileConfig};
use hyper::StatusCode;
use support::tls::{
    Leaf, Pki, any_cert_client, connect, h1, h1_get, presented, resolver, start, wait_count,
};
use support::{Upstream, app, id, snapshot};

#[tokio::test]
async fn certificate_files_reload_without_dropping_open_connections() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let write = |leaf: &Leaf| {
        // Written aside and renamed, as certificate tools do.
        for (name, text) in [("www.key", &leaf.key_pem), ("www.pem", &leaf.cert_pem)] {
            let tmp = dir.path().join(format!("{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.path().join(name)).unwrap();
        }
    };
    let old = pki.leaf(&["www.hello.test"]);
    write(&old);
    let config = TlsConfig {
        certificates: vec![CertFiles {
            cert: "www.pem".into(),
            key: "www.key".into(),
        }],
        unknown_sni: UnknownSni::Reject,
        session_resumption: true,
    };
    let certs = CertResolver::from_config(&config, dir.path()).unwrap();
    tokio::spawn(Arc::clone(&certs).watch_files(Duration::from_millis(20)));
    let up = Upstream::start("up").await;
    let mut spec = app(&[("v1", &[up.addr])]);
    spec.domains = vec![Domain::new("www.hello.test").unwrap()];
    let gw = start(snapshot(vec![("hello", spec)]), Arc::clone(&certs)).await;

    let client = any_cert_client();
    let open = connect(gw.tls, "www.hello.test", client.clone())
        .await
        .unwrap();
    assert_eq!(presented(&open), old.der());
    let mut open = h1(open).await;
    assert_eq!(
        h1_get(&mut open, "www.hello.test", "/1").await.0,
        StatusCode::OK
    );

    let new = pki.leaf(&["www.hello.test"]);
    write(&new);
    wait_count("reloads", &certs.stats().file_reloads, 1).await;
    // The open connection goes on; new connections get the new certificate.
    let (status, _, body) = h1_get(&mut open, "www.hello.test", "/2").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "up GET /2"));
    let s = connect(gw.tls, "www.hello.test", client.clone())
        .await
        .unwrap();
    assert_eq!(presented(&s), new.der());

    // A broken version (here a key of another certificate) is refused and counted; the
    // last good certificate stays in service.
    let other = pki.leaf(&["www.hello.test"]);
    std::fs::write(dir.path().join("www.key"), &other.key_pem).unwrap();
    wait_count("rejections", &certs.stats().file_rejected, 1).await;
    let s = connect(gw.tls, "www.hello.test", client.clone())
        .await
        .unwrap();
    assert_eq!(presented(&s), new.der());
    std::fs::remove_file(dir.path().join("www.pem")).unwrap();
    wait_count("rejections", &certs.stats().file_rejected, 2).await;
    let s = connect(gw.tls, "www.hello.test", client.clone())
        .await
        .unwrap();
    assert_eq!(presented(&s), new.der());
    assert_eq!(
        h1_get(&mut open, "www.hello.test", "/3").await.0,
        StatusCode::OK
    );
    assert_eq!(certs.stats().file_reloads.load(Relaxed), 1);
}

#[tokio::test]
async fn certificate_source_updates_apply_live() {
    let pki = Pki::new();
    let gateway_cert = pki.leaf(&["*.caas.local", "www.operator.test"]);
    let certs = resolver(&[&gateway_cert], UnknownSni::Reject);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(Arc::clone(&certs).follow(rx));
    let gw = start(Snapshot::default(), Arc::clone(&certs)).await;
    let client = any_cert_client();
    let custom = Domain::new("www.custom.test").unwrap();
    let stored = |leaf: &Leaf, domain: &Domain| DomainCert {
        domain: domain.clone(),
        app: id("custom"),
        cert_pem: leaf.cert_pem.clone(),
        key_pem: leaf.key_pem.clone(),
    };

    // Served for its domain only, though its SAN list names more.
    let first = pki.leaf(&["www.custom.test", "other.custom.test"]);
    tx.send(CertUpdate::Reset(vec![stored(&first, &custom)]))
        .await
        .unwrap();
    wait_count("applied", &certs.stats().store_applied, 1).await;
    let s = connect(gw.tls, "www.custom.test", client.clone())
        .await
        .unwrap();
    assert_eq!(presented(&s), first.der());
    assert!(
        connect(gw.tls, "other.custom.test", client.clone())
            .await
            .is_err()
    );

    // A certificate that does not cover its domain is refused; the last good one stays.
    let wrong = pki.leaf(&["elsewhere.test"]);
    tx.send(CertUpdate::Upsert(stored(&wrong, &custom)))
        .await
        .unwrap();
    wait_count("rejected", &certs.stats().store_rejected, 1).await;
    let s = connect(gw.tls, "www.custom.test", client.clone())
        .await
        .unwrap();
    assert_eq!(presented(&s), first.der());

    // The operator's names stay the operator's: a stored certificate is not served for a
    // name a configured certificate covers, nor under a gateway domain.
    let operator = Domain::new("www.operator.test").unwrap();
    let under_gateway = Domain::new("other-app.caas.local").unwrap();
    for d in [&operator, &under_gateway] {
        let grabber = pki.leaf(&[d.as_str()]);
        tx.send(CertUpdate::Upsert(stored(&grabber, d)))
            .await
            .unwrap();
    }
    wait_count("applied", &certs.stats().store_applied, 3).await;
    for d in [&operator, &under_gateway] {
        let s = connect(gw.tls, d.as_str(), client.clone()).await.unwrap();
        assert_eq!(presented(&s), gateway_cert.der(), "{d}");
    }
    assert_eq!(certs.store_count(), 3, "kept, not served");

    tx.send(CertUpdate::Remove(custom.clone())).await.unwrap();
    for _ in 0..200 {
        if certs.store_count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(certs.store_count(), 2);
    assert!(
        connect(gw.tls, "www.custom.test", client.clone())
            .await
            .is_err()
    );
}

#[test]
fn bad_tls_config_fails_at_start_with_file_key_and_why() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let good = pki.leaf(&["caas.local"]);
    let other = pki.leaf(&["caas.local"]);
    let no_san = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cn-only.test");
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    };
    for (name, text) in [
        ("good.pem", good.cert_pem.as_str()),
        ("good.key", good.key_pem.as_str()),
        ("other.key", other.key_pem.as_str()),
        ("nosan.pem", no_san.0.as_str()),
        ("nosan.key", no_san.1.as_str()),
        ("garbage.key", "not a key"),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let config_path = dir.path().join("gw.toml");
    let d = dir.path().display();
    let load = |tls: &str| -> String {
        let text = format!("listen_tls = \"127.0.0.1:8443\"\n{tls}");
        match FileConfig::parse(&text, &config_path) {
            Err(e) => e.to_string(),
            Ok(cfg) => match cfg.cert_resolver(&config_path) {
                Err(e) => e.to_string(),
                Ok(_) => "ok".into(),
            },
        }
    };
    let good_entry = "{ cert = \"good.pem\", key = \"good.key\" }";
    assert_eq!(
        load(&format!("[tls]\ncertificates = [{good_entry}]\n")),
        "ok"
    );
    for (tls, want) in [
        (
            format!(
                "[tls]\ncertificates = [{good_entry}, {{ cert = \"missing.pem\", key = \"good.key\" }}]\n"
            ),
            format!("tls.certificates[1].cert {d}/missing.pem: cannot read: No such file"),
        ),
        (
            "[tls]\ncertificates = [{ cert = \"good.pem\", key = \"other.key\" }]\n".into(),
            format!(
                "tls.certificates[0] (cert {d}/good.pem, key {d}/other.key): the private key does not match the certificate"
            ),
        ),
        (
            "[tls]\ncertificates = [{ cert = \"good.pem\", key = \"garbage.key\" }]\n".into(),
            format!("tls.certificates[0].key {d}/garbage.key: no private key in it"),
        ),
        (
            "[tls]\ncertificates = [{ cert = \"nosan.pem\", key = \"nosan.key\" }]\n".into(),
            format!("tls.certificates[0].cert {d}/nosan.pem: the certificate has no DNS name"),
        ),
        (
            "[tls]\ncertificates = []\n".into(),
            "tls.certificates: empty, so there is no default certificate".into(),
        ),
        (
            format!("[tls]\ncertificates = [{good_entry}]\nunknown_sni = \"maybe\"\n"),
            "unknown variant `maybe`".into(),
        ),
        (
            "[tls]\ncertificates = [{ cert = \"good.pem\", key = \"good.key\", chain = \"x\" }]\n"
                .to_string(),
            "unknown field `chain`".into(),
        ),
        ("".into(), "listen_tls: needs a [tls] table".into()),
    ] {
        let err = load(&tls);
        assert!(
            err.starts_with(&format!("config {}", config_path.display())),
            "{err}"
        );
        assert!(err.contains(&want), "want {want:?} in {err:?}");
    }
    // [tls] without listen_tls.
    let err = FileConfig::parse(
        &format!("[tls]\ncertificates = [{good_entry}]\n"),
        &config_path,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tls: given, but listen_tls"), "{err}");
    // Empty certificates are fine when unknown names are refused (a certificate source
    // brings the rest).
    assert_eq!(load("[tls]\nunknown_sni = \"reject\"\n"), "ok");
}
