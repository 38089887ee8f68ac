//! The immutable route table: host name → app → version → endpoint pool.
//!
//! A table is built from a [`Snapshot`] and never changes afterwards; the [`Router`] swaps whole
//! tables. Lookup by `Host` is one hash-map probe on the lower-cased name without its port:
//! `{appId}.{domain}` routes to the app's default (or weighted) version,
//! `{version}.{appId}.{domain}` to that version, a custom domain to its app.
//!
//! [`Router`]: crate::Router

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::balance::{EndpointState, Pool, smooth_sequence};
use crate::id::{AppId, Domain, Version};
use crate::limit::{ClientLimiter, Gcra, TokenBucket};
use crate::policy::{BlacklistMatcher, Blocked, RateLimit};
use crate::spec::{AppSpec, BalancerKind, Snapshot};
use crate::stats::Counters;

/// Where a host name leads.
#[derive(Debug, Clone, Copy)]
enum Target {
    App(u32),
    Version(u32, u32),
}

/// Per-app state that outlives table rebuilds: counters and requests in flight.
#[derive(Debug, Default)]
pub struct AppState {
    /// Traffic counters of the app.
    pub stats: Counters,
    /// Requests of the app between admission and the end of their response.
    in_flight: AtomicUsize,
}

impl AppState {
    /// Requests of the app in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }
}

/// A request counted in its app's in-flight total until this drops (the end of its
/// response).
#[derive(Debug)]
pub struct AppInFlight(Arc<AppState>);

impl AppInFlight {
    /// The app's state (its counters).
    #[inline]
    pub fn state(&self) -> &Arc<AppState> {
        &self.0
    }
}

impl Drop for AppInFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Why an app did not admit a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over a rate limit; the next token comes after this long.
    RateLimited(Duration),
    /// `max_in_flight` requests are already in flight.
    Overloaded,
}

/// Which pool `{appId}.{domain}` uses.
#[derive(Debug)]
enum DefaultRoute {
    /// One version.
    Version(u32),
    /// A weighted split across versions (sequence of version indices).
    Split {
        sequence: Box<[u32]>,
        cursor: Arc<AtomicUsize>,
    },
    /// All endpoints of all versions (no default version and no weights).
    All(Pool),
    /// The default version names a version with no endpoints.
    Missing,
}

/// One version of an app in the table.
#[derive(Debug)]
pub struct VersionRoute {
    id: Version,
    pool: Pool,
}

impl VersionRoute {
    /// The version id.
    pub fn id(&self) -> &Version {
        &self.id
    }

    /// The version's endpoints and balancer.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// One app in the table.
#[derive(Debug)]
pub struct AppRoute {
    id: AppId,
    versions: Box<[VersionRoute]>,
    default: DefaultRoute,
    blacklist: BlacklistMatcher,
    limiter: Option<Arc<TokenBucket>>,
    client_limiter: Option<Arc<ClientLimiter>>,
    max_in_flight: Option<usize>,
    state: Arc<AppState>,
    domains: Box<[Domain]>,
    default_version: Option<Version>,
    weights: Box<[(Version, u32)]>,
    balancer: BalancerKind,
    https_redirect: bool,
}

impl AppRoute {
    /// The app id.
    pub fn id(&self) -> &AppId {
        &self.id
    }

    /// The versions that have endpoints, sorted by id.
    pub fn versions(&self) -> &[VersionRoute] {
        &self.versions
    }

    /// The app's custom domains.
    pub fn domains(&self) -> &[Domain] {
        &self.domains
    }

    /// The configured default version (it may have no endpoints).
    pub fn default_version(&self) -> Option<&Version> {
        self.default_version.as_ref()
    }

    /// The configured version weights.
    pub fn weights(&self) -> &[(Version, u32)] {
        &self.weights
    }

    /// The balancer of the app's pools.
    pub fn balancer(&self) -> BalancerKind {
        self.balancer
    }

