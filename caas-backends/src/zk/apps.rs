//! [`AppStore`]: writes app config (`/apps/{appId}`, an [`AppSpec`] as JSON, encrypted when a
//! key is configured) and claims custom domains (`/domains/{domain}` holding the app id).
//!
//! A domain claim is exclusive: the node is created, never overwritten, so two apps racing
//! for one CNAME get one winner and one [`ZkError::DomainTaken`]. The discovery routes a
//! custom domain only for the app holding its claim (unclaimed domains listed in an app's
//! spec are routed for it).

use caas_core::{AppId, AppSpec, Blacklist, Domain};
use zookeeper_client::{Acls, CreateMode};

use super::crypto;
use super::error::{Result, ZkError};
use super::layout::{BLACKLIST, DOMAINS, app_path, domain_path};
use super::session::ZkSession;

/// Reads and writes app config and domain claims.
#[derive(Debug, Clone)]
pub struct AppStore {
    session: ZkSession,
}

impl AppStore {
    /// A store writing through `session`.
    pub fn new(session: ZkSession) -> Self {
        Self { session }
    }

    /// Writes the spec of `app` (creating `/apps/{app}` when missing). Registered instances are
    /// merged in by the discovery; endpoints listed here are kept as static ones.
    pub async fn put_app(&self, app: &AppId, spec: &AppSpec) -> Result<()> {
        let path = app_path(app);
        spec.validate().map_err(|e| ZkError::InvalidSpec {
            app: app.clone(),
            reason: e.to_string(),
        })?;
        let json = serde_json::to_vec(spec).map_err(|e| ZkError::Encode {
            app: app.clone(),
            reason: e.to_string(),
        })?;
        self.put_node(&path, json).await
    }

    /// Writes the gateway-wide blacklist (`/blacklist`), applied live by every gateway fed
    /// by ZooKeeper.
    pub async fn put_blacklist(&self, blacklist: &Blacklist) -> Result<()> {
        blacklist.validate().map_err(|e| ZkError::BadData {
            path: BLACKLIST.to_owned(),
            reason: format!("invalid blacklist: {e}"),
        })?;
        let json = serde_json::to_vec(blacklist).map_err(|e| ZkError::BadData {
            path: BLACKLIST.to_owned(),
            reason: e.to_string(),
        })?;
        self.put_node(BLACKLIST, json).await
    }

    /// Sets a config node's data (sealed when a key is configured), creating it when missing.
    async fn put_node(&self, path: &str, json: Vec<u8>) -> Result<()> {
        let data = crypto::seal(self.session.cipher(), path, json)?;
        let client = self.session.client()?;
        match client.set_data(path, &data, None).await {
            Ok(_) => Ok(()),
            Err(zookeeper_client::Error::NoNode) => {
                let (parent, _) = path.rsplit_once('/').unwrap_or(("/", ""));
                if !parent.is_empty() {
                    self.session.mkdir(parent).await?;
                }
                let acl = self.session.node_acl();
                let mode = CreateMode::Persistent.with_acls(Acls::new(acl));
                match client.create(path, &data, &mode).await {
                    Ok(_) => Ok(()),
                    // Created meanwhile by someone else: last writer wins, as with set_data.
                    Err(zookeeper_client::Error::NodeExists) => client
                        .set_data(path, &data, None)
                        .await
                        .map(|_| ())
                        .map_err(|e| ZkError::op("set_data", path, e)),
                    Err(e) => Err(ZkError::op("create", path, e)),
                }
            }
            Err(e) => Err(ZkError::op("set_data", path, e)),
        }
    }

    /// Reads the spec of `app`; `None` when there is no app node.
    pub async fn get_app(&self, app: &AppId) -> Result<Option<AppSpec>> {
        let path = app_path(app);
        let client = self.session.client()?;
        let data = match client.get_data(&path).await {
            Ok((d, _)) => d,
            Err(zookeeper_client::Error::NoNode) => return Ok(None),
            Err(e) => return Err(ZkError::op("get_data", &path, e)),
        };
        parse_app(self.session.cipher(), &path, data).map(Some)
    }

    /// Deletes `/apps/{app}` (its `versions/` children first). Missing is not an error.
    pub async fn delete_app(&self, app: &AppId) -> Result<()> {
        let path = app_path(app);
        let client = self.session.client()?;
        delete_tree(&client, &path).await
    }

