//! The store conformance suite: one set of test functions, each run against real ZooKeeper,
//! real etcd and the in-memory store (the ones that need a server to cut or restart run on
//! the two real ones). Every test works in its own namespace (a chroot, a key prefix) and
//! waits on what it checks, never on a sleep.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use caas_backends::store::{
    ConflictKind, Op, Store, StoreError, Watch, WatchEvent, delete_tree, put,
};
use caas_backends::store_suite;
use caas_backends::testing::logs;
use caas_backends::testing::stores::{EtcdFixture, MemFixture, StoreFixture, ZkFixture};

const WAIT: Duration = Duration::from_secs(30);

fn create(path: &str, data: &str) -> Op {
    Op::Create {
        path: path.into(),
        data: data.into(),
    }
}

fn set(path: &str, data: &str, version: Option<i64>) -> Op {
    Op::Set {
        path: path.into(),
        data: data.into(),
        version,
    }
}

fn delete(path: &str, version: Option<i64>) -> Op {
    Op::Delete {
        path: path.into(),
        version,
    }
}

fn conflict_kind(r: Result<Vec<Option<i64>>, StoreError>) -> (usize, ConflictKind) {
    match r {
        Err(StoreError::Conflict { index, kind, .. }) => (index, kind),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn data<S: Store>(s: &S, path: &str) -> Option<Vec<u8>> {
    s.get(path).await.unwrap().map(|v| v.data)
}

/// Waits until `path` reads as `want` (`None`: missing).
async fn wait_data<S: Store>(s: &S, path: &str, want: Option<&[u8]>, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        // A read may fail while the server restarts: try again.
        if let Ok(got) = s.get(path).await
            && got.as_ref().map(|v| v.data.as_slice()) == want
        {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next event of `w`, within the deadline.
async fn next(w: &mut Watch) -> WatchEvent {
    tokio::time::timeout(WAIT, w.next())
        .await
        .expect("a watch event in time")
        .expect("the watch is open")
}

async fn versioned_reads_and_compare_and_set<F: StoreFixture>(f: F) {
    let s = f.connect().await.unwrap();
    assert_eq!(s.get("/a/b").await.unwrap(), None, "{}", f.name());
    let created = s.commit(vec![create("/a/b", "1")]).await.unwrap();
    let v1 = s.get("/a/b").await.unwrap().unwrap();
    assert_eq!(v1.data, b"1");
    assert_eq!(
        created,
        vec![Some(v1.version)],
        "a create returns the version read back"
    );

    // Compare-and-set: the version read wins once, then it is stale.
    let set_result = s.commit(vec![set("/a/b", "2", Some(v1.version))]).await;
    let v2 = s.get("/a/b").await.unwrap().unwrap();
    assert_eq!(set_result.unwrap(), vec![Some(v2.version)]);
    assert_ne!(v2.version, v1.version, "a write changes the version");
    assert_eq!(v2.data, b"2");
    let stale = s.commit(vec![set("/a/b", "3", Some(v1.version))]).await;
    assert_eq!(conflict_kind(stale), (0, ConflictKind::BadVersion));
    assert_eq!(
        data(&s, "/a/b").await.unwrap(),
        b"2",
        "a refused set wrote nothing"
    );

    // An unconditional set still needs the node.
    assert_eq!(
        conflict_kind(s.commit(vec![set("/a/zz", "x", None)]).await),
        (0, ConflictKind::NoNode)
    );
    // Children: names, sorted; a missing node has none.
    s.commit(vec![create("/a/c", ""), create("/a/c/d", "")])
        .await
        .unwrap();
    assert_eq!(s.children("/a").await.unwrap(), vec!["b", "c"]);
    assert_eq!(s.children("/a/c").await.unwrap(), vec!["d"]);
    assert!(s.children("/nope").await.unwrap().is_empty());
    assert!(s.children("/").await.unwrap().contains(&"a".to_owned()));
    // Children with their data and versions, in one call.
    let listed = s.list("/a").await.unwrap();
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["b", "c"], "{}", f.name());
    assert_eq!(listed[0].1, s.get("/a/b").await.unwrap().unwrap());
    assert_eq!(listed[1].1, s.get("/a/c").await.unwrap().unwrap());
    assert!(s.list("/nope").await.unwrap().is_empty());

    // Bad input is refused as such, not as an outage.
    assert!(matches!(
        s.get("no-slash").await,
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        s.commit(vec![create("/x//y", "")]).await,
        Err(StoreError::Invalid { .. })
    ));
}

async fn commit_conflicts_say_which_op_and_why<F: StoreFixture>(f: F) {
    let s = f.connect().await.unwrap();
    s.commit(vec![create("/c/one", "1"), create("/c/parent", "")])
        .await
        .unwrap();
    s.commit(vec![create("/c/parent/kid", "")]).await.unwrap();
    let v = s.get("/c/one").await.unwrap().unwrap().version;
    let cases = [
        (
            vec![create("/c/one", "again")],
            (0, ConflictKind::NodeExists),
        ),
        (
            vec![
                create("/c/new", ""),
                Op::Check {
                    path: "/c/missing".into(),
                    version: v,
                },
            ],
            (1, ConflictKind::NoNode),
        ),
        (
            vec![
                create("/c/new", ""),
                Op::Check {
                    path: "/c/one".into(),
                    version: v + 1000,
                },
            ],
            (1, ConflictKind::BadVersion),
        ),
        (vec![delete("/c/parent", None)], (0, ConflictKind::NotEmpty)),
        (vec![delete("/c/gone", None)], (0, ConflictKind::NoNode)),
        (
            vec![create("/c/new", ""), delete("/c/one", Some(v + 1000))],
            (1, ConflictKind::BadVersion),
        ),
    ];
    for (ops, want) in cases {
        let what = format!("{}: {ops:?}", f.name());
        assert_eq!(conflict_kind(s.commit(ops).await), want, "{what}");
        assert_eq!(
            s.get("/c/new").await.unwrap(),
            None,
            "{what}: nothing written"
        );
    }
    // A passing check lets the rest through, all at once.
    let done = s
        .commit(vec![
            Op::Check {
                path: "/c/one".into(),
                version: v,
            },
            create("/c/new", "n"),
            delete("/c/parent/kid", None),
        ])
        .await
        .unwrap();
    assert_eq!(done.len(), 3);
    assert_eq!(data(&s, "/c/new").await.unwrap(), b"n");
    assert_eq!(s.get("/c/parent/kid").await.unwrap(), None);
    // The helpers on top of commit.
    put(&s, "/c/one", b"p").await.unwrap();
    put(&s, "/c/fresh", b"f").await.unwrap();
    assert_eq!(data(&s, "/c/one").await.unwrap(), b"p");
    delete_tree(&s, "/c").await.unwrap();
    assert!(s.children("/c").await.unwrap().is_empty());
}

/// A node goes in the same commit as its children (children first), as an undeploy removes
/// a deployment with its status node; a child left behind refuses the whole commit.
async fn a_node_goes_with_its_children_in_one_commit<F: StoreFixture>(f: F) {
    let s = f.connect().await.unwrap();
    for p in ["/d/app", "/d/app/a", "/d/app/b", "/d/app/b/x", "/d/apple"] {
        s.commit(vec![create(p, "")]).await.unwrap();
    }
    let refused = [
        // `b` stays.
        vec![delete("/d/app/a", None), delete("/d/app", None)],
        // `b/x` stays under the deleted `b`.
        vec![
            delete("/d/app/a", None),
            delete("/d/app/b", None),
            delete("/d/app", None),
        ],
    ];
    for ops in refused {
        let what = format!("{}: {ops:?}", f.name());
        let (_, kind) = conflict_kind(s.commit(ops).await);
        assert_eq!(kind, ConflictKind::NotEmpty, "{what}");
        assert!(
            s.get("/d/app/a").await.unwrap().is_some(),
            "{what}: nothing deleted"
        );
    }
    s.commit(vec![
        delete("/d/app/a", None),
        delete("/d/app/b/x", None),
        delete("/d/app/b", None),
        delete("/d/app", None),
    ])
    .await
    .unwrap();
    assert_eq!(
        s.children("/d").await.unwrap(),
        vec!["apple"],
        "a sibling with the same prefix stays"
    );
}

async fn a_watch_sees_every_change_in_order<F: StoreFixture>(f: F) {
    let s = f.connect().await.unwrap();
    let mut w = s.watch("/w");
    assert_eq!(next(&mut w).await, WatchEvent::Resync);
    s.commit(vec![create("/elsewhere", "")]).await.unwrap();
    let mut expected = Vec::new();
    for i in 0..20 {
        let p = format!("/w/k{}", i % 7);
        let (op, event) = match s.get(&p).await.unwrap() {
            None => (create(&p, "x"), WatchEvent::Changed(p)),
            Some(v) if i % 3 == 0 => (delete(&p, Some(v.version)), WatchEvent::Deleted(p)),
            Some(v) => (
                set(&p, &i.to_string(), Some(v.version)),
                WatchEvent::Changed(p),
            ),
        };
        s.commit(vec![op]).await.unwrap();
        expected.push(event);
    }
    assert!(
        expected.iter().any(|e| matches!(e, WatchEvent::Deleted(_))),
        "the sequence deletes"
    );
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        match next(&mut w).await {
            // The parent made by a create (ZooKeeper, memory) is a change too.
            WatchEvent::Changed(p) if p == "/w" => {}
            WatchEvent::Resync => panic!("{}: unexpected Resync", f.name()),
            event => seen.push(event),
        }
    }
    // In order, each a change or a deletion as it was.
    assert_eq!(seen, expected, "{}", f.name());
    assert!(
        !seen
            .iter()
            .any(|e| e.path().is_some_and(|p| p.starts_with("/elsewhere"))),
        "only the prefix"
    );
}

fn changed(path: &str) -> WatchEvent {
    WatchEvent::Changed(path.into())
}

/// A change is never lost: `want` arrives (a change or a deletion of its path, as made), or
/// a Resync after the change was made.
async fn wait_reported(w: &mut Watch, want: WatchEvent, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w.next()).await {
            Ok(Some(WatchEvent::Resync)) => return,
            Ok(Some(e)) if e == want => return,
            Ok(Some(e)) => assert_ne!(
                e.path(),
                want.path(),
                "{what}: reported as the wrong kind of event"
            ),
            Ok(None) => panic!("{what}: the watch ended"),
            Err(_) => panic!("{what}: {want:?} was never reported"),
        }
    }
}

