//! The deployment: what `/deployments/{appId}/{version}` holds, the desired state the
//! scheduler turns into assignments.
//!
//! ```json
//! {"image": "127.0.0.1:5000/hello:v1", "replicas": 3, "container_port": 8080,
//!  "memory": "512m", "cpu_shares": 1024, "health": {"path": "/_ping"},
//!  "strategy": "most_free_memory", "constraints": ["zone==a", "disk!=hdd"],
//!  "spread": true, "affinity": ["app==db"], "anti_affinity": ["app==batch"],
//!  "global": false,
//!  "sidecars": [{"name": "cache", "image": "127.0.0.1:5000/hello-cache:v1",
//!                "memory": "64m", "cpu_shares": 256}]}
//! ```
//!
//! Required: `image`, `container_port`, and `replicas` or `"global": true` (not both). The
//! rest defaults: `memory` 512m, `cpu_shares` 1024, `health` as in an assignment, `strategy`
//! `most_free_memory`, no constraints, no spread, no affinity, no sidecars. The fields an
//! assignment shares are checked exactly as an assignment's ([`Assignment::validate`]):
//! the image must be `{registry}/{appId}:{version}` of the node's own app and version.

use std::fmt;
use std::str::FromStr;

use caas_core::{AppId, Version};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::assignment::{Assignment, AssignmentError, HealthPolicy, MemoryLimit, Sidecar};

/// The most replicas one deployment may ask for (one commit holds them all).
pub const MAX_REPLICAS: u32 = 10_000;

/// Why a deployment node was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    /// The JSON did not parse (syntax, unknown key, wrong type, bad constraint...).
    #[error("invalid deployment JSON: {0}")]
    Json(String),
    /// `replicas` and `global` are both given, or neither, or out of range.
    #[error("invalid deployment: {0}")]
    Replicas(String),
    /// A field shared with the assignment is invalid.
    #[error("invalid deployment: {0}")]
    Assignment(#[from] AssignmentError),
}

/// How the hosts that pass every filter are ranked (see [`super::placement`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Most free memory first: `capacity.memory - allocated.memory`.
    #[default]
    MostFreeMemory,
    /// Most measured CPU idle first (`HostInfo.cpu_idle`).
    LeastCpu,
    /// Fewest instances of this app first, then most free memory.
    Spread,
    /// The fullest host that still fits: least free memory after placing first.
    Binpack,
}

impl Strategy {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::MostFreeMemory => "most_free_memory",
            Strategy::LeastCpu => "least_cpu",
            Strategy::Spread => "spread",
            Strategy::Binpack => "binpack",
        }
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            Strategy::MostFreeMemory,
            Strategy::LeastCpu,
            Strategy::Spread,
            Strategy::Binpack,
        ]
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| {
            format!("unknown strategy {s:?} (use most_free_memory, least_cpu, spread or binpack)")
        })
    }
}

/// A label constraint: `key==value` or `key!=value`; the key `hostname` is the host id.
/// A host without the label fails `==` and passes `!=`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Constraint {
    /// The label (or `hostname`).
    pub key: String,
    /// `true` for `==`, `false` for `!=`.
    pub equal: bool,
    /// The value compared with.
    pub value: String,
}

impl Constraint {
    /// Whether a host with this id and these labels passes.
    pub fn matches(&self, host: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
        let actual = if self.key == "hostname" {
            Some(host)
        } else {
            labels.get(&self.key).map(String::as_str)
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

impl FromStr for Constraint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value, equal) = if let Some((k, v)) = s.split_once("==") {
            (k, v, true)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, v, false)
        } else {
            return Err(format!(
                "constraint {s:?}: expected key==value or key!=value"
            ));
        };
        if !valid_token(key) || !valid_token(value) {
            return Err(format!(
                "constraint {s:?}: key and value must be 1-253 characters of [A-Za-z0-9-_./]"
            ));
        }
        Ok(Self {
            key: key.to_owned(),
            equal,
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.equal { "==" } else { "!=" };
        write!(f, "{}{op}{}", self.key, self.value)
    }
}

/// An (anti-)affinity rule: `app==ID`, another app whose instances a host must run (affinity)
/// or must not run (anti-affinity).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AppRule {
    /// The other app.
    pub app: AppId,
}

impl FromStr for AppRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let app = s
            .strip_prefix("app==")
            .ok_or_else(|| format!("affinity {s:?}: expected app==APPID"))?;
        AppId::new(app)
            .map(|app| Self { app })
            .map_err(|e| format!("affinity {s:?}: {e}"))
    }
}

impl fmt::Display for AppRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "app=={}", self.app)
    }
}

macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(Constraint);
string_serde!(AppRule);

fn default_memory() -> MemoryLimit {
    MemoryLimit::from_bytes(512 << 20)
}

