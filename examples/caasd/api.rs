//! `caasd api`: the control API (HTTP + JSON under /v1) over the ZooKeeper store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use caas_backends::api::{Api, ApiConfig, Tokens};
use caas_backends::zk::ValueCipher;
use clap::Args;

use caas_backends::Store;

use crate::StoreArgs;

#[derive(Args, Debug)]
pub(crate) struct ApiArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// The tokens file (TOML: sha256, tenant, apps, admin per token; re-read when it changes).
    #[arg(long, value_name = "FILE")]
    tokens: PathBuf,
    /// Key file sealing app spec values (as the gateways' --zk-key-file), when they are
    /// encrypted.
    #[arg(long, value_name = "FILE")]
    zk_key_file: Option<PathBuf>,
    /// How long each gateway has to answer /stats/{app}, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    stats_timeout_ms: u64,
}

pub(crate) async fn run(a: ApiArgs) -> Result<(), String> {
    let tokens = Tokens::load(&a.tokens)?;
    let cipher = match &a.zk_key_file {
        Some(f) => Some(ValueCipher::from_file(f).map_err(|e| e.to_string())?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", a.listen))?;
    let store = a.store.open().await?;
    let config = ApiConfig {
        stats_timeout: Duration::from_millis(a.stats_timeout_ms.max(1)),
        ..ApiConfig::default()
    };
    let api = Api::new(store.clone(), tokens, cipher, config);
    tracing::info!(listen = %a.listen, "control api serving");
    api.serve(listener, async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot wait for Ctrl-C; serving until killed");
            std::future::pending::<()>().await;
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    store.close().await;
    Ok(())
}
