//! The one error type of the ZooKeeper backend: every variant says which node or file it is
//! about and why, so a log line alone tells an operator what to fix.

use std::path::PathBuf;

use caas_core::{AppId, Domain};

/// Everything that can go wrong talking to ZooKeeper or reading what is stored there.
#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    /// The configuration is unusable (bad chroot, bad credentials format, ...).
    #[error("zookeeper config: {0}")]
    Config(String),
    /// A file named by the configuration (TLS material, encryption key) could not be used.
    #[error("zookeeper config: {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why it could not be used.
        reason: String,
    },
    /// No session could be established with the ensemble.
    #[error("cannot connect to zookeeper {servers}: {source}")]
    Connect {
        /// The connect string.
        servers: String,
        /// What the client reported.
        source: zookeeper_client::Error,
    },
    /// A ZooKeeper operation on one node failed.
    #[error("zookeeper {op} {path}: {source}")]
    Op {
        /// The operation (`create`, `get_data`, ...).
        op: &'static str,
        /// The node (relative to the chroot).
        path: String,
        /// What the server or client reported.
        source: zookeeper_client::Error,
    },
    /// A custom domain is already bound to another app.
    #[error("domain {domain} is already claimed by app {owner}")]
    DomainTaken {
        /// The domain.
        domain: Domain,
        /// The app holding the claim.
        owner: String,
    },
    /// A certificate was offered for a domain no app has claimed.
    #[error("domain {domain} is not claimed: claim it for the app before storing its certificate")]
    DomainNotClaimed {
        /// The domain.
        domain: Domain,
    },
    /// A certificate or key was refused before writing.
    #[error("certificate for {domain}: {reason}")]
    InvalidCert {
        /// The domain.
        domain: Domain,
        /// What is wrong.
        reason: String,
    },
    /// The session lacks the permission for this write or read (digest ACLs).
    #[error("zookeeper {op} {path}: permission denied for this identity")]
    Denied {
        /// The operation.
        op: &'static str,
        /// The node.
        path: String,
    },
    /// A node's data is not what its place in the layout requires.
    #[error("zookeeper node {path}: {reason}")]
    BadData {
        /// The node.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An encrypted value could not be decrypted: wrong key, or the value was tampered with
    /// or moved from another node.
    #[error("zookeeper node {path}: cannot decrypt value (wrong encryption key?)")]
    Decrypt {
        /// The node.
        path: String,
    },
    /// An encrypted value was found but no encryption key is configured.
    #[error("zookeeper node {path}: value is encrypted but no encryption_key_file is configured")]
    NoKey {
        /// The node.
        path: String,
    },
    /// An app spec was refused before writing (see `AppSpec::validate`).
    #[error("app {app}: invalid spec: {reason}")]
    InvalidSpec {
        /// The app.
        app: AppId,
        /// What is wrong, starting with the key.
        reason: String,
    },
    /// An app spec could not be serialized.
    #[error("app {app}: cannot encode spec: {reason}")]
    Encode {
        /// The app.
        app: AppId,
        /// Why.
        reason: String,
    },
    /// The session has been closed by this process.
    #[error("zookeeper session closed")]
    Closed,
}

impl ZkError {
    /// Wraps a client error for an operation on `path`; ACL denials become [`ZkError::Denied`].
    pub(crate) fn op(op: &'static str, path: &str, source: zookeeper_client::Error) -> Self {
        match source {
            zookeeper_client::Error::NoAuth => ZkError::Denied {
                op,
                path: path.to_owned(),
            },
            source => ZkError::Op {
                op,
                path: path.to_owned(),
                source,
            },
        }
    }

    /// Whether the session behind the failed call is gone for good (a new one is needed).
    pub fn is_session_gone(&self) -> bool {
        use zookeeper_client::Error as E;
        matches!(
            self,
            ZkError::Op {
                source: E::SessionExpired | E::ClientClosed | E::AuthFailed,
                ..
            } | ZkError::Closed
        )
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = ZkError> = std::result::Result<T, E>;
