//! Reconcile as a pure decision: what the assignments want, what Docker has (containers found
//! by their `caas.*` labels) and what the agent tracks go in; the [`Step`]s that make them
//! match come out, in the order the agent must take them. No I/O: the loop in `run` reads
//! ZooKeeper and Docker, calls [`plan`], and executes the steps.
//!
//! The rules, per instance id:
//!
//! | assignment | tracked unit | containers found | step |
//! |---|---|---|---|
//! | none (or node deleted) | yes | — | [`Step::Remove`]: deregister, stop and remove the unit, then drop its status |
//! | changed | yes | — | [`Step::Replace`]: the old unit goes, a new one starts |
//! | same | up (running/held) | one of its containers stopped or gone | [`Step::Exited`] |
//! | present | no | main + every sidecar | [`Step::Adopt`] (after an agent restart) |
//! | present | no | main without all its sidecars, or sidecars alone | their containers are orphans, [`Step::Start`] |
//! | present | no | none | [`Step::Start`] |
//! | none | no | any | [`Step::RemoveOrphan`] |
//! | present | yes | a container of the id it does not own | [`Step::RemoveOrphan`] (duplicate), unless a start job is in flight (it replaces what holds the name) |
//! | valid name, invalid JSON | any | any | left alone (a bad edit must not kill a running instance), counted in [`Plan::skipped`] |
//! | invalid name | — | — | skipped and counted |
//!
//! Containers with no valid `caas.instance` label are orphans; containers with a removal in
//! flight are ignored. A status node is deleted when its name is neither an assignment nor a
//! tracked instance. An instance in [`Phase::Removing`] is waited for: once its removal is
//! done the next reconcile starts it again if its assignment came back.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use caas_core::InstanceId;

use super::instance::Phase;
use crate::assignment::Assignment;
use crate::docker::{ContainerInfo, LABEL_CONTAINER_PORT, ManagedContainer};
use crate::zk::hosts::AssignmentNode;

/// What the agent tracks of one instance, as the planner needs it.
#[derive(Debug, Clone)]
pub(super) struct Tracked<'a> {
    pub(super) assignment: &'a Assignment,
    pub(super) phase: Phase,
    pub(super) port: u16,
    /// The main container, once started or adopted.
    pub(super) main: Option<&'a str>,
    /// Sidecar containers by name.
    pub(super) sidecars: &'a BTreeMap<String, String>,
}

impl Tracked<'_> {
    fn owns(&self, container: &str) -> bool {
        self.main == Some(container) || self.sidecars.values().any(|c| c == container)
    }
}

/// Everything [`plan`] looks at.
#[derive(Debug)]
pub(super) struct Observed<'a> {
    /// The children of `/hosts/{host}/assignments`, parsed or not.
    pub(super) nodes: &'a [AssignmentNode],
    /// The host's containers, by label.
    pub(super) containers: &'a [ManagedContainer],
    /// The instances the agent tracks.
    pub(super) tracked: &'a BTreeMap<InstanceId, Tracked<'a>>,
    /// Containers with a removal job in flight.
    pub(super) removing: &'a HashSet<String>,
    /// Names of the status nodes; `None` when they could not be read.
    pub(super) statuses: Option<&'a [String]>,
}

/// One thing to do, in the order [`Plan::steps`] lists them.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Step {
    /// The assignment is gone: deregister, stop and remove every container of the unit,
    /// then forget it and delete its status node.
    Remove { id: InstanceId },
    /// The assignment changed: deregister and remove the old unit, start the new one.
    Replace {
        id: InstanceId,
        assignment: Assignment,
    },
    /// A container nothing explains: remove it at once (no grace), and give its port back.
    RemoveOrphan {
        container: String,
        port: Option<u16>,
        why: &'static str,
    },
    /// A running unit lost a container (stopped, or gone from Docker's list): deregister,
    /// then restart or remove per policy.
    Exited { id: InstanceId, why: String },
    /// Containers of an assignment the agent does not track (its own, from before its
    /// restart): take them over if they match it ([`adoptable`]), else replace them.
    Adopt {
        id: InstanceId,
        assignment: Assignment,
        main: ManagedContainer,
        sidecars: BTreeMap<String, ManagedContainer>,
    },
    /// Start the unit of a new assignment.
    Start {
        id: InstanceId,
        assignment: Assignment,
    },
    /// A status node of nothing this host has: delete it.
    DeleteStatus { name: String },
}

/// The outcome of [`plan`].
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) steps: Vec<Step>,
    /// Assignment nodes that could not be used (bad name or JSON), with why; each is logged
    /// and counted by the caller.
    pub(super) skipped: Vec<String>,
}

