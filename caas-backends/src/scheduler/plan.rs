//! The plan for one deployment: which instances to add where, which to remove and why. A
//! pure function of the [`Snapshot`] (with liveness already set from the grace period).
//!
//! Replicated (`replicas: N`), with *normal* instances those on hosts that are neither lost
//! nor draining (a host whose `alive` node is gone for less than the grace period still
//! counts as normal; so do instances on a host whose node is unreadable, which are never
//! removed):
//!
//! - fewer than N normal: place the missing ones (all or none, see [`place`]); instances on
//!   lost hosts are deleted in the same commit as their replacements are created, and kept
//!   while no replacement can be placed;
//! - more than N normal (scale-down): remove the surplus from the hosts where this version
//!   is most concentrated first (ties: the smaller host id; on a host, unhealthy instances
//!   first, then the highest id), plus every instance on a draining or lost host;
//! - an instance on a draining host is removed once enough replacements are healthy:
//!   `healthy normal + remaining draining >= N` must still hold after the removal.
//!
//! Global (`global: true`): one instance on every host that passes the filters; an
//! instance on a host that no longer does (draining, labels changed, affinity gone) is
//! removed, as are extra instances on one host and instances on lost hosts.
//!
//! New instance ids are `{appId}-{version}-{n}` with `n` from the status node's counter
//! (shortened with a hash when longer than 63 characters), never an id in use.

use std::collections::{BTreeMap, HashSet};

use caas_core::{AppId, InstanceId, Version};

use super::deployment::Deployment;
use super::placement::{Request, Unschedulable, global_check, place};
use super::snapshot::{Key, Liveness, Snapshot};

/// Why an instance is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// More instances than wanted.
    ScaleDown,
    /// Its host has been gone past the grace period (replaced elsewhere).
    Lost,
    /// Its host is draining and enough replacements are healthy.
    Drained,
    /// Global deployment: its host no longer passes the filters.
    NotEligible,
    /// Global deployment: a second instance on one host.
    Duplicate,
    /// Its deployment node is gone.
    Orphan,
}

/// One instance to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// Its host.
    pub host: String,
    /// The instance.
    pub id: InstanceId,
    /// Why.
    pub why: Why,
}

/// What to change for one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// New instances: (host, id).
    pub add: Vec<(String, InstanceId)>,
    /// Instances to delete.
    pub remove: Vec<Removal>,
    /// The id counter after the new instances.
    pub next_instance: u64,
    /// Instances wanted (replicas, or eligible hosts of a global deployment).
    pub desired: u64,
    /// Set when missing instances cannot be placed.
    pub unschedulable: Option<Unschedulable>,
    /// Global deployments: per filter, the hosts it keeps out.
    pub rejected: BTreeMap<String, Vec<String>>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_noop(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// The plan for the deployment `app`/`version` (see the module docs). `next_instance` is the
/// counter from its status node (0 without one).
pub fn plan(
    snap: &Snapshot,
    app: &AppId,
    version: &Version,
    spec: &Deployment,
    next_instance: u64,
) -> Plan {
    let mut p = Plan {
        add: Vec::new(),
        remove: Vec::new(),
        next_instance,
        desired: 0,
        unschedulable: None,
        rejected: BTreeMap::new(),
    };
    let req = Request::new(app, version, spec);
    let hosts = if spec.global {
        plan_global(snap, &req, &mut p)
    } else {
        plan_replicas(snap, &req, spec.replicas.unwrap_or(0), &mut p)
    };
    // An id must not name an instance of this deployment anywhere (registry paths and
    // container names are per app version) nor anything on its target host (assignment
    // paths are per host).
    let taken: HashSet<&InstanceId> = snap
        .hosts
        .values()
        .flat_map(|h| h.instances.iter())
        .chain(snap.bad_hosts.values().flat_map(|b| b.instances.iter()))
        .filter(|(_, a)| &a.app == app && &a.version == version)
        .map(|(id, _)| id)
        .collect();
    let mut added = Vec::with_capacity(hosts.len());
    let mut n = next_instance;
    for host in hosts {
        let on_host = snap.hosts.get(&host).map(|h| &h.instances);
        let id = loop {
            let candidate = instance_id(app, version, n);
            n += 1;
            if let Some(id) = candidate
                && !taken.contains(&id)
                && !on_host.is_some_and(|i| i.contains_key(&id))
            {
                break id;
            }
        };
        added.push((host, id));
    }
    // Within the plan, ids differ by their counter.
    p.add = added;
    p.next_instance = n;
    p
}

struct Inst<'a> {
    host: &'a str,
    id: &'a InstanceId,
    healthy: bool,
}

