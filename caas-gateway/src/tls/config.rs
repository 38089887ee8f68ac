//! The `[tls]` table of the gateway's TOML file, and the errors of TLS setup: each names the
//! config key, the file and why.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// HTTPS settings (`[tls]`); the TLS listener's address is `listen_tls`.
///
/// ```toml
/// listen_tls = "127.0.0.1:8443"
/// [tls]
/// certificates = [{ cert = "caas.local.pem", key = "caas.local.key" }]
/// unknown_sni = "default"
/// session_resumption = true
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates (PEM chain, leaf first) and their private keys (PEM: PKCS#8, PKCS#1 or
    /// SEC1), relative to the config file's directory. Each serves the DNS names of its own
    /// subjectAltName list, exact or `*.{domain}`; the first is the default certificate.
    /// Files are re-read when they change.
    #[serde(default)]
    pub certificates: Vec<CertFiles>,
    /// What a client gets when its SNI matches no certificate or it sends none.
    #[serde(default)]
    pub unknown_sni: UnknownSni,
    /// Whether a returning client may resume its session (TLS 1.3 tickets, TLS 1.2 session
    /// IDs) and skip the certificate and the signature. On by default; off, every handshake
    /// is a full one and no ticket key exists to be stolen (as HAProxy's `no-tls-tickets`
    /// with no session cache, or nginx's `ssl_session_tickets off`).
    #[serde(default = "yes")]
    pub session_resumption: bool,
}

fn yes() -> bool {
    true
}

/// One certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
}

/// The answer to a TLS client asking for a name no certificate serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownSni {
    /// The default certificate (the first of `certificates`); the client decides whether it
    /// trusts it for the name it wanted.
    #[default]
    Default,
    /// A failed handshake (an `access_denied` alert): nothing is revealed about which names
    /// the gateway serves.
    Reject,
}

impl TlsConfig {
    /// Checks what serde cannot; the message starts with the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.certificates.is_empty() && self.unknown_sni == UnknownSni::Default {
            return Err(
                "tls.certificates: empty, so there is no default certificate: \
                 give one, or set unknown_sni = \"reject\" to serve only certificates from \
                 a certificate source"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    /// No `CERTIFICATE` block in the certificate PEM.
    #[error("no certificate in it (expected a PEM \"BEGIN CERTIFICATE\" block)")]
    NoCertificate,
    /// The certificate PEM is malformed.
    #[error("not a PEM certificate chain: {0}")]
    CertPem(String),
    /// No private key block in the key PEM.
    #[error("no private key in it (expected PEM PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    /// The key PEM is malformed.
    #[error("not a PEM private key: {0}")]
    KeyPem(String),
    /// The key parses but cannot sign (an unsupported algorithm or curve).
    #[error("the private key is not usable: {0}")]
    UnusableKey(String),
    /// The leaf certificate is not a valid X.509 certificate.
    #[error("the certificate is not usable: {0}")]
    BadCertificate(String),
    /// The private key belongs to another certificate.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// The leaf certificate names no DNS name a client could ask for.
    #[error(
        "the certificate has no DNS name in its subjectAltName list (a name only in the \
         subject's CN, or only IP addresses, cannot be chosen by SNI)"
    )]
    NoDnsName,
    /// The certificate does not cover the domain it is stored for.
    #[error("the certificate does not cover {0} (its subjectAltName list does not name it)")]
    NotForDomain(String),
}

impl CertError {
    /// Whether the key file (rather than the certificate file) is the one at fault; `None`
    /// when it takes both to see the problem.
    pub(crate) fn in_key(&self) -> Option<bool> {
        match self {
            CertError::Read(_) => None,
            CertError::NoKey | CertError::KeyPem(_) | CertError::UnusableKey(_) => Some(true),
            CertError::KeyMismatch => None,
            _ => Some(false),
        }
    }
}

/// TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate of the configuration cannot be served.
    #[error("{at}: {reason}")]
    Certificate {
        /// The config key and file(s): `tls.certificates[1].key /etc/caas/www.key`.
        at: String,
        /// Why.
        reason: CertError,
    },
    /// The settings make no sense together.
    #[error("{0}")]
    Config(String),
    /// rustls refused the settings.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}
