//! What `/hosts/{hostId}/status/{instanceId}` says about an instance, derived from what the
//! agent tracks (pure), so the agent writes the node only when this changes — never per
//! health probe.
//!
//! | phase | health | state |
//! |---|---|---|
//! | starting (pull, create) | — | `starting` |
//! | running or held | registered | `healthy` |
//! | running or held | not registered: no passing check yet, or failing | `unhealthy` |
//! | waiting after an exit or a failed check | — | `restarting` |
//! | waiting after a failed start | — | `failed` |
//! | stopped by its failure policy | — | `failed` |
//! | removing | — | `removing` |
//!
//! `address`, `container` and `started_at_ms` are given while the unit runs (the port is
//! bound); `message` says why the instance is not healthy (the pull or run error, the exit,
//! the last failed probe's answer) and is absent once it is.

use std::net::IpAddr;

use super::instance::{Instance, Phase};
use crate::zk::hosts::{InstanceState, InstanceStatus};

/// The status node's content for `inst`, published on `ip`.
pub(super) fn status_of(inst: &Instance, ip: IpAddr) -> InstanceStatus {
    let up = inst.phase.is_up();
    let state = match inst.phase {
        Phase::Starting => InstanceState::Starting,
        Phase::Running | Phase::Held if inst.supervisor.is_registered() => InstanceState::Healthy,
        Phase::Running | Phase::Held => InstanceState::Unhealthy,
        Phase::Waiting if inst.start_failed => InstanceState::Failed,
        Phase::Waiting => InstanceState::Restarting,
        Phase::Stopped => InstanceState::Failed,
        Phase::Removing => InstanceState::Removing,
    };
    InstanceStatus {
        app: inst.assignment.app.clone(),
        version: inst.assignment.version.clone(),
        state,
        address: up.then(|| inst.addr(ip).to_string()),
        container: inst.container.clone().filter(|_| up),
        restarts: inst.restarts,
        started_at_ms: inst.started_at_ms.filter(|_| up),
        message: inst
            .message
            .clone()
            .filter(|_| state != InstanceState::Healthy),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use caas_core::InstanceId;
    use tokio::time::Instant;

    use super::*;
    use crate::assignment::Assignment;
    use crate::health::{Backoff, HealthState, KillLimiter};

    fn instance() -> Instance {
        let a = Assignment::from_json(
            br#"{"app": "hello", "version": "v1", "image": "127.0.0.1:5000/hello:v1",
                 "container_port": 8080, "memory": "64m", "cpu_shares": 512}"#,
        )
        .unwrap();
        Instance::new(
            InstanceId::new("i1").unwrap(),
            a,
            25701,
            Backoff::new(Duration::from_secs(1), Duration::from_secs(8)),
            Duration::from_secs(60),
        )
    }

    fn running(mut inst: Instance) -> Instance {
        inst.phase = Phase::Running;
        inst.container = Some("c1".into());
        inst.started_at_ms = Some(1_700_000_000_000);
        inst
    }

    fn healthy(mut inst: Instance) -> Instance {
        let mut limiter = KillLimiter::new(10);
        inst.supervisor
            .on_health(HealthState::Healthy, &mut limiter, Instant::now());
        inst
    }

    #[test]
    fn states_as_a_user_sees_them() {
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let with = |mut inst: Instance, phase, failed, message: Option<&str>| {
            inst.phase = phase;
            inst.start_failed = failed;
            inst.message = message.map(str::to_owned);
            inst
        };
        let rows: Vec<(&str, Instance, InstanceState, Option<&str>, bool)> = vec![
            ("new", instance(), InstanceState::Starting, None, false),
            (
                "running, no pass yet",
                running(instance()),
                InstanceState::Unhealthy,
                None,
                true,
            ),
            (
                "running, failing",
                with(running(instance()), Phase::Running, false, Some("HTTP 503")),
                InstanceState::Unhealthy,
                Some("HTTP 503"),
                true,
            ),
            (
                "held by the kill limit",
                with(running(instance()), Phase::Held, false, Some("HTTP 503")),
                InstanceState::Unhealthy,
                Some("HTTP 503"),
                true,
            ),
            (
                "registered",
                healthy(with(
                    running(instance()),
                    Phase::Running,
                    false,
                    Some("old"),
                )),
                InstanceState::Healthy,
                None,
                true,
            ),
            (
                "restart after an exit",
                with(
                    running(instance()),
                    Phase::Waiting,
                    false,
                    Some("exited (code 137)"),
                ),
                InstanceState::Restarting,
                Some("exited (code 137)"),
                false,
            ),
            (
                "start failed",
                with(
                    instance(),
                    Phase::Waiting,
                    true,
                    Some("image pull failed: x"),
                ),
                InstanceState::Failed,
                Some("image pull failed: x"),
                false,
            ),
            (
                "removed by policy",
                with(instance(), Phase::Stopped, false, Some("removed by policy")),
                InstanceState::Failed,
                Some("removed by policy"),
                false,
            ),
            (
                "removing",
                with(running(instance()), Phase::Removing, false, None),
                InstanceState::Removing,
                None,
                false,
            ),
        ];
        for (name, inst, state, message, up) in rows {
            let s = status_of(&inst, ip);
            assert_eq!(s.state, state, "{name}");
            assert_eq!(s.message.as_deref(), message, "{name}");
            assert_eq!(s.address.is_some(), up, "{name}: address only while bound");
            assert_eq!(s.started_at_ms.is_some(), up, "{name}");
            assert_eq!(s.container.is_some(), up, "{name}");
            if up {
                assert_eq!(s.address.as_deref(), Some("127.0.0.2:25701"), "{name}");
            }
            assert_eq!((s.app.as_str(), s.version.as_str()), ("hello", "v1"));
        }
    }

    #[test]
    fn restarts_are_carried() {
        let mut inst = running(instance());
        inst.restarts = 3;
        assert_eq!(status_of(&inst, "127.0.0.2".parse().unwrap()).restarts, 3);
    }
}