fn default_cpu_shares() -> u32 {
    1024
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_default_health(h: &HealthPolicy) -> bool {
    *h == HealthPolicy::default()
}

/// The desired state of one app version (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Image reference, `{registry}/{appId}:{version}`.
    pub image: String,
    /// How many instances to run (absent with `global`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// The port the app listens on inside the container.
    pub container_port: u16,
    /// Memory limit of the main container (`"512m"`, `"1g"`, or bytes); default 512m.
    #[serde(default = "default_memory")]
    pub memory: MemoryLimit,
    /// CPU shares of the main container (2..=262144); default 1024.
    #[serde(default = "default_cpu_shares")]
    pub cpu_shares: u32,
    /// Health checking, as in an assignment.
    #[serde(default, skip_serializing_if = "is_default_health")]
    pub health: HealthPolicy,
    /// How eligible hosts are ranked; default `most_free_memory`.
    #[serde(default)]
    pub strategy: Strategy,
    /// Label constraints every chosen host must pass (`key==value`, `key!=value`,
    /// `hostname==ID`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// At most `max_per_host` (default 1) instances of this version per host.
    #[serde(default, skip_serializing_if = "is_false")]
    pub spread: bool,
    /// Cap of instances of this version per host (with `spread`, default 1; without, none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_host: Option<u32>,
    /// Only hosts running an instance of each of these apps (`app==ID`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity: Vec<AppRule>,
    /// Never hosts running an instance of any of these apps (`app==ID`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anti_affinity: Vec<AppRule>,
    /// One instance on every eligible host instead of `replicas`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub global: bool,
    /// Containers run as one unit with each instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<Sidecar>,
}

impl Deployment {
    /// A replicated deployment with every optional field at its default.
    pub fn new(image: impl Into<String>, container_port: u16, replicas: u32) -> Self {
        Self {
            image: image.into(),
            replicas: Some(replicas),
            container_port,
            memory: default_memory(),
            cpu_shares: default_cpu_shares(),
            health: HealthPolicy::default(),
            strategy: Strategy::default(),
            constraints: Vec::new(),
            spread: false,
            max_per_host: None,
            affinity: Vec::new(),
            anti_affinity: Vec::new(),
            global: false,
            sidecars: Vec::new(),
        }
    }

    /// Parses and validates the node of `app` / `version`.
    pub fn from_json(app: &AppId, version: &Version, json: &[u8]) -> Result<Self, DeploymentError> {
        let d: Deployment =
            serde_json::from_slice(json).map_err(|e| DeploymentError::Json(e.to_string()))?;
        d.validate(app, version)?;
        Ok(d)
    }

    /// The stored JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, numbers and lists of them: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks what serde cannot (see the module docs).
    pub fn validate(&self, app: &AppId, version: &Version) -> Result<(), DeploymentError> {
        match (self.replicas, self.global) {
            (Some(_), true) => {
                return Err(DeploymentError::Replicas(
                    "give \"replicas\" or \"global\": true, not both".into(),
                ));
            }
            (None, false) => {
                return Err(DeploymentError::Replicas(
                    "\"replicas\" is required (or \"global\": true)".into(),
                ));
            }
            (Some(n), false) if n > MAX_REPLICAS => {
                return Err(DeploymentError::Replicas(format!(
                    "replicas {n} is over the maximum of {MAX_REPLICAS}"
                )));
            }
            _ => {}
        }
        if self.max_per_host == Some(0) {
            return Err(DeploymentError::Replicas(
                "max_per_host must be at least 1".into(),
            ));
        }
        self.assignment(app, version).validate()?;
        Ok(())
    }

    /// The assignment every instance gets.
    pub fn assignment(&self, app: &AppId, version: &Version) -> Assignment {
        Assignment {
            app: app.clone(),
            version: version.clone(),
            image: self.image.clone(),
            container_port: self.container_port,
            memory: self.memory,
            cpu_shares: self.cpu_shares,
            health: self.health.clone(),
            sidecars: self.sidecars.clone(),
        }
    }

