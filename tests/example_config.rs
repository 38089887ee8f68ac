//! The example gateway's shipped config stays valid and means what its comments say, and
//! the example gateway on a config file runs as one thread while it serves.

#![allow(clippy::unwrap_used, missing_docs)]

mod support {
    pub(crate) mod examples;
}

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use caas::core::{Domain, RouteTable};
use caas::gateway::FileConfig;
use support::examples::free_port;

#[test]
fn shipped_example_config_parses_and_routes() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gateway/gateway.toml");
    let cfg = FileConfig::load(&path).unwrap();
    assert_eq!(cfg.workers, 1);
    assert_eq!(cfg.listen.port(), 8080);
    let (table, warnings) = RouteTable::build(
        &cfg.snapshot(),
        &[Domain::new("caas.local").unwrap()],
        None,
        1,
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    for host in ["hello.caas.local", "v2.hello.caas.local", "www.hello.test"] {
        assert!(
            table.lookup(host).and_then(|r| r.pool()).is_some(),
            "{host}"
        );
    }
}

/// The status code the gateway at `port` answers a GET for `host` with.
fn status(port: u16, host: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.get(9..12)?.parse().ok()
}

/// The names of a process's threads.
#[cfg(target_os = "linux")]
fn threads(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

/// Killed when dropped, so that a failed assertion leaves no gateway behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A one-worker gateway on a config file keeps no thread for its routes: between the
/// file's checks (once a second, each on a blocking-pool thread that leaves after 100 ms)
/// it is one thread, so Linux takes no reference on a socket's file in its system calls,
/// and it still follows the file.
#[cfg(target_os = "linux")]
#[test]
fn a_file_configured_gateway_serves_on_one_thread_and_follows_the_file() {
    let (listen, upstream) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let head =
        format!("listen = \"127.0.0.1:{listen}\"\ndomains = [\"caas.local\"]\nworkers = 1\n");
    std::fs::write(
        &path,
        format!(
            "{head}[apps.hello]\ndefault_version = \"v1\"\n[apps.hello.versions.v1]\nendpoints = [\"127.0.0.1:{upstream}\"]\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("gateway.log");
    let gateway = Killed(
        std::process::Command::new(support::examples::examples_dir().join("gateway"))
            .arg("--config")
            .arg(&path)
            .arg("--demo")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log).unwrap_or_default();
    let pid = gateway.0.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(listen, "hello.caas.local") != Some(200) {
        assert!(Instant::now() < deadline, "never served hello:\n{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }

    // One thread, once the blocking pool's thread of the last check has left.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = threads(pid);
        seen.extend(now.iter().cloned());
        if now.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never down to one thread: {now:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!seen.contains("caas-routes"), "threads seen: {seen:?}");

    // And the file is still followed: the app removed, its host is answered 404.
    std::fs::write(&path, &head).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(listen, "hello.caas.local") != Some(404) {
        assert!(
            Instant::now() < deadline,
            "the edit was not applied:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!threads(pid).contains(&"caas-routes".to_owned()));
}
