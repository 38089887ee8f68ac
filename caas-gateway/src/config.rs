//! Gateway configuration: the library's [`GatewayConfig`] and the TOML file of the example
//! server ([`FileConfig`]), both strict (`deny_unknown_fields`) with a default per field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use caas_core::{AppId, AppSpec, Blacklist, Domain, IpNet, Snapshot};
use serde::{Deserialize, Serialize};

use crate::access_log::{AccessLogConfig, AccessLogTarget};
use crate::tls::{CertResolver, TlsConfig};

/// Limits and timeouts on every edge of the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line plus headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Most request headers; more gets 431.
    pub max_headers: usize,
    /// Time a client has to send a complete HTTP/1 request head, in ms (slowloris guard):
    /// counted from the connection's start for its first request and from the first byte of
    /// each later one. Waiting between requests is idleness (`idle_timeout_ms`), not this.
    pub header_read_timeout_ms: u64,
    /// A client connection with no request in flight and no traffic for this long is closed, in ms.
    pub idle_timeout_ms: u64,
    /// Time to establish an upstream TCP connection, in ms.
    pub upstream_connect_timeout_ms: u64,
    /// Time from sending a request upstream to its response head, in ms (then 504), and the
    /// longest the upstream may go silent in the middle of a response body (then the body is
    /// cut and the failure counted against the endpoint).
    pub upstream_response_timeout_ms: u64,
    /// Pooled upstream connections idle longer than this are closed, in ms.
    pub upstream_idle_timeout_ms: u64,
    /// Idle upstream connections kept per endpoint; 0 keeps none (a connection per request).
    pub upstream_max_idle_per_endpoint: usize,
    /// An upgraded (WebSocket) connection on which neither side sent anything for this long
    /// is closed, in ms.
    pub tunnel_idle_timeout_ms: u64,
    /// How long an endpoint that refused a connection stays out of rotation, in ms.
    pub eject_ms: u64,
    /// On shutdown, how long in-flight requests may take to finish, in ms.
    pub shutdown_grace_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            upstream_connect_timeout_ms: 3_000,
            upstream_response_timeout_ms: 60_000,
            upstream_idle_timeout_ms: 60_000,
            upstream_max_idle_per_endpoint: 256,
            tunnel_idle_timeout_ms: 3_600_000,
            eject_ms: 2_000,
            shutdown_grace_ms: 30_000,
        }
    }
}

/// The largest `max_headers` accepted: the HTTP/1.1 parser's backstop is twice the limit,
/// and a header map holds at most 24,576 fields.
const MAX_HEADERS: usize = 10_000;

impl Limits {
    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_header_bytes < 1024 {
            return Err("limits.max_header_bytes: must be at least 1024".into());
        }
        if self.max_headers == 0 {
            return Err("limits.max_headers: must be at least 1".into());
        }
        if self.max_headers > MAX_HEADERS {
            return Err(format!("limits.max_headers: must be at most {MAX_HEADERS}"));
        }
        for (name, v) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            (
                "upstream_connect_timeout_ms",
                self.upstream_connect_timeout_ms,
            ),
            (
                "upstream_response_timeout_ms",
                self.upstream_response_timeout_ms,
            ),
            ("upstream_idle_timeout_ms", self.upstream_idle_timeout_ms),
            ("tunnel_idle_timeout_ms", self.tunnel_idle_timeout_ms),
        ] {
            if v == 0 {
                return Err(format!("limits.{name}: must be greater than 0"));
            }
        }
        Ok(())
    }

    pub(crate) fn dur(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

/// What the gateway library needs; the listener is passed to `serve` already bound.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayConfig {
    /// Gateway domains: `{app}.{domain}` and `{version}.{app}.{domain}` route to apps.
    pub domains: Vec<Domain>,
    /// Limits and timeouts.
    pub limits: Limits,
    /// The port clients reach the gateway's HTTPS on, for the `Location` of `https_redirect`
    /// answers; `None` (or 443) leaves the port out of the URL.
    pub https_port: Option<u16>,
    /// Peers whose `X-Forwarded-For` is believed (load balancers in front of the gateway):
    /// for a request from one of them, the client is the nearest address in that field that
    /// is not itself trusted. From anyone else, the client is the socket peer.
    pub trusted_proxies: Vec<IpNet>,
    /// The access log (one JSON line per request); off when `None`.
    pub access_log: Option<AccessLogConfig>,
}