async fn a_watch_misses_nothing_while_disconnected<F: StoreFixture>(f: F) {
    let proxy = f.proxy().await.unwrap();
    let watcher = f.connect_via(&proxy).await.unwrap();
    let writer = f.connect().await.unwrap();
    let mut w = watcher.watch("/d");
    assert_eq!(next(&mut w).await, WatchEvent::Resync);
    proxy.partition(true);
    writer
        .commit(vec![create("/d/while-cut", "1")])
        .await
        .unwrap();
    proxy.partition(false);
    wait_reported(&mut w, changed("/d/while-cut"), f.name()).await;
    // And the watch is live again.
    let mut ok = false;
    for i in 0..3 {
        let p = format!("/d/after-{i}");
        writer.commit(vec![create(&p, "2")]).await.unwrap();
        if matches!(
            tokio::time::timeout(WAIT, async {
                loop {
                    match w.next().await {
                        Some(WatchEvent::Changed(c)) if c == p => return true,
                        Some(WatchEvent::Resync) => return false,
                        Some(_) => {}
                        None => return false,
                    }
                }
            })
            .await,
            Ok(true)
        ) {
            ok = true;
            break;
        }
    }
    assert!(
        ok,
        "{}: the watch reports changes after the partition",
        f.name()
    );
}

