//! The README's walkthrough, run as written: every line starting with `$` between the
//! `walkthrough:begin` and `walkthrough:end` markers, in order, in one bash environment, from
//! the repository's root, against the real pieces (ZooKeeper started by `scripts/zk.sh`,
//! the registry, the Docker Engine, `caasd up`, the `caas` CLI, curl). It runs twice: as
//! written, on ZooKeeper, and on etcd (a server the test starts; `caasd up --etcd`, no
//! `scripts/zk.sh`), the one store flag being the only change.
//!
//! Only what must differ on a test machine is changed, by the table in [`adapt`]: the ports
//! (ZooKeeper's and `caasd up`'s listeners move to free ones, so a developer's own caas or
//! the suite's other tests are never touched), the files under `/tmp` and `.caas/` (into the
//! test's temp dir), the binaries (the ones this test run built, not a second build), the
//! package install and the registry (`scripts/test.sh` did both). While the rolling update
//! runs, client threads send requests through the gateway and count every failure: there
//! must be none. Prints each command's output, and a `REQUESTS` line.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use caas_backends::testing::EtcdServer;
use caas_backends::testing::docker::{docker_or_skip, registry, workspace_root};

mod support {
    pub(crate) mod examples;
}
use support::examples::free_port;

const BEGIN: &str = "<!-- walkthrough:begin -->";
const END: &str = "<!-- walkthrough:end -->";

/// The commands of the README's walkthrough (continuation lines joined).
fn readme_commands(readme: &str) -> Vec<String> {
    let start = readme
        .find(BEGIN)
        .expect("README has no walkthrough:begin marker");
    let end = readme
        .find(END)
        .expect("README has no walkthrough:end marker");
    let mut out: Vec<String> = Vec::new();
    let mut open = false;
    for line in readme[start..end].lines() {
        if open {
            let last = out.last_mut().unwrap();
            last.pop(); // the backslash
            last.push_str(line.trim_start());
            open = last.ends_with('\\');
        } else if let Some(cmd) = line.strip_prefix("$ ") {
            out.push(cmd.to_owned());
            open = cmd.ends_with('\\');
        }
    }
    out
}

/// Where this run's pieces are.
struct Env {
    root: PathBuf,
    tmp: PathBuf,
    examples: PathBuf,
    zk: u16,
    /// `Some(endpoint)`: `caasd up` runs on this etcd instead of the walkthrough's ZooKeeper.
    etcd: Option<String>,
    /// The host id `caasd up` runs as (its containers' `caas.host` label).
    host: &'static str,
    gateway: u16,
    admin: u16,
    api: u16,
    logs: u16,
}

