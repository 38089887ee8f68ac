//! The [`Router`]: one `ArcSwap` holding the whole route table.
//!
//! Readers load the current table without locking. A writer applies an [`Update`] to its copy
//! of the snapshot, builds a new table (carrying endpoint and balancer state over) and swaps it
//! in with one store, so routes, endpoints, health and balancer state never disagree. A request
//! keeps the table (or the endpoint `Arc`) it started with; a swap never cuts it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};

use crate::discovery::Update;
use crate::id::{AppId, Domain};
use crate::spec::{AppSpec, Snapshot};
use crate::table::{BuildWarning, RouteTable};

struct Writer {
    domains: Vec<Domain>,
    snapshot: Snapshot,
    generation: u64,
    /// The table before the current one, kept so that a request still holding it across a
    /// swap never holds the last reference (see [`retire`]).
    previous: Option<Arc<RouteTable>>,
}

/// What one rebuild did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// Generation of the table now in place.
    pub generation: u64,
    /// Apps in the new table.
    pub apps: usize,
    /// Time spent building the table (the swap itself is one atomic store).
    pub build_time: Duration,
    /// Whether the whole table was built; `false` when only the updated app's routes were
    /// (an app that kept its host names: a registration, a deregistration, a weight change).
    pub whole: bool,
    /// Problems the build worked around.
    pub warnings: Vec<BuildWarning>,
}

/// The live route table and the snapshot it was built from.
pub struct Router {
    table: ArcSwap<RouteTable>,
    writer: Mutex<Writer>,
    /// Tables built whole (a new or removed app, a blacklist or domain change, a reset).
    whole_builds: AtomicU64,
    /// Wall-clock time spent building tables, whole or one app's routes, in nanoseconds.
    build_nanos: AtomicU64,
}

/// What building route tables has cost since the router was made ([`Router::build_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildStats {
    /// Updates applied: the generation of the table in place.
    pub updates: u64,
    /// Of those, the ones that built the whole table; the rest rebuilt one app's routes.
    pub whole_builds: u64,
    /// Time spent building, summed over every update: wall-clock time on the thread that
    /// applied each, so time it waited for a CPU counts (the swap itself is one atomic store).
    pub build_time: Duration,
}

/// Frees a retired table. One made by a one-app change ([`RouteTable::with_app`]) shares all
/// but one app and one chunk of its app list with the tables after it: freeing it is a few
/// hundred reference-count decrements, done here. Any other is freed off the writer's and the
/// readers' threads: freeing a 10,000-app table takes as long as building one, and a request
/// that happened to hold the last reference would otherwise stall its whole worker thread for
/// that long. (Waking the reclaimer for every registration cost a thread wake-up, on a busy
/// machine another task's CPU, for microseconds of work.)
fn retire(table: Arc<RouteTable>) {
    if table.shares_routes() {
        drop(table);
        return;
    }
    static RECLAIMER: OnceLock<Mutex<mpsc::Sender<Arc<RouteTable>>>> = OnceLock::new();
    let tx = RECLAIMER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Arc<RouteTable>>();
        let spawned = std::thread::Builder::new()
            .name("caas-table-reclaim".into())
            .spawn(move || {
                for table in rx {
                    drop(table);
                }
            });
        if let Err(e) = spawned {
            // Without the thread the channel is closed and tables are freed in place.
            tracing::warn!("cannot start the route-table reclaimer thread: {e}");
        }
        Mutex::new(tx)
    });
    let tx = tx.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(mpsc::SendError(table)) = tx.send(table) {
        drop(table);
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.table.load();
        f.debug_struct("Router")
            .field("generation", &t.generation())
            .field("apps", &t.apps().len())
            .finish()
    }
}

impl Router {
    /// An empty router serving `{app}.{domain}` for each of `domains`.
    pub fn new(domains: Vec<Domain>) -> Self {
        let (table, _) = RouteTable::build(&Snapshot::default(), &domains, None, 0);
        Self {
            table: ArcSwap::from_pointee(table),
            writer: Mutex::new(Writer {
                domains,
                snapshot: Snapshot::default(),
                generation: 0,
                previous: None,
            }),
            whole_builds: AtomicU64::new(0),
            build_nanos: AtomicU64::new(0),
        }
    }

