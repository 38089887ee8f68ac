//! Digest ACLs: who may write which part of the tree.
//!
//! Three kinds of identity (all ZooKeeper `digest` users):
//! - the **admin** creates the tree ([`provision_tree`]) and grants each tenant its app
//!   ([`grant_app`]);
//! - a **tenant** may write only its own app's nodes: `/apps/{appId}` (config and versions)
//!   and the registry subtree `/service/address/{appId}`;
//! - **gateways** read everything and write nothing, except their own announcement: the
//!   readers may create and delete children of `/gateways` (their ephemeral nodes). A
//!   gateway's nodes get its own session's ACL: give it the control plane's identity as a
//!   reader so the API can read the announcement.
//!
//! ZooKeeper checks DELETE and CREATE on the *parent*: `/apps`, `/domains` and
//! `/service/address` grant neither to tenants, so a tenant can neither delete another
//! tenant's app node nor create one for an app it was not granted. Domain claims are made by
//! the admin (or a control API acting as admin) for the same reason.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use caas_core::AppId;
use sha1::{Digest, Sha1};
use zookeeper_client::{Acl, AuthId, CreateMode, Permission};

use super::error::{Result, ZkError};
use super::layout::{APPS, DOMAINS, GATEWAYS, SERVICE, app_path, service_app_path};
use super::session::ZkSession;

/// The ACL id of digest credentials: `user:base64(sha1("user:password"))`, the form ZooKeeper
/// stores (the scheme `digest` goes beside it). Accepts `user:password`.
pub fn digest_id(user_password: &str) -> Result<String> {
    let (user, _) = user_password
        .split_once(':')
        .ok_or_else(|| ZkError::Config("digest credentials must be `user:password`".into()))?;
    let hash = Sha1::digest(user_password.as_bytes());
    Ok(format!("{user}:{}", STANDARD.encode(hash)))
}

/// Parses `scheme:id` (e.g. `digest:gateway:HASH`, `world:anyone`) into an ACL entry.
pub fn parse_acl_id(id: &str, perms: Permission) -> Result<Acl> {
    let (scheme, rest) = id
        .split_once(':')
        .ok_or_else(|| ZkError::Config(format!("ACL id {id:?} is not `scheme:id`")))?;
    Ok(Acl::new(perms, AuthId::new(scheme, rest)))
}

/// The ACL for nodes created by `session`: everything for its own identity (`auth`), READ for
/// the configured readers; fully open when the session has no credentials.
pub(crate) fn node_acl(digest: Option<&str>, readers: &[String]) -> Result<Vec<Acl>> {
    if digest.is_none() {
        return Ok(vec![Acl::new(Permission::ALL, AuthId::anyone())]);
    }
    let mut acl = vec![Acl::new(Permission::ALL, AuthId::authed())];
    for r in readers {
        acl.push(parse_acl_id(r, Permission::READ)?);
    }
    Ok(acl)
}

/// Creates `/service/address`, `/apps` and `/domains` (run as the admin identity). Nodes get
/// the session's ACL: admin ALL, the configured readers (gateways) READ. `/gateways` also
/// lets the readers CREATE and DELETE, so a read-only gateway can announce itself there.
pub async fn provision_tree(session: &ZkSession) -> Result<()> {
    for dir in [SERVICE, APPS, DOMAINS] {
        session.mkdir(dir).await?;
    }
    let acl: Vec<Acl> = session
        .node_acl()
        .iter()
        .map(|a| {
            if a.permission() == Permission::READ {
                Acl::new(
                    Permission::READ | Permission::CREATE | Permission::DELETE,
                    a.auth_id().clone(),
                )
            } else {
                a.clone()
            }
        })
        .collect();
    let client = session.client()?;
    let mode = CreateMode::Persistent.with_acls(zookeeper_client::Acls::new(&acl));
    match client.create(GATEWAYS, b"", &mode).await {
        Ok(_) => Ok(()),
        Err(zookeeper_client::Error::NodeExists) => client
            .set_acl(GATEWAYS, &acl, None)
            .await
            .map(|_| ())
            .map_err(|e| ZkError::op("set_acl", GATEWAYS, e)),
        Err(e) => Err(ZkError::op("create", GATEWAYS, e)),
    }
}

/// Grants the tenant with ACL id `tenant` (`user:HASH` from [`digest_id`]) its app: creates
/// `/apps/{app}` (holding `{}` until the tenant writes its spec) and `/service/address/{app}`,
/// each with admin ALL, tenant ALL except ADMIN (no ACL changes), readers READ. Run as admin.
pub async fn grant_app(session: &ZkSession, app: &AppId, tenant: &str) -> Result<()> {
    provision_tree(session).await?;
    let mut acl = session.node_acl().to_vec();
    acl.push(Acl::new(
        Permission::READ | Permission::WRITE | Permission::CREATE | Permission::DELETE,
        AuthId::new("digest", tenant),
    ));
    let client = session.client()?;
    for (path, data) in [(app_path(app), &b"{}"[..]), (service_app_path(app), b"")] {
        let mode = CreateMode::Persistent.with_acls(zookeeper_client::Acls::new(&acl));
        match client.create(&path, data, &mode).await {
            Ok(_) => {}
            Err(zookeeper_client::Error::NodeExists) => {
                client
                    .set_acl(&path, &acl, None)
                    .await
                    .map_err(|e| ZkError::op("set_acl", &path, e))?;
            }
            Err(e) => return Err(ZkError::op("create", &path, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ids_match_zookeeper() {
        // base64(sha1(b"super:secret")), as computed by ZooKeeper's generateDigest.
        assert_eq!(
            digest_id("super:secret").unwrap(),
            "super:lK75jTNcA+U9vtVEw5vB51mj/w4="
        );
        assert!(digest_id("nocolon").is_err());
        let acl = parse_acl_id("digest:g:abc=", Permission::READ).unwrap();
        assert_eq!(acl.scheme(), "digest");
        assert_eq!(acl.id(), "g:abc=");
        assert!(parse_acl_id("nocolon", Permission::READ).is_err());
    }
}
