//! Table tests of [`plan`](super::plan) and [`adoptable`](super::adoptable): every row of the
//! module docs' table, and the order the steps come in.

use std::collections::{BTreeMap, HashMap, HashSet};

use caas_core::InstanceId;

use super::*;
use crate::assignment::{AssignmentError, Sidecar};
use crate::docker::{ContainerState, LABEL_INSTANCE, LABEL_PORT, LABEL_SIDECAR};

fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

fn assignment(sidecars: &[&str]) -> Assignment {
    let mut a = Assignment::from_json(
        br#"{"app": "hello", "version": "v1", "image": "127.0.0.1:5000/hello:v1",
             "container_port": 8080, "memory": "64m", "cpu_shares": 512}"#,
    )
    .unwrap();
    a.sidecars = sidecars
        .iter()
        .map(|n| Sidecar {
            name: (*n).to_owned(),
            image: "127.0.0.1:5000/hello-cache:v1".to_owned(),
            memory: "16m".parse().unwrap(),
            cpu_shares: 256,
        })
        .collect();
    a
}

/// A container: `instance` label (or none), `sidecar` label (or none), `caas.port`.
fn ctr(
    cid: &str,
    instance: Option<&str>,
    sidecar: Option<&str>,
    port: Option<u16>,
    running: bool,
) -> ManagedContainer {
    let mut labels = HashMap::new();
    if let Some(i) = instance {
        labels.insert(LABEL_INSTANCE.to_owned(), i.to_owned());
    }
    if let Some(s) = sidecar {
        labels.insert(LABEL_SIDECAR.to_owned(), s.to_owned());
    }
    if let Some(p) = port {
        labels.insert(LABEL_PORT.to_owned(), p.to_string());
    }
    ManagedContainer {
        id: cid.to_owned(),
        labels,
        running,
    }
}

fn main_ctr(cid: &str, inst: &str, port: u16) -> ManagedContainer {
    ctr(cid, Some(inst), None, Some(port), true)
}

fn side_ctr(cid: &str, inst: &str, name: &str) -> ManagedContainer {
    ctr(cid, Some(inst), Some(name), None, true)
}

/// What the agent tracks of one instance (owned, for the table).
struct Unit {
    assignment: Assignment,
    phase: Phase,
    port: u16,
    main: Option<String>,
    sidecars: BTreeMap<String, String>,
}

fn unit(phase: Phase, port: u16, main: &str, sidecars: &[(&str, &str)]) -> Unit {
    Unit {
        assignment: assignment(&sidecars.iter().map(|(n, _)| *n).collect::<Vec<_>>()),
        phase,
        port,
        main: (!main.is_empty()).then(|| main.to_owned()),
        sidecars: sidecars
            .iter()
            .map(|(n, c)| ((*n).to_owned(), (*c).to_owned()))
            .collect(),
    }
}

fn node(name: &str, a: &Assignment) -> AssignmentNode {
    AssignmentNode {
        instance: InstanceId::new(name).map_err(|e| e.to_string()),
        assignment: Ok(a.clone()),
    }
}

fn bad_json(name: &str) -> AssignmentNode {
    AssignmentNode {
        instance: InstanceId::new(name).map_err(|e| e.to_string()),
        assignment: Err(AssignmentError::Json("expected value at line 1".into())),
    }
}