    /// What building route tables has cost so far: updates applied, whole builds among
    /// them, and the time spent building (off the serving threads, in a gateway).
    pub fn build_stats(&self) -> BuildStats {
        BuildStats {
            updates: self.table.load().generation(),
            whole_builds: self.whole_builds.load(Relaxed),
            build_time: Duration::from_nanos(self.build_nanos.load(Relaxed)),
        }
    }

    /// The current table, for one request (no lock, no reference-count traffic).
    #[inline]
    pub fn load(&self) -> Guard<Arc<RouteTable>> {
        self.table.load()
    }

    /// The current table as an owned `Arc`, for holding across long operations.
    pub fn current(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// A copy of the snapshot the current table was built from.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().snapshot.clone()
    }

    /// Applies a discovery update and swaps in the rebuilt table.
    pub fn apply(&self, update: Update) -> ApplyReport {
        let mut w = self.lock();
        match update {
            Update::Reset(s) => w.snapshot = s,
            Update::Upsert(id, spec) => match self.upsert_one(&mut w, id, spec) {
                Ok(report) => return report,
                Err((id, spec)) => {
                    w.snapshot.apps.insert(id, spec);
                }
            },
            Update::Remove(id) => {
                w.snapshot.apps.remove(&id);
            }
            Update::Blacklist(b) => w.snapshot.blacklist = b,
        }
        self.rebuild(&mut w)
    }