    /// Whether plain-HTTP requests are redirected to HTTPS.
    #[inline]
    pub fn https_redirect(&self) -> bool {
        self.https_redirect
    }

    /// Counters and other state that survives rebuilds.
    #[inline]
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The rule of the app's blacklist a request matches, if any.
    #[inline]
    pub fn blocked(
        &self,
        client: IpAddr,
        path: &str,
        user_agent: Option<&[u8]>,
    ) -> Option<Blocked> {
        self.blacklist.check(client, path, user_agent)
    }

    /// Admits a request from `client`: a place under `max_in_flight`, held until the
    /// returned guard drops, then a token from the app's rate limit and from the client's
    /// (an overloaded app spends no tokens).
    #[inline]
    pub fn admit(&self, client: IpAddr) -> Result<AppInFlight, Refused> {
        let before = self.state.in_flight.fetch_add(1, Relaxed);
        let slot = AppInFlight(Arc::clone(&self.state));
        if self.max_in_flight.is_some_and(|max| before >= max) {
            return Err(Refused::Overloaded);
        }
        if let Some(l) = &self.limiter {
            l.try_acquire().map_err(Refused::RateLimited)?;
        }
        if let Some(l) = &self.client_limiter {
            l.try_acquire(client).map_err(Refused::RateLimited)?;
        }
        Ok(slot)
    }

    /// The pool `{appId}.{domain}` uses now (one step of a weighted split), if any.
    #[inline]
    pub fn default_pool(&self) -> Option<&Pool> {
        match &self.default {
            DefaultRoute::Version(i) => Some(&self.versions[*i as usize].pool),
            DefaultRoute::Split { sequence, cursor } => {
                let tick = cursor.fetch_add(1, Relaxed);
                let i = sequence[tick % sequence.len()];
                Some(&self.versions[i as usize].pool)
            }
            DefaultRoute::All(pool) => Some(pool),
            DefaultRoute::Missing => None,
        }
    }
}

/// The result of a host lookup: an app, and the version the host pinned, if any.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    app: &'a AppRoute,
    version: Option<&'a VersionRoute>,
}

impl<'a> Route<'a> {
    /// The app the host belongs to.
    #[inline]
    pub fn app(&self) -> &'a AppRoute {
        self.app
    }

    /// The version named in the host (`{version}.{appId}.{domain}`), if any.
    #[inline]
    pub fn pinned_version(&self) -> Option<&'a VersionRoute> {
        self.version
    }

    /// The pool to pick from: the pinned version's, else the app's default.
    #[inline]
    pub fn pool(&self) -> Option<&'a Pool> {
        match self.version {
            Some(v) => Some(&v.pool),
            None => self.app.default_pool(),
        }
    }
}

/// Something odd in a snapshot that the table worked around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildWarning {
    /// Two apps (or an app and a generated name) claim the same host; the first keeps it.
    HostConflict {
        /// The contested host.
        host: String,
        /// The app that keeps it.
        kept: AppId,
        /// The app that lost it.
        dropped: AppId,
    },
    /// `default_version` names a version with no endpoints.
    MissingDefault {
        /// The app.
        app: AppId,
        /// The version it names.
        version: Version,
    },
}

impl fmt::Display for BuildWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HostConflict {
                host,
                kept,
                dropped,
            } => write!(
                f,
                "host {host:?} is claimed by apps {kept} and {dropped}; {kept} keeps it"
            ),
            Self::MissingDefault { app, version } => write!(
                f,
                "app {app}: default version {version} has no endpoints; requests get 503"
            ),
        }
    }
}

/// The immutable routing table.
///
/// Its parts are shared between generations: a change to one app that keeps its host names
/// ([`RouteTable::with_app`]) makes a new table that shares the host map, the id index and
/// every other app with the previous one, in microseconds at any size.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// The gateway-wide blacklist, checked before any app's.
    blacklist: Arc<BlacklistMatcher>,
    hosts: Arc<FxHashMap<Box<str>, Target>>,
    by_id: Arc<FxHashMap<AppId, u32>>,
    apps: AppList,
    domains: Arc<[Domain]>,
    generation: u64,
    /// Some app redirects plain HTTP to HTTPS (plain requests then look their app up for it).
    any_https_redirect: bool,
}

