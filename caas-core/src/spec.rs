//! The desired routing state of one app (`AppSpec`) and of the whole gateway (`Snapshot`).
//!
//! `AppSpec` is the one shape an app has everywhere: a `[apps.NAME]` table in the gateway's
//! TOML file and the JSON in ZooKeeper's `/caas/apps/{appId}` use the same keys.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::{AppId, Domain, Version};
pub use crate::policy::{Blacklist, RateLimit};

/// One upstream address of an app version, with its weight for the weighted balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Where the upstream listens.
    pub addr: SocketAddr,
    /// Relative weight (weighted balancer only); at least 1.
    pub weight: u32,
}

impl Endpoint {
    /// An endpoint with weight 1.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, weight: 1 }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// An endpoint is written either as `"127.0.0.1:9001"` or `{ addr = "...", weight = 3 }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum EndpointRepr {
    Plain(SocketAddr),
    Table(EndpointTable),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointTable {
    addr: SocketAddr,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ep = match EndpointRepr::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected an endpoint \"IP:PORT\" or { addr = \"IP:PORT\", weight = N }",
            )
        })? {
            EndpointRepr::Plain(addr) => Endpoint::new(addr),
            EndpointRepr::Table(t) => Endpoint {
                addr: t.addr,
                weight: t.weight,
            },
        };
        if ep.weight == 0 {
            return Err(serde::de::Error::custom(format!(
                "endpoint {}: weight must be at least 1",
                ep.addr
            )));
        }
        Ok(ep)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.weight == 1 {
            self.addr.serialize(s)
        } else {
            EndpointTable {
                addr: self.addr,
                weight: self.weight,
            }
            .serialize(s)
        }
    }
}

/// How requests are spread over the endpoints of one version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    /// Each endpoint in turn (the default).
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin over endpoint weights.
    Weighted,
    /// Power of two random choices, the one with fewer requests in flight wins.
    P2c,
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// A CIDR string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IP network {0:?}: expected ADDRESS or ADDRESS/PREFIX")]
pub struct IpNetError(pub String);

impl IpNet {
    /// Whether `ip` lies in this network. IPv4-mapped IPv6 addresses match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;
    fn from_str(s: &str) -> Result<Self, IpNetError> {
        let bad = || IpNetError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The endpoints of one version of an app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionSpec {
    /// Upstream addresses serving this version.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// Everything the gateway needs to route one app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// The version `{appId}.{domain}` routes to when no weights are given. With neither a
    /// default nor weights, requests balance over the endpoints of all versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_version: Option<Version>,
    /// Custom domains (CNAMEs) bound to this app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<Domain>,
    /// Split of `{appId}.{domain}` traffic across versions, by relative weight.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<Version, u32>,
    /// How requests are spread over a version's endpoints.
    #[serde(default)]
    pub balancer: BalancerKind,
    /// Requests refused with 403 (client networks, path prefixes, user agents).
    #[serde(default, skip_serializing_if = "Blacklist::is_empty")]
    pub blacklist: Blacklist,
    /// Request rate limits, per app and per client (429 beyond them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Plain-HTTP requests are answered with a 308 to the same URL on HTTPS (the gateway's
    /// TLS port); requests that came over TLS are served as usual.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// Most requests of this app in flight at once in one gateway; beyond it, 503
    /// `app_overloaded` (one tenant's flood cannot take every connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// The versions and their endpoints.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<Version, VersionSpec>,
}

/// An app spec that parses but cannot work; the message starts with the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

impl AppSpec {
    /// Checks what serde cannot, for every source of specs alike (the gateway's TOML file,
    /// ZooKeeper's `/apps/{appId}` JSON, the control API):
    ///
    /// - `weights`: not all 0, and their sum fits in a `u32`;
    /// - `blacklist`, `rate_limit`: see [`Blacklist::validate`], [`RateLimit::validate`];
    /// - `max_in_flight`: at least 1;
    /// - when the spec declares its `versions` (the TOML file does; in ZooKeeper they come
    ///   from the registry and may appear later), `weights` and `default_version` name
    ///   declared versions.
    ///
    /// Messages name the key relative to the app (`weights: ...`); callers prefix the app.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.blacklist.validate()?;
        if let Some(rl) = &self.rate_limit {
            rl.validate()?;
        }
        if self.max_in_flight == Some(0) {
            return Err(SpecError("max_in_flight: must be at least 1".into()));
        }
        if !self.weights.is_empty() && self.weights.values().all(|&w| w == 0) {
            return Err(SpecError("weights: all weights are 0".into()));
        }
        if self
            .weights
            .values()
            .try_fold(0u32, |sum, &w| sum.checked_add(w))
            .is_none()
        {
            return Err(SpecError("weights: the sum exceeds 4294967295".into()));
        }
        if !self.versions.is_empty() {
            if let Some(v) = self
                .weights
                .keys()
                .find(|v| !self.versions.contains_key(*v))
            {
                return Err(SpecError(format!(
                    "weights: version {v} is not among the declared versions"
                )));
            }
            if let Some(v) = self
                .default_version
                .as_ref()
                .filter(|v| !self.versions.contains_key(*v))
            {
                return Err(SpecError(format!(
                    "default_version: version {v} is not among the declared versions"
                )));
            }
        }
        Ok(())
    }
}

/// The full desired routing state: every app with its spec and endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Apps by id.
    #[serde(default)]
    pub apps: BTreeMap<AppId, AppSpec>,
    /// Requests refused for every app, before any app's own blacklist.
    #[serde(default, skip_serializing_if = "Blacklist::is_empty")]
    pub blacklist: Blacklist,
}