    /// Applies `update` on the calling thread if that is quick, and hands it back if not.
    ///
    /// Quick is a change to an existing app that keeps its host names (a registration, a
    /// deregistration, a weight or limit change: one app's routes, tens of microseconds at
    /// most with 100,000 apps) while no other writer holds the router. Everything else can
    /// take milliseconds (a whole build of a large table) or wait for a writer that is
    /// building one; hand what comes back to [`Router::apply`] on a thread that may block.
    /// For a caller that takes updates on an event loop that must not block; the gateway
    /// itself applies every update on a thread of its own.
    #[allow(
        clippy::result_large_err,
        reason = "the caller's own update, handed back by move; boxing it would allocate"
    )]
    pub fn try_apply_quick(&self, update: Update) -> Result<ApplyReport, Update> {
        let Update::Upsert(id, spec) = update else {
            return Err(update);
        };
        let mut w = match self.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(Update::Upsert(id, spec)),
        };
        self.upsert_one(&mut w, id, spec)
            .map_err(|(id, spec)| Update::Upsert(id, spec))
    }

    /// Rebuilds only `id`'s routes and swaps the table in, when the app exists and keeps its
    /// host names; otherwise hands both back untouched (nothing applied).
    #[allow(
        clippy::result_large_err,
        reason = "the caller's own app, handed back by move; boxing it would allocate"
    )]
    fn upsert_one(
        &self,
        w: &mut Writer,
        id: AppId,
        spec: AppSpec,
    ) -> Result<ApplyReport, (AppId, AppSpec)> {
        let started = Instant::now();
        let current = self.table.load_full();
        match current.with_app(&id, &spec, w.generation + 1) {
            Some((table, warnings)) => {
                w.snapshot.apps.insert(id, spec);
                Ok(self.install(w, table, warnings, started, false))
            }
            None => Err((id, spec)),
        }
    }

    /// Changes the gateway domains and rebuilds.
    pub fn set_domains(&self, domains: Vec<Domain>) -> ApplyReport {
        let mut w = self.lock();
        w.domains = domains;
        self.rebuild(&mut w)
    }

    fn rebuild(&self, w: &mut Writer) -> ApplyReport {
        let started = Instant::now();
        let previous = self.table.load_full();
        let (table, warnings) =
            RouteTable::build(&w.snapshot, &w.domains, Some(&previous), w.generation + 1);
        self.install(w, table, warnings, started, true)
    }

    /// Swaps in `table` (built for generation `w.generation + 1`) and retires the previous.
    fn install(
        &self,
        w: &mut Writer,
        table: RouteTable,
        warnings: Vec<BuildWarning>,
        started: Instant,
        whole: bool,
    ) -> ApplyReport {
        w.generation += 1;
        let apps = table.apps().len();
        let old = self.table.swap(Arc::new(table));
        if let Some(older) = w.previous.replace(old) {
            retire(older);
        }
        for warning in &warnings {
            tracing::warn!(generation = w.generation, "route table: {warning}");
        }
        let build_time = started.elapsed();
        let nanos = u64::try_from(build_time.as_nanos()).unwrap_or(u64::MAX);
        self.build_nanos.fetch_add(nanos, Relaxed);
        if whole {
            self.whole_builds.fetch_add(1, Relaxed);
        }
        ApplyReport {
            generation: w.generation,
            apps,
            build_time,
            whole,
            warnings,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // The writer state is a plain value rebuilt whole on every apply, so a panic in
        // another writer cannot leave it half-changed.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AppId, AppSpec, Endpoint, Version, VersionSpec};

    fn spec(port: u16) -> AppSpec {
        AppSpec {
            versions: [(
                Version::new("v1").unwrap(),
                VersionSpec {
                    endpoints: vec![Endpoint::new(([127, 0, 0, 1], port).into())],
                },
            )]
            .into(),
            ..AppSpec::default()
        }
    }

    fn two_versions(p1: &[u16], p2: &[u16]) -> AppSpec {
        let version = |ports: &[u16]| VersionSpec {
            endpoints: ports
                .iter()
                .map(|p| Endpoint::new(([127, 0, 0, 1], *p).into()))
                .collect(),
        };
        AppSpec {
            versions: [
                (Version::new("v1").unwrap(), version(p1)),
                (Version::new("v2").unwrap(), version(p2)),
            ]
            .into(),
            ..AppSpec::default()
        }
    }

    /// Every host name the table routes, with the ports its pool picks from.
    fn routes(t: &RouteTable) -> Vec<(String, Vec<u16>)> {
        let mut hosts: Vec<String> = Vec::new();
        for a in t.apps() {
            hosts.push(format!("{}.caas.local", a.id()));
            for v in a.versions() {
                hosts.push(format!("{}.{}.caas.local", v.id(), a.id()));
            }
        }
        hosts
            .into_iter()
            .map(|h| {
                let ports = t
                    .lookup(&h)
                    .and_then(|r| r.pool())
                    .map(|p| {
                        p.endpoints()
                            .iter()
                            .map(|e| e.endpoint().addr.port())
                            .collect()
                    })
                    .unwrap_or_default();
                (h, ports)
            })
            .collect()
    }

    #[test]
    fn a_change_that_keeps_host_names_rebuilds_one_app_and_routes_as_a_full_build() {
        let r = Router::new(vec![Domain::new("caas.local").unwrap()]);
        // More apps than one chunk of the table's app list holds: the list is in three.
        let apps: Vec<AppId> = (0..150)
            .map(|i| AppId::new(&format!("app{i}")).unwrap())
            .collect();
        let snapshot = Snapshot {
            apps: apps
                .iter()
                .map(|a| (a.clone(), two_versions(&[1, 2], &[3])))
                .collect(),
            ..Snapshot::default()
        };
        let reset = r.apply(Update::Reset(snapshot));
        let before = r.current();
        let hosts_before = before.host_count();

        // A registration and a deregistration in app7: its names stay.
        let rep = r.apply(Update::Upsert(
            apps[7].clone(),
            two_versions(&[1, 2, 9], &[4]),
        ));
        let after = r.current();
        assert_eq!(rep.generation, before.generation() + 1);
        assert!(!rep.whole, "one app rebuilt");
        // The cost so far: two updates, one of them a whole build, their build times summed.
        let cost = r.build_stats();
        assert_eq!((cost.updates, cost.whole_builds), (2, 1));
        assert_eq!(cost.build_time, reset.build_time + rep.build_time);
        assert_eq!(after.host_count(), hosts_before);
        // Every other app is the same route (state and all); app7's kept endpoint too.
        for (a, b) in before.apps().zip(after.apps()) {
            assert_eq!(Arc::ptr_eq(a, b), a.id() != &apps[7], "{}", a.id());
        }
        let kept = |t: &RouteTable| {
            let pool = t
                .lookup("v1.app7.caas.local")
                .and_then(|r| r.pool())
                .unwrap();
            Arc::clone(&pool.endpoints()[0])
        };
        assert!(
            Arc::ptr_eq(&kept(&before), &kept(&after)),
            "endpoint state carried over"
        );
        // What the table routes is what a full build of the same snapshot routes.
        let (full, _) = RouteTable::build(
            &r.snapshot(),
            &[Domain::new("caas.local").unwrap()],
            None,
            0,
        );
        assert_eq!(routes(&after), routes(&full));
        assert_eq!(
            routes(&after)
                .iter()
                .find(|(h, _)| h == "app7.caas.local")
                .map(|(_, p)| p.clone()),
            Some(vec![1, 2, 9, 4])
        );
        // The same in the last, partly filled chunk; the apps stay whole and in id order.
        let rep = r.apply(Update::Upsert(apps[99].clone(), two_versions(&[8], &[3])));
        assert!(!rep.whole);
        let last = r.current();
        for (a, b) in after.apps().zip(last.apps()) {
            assert_eq!(Arc::ptr_eq(a, b), a.id() != &apps[99], "{}", a.id());
        }
        let ids: Vec<&AppId> = last.apps().map(|a| a.id()).collect();
        assert_eq!(last.apps().len(), 150);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted by id");
        let (full, _) = RouteTable::build(
            &r.snapshot(),
            &[Domain::new("caas.local").unwrap()],
            None,
            0,
        );
        assert_eq!(routes(&last), routes(&full));

        // A version appearing changes the names: a full build, which routes it.
        r.apply(Update::Upsert(apps[7].clone(), two_versions(&[1], &[])));
        assert!(r.load().lookup("v2.app7.caas.local").is_none());
        assert!(r.load().lookup("v1.app7.caas.local").is_some());
        let rep = r.apply(Update::Upsert(apps[7].clone(), two_versions(&[1], &[5])));
        assert!(rep.whole);
        assert!(r.load().lookup("v2.app7.caas.local").is_some());
        // A new app too.
        let rep = r.apply(Update::Upsert(AppId::new("fresh").unwrap(), spec(6)));
        assert!(rep.whole);
        assert!(r.load().lookup("fresh.caas.local").is_some());
        let (full, _) = RouteTable::build(
            &r.snapshot(),
            &[Domain::new("caas.local").unwrap()],
            None,
            0,
        );
        assert_eq!(routes(&r.current()), routes(&full));
    }

    fn hundred_fifty_apps() -> (Router, Vec<AppId>) {
        let r = Router::new(vec![Domain::new("caas.local").unwrap()]);
        let apps: Vec<AppId> = (0..150)
            .map(|i| AppId::new(&format!("app{i}")).unwrap())
            .collect();
        r.apply(Update::Reset(Snapshot {
            apps: apps.iter().map(|a| (a.clone(), spec(1))).collect(),
            ..Snapshot::default()
        }));
        (r, apps)
    }

    fn port_of(r: &Router, host: &str) -> Option<u16> {
        let t = r.load();
        let pool = t.lookup(host)?.pool()?;
        Some(pool.endpoints()[0].endpoint().addr.port())
    }

    #[test]
    fn a_quick_apply_takes_one_app_changes_and_hands_back_the_rest() {
        let (r, apps) = hundred_fifty_apps();
        let generation = r.load().generation();

        // A registration's kind of change: applied, one app rebuilt, in the snapshot too.
        let rep = r
            .try_apply_quick(Update::Upsert(apps[70].clone(), spec(2)))
            .expect("one app's change is quick");
        assert!(!rep.whole);
        assert_eq!(rep.generation, generation + 1);
        assert_eq!(port_of(&r, "app70.caas.local"), Some(2));
        assert_eq!(r.snapshot().apps[&apps[70]], spec(2));
        assert_eq!(r.build_stats().whole_builds, 1, "only the reset was whole");

        // Everything that may build the whole table comes back untouched, nothing applied.
        let two = two_versions(&[3], &[4]);
        let handed_back = [
            Update::Upsert(apps[71].clone(), two.clone()),
            Update::Upsert(AppId::new("fresh").unwrap(), spec(5)),
            Update::Remove(apps[72].clone()),
            Update::Reset(Snapshot::default()),
            Update::Blacklist(crate::Blacklist::default()),
        ];
        for update in handed_back {
            let back = r.try_apply_quick(update.clone()).expect_err("not quick");
            assert_eq!(back, update);
        }
        assert_eq!(r.load().generation(), generation + 1);
        assert_eq!(port_of(&r, "app71.caas.local"), Some(1));
        assert!(r.load().lookup("fresh.caas.local").is_none());
        assert!(r.load().lookup("app72.caas.local").is_some());

        // While another writer holds the router (a whole build in progress), nothing waits.
        let held = r.lock();
        std::thread::scope(|s| {
            let handed_back = s
                .spawn(|| {
                    let back = r.try_apply_quick(Update::Upsert(apps[73].clone(), spec(6)));
                    matches!(back, Err(Update::Upsert(ref id, _)) if *id == apps[73])
                })
                .join()
                .unwrap();
            assert!(
                handed_back,
                "a busy writer makes the update slow, not a wait"
            );
        });
        drop(held);
        assert_eq!(port_of(&r, "app73.caas.local"), Some(1));
        // What was handed back, applied the slow way, lands as usual.
        r.apply(Update::Upsert(apps[71].clone(), two));
        assert!(r.load().lookup("v2.app71.caas.local").is_some());
    }

    #[test]
    fn a_table_from_a_one_app_change_is_freed_by_the_writer() {
        let (r, apps) = hundred_fifty_apps();
        let whole = Arc::downgrade(&r.current());
        let mut tables = vec![whole];
        // The table in place and the one before it live; each older one, the whole build
        // included (every later table shares its host map), is gone as soon as its
        // successor's successor is installed: freed on this thread, not the reclaimer's.
        for (i, app) in apps.iter().take(4).enumerate() {
            r.try_apply_quick(Update::Upsert(app.clone(), spec(10 + i as u16)))
                .expect("quick");
            tables.push(Arc::downgrade(&r.current()));
            let live: Vec<bool> = tables.iter().map(|t| t.strong_count() > 0).collect();
            let kept = live.len().min(2);
            let mut expected = vec![false; live.len() - kept];
            expected.extend([true; 2].iter().take(kept));
            assert_eq!(live, expected, "after update {i}");
        }

        // A whole build's predecessor shares nothing with anything live once it retires:
        // the reclaimer frees it.
        r.apply(Update::Upsert(AppId::new("fresh").unwrap(), spec(20)));
        r.apply(Update::Upsert(AppId::new("fresh2").unwrap(), spec(21)));
        let last_quick = &tables[4];
        let deadline = Instant::now() + Duration::from_secs(10);
        while last_quick.strong_count() > 0 {
            assert!(
                Instant::now() < deadline,
                "the retired table was never freed"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn updates_swap_tables_and_old_readers_keep_theirs() {
        let r = Router::new(vec![Domain::new("caas.local").unwrap()]);
        let a = AppId::new("a").unwrap();
        r.apply(Update::Upsert(a.clone(), spec(1)));
        let old = r.current();
        let rep = r.apply(Update::Upsert(AppId::new("b").unwrap(), spec(2)));
        assert_eq!(rep.apps, 2);
        assert!(old.lookup("b.caas.local").is_none(), "old table unchanged");
        assert!(r.load().lookup("b.caas.local").is_some());
        r.apply(Update::Remove(a));
        assert!(r.load().lookup("a.caas.local").is_none());
        assert_eq!(r.snapshot().apps.len(), 1);
        r.apply(Update::Reset(Snapshot::default()));
        assert_eq!(r.load().apps().len(), 0);
        r.set_domains(vec![Domain::new("other.test").unwrap()]);
        r.apply(Update::Upsert(AppId::new("c").unwrap(), spec(3)));
        assert!(r.load().lookup("c.other.test").is_some());
        assert!(r.load().lookup("c.caas.local").is_none());
    }
}