/// Decides what to do (see the module docs).
pub(super) fn plan(o: &Observed<'_>) -> Plan {
    let mut out = Plan::default();
    let mut desired: BTreeMap<&InstanceId, &Assignment> = BTreeMap::new();
    // Valid names with invalid JSON: their containers and instances are left as they are.
    let mut untouchable: BTreeSet<&InstanceId> = BTreeSet::new();
    for node in o.nodes {
        match (&node.instance, &node.assignment) {
            (Ok(id), Ok(a)) => {
                desired.insert(id, a);
            }
            (Ok(id), Err(e)) => {
                out.skipped
                    .push(format!("assignment {id} is invalid; leaving it as is: {e}"));
                untouchable.insert(id);
            }
            (Err(e), _) => out
                .skipped
                .push(format!("assignment node name is not an instance id: {e}")),
        }
    }

    let (mut removes, mut orphans, mut exits) = (Vec::new(), Vec::new(), Vec::new());
    let mut replaced: BTreeSet<&InstanceId> = BTreeSet::new();
    for (id, t) in o.tracked {
        if untouchable.contains(id) || t.phase == Phase::Removing {
            continue;
        }
        match desired.get(id) {
            None => removes.push(Step::Remove { id: id.clone() }),
            Some(a) if *a != t.assignment => {
                replaced.insert(id);
                removes.push(Step::Replace {
                    id: id.clone(),
                    assignment: (*a).clone(),
                });
            }
            Some(_) => {}
        }
    }

    // Ports held by tracked instances never go back to the pool with an orphan.
    let tracked_ports: BTreeSet<u16> = o.tracked.values().map(|t| t.port).collect();
    let mut orphan = |c: &ManagedContainer, why: &'static str| {
        orphans.push(Step::RemoveOrphan {
            container: c.id.clone(),
            port: c.port().filter(|p| !tracked_ports.contains(p)),
            why,
        });
    };
    let mut candidates: BTreeMap<&InstanceId, Vec<&ManagedContainer>> = BTreeMap::new();
    let mut lost: BTreeMap<&InstanceId, String> = BTreeMap::new();
    for c in o.containers {
        if o.removing.contains(&c.id) {
            continue;
        }
        let Some(id) = c.instance().and_then(|i| InstanceId::new(i).ok()) else {
            orphan(c, "no valid caas.instance label");
            continue;
        };
        if untouchable.contains(&id) {
            continue;
        }
        let Some((id, t)) = o.tracked.get_key_value(&id) else {
            match desired.get_key_value(&id) {
                Some((id, _)) => candidates.entry(*id).or_default().push(c),
                None => orphan(c, "no assignment"),
            }
            continue;
        };
        if t.owns(&c.id) {
            if t.phase.is_up() && !c.running && !replaced.contains(id) && desired.contains_key(id) {
                lost.entry(id).or_insert_with(|| match c.sidecar() {
                    Some(name) => format!("sidecar {name} found stopped"),
                    None => "container found stopped".to_owned(),
                });
            }
            continue;
        }
        match (desired.contains_key(id), t.phase) {
            (false, _) => orphan(c, "no assignment"),
            // Being removed, or (re)started: the job replaces whatever holds the name.
            (true, Phase::Removing | Phase::Starting) => {}
            (true, _) if replaced.contains(id) => {}
            (true, _) => orphan(c, "duplicate of a tracked instance"),
        }
    }

    // Tracked containers that vanished (removed from outside).
    let listed: HashSet<&str> = o.containers.iter().map(|c| c.id.as_str()).collect();
    for (id, t) in o.tracked {
        if !t.phase.is_up() || replaced.contains(id) || !desired.contains_key(id) {
            continue;
        }
        let gone_main = t.main.is_some_and(|m| !listed.contains(m));
        let gone_sidecar = t
            .sidecars
            .iter()
            .find(|(_, c)| !listed.contains(c.as_str()));
        let why = match (gone_main, gone_sidecar) {
            (true, _) => Some("container vanished".to_owned()),
            (false, Some((name, _))) => Some(format!("sidecar {name} vanished")),
            (false, None) => None,
        };
        if let Some(why) = why {
            lost.entry(id).or_insert(why);
        }
    }
    for (id, why) in lost {
        exits.push(Step::Exited {
            id: id.clone(),
            why,
        });
    }

    // Assignments with no tracked unit: adopt what is there, or start.
    let (mut adopts, mut starts) = (Vec::new(), Vec::new());
    for (id, a) in &desired {
        if o.tracked.contains_key(*id) {
            continue;
        }
        let found = candidates.remove(*id).unwrap_or_default();
        match unit_of(a, found, &mut orphan) {
            Some((main, sidecars)) => adopts.push(Step::Adopt {
                id: (*id).clone(),
                assignment: (*a).clone(),
                main,
                sidecars,
            }),
            None => starts.push(Step::Start {
                id: (*id).clone(),
                assignment: (*a).clone(),
            }),
        }
    }

    let mut statuses = Vec::new();
    for name in o.statuses.unwrap_or_default() {
        let known = InstanceId::new(name).ok().is_some_and(|id| {
            desired.contains_key(&id) || untouchable.contains(&id) || o.tracked.contains_key(&id)
        });
        if !known {
            statuses.push(Step::DeleteStatus { name: name.clone() });
        }
    }

    out.steps = [removes, orphans, exits, adopts, starts, statuses].concat();
    out
}

