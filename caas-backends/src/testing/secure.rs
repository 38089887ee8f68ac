//! Identities on every store, so that one permission test runs against each: a
//! [`SecureFixture`] provisions the tree as the admin, grants tenants their apps and hands
//! out stores connected as the admin, a tenant or the gateway. [`ZkSecure`] does it with
//! digest ACLs ([`crate::zk::acl`]) on the shared ZooKeeper, [`EtcdSecure`] with users and
//! roles ([`crate::store::etcd_auth`]) on the shared TLS etcd with auth enabled.

use std::future::Future;
use std::sync::Arc;

use caas_core::AppId;

use super::{EtcdServer, ZkServer, shared_etcd_secure, shared_zk};
use crate::store::{EtcdAdmin, EtcdStore, Store, StoreError, ZkStore};
use crate::testing::SECURE_ROOT_USER;
use crate::zk::acl::{digest_id, grant_app, provision_tree};
use crate::zk::{ZkConfig, ZkError, ZkSession};

/// One store with identities (see the module docs). Credentials are `user:password`.
pub trait SecureFixture: Send + Sync + 'static {
    /// The store's type.
    type Store: Store;

    /// The store's name, for messages.
    fn name(&self) -> &'static str;

    /// Provisions the tree and the gateway identity (again, when already done) and connects
    /// as the admin.
    fn admin(&self) -> impl Future<Output = Result<Self::Store, StoreError>> + Send;

    /// Grants `app` to the tenant `user:password` (creating the identity where the store
    /// keeps users), as the admin.
    fn grant_app(
        &self,
        app: &AppId,
        tenant: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Connects as the tenant `user:password`.
    fn tenant(&self, tenant: &str) -> impl Future<Output = Result<Self::Store, StoreError>> + Send;

    /// Connects as the gateway.
    fn gateway(&self) -> impl Future<Output = Result<Self::Store, StoreError>> + Send;
}

const ADMIN: &str = "admin:admin-secret";
const GATEWAY: &str = "gateway:gw-secret";

/// Digest ACLs on the process's shared ZooKeeper, under the chroot `/{test}`. Nodes a
/// tenant or the gateway creates are readable by the admin and the gateway.
#[derive(Debug)]
pub struct ZkSecure {
    server: Arc<ZkServer>,
    chroot: String,
}

fn zk_failed(op: &'static str, what: &str, e: ZkError) -> StoreError {
    match e {
        ZkError::Denied { .. } => StoreError::Denied {
            op,
            path: what.to_owned(),
        },
        e => StoreError::Unavailable {
            op,
            path: what.to_owned(),
            reason: e.to_string(),
        },
    }
}

impl ZkSecure {
    /// `None` when ZooKeeper is missing.
    pub fn shared(test: &str) -> Option<Self> {
        Some(Self {
            server: shared_zk(test)?,
            chroot: format!("/{test}"),
        })
    }

    async fn session(&self, digest: &str) -> Result<ZkSession, StoreError> {
        let id = |credentials: &str| {
            digest_id(credentials)
                .map(|d| format!("digest:{d}"))
                .map_err(|e| zk_failed("connect", credentials, e))
        };
        let config = ZkConfig::new(self.server.connect_string())
            .with_chroot(&self.chroot)
            .with_digest(digest)
            .with_reader(id(ADMIN)?)
            .with_reader(id(GATEWAY)?);
        ZkSession::connect(config)
            .await
            .map_err(|e| zk_failed("connect", &self.server.connect_string(), e))
    }
}

impl SecureFixture for ZkSecure {
    type Store = ZkStore;

    fn name(&self) -> &'static str {
        "zookeeper"
    }

    async fn admin(&self) -> Result<ZkStore, StoreError> {
        let admin = self.session(ADMIN).await?;
        provision_tree(&admin)
            .await
            .map_err(|e| zk_failed("provision_tree", &self.chroot, e))?;
        Ok(ZkStore::new(admin))
    }

    async fn grant_app(&self, app: &AppId, tenant: &str) -> Result<(), StoreError> {
        let admin = self.session(ADMIN).await?;
        let id = digest_id(tenant).map_err(|e| zk_failed("grant_app", tenant, e))?;
        let granted = grant_app(&admin, app, &id)
            .await
            .map_err(|e| zk_failed("grant_app", app.as_str(), e));
        admin.close();
        granted
    }

    async fn tenant(&self, tenant: &str) -> Result<ZkStore, StoreError> {
        self.session(tenant).await.map(ZkStore::new)
    }

    async fn gateway(&self) -> Result<ZkStore, StoreError> {
        self.session(GATEWAY).await.map(ZkStore::new)
    }
}

/// Users and roles on the process's shared TLS etcd with auth enabled, under the root
/// `/{test}`. User names get `@{root}` appended, so that tests sharing the server do not
/// share users.
#[derive(Debug)]
pub struct EtcdSecure {
    server: Arc<EtcdServer>,
    root: String,
}

impl EtcdSecure {
    /// `None` when etcd is missing.
    pub fn shared(test: &str) -> Option<Self> {
        Some(Self {
            server: shared_etcd_secure(test)?,
            root: format!("/{test}"),
        })
    }

    /// The server's `root` user, for provisioning.
    async fn root(&self) -> Result<EtcdAdmin, StoreError> {
        EtcdAdmin::connect(self.server.config(&self.root).with_user(SECURE_ROOT_USER)).await
    }

    /// `user@{root}:password`.
    fn user(&self, credentials: &str) -> Result<String, StoreError> {
        match credentials.split_once(':') {
            Some((user, password)) => Ok(format!("{user}@{}:{password}", self.root)),
            None => Err(StoreError::Invalid {
                op: "connect",
                path: credentials.to_owned(),
                reason: "expected user:password".into(),
            }),
        }
    }

    async fn connect(&self, credentials: &str) -> Result<EtcdStore, StoreError> {
        let config = self
            .server
            .config(&self.root)
            .with_user(self.user(credentials)?);
        EtcdStore::connect(config).await
    }
}

impl SecureFixture for EtcdSecure {
    type Store = EtcdStore;

    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn admin(&self) -> Result<EtcdStore, StoreError> {
        let mut root = self.root().await?;
        root.provision().await?;
        root.add_user(&self.user(ADMIN)?, &[root.admin_role()])
            .await?;
        root.add_user(&self.user(GATEWAY)?, &[root.gateway_role()])
            .await?;
        // Already enabled by the harness: nothing to do.
        root.enable_auth().await?;
        self.connect(ADMIN).await
    }

    async fn grant_app(&self, app: &AppId, tenant: &str) -> Result<(), StoreError> {
        let root = self.root().await?;
        let user = self.user(tenant)?;
        root.add_user(&user, &[]).await?;
        let name = user.split_once(':').map_or(user.as_str(), |(n, _)| n);
        root.grant_app(app, name).await
    }

    async fn tenant(&self, tenant: &str) -> Result<EtcdStore, StoreError> {
        self.connect(tenant).await
    }

    async fn gateway(&self) -> Result<EtcdStore, StoreError> {
        self.connect(GATEWAY).await
    }
}
