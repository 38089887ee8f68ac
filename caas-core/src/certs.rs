//! Where custom-domain certificates come from: the [`CertSource`] contract.
//!
//! A store (ZooKeeper in `caas-backends`) holds a certificate and its key per claimed custom
//! domain; the gateway serves each one over HTTPS for exactly that domain. The contract lives
//! here, beside [`Discovery`](crate::Discovery), so that the gateway needs no store and the
//! store needs no gateway: the source yields PEM text, the gateway parses and checks it.
//!
//! Like a discovery it is a stream modelled on watches: a full `Reset` on start and after
//! every reconnect, per-domain `Upsert` / `Remove` in between. A source sends only what may
//! be served: the store enforces that the app holding the domain's claim owns the
//! certificate, and sends `Remove` as soon as that stops being true.

use std::fmt;
use std::future::Future;

use tokio::sync::mpsc;

use crate::id::{AppId, Domain};

/// A certificate for one custom domain, as a store hands it over.
#[derive(Clone, PartialEq, Eq)]
pub struct DomainCert {
    /// The domain it is served for (and only that one, whatever else its SAN list names).
    pub domain: Domain,
    /// The app holding the domain's claim (for logs and metrics).
    pub app: AppId,
    /// The certificate chain, PEM, leaf first.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1), already decrypted.
    pub key_pem: String,
}

impl fmt::Debug for DomainCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("DomainCert")
            .field("domain", &self.domain)
            .field("app", &self.app)
            .field("cert_pem_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// One change to the set of servable custom-domain certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertUpdate {
    /// Replace every certificate of this source.
    Reset(Vec<DomainCert>),
    /// Add or replace the certificate of one domain.
    Upsert(DomainCert),
    /// Stop serving the certificate of one domain.
    Remove(Domain),
}

/// A source of custom-domain certificates.
pub trait CertSource: Send + 'static {
    /// Waits for the next update; `None` once the source has ended for good (the gateway
    /// then keeps serving the certificates it has).
    fn next(&mut self) -> impl Future<Output = Option<CertUpdate>> + Send;
}

impl CertSource for mpsc::Receiver<CertUpdate> {
    async fn next(&mut self) -> Option<CertUpdate> {
        self.recv().await
    }
}

impl CertSource for mpsc::UnboundedReceiver<CertUpdate> {
    async fn next(&mut self) -> Option<CertUpdate> {
        self.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let c = DomainCert {
            domain: Domain::new("www.a.test").unwrap(),
            app: AppId::new("a").unwrap(),
            cert_pem: "CERT".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----SECRET".into(),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("www.a.test"), "{shown}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