fn plan_replicas(snap: &Snapshot, req: &Request<'_>, want: u32, p: &mut Plan) -> Vec<String> {
    let want = want as usize;
    p.desired = want as u64;
    let registered = snap
        .deployments
        .get(&(req.app.clone(), req.version.clone()))
        .map(|d| &d.registered);
    let (mut normal, mut draining, mut lost) = (Vec::new(), Vec::new(), Vec::new());
    for h in snap.hosts.values() {
        for (id, a) in &h.instances {
            if &a.app != req.app || &a.version != req.version {
                continue;
            }
            let inst = Inst {
                host: &h.id,
                id,
                healthy: h.liveness == Liveness::Alive
                    && registered.is_some_and(|r| r.contains_key(id)),
            };
            match (h.liveness, h.info.draining) {
                (Liveness::Lost, _) => lost.push(inst),
                (_, true) => draining.push(inst),
                _ => normal.push(inst),
            }
        }
    }
    let remove = |p: &mut Plan, list: &[Inst<'_>], why| {
        for i in list {
            p.remove.push(Removal {
                host: i.host.to_owned(),
                id: i.id.clone(),
                why,
            });
        }
    };
    // Instances on unreadable hosts count, but cannot be removed (their node cannot be
    // rewritten).
    let frozen = snap
        .bad_hosts
        .values()
        .flat_map(|b| b.instances.values())
        .filter(|a| &a.app == req.app && &a.version == req.version)
        .count();
    let excess = (normal.len() + frozen).saturating_sub(want);
    let surplus = scale_down(&mut normal, excess);
    remove(p, &surplus, Why::ScaleDown);
    let running = normal.len() + frozen;
    let hosts = if running >= want {
        remove(p, &lost, Why::Lost);
        Vec::new()
    } else {
        match place(snap, req, want - running) {
            Ok(hosts) => {
                remove(p, &lost, Why::Lost);
                hosts
            }
            Err(u) => {
                p.unschedulable = Some(u);
                Vec::new()
            }
        }
    };
    // Keep `healthy normal + remaining draining >= want`: new instances are not healthy yet.
    let healthy = normal.iter().filter(|i| i.healthy).count();
    let removable = (healthy + draining.len())
        .saturating_sub(want)
        .min(draining.len());
    draining.sort_by(|a, b| {
        a.healthy
            .cmp(&b.healthy)
            .then(a.host.cmp(b.host))
            .then(a.id.cmp(b.id))
    });
    remove(p, &draining[..removable], Why::Drained);
    hosts
}

/// Takes `n` instances out of `normal`: most concentrated host first (ties: smaller host
/// id), on it unhealthy first, then the highest id.
fn scale_down<'a>(normal: &mut Vec<Inst<'a>>, n: usize) -> Vec<Inst<'a>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
        for i in normal.iter() {
            *per_host.entry(i.host).or_default() += 1;
        }
        // BTreeMap iterates hosts in id order: keep the first of the largest.
        let Some(host) = per_host
            .iter()
            .fold(None, |best: Option<(&str, usize)>, (h, c)| match best {
                Some((_, bc)) if bc >= *c => best,
                _ => Some((h, *c)),
            })
            .map(|(h, _)| h)
        else {
            break;
        };
        let Some(idx) = normal
            .iter()
            .enumerate()
            .filter(|(_, i)| i.host == host)
            .max_by(|(_, a), (_, b)| b.healthy.cmp(&a.healthy).then(a.id.cmp(b.id)))
            .map(|(idx, _)| idx)
        else {
            break;
        };
        out.push(normal.remove(idx));
    }
    out
}

