//! [`ZkConfig`]: how to reach ZooKeeper and as whom. It deserializes from a service's config
//! file (a `[zk]` table, below); the example gateway builds it from its `--zk*` flags. Every
//! field has a default but `servers`.
//!
//! ```toml
//! [zk]
//! servers = "10.0.0.5:2281,10.0.0.6:2281"
//! chroot = "/caas"                      # default
//! session_timeout_ms = 10000            # default
//! gather_ms = 100                       # default: discovery reads changes in 100 ms batches
//! digest = "gateway:secret"             # this process's identity
//! encryption_key_file = "/etc/caas/zk.key"
//! [zk.tls]
//! ca = "/etc/caas/zk-ca.pem"
//! cert = "/etc/caas/gateway.pem"
//! key = "/etc/caas/gateway-key.pem"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{Result, ZkError};

/// Connection settings for the ZooKeeper backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZkConfig {
    /// Connect string: `host:port[,host:port...]` (with `tls`, every server is reached over TLS).
    pub servers: String,
    /// Root of the caas tree inside ZooKeeper; created on connect when missing.
    #[serde(default = "default_chroot")]
    pub chroot: String,
    /// Session timeout asked of the server, in milliseconds (the server clamps it to
    /// 2..20 ticks). Ephemeral registrations of a crashed process vanish after it.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Digest credentials `user:password` of this process (tenant, gateway or admin identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// ACL ids granted READ on the nodes this process creates, e.g. the gateways' read-only
    /// identity `digest:gateway:BASE64(SHA1("gateway:password"))` (see [`super::acl::digest_id`])
    /// or `world:anyone`. Only used with `digest`; without credentials nodes are open to all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<String>,
    /// TLS to ZooKeeper's secure client port (mutual TLS: CA plus client identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ZkTlsConfig>,
    /// File with the AES-256-GCM key for app config values: 32 raw bytes, or their base64
    /// (one line). Values are then written encrypted and encrypted values can be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_file: Option<PathBuf>,
    /// Discovery only: how long, in milliseconds, a watch event that needs a read waits for
    /// others before the nodes they name are read together in one `MultiRead`. A route
    /// change reaches the router up to this much later, and ZooKeeper, which spends most of
    /// a read's cost per request, serves one request per window instead of one per change.
    /// Deletions need no read: a burst of them alone is applied at once. 0 reads at once.
    #[serde(default = "default_gather_ms")]
    pub gather_ms: u64,
}

/// TLS material for the connection to ZooKeeper, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZkTlsConfig {
    /// CA certificate(s) that signed the servers' certificates.
    pub ca: PathBuf,
    /// Client certificate chain (the server demands one unless `ssl.clientAuth=none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Client private key (PKCS#8 PEM, `BEGIN PRIVATE KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

fn default_chroot() -> String {
    "/caas".to_owned()
}

fn default_session_timeout_ms() -> u64 {
    10_000
}

/// The longest gathering window `validate` accepts.
const MAX_GATHER_MS: u64 = 10_000;

fn default_gather_ms() -> u64 {
    100
}

/// A duration in whole milliseconds (saturating: `validate` refuses what is too long).
fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

impl ZkConfig {
    /// Defaults for everything but the servers.
    pub fn new(servers: impl Into<String>) -> Self {
        Self {
            servers: servers.into(),
            chroot: default_chroot(),
            session_timeout_ms: default_session_timeout_ms(),
            digest: None,
            readers: Vec::new(),
            tls: None,
            encryption_key_file: None,
            gather_ms: default_gather_ms(),
        }
    }

    /// Sets the chroot.
    pub fn with_chroot(mut self, chroot: impl Into<String>) -> Self {
        self.chroot = chroot.into();
        self
    }

    /// Sets digest credentials `user:password`.
    pub fn with_digest(mut self, user_password: impl Into<String>) -> Self {
        self.digest = Some(user_password.into());
        self
    }

    /// Adds an ACL id granted READ on nodes this process creates.
    pub fn with_reader(mut self, id: impl Into<String>) -> Self {
        self.readers.push(id.into());
        self
    }

