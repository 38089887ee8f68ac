//! The assignment of one container to one host: what the scheduler writes under
//! `/caas/hosts/{hostId}/assignments/{instanceId}` and what the host agent runs.
//!
//! The JSON keys are a contract (outside checks read them), so the struct is
//! `deny_unknown_fields` and every key keeps its name:
//!
//! ```json
//! {"app": "hello", "version": "v1", "image": "127.0.0.1:5000/hello:v1",
//!  "container_port": 8080, "memory": "512m", "cpu_shares": 1024,
//!  "health": {"path": "/_ping", "interval_ms": 1000, "timeout_ms": 500, "fall": 3,
//!             "rise": 1, "grace_ms": 5000, "policy": "restart"},
//!  "sidecars": [{"name": "cache", "image": "127.0.0.1:5000/hello-cache:v1",
//!                "memory": "64m", "cpu_shares": 256}]}
//! ```
//!
//! `sidecars` (optional, omitted when empty, so older agents and nodes read the same JSON)
//! are containers that belong to the instance and run on its host as one unit with the main
//! container: pulled, started, restarted and removed together. Only the main container
//! publishes a port, is health-checked and is registered.
//!
//! `health` and each of its fields are optional; see [`HealthPolicy`] for the defaults and
//! how they compare with Kubernetes' probe defaults. Parsing checks types and id syntax;
//! [`Assignment::validate`] checks the rest (image shape, ranges) and is called by
//! [`Assignment::from_json`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use caas_core::{AppId, IdError, Version};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an assignment was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    /// The JSON did not parse (syntax, unknown key, bad id, bad memory string...).
    #[error("invalid assignment JSON: {0}")]
    Json(String),
    /// The image reference is not `{registry}/{appId}:{version}` for this app and version.
    #[error("invalid image {image:?}: {why} (expected \"{{registry}}/{{appId}}:{{version}}\")")]
    Image {
        /// The rejected reference.
        image: String,
        /// What is wrong with it.
        why: String,
    },
    /// A numeric field is outside its allowed range.
    #[error("invalid {field}: {value} ({why})")]
    Range {
        /// The JSON key.
        field: &'static str,
        /// The rejected value, as text.
        value: String,
        /// The allowed range.
        why: &'static str,
    },
    /// An id inside the image reference is invalid.
    #[error("invalid image {image:?}: {source}")]
    ImageId {
        /// The rejected reference.
        image: String,
        /// The id error.
        source: IdError,
    },
}

/// One container to run: the JSON stored per instance in ZooKeeper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The app this container serves.
    pub app: AppId,
    /// The app version (also the image tag).
    pub version: Version,
    /// Image reference, `{registry}/{appId}:{version}`.
    pub image: String,
    /// The port the app listens on inside the container.
    pub container_port: u16,
    /// Memory limit: `"512m"`, `"1g"`, `"65536k"` or a byte count.
    pub memory: MemoryLimit,
    /// Relative CPU weight (Docker `--cpu-shares`, 2..=262144; 1024 is one "normal" share).
    pub cpu_shares: u32,
    /// Health checking and what to do on failure.
    #[serde(default)]
    pub health: HealthPolicy,
    /// Containers started, restarted and removed together with the main one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<Sidecar>,
}

/// A container that runs beside an instance's main container, as part of the same unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// Unique within the instance: 1-63 characters of `[a-z0-9-]` (it is part of the
    /// container's name and labels).
    pub name: String,
    /// Image reference `{registry}/{repository}:{tag}` (any repository of the registry).
    pub image: String,
    /// Memory limit, as the main container's.
    pub memory: MemoryLimit,
    /// Relative CPU weight, 2..=262144.
    #[serde(default = "Sidecar::default_cpu_shares")]
    pub cpu_shares: u32,
}

impl Sidecar {
    fn default_cpu_shares() -> u32 {
        256
    }

