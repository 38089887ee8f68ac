//! etcd users and roles: who may write which part of the tree, as [`crate::zk::acl`] does
//! with ZooKeeper digest ACLs.
//!
//! Roles, named after the root so that several caas trees can share one etcd:
//! - `admin@{root}`: read-write on `{root}/`, for the control plane (API, schedulers,
//!   agents) when it should not run as etcd's `root`;
//! - `gateway@{root}`: reads everything under `{root}/` and writes nothing, except the
//!   announcements: read-write on `{root}/gateways/`;
//! - `app:{appId}@{root}`, one per app, for its tenant: read-write on the key
//!   `{root}/apps/{appId}` and the prefixes `{root}/apps/{appId}/` and
//!   `{root}/service/address/{appId}/`. The prefixes end with `/`: `hello` does not reach
//!   `hello2`.
//!
//! Provisioning runs as etcd's `root` user, or anonymously while auth is still disabled:
//! [`EtcdAdmin::connect`], then [`EtcdAdmin::provision`] (the two shared roles),
//! [`EtcdAdmin::add_user`] and [`EtcdAdmin::grant_app`] for each tenant, and
//! [`EtcdAdmin::enable_auth`] last (it creates the `root` user). Every step can run again:
//! an existing role or user is kept (a user's password is set to the one given) and
//! permissions already granted are granted again.
//!
//! Where etcd differs from the ZooKeeper ACLs: etcd has no per-node ACL and its write
//! permission covers deletes, so a tenant may delete its own app key (ZooKeeper reserves
//! that to the admin, who holds DELETE on `/apps`); anything else a tenant or a gateway
//! may not do is refused alike ([`StoreError::Denied`]). A store's lease is revoked on
//! close with the write permission of the keys attached to it, which each identity has for
//! its own ephemeral nodes.

use caas_core::AppId;
use etcd_client::{Client, Permission};

use super::StoreError;
use super::etcd::{AUTH_NOT_ENABLED, EtcdConfig, connect_failed, describe};
use crate::zk::layout::{APPS, GATEWAYS, SERVICE};

/// etcd's answer to adding a role that exists.
const ROLE_EXISTS: &str = "etcdserver: role name already exists";
/// etcd's answer to adding a user that exists.
const USER_EXISTS: &str = "etcdserver: user name already exists";

/// A connection to etcd for provisioning users and roles of one caas root (see the module
/// docs).
#[derive(Clone)]
pub struct EtcdAdmin {
    client: Client,
    /// The root with no trailing `/` (empty for the whole key space).
    root: String,
    config: EtcdConfig,
    /// Whether etcd's auth was enabled when connecting (or since, by this handle).
    auth_enabled: bool,
}

impl std::fmt::Debug for EtcdAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAdmin")
            .field("config", &self.config)
            .field("auth_enabled", &self.auth_enabled)
            .finish_non_exhaustive()
    }
}

fn refused(op: &'static str, what: &str, e: &etcd_client::Error) -> StoreError {
    match e {
        etcd_client::Error::GRpcStatus(s)
            if matches!(
                s.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ) =>
        {
            StoreError::Denied {
                op,
                path: what.to_owned(),
            }
        }
        etcd_client::Error::GRpcStatus(s)
            if matches!(
                s.code(),
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
            ) =>
        {
            StoreError::Invalid {
                op,
                path: what.to_owned(),
                reason: s.message().to_owned(),
            }
        }
        _ => StoreError::Unavailable {
            op,
            path: what.to_owned(),
            reason: describe(e),
        },
    }
}

fn is(e: &etcd_client::Error, message: &str) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().starts_with(message))
}

