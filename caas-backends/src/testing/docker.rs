//! Docker-side test support: the daemon (or a loud skip), the private registry, the
//! hello-app image pushed to it, and clean-up of labelled containers.
//!
//! - [`docker_or_skip`]: connects; without a daemon prints `SKIPPED: no Docker daemon` and
//!   returns `None`, except under `CI=true`, where it panics.
//! - [`registry`]: `$CAAS_REGISTRY` (set by `scripts/test.sh`), else a registry on
//!   127.0.0.1:5000, started with `scripts/registry.sh` if nothing answers there (left
//!   running for the next test process).
//! - [`hello_image`]: `examples/hello-app/build.sh --push {registry}/hello:v1`, once per test
//!   process and serialized across processes with `flock` (cargo and docker cache the work).
//! - [`sidecar_image`]: `{registry}/hello-cache:v1`, the hello-app image with `PORT` set to
//!   [`SIDECAR_PORT`], so it can run as a sidecar beside a hello-app main container (which
//!   listens on 8080) in the same network namespace. Built `FROM` the local hello image
//!   (nothing is pulled from the internet) and pushed like it.
//! - [`remove_labelled`]: `docker rm -f` every container with a label.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::docker::DockerRuntime;

use super::is_ci;

/// The workspace root (where `scripts/` and `examples/` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("caas-backends sits in the workspace")
        .to_owned()
}

/// Connects to the daemon; see the module docs for the skip rule.
pub async fn docker_or_skip(test: &str) -> Option<DockerRuntime> {
    let result = match DockerRuntime::connect_default().await {
        Ok(d) => d.ping().await.map(|()| d),
        Err(e) => Err(e),
    };
    match result {
        Ok(d) => Some(d),
        Err(e) if is_ci() => panic!("CI=true and the Docker daemon is unreachable: {e}"),
        Err(e) => {
            let banner = format!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED {test}: no Docker daemon ({e})\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            let _ = std::io::stderr().write_all(banner.as_bytes());
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
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The registry address tests push to (see the module docs).
pub fn registry() -> String {
    static ADDR: OnceLock<String> = OnceLock::new();
    ADDR.get_or_init(|| {
        if let Ok(r) = std::env::var("CAAS_REGISTRY")
            && !r.trim().is_empty()
        {
            return r.trim().to_owned();
        }
        let addr = "127.0.0.1:5000";
        let root = workspace_root();
        let script = root.join("scripts/registry.sh");
        let answers = |root: &Path| {
            Command::new(root.join("scripts/registry.sh"))
                .args(["status", addr])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !answers(&root) {
            let dir = std::env::temp_dir().join("caas-test-registry");
            std::fs::create_dir_all(&dir).expect("registry dir");
            // flock: parallel test processes start one registry, not several.
            sh(Command::new("flock")
                .arg(dir.join("lock"))
                .arg("sh")
                .arg("-c")
                .arg(format!(
                    "{s} status {addr} || {s} start {d} {addr}",
                    s = script.display(),
                    d = dir.display()
                )));
        }
        addr.to_owned()
    })
    .clone()
}

/// `{registry}/hello:v1`, built and pushed (see the module docs).
pub fn hello_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let image = format!("{}/hello:v1", registry());
            let root = workspace_root();
            let lock = std::env::temp_dir().join("caas-hello-app-build.lock");
            let t0 = std::time::Instant::now();
            sh(Command::new("flock")
                .arg(&lock)
                .arg(root.join("examples/hello-app/build.sh"))
                .arg("--push")
                .arg(&image));
            eprintln!("hello-app image {image} ready in {:?}", t0.elapsed());
            image
        })
        .clone()
}

/// The port the [`sidecar_image`] listens on inside its container.
pub const SIDECAR_PORT: u16 = 6379;

/// `{registry}/hello-cache:v1`, built and pushed (see the module docs).
pub fn sidecar_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let base = hello_image();
            let image = format!("{}/hello-cache:v1", registry());
            let dir = tempfile::tempdir().expect("temp dir for the sidecar Dockerfile");
            std::fs::write(
                dir.path().join("Dockerfile"),
                format!("FROM {base}\nENV PORT={SIDECAR_PORT}\n"),
            )
            .expect("write the sidecar Dockerfile");
            // As build.sh: the legacy builder when buildx is missing (it uses the local base).
            let buildkit = std::env::var("DOCKER_BUILDKIT").unwrap_or_else(|_| {
                let buildx = Command::new("docker")
                    .args(["buildx", "version"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if buildx { "1" } else { "0" }.to_owned()
            });
            let lock = std::env::temp_dir().join("caas-hello-app-build.lock");
            sh(Command::new("flock")
                .arg(&lock)
                .args(["docker", "build", "-q", "-t", &image])
                .arg(dir.path())
                .env("DOCKER_BUILDKIT", buildkit));
            sh(Command::new("docker").args(["push", &image]));
            image
        })
        .clone()
}

/// Removes every container labelled `label` (`key=value`), running or not.
pub fn remove_labelled(label: &str) {
    let ids = sh(Command::new("docker").args(["ps", "-aq", "--filter", &format!("label={label}")]));
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        sh(Command::new("docker").args(["rm", "-f"]).args(&ids));
    }
}