fn plan_global(snap: &Snapshot, req: &Request<'_>, p: &mut Plan) -> Vec<String> {
    let mut add = Vec::new();
    let reject = |p: &mut Plan, filter: String, host: &str| {
        p.rejected.entry(filter).or_default().push(host.to_owned());
    };
    for id in snap.bad_hosts.keys() {
        reject(p, "host info".into(), id);
    }
    for h in snap.hosts.values() {
        let mine: Vec<&InstanceId> = h
            .instances
            .iter()
            .filter(|(_, a)| a.app == *req.app && a.version == *req.version)
            .map(|(id, _)| id)
            .collect();
        let drop_all = |p: &mut Plan, why| {
            for id in &mine {
                p.remove.push(Removal {
                    host: h.id.clone(),
                    id: (*id).clone(),
                    why,
                });
            }
        };
        match h.liveness {
            Liveness::Lost => {
                drop_all(p, Why::Lost);
                reject(p, "alive".into(), &h.id);
            }
            Liveness::Missing => {
                if mine.is_empty() {
                    reject(p, "alive".into(), &h.id);
                } else {
                    p.desired += 1;
                }
            }
            Liveness::Alive => match global_check(h, req) {
                Err(f) => {
                    drop_all(p, Why::NotEligible);
                    reject(p, f.to_string(), &h.id);
                }
                Ok(()) => {
                    p.desired += 1;
                    if mine.is_empty() {
                        add.push(h.id.clone());
                    }
                    for id in mine.iter().skip(1) {
                        p.remove.push(Removal {
                            host: h.id.clone(),
                            id: (*id).clone(),
                            why: Why::Duplicate,
                        });
                    }
                }
            },
        }
    }
    if p.desired == 0 {
        p.unschedulable = Some(Unschedulable {
            wanted: 1,
            fit: 0,
            rejected: p.rejected.clone(),
        });
    }
    add
}

/// Instances whose deployment node is gone (not listed after the hosts were read, see
/// [`super::snapshot`]), grouped by deployment.
pub fn orphans(snap: &Snapshot) -> BTreeMap<Key, Vec<Removal>> {
    let mut out: BTreeMap<Key, Vec<Removal>> = BTreeMap::new();
    for h in snap.hosts.values() {
        for (id, a) in &h.instances {
            let key = (a.app.clone(), a.version.clone());
            if snap.listed_after.contains(&key) || snap.deployments.contains_key(&key) {
                continue;
            }
            out.entry(key).or_default().push(Removal {
                host: h.id.clone(),
                id: id.clone(),
                why: Why::Orphan,
            });
        }
    }
    out
}

/// `{app}-{version}-{n}`, or when that is over 63 characters a prefix of it, an 8-digit
/// hash of app and version, and `n`.
pub fn instance_id(app: &AppId, version: &Version, n: u64) -> Option<InstanceId> {
    let full = format!("{app}-{version}-{n}");
    if full.len() <= 63 {
        return InstanceId::new(&full).ok();
    }
    // FNV-1a: stable across builds and platforms.
    let mut hash: u32 = 0x811c_9dc5;
    for b in format!("{app}/{version}").bytes() {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let tail = format!("-{hash:08x}-{n}");
    let base = format!("{app}-{version}");
    let keep = 63usize.saturating_sub(tail.len()).min(base.len());
    // Ids are ASCII: any byte index is a character boundary.
    let prefix = base[..keep].trim_end_matches('-');
    InstanceId::new(&format!("{prefix}{tail}")).ok()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
