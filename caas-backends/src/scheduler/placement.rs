//! Placement: which hosts get new instances of a deployment. A pure function of a
//! [`Snapshot`]: filters decide which hosts may take an instance, the strategy ranks those
//! that pass, ties go to the smallest host id, so a placement is reproducible.
//!
//! Filters, in the order they are applied (a rejected host is reported under the first
//! filter it fails):
//!
//! | filter | a host passes when |
//! |---|---|
//! | `alive` | its `alive` node exists |
//! | `draining` | `HostInfo.draining` is false |
//! | `constraint K==V` / `K!=V` | its label `K` is / is not `V` (`hostname` is the host id; a missing label fails `==`, passes `!=`) |
//! | `affinity app==A` | it runs an instance of app `A` |
//! | `anti_affinity app==A` | it runs no instance of app `A` |
//! | `spread` | it runs fewer than `max_per_host` (default 1 with `spread: true`) instances of this version |
//! | `memory`, `cpu_shares`, `ports` | `capacity - used` covers the instance and its sidecars (one port from the pool per instance) |
//!
//! `used` is the sum over the host's assignments plus what this placement already put there.
//! Strategies (higher ranks first; `free = capacity.memory - used.memory`):
//!
//! | strategy | rank |
//! |---|---|
//! | `most_free_memory` | `free` |
//! | `least_cpu` | `cpu_idle - placed_shares / capacity.cpu_shares` (the measured idle share, minus what this placement already put there); hosts without a measurement after all measured ones, by `free` |
//! | `spread` | fewest instances of this app (all versions), then `free` |
//! | `binpack` | least `free - instance memory` (the fullest host that still fits) |
//!
//! Several instances are placed one at a time, each seeing the ones before it.

use std::collections::BTreeMap;
use std::fmt;

use caas_core::{AppId, Version};

use super::deployment::{Deployment, Strategy};
use super::snapshot::{HostState, Liveness, Snapshot, add};
use crate::zk::hosts::Resources;

/// A filter that rejected a host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Filter {
    /// The host node could not be read.
    HostInfo,
    /// The `alive` node is gone.
    Alive,
    /// The host is draining.
    Draining,
    /// A label constraint failed.
    Constraint(String),
    /// An affinity rule failed.
    Affinity(String),
    /// An anti-affinity rule failed.
    AntiAffinity(String),
    /// The host already runs `max_per_host` instances of this version.
    Spread(u32),
    /// Not enough free memory.
    Memory,
    /// Not enough free CPU shares.
    CpuShares,
    /// No free port in the pool.
    Ports,
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::HostInfo => f.write_str("host info"),
            Filter::Alive => f.write_str("alive"),
            Filter::Draining => f.write_str("draining"),
            Filter::Constraint(c) => write!(f, "constraint {c}"),
            Filter::Affinity(r) => write!(f, "affinity {r}"),
            Filter::AntiAffinity(r) => write!(f, "anti_affinity {r}"),
            Filter::Spread(n) => write!(f, "spread (max {n} per host)"),
            Filter::Memory => f.write_str("memory"),
            Filter::CpuShares => f.write_str("cpu_shares"),
            Filter::Ports => f.write_str("ports"),
        }
    }
}

/// Why a placement failed: how many instances were wanted, how many fit, and per filter the
/// hosts it rejected when no host was left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    /// Instances asked for.
    pub wanted: usize,
    /// Instances that would have fit (none is placed: all or nothing).
    pub fit: usize,
    /// Filter → hosts it rejected (each host under the first filter it failed).
    pub rejected: BTreeMap<String, Vec<String>>,
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot place {} instance{} (only {} fit)",
            self.wanted,
            if self.wanted == 1 { "" } else { "s" },
            self.fit
        )?;
        if self.rejected.is_empty() {
            return f.write_str(": no hosts");
        }
        let mut sep = ": ";
        for (filter, hosts) in &self.rejected {
            write!(f, "{sep}{filter} rejected {}", hosts.join(", "))?;
            sep = "; ";
        }
        Ok(())
    }
}

/// What is being placed.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The app.
    pub app: &'a AppId,
    /// The version.
    pub version: &'a Version,
    /// The deployment.
    pub spec: &'a Deployment,
    /// What one instance takes (main container and sidecars, one port).
    pub need: Resources,
}

impl<'a> Request<'a> {
    /// The request for one instance of `spec`.
    pub fn new(app: &'a AppId, version: &'a Version, spec: &'a Deployment) -> Self {
        let a = spec.assignment(app, version);
        Self {
            app,
            version,
            spec,
            need: super::snapshot::need(&a),
        }
    }
}

/// A host with what this placement has put on it so far.
#[derive(Debug, Clone)]
struct Candidate<'a> {
    host: &'a HostState,
    used: Resources,
    this_version: u32,
    this_app: u32,
    placed_shares: u64,
}

impl<'a> Candidate<'a> {
    fn new(host: &'a HostState, req: &Request<'_>) -> Self {
        // One walk over the host's instances for its use and this app's counts.
        let mut used = Resources::default();
        let mut this_version = 0;
        let mut this_app = 0;
        for a in host.instances.values() {
            used = add(used, super::snapshot::need(a));
            if &a.app == req.app {
                this_app += 1;
                if &a.version == req.version {
                    this_version += 1;
                }
            }
        }
        Self {
            host,
            used,
            this_version,
            this_app,
            placed_shares: 0,
        }
    }