/// Apps per chunk of a table's app list.
const APP_CHUNK: usize = 64;

/// A table's apps, sorted by id, in shared chunks of [`APP_CHUNK`]. A one-app change copies
/// the chunk list and one chunk (about 220 pointers at 10,000 apps) where a flat list would
/// copy every app's pointer and count a reference to each: 10,000 atomic increments on as
/// many cache lines, and as many decrements when the old table goes, which took over a
/// millisecond per update in a gateway under load. A lookup pays one more load, from a
/// chunk list small enough to stay in cache (2.5 KiB at 10,000 apps).
#[derive(Debug, Default, Clone)]
struct AppList {
    chunks: Box<[Arc<[Arc<AppRoute>]>]>,
    len: usize,
}

impl AppList {
    fn new(apps: Vec<Arc<AppRoute>>) -> Self {
        let len = apps.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(APP_CHUNK));
        let mut apps = apps.into_iter();
        while apps.len() > 0 {
            chunks.push(apps.by_ref().take(APP_CHUNK).collect());
        }
        Self {
            chunks: chunks.into_boxed_slice(),
            len,
        }
    }

    #[inline]
    fn get(&self, index: u32) -> &Arc<AppRoute> {
        let i = index as usize;
        &self.chunks[i / APP_CHUNK][i % APP_CHUNK]
    }

    /// The list with app `index` replaced; every other chunk is shared.
    fn with(&self, index: u32, app: Arc<AppRoute>) -> Self {
        let i = index as usize;
        let mut chunks = self.chunks.clone();
        let mut chunk = chunks[i / APP_CHUNK].to_vec();
        chunk[i % APP_CHUNK] = app;
        chunks[i / APP_CHUNK] = chunk.into();
        Self {
            chunks,
            len: self.len,
        }
    }

    fn iter(&self) -> Apps<'_> {
        Apps {
            chunks: self.chunks.iter(),
            chunk: [].iter(),
            left: self.len,
        }
    }
}

/// The apps of a table, sorted by id ([`RouteTable::apps`]).
#[derive(Debug, Clone)]
pub struct Apps<'a> {
    chunks: std::slice::Iter<'a, Arc<[Arc<AppRoute>]>>,
    chunk: std::slice::Iter<'a, Arc<AppRoute>>,
    left: usize,
}

impl<'a> Iterator for Apps<'a> {
    type Item = &'a Arc<AppRoute>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(app) = self.chunk.next() {
                self.left -= 1;
                return Some(app);
            }
            self.chunk = self.chunks.next()?.iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Apps<'_> {}

/// Longest host name (RFC 1035) plus a trailing dot.
const MAX_HOST: usize = 254;

/// `host[:port]` → `host`, keeping IPv6 literals (`[::1]:80` → `[::1]`) whole.
#[inline]
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) => &host[..i],
        None => host,
    }
}

