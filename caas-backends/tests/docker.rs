//! DockerRuntime against the real Docker Engine and a real private registry (Debian's
//! `docker-registry`, started per test on a free loopback port, with htpasswd auth for one).
//!
//! The test image is `pingd` (tests/docker/pingd.rs), compiled static and built `FROM scratch`
//! here, pushed to the registry and pulled back like a user's image. Everything the tests make
//! is labelled `caas.test=caas-backends`; leftovers of a crashed run are removed when the next
//! run starts.
//!
//! Without a Docker daemon these tests print `SKIPPED: no Docker daemon` and pass, unless
//! `CI=true`, where they fail.
//!
//! Timings are printed as `TIMING ...` lines (`cargo test --test docker -- --nocapture`).

#![allow(clippy::unwrap_used)] // test code: a failed setup step should panic

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::query_parameters::PushImageOptions;
use caas_backends::MemoryLimit;
use caas_backends::assignment::HealthPolicy;
use caas_backends::docker::ContainerEvent;
use caas_backends::docker::{
    ContainerState, DockerError, DockerRuntime, EventKind, LABEL_APP, LABEL_HOST, LABEL_INSTANCE,
    LABEL_PORT, LABEL_VERSION, RegistryAuth, RunSpec,
};
use caas_backends::health::{HealthChecker, HealthState};
use caas_backends::ports::{PortPool, PortRange};
use caas_core::{AppId, InstanceId, Version};
use futures_util::{StreamExt, TryStreamExt};

const TEST_LABEL: &str = "caas.test=caas-backends";
const BASE_IMAGE: &str = "caas-test/pingd:build";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---------------------------------------------------------------- support

/// Connects, or decides the test cannot run: `None` (skip) normally, a panic under `CI=true`.
async fn docker_or_skip() -> Option<DockerRuntime> {
    let result = match DockerRuntime::connect_default().await {
        Ok(d) => d.ping().await.map(|()| d),
        Err(e) => Err(e),
    };
    match result {
        Ok(d) => Some(d),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and the Docker daemon is unreachable: {e}")
        }
        Err(e) => {
            eprintln!("\n*** SKIPPED: no Docker daemon ({e}) ***\n");
            None
        }
    }
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes containers and images of earlier (crashed) runs. Once per test binary, before
/// anything is created.
fn clean_leftovers() {
    let filter = format!("label={TEST_LABEL}");
    let ids = sh(Command::new("docker").args(["ps", "-aq", "--filter", &filter]));
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        eprintln!("removing {} leftover test containers", ids.len());
        sh(Command::new("docker").args(["rm", "-f"]).args(&ids));
    }
    let images = sh(Command::new("docker").args([
        "images",
        "--filter",
        &filter,
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]));
    let images: Vec<&str> = images
        .split_whitespace()
        .filter(|i| !i.ends_with(":<none>"))
        .collect();
    if !images.is_empty() {
        sh(Command::new("docker").args(["rmi", "-f"]).args(&images));
    }
}

/// The pingd binary, compiled once per run into cargo's test tmp dir.
fn pingd_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        clean_leftovers();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("docker-pingd");
        std::fs::create_dir_all(&dir).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/docker/pingd.rs");
        sh(Command::new("rustc")
            .args(["--edition", "2021", "-O", "-C", "strip=symbols"])
            .args(["-C", "target-feature=+crt-static"])
            .args(["--target", "x86_64-unknown-linux-gnu", "-o"])
            .arg(dir.join("pingd"))
            .arg(src));
        std::fs::write(
            dir.join("Dockerfile"),
            "FROM scratch\nCOPY pingd /pingd\nUSER 65534:65534\nEXPOSE 8080\nENTRYPOINT [\"/pingd\"]\n",
        )
        .unwrap();
        dir.join("pingd")
    })
}

/// Tests currently using [`BASE_IMAGE`]; the last one out removes it.
static IMAGE_USERS: Mutex<usize> = Mutex::new(0);

/// A lease on the locally built base image (built on first use, removed after last use).
struct ImageLease;

