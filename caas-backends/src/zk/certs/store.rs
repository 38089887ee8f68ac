//! [`CertStore`]: writes a custom domain's certificate and key to `/certs/{domain}`, for the
//! app that holds the domain's claim, the key sealed with the config encryption key.

use caas_core::{AppId, Domain};
use zookeeper_client::{Acls, CreateMode, MultiWriteError};

use super::CertNode;
use crate::zk::error::{Result, ZkError};
use crate::zk::layout::{CERTS, cert_path, domain_path};
use crate::zk::read::parse_owner;
use crate::zk::session::ZkSession;

/// Attempts at a write that raced with a change of the claim or of the node.
const ATTEMPTS: usize = 5;

/// Stores and deletes custom-domain certificates.
#[derive(Debug, Clone)]
pub struct CertStore {
    session: ZkSession,
}

impl CertStore {
    /// A store writing through `session`; it needs the session's encryption key
    /// (`encryption_key_file`) to store keys.
    pub fn new(session: ZkSession) -> Self {
        Self { session }
    }

    /// Stores the certificate chain and private key (PEM) of `domain` for `app`, replacing
    /// what was there. `app` must hold the domain's claim
    /// ([`AppStore::claim_domain`](crate::zk::AppStore::claim_domain)): the claim's version
    /// is checked in the same multi as the write, so a claim changing meanwhile is never
    /// overwritten with another app's certificate. The gateway checks the certificate
    /// itself (chain, key match, names) when it reads it.
    pub async fn put_cert(
        &self,
        domain: &Domain,
        app: &AppId,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<()> {
        let invalid = |reason: &str| ZkError::InvalidCert {
            domain: domain.clone(),
            reason: reason.to_owned(),
        };
        if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(invalid(
                "no PEM certificate (\"BEGIN CERTIFICATE\") in the chain",
            ));
        }
        if !(key_pem.contains("PRIVATE KEY-----")) {
            return Err(invalid("no PEM private key in the key"));
        }
        let cipher = self.session.cipher().ok_or_else(|| {
            ZkError::Config(
                "storing a private key needs the config encryption key (encryption_key_file)"
                    .into(),
            )
        })?;
        let path = cert_path(domain);
        let sealed = cipher.encrypt(&path, key_pem.as_bytes())?;
        let node = CertNode {
            app: app.clone(),
            cert: cert_pem.to_owned(),
            key: String::from_utf8(sealed).map_err(|_| invalid("sealed key is not text"))?,
        };
        let data = serde_json::to_vec(&node).map_err(|e| invalid(&e.to_string()))?;
        self.session.mkdir(CERTS).await?;
        let client = self.session.client()?;
        let claim = domain_path(domain);
        let mode = CreateMode::Persistent.with_acls(Acls::new(self.session.node_acl()));
        for _ in 0..ATTEMPTS {
            let (owner, claim_stat) = match client.get_data(&claim).await {
                Ok(x) => x,
                Err(zookeeper_client::Error::NoNode) => {
                    return Err(ZkError::DomainNotClaimed {
                        domain: domain.clone(),
                    });
                }
                Err(e) => return Err(ZkError::op("get_data", &claim, e)),
            };
            match parse_owner(&owner) {
                Ok(owner) if owner == *app => {}
                _ => {
                    return Err(ZkError::DomainTaken {
                        domain: domain.clone(),
                        owner: String::from_utf8_lossy(&owner).into_owned(),
                    });
                }
            }
            let existing = client
                .check_stat(&path)
                .await
                .map_err(|e| ZkError::op("stat", &path, e))?;
            let mut multi = client.new_multi_writer();
            let added = multi
                .add_check_version(&claim, claim_stat.version)
                .and_then(|()| match &existing {
                    Some(stat) => multi.add_set_data(&path, &data, Some(stat.version)),
                    None => multi.add_create(&path, &data, &mode),
                });
            added.map_err(|e| ZkError::op("multi", &path, e))?;
            match multi.commit().await {
                Ok(_) => return Ok(()),
                // The claim or the node changed between the reads and the write: again.
                Err(MultiWriteError::OperationFailed {
                    source:
                        zookeeper_client::Error::BadVersion
                        | zookeeper_client::Error::NodeExists
                        | zookeeper_client::Error::NoNode,
                    ..
                }) => continue,
                Err(MultiWriteError::OperationFailed { source, .. }) => {
                    return Err(ZkError::op("multi", &path, source));
                }
                Err(MultiWriteError::RequestFailed { source }) => {
                    return Err(ZkError::op("multi", &path, source));
                }
            }
        }
        Err(ZkError::op(
            "multi",
            &path,
            zookeeper_client::Error::BadVersion,
        ))
    }

    /// Deletes the certificate of `domain`. Allowed to the app it belongs to and to the app
    /// holding the domain's claim (which may clear a previous owner's); missing is fine.
    pub async fn delete_cert(&self, domain: &Domain, app: &AppId) -> Result<()> {
        let path = cert_path(domain);
        let client = self.session.client()?;
        let (data, stat) = match client.get_data(&path).await {
            Ok(x) => x,
            Err(zookeeper_client::Error::NoNode) => return Ok(()),
            Err(e) => return Err(ZkError::op("get_data", &path, e)),
        };
        let belongs = serde_json::from_slice::<CertNode>(&data).is_ok_and(|n| n.app == *app);
        if !belongs {
            let claim = domain_path(domain);
            let owner = match client.get_data(&claim).await {
                Ok((owner, _)) => String::from_utf8_lossy(&owner).into_owned(),
                Err(zookeeper_client::Error::NoNode) => String::new(),
                Err(e) => return Err(ZkError::op("get_data", &claim, e)),
            };
            if owner.is_empty() {
                return Err(ZkError::DomainNotClaimed {
                    domain: domain.clone(),
                });
            }
            if owner != app.as_str() {
                return Err(ZkError::DomainTaken {
                    domain: domain.clone(),
                    owner,
                });
            }
        }
        match client.delete(&path, Some(stat.version)).await {
            Ok(()) | Err(zookeeper_client::Error::NoNode) => Ok(()),
            Err(e) => Err(ZkError::op("delete", &path, e)),
        }
    }
}
