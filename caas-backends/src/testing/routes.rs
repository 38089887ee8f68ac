//! What a gateway would pick: the endpoints a [`Router`] chooses for a host, and a wait until
//! they are the expected ones, for the discovery tests of every store.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use caas_core::{AppId, Router};

/// How long [`eventually_picks`] waits.
pub const WAIT: Duration = Duration::from_secs(30);

/// `127.0.0.1:{port}`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The endpoints the gateway picks for `host` over a few requests (lookup, pool, pick per
/// request, as the gateway does, so weighted version splits show).
pub fn picks(router: &Router, host: &str) -> BTreeSet<SocketAddr> {
    (0..32)
        .filter_map(|_| {
            let table = router.load();
            let route = table.lookup(host)?;
            let ep = route.pool()?.pick()?;
            Some(ep.endpoint().addr)
        })
        .collect()
}

/// Waits (up to [`WAIT`]) until the gateway picks exactly `127.0.0.1:{want}` for `host`;
/// panics with what it picks otherwise.
pub async fn eventually_picks(router: &Router, host: &str, want: &[u16]) {
    let want: BTreeSet<SocketAddr> = want.iter().map(|&p| local(p)).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = picks(router, host);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host}: gateway picks {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many endpoints the router has for `app`, over all its versions.
pub fn endpoint_count(router: &Router, app: &AppId) -> usize {
    router.load().app(app).map_or(0, |a| {
        a.versions()
            .iter()
            .map(|v| v.pool().endpoints().len())
            .sum()
    })
}