impl Snapshot {
    /// Number of endpoints over all apps and versions.
    pub fn endpoint_count(&self) -> usize {
        self.apps
            .values()
            .flat_map(|a| a.versions.values())
            .map(|v| v.endpoints.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: IpNet = "127.0.0.7".parse().unwrap();
        assert!(one.contains("127.0.0.7".parse().unwrap()));
        assert!(!one.contains("127.0.0.8".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nope".parse::<IpNet>().is_err());
    }

    #[test]
    fn app_spec_from_toml_and_json_share_keys() {
        let toml_src = r#"
            default_version = "v1"
            domains = ["www.Hello.test"]
            weights = { v1 = 90, v2 = 10 }
            balancer = "p2c"
            blacklist = ["10.0.0.0/8"]
            rate_limit = { rps = 100 }
            https_redirect = true
            [versions.v1]
            endpoints = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 3 }]
        "#;
        let spec: AppSpec = toml::from_str(toml_src).unwrap();
        assert_eq!(spec.domains[0].as_str(), "www.hello.test");
        assert_eq!(spec.balancer, BalancerKind::P2c);
        assert!(spec.https_redirect);
        let v1 = &spec.versions[&Version::new("v1").unwrap()];
        assert_eq!(v1.endpoints[1].weight, 3);
        let json = serde_json::to_string(&spec).unwrap();
        let back: AppSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn validate_checks_weights_and_default_version() {
        for (src, err) in [
            (
                "weights = { v1 = 0 }\n[versions.v1]\n",
                Some("weights: all weights are 0"),
            ),
            (
                "weights = { v1 = 4294967295, v2 = 1 }\n",
                Some("weights: the sum exceeds"),
            ),
            (
                "weights = { v2 = 1 }\n[versions.v1]\n",
                Some("weights: version v2 is not among"),
            ),
            (
                "default_version = \"v3\"\n[versions.v1]\n",
                Some("default_version: version v3 is not among"),
            ),
            // Without declared versions (ZooKeeper: they come from the registry) the names
            // cannot be checked yet.
            ("weights = { v2 = 1 }\ndefault_version = \"v3\"\n", None),
            (
                "weights = { v1 = 0, v2 = 1 }\n[versions.v1]\n[versions.v2]\n",
                None,
            ),
            ("default_version = \"v1\"\n[versions.v1]\n", None),
        ] {
            let got = toml::from_str::<AppSpec>(src).unwrap().validate();
            match (got, err) {
                (Ok(()), None) => {}
                (Err(e), Some(needle)) => assert!(e.0.starts_with(needle), "{src}: {e}"),
                (got, want) => panic!("{src}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let err = toml::from_str::<AppSpec>("defualt_version = \"v1\"").unwrap_err();
        assert!(err.to_string().contains("defualt_version"), "{err}");
        let err = toml::from_str::<AppSpec>("balancer = \"random\"").unwrap_err();
        assert!(err.to_string().contains("random"), "{err}");
        let err = toml::from_str::<AppSpec>("[versions.v1]\nendpoints = [\"nohost\"]").unwrap_err();
        assert!(err.to_string().contains("IP:PORT"), "{err}");
        let err = toml::from_str::<AppSpec>(
            "[versions.v1]\nendpoints = [{ addr = \"127.0.0.1:1\", weight = 0 }]",
        )
        .unwrap_err();
        assert!(err.to_string().contains("weight"), "{err}");
    }
}