async fn a_watch_follows_a_server_restart<F: StoreFixture>(f: F) {
    let s = f.connect().await.unwrap();
    let mut w = s.watch("/r");
    assert_eq!(next(&mut w).await, WatchEvent::Resync);
    s.commit(vec![create("/r/before", "")]).await.unwrap();
    assert_eq!(next(&mut w).await, WatchEvent::Changed("/r/before".into()));
    tokio::task::block_in_place(|| f.restart()).unwrap();
    // The first write after the restart may meet a connection being re-established.
    let deadline = Instant::now() + WAIT;
    while let Err(e) = s.commit(vec![create("/r/after", "")]).await {
        assert!(
            Instant::now() < deadline,
            "{}: no commit after restart: {e}",
            f.name()
        );
        if matches!(e, StoreError::Conflict { .. }) {
            break; // the lost reply was applied
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_reported(&mut w, changed("/r/after"), f.name()).await;
}

async fn ephemerals_vanish_with_their_session<F: StoreFixture>(f: F) {
    let owner = f.connect().await.unwrap();
    let other = f.connect().await.unwrap();
    owner.create_ephemeral("/e/h1/alive", b"up").await.unwrap();
    owner.create_ephemeral("/e/h2/alive", b"up").await.unwrap();
    assert_eq!(data(&other, "/e/h1/alive").await.unwrap(), b"up");
    assert_eq!(other.children("/e").await.unwrap(), vec!["h1", "h2"]);
    // Never overwritten, whoever asks.
    for s in [&owner, &other] {
        match s.create_ephemeral("/e/h1/alive", b"again").await {
            Err(StoreError::Conflict {
                kind: ConflictKind::NodeExists,
                ..
            }) => {}
            r => panic!("{}: {r:?}", f.name()),
        }
    }
    owner.delete_ephemeral("/e/h2/alive").await.unwrap();
    assert_eq!(other.get("/e/h2/alive").await.unwrap(), None);
    let mut w = other.watch("/e");
    assert_eq!(next(&mut w).await, WatchEvent::Resync);
    owner.close().await;
    wait_data(
        &other,
        "/e/h1/alive",
        None,
        "the ephemeral node gone after close",
    )
    .await;
    wait_reported(&mut w, WatchEvent::Deleted("/e/h1/alive".into()), f.name()).await;
    assert!(matches!(
        owner.get("/e/h1/alive").await,
        Err(StoreError::Unavailable { .. })
    ));
    // The other handle is still open, and so are its watches.
    other.commit(vec![create("/e/after", "")]).await.unwrap();
    wait_reported(&mut w, changed("/e/after"), f.name()).await;
}

async fn ephemerals_are_recreated_after_the_session_is_lost<F: StoreFixture>(f: F) {
    let proxy = f.proxy().await.unwrap();
    let owner = f.connect_via(&proxy).await.unwrap();
    let other = f.connect().await.unwrap();
    owner.create_ephemeral("/l/h1/alive", b"up").await.unwrap();
    wait_data(&other, "/l/h1/alive", Some(b"up"), "the ephemeral node").await;
    proxy.partition(true);
    // The server expires the session or lease: the node goes for everyone.
    wait_data(&other, "/l/h1/alive", None, "expiry after the partition").await;
    proxy.partition(false);
    // The owner notices, opens a new session or lease and puts it back.
    wait_data(
        &other,
        "/l/h1/alive",
        Some(b"up"),
        "re-creation after healing",
    )
    .await;
    owner.close().await;
    wait_data(&other, "/l/h1/alive", None, "gone after close").await;
}

store_suite!(
    zookeeper,
    ZkFixture::shared,
    [
        versioned_reads_and_compare_and_set,
        commit_conflicts_say_which_op_and_why,
        a_node_goes_with_its_children_in_one_commit,
        a_watch_sees_every_change_in_order,
        ephemerals_vanish_with_their_session,
    ]
);
store_suite!(
    zookeeper_private,
    ZkFixture::private,
    [
        a_watch_misses_nothing_while_disconnected,
        a_watch_follows_a_server_restart,
        ephemerals_are_recreated_after_the_session_is_lost,
    ]
);
store_suite!(
    etcd,
    EtcdFixture::shared,
    [
        versioned_reads_and_compare_and_set,
        commit_conflicts_say_which_op_and_why,
        a_node_goes_with_its_children_in_one_commit,
        a_watch_sees_every_change_in_order,
        ephemerals_vanish_with_their_session,
    ]
);
store_suite!(
    etcd_private,
    EtcdFixture::private,
    [
        a_watch_misses_nothing_while_disconnected,
        a_watch_follows_a_server_restart,
        ephemerals_are_recreated_after_the_session_is_lost,
    ]
);
store_suite!(
    memory,
    MemFixture::new,
    [
        versioned_reads_and_compare_and_set,
        commit_conflicts_say_which_op_and_why,
        a_node_goes_with_its_children_in_one_commit,
        a_watch_sees_every_change_in_order,
        ephemerals_vanish_with_their_session,
    ]
);

/// etcd only: a watch that comes back after its resume revision was compacted cannot replay
/// what it missed, so it says Resync, and then follows changes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_watch_resumed_past_a_compaction_resyncs() {
    logs();
    let Some(f) = EtcdFixture::private("etcd_compaction") else {
        return;
    };
    let proxy = f.proxy().await.unwrap();
    let watcher = f.connect_via(&proxy).await.unwrap();
    let writer = f.connect().await.unwrap();
    let mut w = watcher.watch("/k");
    assert_eq!(next(&mut w).await, WatchEvent::Resync);
    writer.commit(vec![create("/k/seen", "")]).await.unwrap();
    assert_eq!(next(&mut w).await, WatchEvent::Changed("/k/seen".into()));
    proxy.partition(true);
    for i in 0..3 {
        put(&writer, "/k/missed", i.to_string().as_bytes())
            .await
            .unwrap();
    }
    let rev = writer.get("/k/missed").await.unwrap().unwrap().version;
    writer.client().compact(rev, None).await.unwrap();
    proxy.partition(false);
    assert_eq!(
        next(&mut w).await,
        WatchEvent::Resync,
        "history gone: the watcher must read everything again"
    );
    writer.commit(vec![create("/k/later", "")]).await.unwrap();
    assert_eq!(next(&mut w).await, WatchEvent::Changed("/k/later".into()));
}

/// etcd only: after a partition the watch resumes from the revision after the last event it
/// delivered, so what happened meanwhile arrives as events, in order, with no Resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_watch_replays_what_it_missed_without_a_resync() {
    logs();
    let Some(f) = EtcdFixture::private("etcd_replay") else {
        return;
    };
    let proxy = f.proxy().await.unwrap();
    let watcher = f.connect_via(&proxy).await.unwrap();
    let writer = f.connect().await.unwrap();
    let mut w = watcher.watch("/m");
    assert_eq!(next(&mut w).await, WatchEvent::Resync);
    writer.commit(vec![create("/m/a", "")]).await.unwrap();
    assert_eq!(next(&mut w).await, WatchEvent::Changed("/m/a".into()));
    proxy.partition(true);
    writer.commit(vec![create("/m/b", "")]).await.unwrap();
    writer.commit(vec![delete("/m/a", None)]).await.unwrap();
    proxy.partition(false);
    assert_eq!(next(&mut w).await, WatchEvent::Changed("/m/b".into()));
    assert_eq!(next(&mut w).await, WatchEvent::Deleted("/m/a".into()));
    assert!(watcher.stats().watch_resumes >= 1, "{:?}", watcher.stats());
}

/// etcd only: watches set at the same moment on one handle each start (each says Resync),
/// again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watches_set_together_all_start() {
    logs();
    let Some(f) = EtcdFixture::shared("etcd_watches_together") else {
        return;
    };
    for attempt in 0..20 {
        let s = f.connect().await.unwrap();
        let mut watches: Vec<Watch> = ["/a", "/b", "/c"].iter().map(|p| s.watch(p)).collect();
        for (i, w) in watches.iter_mut().enumerate() {
            let first = tokio::time::timeout(Duration::from_secs(10), w.next()).await;
            assert!(
                matches!(first, Ok(Some(WatchEvent::Resync))),
                "attempt {attempt}: watch {i} did not start: {first:?}"
            );
        }
        s.close().await;
    }
}