/// The example server's TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address the proxy listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address of the HTTPS listener; needs a `[tls]` table. None when absent.
    #[serde(default)]
    pub listen_tls: Option<SocketAddr>,
    /// Certificates and SNI behaviour of the HTTPS listener.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Address of the admin listener (`/metrics`, `/routes`, `/healthz`); none when absent.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Gateway domains.
    #[serde(default)]
    pub domains: Vec<Domain>,
    /// Worker threads; 0 = one per core.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Microseconds a one-worker gateway keeps polling for events after each wake-up before
    /// it sleeps (see [`crate::busy_poll`]); 0, the default, sleeps at once. Lower latency
    /// at light load, paid in CPU time that would otherwise be idle.
    #[serde(default)]
    pub busy_poll_us: u64,
    /// Limits and timeouts.
    #[serde(default)]
    pub limits: Limits,
    /// Networks whose `X-Forwarded-For` is believed (see [`GatewayConfig::trusted_proxies`]).
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// The access log: `"stdout"` or a file path (relative to the config file's directory
    /// once loaded); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogTarget>,
    /// Requests refused for every app (networks, path prefixes, user agents), applied live
    /// on reload; ZooKeeper-fed gateways take it from `/caas/blacklist` instead.
    #[serde(default, skip_serializing_if = "Blacklist::is_empty")]
    pub blacklist: Blacklist,
    /// Apps served from this file (ignored when routes come from ZooKeeper).
    #[serde(default)]
    pub apps: BTreeMap<AppId, AppSpec>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_workers() -> usize {
    1
}

/// A config file that could not be used: says which file and why (the TOML parser's message
/// names the key and shows the line).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the key and the line.
        message: String,
    },
    /// Values that parse but cannot work.
    #[error("config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, starting with the key.
        message: String,
    },
}

impl FileConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        cfg.limits.validate().map_err(invalid)?;
        let max_spin = crate::busy_poll::MAX_BUDGET.as_micros();
        if u128::from(cfg.busy_poll_us) > max_spin {
            return Err(invalid(format!(
                "busy_poll_us: {} is more than {max_spin} (a spin bridges the gap between \
                 two packets)",
                cfg.busy_poll_us
            )));
        }
        if cfg.busy_poll_us > 0 && cfg.workers != 1 {
            return Err(invalid(format!(
                "busy_poll_us: needs workers = 1 (workers = {})",
                cfg.workers
            )));
        }
        match (&cfg.listen_tls, &cfg.tls) {
            (Some(_), Some(tls)) => tls.validate().map_err(invalid)?,
            (Some(_), None) => {
                return Err(invalid(
                    "listen_tls: needs a [tls] table with the certificates to serve".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls: given, but listen_tls (the HTTPS address) is not".into(),
                ));
            }
            (None, None) => {}
        }
        cfg.blacklist.validate().map_err(|e| invalid(e.0))?;
        if let Some(AccessLogTarget::File(p)) = &mut cfg.access_log
            && p.is_relative()
        {
            *p = path.parent().unwrap_or(Path::new(".")).join(&*p);
        }
        for (id, app) in &cfg.apps {
            app.validate()
                .map_err(|e| invalid(format!("apps.{id}.{e}")))?;
        }
        Ok(cfg)
    }

    /// The library part of the config.
    pub fn gateway_config(&self) -> GatewayConfig {
        GatewayConfig {
            domains: self.domains.clone(),
            limits: self.limits.clone(),
            https_port: self.listen_tls.map(|a| a.port()),
            trusted_proxies: self.trusted_proxies.clone(),
            access_log: self.access_log.clone().map(AccessLogConfig::new),
        }
    }

    /// Loads the certificates of the `[tls]` table (`None` without one), with relative
    /// paths taken from the directory of `path`, the config file. A certificate that cannot
    /// be served is an error naming the file, the key and why.
    pub fn cert_resolver(&self, path: &Path) -> Result<Option<Arc<CertResolver>>, ConfigError> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let base = path.parent().unwrap_or(Path::new("."));
        CertResolver::from_config(tls, base)
            .map(Some)
            .map_err(|e| ConfigError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            })
    }

    /// The apps as a routing snapshot.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            apps: self.apps.clone(),
            blacklist: self.blacklist.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen = "127.0.0.1:8080"