    /// Sets the session timeout.
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout_ms = millis(timeout);
        self
    }

    /// Sets the TLS material.
    pub fn with_tls(mut self, tls: ZkTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the encryption key file.
    pub fn with_encryption_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.encryption_key_file = Some(path.into());
        self
    }

    /// Sets how long discovery gathers watch events before reading (see [`Self::gather_ms`]).
    pub fn with_gather(mut self, window: Duration) -> Self {
        self.gather_ms = millis(window);
        self
    }

    /// How long discovery gathers watch events before reading, as a duration.
    pub fn gather(&self) -> Duration {
        Duration::from_millis(self.gather_ms)
    }

    /// The session timeout as a duration.
    pub fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session_timeout_ms)
    }

    /// Checks what can be checked without the network.
    pub fn validate(&self) -> Result<()> {
        if self.servers.trim().is_empty() {
            return Err(ZkError::Config("servers: must not be empty".into()));
        }
        if self.servers.contains('/') && !self.servers.contains("://") {
            return Err(ZkError::Config(format!(
                "servers {:?}: put the chroot in `chroot`, not in the connect string",
                self.servers
            )));
        }
        let c = &self.chroot;
        if !c.starts_with('/') || (c.len() > 1 && c.ends_with('/')) || c.contains("//") {
            return Err(ZkError::Config(format!(
                "chroot {c:?}: must be an absolute path like /caas, without a trailing '/'"
            )));
        }
        if let Some(d) = &self.digest {
            match d.split_once(':') {
                Some((user, pw)) if !user.is_empty() && !pw.is_empty() => {}
                _ => {
                    return Err(ZkError::Config(
                        "digest: expected `user:password`".to_owned(),
                    ));
                }
            }
        }
        for r in &self.readers {
            match r.split_once(':') {
                Some(("digest" | "world" | "ip" | "x509" | "sasl", id)) if !id.is_empty() => {}
                _ => {
                    return Err(ZkError::Config(format!(
                        "readers: {r:?} is not an ACL id `scheme:id` (e.g. digest:gateway:HASH)"
                    )));
                }
            }
        }
        if self.session_timeout_ms == 0 {
            return Err(ZkError::Config("session_timeout_ms: must be > 0".into()));
        }
        if self.gather_ms > MAX_GATHER_MS {
            return Err(ZkError::Config(format!(
                "gather_ms {}: at most {MAX_GATHER_MS} (every route change waits this long)",
                self.gather_ms
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: ZkConfig = serde_json::from_str(r#"{"servers":"127.0.0.1:2181"}"#).unwrap();
        assert_eq!(c, ZkConfig::new("127.0.0.1:2181"));
        assert_eq!(c.chroot, "/caas");
        c.validate().unwrap();
        let err = serde_json::from_str::<ZkConfig>(r#"{"servers":"x:1","chroto":"/a"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chroto"), "{err}");
    }

    #[test]
    fn documented_toml_example_parses() {
        let doc: String = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
            .collect();
        #[derive(Deserialize)]
        struct File {
            zk: ZkConfig,
        }
        let file: File = toml::from_str(&doc).unwrap();
        file.zk.validate().unwrap();
        assert_eq!(file.zk.digest.as_deref(), Some("gateway:secret"));
        assert!(file.zk.tls.unwrap().key.is_some());
    }

    #[test]
    fn validation_names_the_field() {
        let bad = ZkConfig::new("h:1").with_chroot("caas");
        assert!(bad.validate().unwrap_err().to_string().contains("chroot"));
        let bad = ZkConfig::new("h:1").with_digest("nopassword");
        assert!(bad.validate().unwrap_err().to_string().contains("digest"));
        let bad = ZkConfig::new("h:1/caas");
        assert!(bad.validate().unwrap_err().to_string().contains("chroot"));
        let bad = ZkConfig::new("h:1").with_reader("gateway");
        assert!(bad.validate().unwrap_err().to_string().contains("readers"));
        let bad = ZkConfig::new("h:1").with_gather(Duration::from_secs(60));
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("gather_ms")
        );
        ZkConfig::new("h:1")
            .with_gather(Duration::ZERO)
            .validate()
            .unwrap();
    }
}
