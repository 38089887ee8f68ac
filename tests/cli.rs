//! The `caas` binary against a real control API on loopback (over the in-memory store: the
//! CLI only speaks HTTP, so the store behind the API does not matter here; the full path
//! with ZooKeeper, Docker and a gateway is `tests/walkthrough.rs`). Checks what a script
//! relies on: exit codes by kind of failure, messages naming the field, `--json` output.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Output};

use caas_backends::api::auth::sha256_hex;
use caas_backends::api::{Api, ApiConfig, Tokens};
use caas_backends::store::MemStore;
use serde_json::Value;

mod support {
    pub(crate) mod examples;
}

const TOKEN: &str = "cli-test-token";

/// The API on a free loopback port; its address (the runtime and the temp dir live as long
/// as the returned guards).
fn api() -> (String, tokio::runtime::Runtime, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            "[[token]]\nsha256 = \"{}\"\ntenant = \"acme\"\napps = [\"hello\"]\nadmin = false\n",
            sha256_hex(TOKEN.as_bytes())
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(async {
        let api = Api::new(
            MemStore::new(),
            Tokens::load(&path).unwrap(),
            None,
            ApiConfig::default(),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(api.serve(l, std::future::pending()));
        addr
    });
    (format!("http://{addr}"), rt, dir)
}

fn caas_bin() -> PathBuf {
    support::examples::examples_dir().join("caas")
}

fn caas(api: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(caas_bin());
    c.env_remove("CAAS_TOKEN").env("CAAS_API", api).args(args);
    if let Some(t) = token {
        c.env("CAAS_TOKEN", t);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn exit_codes_tell_scripts_what_went_wrong() {
    let (api, _rt, _dir) = api();
    let deploy = [
        "deploy",
        "hello:v1",
        "--image",
        "127.0.0.1:5000/hello:v1",
        "--no-wait",
    ];

    // 3: no token, or an unknown one.
    let o = caas(&api, None, &deploy);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("401"),
        "{}",
        text(&o)
    );
    let o = caas(&api, Some("wrong"), &["ps", "hello"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    // 4: an app that is not there, or another tenant's.
    for app in ["hello", "globex-web"] {
        let o = caas(&api, Some(TOKEN), &["ps", app]);
        assert_eq!(o.status.code(), Some(4), "{app}: {}", text(&o));
    }

    // 5: refused input, the field named.
    let o = caas(
        &api,
        Some(TOKEN),
        &[
            "deploy",
            "hello:v1",
            "--image",
            "127.0.0.1:5000/other:v1",
            "--no-wait",
        ],
    );
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("image"),
        "{}",
        text(&o)
    );

    // 0, and --json is the API's JSON.
    let mut json_deploy = deploy.to_vec();
    json_deploy.push("--json");
    let o = caas(&api, Some(TOKEN), &json_deploy);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["app"].as_str(), v["created"].as_bool()),
        (Some("hello"), Some(true))
    );
    assert_eq!(v["deployment"]["replicas"], 1, "{v}");
    let o = caas(&api, Some(TOKEN), &["weights", "hello", "v9=100"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("weights.v9"),
        "{}",
        text(&o)
    );

    // 2: usage.
    let o = caas(&api, Some(TOKEN), &["scale", "hello", "3"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // 3 for an admin route with a tenant's token.
    let o = caas(&api, Some(TOKEN), &["hosts"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    // 7: waiting longer than --timeout (no scheduler runs here: nothing gets placed).
    let o = caas(
        &api,
        Some(TOKEN),
        &["scale", "hello:v1", "2", "--timeout", "1s"],
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));

    // 8: nothing listens.
    let o = caas("http://127.0.0.1:1", Some(TOKEN), &["ps"]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
}
