//! Turns a [`Plan`] into the one commit that carries it out, and applies it to the local
//! [`Snapshot`] so the rest of the pass sees it.
//!
//! The commit, in this order (the first failing op names the conflict):
//!
//! 1. `Check` the deployment node at the version the plan was made from (a deployment
//!    edited or deleted meanwhile is planned again; it also keeps a status `Create` from
//!    resurrecting a deleted deployment);
//! 2. `Set` every touched host's node, under the version read, with `allocated`
//!    recomputed as the sum over its assignments after the change (so drift heals);
//! 3. `Delete` the removed assignments and `Create` the new ones;
//! 4. `Set` (or `Create`) the status node under its version: the per-deployment lock.
//!
//! Every other field of a host's info is written back exactly as read: the version check
//! guarantees nobody changed it meanwhile.

use std::collections::BTreeSet;

use caas_core::{AppId, Version};

use super::plan::Plan;
use super::snapshot::Snapshot;
use super::status::DeploymentStatus;
use crate::assignment::Assignment;
use crate::store::Op;
use crate::zk::hosts::{assignment_path, host_path};
use crate::zk::layout::{deployment_path, deployment_status_path};

/// The op checking the deployment node is still at `version` (op 1).
pub fn check_op(app: &AppId, version: &Version, spec_version: i64) -> Op {
    Op::Check {
        path: deployment_path(app, version),
        version: spec_version,
    }
}

/// Applies `plan` to `snap` and returns ops 2 and 3 (see the module docs): the caller puts
/// [`check_op`] before them and [`status_op`] after (built from the changed snapshot).
/// `template` is what new instances run. On error (a host info that cannot be encoded) `snap`
/// may be partly changed: read it again.
pub fn apply(
    snap: &mut Snapshot,
    template: Option<&Assignment>,
    plan: &Plan,
) -> Result<Vec<Op>, String> {
    let mut ops = Vec::new();
    let touched: BTreeSet<&str> = plan
        .add
        .iter()
        .map(|(h, _)| h.as_str())
        .chain(plan.remove.iter().map(|r| r.host.as_str()))
        .collect();
    let mut tail = Vec::new();
    for r in &plan.remove {
        if let Some(h) = snap.hosts.get_mut(&r.host) {
            h.instances.remove(&r.id);
        }
        tail.push(Op::Delete {
            path: assignment_path(&r.host, &r.id),
            version: None,
        });
    }
    if !plan.add.is_empty() {
        let template = template.ok_or("new instances without an assignment template")?;
        let data = template.to_json();
        for (host, id) in &plan.add {
            let h = snap
                .hosts
                .get_mut(host)
                .ok_or_else(|| format!("plan places on unknown host {host}"))?;
            h.instances.insert(id.clone(), template.clone());
            tail.push(Op::Create {
                path: assignment_path(host, id),
                data: data.clone(),
            });
        }
    }
    for host in touched {
        let Some(h) = snap.hosts.get_mut(host) else {
            return Err(format!("plan touches unknown host {host}"));
        };
        h.info.allocated = h.used();
        let data = serde_json::to_vec(&h.info)
            .map_err(|e| format!("host {host}: cannot encode its info: {e}"))?;
        ops.push(Op::Set {
            path: host_path(host),
            data,
            version: Some(h.version),
        });
    }
    ops.extend(tail);
    Ok(ops)
}

/// The op writing `status` for `app`/`version`: a `Set` under the version read, or a
/// `Create` when there was no status node.
pub fn status_op(
    app: &AppId,
    version: &Version,
    status: &DeploymentStatus,
    status_version: Option<i64>,
) -> Op {
    let path = deployment_status_path(app, version);
    let data = status.to_json();
    match status_version {
        Some(v) => Op::Set {
            path,
            data,
            version: Some(v),
        },
        None => Op::Create { path, data },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::plan::{Removal, Why};
    use crate::scheduler::test_support::*;
    use crate::zk::hosts::HostInfo;

    #[test]
    fn ops_check_the_deployment_then_set_hosts_then_change_assignments() {
        let mut h1 = host("h1", 8 * GIB, 10_000, 10);
        run_as(&mut h1, "web-v1-0", "web", "v1", 64);
        h1.version = 7;
        let mut h2 = host("h2", 8 * GIB, 10_000, 10);
        h2.version = 3;
        h2.info.cpu_idle = Some(0.5);
        h2.info.labels.insert("zone".into(), "a".into());
        let mut s = snap(vec![h1, h2]);
        let d = spec(1, 64);
        let template = d.assignment(&app("web"), &ver("v1"));
        let plan = Plan {
            add: vec![("h2".into(), inst("web-v1-1"))],
            remove: vec![Removal {
                host: "h1".into(),
                id: inst("web-v1-0"),
                why: Why::Lost,
            }],
            next_instance: 2,
            desired: 1,
            unschedulable: None,
            rejected: Default::default(),
        };
        let mut ops = vec![check_op(&app("web"), &ver("v1"), 4)];
        ops.extend(apply(&mut s, Some(&template), &plan).unwrap());
        let paths: Vec<(&str, &str)> = ops
            .iter()
            .map(|o| {
                let kind = match o {
                    Op::Check { .. } => "check",
                    Op::Create { .. } => "create",
                    Op::Set { .. } => "set",
                    Op::Delete { .. } => "delete",
                };
                (kind, o.path())
            })
            .collect();
        assert_eq!(
            paths,
            [
                ("check", "/deployments/web/v1"),
                ("set", "/hosts/h1"),
                ("set", "/hosts/h2"),
                ("delete", "/hosts/h1/assignments/web-v1-0"),
                ("create", "/hosts/h2/assignments/web-v1-1"),
            ]
        );
        let Op::Set { data, version, .. } = &ops[2] else {
            panic!()
        };
        assert_eq!(*version, Some(3));
        let info: HostInfo = serde_json::from_slice(data).unwrap();
        assert_eq!(info.allocated.memory, 64 * MIB);
        assert_eq!(
            (info.allocated.cpu_shares, info.allocated.instances),
            (100, 1)
        );
        // Everything else is written back as read.
        assert_eq!(info.cpu_idle, Some(0.5));
        assert_eq!(info.labels["zone"], "a");
        let Op::Set { data, version, .. } = &ops[1] else {
            panic!()
        };
        assert_eq!(*version, Some(7));
        let info: HostInfo = serde_json::from_slice(data).unwrap();
        assert_eq!(info.allocated, Default::default(), "released");
        // The snapshot shows the change.
        assert!(s.hosts["h1"].instances.is_empty());
        assert!(s.hosts["h2"].instances.contains_key(&inst("web-v1-1")));
        let Op::Create { data, .. } = &ops[4] else {
            panic!()
        };
        assert_eq!(Assignment::from_json(data).unwrap(), template);
    }
}
