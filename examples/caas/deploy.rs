//! `caas deploy`, `caas scale` and `caas rollback`: write the change, then follow it until the
//! instances are healthy (or the update has finished), showing progress on stderr and
//! failing with the reason when it cannot succeed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{Value, json};

use crate::client::{Client, seg};
use crate::exit::Failure;

/// How often progress is polled.
const POLL: Duration = Duration::from_millis(500);

/// Progress lines on stderr: rewritten in place on a terminal, one per change otherwise.
pub(crate) struct Progress {
    tty: bool,
    last: String,
    quiet: bool,
}

impl Progress {
    /// Progress shown unless `quiet` (`--json`).
    pub(crate) fn new(quiet: bool) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last: String::new(),
            quiet,
        }
    }

    /// Shows `text` with the time since `started`: redrawn in place on a terminal, a new line
    /// only when `text` changes otherwise.
    pub(crate) fn show(&mut self, text: String, started: Instant) {
        if self.quiet || (!self.tty && text == self.last) {
            return;
        }
        let line = format!("{text} ({:.0} s)", started.elapsed().as_secs_f64());
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.last = text;
    }

    /// Ends the progress display (a newline on a terminal).
    pub(crate) fn done(&mut self) {
        if self.tty && !self.quiet && !self.last.is_empty() {
            eprintln!();
        }
    }
}

/// Where a deployment of one version stands, from `GET /v1/apps/{app}`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Every wanted instance is healthy.
    Ready { healthy: usize },
    /// Still going: healthy of desired, and a short word on the others.
    Pending {
        healthy: usize,
        desired: u64,
        note: String,
    },
    /// It cannot succeed without a change: why.
    Failed(String),
}

/// Reads the standing of `version` in an app view; with `want`, it is ready only once the
/// scheduler wants that many instances (a scale just written may not be seen yet).
pub(crate) fn standing(app: &Value, version: &str, want: Option<u64>) -> Standing {
    let Some(v) = app
        .get("versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v["version"] == version))
    else {
        return Standing::Pending {
            healthy: 0,
            desired: 0,
            note: "waiting for the version to appear".into(),
        };
    };
    if let Some(why) = v.get("invalid").and_then(Value::as_str) {
        return Standing::Failed(format!("the deployment is invalid: {why}"));
    }
    let instances: Vec<&Value> = app
        .get("instances")
        .and_then(Value::as_array)
        .map(|is| is.iter().filter(|i| i["version"] == version).collect())
        .unwrap_or_default();
    let healthy = instances
        .iter()
        .filter(|i| i["health"] == "healthy")
        .count();
    let Some(status) = v.get("status").filter(|s| !s.is_null()) else {
        return Standing::Pending {
            healthy,
            desired: 0,
            note: "waiting for a scheduler".into(),
        };
    };
    let desired = status.get("desired").and_then(Value::as_u64).unwrap_or(0);
    if want.is_some_and(|w| w != desired) {
        return Standing::Pending {
            healthy,
            desired,
            note: "waiting for the scheduler to see the change".into(),
        };
    }
    match status.get("phase").and_then(Value::as_str) {
        Some("unschedulable") => {
            return Standing::Failed(format!(
                "unschedulable: {}",
                status
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("no host fits")
            ));
        }
        Some("invalid") => {
            return Standing::Failed(format!(
                "invalid: {}",
                status.get("message").and_then(Value::as_str).unwrap_or("?")
            ));
        }
        _ => {}
    }
    // An image that cannot be pulled will not come by waiting.
    for i in &instances {
        let msg = i.get("message").and_then(Value::as_str).unwrap_or("");
        if msg.contains("pull") && i["health"] != "healthy" {
            return Standing::Failed(format!(
                "image pull failed on {}: {msg}",
                i["host"].as_str().unwrap_or("?")
            ));
        }
    }
    if status.get("phase").and_then(Value::as_str) == Some("running") && healthy as u64 >= desired {
        return Standing::Ready { healthy };
    }
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for i in instances.iter().filter(|i| i["health"] != "healthy") {
        let s = i["state"].as_str().unwrap_or("?").to_owned();
        *states.entry(s).or_default() += 1;
    }
    let note = states
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ");
    Standing::Pending {
        healthy,
        desired,
        note,
    }
}

/// The last word of the agents on the version's unhealthy instances (the last probe's answer).
fn last_messages(app: &Value, version: &str) -> String {
    let mut out = Vec::new();
    for i in app
        .get("instances")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if i["version"] == version
            && i["health"] != "healthy"
            && let Some(m) = i.get("message").and_then(Value::as_str)
        {
            out.push(format!("{}: {m}", i["id"].as_str().unwrap_or("?")));
        }
    }
    if out.is_empty() {
        String::from("no instance reported why")
    } else {
        out.join("; ")
    }
}

