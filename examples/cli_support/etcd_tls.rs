//! The TLS flags to etcd that the gateway and caasd take alike (`--etcd-ca`, `--etcd-cert`,
//! `--etcd-key`), flattened into each one's arguments. Each needs an argument `etcd` beside
//! it (the endpoints).

use std::path::PathBuf;

use caas_backends::store::{EtcdConfig, EtcdTlsConfig};

/// TLS to etcd's `https://` endpoints.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct EtcdTlsArgs {
    /// CA certificate (PEM) that signed etcd's certificate, for https:// endpoints.
    #[arg(long, value_name = "FILE", requires = "etcd")]
    pub(crate) etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM), for an etcd with --client-cert-auth.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_ca", "etcd_key"])]
    pub(crate) etcd_cert: Option<PathBuf>,
    /// Client private key (PEM), with --etcd-cert.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub(crate) etcd_key: Option<PathBuf>,
}

impl EtcdTlsArgs {
    /// `config` with these TLS settings, when --etcd-ca is given.
    pub(crate) fn apply(&self, config: EtcdConfig) -> EtcdConfig {
        match &self.etcd_ca {
            Some(ca) => config.with_tls(EtcdTlsConfig {
                ca: ca.clone(),
                cert: self.etcd_cert.clone(),
                key: self.etcd_key.clone(),
            }),
            None => config,
        }
    }
}