impl ImageLease {
    fn take() -> Self {
        let bin = pingd_binary();
        let mut users = IMAGE_USERS.lock().unwrap_or_else(|p| p.into_inner());
        if *users == 0 {
            let dir = bin.parent().unwrap();
            sh(Command::new("docker")
                .env("DOCKER_BUILDKIT", "0")
                .args(["build", "-q", "--label", TEST_LABEL, "-t", BASE_IMAGE])
                .arg(dir));
        }
        *users += 1;
        ImageLease
    }
}

impl Drop for ImageLease {
    fn drop(&mut self) {
        let mut users = IMAGE_USERS.lock().unwrap_or_else(|p| p.into_inner());
        *users -= 1;
        if *users == 0 {
            let _ = Command::new("docker")
                .args(["rmi", "-f", BASE_IMAGE])
                .output();
        }
    }
}

/// Removes what a test made, even when it panics.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

/// A loopback port nobody listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on `addr`, returns (status, body). Blocking; small answers only.
fn http_get(addr: SocketAddr, path: &str, auth: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = auth
        .map(|a| format!("Authorization: Basic {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {resp:?}")))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A `docker-registry serve` on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start(htpasswd: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog: {{level: warn, accesslog: {{disabled: true}}}}\n\
             storage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\n\
             http: {{addr: {addr}}}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = htpasswd {
            let file = dir.path().join("htpasswd");
            let line = sh(Command::new("htpasswd").args(["-Bbn", user, pass]));
            std::fs::write(&file, line.trim()).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd: {{realm: caas-test, path: {}}}\n",
                file.display()
            ));
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("docker-registry not installed? apt-get install -y docker-registry");
        let mut reg = Registry {
            child,
            addr,
            _dir: dir,
        };
        let sock: SocketAddr = reg.addr.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200 | 401, _)) = http_get(sock, "/v2/", None) {
                break;
            }
            if let Ok(Some(status)) = reg.child.try_wait() {
                panic!("docker-registry exited with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "registry did not answer on {}",
                reg.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        reg
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tags the base image as `{registry}/{repo}:{tag}`, pushes it, and removes the local tag so
/// a later pull really goes to the registry. Returns the full reference.
async fn push(
    docker: &DockerRuntime,
    reg: &Registry,
    repo: &str,
    tag: &str,
    auth: Option<&RegistryAuth>,
    cleanup: &mut Cleanup,
) -> String {
    let name = format!("{}/{repo}", reg.addr);
    let full = format!("{name}:{tag}");
    sh(Command::new("docker").args(["tag", BASE_IMAGE, &full]));
    cleanup.images.push(full.clone());
    let creds = auth.map(|a| DockerCredentials {
        username: Some(a.username.clone()),
        password: Some(a.password.clone()),
        serveraddress: Some(reg.addr.clone()),
        ..Default::default()
    });
    let options = PushImageOptions {
        tag: Some(tag.to_owned()),
        platform: None,
    };
    docker
        .client()
        .push_image(&name, Some(options), creds)
        .try_for_each(|_| async { Ok(()) })
        .await
        .unwrap_or_else(|e| panic!("push {full}: {e}"));
    sh(Command::new("docker").args(["rmi", &full]));
    full
}

fn spec(host_id: &str, instance: &str, image: &str, port: u16) -> RunSpec {
    RunSpec {
        app: AppId::new("hello").unwrap(),
        version: Version::new("v1").unwrap(),
        instance: InstanceId::new(instance).unwrap(),
        host_id: host_id.to_owned(),
        image: image.to_owned(),
        host_ip: LOCALHOST,
        host_port: port,
        container_port: 8080,
        memory: "512m".parse::<MemoryLimit>().unwrap(),
        cpu_shares: 1024,
        env: Vec::new(),
        extra_labels: BTreeMap::from([("caas.test".to_owned(), "caas-backends".to_owned())]),
    }
}

/// A per-test id that no other run or test shares.
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

async fn wait_http(addr: SocketAddr, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http_get(addr, path, None) {
            Ok(r) => return r,
            Err(e) if Instant::now() > deadline => panic!("GET {addr}{path}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn next_event(
    events: &mut (impl futures_util::Stream<Item = Result<ContainerEvent, DockerError>> + Unpin),
) -> ContainerEvent {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("no event within 10 s")
        .expect("event stream ended")
        .unwrap()
}

// ---------------------------------------------------------------- tests

/// The whole life of a container: pull from the registry, run with limits, check what Docker
/// says, reach it through the published port, see it healthy, list it, stop and remove it.
#[tokio::test]
async fn pull_run_inspect_reach_stop_remove() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let _image = ImageLease::take();
    let mut cleanup = Cleanup::default();
    let reg = Registry::start(None);
    let image = push(&docker, &reg, "hello", "v1", None, &mut cleanup).await;

    let t = Instant::now();
    docker.pull(&image, None).await.unwrap();
    eprintln!(
        "TIMING pull {image} (layers cached, manifest from registry): {:?}",
        t.elapsed()
    );

    let host = unique("life");
    let mut pool = PortPool::new(LOCALHOST, PortRange::new(25901, 25910).unwrap());
    let port = pool.allocate().unwrap();
    let instance = unique("life");
    let t = Instant::now();
    let info = docker
        .run(&spec(&host, &instance, &image, port))
        .await
        .unwrap();
    eprintln!("TIMING create+start+inspect: {:?}", t.elapsed());
    cleanup.containers.push(info.id.clone());

    assert_eq!(info.state, ContainerState::Running);
    assert_eq!(info.memory, 512 * 1024 * 1024);
    assert_eq!(info.cpu_shares, 1024);
    assert_eq!(info.host_binding, Some(("127.0.0.1".to_owned(), port)));
    assert_eq!(info.name, format!("caas-hello-v1-{instance}"));
    assert_eq!(info.image, image);
    for (k, v) in [
        (LABEL_APP, "hello"),
        (LABEL_VERSION, "v1"),
        (LABEL_INSTANCE, instance.as_str()),
        (LABEL_HOST, host.as_str()),
        (LABEL_PORT, port.to_string().as_str()),
    ] {
        assert_eq!(info.labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    // Docker's own restart policy stays off; restarts are ours.
    let raw = docker
        .client()
        .inspect_container(&info.id, None)
        .await
        .unwrap();
    let hc = raw.host_config.unwrap();
    assert_eq!(hc.memory_swap, Some(512 * 1024 * 1024), "no swap on top");
    let policy = hc.restart_policy.unwrap().name.unwrap();
    assert_eq!(policy.to_string(), "no");

    let addr = SocketAddr::new(LOCALHOST, port);
    let (status, body) = wait_http(addr, "/").await;
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("\"instance\":\"{instance}\"")),
        "{body}"
    );
    assert!(body.contains("\"app\":\"hello\""), "{body}");

    // The health checker sees it up.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let policy = HealthPolicy {
        interval_ms: 200,
        timeout_ms: 200,
        ..HealthPolicy::default()
    };
    let _checker = HealthChecker::http(addr, &policy).spawn(instance.clone(), tx);
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.state, HealthState::Healthy);

    // The same instance again: AlreadyExists, and the running one is untouched.
    let again = docker.run(&spec(&host, &instance, &image, port + 1)).await;
    assert!(
        matches!(again, Err(DockerError::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(wait_http(addr, "/_ping").await.0, 200);

    let listed = docker.list_managed(&host).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, info.id);
    assert_eq!(listed[0].port(), Some(port));
    assert!(listed[0].running);

    let t = Instant::now();
    docker.stop(&info.id, Duration::from_secs(2)).await.unwrap();
    eprintln!(
        "TIMING stop (SIGTERM, pingd ignores it -> SIGKILL after 2 s): {:?}",
        t.elapsed()
    );
    let stopped = docker.inspect(&info.id).await.unwrap();
    assert_eq!(stopped.state, ContainerState::Exited);
    docker.stop(&info.id, Duration::from_secs(2)).await.unwrap(); // idempotent

    docker.remove(&info.id).await.unwrap();
    assert!(pool.free(port));
    match docker.inspect(&info.id).await {
        Err(DockerError::NotFound { id }) => assert_eq!(id, info.id),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(docker.list_managed(&host).await.unwrap().is_empty());
    assert!(matches!(
        docker.remove(&info.id).await,
        Err(DockerError::NotFound { .. })
    ));
}

/// A tag the registry does not have, and an image never pulled, are ImageNotFound.
#[tokio::test]
async fn unknown_image_is_image_not_found() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let reg = Registry::start(None);
    let image = format!("{}/nope:v1", reg.addr);
    match docker.pull(&image, None).await {
        Err(DockerError::ImageNotFound { image: i, message }) => {
            assert_eq!(i, image);
            eprintln!("ImageNotFound message: {message}");
        }
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
    let host = unique("noimage");
    let r = docker.run(&spec(&host, &host, &image, 25911)).await;
    assert!(matches!(r, Err(DockerError::ImageNotFound { .. })), "{r:?}");
    assert!(docker.list_managed(&host).await.unwrap().is_empty());
}

/// A socket that is not a Docker daemon (accepts, then hangs up): DaemonUnreachable.
#[tokio::test]
async fn dead_socket_is_daemon_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker.sock");
    let l = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    let e = DockerRuntime::connect(path.to_str().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, DockerError::DaemonUnreachable { .. }), "{e:?}");
    assert!(e.is_transient());
    eprintln!("dead socket: {e}");
}

/// A registry that does not answer is RegistryUnreachable (transient).
#[tokio::test]
async fn registry_down_is_registry_unreachable() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let image = format!("127.0.0.1:{}/hello:v1", free_port());
    let t = Instant::now();
    let e = docker.pull(&image, None).await.unwrap_err();
    assert!(
        matches!(e, DockerError::RegistryUnreachable { .. }),
        "{e:?}"
    );
    assert!(e.is_transient());
    eprintln!("TIMING registry-down pull error: {:?}: {e}", t.elapsed());
}

/// A host port held by another process: PortTaken, and the created container is removed
/// (nothing half-made), and the pool skips that port.
#[tokio::test]
async fn port_taken_is_port_taken_and_leaves_no_container() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let _image = ImageLease::take();
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let host = unique("taken");
    let e = docker
        .run(&spec(&host, &host, BASE_IMAGE, port))
        .await
        .unwrap_err();
    match &e {
        DockerError::PortTaken {
            host_ip, host_port, ..
        } => {
            assert_eq!((host_ip.as_str(), *host_port), ("127.0.0.1", port));
        }
        other => panic!("expected PortTaken, got {other:?}"),
    }
    eprintln!("PortTaken: {e}");
    assert!(
        docker.list_managed(&host).await.unwrap().is_empty(),
        "orphan container left behind"
    );
    assert_eq!(docker.cleanup_failures(), 0);
    // The pool would not have handed that port out.
    let mut pool = PortPool::new(LOCALHOST, PortRange::new(port, port).unwrap());
    assert!(pool.allocate().is_err());
}