impl RouteTable {
    /// Builds a table. State (endpoint in-flight counts and ejection, balancer cursors, app
    /// counters) is carried over from `previous` for everything that remains.
    pub fn build(
        snapshot: &Snapshot,
        domains: &[Domain],
        previous: Option<&RouteTable>,
        generation: u64,
    ) -> (RouteTable, Vec<BuildWarning>) {
        let mut warnings = Vec::new();
        let mut apps = Vec::with_capacity(snapshot.apps.len());
        let mut by_id = FxHashMap::default();
        by_id.reserve(snapshot.apps.len());
        for (id, spec) in &snapshot.apps {
            let prev = previous.and_then(|t| t.app(id));
            let route = build_app(id, spec, prev, &mut warnings);
            by_id.insert(id.clone(), apps.len() as u32);
            apps.push(Arc::new(route));
        }

        let mut hosts: FxHashMap<Box<str>, Target> = FxHashMap::default();
        let per_app: usize = apps.iter().map(|a| 1 + a.versions.len()).sum();
        hosts.reserve(per_app * domains.len().max(1));
        let mut claim =
            |host: String, target: Target, app: &AppId, apps: &[Arc<AppRoute>]| match hosts
                .entry(host.into_boxed_str())
            {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(target);
                }
                std::collections::hash_map::Entry::Occupied(o) => {
                    let kept = match o.get() {
                        Target::App(i) | Target::Version(i, _) => apps[*i as usize].id.clone(),
                    };
                    warnings.push(BuildWarning::HostConflict {
                        host: o.key().to_string(),
                        kept,
                        dropped: app.clone(),
                    });
                }
            };
        // Generated names first: they are authoritative over custom domains.
        for (ai, app) in apps.iter().enumerate() {
            let ai = ai as u32;
            for d in domains {
                claim(format!("{}.{d}", app.id), Target::App(ai), &app.id, &apps);
                for (vi, v) in app.versions.iter().enumerate() {
                    let t = Target::Version(ai, vi as u32);
                    claim(format!("{}.{}.{d}", v.id, app.id), t, &app.id, &apps);
                }
            }
        }
        for (ai, app) in apps.iter().enumerate() {
            for d in &app.domains {
                claim(d.to_string(), Target::App(ai as u32), &app.id, &apps);
            }
        }
        let any_https_redirect = apps.iter().any(|a| a.https_redirect);
        let table = RouteTable {
            any_https_redirect,
            blacklist: Arc::new(BlacklistMatcher::new(&snapshot.blacklist)),
            hosts: Arc::new(hosts),
            by_id: Arc::new(by_id),
            apps: AppList::new(apps),
            domains: domains.into(),
            generation,
        };
        (table, warnings)
    }

    /// The table with the existing app `id` rebuilt from `spec`, everything else shared with
    /// this one, when the app keeps its host names (the same versions with endpoints, in the
    /// same order, and the same custom domains): what a registration, a deregistration or a
    /// weight change does. `None` when the app is new or its names change; then
    /// [`RouteTable::build`] the whole table. The result is what `build` would give.
    pub fn with_app(
        &self,
        id: &AppId,
        spec: &AppSpec,
        generation: u64,
    ) -> Option<(RouteTable, Vec<BuildWarning>)> {
        let &index = self.by_id.get(id)?;
        let prev = self.apps.get(index);
        let mut warnings = Vec::new();
        let route = build_app(id, spec, Some(prev), &mut warnings);
        let same_names = route.domains == prev.domains
            && route.versions.len() == prev.versions.len()
            && route
                .versions
                .iter()
                .zip(prev.versions.iter())
                .all(|(a, b)| a.id == b.id);
        if !same_names {
            return None;
        }
        let redirect_changed = route.https_redirect != prev.https_redirect;
        let apps = self.apps.with(index, Arc::new(route));
        let any_https_redirect = if redirect_changed {
            apps.iter().any(|a| a.https_redirect)
        } else {
            self.any_https_redirect
        };
        let table = RouteTable {
            blacklist: Arc::clone(&self.blacklist),
            hosts: Arc::clone(&self.hosts),
            by_id: Arc::clone(&self.by_id),
            apps,
            domains: Arc::clone(&self.domains),
            generation,
            any_https_redirect,
        };
        Some((table, warnings))
    }

    /// Whether another table shares this one's host map: then this one came from, or was
    /// followed by, a one-app change ([`RouteTable::with_app`]) and shares all its apps but
    /// one with that table, so freeing it frees little.
    pub(crate) fn shares_routes(&self) -> bool {
        Arc::strong_count(&self.hosts) > 1
    }

    /// Finds the route for a `Host` header value (case-insensitive, port ignored).
    #[inline]
    pub fn lookup(&self, host: &str) -> Option<Route<'_>> {
        let name = strip_port(host);
        let name = name.strip_suffix('.').unwrap_or(name);
        let target = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            if name.len() > MAX_HOST {
                return None;
            }
            let mut buf = [0u8; MAX_HOST];
            let buf = &mut buf[..name.len()];
            buf.copy_from_slice(name.as_bytes());
            buf.make_ascii_lowercase();
            *self.hosts.get(std::str::from_utf8(buf).ok()?)?
        } else {
            *self.hosts.get(name)?
        };
        Some(match target {
            Target::App(a) => Route {
                app: self.apps.get(a),
                version: None,
            },
            Target::Version(a, v) => {
                let app = self.apps.get(a);
                Route {
                    app,
                    version: Some(&app.versions[v as usize]),
                }
            }
        })
    }

    /// The rule of the gateway-wide blacklist a request matches, if any.
    #[inline]
    pub fn blocked(
        &self,
        client: IpAddr,
        path: &str,
        user_agent: Option<&[u8]>,
    ) -> Option<Blocked> {
        self.blacklist.check(client, path, user_agent)
    }

    /// An app by id.
    pub fn app(&self, id: &AppId) -> Option<&AppRoute> {
        self.by_id.get(id).map(|&i| &**self.apps.get(i))
    }

    /// All apps, sorted by id.
    pub fn apps(&self) -> Apps<'_> {
        self.apps.iter()
    }

    /// The gateway domains the table was built with.
    pub fn domains(&self) -> &[Domain] {
        &self.domains
    }

    /// Number of host names that route somewhere.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Counts up by one with every rebuild.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether any app redirects plain HTTP to HTTPS.
    #[inline]
    pub fn any_https_redirect(&self) -> bool {
        self.any_https_redirect
    }
}