domains = ["caas.local"]
workers = 1

[apps.hello]
default_version = "v1"
domains = ["www.hello.test"]
weights = { v1 = 90, v2 = 10 }
balancer = "round_robin"

[apps.hello.versions.v1]
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]

[apps.hello.versions.v2]
endpoints = ["127.0.0.1:9003"]
"#;

    #[test]
    fn the_documented_shape_parses() {
        let cfg = FileConfig::parse(EXAMPLE, Path::new("gw.toml")).unwrap();
        assert_eq!(cfg.workers, 1);
        assert_eq!(cfg.snapshot().endpoint_count(), 3);
        assert_eq!(cfg.limits, Limits::default());
    }

    #[test]
    fn access_log_paths_resolve_like_the_other_paths() {
        let with = |v: &str| {
            let text = format!("access_log = \"{v}\"\n{EXAMPLE}");
            FileConfig::parse(&text, Path::new("/etc/caas/gw.toml"))
                .unwrap()
                .gateway_config()
                .access_log
                .map(|a| a.target)
        };
        assert_eq!(
            with("logs/access.log"),
            Some(AccessLogTarget::File("/etc/caas/logs/access.log".into()))
        );
        assert_eq!(
            with("/var/log/a.log"),
            Some(AccessLogTarget::File("/var/log/a.log".into()))
        );
        assert_eq!(with("stdout"), Some(AccessLogTarget::Stdout));
        let off = FileConfig::parse(EXAMPLE, Path::new("gw.toml")).unwrap();
        assert_eq!(off.gateway_config().access_log, None, "off by default");
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let bad = EXAMPLE.replace("workers = 1", "wrokers = 1");
        let err = FileConfig::parse(&bad, Path::new("gw.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config gw.toml:"), "{err}");
        assert!(err.contains("wrokers"), "{err}");

        let bad = EXAMPLE.replace("[apps.hello]", "[apps.Hello]");
        let err = FileConfig::parse(&bad, Path::new("gw.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid app id \"Hello\""), "{err}");

        let bad = EXAMPLE.replace("v2 = 10", "v3 = 10");
        let err = FileConfig::parse(&bad, Path::new("gw.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("apps.hello.weights: version v3"), "{err}");

        let bad = format!("{EXAMPLE}\n[limits]\nidle_timeout_ms = 0\n");
        let err = FileConfig::parse(&bad, Path::new("gw.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.idle_timeout_ms"), "{err}");

        let bad = format!("{EXAMPLE}\n[limits]\nmax_headers = 20000\n");
        let err = FileConfig::parse(&bad, Path::new("gw.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("limits.max_headers: must be at most 10000"),
            "{err}"
        );

        let bad = format!("busy_poll_us = 20000\n{EXAMPLE}");
        let err = FileConfig::parse(&bad, Path::new("gw.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("busy_poll_us: 20000 is more than 10000"),
            "{err}"
        );
        let bad = format!(
            "busy_poll_us = 50\n{}",
            EXAMPLE.replace("workers = 1", "workers = 2")
        );
        let err = FileConfig::parse(&bad, Path::new("gw.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("busy_poll_us: needs workers = 1"), "{err}");
        let ok = FileConfig::parse(
            &format!("busy_poll_us = 50\n{EXAMPLE}"),
            Path::new("gw.toml"),
        );
        assert_eq!(ok.unwrap().busy_poll_us, 50);

        let bad = format!("access_log = \"\"\n{EXAMPLE}");
        let err = FileConfig::parse(&bad, Path::new("gw.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("access_log"), "{err}");

        let err = FileConfig::load(Path::new("/nonexistent/gw.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/gw.toml: cannot read"), "{err}");
    }
}
