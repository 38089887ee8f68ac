//! `caasd etcd-provision`: etcd's roles and users for one caas root (see
//! `caas_backends::store::etcd_auth`), then, with --enable-auth, etcd's auth itself.
//!
//! ```text
//! caasd etcd-provision --etcd https://10.0.0.5:2379 --etcd-ca ca.pem \
//!     --etcd-cert admin.pem --etcd-key admin-key.pem --etcd-user root:ROOTPW \
//!     --admin-user caasd:PW --gateway-user gateway:PW --grant hello=alice:PW --enable-auth
//! ```

use caas_backends::store::EtcdAdmin;
use caas_core::AppId;
use clap::Args;

use super::StoreArgs;

#[derive(Args, Debug)]
pub(crate) struct ProvisionArgs {
    /// etcd to provision (--etcd; --etcd-user is etcd's root:PASSWORD, not used until auth
    /// is enabled).
    #[command(flatten)]
    store: StoreArgs,
    /// The control plane's user (read-write on the whole tree), user:password.
    #[arg(long, value_name = "USER:PASSWORD")]
    admin_user: Option<String>,
    /// The gateways' user (reads the tree, writes only announcements), user:password.
    #[arg(long, value_name = "USER:PASSWORD")]
    gateway_user: Option<String>,
    /// Grant APP to a tenant user (created, or its password set), APP=user:password;
    /// repeatable.
    #[arg(long = "grant", value_name = "APP=USER:PASSWORD", value_parser = parse_grant)]
    grants: Vec<(AppId, String)>,
    /// Then enable etcd's auth: creates the root user with --etcd-user's password.
    /// Anonymous clients are refused from then on.
    #[arg(long)]
    enable_auth: bool,
}

fn parse_grant(s: &str) -> Result<(AppId, String), String> {
    let (app, user) = s.split_once('=').ok_or("expected APP=USER:PASSWORD")?;
    let app = AppId::new(app).map_err(|e| e.to_string())?;
    match user.split_once(':') {
        Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok((app, user.to_owned())),
        _ => Err("expected APP=USER:PASSWORD".into()),
    }
}

pub(crate) async fn run(a: ProvisionArgs) -> Result<(), String> {
    let config = a.store.etcd_config().ok_or(
        "etcd-provision works on etcd: give --etcd (ZooKeeper's ACLs come with its nodes)",
    )?;
    let mut admin = EtcdAdmin::connect(config)
        .await
        .map_err(|e| e.to_string())?;
    admin.provision().await.map_err(|e| e.to_string())?;
    println!("roles {} and {}", admin.admin_role(), admin.gateway_role());
    if let Some(user) = &a.admin_user {
        admin
            .add_user(user, &[admin.admin_role()])
            .await
            .map_err(|e| e.to_string())?;
        println!("user {} ({})", name(user), admin.admin_role());
    }
    if let Some(user) = &a.gateway_user {
        admin
            .add_user(user, &[admin.gateway_role()])
            .await
            .map_err(|e| e.to_string())?;
        println!("user {} ({})", name(user), admin.gateway_role());
    }
    for (app, user) in &a.grants {
        admin.add_user(user, &[]).await.map_err(|e| e.to_string())?;
        admin
            .grant_app(app, name(user))
            .await
            .map_err(|e| e.to_string())?;
        println!("user {} ({})", name(user), admin.app_role(app));
    }
    if a.enable_auth {
        admin.enable_auth().await.map_err(|e| e.to_string())?;
        println!("auth enabled");
    } else if !admin.auth_enabled() {
        println!("auth is still disabled: run again with --enable-auth");
    }
    Ok(())
}

/// The user name of `user:password`.
fn name(user_password: &str) -> &str {
    user_password
        .split_once(':')
        .map_or(user_password, |(u, _)| u)
}
