//! [`CertResolver`]: rustls' certificate resolver for the gateway. It holds the SNI table in
//! one `ArcSwap`, like the router holds the route table: a handshake loads the current table
//! without locking; a change (a certificate file edited, a custom domain's certificate
//! stored) builds a new table from the resolver's inputs and swaps it in. Connections keep
//! the certificate they were set up with, so a swap never touches them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use caas_core::{AppId, Domain};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::{CertTable, Match};
use super::config::{CertError, TlsConfig, TlsError, UnknownSni};
use super::load::{LoadedCert, load_pem};

/// How the resolver's certificates have fared; live counters.
#[derive(Debug, Default)]
pub struct CertStats {
    /// New versions of certificate files put in service.
    pub file_reloads: AtomicU64,
    /// Versions of certificate files refused (unreadable, malformed, key not matching...),
    /// each logged with the file and why; the last good certificate stays in service.
    pub file_rejected: AtomicU64,
    /// Custom-domain certificates from the certificate source put in service.
    pub store_applied: AtomicU64,
    /// Custom-domain certificates from the source refused (logged with the domain and why).
    pub store_rejected: AtomicU64,
    /// Handshakes whose SNI no certificate serves, or with no SNI (given the default
    /// certificate or refused, per `unknown_sni`).
    pub unknown_sni: AtomicU64,
}

/// One configured certificate (from files, or PEM given in memory).
#[derive(Debug)]
pub(crate) struct FileCert {
    /// Config key of the entry, `tls.certificates[N]`.
    pub(crate) key_name: String,
    /// The certificate and key files; `None` for PEM given in memory (nothing to watch).
    pub(crate) paths: Option<(PathBuf, PathBuf)>,
    /// The bytes last read from both files (good or not), to notice changes.
    pub(crate) seen: (Vec<u8>, Vec<u8>),
    /// The certificate in service.
    pub(crate) loaded: LoadedCert,
}

/// One custom domain's certificate from a certificate source.
#[derive(Debug)]
struct StoreCert {
    app: AppId,
    pem: (String, String),
    loaded: LoadedCert,
}

/// What the table is built from.
#[derive(Debug, Default)]
pub(crate) struct Inputs {
    pub(crate) files: Vec<FileCert>,
    store: BTreeMap<Domain, StoreCert>,
    /// Gateway domains: names under them (`{app}.{domain}`) route by the gateway's own rules
    /// and never get a stored certificate.
    reserved: Vec<Domain>,
}

/// The gateway's certificate resolver: certificate files chosen by SNI, plus the
/// custom-domain certificates of a [`CertSource`](caas_core::CertSource). Build it with
/// [`from_config`](Self::from_config) or [`from_pem`](Self::from_pem), serve it with
/// [`TlsAcceptor::new`](super::TlsAcceptor::new), keep it current with
/// [`watch_files`](Self::watch_files) and [`follow`](Self::follow).
#[derive(Debug)]
pub struct CertResolver {
    table: ArcSwap<CertTable<Arc<CertifiedKey>>>,
    inputs: Mutex<Inputs>,
    unknown_sni: UnknownSni,
    stats: CertStats,
}

/// `tls.certificates[N].cert PATH`, `...key PATH`, or both when it takes both to tell.
pub(crate) fn blame(key_name: &str, cert: &Path, key: &Path, err: &CertError) -> String {
    match err.in_key() {
        Some(false) => format!("{key_name}.cert {}", cert.display()),
        Some(true) => format!("{key_name}.key {}", key.display()),
        None => format!(
            "{key_name} (cert {}, key {})",
            cert.display(),
            key.display()
        ),
    }
}

impl CertResolver {
    /// Loads the certificates of a `[tls]` table, with relative paths taken from `base_dir`
    /// (the config file's directory). Any certificate that cannot be served fails the
    /// whole call, naming the config key, the file and why.
    pub fn from_config(config: &TlsConfig, base_dir: &Path) -> Result<Arc<Self>, TlsError> {
        config.validate().map_err(TlsError::Config)?;
        let mut files = Vec::with_capacity(config.certificates.len());
        for (i, entry) in config.certificates.iter().enumerate() {
            let key_name = format!("tls.certificates[{i}]");
            let (cert_path, key_path) = (base_dir.join(&entry.cert), base_dir.join(&entry.key));
            let read = |field: &str, path: &Path| {
                std::fs::read(path).map_err(|e| TlsError::Certificate {
                    at: format!("{key_name}.{field} {}", path.display()),
                    reason: CertError::Read(e),
                })
            };
            let seen = (read("cert", &cert_path)?, read("key", &key_path)?);
            let loaded = load_pem(&seen.0, &seen.1).map_err(|reason| TlsError::Certificate {
                at: blame(&key_name, &cert_path, &key_path, &reason),
                reason,
            })?;
            files.push(FileCert {
                key_name,
                paths: Some((cert_path, key_path)),
                seen,
                loaded,
            });
        }
        Ok(Self::with_inputs(
            Inputs {
                files,
                ..Inputs::default()
            },
            config.unknown_sni,
        ))
    }