fn build_app(
    id: &AppId,
    spec: &AppSpec,
    prev: Option<&AppRoute>,
    warnings: &mut Vec<BuildWarning>,
) -> AppRoute {
    let prev_version = |v: &Version| prev.and_then(|p| p.versions.iter().find(|pv| &pv.id == v));
    let mut versions = Vec::with_capacity(spec.versions.len());
    for (vid, vspec) in &spec.versions {
        if vspec.endpoints.is_empty() {
            continue;
        }
        let pv = prev_version(vid);
        let old: &[Arc<EndpointState>] = pv.map_or(&[], |p| p.pool.endpoints());
        // Small versions (the common case) are matched by scanning; large ones through maps,
        // so a version with thousands of instances does not rebuild in quadratic time.
        let large = vspec.endpoints.len() > 16;
        let by_addr: FxHashMap<SocketAddr, &Arc<EndpointState>> = if large {
            old.iter().map(|e| (e.endpoint().addr, e)).collect()
        } else {
            FxHashMap::default()
        };
        let mut seen: rustc_hash::FxHashSet<SocketAddr> = rustc_hash::FxHashSet::default();
        let mut eps: Vec<Arc<EndpointState>> = Vec::with_capacity(vspec.endpoints.len());
        for (i, ep) in vspec.endpoints.iter().enumerate() {
            // The same address twice would double its share.
            let dup = if large {
                !seen.insert(ep.addr)
            } else {
                eps.iter().any(|e| e.endpoint().addr == ep.addr)
            };
            if dup {
                continue;
            }
            // Endpoints usually keep their order: try the same position before searching.
            let same = |e: &&Arc<EndpointState>| e.endpoint() == ep;
            let found = match old.get(i).filter(same) {
                Some(e) => Some(e),
                None if large => by_addr.get(&ep.addr).copied().filter(same),
                None => old.iter().find(same),
            };
            eps.push(match found {
                Some(prev) => Arc::clone(prev),
                None => Arc::new(EndpointState::new(*ep)),
            });
        }
        let cursor = pv.map(|p| Arc::clone(p.pool.cursor())).unwrap_or_default();
        versions.push(VersionRoute {
            id: vid.clone(),
            pool: Pool::new(spec.balancer, eps, cursor),
        });
    }

    let index_of = |v: &Version| versions.iter().position(|r| &r.id == v);
    let split: BTreeMap<usize, u32> = spec
        .weights
        .iter()
        .filter(|(_, w)| **w > 0)
        .filter_map(|(v, w)| index_of(v).map(|i| (i, *w)))
        .collect();
    let default = if !split.is_empty() {
        let idx: Vec<usize> = split.keys().copied().collect();
        let weights: Vec<u32> = split.values().copied().collect();
        let sequence: Box<[u32]> = smooth_sequence(&weights)
            .iter()
            .map(|&k| idx[k as usize] as u32)
            .collect();
        let cursor = match prev.map(|p| &p.default) {
            Some(DefaultRoute::Split { cursor, .. }) => Arc::clone(cursor),
            _ => Arc::default(),
        };
        DefaultRoute::Split { sequence, cursor }
    } else if let Some(dv) = &spec.default_version {
        match index_of(dv) {
            Some(i) => DefaultRoute::Version(i as u32),
            None => {
                warnings.push(BuildWarning::MissingDefault {
                    app: id.clone(),
                    version: dv.clone(),
                });
                DefaultRoute::Missing
            }
        }
    } else {
        let all: Vec<Arc<EndpointState>> = versions
            .iter()
            .flat_map(|v| v.pool.endpoints().iter().cloned())
            .collect();
        let cursor = match prev.map(|p| &p.default) {
            Some(DefaultRoute::All(p)) => Arc::clone(p.cursor()),
            _ => Arc::default(),
        };
        DefaultRoute::All(Pool::new(spec.balancer, all, cursor))
    };

    let (limiter, client_limiter) = limiters(spec.rate_limit.as_ref(), prev);
    AppRoute {
        id: id.clone(),
        versions: versions.into_boxed_slice(),
        default,
        blacklist: BlacklistMatcher::new(&spec.blacklist),
        limiter,
        client_limiter,
        max_in_flight: spec.max_in_flight.map(|m| m as usize),
        state: prev.map(|p| Arc::clone(&p.state)).unwrap_or_default(),
        domains: spec.domains.clone().into_boxed_slice(),
        default_version: spec.default_version.clone(),
        weights: spec.weights.iter().map(|(v, w)| (v.clone(), *w)).collect(),
        balancer: spec.balancer,
        https_redirect: spec.https_redirect,
    }
}