    /// Checks the name, image shape and limits.
    pub fn validate(&self) -> Result<(), AssignmentError> {
        if caas_core::InstanceId::new(&self.name).is_err() {
            return Err(AssignmentError::Range {
                field: "sidecars.name",
                value: format!("{:?}", self.name),
                why: "must be 1-63 characters of [a-z0-9-]",
            });
        }
        ImageRef::parse(&self.image)?;
        if self.memory.bytes() < MemoryLimit::MIN {
            return Err(range(
                "sidecars.memory",
                self.memory,
                "Docker's minimum is 6 MiB (\"6m\")",
            ));
        }
        if !(2..=262_144).contains(&self.cpu_shares) {
            return Err(range(
                "sidecars.cpu_shares",
                self.cpu_shares,
                "must be 2..=262144",
            ));
        }
        Ok(())
    }
}

impl Assignment {
    /// Parses and validates assignment JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, AssignmentError> {
        let a: Assignment =
            serde_json::from_slice(json).map_err(|e| AssignmentError::Json(e.to_string()))?;
        a.validate()?;
        Ok(a)
    }

    /// Serializes to the stored JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks what serde cannot: image shape, port, limits and health ranges.
    pub fn validate(&self) -> Result<(), AssignmentError> {
        let image = ImageRef::parse(&self.image)?;
        if image.repository != self.app.as_str() {
            return Err(AssignmentError::Image {
                image: self.image.clone(),
                why: format!(
                    "repository {:?} is not the app id {:?}",
                    image.repository,
                    self.app.as_str()
                ),
            });
        }
        if image.tag != self.version.as_str() {
            return Err(AssignmentError::Image {
                image: self.image.clone(),
                why: format!(
                    "tag {:?} is not the version {:?}",
                    image.tag,
                    self.version.as_str()
                ),
            });
        }
        if self.container_port == 0 {
            return Err(range("container_port", 0, "must be 1..=65535"));
        }
        if self.memory.bytes() < MemoryLimit::MIN {
            return Err(range(
                "memory",
                self.memory,
                "Docker's minimum is 6 MiB (\"6m\")",
            ));
        }
        if !(2..=262_144).contains(&self.cpu_shares) {
            return Err(range("cpu_shares", self.cpu_shares, "must be 2..=262144"));
        }
        for (i, sidecar) in self.sidecars.iter().enumerate() {
            sidecar.validate()?;
            if self.sidecars[..i].iter().any(|s| s.name == sidecar.name) {
                return Err(AssignmentError::Range {
                    field: "sidecars.name",
                    value: format!("{:?}", sidecar.name),
                    why: "sidecar names must be unique within an instance",
                });
            }
        }
        self.health.validate()
    }

    /// Memory of the unit: the main container and its sidecars.
    pub fn total_memory(&self) -> u64 {
        self.memory.bytes() + self.sidecars.iter().map(|s| s.memory.bytes()).sum::<u64>()
    }

    /// CPU shares of the unit: the main container and its sidecars.
    pub fn total_cpu_shares(&self) -> u64 {
        u64::from(self.cpu_shares)
            + self
                .sidecars
                .iter()
                .map(|s| u64::from(s.cpu_shares))
                .sum::<u64>()
    }
}

fn range(field: &'static str, value: impl fmt::Display, why: &'static str) -> AssignmentError {
    AssignmentError::Range {
        field,
        value: value.to_string(),
        why,
    }
}

/// A parsed `{registry}/{repository}:{tag}` image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host and optional port, e.g. `127.0.0.1:5000`.
    pub registry: String,
    /// Repository (the app id).
    pub repository: String,
    /// Tag (the version).
    pub tag: String,
}

impl ImageRef {
    /// Parses `{registry}/{appId}:{version}`; the registry must look like a host
    /// (contain a `.` or a `:`, or be `localhost`) so Docker does not read it as a Docker Hub
    /// namespace, and repository and tag must be valid app id and version.
    pub fn parse(image: &str) -> Result<Self, AssignmentError> {
        let bad = |why: &str| AssignmentError::Image {
            image: image.to_owned(),
            why: why.to_owned(),
        };
        let (registry, rest) = image
            .split_once('/')
            .ok_or_else(|| bad("no registry part before '/'"))?;
        if registry.is_empty() {
            return Err(bad("empty registry"));
        }
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(bad(
                "registry must be a host name with a '.' or a port, or localhost",
            ));
        }
        if rest.contains('/') {
            return Err(bad("nested repository paths are not allowed"));
        }
        if rest.contains('@') {
            return Err(bad("digests are not allowed, use the version tag"));
        }
        let (repository, tag) = rest
            .split_once(':')
            .ok_or_else(|| bad("no ':{version}' tag"))?;
        let id_err = |source| AssignmentError::ImageId {
            image: image.to_owned(),
            source,
        };
        AppId::new(repository).map_err(id_err)?;
        Version::new(tag).map_err(id_err)?;
        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        })
    }
}

