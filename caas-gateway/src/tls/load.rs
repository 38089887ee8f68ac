//! From PEM text to a servable certificate: the chain, a private key that matches it, and
//! the DNS names it may be offered for.

use std::sync::{Arc, OnceLock};

use caas_core::Domain;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;

use super::certs::CertName;
use super::config::CertError;
use super::x509;

/// The crypto of every TLS listener the gateway sets up (aws-lc-rs), named explicitly so
/// that another provider linked into the program cannot make rustls' choice ambiguous.
pub(crate) fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// A certificate ready to serve, and the names it serves.
#[derive(Debug, Clone)]
pub(crate) struct LoadedCert {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) names: Vec<CertName>,
}

/// Parses a certificate chain and its key, checks they belong together, and reads the
/// names of the leaf certificate's subjectAltName list.
pub(crate) fn load_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<LoadedCert, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::CertPem(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate);
    };
    let names = dns_names(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => CertError::NoKey,
        e => CertError::KeyPem(e.to_string()),
    })?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::UnusableKey(e.to_string()))?;
    let key = CertifiedKey::new(chain, signer);
    match key.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(CertError::KeyMismatch);
        }
        // The key cannot tell its public half (rare key types): rustls serves it unchecked.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(CertError::BadCertificate(e.to_string())),
    }
    Ok(LoadedCert {
        key: Arc::new(key),
        names,
    })
}

/// The SNI names of a leaf certificate, each confirmed by webpki (what clients check
/// against): a name the DER walk read but webpki would not accept is left out and logged.
fn dns_names(leaf: &CertificateDer<'_>) -> Result<Vec<CertName>, CertError> {
    let parsed = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| CertError::BadCertificate(format!("{e:?}")))?;
    let raw = x509::dns_names(leaf).map_err(|e| match e {
        x509::X509Error::NoSan => CertError::NoDnsName,
        e => CertError::BadCertificate(e.to_string()),
    })?;
    let mut names = Vec::with_capacity(raw.len());
    for bytes in raw {
        let Some(name) = CertName::parse(bytes) else {
            tracing::warn!(
                name = %String::from_utf8_lossy(bytes),
                "certificate name cannot be asked for by SNI; not served"
            );
            continue;
        };
        let probe = match &name {
            CertName::Exact(d) => d.to_string(),
            CertName::Wildcard(d) => format!("wildcard-probe.{d}"),
        };
        let valid = ServerName::try_from(probe.as_str())
            .is_ok_and(|sn| parsed.verify_is_valid_for_subject_name(&sn).is_ok());
        if !valid {
            tracing::warn!(%name, "webpki does not accept the certificate for this name; not served");
            continue;
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(CertError::NoDnsName);
    }
    Ok(names)
}

/// Whether a certificate with these names is valid for `domain` (exactly, or through a
/// wildcard one label up).
pub(crate) fn covers(names: &[CertName], domain: &Domain) -> bool {
    let parent = domain.as_str().split_once('.').map(|(_, p)| p);
    names.iter().any(|n| match n {
        CertName::Exact(d) => d == domain,
        CertName::Wildcard(d) => parent == Some(d.as_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_good_pair_loads_with_its_names() {
        let (cert, key) = pair(&["www.hello.test", "*.caas.local", "WWW.hello.test"]);
        let loaded = load_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        let shown: Vec<String> = loaded.names.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["www.hello.test", "*.caas.local"]);
        let d = |s| Domain::new(s).unwrap();
        assert!(covers(&loaded.names, &d("www.hello.test")));
        assert!(covers(&loaded.names, &d("app.caas.local")));
        assert!(!covers(&loaded.names, &d("caas.local")));
        assert!(!covers(&loaded.names, &d("a.b.caas.local")));
        assert!(!covers(&loaded.names, &d("hello.test")));
    }

    #[test]
    fn bad_pairs_say_why() {
        let (cert, key) = pair(&["a.test"]);
        let (_, other_key) = pair(&["a.test"]);
        let (ip_only, ip_key) = {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::default();
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
            (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
        };
        let (no_san, no_san_key) = {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::default();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "cn-only.test");
            (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
        };
        let garbled = cert.replace("MII", "M!I");
        for (c, k, want) in [
            (cert.as_str(), other_key.as_str(), "does not match"),
            (cert.as_str(), "", "no private key"),
            (cert.as_str(), cert.as_str(), "no private key"),
            ("", key.as_str(), "no certificate"),
            (key.as_str(), key.as_str(), "no certificate"),
            (garbled.as_str(), key.as_str(), "certificate"),
            (ip_only.as_str(), ip_key.as_str(), "no DNS name"),
            (no_san.as_str(), no_san_key.as_str(), "no DNS name"),
        ] {
            let err = load_pem(c.as_bytes(), k.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "want {want:?}, got {err:?}");
        }
    }
}