/// The app's limiters, kept from the previous table (with their state) when unchanged.
fn limiters(
    rl: Option<&RateLimit>,
    prev: Option<&AppRoute>,
) -> (Option<Arc<TokenBucket>>, Option<Arc<ClientLimiter>>) {
    let Some(rl) = rl else {
        return (None, None);
    };
    let app = rl.rps.map(|rps| {
        let gcra = Gcra::new(rps, rl.burst);
        match prev.and_then(|p| p.limiter.as_ref()) {
            Some(old) if old.gcra() == gcra => Arc::clone(old),
            _ => Arc::new(TokenBucket::new(gcra)),
        }
    });
    let client = rl.per_client_rps.map(|rps| {
        let config = (
            Gcra::new(rps, rl.per_client_burst),
            rl.per_client_tracked.unwrap_or(RateLimit::DEFAULT_TRACKED),
        );
        match prev.and_then(|p| p.client_limiter.as_ref()) {
            Some(old) if old.config() == config => Arc::clone(old),
            _ => Arc::new(ClientLimiter::new(config.0, config.1)),
        }
    });
    (app, client)
}

impl BalancerKind {
    /// The name used in configs (`round_robin`, `weighted`, `p2c`).
    pub fn as_str(self) -> &'static str {
        match self {
            BalancerKind::RoundRobin => "round_robin",
            BalancerKind::Weighted => "weighted",
            BalancerKind::P2c => "p2c",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Endpoint, VersionSpec};

