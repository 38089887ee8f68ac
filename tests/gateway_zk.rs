//! The gateway fed by ZooKeeper, end to end over HTTP: a registration becomes routable, the
//! gateway keeps serving its last table while ZooKeeper is down, and converges when it is
//! back; a gateway restarted while ZooKeeper is down serves its saved route snapshot. The
//! same outage case runs on etcd, the gateway fed by `StoreDiscovery` over `EtcdStore`, and
//! the example gateway binary runs on etcd as a user runs it: announced, serving a stored
//! custom-domain certificate, and serving its route snapshot while etcd is down; a client
//! that names the gateway by IP address in its TLS handshake does not fill its log.

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use caas::backends::store::{EtcdConfig, EtcdStore, Store as _, StoreDiscovery, ZkStore, put};
use caas::backends::testing::{EtcdServer, ZkServer};
use std::sync::atomic::Ordering::Relaxed;

use caas::backends::zk::certs::CertNode;
use caas::backends::zk::{GatewayInfo, Registry, ValueCipher, ZkConfig, ZkDiscovery, ZkSession};
use caas::backends::{PersistStats, PersistedDiscovery};
use caas::core::{AppId, Domain, InstanceId, Version};
use caas::gateway::{Gateway, GatewayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod support {
    pub(crate) mod examples;
    pub(crate) mod tls;
    pub(crate) mod upstream;
}
use support::examples::free_port;
use support::tls::{Ca, der, presented};
use support::upstream::upstream;

/// One request with a fresh connection; returns (status, body).
async fn get(gw: SocketAddr, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Waits until hello.caas.local balances over the upstreams "one" and "two".
async fn wait_balanced_one_two(gw: SocketAddr) {
    wait_for(
        "both instances to be balanced",
        Duration::from_secs(20),
        async || {
            let (x, y) = (
                get(gw, "hello.caas.local").await,
                get(gw, "hello.caas.local").await,
            );
            let mut seen = [x.1, y.1];
            seen.sort();
            seen == ["one".to_owned(), "two".to_owned()]
        },
    )
    .await;
}

/// Waits until hello.caas.local answers only from "two" (the other one deregistered).
async fn wait_only_two(gw: SocketAddr) {
    wait_for(
        "the deregistered instance to leave",
        Duration::from_secs(10),
        async || {
            let mut all_two = true;
            for _ in 0..4 {
                all_two &= get(gw, "hello.caas.local").await == (200, "two".into());
            }
            all_two
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_registrations_route_and_survive_an_outage() {
    let Some(mut zk) = ZkServer::start_or_skip(ZkServer::builder(), "gateway_zk") else {
        return;
    };
    let cfg = ZkConfig::new(zk.connect_string()).with_session_timeout(Duration::from_secs(20));
    let registry = Registry::new(ZkStore::new(ZkSession::connect(cfg.clone()).await.unwrap()));
    let (a, b) = (upstream("one").await, upstream("two").await);
    let (app, v1) = (AppId::new("hello").unwrap(), Version::new("v1").unwrap());

    let gateway = Gateway::builder(GatewayConfig {
        domains: vec![Domain::new("caas.local").unwrap()],
        ..GatewayConfig::default()
    })
    .discovery(ZkDiscovery::connect(cfg.clone()).await.unwrap())
    .build()
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    let g = gateway.clone();
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });

    assert_eq!(
        get(gw, "hello.caas.local").await.0,
        404,
        "nothing registered yet"
    );
    let registered = Instant::now();
    registry
        .register(&app, &v1, &InstanceId::new("c1").unwrap(), a)
        .await
        .unwrap();
    wait_for(
        "the first registration to route",
        Duration::from_secs(10),
        async || get(gw, "hello.caas.local").await == (200, "one".into()),
    )
    .await;
    eprintln!(
        "registration -> routable over HTTP: {:?}",
        registered.elapsed()
    );

    // ZooKeeper goes away: the gateway keeps serving its last table.
    zk.kill().unwrap();
    for _ in 0..10 {
        assert_eq!(get(gw, "hello.caas.local").await, (200, "one".into()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back, and a change made now is routed.
    zk.restart().unwrap();
    let mut registered = false;
    for _ in 0..200 {
        match registry
            .register(&app, &v1, &InstanceId::new("c2").unwrap(), b)
            .await
        {
            Ok(()) => {
                registered = true;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(registered, "could not register after the restart");
    wait_balanced_one_two(gw).await;

    registry
        .deregister(&app, &v1, &InstanceId::new("c1").unwrap())
        .await
        .unwrap();
    wait_only_two(gw).await;
    let table = gateway.router().current();
    assert_eq!(
        table.app(&app).unwrap().versions()[0]
            .pool()
            .endpoints()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_registrations_route_and_survive_an_outage() {
    let Some(mut etcd) = EtcdServer::start_or_skip("gateway_etcd") else {
        return;
    };
    let connect = || EtcdStore::connect(EtcdConfig::new(etcd.endpoint()));
    let agent = connect().await.unwrap();
    let (a, b) = (upstream("one").await, upstream("two").await);
    let gateway = Gateway::builder(GatewayConfig {
        domains: vec![Domain::new("caas.local").unwrap()],
        ..GatewayConfig::default()
    })
    .discovery(StoreDiscovery::start(connect().await.unwrap(), None))
    .build()
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    let g = gateway.clone();
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });

    assert_eq!(get(gw, "hello.caas.local").await.0, 404);
    let c1 = "/service/address/hello/v1/c1";
    agent
        .create_ephemeral(c1, a.to_string().as_bytes())
        .await
        .unwrap();
    wait_for(
        "the first registration to route",
        Duration::from_secs(10),
        async || get(gw, "hello.caas.local").await == (200, "one".into()),
    )
    .await;

    // etcd goes away: the gateway keeps serving its last table.
    etcd.kill().unwrap();
    for _ in 0..10 {
        assert_eq!(get(gw, "hello.caas.local").await, (200, "one".into()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back, and a registration made now is routed.
    etcd.restart().unwrap();
    let c2 = "/service/address/hello/v1/c2";
    let mut registered = false;
    for _ in 0..200 {
        if agent
            .create_ephemeral(c2, b.to_string().as_bytes())
            .await
            .is_ok()
        {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(registered, "could not register after the restart");
    wait_balanced_one_two(gw).await;

    agent.delete_ephemeral(c1).await.unwrap();
    wait_only_two(gw).await;
    agent.close().await;
}

/// A gateway fed by ZooKeeper through a [`PersistedDiscovery`] saving to `file`, as the
/// example gateway runs with `--zk-snapshot`: ZooKeeper is tried for `wait` at start, then
/// the file is served until a session comes.
async fn snapshot_gateway(
    cfg: ZkConfig,
    file: std::path::PathBuf,
    wait: Duration,
) -> (
    SocketAddr,
    Gateway,
    std::sync::Arc<PersistStats>,
    tokio::sync::oneshot::Sender<()>,
) {
    let live = async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ZkDiscovery::connect(cfg.clone()))
                .await
            {
                Ok(Ok(d)) => return d,
                Ok(Err(e)) => eprintln!("zookeeper not there yet: {e}"),
                Err(_) => eprintln!("zookeeper not there yet: connect timed out"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let discovery = PersistedDiscovery::start(file, live, wait);
    let stats = std::sync::Arc::clone(discovery.stats());
    let gateway = Gateway::builder(GatewayConfig {
        domains: vec![Domain::new("caas.local").unwrap()],
        ..GatewayConfig::default()
    })
    .discovery(discovery)
    .build()
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let g = gateway.clone();
    tokio::spawn(async move {
        g.serve(listener, async {
            let _ = stopped.await;
        })
        .await
    });
    (addr, gateway, stats, stop)
}

/// Retries a registry write while ZooKeeper comes back.
async fn retry<T, E: std::fmt::Display>(
    what: &str,
    mut op: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "{what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_while_zookeeper_is_down_serves_its_snapshot_then_converges() {
    let Some(mut zk) = ZkServer::start_or_skip(ZkServer::builder(), "gateway_zk snapshot") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.json");
    let cfg = ZkConfig::new(zk.connect_string()).with_session_timeout(Duration::from_secs(20));
    let registry = Registry::new(ZkStore::new(ZkSession::connect(cfg.clone()).await.unwrap()));
    let (one, two, three) = (
        upstream("one").await,
        upstream("two").await,
        upstream("three").await,
    );
    let (app, v1) = (AppId::new("hello").unwrap(), Version::new("v1").unwrap());
    let inst = |s: &str| InstanceId::new(s).unwrap();
    registry
        .register(&app, &v1, &inst("c1"), one)
        .await
        .unwrap();

    // The first run routes from ZooKeeper and saves what it routes.
    let gw_cfg = ZkConfig::new(zk.connect_string()).with_session_timeout(Duration::from_secs(4));
    let (gw, _g, stats, stop) =
        snapshot_gateway(gw_cfg.clone(), file.clone(), Duration::from_secs(10)).await;
    wait_for("the route", Duration::from_secs(10), async || {
        get(gw, "hello.caas.local").await == (200, "one".into())
    })
    .await;
    wait_for("the snapshot file", Duration::from_secs(10), async || {
        PersistedDiscovery::load(&file).is_ok_and(|s| s.endpoint_count() == 1)
    })
    .await;
    assert_eq!(stats.served_from_file.load(Relaxed), 0);
    let _ = stop.send(());

    // While that gateway is down, c1 leaves and c2 comes; then ZooKeeper goes away too.
    registry.deregister(&app, &v1, &inst("c1")).await.unwrap();
    registry
        .register(&app, &v1, &inst("c2"), two)
        .await
        .unwrap();
    zk.kill().unwrap();

    // The second run cannot reach ZooKeeper: it serves the saved routes.
    let (gw, _g, stats, _stop) =
        snapshot_gateway(gw_cfg, file.clone(), Duration::from_millis(500)).await;
    wait_for("the saved route", Duration::from_secs(10), async || {
        get(gw, "hello.caas.local").await == (200, "one".into())
    })
    .await;
    assert_eq!(stats.served_from_file.load(Relaxed), 1);
    assert_eq!(stats.live_updates.load(Relaxed), 0, "nothing live yet");

    // ZooKeeper is back: the live state replaces the saved one (c1 is gone), and a change
    // made now is routed and saved.
    zk.restart().unwrap();
    wait_for("the live routes", Duration::from_secs(30), async || {
        let mut all_two = true;
        for _ in 0..3 {
            all_two &= get(gw, "hello.caas.local").await == (200, "two".into());
        }
        all_two
    })
    .await;
    retry("register c3", async || {
        registry.register(&app, &v1, &inst("c3"), three).await
    })
    .await;
    retry("deregister c2", async || {
        registry.deregister(&app, &v1, &inst("c2")).await
    })
    .await;
    wait_for("the change", Duration::from_secs(20), async || {
        get(gw, "hello.caas.local").await == (200, "three".into())
            && get(gw, "hello.caas.local").await == (200, "three".into())
    })
    .await;
    wait_for("the change saved", Duration::from_secs(10), async || {
        PersistedDiscovery::load(&file).is_ok_and(|s| {
            s.apps[&app].versions[&v1]
                .endpoints
                .iter()
                .map(|e| e.addr)
                .collect::<Vec<_>>()
                == vec![three]
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_a_warning_and_zookeeper_still_feeds_the_gateway() {
    let Some(zk) = ZkServer::start_or_skip(ZkServer::builder(), "gateway_zk corrupt snapshot")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.json");
    std::fs::write(&file, b"{\"caas_routes\": 1, \"snap").unwrap();
    let err = PersistedDiscovery::load(&file).unwrap_err().to_string();
    assert!(err.contains("not a valid snapshot"), "{err}");
    let cfg = ZkConfig::new(zk.connect_string()).with_session_timeout(Duration::from_secs(20));
    let registry = Registry::new(ZkStore::new(ZkSession::connect(cfg.clone()).await.unwrap()));
    let one = upstream("one").await;
    let (app, v1) = (AppId::new("hello").unwrap(), Version::new("v1").unwrap());
    registry
        .register(&app, &v1, &InstanceId::new("c1").unwrap(), one)
        .await
        .unwrap();
    // Fallback at once: the corrupt file is read, refused, and the live routes come anyway.
    let (gw, _g, stats, _stop) = snapshot_gateway(cfg, file.clone(), Duration::ZERO).await;
    wait_for("the live route", Duration::from_secs(10), async || {
        get(gw, "hello.caas.local").await == (200, "one".into())
    })
    .await;
    assert_eq!(stats.served_from_file.load(Relaxed), 0);
    wait_for("the file replaced", Duration::from_secs(10), async || {
        PersistedDiscovery::load(&file).is_ok()
    })
    .await;
}

/// The example gateway binary, its stderr in a file; killed if still running when dropped.
struct GatewayProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl GatewayProcess {
    fn start(args: &[&str], log: std::path::PathBuf) -> Self {
        Self::start_logging(args, None, log)
    }

    /// Started with `RUST_LOG=rust_log`, or with none set.
    fn start_logging(args: &[&str], rust_log: Option<&str>, log: std::path::PathBuf) -> Self {
        let mut command =
            std::process::Command::new(support::examples::examples_dir().join("gateway"));
        command.env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let child = command
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// Stops it as an operator does (SIGTERM); its exit status.
    async fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit on SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("gateway log:\n{}", self.log());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_fed_gateway_binary_announces_itself_serves_stored_certificates_and_its_snapshot()
{
    let Some(mut etcd) = EtcdServer::start_or_skip("gateway binary on etcd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(path("config.key"), [7u8; 32]).unwrap();
    let cipher = ValueCipher::from_file(dir.path().join("config.key").as_path()).unwrap();
    let store = EtcdStore::connect(EtcdConfig::new(etcd.endpoint()))
        .await
        .unwrap();
    let one = upstream("one").await;
    put(
        &store,
        "/service/address/hello/v1/c1",
        one.to_string().as_bytes(),
    )
    .await
    .unwrap();
    // A custom domain of app hello, with its certificate (the key sealed for the node).
    let ca = Ca::new();
    let custom = ca.leaf(&["www.hello.test"]);
    put(&store, "/domains/www.hello.test", b"hello")
        .await
        .unwrap();
    let sealed = cipher
        .encrypt("/certs/www.hello.test", custom.1.as_bytes())
        .unwrap();
    let node = CertNode {
        app: AppId::new("hello").unwrap(),
        cert: custom.0.clone(),
        key: String::from_utf8(sealed).unwrap(),
    };
    put(
        &store,
        "/certs/www.hello.test",
        &serde_json::to_vec(&node).unwrap(),
    )
    .await
    .unwrap();

    // The gateway's own certificate and config: HTTP, HTTPS and admin listeners, and a
    // worker that busy-polls (everything below is served while it spins).
    let own = ca.leaf(&["*.caas.local"]);
    std::fs::write(path("gw.pem"), &own.0).unwrap();
    std::fs::write(path("gw.key"), &own.1).unwrap();
    let (listen, listen_tls, admin): (SocketAddr, SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    std::fs::write(
        path("gateway.toml"),
        format!(
            "listen = \"{listen}\"\nlisten_tls = \"{listen_tls}\"\nadmin_listen = \"{admin}\"\n\
             domains = [\"caas.local\"]\nworkers = 1\nbusy_poll_us = 200\n\
             [tls]\ncertificates = [{{ cert = \"gw.pem\", key = \"gw.key\" }}]\n"
        ),
    )
    .unwrap();
    let (config, key, snapshot) = (
        path("gateway.toml"),
        path("config.key"),
        path("routes.json"),
    );
    let endpoint = etcd.endpoint();
    let mut gw = GatewayProcess::start(
        &[
            "--config",
            &config,
            "--etcd",
            &endpoint,
            "--etcd-key-file",
            &key,
            "--gateway-id",
            "edge-1",
            "--snapshot",
            &snapshot,
            "--snapshot-wait-ms",
            "500",
        ],
        dir.path().join("gateway-1.log"),
    );

    // Announced with its addresses, routing, serving the stored certificate, saving routes.
    let announced = GatewayInfo {
        admin: Some(admin),
        listen,
        listen_tls: Some(listen_tls),
    };
    wait_for("the announcement", Duration::from_secs(30), async || {
        let node = store.get("/gateways/edge-1").await.unwrap();
        node.is_some_and(|n| serde_json::from_slice(&n.data).ok() == Some(announced.clone()))
    })
    .await;
    wait_for("the route", Duration::from_secs(10), async || {
        get(listen, "hello.caas.local").await == (200, "one".into())
    })
    .await;
    wait_for(
        "the stored certificate",
        Duration::from_secs(10),
        async || presented(listen_tls, "www.hello.test", &ca).await == Ok(der(&custom.0)),
    )
    .await;
    wait_for("the snapshot file", Duration::from_secs(10), async || {
        PersistedDiscovery::load(std::path::Path::new(&snapshot))
            .is_ok_and(|s| s.endpoint_count() == 1)
    })
    .await;
    // Stopped, it withdraws at once (not when its lease expires).
    let status = gw.stop().await;
    assert!(status.success(), "{status}:\n{}", gw.log());
    assert_eq!(store.get("/gateways/edge-1").await.unwrap(), None);

    // Started again while etcd is down (the flags' old names still work): it serves the
    // saved routes.
    etcd.kill().unwrap();
    let mut gw = GatewayProcess::start(
        &[
            "--config",
            &config,
            "--etcd",
            &endpoint,
            "--etcd-key-file",
            &key,
            "--gateway-id",
            "edge-1",
            "--zk-snapshot",
            &snapshot,
            "--zk-snapshot-wait-ms",
            "500",
        ],
        dir.path().join("gateway-2.log"),
    );
    wait_for("the saved route", Duration::from_secs(20), async || {
        TcpStream::connect(listen).await.is_ok()
            && get(listen, "hello.caas.local").await == (200, "one".into())
    })
    .await;
    assert!(
        gw.log().contains("serving the saved route snapshot"),
        "{}",
        gw.log()
    );
    // etcd is back: the gateway connects and announces itself.
    etcd.restart().unwrap();
    wait_for(
        "the announcement after the outage",
        Duration::from_secs(30),
        async || {
            store
                .get("/gateways/edge-1")
                .await
                .is_ok_and(|n| n.is_some())
        },
    )
    .await;
    let status = gw.stop().await;
    assert!(status.success(), "{status}:\n{}", gw.log());
    store.close().await;
}

/// A TLS ClientHello naming the server by the IP address `127.0.0.1`, as wrk and other
/// OpenSSL-based clients send one (RFC 6066 allows only host names there).
fn client_hello_naming_an_ip() -> Vec<u8> {
    fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend(u16::try_from(data.len()).unwrap().to_be_bytes());
        out.extend(data);
    }
    let name = b"127.0.0.1";
    let mut server_name = (u16::try_from(name.len() + 3).unwrap())
        .to_be_bytes()
        .to_vec();
    server_name.push(0); // host_name
    server_name.extend(u16::try_from(name.len()).unwrap().to_be_bytes());
    server_name.extend(name);
    let mut extensions = Vec::new();
    extension(&mut extensions, 0x0000, &server_name);
    extension(&mut extensions, 0x000a, &[0, 2, 0, 0x1d]); // groups: x25519
    extension(&mut extensions, 0x000b, &[1, 0]); // point formats: uncompressed
    extension(&mut extensions, 0x000d, &[0, 2, 4, 3]); // ecdsa_secp256r1_sha256
    let mut hello = vec![3, 3];
    hello.extend([0x5a; 32]); // random
    hello.push(0); // no session id
    hello.extend([0, 2, 0xc0, 0x2b]); // ECDHE-ECDSA-AES128-GCM-SHA256
    hello.extend([1, 0]); // null compression
    hello.extend(u16::try_from(extensions.len()).unwrap().to_be_bytes());
    hello.extend(extensions);
    let mut handshake = vec![1]; // client_hello
    handshake.extend(&u32::try_from(hello.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 3, 1];
    record.extend(u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend(handshake);
    record
}

/// rustls warns about such a ClientHello; from a client that opens connections at will that
/// is a line per connection in the operator's log. The gateway binary keeps rustls to errors
/// unless `RUST_LOG` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_naming_the_gateway_by_ip_address_does_not_fill_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let own = Ca::new().leaf(&["*.caas.local"]);
    std::fs::write(path("gw.pem"), &own.0).unwrap();
    std::fs::write(path("gw.key"), &own.1).unwrap();
    for (rust_log, warned) in [(None, false), (Some("info,rustls=warn"), true)] {
        let (listen, listen_tls) = (free_port(), free_port());
        let config = path("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{listen}\"\nlisten_tls = \"127.0.0.1:{listen_tls}\"\n\
                 domains = [\"caas.local\"]\nworkers = 1\n\
                 [tls]\ncertificates = [{{ cert = \"gw.pem\", key = \"gw.key\" }}]\n"
            ),
        )
        .unwrap();
        let gw = GatewayProcess::start_logging(
            &["--config", &config],
            rust_log,
            dir.path().join(format!("gateway-{listen}.log")),
        );
        wait_for("the TLS listener", Duration::from_secs(30), async || {
            TcpStream::connect(("127.0.0.1", listen_tls)).await.is_ok()
        })
        .await;

        // Five handshakes: the gateway answers each (a ServerHello or an alert).
        for _ in 0..5 {
            let mut tls = TcpStream::connect(("127.0.0.1", listen_tls)).await.unwrap();
            tls.write_all(&client_hello_naming_an_ip()).await.unwrap();
            let mut answer = [0u8; 5];
            tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut answer))
                .await
                .expect("the gateway answers a ClientHello")
                .unwrap();
            assert!(matches!(answer[0], 0x15 | 0x16), "{answer:?}");
        }
        let lines = gw.log().matches("Illegal SNI").count();
        if warned {
            assert_eq!(lines, 5, "with RUST_LOG={rust_log:?}:\n{}", gw.log());
        } else {
            assert_eq!(lines, 0, "with RUST_LOG unset:\n{}", gw.log());
        }
    }
}