/// A container killed from outside (docker kill) shows up as a `die` event, after its
/// `start`; and a restarted agent rebuilds its port pool from the labels.
#[tokio::test]
async fn killed_container_is_a_die_event_and_pool_recovers() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let _image = ImageLease::take();
    let mut cleanup = Cleanup::default();
    let host = unique("events");
    let mut events = Box::pin(docker.events(Some(&host)));
    let mut pool = PortPool::new(LOCALHOST, PortRange::new(25921, 25930).unwrap());
    let mut infos = Vec::new();
    for n in 0..2 {
        let port = pool.allocate().unwrap();
        let info = docker
            .run(&spec(&host, &format!("{host}-{n}"), BASE_IMAGE, port))
            .await
            .unwrap();
        cleanup.containers.push(info.id.clone());
        infos.push(info);
    }
    let victim = &infos[0];
    for _ in 0..2 {
        let e = next_event(&mut events).await;
        assert_eq!(e.kind, EventKind::Start);
        assert_eq!(e.app(), Some("hello"));
    }

    let t = Instant::now();
    sh(Command::new("docker").args(["kill", &victim.id]));
    let e = next_event(&mut events).await;
    let received = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let lag = received.saturating_sub(Duration::from_nanos(e.time_nano.try_into().unwrap()));
    eprintln!(
        "TIMING docker kill (CLI) -> die event received: {:?}; Engine event time -> received: {lag:?}",
        t.elapsed()
    );
    assert_eq!(e.id, victim.id);
    assert_eq!(
        e.kind,
        EventKind::Die {
            exit_code: Some(137)
        }
    );
    assert_eq!(e.instance(), victim.instance());

    // Agent restart: a fresh pool recovers both ports from the containers (dead one too,
    // until it is removed).
    let listed = docker.list_managed(&host).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed.iter().filter(|c| c.running).count(), 1);
    let mut fresh = PortPool::new(LOCALHOST, PortRange::new(25921, 25930).unwrap());
    let outside = fresh.recover(listed.iter().filter_map(|c| c.port()));
    assert!(outside.is_empty());
    for i in &infos {
        assert!(fresh.is_allocated(i.port_label().unwrap()));
    }
    let new = fresh.allocate().unwrap();
    assert!(infos.iter().all(|i| i.port_label() != Some(new)));
}