    fn free_memory(&self) -> u64 {
        self.host
            .info
            .capacity
            .memory
            .saturating_sub(self.used.memory)
    }

    /// The filters that do not depend on resources or on this version's count.
    fn check_static(&self, req: &Request<'_>) -> Result<(), Filter> {
        let h = self.host;
        if h.liveness != Liveness::Alive {
            return Err(Filter::Alive);
        }
        if h.info.draining {
            return Err(Filter::Draining);
        }
        if let Some(c) = req
            .spec
            .constraints
            .iter()
            .find(|c| !c.matches(&h.id, &h.info.labels))
        {
            return Err(Filter::Constraint(c.to_string()));
        }
        if let Some(r) = req.spec.affinity.iter().find(|r| h.count_app(&r.app) == 0) {
            return Err(Filter::Affinity(r.to_string()));
        }
        if let Some(r) = req
            .spec
            .anti_affinity
            .iter()
            .find(|r| h.count_app(&r.app) > 0)
        {
            return Err(Filter::AntiAffinity(r.to_string()));
        }
        Ok(())
    }

    /// Every filter, for one more instance.
    fn check(&self, req: &Request<'_>) -> Result<(), Filter> {
        self.check_static(req)?;
        if let Some(cap) = req.spec.per_host_cap()
            && self.this_version >= cap
        {
            return Err(Filter::Spread(cap));
        }
        let cap = self.host.info.capacity;
        let after = add(self.used, req.need);
        if after.memory > cap.memory {
            return Err(Filter::Memory);
        }
        if after.cpu_shares > cap.cpu_shares {
            return Err(Filter::CpuShares);
        }
        if after.instances > cap.instances {
            return Err(Filter::Ports);
        }
        Ok(())
    }

    fn take(&mut self, req: &Request<'_>) {
        self.used = add(self.used, req.need);
        self.this_version += 1;
        self.this_app += 1;
        self.placed_shares += req.need.cpu_shares;
    }

    /// The rank under `strategy`: larger ranks first.
    fn rank(&self, strategy: Strategy, req: &Request<'_>) -> (i128, i128, i128) {
        let free = i128::from(self.free_memory());
        match strategy {
            Strategy::MostFreeMemory => (free, 0, 0),
            Strategy::LeastCpu => match self.host.info.cpu_idle {
                Some(idle) => {
                    let shares = self.host.info.capacity.cpu_shares;
                    let planned = if shares == 0 {
                        0.0
                    } else {
                        self.placed_shares as f64 / shares as f64
                    };
                    let est = idle.clamp(0.0, 1.0) - planned;
                    (1, (est * 1e9).round() as i128, free)
                }
                None => (0, 0, free),
            },
            Strategy::Spread => (-i128::from(self.this_app), free, 0),
            Strategy::Binpack => (-(free - i128::from(req.need.memory)), 0, 0),
        }
    }
}

/// Per filter, the hosts it rejects for one more instance of `req` (and the unreadable hosts).
fn rejections(
    snap: &Snapshot,
    cands: &[Candidate<'_>],
    req: &Request<'_>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in snap.bad_hosts.keys() {
        out.entry(Filter::HostInfo.to_string())
            .or_default()
            .push(id.clone());
    }
    for c in cands {
        if let Err(f) = c.check(req) {
            out.entry(f.to_string())
                .or_default()
                .push(c.host.id.clone());
        }
    }
    out
}

/// Chooses hosts for `n` new instances of `req`, one at a time; all of them or an
/// [`Unschedulable`] saying why not.
pub fn place(snap: &Snapshot, req: &Request<'_>, n: usize) -> Result<Vec<String>, Unschedulable> {
    let mut cands: Vec<Candidate<'_>> = snap
        .hosts
        .values()
        .map(|h| Candidate::new(h, req))
        .collect();
    let mut picks = Vec::with_capacity(n);
    for placed in 0..n {
        let mut best: Option<(usize, (i128, i128, i128))> = None;
        for (i, c) in cands.iter().enumerate() {
            if c.check(req).is_err() {
                continue;
            }
            let rank = c.rank(req.spec.strategy, req);
            // Hosts are visited in id order: a later host must be strictly better.
            if best.is_none_or(|(_, r)| rank > r) {
                best = Some((i, rank));
            }
        }
        let Some((i, _)) = best else {
            return Err(Unschedulable {
                wanted: n,
                fit: placed,
                rejected: rejections(snap, &cands, req),
            });
        };
        cands[i].take(req);
        picks.push(cands[i].host.id.clone());
    }
    Ok(picks)
}

/// For a global deployment: whether a host that already runs an instance may keep it
/// (the filters that do not depend on resources), or, for a host without one, whether it
/// may take one (every filter).
pub fn global_check(host: &HostState, req: &Request<'_>) -> Result<(), Filter> {
    let c = Candidate::new(host, req);
    if c.this_version > 0 {
        c.check_static(req)
    } else {
        c.check(req)
    }
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