    pub(crate) fn app(versions: &[(&str, &[u16])]) -> AppSpec {
        AppSpec {
            versions: versions
                .iter()
                .map(|(v, ports)| {
                    let endpoints = ports
                        .iter()
                        .map(|p| Endpoint::new(SocketAddr::from(([127, 0, 0, 1], *p))))
                        .collect();
                    (Version::new(v).unwrap(), VersionSpec { endpoints })
                })
                .collect(),
            ..AppSpec::default()
        }
    }

    fn snapshot(apps: Vec<(&str, AppSpec)>) -> Snapshot {
        Snapshot {
            apps: apps
                .into_iter()
                .map(|(id, s)| (AppId::new(id).unwrap(), s))
                .collect(),
            ..Snapshot::default()
        }
    }

    fn domains() -> Vec<Domain> {
        vec![
            Domain::new("caas.local").unwrap(),
            Domain::new("apps.example").unwrap(),
        ]
    }

    fn port(r: Option<Route<'_>>) -> u16 {
        r.unwrap()
            .pool()
            .unwrap()
            .pick()
            .unwrap()
            .endpoint()
            .addr
            .port()
    }

    #[test]
    fn host_forms_route_as_documented() {
        let mut hello = app(&[("v1", &[9001]), ("v2", &[9002])]);
        hello.default_version = Some(Version::new("v1").unwrap());
        hello.domains = vec![Domain::new("www.hello.test").unwrap()];
        let (t, w) = RouteTable::build(&snapshot(vec![("hello", hello)]), &domains(), None, 1);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(port(t.lookup("hello.caas.local")), 9001);
        assert_eq!(port(t.lookup("HeLLo.CAAS.local:8080")), 9001);
        assert_eq!(port(t.lookup("hello.apps.example.")), 9001);
        assert_eq!(port(t.lookup("v2.hello.caas.local")), 9002);
        assert_eq!(port(t.lookup("www.hello.test")), 9001);
        assert_eq!(port(t.lookup("WWW.HELLO.TEST:443")), 9001);
        assert!(t.lookup("nope.caas.local").is_none());
        assert!(t.lookup("v3.hello.caas.local").is_none());
        assert!(t.lookup("caas.local").is_none());
        assert!(t.lookup("").is_none());
        assert!(t.lookup(&"A".repeat(5000)).is_none());
        assert!(t.lookup("[::1]:80").is_none());
    }

    #[test]
    fn https_redirect_follows_the_spec() {
        let plain = app(&[("v1", &[1])]);
        let (t, _) = RouteTable::build(&snapshot(vec![("a", plain.clone())]), &domains(), None, 1);
        assert!(!t.any_https_redirect());
        assert!(!t.lookup("a.caas.local").unwrap().app().https_redirect());
        let mut secure = plain.clone();
        secure.https_redirect = true;
        let (t, _) = RouteTable::build(
            &snapshot(vec![("a", plain), ("b", secure)]),
            &domains(),
            None,
            1,
        );
        assert!(t.any_https_redirect());
        assert!(!t.lookup("a.caas.local").unwrap().app().https_redirect());
        assert!(t.lookup("b.caas.local").unwrap().app().https_redirect());
    }

    #[test]
    fn weighted_split_lands_within_two_percent() {
        let mut hello = app(&[("v1", &[9001, 9002]), ("v2", &[9003])]);
        hello.weights = [("v1", 90), ("v2", 10)]
            .into_iter()
            .map(|(v, w)| (Version::new(v).unwrap(), w))
            .collect();
        let (t, _) = RouteTable::build(&snapshot(vec![("hello", hello)]), &domains(), None, 1);
        let v2 = (0..10_000)
            .filter(|_| port(t.lookup("hello.caas.local")) == 9003)
            .count();
        assert!((800..=1200).contains(&v2), "v2 got {v2} of 10000");
    }

