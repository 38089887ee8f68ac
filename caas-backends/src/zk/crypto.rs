//! Optional AES-256-GCM encryption of config values stored in ZooKeeper.
//!
//! An encrypted value is `enc:v1:` followed by `base64(nonce[12] || ciphertext+tag)`. The node's
//! path is the associated data, so a value copied to another node fails to decrypt instead
//! of silently configuring the wrong app. The key file holds the 32 key bytes raw or as
//! base64 on one line (`head -c32 /dev/urandom | base64 > zk.key`).

use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::error::{Result, ZkError};

const PREFIX: &[u8] = b"enc:v1:";
const NONCE_LEN: usize = 12;

/// An AES-256-GCM key for config values.
#[derive(Clone)]
pub struct ValueCipher {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for ValueCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueCipher(..)")
    }
}

impl ValueCipher {
    /// A cipher from 32 key bytes.
    pub fn from_key(key: &[u8]) -> Result<Self> {
        let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| {
            ZkError::Config(format!(
                "encryption key must be 32 bytes, got {}",
                key.len()
            ))
        })?;
        Ok(Self { cipher })
    }

    /// Loads the key file: 32 raw bytes, or base64 of them (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |reason: String| ZkError::File {
            path: path.to_owned(),
            reason,
        };
        let raw = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        if raw.len() == 32 {
            return Self::from_key(&raw);
        }
        let text = std::str::from_utf8(&raw)
            .map_err(|_| bad("expected 32 raw bytes or their base64".into()))?;
        let key = STANDARD
            .decode(text.trim())
            .map_err(|_| bad("expected 32 raw bytes or their base64".into()))?;
        if key.len() != 32 {
            return Err(bad(format!(
                "key must be 32 bytes (AES-256), the base64 holds {}",
                key.len()
            )));
        }
        Self::from_key(&key)
    }

    /// Encrypts `plain` for the node at `path`.
    pub fn encrypt(&self, path: &str, plain: &[u8]) -> Result<Vec<u8>> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: path.as_bytes(),
                },
            )
            .map_err(|_| ZkError::BadData {
                path: path.to_owned(),
                reason: "encryption failed".into(),
            })?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        let mut out = PREFIX.to_vec();
        out.extend_from_slice(STANDARD.encode(blob).as_bytes());
        Ok(out)
    }

    fn decrypt(&self, path: &str, body: &[u8]) -> Result<Vec<u8>> {
        let decrypt_err = || ZkError::Decrypt {
            path: path.to_owned(),
        };
        let blob = STANDARD.decode(body).map_err(|_| decrypt_err())?;
        if blob.len() < NONCE_LEN {
            return Err(decrypt_err());
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: path.as_bytes(),
                },
            )
            .map_err(|_| decrypt_err())
    }
}

/// Whether a stored value is an encrypted envelope.
pub fn is_encrypted(value: &[u8]) -> bool {
    value.starts_with(PREFIX)
}

/// Opens a value read from `path`: decrypts an envelope, passes plain values through (so a
/// tree can be migrated to encryption node by node).
pub(crate) fn open(cipher: Option<&ValueCipher>, path: &str, value: Vec<u8>) -> Result<Vec<u8>> {
    match value.strip_prefix(PREFIX) {
        None => Ok(value),
        Some(body) => match cipher {
            Some(c) => c.decrypt(path, body),
            None => Err(ZkError::NoKey {
                path: path.to_owned(),
            }),
        },
    }
}

/// Seals a value for `path` when a key is configured.
pub(crate) fn seal(cipher: Option<&ValueCipher>, path: &str, value: Vec<u8>) -> Result<Vec<u8>> {
    match cipher {
        Some(c) => c.encrypt(path, &value),
        None => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key_or_path() {
        let k1 = ValueCipher::from_key(&[1; 32]).unwrap();
        let k2 = ValueCipher::from_key(&[2; 32]).unwrap();
        let sealed = seal(Some(&k1), "/apps/a", b"{}".to_vec()).unwrap();
        assert!(is_encrypted(&sealed));
        assert_eq!(open(Some(&k1), "/apps/a", sealed.clone()).unwrap(), b"{}");
        let err = open(Some(&k2), "/apps/a", sealed.clone()).unwrap_err();
        assert!(matches!(err, ZkError::Decrypt { ref path } if path == "/apps/a"));
        assert!(err.to_string().contains("wrong encryption key"), "{err}");
        assert!(matches!(
            open(Some(&k1), "/apps/b", sealed.clone()),
            Err(ZkError::Decrypt { .. })
        ));
        assert!(matches!(
            open(None, "/apps/a", sealed),
            Err(ZkError::NoKey { .. })
        ));
        assert_eq!(open(Some(&k1), "/apps/a", b"{}".to_vec()).unwrap(), b"{}");
    }

    #[test]
    fn key_files_raw_or_base64() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.key");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        let b64 = dir.path().join("b64.key");
        std::fs::write(&b64, format!("{}\n", STANDARD.encode([7u8; 32]))).unwrap();
        let a = ValueCipher::from_file(&raw).unwrap();
        let b = ValueCipher::from_file(&b64).unwrap();
        let sealed = a.encrypt("/p", b"x").unwrap();
        assert_eq!(open(Some(&b), "/p", sealed).unwrap(), b"x");
        let short = dir.path().join("short.key");
        std::fs::write(&short, STANDARD.encode([7u8; 16])).unwrap();
        let err = ValueCipher::from_file(&short).unwrap_err().to_string();
        assert!(
            err.contains("short.key") && err.contains("32 bytes"),
            "{err}"
        );
    }
}