/// A container that outgrows its memory limit is OOM-killed: `oom` then `die` events.
#[tokio::test]
async fn memory_hog_is_an_oom_event() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let _image = ImageLease::take();
    let mut cleanup = Cleanup::default();
    let host = unique("oom");
    let mut events = Box::pin(docker.events(Some(&host)));
    let mut pool = PortPool::new(LOCALHOST, PortRange::new(25931, 25940).unwrap());
    let port = pool.allocate().unwrap();
    let mut s = spec(&host, &host, BASE_IMAGE, port);
    s.memory = "16m".parse().unwrap();
    let info = docker.run(&s).await.unwrap();
    cleanup.containers.push(info.id.clone());
    assert_eq!(info.memory, 16 << 20);
    assert_eq!(next_event(&mut events).await.kind, EventKind::Start);

    let addr = SocketAddr::new(LOCALHOST, port);
    wait_http(addr, "/_ping").await;
    // The connection dies with the process; the answer does not matter.
    let _ = TcpStream::connect(addr).and_then(|mut c| c.write_all(b"POST /_oom HTTP/1.1\r\n\r\n"));
    let mut kinds = Vec::new();
    while !matches!(kinds.last(), Some(EventKind::Die { .. })) {
        kinds.push(next_event(&mut events).await.kind);
    }
    assert!(kinds.contains(&EventKind::Oom), "{kinds:?}");
    assert!(docker.inspect(&info.id).await.unwrap().oom_killed);
}

/// An htpasswd registry: no or wrong credentials → Unauthorized; right ones pull.
#[tokio::test]
async fn auth_registry_needs_credentials() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let _image = ImageLease::take();
    let mut cleanup = Cleanup::default();
    let reg = Registry::start(Some(("caas", "s3cret")));
    let auth = RegistryAuth {
        username: "caas".into(),
        password: "s3cret".into(),
        server: String::new(),
    };
    let image = push(&docker, &reg, "hello", "v1", Some(&auth), &mut cleanup).await;

    let e = docker.pull(&image, None).await.unwrap_err();
    assert!(matches!(e, DockerError::Unauthorized { .. }), "{e:?}");
    eprintln!("no credentials: {e}");
    let wrong = RegistryAuth {
        password: "wrong".into(),
        ..auth.clone()
    };
    let e = docker.pull(&image, Some(&wrong)).await.unwrap_err();
    assert!(matches!(e, DockerError::Unauthorized { .. }), "{e:?}");
    assert!(
        !format!("{wrong:?}").contains("wrong"),
        "password not in Debug"
    );

    let t = Instant::now();
    docker.pull(&image, Some(&auth)).await.unwrap();
    eprintln!("TIMING authenticated pull: {:?}", t.elapsed());
}
