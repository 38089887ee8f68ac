//! Per-app and gateway-wide request policy: the [`Blacklist`] (client networks, path
//! prefixes, `User-Agent` substrings) and the [`RateLimit`] (per app and per client).
//!
//! Both are plain data with serde, shared by the TOML file, ZooKeeper's JSON and the control
//! API; the route table compiles them into the forms the request path checks
//! ([`BlacklistMatcher`], [`crate::limit`]).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::spec::{IpNet, SpecError};

/// Requests refused with 403: from a client network, for a path prefix, or with a
/// `User-Agent` containing a substring (ASCII case-insensitive).
///
/// Written as a list of networks, `blacklist = ["10.0.0.0/8", "2001:db8::/32"]`, or as a
/// table, `blacklist = { ips = ["10.0.0.0/8"], paths = ["/admin"], user_agents = ["sqlmap"] }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blacklist {
    /// Client networks (IPv4 and IPv6 CIDRs, or single addresses).
    pub ips: Vec<IpNet>,
    /// Path prefixes, each starting with `/`; matched against the request path as sent.
    pub paths: Vec<String>,
    /// Substrings of the `User-Agent` field, matched ignoring ASCII case.
    pub user_agents: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlacklistTable {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    user_agents: Vec<String>,
}

impl<'de> Deserialize<'de> for Blacklist {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Ips(Vec<IpNet>),
            Table(BlacklistTable),
        }
        match Repr::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a list of networks [\"10.0.0.0/8\", ...] or a table \
                 { ips = [...], paths = [...], user_agents = [...] }",
            )
        })? {
            Repr::Ips(ips) => Ok(Self {
                ips,
                ..Self::default()
            }),
            Repr::Table(t) => Ok(Self {
                ips: t.ips,
                paths: t.paths,
                user_agents: t.user_agents,
            }),
        }
    }
}

impl Serialize for Blacklist {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Only networks: the short form, as older writers wrote it.
        if self.paths.is_empty() && self.user_agents.is_empty() {
            return self.ips.serialize(s);
        }
        BlacklistTable {
            ips: self.ips.clone(),
            paths: self.paths.clone(),
            user_agents: self.user_agents.clone(),
        }
        .serialize(s)
    }
}

impl Blacklist {
    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.paths.is_empty() && self.user_agents.is_empty()
    }

    /// Checks the entries: paths start with `/`, substrings are not empty.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(p) = self.paths.iter().find(|p| !p.starts_with('/')) {
            return Err(SpecError(format!(
                "blacklist.paths: {p:?} must start with '/'"
            )));
        }
        if self.user_agents.iter().any(String::is_empty) {
            return Err(SpecError(
                "blacklist.user_agents: an empty substring would match every client".into(),
            ));
        }
        Ok(())
    }
}

/// Why a request matched a blacklist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The client's network.
    Ip,
    /// The path prefix.
    Path,
    /// The `User-Agent`.
    UserAgent,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ip => "client address",
            Self::Path => "path",
            Self::UserAgent => "user agent",
        })
    }
}

/// A [`Blacklist`] compiled for the request path: `User-Agent` substrings lower-cased once.
#[derive(Debug, Clone, Default)]
pub struct BlacklistMatcher {
    ips: Box<[IpNet]>,
    paths: Box<[Box<str>]>,
    user_agents: Box<[Box<[u8]>]>,
}

impl BlacklistMatcher {
    /// Compiles a blacklist.
    pub fn new(b: &Blacklist) -> Self {
        Self {
            ips: b.ips.clone().into_boxed_slice(),
            paths: b.paths.iter().map(|p| p.as_str().into()).collect(),
            user_agents: b
                .user_agents
                .iter()
                .map(|u| u.to_ascii_lowercase().into_bytes().into_boxed_slice())
                .collect(),
        }
    }

    /// Whether nothing is listed (the request path skips the checks).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.paths.is_empty() && self.user_agents.is_empty()
    }

    /// The first rule a request matches, if any.
    #[inline]
    pub fn check(&self, client: IpAddr, path: &str, user_agent: Option<&[u8]>) -> Option<Blocked> {
        if self.is_empty() {
            return None;
        }
        if self.ips.iter().any(|n| n.contains(client)) {
            return Some(Blocked::Ip);
        }
        if self.paths.iter().any(|p| path.starts_with(&**p)) {
            return Some(Blocked::Path);
        }
        let ua = user_agent?;
        self.user_agents
            .iter()
            .any(|needle| contains_ignore_ascii_case(ua, needle))
            .then_some(Blocked::UserAgent)
    }
}

/// Whether `hay` contains `needle` (already lower-case), ignoring ASCII case.
fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay.windows(needle.len()).any(|w| {
            w.iter()
                .zip(needle)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
        })
}