    #[test]
    fn no_default_balances_over_all_versions() {
        let (t, _) = RouteTable::build(
            &snapshot(vec![("hello", app(&[("v1", &[1, 2]), ("v2", &[3])]))]),
            &domains(),
            None,
            1,
        );
        let mut seen: Vec<u16> = (0..3).map(|_| port(t.lookup("hello.caas.local"))).collect();
        seen.sort();
        assert_eq!(seen, [1, 2, 3]);
    }

    #[test]
    fn missing_default_version_is_a_warning_and_no_pool() {
        let mut a = app(&[("v1", &[1])]);
        a.default_version = Some(Version::new("v9").unwrap());
        let (t, w) = RouteTable::build(&snapshot(vec![("a", a)]), &domains(), None, 1);
        assert!(matches!(w[0], BuildWarning::MissingDefault { .. }));
        assert!(t.lookup("a.caas.local").unwrap().pool().is_none());
    }

    #[test]
    fn custom_domain_conflicts_keep_the_first_claim() {
        let mut a = app(&[("v1", &[1])]);
        a.domains = vec![
            Domain::new("shared.test").unwrap(),
            Domain::new("b.caas.local").unwrap(),
        ];
        let mut b = app(&[("v1", &[2])]);
        b.domains = vec![Domain::new("shared.test").unwrap()];
        let (t, w) = RouteTable::build(&snapshot(vec![("a", a), ("b", b)]), &domains(), None, 1);
        assert_eq!(port(t.lookup("shared.test")), 1);
        assert_eq!(port(t.lookup("b.caas.local")), 2, "generated names win");
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn large_versions_keep_state_and_drop_duplicates() {
        let ports: Vec<u16> = (1..=5000).collect();
        let mut dup = ports.clone();
        dup.push(7);
        let s1 = snapshot(vec![("a", app(&[("v1", &ports)]))]);
        let (t1, _) = RouteTable::build(&s1, &domains(), None, 1);
        let first = Arc::clone(
            &t1.app(&AppId::new("a").unwrap()).unwrap().versions()[0]
                .pool
                .endpoints()[6],
        );
        let mut reversed = dup.clone();
        reversed.reverse();
        let s2 = snapshot(vec![("a", app(&[("v1", &reversed)]))]);
        let (t2, _) = RouteTable::build(&s2, &domains(), Some(&t1), 2);
        let eps = t2.app(&AppId::new("a").unwrap()).unwrap().versions()[0]
            .pool
            .endpoints();
        assert_eq!(eps.len(), 5000, "duplicate address dropped");
        let again = eps.iter().find(|e| e.endpoint().addr.port() == 7).unwrap();
        assert!(
            Arc::ptr_eq(again, &first),
            "state carried over after reordering"
        );
    }

    #[test]
    fn endpoint_state_survives_rebuilds_for_endpoints_that_remain() {
        let s1 = snapshot(vec![("a", app(&[("v1", &[1, 2])]))]);
        let (t1, _) = RouteTable::build(&s1, &domains(), None, 1);
        let ep1 = Arc::clone(
            &t1.app(&AppId::new("a").unwrap()).unwrap().versions()[0]
                .pool
                .endpoints()[0],
        );
        let guard = ep1.start_request();
        ep1.eject_for(std::time::Duration::from_secs(30));
        let s2 = snapshot(vec![("a", app(&[("v1", &[1, 3])]))]);
        let (t2, _) = RouteTable::build(&s2, &domains(), Some(&t1), 2);
        let eps = t2.app(&AppId::new("a").unwrap()).unwrap().versions()[0]
            .pool
            .endpoints();
        assert!(Arc::ptr_eq(&eps[0], &ep1));
        assert_eq!(eps[0].in_flight(), 1);
        assert!(!eps[0].is_available());
        assert_eq!(eps[1].in_flight(), 0);
        drop(guard);
        assert_eq!(eps[0].in_flight(), 0);
    }
}
