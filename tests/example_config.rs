//! The example gateway's shipped config stays valid and means what its comments say.

#![allow(clippy::unwrap_used, missing_docs)]

use caas::core::{Domain, RouteTable};
use caas::gateway::FileConfig;

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