/// One row: inputs and the steps expected, written as [`show`] prints them.
struct Case {
    name: &'static str,
    nodes: Vec<AssignmentNode>,
    containers: Vec<ManagedContainer>,
    units: Vec<(&'static str, Unit)>,
    removing: Vec<&'static str>,
    statuses: Option<Vec<&'static str>>,
    want: Vec<&'static str>,
    skipped: usize,
}

impl Default for Case {
    fn default() -> Self {
        Self {
            name: "",
            nodes: Vec::new(),
            containers: Vec::new(),
            units: Vec::new(),
            removing: Vec::new(),
            statuses: Some(Vec::new()),
            want: Vec::new(),
            skipped: 0,
        }
    }
}

fn show(step: &Step) -> String {
    match step {
        Step::Remove { id } => format!("remove {id}"),
        Step::Replace { id, .. } => format!("replace {id}"),
        Step::RemoveOrphan {
            container,
            port,
            why,
        } => match port {
            Some(p) => format!("orphan {container} port {p} ({why})"),
            None => format!("orphan {container} ({why})"),
        },
        Step::Exited { id, why } => format!("exited {id}: {why}"),
        Step::Adopt {
            id, main, sidecars, ..
        } => {
            let s: Vec<String> = sidecars
                .iter()
                .map(|(n, c)| format!("{n}={}", c.id))
                .collect();
            format!("adopt {id} main={} sidecars=[{}]", main.id, s.join(","))
        }
        Step::Start { id, .. } => format!("start {id}"),
        Step::DeleteStatus { name } => format!("delete status {name}"),
    }
}

fn run(case: &Case) -> Plan {
    let tracked: BTreeMap<InstanceId, Tracked<'_>> = case
        .units
        .iter()
        .map(|(name, u)| {
            (
                id(name),
                Tracked {
                    assignment: &u.assignment,
                    phase: u.phase,
                    port: u.port,
                    main: u.main.as_deref(),
                    sidecars: &u.sidecars,
                },
            )
        })
        .collect();
    let removing: HashSet<String> = case.removing.iter().map(|s| (*s).to_owned()).collect();
    let statuses: Option<Vec<String>> = case
        .statuses
        .as_ref()
        .map(|v| v.iter().map(|s| (*s).to_owned()).collect());
    plan(&Observed {
        nodes: &case.nodes,
        containers: &case.containers,
        tracked: &tracked,
        removing: &removing,
        statuses: statuses.as_deref(),
    })
}

#[test]
fn every_case_of_the_table() {
    let plain = assignment(&[]);
    let pod = assignment(&["cache"]);
    let mut changed = plain.clone();
    changed.cpu_shares = 1024;
    let cases = vec![
        Case {
            name: "new assignment, nothing there: start",
            nodes: vec![node("i1", &plain)],
            want: vec!["start i1"],
            ..Case::default()
        },
        Case {
            name: "new assignment with a sidecar: start the unit",
            nodes: vec![node("i1", &pod)],
            want: vec!["start i1"],
            ..Case::default()
        },
        Case {
            name: "assignment deleted: remove the tracked unit",
            units: vec![("i1", unit(Phase::Running, 25701, "c1", &[("cache", "s1")]))],
            containers: vec![main_ctr("c1", "i1", 25701), side_ctr("s1", "i1", "cache")],
            want: vec!["remove i1"],
            ..Case::default()
        },
        Case {
            name: "assignment changed: replace",
            nodes: vec![node("i1", &changed)],
            units: vec![("i1", unit(Phase::Running, 25701, "c1", &[]))],
            containers: vec![main_ctr("c1", "i1", 25701)],
            want: vec!["replace i1"],
            ..Case::default()
        },
        Case {
            name: "sidecars changed: replace the unit",
            nodes: vec![node("i1", &pod)],
            units: vec![("i1", unit(Phase::Running, 25701, "c1", &[]))],
            containers: vec![main_ctr("c1", "i1", 25701)],
            want: vec!["replace i1"],
            ..Case::default()
        },
        Case {
            name: "stopped by policy, assignment changed: replace",
            nodes: vec![node("i1", &changed)],
            units: vec![("i1", unit(Phase::Stopped, 25701, "", &[]))],
            want: vec!["replace i1"],
            ..Case::default()
        },
        Case {
            name: "stopped by policy, same assignment: stays down",
            nodes: vec![node("i1", &plain)],
            units: vec![("i1", unit(Phase::Stopped, 25701, "", &[]))],
            want: vec![],
            ..Case::default()
        },
        Case {
            name: "all in order: nothing to do",
            nodes: vec![node("i1", &pod)],
            units: vec![("i1", unit(Phase::Running, 25701, "c1", &[("cache", "s1")]))],
            containers: vec![main_ctr("c1", "i1", 25701), side_ctr("s1", "i1", "cache")],
            statuses: Some(vec!["i1"]),
            want: vec![],
            ..Case::default()
        },
        Case {
            name: "main container found stopped (missed die event)",
            nodes: vec![node("i1", &plain)],
            units: vec![("i1", unit(Phase::Running, 25701, "c1", &[]))],
            containers: vec![ctr("c1", Some("i1"), None, Some(25701), false)],
            want: vec!["exited i1: container found stopped"],
            ..Case::default()
        },
        Case {
            name: "sidecar found stopped",
            nodes: vec![node("i1", &pod)],
            units: vec![("i1", unit(Phase::Held, 25701, "c1", &[("cache", "s1")]))],
            containers: vec![
                main_ctr("c1", "i1", 25701),
                ctr("s1", Some("i1"), Some("cache"), None, false),
            ],
            want: vec!["exited i1: sidecar cache found stopped"],
            ..Case::default()
        },
        Case {
            name: "main container vanished",
            nodes: vec![node("i1", &pod)],
            units: vec![("i1", unit(Phase::Running, 25701, "c1", &[("cache", "s1")]))],
            containers: vec![side_ctr("s1", "i1", "cache")],
            want: vec!["exited i1: container vanished"],
            ..Case::default()
        },
        Case {
            name: "sidecar vanished",
            nodes: vec![node("i1", &pod)],
            units: vec![("i1", unit(Phase::Running, 25701, "c1", &[("cache", "s1")]))],
            containers: vec![main_ctr("c1", "i1", 25701)],
            want: vec!["exited i1: sidecar cache vanished"],
            ..Case::default()
        },
        Case {
            name: "waiting for a restart: a vanished or stopped container is expected",
            nodes: vec![node("i1", &plain), node("i2", &plain)],
            units: vec![
                ("i1", unit(Phase::Waiting, 25701, "c1", &[])),
                ("i2", unit(Phase::Waiting, 25702, "c2", &[])),
            ],
            containers: vec![ctr("c2", Some("i2"), None, Some(25702), false)],
            want: vec![],
            ..Case::default()
        },
        Case {
            name: "after an agent restart: adopt the main container and its sidecar",
            nodes: vec![node("i1", &pod)],
            containers: vec![side_ctr("s1", "i1", "cache"), main_ctr("c1", "i1", 25701)],
            want: vec!["adopt i1 main=c1 sidecars=[cache=s1]"],
            ..Case::default()
        },
        Case {
            name: "adopt a stopped unit too (it restarts per policy)",
            nodes: vec![node("i1", &plain)],
            containers: vec![ctr("c1", Some("i1"), None, Some(25701), false)],
            want: vec!["adopt i1 main=c1 sidecars=[]"],
            ..Case::default()
        },
        Case {
            name: "unit without its sidecar: orphan, start fresh",
            nodes: vec![node("i1", &pod)],
            containers: vec![main_ctr("c1", "i1", 25701)],
            want: vec![
                "orphan c1 port 25701 (unit incomplete: a sidecar is missing)",
                "start i1",
            ],
            ..Case::default()
        },
        Case {
            name: "sidecar without its main container: orphan, start",
            nodes: vec![node("i1", &pod)],
            containers: vec![side_ctr("s1", "i1", "cache")],
            want: vec!["orphan s1 (sidecar without its main container)", "start i1"],
            ..Case::default()
        },
        Case {
            name: "a sidecar the assignment does not name: orphan; the main one adopted",
            nodes: vec![node("i1", &plain)],
            containers: vec![main_ctr("c1", "i1", 25701), side_ctr("s9", "i1", "old")],
            want: vec![
                "orphan s9 (sidecar not in its assignment)",
                "adopt i1 main=c1 sidecars=[]",
            ],
            ..Case::default()
        },
        Case {
            name: "two main containers: the running one is adopted",
            nodes: vec![node("i1", &plain)],
            containers: vec![
                ctr("c0", Some("i1"), None, Some(25700), false),
                main_ctr("c1", "i1", 25701),
            ],
            want: vec![
                "orphan c0 port 25700 (duplicate of a tracked instance)",
                "adopt i1 main=c1 sidecars=[]",
            ],
            ..Case::default()
        },
        Case {
            name: "two containers of one sidecar: one is adopted",
            nodes: vec![node("i1", &pod)],
            containers: vec![
                main_ctr("c1", "i1", 25701),
                side_ctr("s1", "i1", "cache"),
                side_ctr("s2", "i1", "cache"),
            ],
            want: vec![
                "orphan s2 (duplicate of a tracked instance)",
                "adopt i1 main=c1 sidecars=[cache=s1]",
            ],
            ..Case::default()
        },
        Case {
            name: "containers with no or a bad instance label, or no assignment: orphans",
            containers: vec![
                ctr("x1", None, None, Some(25710), true),
                ctr("x2", Some("Not_An_Id"), None, None, true),
                main_ctr("x3", "gone", 25711),
                side_ctr("x4", "gone", "cache"),
            ],
            want: vec![
                "orphan x1 port 25710 (no valid caas.instance label)",
                "orphan x2 (no valid caas.instance label)",
                "orphan x3 port 25711 (no assignment)",
                "orphan x4 (no assignment)",
            ],
            ..Case::default()
        },
        Case {
            name: "an orphan's port held by a tracked instance stays out of the pool",
            nodes: vec![node("i1", &plain)],
            units: vec![("i1", unit(Phase::Running, 25701, "c1", &[]))],
            containers: vec![main_ctr("c1", "i1", 25701), main_ctr("x", "gone", 25701)],
            want: vec!["orphan x (no assignment)"],
            ..Case::default()
        },
        Case {
            name: "duplicate of a running instance: orphan",
            nodes: vec![node("i1", &plain)],
            units: vec![("i1", unit(Phase::Running, 25701, "c1", &[]))],
            containers: vec![main_ctr("c1", "i1", 25701), main_ctr("c2", "i1", 25702)],
            want: vec!["orphan c2 port 25702 (duplicate of a tracked instance)"],
            ..Case::default()
        },
        Case {
            name: "a start job in flight replaces what holds the name: left alone",
            nodes: vec![node("i1", &plain)],
            units: vec![("i1", unit(Phase::Starting, 25701, "", &[]))],
            containers: vec![main_ctr("c2", "i1", 25701)],
            want: vec![],
            ..Case::default()
        },
        Case {
            name: "containers with a removal in flight are ignored",
            containers: vec![main_ctr("c1", "gone", 25701)],
            removing: vec!["c1"],
            want: vec![],
            ..Case::default()
        },
        Case {
            name: "invalid assignment JSON: its unit, containers and status are left alone",
            nodes: vec![bad_json("i1")],
            units: vec![("i1", unit(Phase::Running, 25701, "c1", &[]))],
            containers: vec![main_ctr("c1", "i1", 25701), main_ctr("c9", "i1", 25709)],
            statuses: Some(vec!["i1"]),
            want: vec![],
            skipped: 1,
            ..Case::default()
        },
        Case {
            name: "invalid JSON of an untracked instance: its containers stay too",
            nodes: vec![bad_json("i1")],
            containers: vec![main_ctr("c1", "i1", 25701)],
            want: vec![],
            skipped: 1,
            ..Case::default()
        },
        Case {
            name: "invalid node name: skipped and counted, nothing else",
            nodes: vec![node("Bad_Name", &plain), node("i1", &plain)],
            want: vec!["start i1"],
            skipped: 1,
            ..Case::default()
        },
        Case {
            name: "being removed, assignment back: wait for the removal",
            nodes: vec![node("i1", &plain)],
            units: vec![("i1", unit(Phase::Removing, 25701, "", &[]))],
            containers: vec![main_ctr("c1", "i1", 25701)],
            removing: vec!["c1"],
            statuses: Some(vec!["i1"]),
            want: vec![],
            ..Case::default()
        },
        Case {
            name: "being removed, no assignment: nothing more, status kept until removed",
            units: vec![("i1", unit(Phase::Removing, 25701, "", &[]))],
            statuses: Some(vec!["i1"]),
            want: vec![],
            ..Case::default()
        },
        Case {
            name: "status nodes of nothing are deleted",
            nodes: vec![node("i1", &plain)],
            units: vec![("i1", unit(Phase::Starting, 25701, "", &[]))],
            statuses: Some(vec!["i1", "gone", "Bad_Name"]),
            want: vec!["delete status gone", "delete status Bad_Name"],
            ..Case::default()
        },
        Case {
            name: "status nodes unreadable: none deleted",
            statuses: None,
            want: vec![],
            ..Case::default()
        },
        Case {
            name: "steps come in order: removals, orphans, exits, adoptions, starts, statuses",
            nodes: vec![
                node("new", &plain),
                node("found", &plain),
                node("dead", &plain),
                node("moved", &changed),
            ],
            units: vec![
                ("dead", unit(Phase::Running, 25703, "d1", &[])),
                ("moved", unit(Phase::Running, 25704, "m1", &[])),
                ("old", unit(Phase::Running, 25705, "o1", &[])),
            ],
            containers: vec![
                main_ctr("m1", "moved", 25704),
                main_ctr("o1", "old", 25705),
                main_ctr("f1", "found", 25706),
                main_ctr("x1", "stray", 25707),
            ],
            statuses: Some(vec!["stray", "old"]),
            want: vec![
                "replace moved",
                "remove old",
                "orphan x1 port 25707 (no assignment)",
                "exited dead: container vanished",
                "adopt found main=f1 sidecars=[]",
                "start new",
                "delete status stray",
            ],
            ..Case::default()
        },
    ];
    for case in &cases {
        let plan = run(case);
        let got: Vec<String> = plan.steps.iter().map(show).collect();
        assert_eq!(got, case.want, "{}", case.name);
        assert_eq!(
            plan.skipped.len(),
            case.skipped,
            "{}: {:?}",
            case.name,
            plan.skipped
        );
    }
}

#[test]
fn skipped_nodes_say_why() {
    let plan = run(&Case {
        nodes: vec![bad_json("i1"), node("Bad_Name", &assignment(&[]))],
        ..Case::default()
    });
    assert!(
        plan.skipped[0].contains("assignment i1 is invalid"),
        "{:?}",
        plan.skipped
    );
    assert!(
        plan.skipped[0].contains("expected value"),
        "{:?}",
        plan.skipped
    );
    assert!(
        plan.skipped[1].contains("not an instance id"),
        "{:?}",
        plan.skipped
    );
}

fn info(cid: &str, image: &str, memory: i64, cpu: i64) -> ContainerInfo {
    ContainerInfo {
        id: cid.to_owned(),
        name: cid.to_owned(),
        image: image.to_owned(),
        state: ContainerState::Running,
        exit_code: None,
        oom_killed: false,
        labels: HashMap::from([(LABEL_CONTAINER_PORT.to_owned(), "8080".to_owned())]),
        host_binding: Some(("127.0.0.2".to_owned(), 25701)),
        memory,
        cpu_shares: cpu,
        network_mode: "bridge".to_owned(),
        started_at_ms: Some(1),
    }
}

#[test]
fn adoption_checks_the_whole_unit() {
    let a = assignment(&["cache"]);
    let ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let ports = crate::ports::PortRange::DEFAULT;
    let main = info("c1", "127.0.0.1:5000/hello:v1", 64 << 20, 512);
    let mut side = info("s1", "127.0.0.1:5000/hello-cache:v1", 16 << 20, 256);
    side.network_mode = "container:c1".to_owned();
    let sidecars = BTreeMap::from([("cache".to_owned(), side.clone())]);
    assert_eq!(adoptable(&a, &main, &sidecars, ip, ports), Ok(25701));

    type Edit = fn(&mut ContainerInfo, &mut ContainerInfo);
    let rows: &[(&str, Edit, &str)] = &[
        (
            "image",
            |m, _| m.image = "127.0.0.1:5000/hello:v0".into(),
            "image",
        ),
        ("memory", |m, _| m.memory = 1, "memory"),
        ("cpu", |m, _| m.cpu_shares = 2, "cpu"),
        (
            "port label",
            |m, _| {
                m.labels.clear();
            },
            "container port",
        ),
        (
            "other ip",
            |m, _| m.host_binding = Some(("127.0.0.9".into(), 25701)),
            "published",
        ),
        (
            "outside the pool",
            |m, _| m.host_binding = Some(("127.0.0.2".into(), 80)),
            "published",
        ),
        ("unpublished", |m, _| m.host_binding = None, "published"),
        (
            "sidecar image",
            |_, s| s.image = "127.0.0.1:5000/x:v1".into(),
            "sidecar cache differs",
        ),
        (
            "sidecar memory",
            |_, s| s.memory = 1,
            "sidecar cache differs",
        ),
        (
            "sidecar network",
            |_, s| s.network_mode = "container:other".into(),
            "network",
        ),
        (
            "sidecar in bridge",
            |_, s| s.network_mode = "bridge".into(),
            "network",
        ),
    ];
    for (name, edit, needle) in rows {
        let (mut m, mut s) = (main.clone(), side.clone());
        edit(&mut m, &mut s);
        let sidecars = BTreeMap::from([("cache".to_owned(), s)]);
        let e = adoptable(&a, &m, &sidecars, ip, ports).unwrap_err();
        assert!(e.contains(needle), "{name}: {e}");
    }
    let e = adoptable(&a, &main, &BTreeMap::new(), ip, ports).unwrap_err();
    assert!(e.contains("sidecar cache missing"), "{e}");
}