    /// Claims `domain` for `app`: creates `/domains/{domain}` holding the app id. Claiming a
    /// domain the app already holds is fine; one held by another app is
    /// [`ZkError::DomainTaken`].
    pub async fn claim_domain(&self, domain: &Domain, app: &AppId) -> Result<()> {
        let path = domain_path(domain);
        self.session.mkdir(DOMAINS).await?;
        let client = self.session.client()?;
        let mode = CreateMode::Persistent.with_acls(Acls::new(self.session.node_acl()));
        match client.create(&path, app.as_str().as_bytes(), &mode).await {
            Ok(_) => Ok(()),
            Err(zookeeper_client::Error::NodeExists) => {
                let (owner, _) = client
                    .get_data(&path)
                    .await
                    .map_err(|e| ZkError::op("get_data", &path, e))?;
                let owner = String::from_utf8_lossy(&owner).into_owned();
                if owner == app.as_str() {
                    Ok(())
                } else {
                    Err(ZkError::DomainTaken {
                        domain: domain.clone(),
                        owner,
                    })
                }
            }
            Err(e) => Err(ZkError::op("create", &path, e)),
        }
    }

    /// Releases `domain` if `app` holds it (checked and deleted at the same node version, so
    /// a claim changed meanwhile is left alone).
    pub async fn release_domain(&self, domain: &Domain, app: &AppId) -> Result<()> {
        let path = domain_path(domain);
        let client = self.session.client()?;
        let (owner, stat) = match client.get_data(&path).await {
            Ok(x) => x,
            Err(zookeeper_client::Error::NoNode) => return Ok(()),
            Err(e) => return Err(ZkError::op("get_data", &path, e)),
        };
        if owner != app.as_str().as_bytes() {
            return Err(ZkError::DomainTaken {
                domain: domain.clone(),
                owner: String::from_utf8_lossy(&owner).into_owned(),
            });
        }
        match client.delete(&path, Some(stat.version)).await {
            Ok(()) | Err(zookeeper_client::Error::NoNode) => Ok(()),
            Err(e) => Err(ZkError::op("delete", &path, e)),
        }
    }
}

/// Decodes the `/blacklist` node: Blacklist JSON (decrypted when needed), validated; empty
/// data means nothing is refused.
pub(crate) fn parse_blacklist(
    cipher: Option<&crypto::ValueCipher>,
    path: &str,
    data: Vec<u8>,
) -> Result<Blacklist> {
    let data = crypto::open(cipher, path, data)?;
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(Blacklist::default());
    }
    let bad = |reason: String| ZkError::BadData {
        path: path.to_owned(),
        reason,
    };
    let b: Blacklist =
        serde_json::from_slice(&data).map_err(|e| bad(format!("not a blacklist: {e}")))?;
    b.validate()
        .map_err(|e| bad(format!("invalid blacklist: {e}")))?;
    Ok(b)
}

/// Decodes an app node: decrypts when needed; empty data means the default spec.
pub(crate) fn parse_app(
    cipher: Option<&crypto::ValueCipher>,
    path: &str,
    data: Vec<u8>,
) -> Result<AppSpec> {
    let data = crypto::open(cipher, path, data)?;
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(AppSpec::default());
    }
    let spec: AppSpec = serde_json::from_slice(&data).map_err(|e| ZkError::BadData {
        path: path.to_owned(),
        reason: format!("not an app spec: {e}"),
    })?;
    spec.validate().map_err(|e| ZkError::BadData {
        path: path.to_owned(),
        reason: format!("invalid app spec: {e}"),
    })?;
    Ok(spec)
}

async fn delete_tree(client: &zookeeper_client::Client, path: &str) -> Result<()> {
    let mut stack = vec![path.to_owned()];
    let mut order = Vec::new();
    while let Some(p) = stack.pop() {
        match client.list_children(&p).await {
            Ok(children) => {
                for c in children {
                    stack.push(format!("{p}/{c}"));
                }
                order.push(p);
            }
            Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => return Err(ZkError::op("list_children", &p, e)),
        }
    }
    for p in order.iter().rev() {
        match client.delete(p, None).await {
            Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => return Err(ZkError::op("delete", p, e)),
        }
    }
    Ok(())
}