/// Request rate limits of one app, per gateway: across all clients (`rps`, `burst`) and per
/// client address (`per_client_rps`, `per_client_burst`). Either or both; 429 with
/// `Retry-After` beyond them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second for the whole app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<u32>,
    /// Extra requests allowed in a burst above `rps` (default: `rps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Sustained requests per second for each client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_client_rps: Option<u32>,
    /// Extra requests allowed in a burst above `per_client_rps` (default: `per_client_rps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_client_burst: Option<u32>,
    /// Most client addresses tracked at once (default 100,000); beyond it the least
    /// recently and least often seen are forgotten first, which only ever lets a forgotten
    /// client start again with a full burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_client_tracked: Option<u64>,
}

impl RateLimit {
    /// Clients tracked when `per_client_tracked` is not given.
    pub const DEFAULT_TRACKED: u64 = 100_000;

    /// Checks that a limit is set and each burst has its rate.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.rps.is_none() && self.per_client_rps.is_none() {
            return Err(SpecError(
                "rate_limit: give rps, per_client_rps or both".into(),
            ));
        }
        if self.burst.is_some() && self.rps.is_none() {
            return Err(SpecError("rate_limit.burst: needs rps".into()));
        }
        if self.per_client_burst.is_some() && self.per_client_rps.is_none() {
            return Err(SpecError(
                "rate_limit.per_client_burst: needs per_client_rps".into(),
            ));
        }
        if self.per_client_tracked == Some(0) {
            return Err(SpecError(
                "rate_limit.per_client_tracked: must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blacklist_is_a_list_or_a_table_and_round_trips() {
        #[derive(Deserialize, Serialize, Debug, PartialEq)]
        struct W {
            blacklist: Blacklist,
        }
        let short: W = toml::from_str(r#"blacklist = ["10.0.0.0/8", "2001:db8::/32"]"#).unwrap();
        assert_eq!(short.blacklist.ips.len(), 2);
        assert_eq!(
            serde_json::to_string(&short).unwrap(),
            r#"{"blacklist":["10.0.0.0/8","2001:db8::/32"]}"#
        );
        let long: W = toml::from_str(
            r#"blacklist = { ips = ["10.0.0.1"], paths = ["/admin"], user_agents = ["SQLMap"] }"#,
        )
        .unwrap();
        let json = serde_json::to_string(&long).unwrap();
        assert_eq!(serde_json::from_str::<W>(&json).unwrap(), long);
        let err = toml::from_str::<W>(r#"blacklist = { ip = ["10.0.0.1"] }"#).unwrap_err();
        assert!(
            err.to_string().contains("expected a list of networks"),
            "{err}"
        );
        let bad = Blacklist {
            paths: vec!["admin".into()],
            ..Blacklist::default()
        };
        assert!(bad.validate().unwrap_err().0.contains("blacklist.paths"));
    }

    #[test]
    fn the_matcher_checks_networks_paths_and_agents() {
        let m = BlacklistMatcher::new(&Blacklist {
            ips: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            paths: vec!["/admin".into(), "/.git".into()],
            user_agents: vec!["SQLMap".into(), "nikto".into()],
        });
        let ok: IpAddr = "192.0.2.1".parse().unwrap();
        for (ip, path, ua, want) in [
            ("10.1.2.3", "/", None, Some(Blocked::Ip)),
            ("::ffff:10.1.2.3", "/", None, Some(Blocked::Ip)),
            ("2001:db8::7", "/", None, Some(Blocked::Ip)),
            ("2001:db9::7", "/", None, None),
            ("192.0.2.1", "/admin/users", None, Some(Blocked::Path)),
            ("192.0.2.1", "/.git/config", None, Some(Blocked::Path)),
            ("192.0.2.1", "/administrator", None, Some(Blocked::Path)),
            ("192.0.2.1", "/public/admin", None, None),
            (
                "192.0.2.1",
                "/",
                Some(&b"sqlmap/1.7 (https://sqlmap.org)"[..]),
                Some(Blocked::UserAgent),
            ),
            (
                "192.0.2.1",
                "/",
                Some(&b"Mozilla/5.0 Nikto"[..]),
                Some(Blocked::UserAgent),
            ),
            ("192.0.2.1", "/", Some(&b"curl/8.0"[..]), None),
            ("192.0.2.1", "/", Some(&b"\xff\x00"[..]), None),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(m.check(ip, path, ua), want, "{ip} {path} {ua:?}");
        }
        assert!(
            BlacklistMatcher::default()
                .check(ok, "/admin", None)
                .is_none()
        );
    }

    #[test]
    fn rate_limits_need_a_rate() {
        let rl = |s: &str| toml::from_str::<RateLimit>(s).unwrap().validate();
        assert!(rl("rps = 10").is_ok());
        assert!(rl("per_client_rps = 2\nper_client_burst = 4").is_ok());
        assert!(rl("rps = 10\nper_client_rps = 1").is_ok());
        assert!(rl("burst = 10").unwrap_err().0.contains("give rps"));
        assert!(
            rl("per_client_rps = 1\nburst = 3")
                .unwrap_err()
                .0
                .contains("burst: needs rps")
        );
        assert!(rl("per_client_rps = 1\nper_client_tracked = 0").is_err());
        assert!(toml::from_str::<RateLimit>("rsp = 1").is_err());
    }
}