/// Follows `app:version` until healthy, failed or `timeout`; returns the last app view.
pub(crate) async fn wait_healthy(
    api: &Client,
    app: &str,
    version: &str,
    want: Option<u64>,
    timeout: Duration,
    progress: &mut Progress,
) -> Result<Value, Failure> {
    let started = Instant::now();
    loop {
        let view = api.get(&format!("/v1/apps/{}", seg(app))).await?;
        match standing(&view, version, want) {
            Standing::Ready { healthy } => {
                progress.show(
                    format!("{app}:{version}: {healthy}/{healthy} healthy"),
                    started,
                );
                progress.done();
                return Ok(view);
            }
            Standing::Failed(why) => {
                progress.done();
                return Err(Failure::deploy(format!("{app}:{version}: {why}")));
            }
            Standing::Pending {
                healthy,
                desired,
                note,
            } => {
                if started.elapsed() >= timeout {
                    progress.done();
                    return Err(Failure::timeout(format!(
                        "{app}:{version}: {healthy}/{desired} healthy after {} s ({note}); last: {}",
                        timeout.as_secs(),
                        last_messages(&view, version)
                    )));
                }
                let note = if note.is_empty() {
                    String::new()
                } else {
                    format!(" — {note}")
                };
                progress.show(
                    format!("{app}:{version}: {healthy}/{desired} healthy{note}"),
                    started,
                );
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Follows the app's rollout until it ends; `Ok` with its state when it succeeded.
pub(crate) async fn follow_rollout(
    api: &Client,
    app: &str,
    timeout: Duration,
    progress: &mut Progress,
) -> Result<Value, Failure> {
    let started = Instant::now();
    loop {
        let r = api.get(&format!("/v1/apps/{}/rollout", seg(app))).await?;
        let phase = r["phase"].as_str().unwrap_or("?");
        let (from, to) = (
            r["from"].as_str().unwrap_or("?"),
            r["to"].as_str().unwrap_or("?"),
        );
        let steps: Vec<u64> = r["steps"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let pct = r["step"]
            .as_u64()
            .and_then(|i| steps.get(usize::try_from(i).ok()?).copied());
        let detail = match (phase, pct) {
            ("shifting", Some(p)) => format!("{p}% of traffic on {to}"),
            ("draining", _) => format!("100% on {to}, draining {from}"),
            _ => String::new(),
        };
        let sep = if detail.is_empty() { "" } else { ", " };
        progress.show(
            format!("{app}: {from} → {to}: {phase}{sep}{detail}"),
            started,
        );
        match phase {
            "done" => {
                progress.done();
                return Ok(r);
            }
            "rolled_back" | "failed" => {
                progress.done();
                return Err(Failure::deploy(format!(
                    "{app}: update {from} → {to} {}: {}",
                    phase.replace('_', " "),
                    r["reason"].as_str().unwrap_or("no reason given")
                )));
            }
            _ => {}
        }
        if started.elapsed() >= timeout {
            progress.done();
            return Err(Failure::timeout(format!(
                "{app}: update {from} → {to} still {phase} after {} s (it goes on; `caas ps {app}` follows it)",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What `caas deploy` asks for.
pub(crate) struct DeployRequest {
    /// The app.
    pub(crate) app: String,
    /// The version.
    pub(crate) version: String,
    /// The deployment JSON from the flags (`None` for the image alone in an update).
    pub(crate) deployment: Value,
    /// Only `--image` (and maybe `--replicas`) was given.
    pub(crate) image_only: bool,
    /// Rolling-update settings.
    pub(crate) steps: Vec<u32>,
    /// Between steps.
    pub(crate) step_wait: Duration,
    /// Longest wait for the new version to be healthy.
    pub(crate) health_deadline: Duration,
    /// Longest wait for everything (zero: return once the change is written).
    pub(crate) timeout: Duration,
}

/// Deploys a version: a first version (or a redeploy of one) directly, a new version of an
/// app that serves another one as a rolling update.
pub(crate) async fn deploy(
    api: &Client,
    req: DeployRequest,
    json_out: bool,
) -> Result<Value, Failure> {
    let mut progress = Progress::new(json_out);
    let app_path = format!("/v1/apps/{}", seg(&req.app));
    let existing = match api.get(&app_path).await {
        Ok(v) => Some(v),
        Err(f) if f.code == crate::exit::NOT_FOUND => None,
        Err(f) => return Err(f),
    };
    let serving = existing
        .as_ref()
        .and_then(|v| serving_version(v, &req.version));
    let Some(from) = serving else {
        // A first version (or a version redeployed): written as is, one instance unless the
        // flags said otherwise.
        let mut deployment = req.deployment;
        if deployment.get("replicas").is_none() && deployment.get("global").is_none() {
            deployment["replicas"] = json!(1);
        }
        let written = api
            .call(
                Method::PUT,
                &format!("{app_path}/versions/{}", seg(&req.version)),
                Some(&deployment),
            )
            .await?;
        if req.timeout.is_zero() {
            return Ok(written);
        }
        progress.show(
            format!("{}:{}: deployment written", req.app, req.version),
            Instant::now(),
        );
        let want = deployment.get("replicas").and_then(Value::as_u64);
        return wait_healthy(
            api,
            &req.app,
            &req.version,
            want,
            req.timeout,
            &mut progress,
        )
        .await;
    };
    let mut body = json!({
        "version": req.version,
        "from": from,
        "steps": req.steps,
        "step_wait_ms": millis(req.step_wait),
        "health_deadline_ms": millis(req.health_deadline),
    });
    if req.image_only {
        body["image"] = req.deployment["image"].clone();
        if let Some(r) = req.deployment.get("replicas") {
            body["replicas"] = r.clone();
        }
    } else {
        body["deployment"] = req.deployment;
    }
    let started = api
        .call(Method::POST, &format!("{app_path}/rollouts"), Some(&body))
        .await?;
    if req.timeout.is_zero() {
        return Ok(started);
    }
    follow_rollout(api, &req.app, req.timeout, &mut progress).await
}

/// `caas rollback APP`: reverts the app's last finished update and follows it.
pub(crate) async fn rollback(
    api: &Client,
    app: &str,
    timeout: Duration,
    json_out: bool,
) -> Result<Value, Failure> {
    let mut progress = Progress::new(json_out);
    api.call(
        Method::POST,
        &format!("/v1/apps/{}/rollback", seg(app)),
        None,
    )
    .await?;
    follow_rollout(api, app, timeout, &mut progress).await
}

/// The version of an app that serves now and is not `new`: its default version, else the
/// only version with healthy instances.
fn serving_version(app: &Value, new: &str) -> Option<String> {
    if let Some(d) = app["default_version"].as_str()
        && d != new
    {
        return Some(d.to_owned());
    }
    let mut serving: Vec<&str> = app["instances"]
        .as_array()?
        .iter()
        .filter(|i| i["health"] == "healthy" && i["version"] != new)
        .filter_map(|i| i["version"].as_str())
        .collect();
    serving.dedup();
    match serving.as_slice() {
        [one] => Some((*one).to_owned()),
        _ => None,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(phase: &str, healths: &[(&str, &str, Option<&str>)]) -> Value {
        json!({
            "app": "hello", "default_version": null,
            "versions": [{"version": "v1", "status": {"phase": phase, "desired": healths.len(),
                "message": "cannot place 1 instance: capacity rejected h1"}}],
            "instances": healths.iter().enumerate().map(|(n, (h, s, m))| json!({
                "id": format!("hello-v1-{n}"), "version": "v1", "host": "h1",
                "health": h, "state": s, "message": m})).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn a_version_is_ready_when_running_with_every_instance_healthy() {
        let v = view(
            "running",
            &[("healthy", "running", None), ("healthy", "running", None)],
        );
        assert_eq!(standing(&v, "v1", None), Standing::Ready { healthy: 2 });
        assert!(
            matches!(standing(&v, "v1", Some(3)), Standing::Pending { .. }),
            "a scale to 3 the scheduler has not seen yet is not done"
        );
    }

    #[test]
    fn pending_instances_are_counted_by_state() {
        let v = view(
            "deploying",
            &[
                ("healthy", "running", None),
                ("unknown", "starting", None),
                ("unknown", "assigned", None),
            ],
        );
        assert_eq!(
            standing(&v, "v1", None),
            Standing::Pending {
                healthy: 1,
                desired: 3,
                note: "1 assigned, 1 starting".into()
            }
        );
    }

    #[test]
    fn unschedulable_and_pull_failures_fail_at_once_with_the_reason() {
        let v = view("unschedulable", &[]);
        let Standing::Failed(why) = standing(&v, "v1", None) else {
            panic!("{v}")
        };
        assert!(why.contains("capacity rejected h1"), "{why}");
        let v = view(
            "deploying",
            &[(
                "unknown",
                "failed",
                Some("image pull failed: manifest unknown"),
            )],
        );
        let Standing::Failed(why) = standing(&v, "v1", None) else {
            panic!("{v}")
        };
        assert!(why.starts_with("image pull failed on h1"), "{why}");
    }

    #[test]
    fn the_serving_version_is_the_default_one_or_the_only_healthy_one() {
        let mut v = view("running", &[("healthy", "running", None)]);
        assert_eq!(serving_version(&v, "v2").as_deref(), Some("v1"));
        assert_eq!(
            serving_version(&v, "v1"),
            None,
            "redeploying v1 is no update"
        );
        v["instances"] = json!([]);
        assert_eq!(
            serving_version(&v, "v2"),
            None,
            "nothing serves: a first deploy"
        );
        v["default_version"] = json!("v1");
        assert_eq!(serving_version(&v, "v2").as_deref(), Some("v1"));
    }
}