    /// The per-host cap of this version's instances, if any.
    pub fn per_host_cap(&self) -> Option<u32> {
        match (self.spread, self.max_per_host) {
            (_, Some(n)) => Some(n),
            (true, None) => Some(1),
            (false, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn app() -> AppId {
        AppId::new("hello").unwrap()
    }
    fn v1() -> Version {
        Version::new("v1").unwrap()
    }
    fn parse(json: &str) -> Result<Deployment, DeploymentError> {
        Deployment::from_json(&app(), &v1(), json.as_bytes())
    }

    const FULL: &str = r#"{"image": "127.0.0.1:5000/hello:v1", "replicas": 3, "container_port": 8080,
        "memory": "512m", "cpu_shares": 1024, "health": {"path": "/_ping"},
        "strategy": "most_free_memory", "constraints": ["zone==a", "disk!=hdd"],
        "spread": true, "affinity": ["app==db"], "anti_affinity": ["app==batch"],
        "global": false,
        "sidecars": [{"name": "cache", "image": "127.0.0.1:5000/hello-cache:v1", "memory": "64m", "cpu_shares": 256}]}"#;

    #[test]
    fn the_documented_example_parses_and_round_trips() {
        let d = parse(FULL).unwrap();
        assert_eq!(d.replicas, Some(3));
        assert_eq!(d.constraints.len(), 2);
        assert!(d.constraints[0].equal && !d.constraints[1].equal);
        assert_eq!(d.affinity[0].app.as_str(), "db");
        assert_eq!(d.anti_affinity[0].app.as_str(), "batch");
        assert_eq!(d.per_host_cap(), Some(1));
        let a = d.assignment(&app(), &v1());
        assert_eq!(a.total_memory(), (512 + 64) << 20);
        assert_eq!(a.total_cpu_shares(), 1024 + 256);
        let back = parse(std::str::from_utf8(&d.to_json()).unwrap()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn minimal_deployments_take_the_defaults() {
        let d =
            parse(r#"{"image": "127.0.0.1:5000/hello:v1", "container_port": 8080, "replicas": 2}"#)
                .unwrap();
        assert_eq!(d, Deployment::new("127.0.0.1:5000/hello:v1", 8080, 2));
        assert_eq!(d.memory.to_string(), "512m");
        assert_eq!((d.cpu_shares, d.strategy), (1024, Strategy::MostFreeMemory));
        assert_eq!(d.per_host_cap(), None);
        let g =
            parse(r#"{"image": "127.0.0.1:5000/hello:v1", "container_port": 1, "global": true}"#)
                .unwrap();
        assert!(g.global && g.replicas.is_none());
        let capped = parse(
            r#"{"image": "127.0.0.1:5000/hello:v1", "container_port": 1, "replicas": 4,
                "spread": true, "max_per_host": 2}"#,
        )
        .unwrap();
        assert_eq!(capped.per_host_cap(), Some(2));
    }

    #[test]
    fn bad_nodes_say_what_is_wrong() {
        let base = r#""image": "127.0.0.1:5000/hello:v1", "container_port": 8080"#;
        for (json, needle) in [
            ("{", "invalid deployment JSON"),
            (
                r#"{"container_port": 8080, "replicas": 1}"#,
                "missing field `image`",
            ),
            (
                r#"{"image": "127.0.0.1:5000/hello:v1", "replicas": 1}"#,
                "missing field `container_port`",
            ),
            (&format!("{{{base}}}"), "\"replicas\" is required"),
            (
                &format!(r#"{{{base}, "replicas": 1, "global": true}}"#),
                "not both",
            ),
            (
                &format!(r#"{{{base}, "replicas": 20000}}"#),
                "over the maximum",
            ),
            (&format!(r#"{{{base}, "replicas": -1}}"#), "invalid value"),
            (
                &format!(r#"{{{base}, "replicas": 1, "max_per_host": 0}}"#),
                "max_per_host",
            ),
            (
                &format!(r#"{{{base}, "replicas": 1, "strategy": "random"}}"#),
                "unknown variant `random`",
            ),
            (
                &format!(r#"{{{base}, "replicas": 1, "constraints": ["zone=a"]}}"#),
                "expected key==value",
            ),
            (
                &format!(r#"{{{base}, "replicas": 1, "constraints": ["==a"]}}"#),
                "1-253 characters",
            ),
            (
                &format!(r#"{{{base}, "replicas": 1, "affinity": ["db"]}}"#),
                "expected app==APPID",
            ),
            (
                &format!(r#"{{{base}, "replicas": 1, "anti_affinity": ["app==Bad"]}}"#),
                "app id",
            ),
            (
                &format!(r#"{{{base}, "replicas": 1, "colour": "red"}}"#),
                "unknown field `colour`",
            ),
            (
                &format!(r#"{{{base}, "replicas": 1, "memory": "1m"}}"#),
                "6 MiB",
            ),
            (
                &format!(r#"{{{base}, "replicas": 1, "cpu_shares": 1}}"#),
                "cpu_shares",
            ),
            (
                r#"{"image": "127.0.0.1:5000/other:v1", "container_port": 1, "replicas": 1}"#,
                "not the app id",
            ),
            (
                r#"{"image": "127.0.0.1:5000/hello:v2", "container_port": 1, "replicas": 1}"#,
                "not the version",
            ),
            (
                r#"{"image": "127.0.0.1:5000/hello:v1", "container_port": 0, "replicas": 1}"#,
                "container_port",
            ),
            (
                &format!(
                    r#"{{{base}, "replicas": 1, "sidecars": [{{"name": "c", "image": "c:v1", "memory": "64m"}}]}}"#
                ),
                "no registry",
            ),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.to_string().contains(needle), "{json}: {e}");
        }
    }

    #[test]
    fn constraints_match_labels_and_host_ids() {
        let labels = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
        for (c, host, want) in [
            ("zone==a", "h1", true),
            ("zone==b", "h1", false),
            ("zone!=a", "h1", false),
            ("zone!=b", "h1", true),
            ("disk==ssd", "h1", false),
            ("disk!=hdd", "h1", true),
            ("hostname==h1", "h1", true),
            ("hostname==h1", "h2", false),
            ("hostname!=h1", "h2", true),
        ] {
            let parsed: Constraint = c.parse().unwrap();
            assert_eq!(parsed.to_string(), c);
            assert_eq!(parsed.matches(host, &labels), want, "{c} on {host}");
        }
        assert_eq!("spread".parse::<Strategy>().unwrap(), Strategy::Spread);
        assert!("nope".parse::<Strategy>().unwrap_err().contains("binpack"));
    }
}