/// The README command as this test runs it; `None`: not run here (and why).
fn adapt(cmd: &str, env: &Env) -> Option<String> {
    if cmd.starts_with("scripts/install-deps.sh") {
        return None; // scripts/test.sh installed the packages
    }
    if cmd.starts_with("cargo build") {
        return None; // this test run built the examples
    }
    if cmd.starts_with("scripts/registry.sh start") {
        // The suite's registry is up already (scripts/test.sh or the harness started it).
        return Some(format!("scripts/registry.sh status {}", registry()));
    }
    if env.etcd.is_some() && cmd.starts_with("scripts/zk.sh start") {
        return None; // the test runs etcd instead
    }
    let tmp = env.tmp.display();
    let mut c = cmd
        .replace(
            "$PWD/target/debug/examples",
            &env.examples.display().to_string(),
        )
        .replace("/tmp/caas-zk 2181", &format!("{tmp}/zk {}", env.zk))
        .replace("/tmp/caas-zk", &format!("{tmp}/zk"))
        .replace(
            "--zk 127.0.0.1:2181",
            &match &env.etcd {
                Some(endpoint) => format!("--etcd {endpoint}"),
                None => format!("--zk 127.0.0.1:{}", env.zk),
            },
        )
        .replace("/tmp/caasd-up.log", &format!("{tmp}/up.log"))
        .replace(".caas/admin.token", &format!("{tmp}/admin.token"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", env.gateway))
        .replace("127.0.0.1:7070", &format!("127.0.0.1:{}", env.api))
        .replace("127.0.0.1:5000", &registry());
    if c.starts_with("caasd up") {
        let flags = format!(
            " --listen 127.0.0.1:{} --admin-listen 127.0.0.1:{} --api-listen 127.0.0.1:{} \
             --logs-listen 127.0.0.1:{} --host-id {} --tokens {tmp}/tokens.toml \
             --admin-token-file {tmp}/admin.token",
            env.gateway, env.admin, env.api, env.logs, env.host
        );
        c = c.replacen("caasd up", &format!("caasd up{flags}"), 1);
        // Remember it, to stop it whatever happens.
        c.push_str(&format!(" echo $! > {tmp}/up.pid"));
    }
    if c.starts_with("kill $(pgrep -f 'caasd up')") {
        // This caasd only, and the suite's registry stays up for the other tests.
        c = c
            .replace("$(pgrep -f 'caasd up')", &format!("$(cat {tmp}/up.pid)"))
            .replace("; scripts/registry.sh stop /tmp/caas-registry", "");
        if env.etcd.is_some() {
            c = c.replace(&format!("; scripts/zk.sh stop {tmp}/zk"), "");
        }
    }
    Some(c)
}

/// Runs commands in bash from the repository's root, the environment carried over from the
/// previous part; the output, with each command echoed first. Panics naming the command
/// that failed.
fn run_part(env: &Env, cmds: &[String]) -> String {
    let saved = env.tmp.join("env.sh");
    let mut script = format!(
        "set -euo pipefail\nexec 2>&1\ncd {}\nexport CAAS_API=http://127.0.0.1:{}\n",
        env.root.display(),
        env.api
    );
    if saved.exists() {
        script.push_str(&format!("source {}\n", saved.display()));
    }
    for c in cmds {
        script.push_str(&format!("echo {}\n{c}\n", shell_quote(&format!("$ {c}"))));
    }
    script.push_str(&format!("export -p > {}\n", saved.display()));
    // Bounded below nextest's limit, so that a command that hangs fails here with the
    // output so far and caasd's log, instead of the test being killed with neither.
    let out = Command::new("timeout")
        .args(["--kill-after=5", "200", "bash", "-c"])
        .arg(&script)
        .output()
        .expect("timeout bash");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "a walkthrough command failed ({}):\n{text}\n--- caasd up's log:\n{}",
        out.status,
        std::fs::read_to_string(env.tmp.join("up.log")).unwrap_or_default()
    );
    text
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Stops `caasd up`, ZooKeeper and the walkthrough's containers whatever happened.
struct Cleanup<'a>(&'a Env);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let env = self.0;
        if let Ok(pid) = std::fs::read_to_string(env.tmp.join("up.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = Command::new(env.root.join("scripts/zk.sh"))
            .arg("stop")
            .arg(env.tmp.join("zk"))
            .status();
        let label = format!("label=caas.host={}", env.host);
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output();
        if let Ok(ids) = ids {
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
    }
}

/// Client loops through the gateway while the update runs: every answer that is not a 200
/// from hello counts as a failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    v1: Arc<AtomicU64>,
    v2: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(gw: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let v1 = Arc::new(AtomicU64::new(0));
        let v2 = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let (v1, v2) = (v1.clone(), v2.clone());
                std::thread::spawn(move || {
                    let mut why = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match get(gw) {
                            Ok(body) if body.starts_with("HTTP/1.1 200") => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if body.contains("\"version\":\"v1\"") {
                                    v1.fetch_add(1, Ordering::Relaxed);
                                } else if body.contains("\"version\":\"v2\"") {
                                    v2.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(other) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                why.push(other.lines().next().unwrap_or("").to_owned());
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                why.push(e.to_string());
                            }
                        }
                    }
                    why
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            v1,
            v2,
            threads,
        }
    }

    fn finish(self) -> (u64, u64, u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut why = Vec::new();
        for t in self.threads {
            why.extend(t.join().unwrap());
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.v1.load(Ordering::Relaxed),
            self.v2.load(Ordering::Relaxed),
            why,
        )
    }
}

/// One `GET /` with `Host: hello.caas.local` on a new connection; the whole answer.
fn get(gw: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&gw, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: hello.caas.local\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn step_output<'a>(text: &'a str, cmd_prefix: &str) -> &'a str {
    let start = text
        .find(&format!("$ {cmd_prefix}"))
        .unwrap_or_else(|| panic!("no `{cmd_prefix}` in:\n{text}"));
    let rest = &text[start..];
    let body = rest.find('\n').map_or("", |i| &rest[i + 1..]);
    body.find("\n$ ").map_or(body, |i| &body[..i])
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    walkthrough("the_readme_walkthrough_runs_as_written", None);
}

#[test]
fn the_readme_walkthrough_runs_on_etcd() {
    let test = "the_readme_walkthrough_runs_on_etcd";
    let Some(etcd) = EtcdServer::start_or_skip(test) else {
        return;
    };
    walkthrough(test, Some(&etcd));
}

