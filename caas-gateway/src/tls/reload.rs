//! Keeping a [`CertResolver`] current: certificate files re-read when they change, and the
//! custom-domain certificates of a [`CertSource`] applied as they come.
//!
//! Files are polled and their bytes compared, as the config file is (see `file`): it works
//! on every file system and with tools that replace files. A version that cannot be served
//! (unreadable, malformed, a key that does not match, say while a renewal has written the
//! new certificate but not yet its key) is logged with the file and why, counted once, and
//! the last good certificate stays in service; the next good version replaces it. Open
//! connections are never touched: they keep the certificate they were set up with.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use caas_core::{CertSource, CertUpdate};

use super::config::CertError;
use super::load::load_pem;
use super::resolver::{CertResolver, blame};

impl CertResolver {
    /// Re-reads the certificate files every `every` and puts changed ones in service.
    /// Runs until dropped: spawn it beside the gateway. (Certificates given as PEM text
    /// have no files: there is nothing to re-read.)
    pub async fn watch_files(self: Arc<Self>, every: Duration) {
        let (count, watched) = {
            let inputs = self.lock();
            let watched = inputs.files.iter().any(|f| f.paths.is_some());
            (inputs.files.len(), watched)
        };
        if !watched {
            return;
        }
        let mut failing = vec![false; count];
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate: the files were just loaded
        loop {
            ticker.tick().await;
            for (i, failing) in failing.iter_mut().enumerate() {
                self.check_file(i, failing).await;
            }
        }
    }

    /// Looks at one configured certificate's files; `failing` remembers an unreadable
    /// state so it is reported once.
    async fn check_file(&self, i: usize, failing: &mut bool) {
        let (key_name, (cert_path, key_path)) = {
            let inputs = self.lock();
            let f = &inputs.files[i];
            match &f.paths {
                Some(paths) => (f.key_name.clone(), paths.clone()),
                None => return, // PEM given in memory: nothing to watch
            }
        };
        let read = tokio::try_join!(
            async {
                tokio::fs::read(&cert_path)
                    .await
                    .map_err(|e| (format!("{key_name}.cert {}", cert_path.display()), e))
            },
            async {
                tokio::fs::read(&key_path)
                    .await
                    .map_err(|e| (format!("{key_name}.key {}", key_path.display()), e))
            },
        );
        let bytes = match read {
            Ok(bytes) => bytes,
            Err((at, e)) => {
                if !*failing {
                    *failing = true;
                    self.stats().file_rejected.fetch_add(1, Relaxed);
                    tracing::error!(
                        "{at}: {}; keeping the last good certificate",
                        CertError::Read(e)
                    );
                }
                return;
            }
        };
        *failing = false;
        if self.lock().files[i].seen == bytes {
            return;
        }
        // Parsing and checking the key is CPU work of a millisecond or so: fine inline at
        // this rate, and it keeps the inputs' lock out of it.
        let loaded = load_pem(&bytes.0, &bytes.1);
        let mut inputs = self.lock();
        inputs.files[i].seen = bytes;
        match loaded {
            Ok(loaded) => {
                let names: Vec<String> = loaded.names.iter().map(|n| n.to_string()).collect();
                inputs.files[i].loaded = loaded;
                self.rebuild(&inputs);
                self.stats().file_reloads.fetch_add(1, Relaxed);
                tracing::info!(cert = %cert_path.display(), ?names, "{key_name}: new certificate in service");
            }
            Err(e) => {
                self.stats().file_rejected.fetch_add(1, Relaxed);
                let at = blame(&key_name, &cert_path, &key_path, &e);
                tracing::error!("{at}: {e}; keeping the last good certificate");
            }
        }
    }

    /// Applies the updates of a custom-domain certificate source until it ends (then the
    /// certificates it gave stay in service). Runs until dropped: spawn it beside the
    /// gateway.
    pub async fn follow(self: Arc<Self>, mut source: impl CertSource) {
        while let Some(update) = source.next().await {
            // Parsing a large reset (many certificates and keys) takes a while: off the
            // worker threads, so handshakes and requests go on meanwhile.
            let me = Arc::clone(&self);
            if let Err(e) = tokio::task::spawn_blocking(move || me.apply(update)).await {
                self.stats().store_rejected.fetch_add(1, Relaxed);
                tracing::error!(
                    "applying a certificate update failed: {e}; keeping the last certificates"
                );
            }
        }
        tracing::warn!("certificate source ended; keeping the certificates it gave");
    }

    /// Applies one update from a certificate source.
    pub(crate) fn apply(&self, update: CertUpdate) {
        let mut inputs = self.lock();
        match update {
            CertUpdate::Reset(certs) => {
                let listed: BTreeSet<_> = certs.iter().map(|c| c.domain.clone()).collect();
                self.retain_store(&mut inputs, &|d| listed.contains(d));
                for c in certs {
                    self.put_store(&mut inputs, c.domain, c.app, (c.cert_pem, c.key_pem));
                }
            }
            CertUpdate::Upsert(c) => {
                self.put_store(&mut inputs, c.domain, c.app, (c.cert_pem, c.key_pem));
            }
            CertUpdate::Remove(domain) => self.retain_store(&mut inputs, &|d| *d != domain),
        }
        self.rebuild(&inputs);
    }
}