impl EtcdAdmin {
    /// Connects with `config` (TLS as configured; `user` should be etcd's `root:PASSWORD`).
    /// While etcd's auth is disabled the credentials are not used yet: the connection is
    /// anonymous until [`EtcdAdmin::enable_auth`].
    pub async fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        let options = config.connect_options()?;
        let root = config.root.trim_end_matches('/').to_owned();
        let (client, auth_enabled) = match Client::connect(&config.endpoints, Some(options)).await {
            Ok(c) => (c, config.user.is_some()),
            Err(e) if config.user.is_some() && is(&e, AUTH_NOT_ENABLED) => {
                let mut anonymous = config.clone();
                anonymous.user = None;
                let c = Client::connect(&config.endpoints, Some(anonymous.connect_options()?))
                    .await
                    .map_err(|e| connect_failed(&anonymous, e))?;
                (c, false)
            }
            Err(e) => return Err(connect_failed(&config, e)),
        };
        Ok(Self {
            client,
            root,
            config,
            auth_enabled,
        })
    }

    /// Whether etcd's auth is enabled (as far as this handle knows).
    pub fn auth_enabled(&self) -> bool {
        self.auth_enabled
    }

    /// The root, `/` for the whole key space.
    fn root_name(&self) -> &str {
        if self.root.is_empty() {
            "/"
        } else {
            &self.root
        }
    }

    /// The control plane's role: read-write on the whole tree.
    pub fn admin_role(&self) -> String {
        format!("admin@{}", self.root_name())
    }

    /// The gateways' role.
    pub fn gateway_role(&self) -> String {
        format!("gateway@{}", self.root_name())
    }

    /// The role of one app's tenant.
    pub fn app_role(&self, app: &AppId) -> String {
        format!("app:{app}@{}", self.root_name())
    }

    /// The key of a node path.
    fn key(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    /// Creates the admin and gateway roles (see the module docs).
    pub async fn provision(&self) -> Result<(), StoreError> {
        let tree = self.key("/");
        self.role(
            &self.admin_role(),
            vec![Permission::read_write(tree.as_str()).with_prefix()],
        )
        .await?;
        self.role(
            &self.gateway_role(),
            vec![
                Permission::read(tree.as_str()).with_prefix(),
                Permission::read_write(self.key(&format!("{GATEWAYS}/"))).with_prefix(),
            ],
        )
        .await
    }

    /// Creates the role of `app` (see the module docs) and grants it to `user`, who must
    /// exist ([`EtcdAdmin::add_user`]).
    pub async fn grant_app(&self, app: &AppId, user: &str) -> Result<(), StoreError> {
        let role = self.app_role(app);
        self.role(
            &role,
            vec![
                Permission::read_write(self.key(&format!("{APPS}/{app}"))),
                Permission::read_write(self.key(&format!("{APPS}/{app}/"))).with_prefix(),
                Permission::read_write(self.key(&format!("{SERVICE}/{app}/"))).with_prefix(),
            ],
        )
        .await?;
        self.grant_roles(user, &[role]).await
    }

    /// Creates the user `user:password` (or sets its password when it exists) and grants it
    /// `roles` (e.g. [`EtcdAdmin::gateway_role`]).
    pub async fn add_user(&self, user_password: &str, roles: &[String]) -> Result<(), StoreError> {
        let (user, password) = split_user(user_password)?;
        let mut client = self.client.clone();
        match client.user_add(user, password, None).await {
            Ok(_) => {}
            Err(e) if is(&e, USER_EXISTS) => {
                client
                    .user_change_password(user, password)
                    .await
                    .map_err(|e| refused("user_change_password", user, &e))?;
            }
            Err(e) => return Err(refused("user_add", user, &e)),
        }
        self.grant_roles(user, roles).await
    }

    async fn grant_roles(&self, user: &str, roles: &[String]) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        for role in roles {
            client
                .user_grant_role(user, role.as_str())
                .await
                .map_err(|e| refused("user_grant_role", &format!("{user} ({role})"), &e))?;
        }
        Ok(())
    }

    async fn role(&self, role: &str, permissions: Vec<Permission>) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        match client.role_add(role).await {
            Ok(_) => {}
            Err(e) if is(&e, ROLE_EXISTS) => {}
            Err(e) => return Err(refused("role_add", role, &e)),
        }
        for p in permissions {
            client
                .role_grant_permission(role, p)
                .await
                .map_err(|e| refused("role_grant_permission", role, &e))?;
        }
        Ok(())
    }

    /// Enables etcd's auth: creates the `root` user with the password of this handle's
    /// credentials (which must be `root:PASSWORD`), grants it the `root` role, enables auth
    /// and authenticates this handle as `root`. Nothing to do when auth is enabled.
    /// Anonymous clients are refused from then on: run it after the roles and users exist.
    pub async fn enable_auth(&mut self) -> Result<(), StoreError> {
        if self.auth_enabled {
            return Ok(());
        }
        let invalid = |reason: &str| StoreError::Invalid {
            op: "auth_enable",
            path: self.config.endpoints.join(","),
            reason: reason.to_owned(),
        };
        let (user, password) = match self.config.user.as_deref().map(split_user) {
            Some(Ok(("root", password))) => ("root", password),
            Some(Ok(_)) | None => {
                return Err(invalid(
                    "enabling auth creates etcd's root user: connect as root:PASSWORD",
                ));
            }
            Some(Err(e)) => return Err(e),
        };
        self.add_user(&format!("{user}:{password}"), &["root".to_owned()])
            .await?;
        let mut client = self.client.clone();
        client
            .auth_enable()
            .await
            .map_err(|e| refused("auth_enable", "root", &e))?;
        self.auth_enabled = true;
        client
            .update_user(Some((user.to_owned(), password.to_owned())))
            .await
            .map_err(|e| connect_failed(&self.config, e))?;
        self.client = client;
        Ok(())
    }
}

fn split_user(user_password: &str) -> Result<(&str, &str), StoreError> {
    match user_password.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok((user, password)),
        _ => Err(StoreError::Invalid {
            op: "user_add",
            path: user_password
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned(),
            reason: "etcd user: expected `user:password`, both non-empty".into(),
        }),
    }
}