/// Runs the README's walkthrough on ZooKeeper as written, or on `etcd`.
fn walkthrough(test: &str, etcd: Option<&EtcdServer>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    if rt.block_on(docker_or_skip(test)).is_none() {
        return;
    }
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let commands = readme_commands(&readme);
    assert!(commands.len() >= 15, "{commands:?}");
    let tmp = tempfile::tempdir().unwrap();
    let examples = support::examples::examples_dir();
    let env = Env {
        root: root.clone(),
        tmp: tmp.path().to_owned(),
        examples,
        zk: free_port(),
        etcd: etcd.map(EtcdServer::endpoint),
        host: if etcd.is_some() {
            "walkthrough-etcd"
        } else {
            "walkthrough"
        },
        gateway: free_port(),
        admin: free_port(),
        api: free_port(),
        logs: free_port(),
    };
    let _cleanup = Cleanup(&env);
    let adapted: Vec<String> = commands.iter().filter_map(|c| adapt(c, &env)).collect();
    let update = adapted
        .iter()
        .position(|c| c.starts_with("caas deploy hello:v2"))
        .expect("the walkthrough has a rolling update to hello:v2");

    // Up to the update: the platform, a first version, a curl, a scale.
    let before = run_part(&env, &adapted[..update]);
    let curl = step_output(&before, "curl -s -w '\\n' -H 'Host: hello.caas.local'");
    assert!(curl.contains(r#""app":"hello","version":"v1""#), "{curl}");
    let scaled = step_output(&before, "caas scale hello:v1 3");
    // Progress lines may pass through `unhealthy` (running, no passing ping yet); the
    // table at the end shows three healthy instances.
    let table = scaled.find("APP ").map_or("", |i| &scaled[i..]);
    assert_eq!(table.matches("hello-v1-").count(), 3, "{scaled}");
    assert_eq!(table.matches(" healthy  healthy ").count(), 3, "{scaled}");

    // The rolling update, under load.
    let gw: SocketAddr = format!("127.0.0.1:{}", env.gateway).parse().unwrap();
    let load = Load::start(gw, 2);
    let during = run_part(&env, &adapted[update..=update]);
    let (ok, failed, v1, v2, why) = load.finish();
    eprintln!(
        "REQUESTS during the README's rolling update: {ok} answered 200 ({v1} by v1, {v2} by v2), {failed} failed"
    );
    assert_eq!(failed, 0, "failed requests during the update: {why:?}");
    assert!(
        v1 > 0 && v2 > 0,
        "the answers never moved from v1 to v2: v1 {v1}, v2 {v2}"
    );
    assert!(during.contains("v1 → v2 done"), "{during}");

    // After: v2 answers, logs, stats, removal, stop.
    let after = run_part(&env, &adapted[update + 1..]);
    let curl = step_output(&after, "curl -s -w '\\n' -H 'Host: hello.caas.local'");
    assert!(curl.contains(r#""version":"v2""#), "{curl}");
    let logs = step_output(&after, "caas logs hello");
    assert!(
        logs.contains("hello-v2-") && logs.contains("GET "),
        "{logs}"
    );
    let stats = step_output(&after, "caas stats hello");
    assert!(stats.starts_with("gateways counted: 1\n"), "{stats}");
    assert!(stats.contains("hello:v2 "), "{stats}");
    assert!(
        step_output(&after, "caas rm hello").contains("removed hello"),
        "{after}"
    );
}

#[test]
fn the_walkthrough_is_parsed_and_adapted_as_meant() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let cmds = readme_commands(&readme);
    assert_eq!(
        cmds.first().map(String::as_str),
        Some("scripts/install-deps.sh")
    );
    let env = Env {
        root: PathBuf::from("/repo"),
        tmp: PathBuf::from("/t"),
        examples: PathBuf::from("/repo/target/debug/examples"),
        zk: 1,
        etcd: None,
        host: "walkthrough",
        gateway: 2,
        admin: 3,
        api: 4,
        logs: 5,
    };
    let up = cmds.iter().find(|c| c.starts_with("caasd up")).unwrap();
    let up = adapt(up, &env).unwrap();
    assert!(up.contains("--zk 127.0.0.1:1"), "{up}");
    assert!(up.contains("--listen 127.0.0.1:2 "), "{up}");
    assert!(
        up.contains("> /t/up.log 2>&1 & echo $! > /t/up.pid"),
        "{up}"
    );
    assert!(!up.contains("2181"), "{up}");
    for c in &cmds {
        let Some(a) = adapt(c, &env) else { continue };
        for fixed in [":2181", ":8080", ":7070", "/tmp/", ".caas/"] {
            assert!(!a.contains(fixed), "`{c}` still uses {fixed} here: `{a}`");
        }
    }

    // On etcd: `caasd up --etcd`, and no ZooKeeper started or stopped.
    let on_etcd = Env {
        etcd: Some("http://127.0.0.1:6".into()),
        ..env
    };
    let up = cmds.iter().find(|c| c.starts_with("caasd up")).unwrap();
    let up = adapt(up, &on_etcd).unwrap();
    assert!(up.contains("--etcd http://127.0.0.1:6"), "{up}");
    assert!(!up.contains("--zk"), "{up}");
    for c in &cmds {
        if let Some(a) = adapt(c, &on_etcd) {
            assert!(!a.contains("zk.sh"), "`{c}` runs ZooKeeper on etcd: `{a}`");
        }
    }
}