/// A memory limit in bytes; parsed from `"512m"`, `"1g"`, `"64k"`, `"1073741824"` or a JSON
/// number (suffixes are binary, case-insensitive, optionally followed by `b`, as Docker's
/// `-m`). Serialized in the shortest exact suffix form (`"512m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryLimit(u64);

impl MemoryLimit {
    /// Docker refuses limits under 6 MiB.
    pub const MIN: u64 = 6 * 1024 * 1024;

    /// A limit of `bytes` bytes.
    pub fn from_bytes(bytes: u64) -> Self {
        Self(bytes)
    }

    /// The limit in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a memory string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid memory {value:?}: {why} (use e.g. \"512m\", \"1g\" or a byte count)")]
pub struct MemoryError {
    value: String,
    why: &'static str,
}

impl FromStr for MemoryLimit {
    type Err = MemoryError;
    fn from_str(s: &str) -> Result<Self, MemoryError> {
        let err = |why| MemoryError {
            value: s.to_owned(),
            why,
        };
        let t = s.trim().to_ascii_lowercase();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("must start with a number"));
        }
        let (num, suffix) = t.split_at(digits);
        let n: u64 = num.parse().map_err(|_| err("number too large"))?;
        let shift = match suffix {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(err("unknown unit (use b, k, m, g or t)")),
        };
        n.checked_mul(1u64 << shift)
            .map(Self)
            .ok_or_else(|| err("too large"))
    }
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, "t"), (30, "g"), (20, "m"), (10, "k")] {
            let div = 1u64 << shift;
            if self.0 >= div && self.0 % div == 0 {
                return write!(f, "{}{unit}", self.0 / div);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for MemoryLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MemoryLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(Self(b)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// What to do with a container whose health check failed `fall` times in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Deregister, then restart the container (with backoff).
    #[default]
    Restart,
    /// Deregister, then remove the container for good.
    Remove,
}

/// Active health checking of one container: `GET {path}` on its published port.
///
/// Defaults, compared with a Kubernetes readiness probe (periodSeconds 10, timeoutSeconds 1,
/// failureThreshold 3, successThreshold 1, initialDelaySeconds 0):
///
/// | field | caas | Kubernetes | why |
/// |---|---|---|---|
/// | `interval_ms` | 2000 | 10000 | the gateway must stop routing to a hung container in seconds, not 30 s |
/// | `timeout_ms` | 1000 | 1000 | same |
/// | `fall` | 3 | 3 | same: one lost packet is not a failure |
/// | `rise` | 1 | 1 | same: register as soon as the app answers |
/// | `grace_ms` | 10000 | 0 (+ startupProbe) | failures while the app boots don't count; a pass registers it at once |
///
/// A crash is seen faster than any of this through Docker's `die` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthPolicy {
    /// HTTP path to GET; 2xx and 3xx pass (as Kubernetes).
    pub path: String,
    /// Time between two probes.
    pub interval_ms: u64,
    /// Time allowed for one probe (connect + answer).
    pub timeout_ms: u64,
    /// Consecutive failures that make a healthy container unhealthy.
    pub fall: u32,
    /// Consecutive passes that make a container healthy (first registration included).
    pub rise: u32,
    /// After start, failures are not counted for this long (until the first pass).
    pub grace_ms: u64,
    /// What to do once unhealthy.
    pub policy: FailurePolicy,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            path: "/_ping".to_owned(),
            interval_ms: 2000,
            timeout_ms: 1000,
            fall: 3,
            rise: 1,
            grace_ms: 10_000,
            policy: FailurePolicy::Restart,
        }
    }
}

