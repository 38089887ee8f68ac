//! The example binaries (`caasd`, `caas`, `gateway`, `route_churn`, `open_loop`) as a user
//! runs them. Test runners build examples only as test harnesses, so a test that runs the
//! real binaries builds them first with the cargo that built the test (a no-op when they are fresh; `scripts/test.sh` builds them
//! before the suite), and gets their paths.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// `target/{profile}/examples`, with `caasd`, `caas`, `gateway`, `route_churn` and
/// `open_loop` in it, built from this tree.
pub(crate) fn examples_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let out = Command::new(env!("CARGO"))
                .current_dir(&root)
                .args([
                    "build",
                    "--example",
                    "caasd",
                    "--example",
                    "caas",
                    "--example",
                    "gateway",
                    "--example",
                    "route_churn",
                    "--example",
                    "open_loop",
                ])
                .output()
                .expect("cannot run cargo");
            assert!(
                out.status.success(),
                "cargo build of the examples (caasd, caas, gateway, route_churn, open_loop) failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // target/{profile}/deps/TEST-HASH → target/{profile}/examples
            let exe = std::env::current_exe().expect("the test's own path");
            let dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("target/{profile}/deps")
                .join("examples");
            for bin in ["caasd", "caas", "gateway", "route_churn", "open_loop"] {
                assert!(
                    dir.join(bin).exists(),
                    "{} was not built",
                    dir.join(bin).display()
                );
            }
            dir
        })
        .clone()
}

/// A loopback port free when asked, for an example binary to listen on.
#[allow(dead_code)] // not every test that runs an example gives it a port
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free loopback port")
        .local_addr()
        .expect("the port's address")
        .port()
}