    /// Certificates given as PEM text (chain, key), in priority order; the first is the
    /// default certificate when `unknown_sni` is [`UnknownSni::Default`]. Not watched: there
    /// are no files.
    pub fn from_pem(
        pairs: &[(&str, &str)],
        unknown_sni: UnknownSni,
    ) -> Result<Arc<Self>, TlsError> {
        let config = TlsConfig {
            certificates: Vec::new(),
            unknown_sni,
            session_resumption: true,
        };
        if pairs.is_empty() {
            config.validate().map_err(TlsError::Config)?;
        }
        let mut files = Vec::with_capacity(pairs.len());
        for (i, (cert, key)) in pairs.iter().enumerate() {
            let key_name = format!("certificate {i}");
            let loaded = load_pem(cert.as_bytes(), key.as_bytes()).map_err(|reason| {
                TlsError::Certificate {
                    at: key_name.clone(),
                    reason,
                }
            })?;
            files.push(FileCert {
                key_name,
                paths: None,
                seen: (cert.as_bytes().to_vec(), key.as_bytes().to_vec()),
                loaded,
            });
        }
        Ok(Self::with_inputs(
            Inputs {
                files,
                ..Inputs::default()
            },
            unknown_sni,
        ))
    }

    fn with_inputs(inputs: Inputs, unknown_sni: UnknownSni) -> Arc<Self> {
        let resolver = Arc::new(Self {
            table: ArcSwap::from_pointee(CertTable::default()),
            inputs: Mutex::new(inputs),
            unknown_sni,
            stats: CertStats::default(),
        });
        resolver.rebuild(&resolver.lock());
        resolver
    }

    /// The counters.
    pub fn stats(&self) -> &CertStats {
        &self.stats
    }

    /// Names served now (exact and wildcard, files and store together).
    pub fn name_count(&self) -> usize {
        self.table.load().len()
    }

    /// Custom-domain certificates in service now.
    pub fn store_count(&self) -> usize {
        self.lock().store.len()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inputs> {
        // Replaced whole on every change; a panic elsewhere cannot leave it half-updated.
        self.inputs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Builds the SNI table from `inputs` and swaps it in: the configured certificates (in
    /// their order), then each custom domain's certificate for its own domain, unless a
    /// configured certificate serves that name or it lies under a gateway domain. The
    /// operator's names stay the operator's: a tenant's certificate never takes them over.
    pub(crate) fn rebuild(&self, inputs: &Inputs) {
        let files = inputs
            .files
            .iter()
            .map(|f| (f.loaded.names.as_slice(), Arc::clone(&f.loaded.key)));
        let default = match self.unknown_sni {
            UnknownSni::Default => inputs.files.first().map(|f| Arc::clone(&f.loaded.key)),
            UnknownSni::Reject => None,
        };
        let (mut table, shadowed) = CertTable::build(files, default);
        for s in shadowed {
            tracing::warn!(
                name = %s.name,
                kept = %inputs.files[s.kept].key_name,
                not_served = %inputs.files[s.dropped].key_name,
                "two certificates serve one name; the first keeps it"
            );
        }
        for (domain, s) in &inputs.store {
            let reserved = inputs.reserved.iter().any(|r| {
                domain
                    .as_str()
                    .strip_suffix(r.as_str())
                    .is_some_and(|head| head.is_empty() || head.ends_with('.'))
            });
            if reserved || !table.add_if_unserved(domain, Arc::clone(&s.loaded.key)) {
                tracing::warn!(
                    %domain,
                    app = %s.app,
                    "stored certificate not served: the name is the gateway's own (a gateway \
                     domain or a configured certificate serves it)"
                );
            }
        }
        self.table.store(Arc::new(table));
    }

    /// Marks the gateway's domains: names under them never get a stored certificate (they
    /// route to the app the gateway names, not to a custom domain's claimant).
    pub(crate) fn reserve(&self, domains: &[Domain]) {
        let mut inputs = self.lock();
        if inputs.reserved != domains {
            inputs.reserved = domains.to_vec();
            self.rebuild(&inputs);
        }
    }

    /// Puts a custom domain's certificate in service (replacing the one it had), or refuses
    /// it and keeps the one it had. Does not rebuild.
    pub(crate) fn put_store(
        &self,
        inputs: &mut Inputs,
        domain: Domain,
        app: AppId,
        pem: (String, String),
    ) {
        if inputs
            .store
            .get(&domain)
            .is_some_and(|s| s.pem == pem && s.app == app)
        {
            return;
        }
        let loaded = load_pem(pem.0.as_bytes(), pem.1.as_bytes()).and_then(|l| {
            if super::load::covers(&l.names, &domain) {
                Ok(l)
            } else {
                Err(CertError::NotForDomain(domain.to_string()))
            }
        });
        match loaded {
            Ok(loaded) => {
                self.stats.store_applied.fetch_add(1, Relaxed);
                tracing::info!(%domain, %app, "serving the stored certificate of a custom domain");
                inputs.store.insert(domain, StoreCert { app, pem, loaded });
            }
            Err(e) => {
                self.stats.store_rejected.fetch_add(1, Relaxed);
                let kept = inputs.store.contains_key(&domain);
                tracing::error!(%domain, %app, kept_previous = kept, "stored certificate refused: {e}");
            }
        }
    }

    /// Replaces the custom-domain certificates with `keep`'s domains (others leave service).
    pub(crate) fn retain_store(&self, inputs: &mut Inputs, keep: &dyn Fn(&Domain) -> bool) {
        inputs.store.retain(|d, s| {
            let kept = keep(d);
            if !kept {
                tracing::info!(domain = %d, app = %s.app, "stored certificate leaves service");
            }
            kept
        });
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        let found = table.resolve(hello.server_name());
        if !matches!(found, Some((_, Match::Exact | Match::Wildcard))) {
            self.stats.unknown_sni.fetch_add(1, Relaxed);
            if found.is_none() {
                tracing::debug!(sni = ?hello.server_name(), "no certificate for this name; handshake refused");
            }
        }
        found.map(|(cert, _)| Arc::clone(cert))
    }
}