impl HealthPolicy {
    /// Checks ranges: a path starting with `/`, interval ≥ 100 ms, 0 < timeout ≤ interval,
    /// fall and rise ≥ 1.
    pub fn validate(&self) -> Result<(), AssignmentError> {
        if !self.path.starts_with('/') || self.path.chars().any(|c| c.is_ascii_whitespace()) {
            return Err(AssignmentError::Range {
                field: "health.path",
                value: format!("{:?}", self.path),
                why: "must start with '/' and contain no whitespace",
            });
        }
        if self.interval_ms < 100 {
            return Err(range(
                "health.interval_ms",
                self.interval_ms,
                "must be >= 100",
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.interval_ms {
            return Err(range(
                "health.timeout_ms",
                self.timeout_ms,
                "must be > 0 and <= interval_ms",
            ));
        }
        if self.fall == 0 {
            return Err(range("health.fall", 0, "must be >= 1"));
        }
        if self.rise == 0 {
            return Err(range("health.rise", 0, "must be >= 1"));
        }
        Ok(())
    }

    /// [`Self::interval_ms`] as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// [`Self::timeout_ms`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// [`Self::grace_ms`] as a duration.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"app": "hello", "version": "v1", "image": "127.0.0.1:5000/hello:v1",
        "container_port": 8080, "memory": "512m", "cpu_shares": 1024,
        "health": {"path": "/_ping", "interval_ms": 1000, "timeout_ms": 500, "fall": 3,
                   "rise": 1, "grace_ms": 5000, "policy": "restart"}}"#;

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(FULL).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn parses_the_documented_example() {
        let a = Assignment::from_json(FULL.as_bytes()).unwrap();
        assert_eq!(a.app.as_str(), "hello");
        assert_eq!(a.version.as_str(), "v1");
        assert_eq!(a.memory.bytes(), 512 * 1024 * 1024);
        assert_eq!(a.cpu_shares, 1024);
        assert_eq!(a.health.interval(), Duration::from_millis(1000));
        assert_eq!(a.health.policy, FailurePolicy::Restart);
    }

    #[test]
    fn round_trips_with_the_same_keys() {
        let a = Assignment::from_json(FULL.as_bytes()).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&a.to_json()).unwrap();
        let orig: serde_json::Value = serde_json::from_str(FULL).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn health_is_optional_field_by_field() {
        let mut v: serde_json::Value = serde_json::from_str(FULL).unwrap();
        v.as_object_mut().unwrap().remove("health");
        let a = Assignment::from_json(v.to_string().as_bytes()).unwrap();
        assert_eq!(a.health, HealthPolicy::default());

        let a =
            Assignment::from_json(with("health", r#"{"fall": 5, "policy": "remove"}"#).as_bytes())
                .unwrap();
        assert_eq!(a.health.fall, 5);
        assert_eq!(a.health.policy, FailurePolicy::Remove);
        assert_eq!(a.health.path, "/_ping");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let mut v: serde_json::Value = serde_json::from_str(FULL).unwrap();
        v["replicas"] = 3.into();
        let e = Assignment::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("unknown field `replicas`"), "{e}");
        let e =
            Assignment::from_json(with("health", r#"{"intervall_ms": 5}"#).as_bytes()).unwrap_err();
        assert!(e.to_string().contains("intervall_ms"), "{e}");
    }

    #[test]
    fn bad_policy_and_ids_are_rejected() {
        let e = Assignment::from_json(with("health", r#"{"policy": "reboot"}"#).as_bytes())
            .unwrap_err();
        assert!(e.to_string().contains("reboot"), "{e}");
        let e = Assignment::from_json(with("app", r#""Hello""#).as_bytes()).unwrap_err();
        assert!(e.to_string().contains("app id"), "{e}");
    }

    #[test]
    fn sidecars_are_optional_validated_and_omitted_when_empty() {
        let a = Assignment::from_json(FULL.as_bytes()).unwrap();
        assert!(a.sidecars.is_empty());
        assert!(!String::from_utf8(a.to_json()).unwrap().contains("sidecars"));
        let one =
            r#"[{"name": "cache", "image": "127.0.0.1:5000/hello-cache:v1", "memory": "64m"}]"#;
        let a = Assignment::from_json(with("sidecars", one).as_bytes()).unwrap();
        assert_eq!(a.sidecars[0].cpu_shares, 256);
        assert_eq!(a.total_memory(), (512 + 64) << 20);
        assert_eq!(a.total_cpu_shares(), 1024 + 256);
        let back = Assignment::from_json(&a.to_json()).unwrap();
        assert_eq!(back, a);
        for (value, needle) in [
            (
                r#"[{"name": "Cache", "image": "127.0.0.1:5000/c:v1", "memory": "64m"}]"#,
                "sidecars.name",
            ),
            (
                r#"[{"name": "c", "image": "c:v1", "memory": "64m"}]"#,
                "no registry",
            ),
            (
                r#"[{"name": "c", "image": "127.0.0.1:5000/c:v1", "memory": "1m"}]"#,
                "sidecars.memory",
            ),
            (
                r#"[{"name": "c", "image": "127.0.0.1:5000/c:v1", "memory": "64m", "cpu_shares": 1}]"#,
                "sidecars.cpu_shares",
            ),
            (
                r#"[{"name": "c", "image": "127.0.0.1:5000/c:v1", "memory": "64m", "port": 1}]"#,
                "unknown field `port`",
            ),
            (
                r#"[{"name": "c", "image": "127.0.0.1:5000/c:v1", "memory": "64m"},
                    {"name": "c", "image": "127.0.0.1:5000/d:v1", "memory": "64m"}]"#,
                "unique",
            ),
        ] {
            let e = Assignment::from_json(with("sidecars", value).as_bytes()).unwrap_err();
            assert!(e.to_string().contains(needle), "{value}: {e}");
        }
    }

    #[test]
    fn memory_units() {
        for (s, b) in [
            ("512m", 512u64 << 20),
            ("512M", 512 << 20),
            ("1g", 1 << 30),
            ("1GiB", 1 << 30),
            ("65536k", 64 << 20),
            ("536870912", 512 << 20),
            ("7b", 7),
        ] {
            assert_eq!(s.parse::<MemoryLimit>().unwrap().bytes(), b, "{s}");
        }
        for bad in ["", "m", "12x", "-5m", "1.5g", "99999999999999999999t"] {
            let e = bad.parse::<MemoryLimit>().unwrap_err();
            assert!(e.to_string().contains("invalid memory"), "{bad}: {e}");
        }
        let a = Assignment::from_json(with("memory", "1073741824").as_bytes()).unwrap();
        assert_eq!(a.memory.to_string(), "1g");
        assert_eq!(MemoryLimit::from_bytes(1000).to_string(), "1000");
        let e = Assignment::from_json(with("memory", r#""1m""#).as_bytes()).unwrap_err();
        assert!(e.to_string().contains("6 MiB"), "{e}");
        let e = Assignment::from_json(with("memory", r#""lots""#).as_bytes()).unwrap_err();
        assert!(e.to_string().contains("invalid memory \"lots\""), "{e}");
    }

    #[test]
    fn image_must_be_registry_app_version() {
        for (image, why) in [
            ("hello:v1", "no registry"),
            ("library/hello:v1", "registry must be"),
            ("127.0.0.1:5000/hello", "no ':{version}'"),
            ("127.0.0.1:5000/other:v1", "not the app id"),
            ("127.0.0.1:5000/hello:v2", "not the version"),
            ("127.0.0.1:5000/team/hello:v1", "nested"),
            ("127.0.0.1:5000/Hello:v1", "[a-z0-9-]"),
        ] {
            let e =
                Assignment::from_json(with("image", &format!("{image:?}")).as_bytes()).unwrap_err();
            assert!(e.to_string().contains(why), "{image}: {e}");
        }
        let r = ImageRef::parse("registry.example.com/hello:v1").unwrap();
        assert_eq!(r.registry, "registry.example.com");
        assert!(ImageRef::parse("localhost/hello:v1").is_ok());
    }

    #[test]
    fn ranges_are_checked() {
        for (field, value, needle) in [
            ("container_port", "0", "container_port"),
            ("container_port", "70000", "expected u16"),
            ("cpu_shares", "1", "cpu_shares"),
            ("health", r#"{"path": "_ping"}"#, "health.path"),
            ("health", r#"{"interval_ms": 10}"#, "health.interval_ms"),
            ("health", r#"{"timeout_ms": 5000}"#, "health.timeout_ms"),
            ("health", r#"{"fall": 0}"#, "health.fall"),
            ("health", r#"{"rise": 0}"#, "health.rise"),
        ] {
            let e = Assignment::from_json(with(field, value).as_bytes()).unwrap_err();
            assert!(e.to_string().contains(needle), "{field}={value}: {e}");
        }
    }
}
