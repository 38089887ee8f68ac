//! Hot reload: swapping the route table under load fails no request of an app that keeps
//! an endpoint, and open keep-alive and upgraded connections keep working.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_tables_under_load_fails_nothing() {
    let keep = Upstream::start("keep").await;
    let extra = Upstream::start("extra").await;
    let other = Upstream::start("other").await;
    let variants = [
        snapshot(vec![("a", app(&[("v1", &[keep.addr])]))]),
        snapshot(vec![
            ("a", app(&[("v1", &[keep.addr, extra.addr])])),
            ("b", app(&[("v1", &[other.addr])])),
        ]),
        snapshot(vec![
            (
                "a",
                app(&[("v1", &[extra.addr, keep.addr]), ("v2", &[other.addr])]),
            ),
            ("ws", app(&[("v1", &[keep.addr])])),
        ]),
    ];
    let mut base = variants[2].clone();
    base.apps.insert(id("ws"), app(&[("v1", &[keep.addr])]));
    let gw = Gw::start(base).await;

    // An upgraded connection and a keep-alive connection opened before the swaps.
    let mut ws = TcpStream::connect(gw.addr).await.unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ws.caas.local\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(read_head(&mut ws).await.starts_with("HTTP/1.1 101"));
    let mut ka = TcpStream::connect(gw.addr).await.unwrap();
    ka.write_all(b"GET /one HTTP/1.1\r\nHost: a.caas.local\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut ka).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let mut body = vec![0u8; len];
    ka.read_exact(&mut body).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (c, url) = (client(), gw.url("/"));
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(SeqCst) {
                let (s, _, body) = send(&c, get(&url, "a.caas.local")).await;
                if s == 200 {
                    ok.fetch_add(1, SeqCst);
                } else {
                    failed.fetch_add(1, SeqCst);
                    eprintln!("failed: {s} {body}");
                }
            }
        }));
    }
    for i in 0..300 {
        let mut s = variants[i % variants.len()].clone();
        s.apps.insert(id("ws"), app(&[("v1", &[keep.addr])]));
        gw.routes.set(s);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    stop.store(true, SeqCst);
    for t in load {
        t.await.unwrap();
    }
    let generation = gw.gateway.router().load().generation();
    assert!(generation > 50, "only {generation} swaps were applied");
    assert_eq!(failed.load(SeqCst), 0, "requests failed during swaps");
    assert!(
        ok.load(SeqCst) > 100,
        "only {} requests ran",
        ok.load(SeqCst)
    );

    ws.write_all(b"still there").await.unwrap();
    let mut back = [0u8; 11];
    ws.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still there");
    ka.write_all(b"GET /two HTTP/1.1\r\nHost: a.caas.local\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut ka).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn removed_endpoint_leaves_rotation_at_once_and_added_one_joins() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = Gw::start(snapshot(vec![("x", app(&[("v1", &[a.addr, b.addr])]))])).await;
    let c = client();
    gw.set_routes(snapshot(vec![("x", app(&[("v1", &[b.addr])]))]))
        .await;
    for _ in 0..10 {
        let (_, h, _) = send(&c, get(&gw.url("/"), "x.caas.local")).await;
        assert_eq!(h["x-upstream"], "b");
    }
    gw.set_routes(snapshot(vec![])).await;
    let (s, _, _) = send(&c, get(&gw.url("/"), "x.caas.local")).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn config_file_changes_are_routed_and_a_broken_file_keeps_the_last_routes() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let write = |addr: std::net::SocketAddr| {
        std::fs::write(
            &path,
            format!(
                "domains = [\"caas.local\"]\n[apps.f]\ndefault_version = \"v1\"\n[apps.f.versions.v1]\nendpoints = [\"{addr}\"]\n"
            ),
        )
        .unwrap()
    };
    write(a.addr);
    let file = caas_gateway::FileDiscovery::new(&path, Duration::from_millis(50));
    let reloads = file.stats();
    let gateway = caas_gateway::Gateway::builder(caas_gateway::GatewayConfig {
        domains: vec![caas_core::Domain::new("caas.local").unwrap()],
        limits: limits(),
        ..Default::default()
    })
    .discovery(file)
    .build()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let g = gateway.clone();
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });
    let c = client();
    let url = format!("http://{addr}/");
    let upstream_of = |c: &hyper_util::client::legacy::Client<_, TestBody>| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let (s, h, _) = send(&c, get(&url, "f.caas.local")).await;
            (
                s.as_u16(),
                h.get("x-upstream").map(|v| v.to_str().unwrap().to_owned()),
            )
        }
    };
    let mut now = (0, None);
    for _ in 0..100 {
        now = upstream_of(&c).await;
        if now.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(now, (200, Some("a".to_owned())));

    write(b.addr);
    let mut switched = false;
    for _ in 0..200 {
        if upstream_of(&c).await.1.as_deref() == Some("b") {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(switched, "edit of the config file was not applied");

    assert_eq!(reloads.rejected(), 0);
    let applied = reloads.applied();
    std::fs::write(
        &path,
        "domains = [\"caas.local\"]\n[apps.f]\nbogus_key = 1\n",
    )
    .unwrap();
    // The broken edit was read and refused...
    for _ in 0..500 {
        if reloads.rejected() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((reloads.rejected(), reloads.applied()), (1, applied));
    // ...and the routes are the last good ones.
    assert_eq!(
        upstream_of(&c).await,
        (200, Some("b".to_owned())),
        "last good routes kept"
    );
}

/// Discovery updates are applied on the gateway's routes thread, never on a serving one: a
/// discovery stuck in its work (a slow decode, a large rebuild) holds up no request, even on
/// a one-thread runtime, and what it sends when it gets going is routed.
#[tokio::test]
async fn a_stuck_discovery_holds_up_no_request_on_a_one_thread_runtime() {
    use caas_core::{Discovery, Update};
    use caas_gateway::Gateway;
    use std::sync::mpsc;

    struct Stuck {
        first: Option<Update>,
        then: Option<Update>,
        holding: tokio::sync::mpsc::UnboundedSender<Option<String>>,
        release: mpsc::Receiver<()>,
        timed_out: Arc<AtomicBool>,
    }
    impl Discovery for Stuck {
        async fn next(&mut self) -> Option<Update> {
            if let Some(u) = self.first.take() {
                return Some(u);
            }
            let update = self.then.take()?;
            let thread = std::thread::current().name().map(str::to_owned);
            let _ = self.holding.send(thread);
            // Blocks whichever thread polls the discovery until the test lets go. On the
            // serving thread it would block every request: then it gives up, and the test
            // fails on that rather than hanging.
            if self.release.recv_timeout(Duration::from_secs(5)).is_err() {
                self.timed_out.store(true, SeqCst);
            }
            Some(update)
        }
    }

    let up = Upstream::start("up").await;
    let (holding, mut held) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = mpsc::channel();
    let timed_out = Arc::new(AtomicBool::new(false));
    let stuck = Stuck {
        first: Some(Update::Reset(snapshot(vec![(
            "a",
            app(&[("v1", &[up.addr])]),
        )]))),
        then: Some(Update::Reset(snapshot(vec![
            ("a", app(&[("v1", &[up.addr])])),
            ("b", app(&[("v1", &[up.addr])])),
        ]))),
        holding,
        release: released,
        timed_out: Arc::clone(&timed_out),
    };
    let gateway = Gateway::builder(Gw::config())
        .discovery(stuck)
        .build()
        .unwrap();
    let (addr, stop, serving) = serve(&gateway, "127.0.0.1:0").await;

    // The discovery has applied its first update and is stuck on the second.
    let thread = held.recv().await.unwrap();
    assert_eq!(thread.as_deref(), Some("caas-routes"));
    assert_eq!(gateway.router().load().generation(), 1);
    let c = client();
    let url = format!("http://{addr}/");
    let (s, h, _) = send(&c, get(&url, "a.caas.local")).await;
    assert!(
        !timed_out.load(SeqCst),
        "the stuck discovery held up the request"
    );
    assert_eq!((s.as_u16(), h["x-upstream"].to_str().unwrap()), (200, "up"));
    let (s, _, _) = send(&c, get(&url, "b.caas.local")).await;
    assert_eq!(s, 404, "not routed before the discovery sends it");

    // Let go: the update it was holding is routed.
    release.send(()).unwrap();
    for _ in 0..500 {
        if gateway.router().load().generation() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (s, h, _) = send(&c, get(&url, "b.caas.local")).await;
    assert_eq!((s.as_u16(), h["x-upstream"].to_str().unwrap()), (200, "up"));
    assert!(!timed_out.load(SeqCst));

    // Shutting down stops the routes thread with the discovery in it.
    stop.send(()).unwrap();
    serving.await.unwrap();
}

/// Waits (up to 5 s) until `reloads` has applied `n` versions of the file; panics, with
/// the counts, if it never does.
async fn applied(reloads: &caas_gateway::ReloadStats, n: u64) {
    for _ in 0..500 {
        if reloads.applied() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "version {n} of the file was never applied in 5 s ({} applied, {} rejected)",
        reloads.applied(),
        reloads.rejected()
    );
}

/// A config file is waited on by the serving runtime (no thread of its own), and read,
/// parsed and applied off it: a read that hangs (here the path made a FIFO that nobody
/// writes, as a dead network mount would) holds up no request on a one-thread runtime, and
/// what the read returns when it gets going is routed.
#[cfg(unix)]
#[tokio::test]
async fn a_config_read_that_hangs_holds_up_no_request_on_a_one_thread_runtime() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let config = |addr: std::net::SocketAddr, note: &str| {
        format!(
            "# {note}\ndomains = [\"caas.local\"]\n[apps.f]\ndefault_version = \"v1\"\n[apps.f.versions.v1]\nendpoints = [\"{addr}\"]\n"
        )
    };
    std::fs::write(&path, config(a.addr, "first")).unwrap();
    let file = caas_gateway::FileDiscovery::new(&path, Duration::from_millis(20));
    let reloads = file.stats();
    let gateway = caas_gateway::Gateway::builder(Gw::config())
        .discovery(file)
        .build()
        .unwrap();
    let (addr, stop, serving) = serve(&gateway, "127.0.0.1:0").await;
    let c = client();
    let url = format!("http://{addr}/");
    let upstream = |c: &hyper_util::client::legacy::Client<_, TestBody>| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            // On the serving thread a hung read would hang this request: fail instead.
            let (s, h, _) =
                tokio::time::timeout(Duration::from_secs(10), send(&c, get(&url, "f.caas.local")))
                    .await
                    .expect("a request hung behind the config read");
            (
                s.as_u16(),
                h.get("x-upstream").map(|v| v.to_str().unwrap().to_owned()),
            )
        }
    };
    applied(&reloads, 1).await;
    assert_eq!(upstream(&c).await, (200, Some("a".to_owned())));

    // The path becomes a FIFO (kept under a second name too, to let the read go later).
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let held = dir.path().join("held");
    std::fs::hard_link(&fifo, &held).unwrap();
    std::fs::rename(&fifo, &path).unwrap();
    // Opening a FIFO to write without blocking works once a reader waits on it: the
    // discovery's next look is stuck there.
    let open_writer = || {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&held)
    };
    let mut writer = None;
    for _ in 0..500 {
        if let Ok(w) = open_writer() {
            writer = Some(w);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut writer = writer.expect("the discovery never read the FIFO");
    for _ in 0..20 {
        assert_eq!(upstream(&c).await, (200, Some("a".to_owned())));
    }
    assert_eq!((reloads.applied(), reloads.rejected()), (1, 0));

    // The read gets its content: routed.
    writer
        .write_all(config(b.addr, "through the FIFO").as_bytes())
        .unwrap();
    drop(writer);
    applied(&reloads, 2).await;
    assert_eq!(upstream(&c).await, (200, Some("b".to_owned())));

    // A plain file again; any look still waiting on the FIFO is let go with the same
    // content, so that the runtime's blocking pool can stop.
    let plain = dir.path().join("plain");
    let last = config(b.addr, "plain again");
    std::fs::write(&plain, &last).unwrap();
    std::fs::rename(&plain, &path).unwrap();
    for _ in 0..500 {
        if reloads.applied() == 3 {
            break;
        }
        if let Ok(mut w) = open_writer() {
            let _ = w.write_all(last.as_bytes());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((reloads.applied(), reloads.rejected()), (3, 0));
    assert_eq!(upstream(&c).await, (200, Some("b".to_owned())));
    stop.send(()).unwrap();
    serving.await.unwrap();
}