/// Picks, among the containers found for an untracked assignment, a complete unit to adopt:
/// one main container (a running one first) and one container per sidecar of the
/// assignment. The rest, or all of them when the unit is incomplete, go to `orphan`.
fn unit_of(
    a: &Assignment,
    mut found: Vec<&ManagedContainer>,
    orphan: &mut impl FnMut(&ManagedContainer, &'static str),
) -> Option<(ManagedContainer, BTreeMap<String, ManagedContainer>)> {
    // Running ones first, so a stopped duplicate is the one let go.
    found.sort_by_key(|c| !c.running);
    let mut main: Option<&ManagedContainer> = None;
    let mut sidecars: BTreeMap<String, &ManagedContainer> = BTreeMap::new();
    for c in found {
        match c.sidecar() {
            None if main.is_none() => main = Some(c),
            None => orphan(c, "duplicate of a tracked instance"),
            Some(name) if !a.sidecars.iter().any(|s| s.name == name) => {
                orphan(c, "sidecar not in its assignment");
            }
            Some(name) if sidecars.contains_key(name) => {
                orphan(c, "duplicate of a tracked instance");
            }
            Some(name) => {
                sidecars.insert(name.to_owned(), c);
            }
        }
    }
    let complete = main.is_some() && sidecars.len() == a.sidecars.len();
    if !complete {
        let why = if main.is_some() {
            "unit incomplete: a sidecar is missing"
        } else {
            "sidecar without its main container"
        };
        for c in main.into_iter().chain(sidecars.into_values()) {
            orphan(c, why);
        }
        return None;
    }
    let main = main?.clone();
    Some((
        main,
        sidecars.into_iter().map(|(n, c)| (n, c.clone())).collect(),
    ))
}

/// Whether containers found by label still match their assignment, so that they can be
/// adopted: the main container's image, limits, container port and published binding (on
/// `ip`, inside `ports`), and each sidecar's image, limits and network namespace (the main
/// container's). `Ok(port)` is the published host port; `Err` says what differs.
pub(super) fn adoptable(
    a: &Assignment,
    main: &ContainerInfo,
    sidecars: &BTreeMap<String, ContainerInfo>,
    ip: std::net::IpAddr,
    ports: crate::ports::PortRange,
) -> Result<u16, String> {
    if main.image != a.image {
        return Err(format!("image {} is not {}", main.image, a.image));
    }
    if u64::try_from(main.memory).ok() != Some(a.memory.bytes())
        || main.cpu_shares != i64::from(a.cpu_shares)
    {
        return Err("memory or cpu shares differ".to_owned());
    }
    if main.labels.get(LABEL_CONTAINER_PORT) != Some(&a.container_port.to_string()) {
        return Err("container port differs".to_owned());
    }
    let port = match &main.host_binding {
        Some((bound, port)) if *bound == ip.to_string() && ports.contains(*port) => *port,
        other => return Err(format!("published on {other:?}, not on {ip} in {ports}")),
    };
    for s in &a.sidecars {
        let Some(c) = sidecars.get(&s.name) else {
            return Err(format!("sidecar {} missing", s.name));
        };
        if c.image != s.image
            || u64::try_from(c.memory).ok() != Some(s.memory.bytes())
            || c.cpu_shares != i64::from(s.cpu_shares)
        {
            return Err(format!("sidecar {} differs from its assignment", s.name));
        }
        if c.network_mode != format!("container:{}", main.id) {
            return Err(format!(
                "sidecar {} is not in the main container's network ({})",
                s.name, c.network_mode
            ));
        }
    }
    Ok(port)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
