//! Bearer tokens: who is asking and which apps they own.
//!
//! The tokens file (TOML) lists each token by its SHA-256, never in the clear:
//!
//! ```toml
//! [[token]]
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256sum of the token
//! tenant = "acme"
//! apps = ["acme-*", "hello"]     # exact app ids, or prefixes ending in '*'
//! admin = false                  # admins see every app, the hosts, and may drain
//! ```
//!
//! The file is checked before every request: when its modification time, size or inode
//! changed, or it was modified in the last two seconds (a rewrite within one timestamp tick
//! would not show in the time), it is read again. A version that does not parse is logged
//! and counted, and the last good one stays in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use caas_core::AppId;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant's name (for logs).
    pub tenant: String,
    /// App ids and prefixes (`acme-*`) the tenant owns.
    pub apps: Vec<AppPattern>,
    /// Sees every app and the hosts; may drain.
    pub admin: bool,
}

impl Principal {
    /// Whether the principal may see and change `app`.
    pub fn owns(&self, app: &AppId) -> bool {
        self.admin || self.apps.iter().any(|p| p.matches(app.as_str()))
    }
}

/// An exact app id or a prefix (`acme-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppPattern {
    /// This app only.
    Exact(String),
    /// Every app whose id starts with this.
    Prefix(String),
}

impl AppPattern {
    fn parse(s: &str) -> Result<Self, String> {
        if let Some(prefix) = s.strip_suffix('*') {
            let ok = prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if ok {
                Ok(Self::Prefix(prefix.to_owned()))
            } else {
                Err(format!(
                    "app pattern {s:?}: a prefix is [a-z0-9-] followed by '*'"
                ))
            }
        } else {
            AppId::new(s)
                .map(|a| Self::Exact(a.as_str().to_owned()))
                .map_err(|e| format!("app pattern {s:?}: {e}"))
        }
    }

    /// Whether `app` matches.
    pub fn matches(&self, app: &str) -> bool {
        match self {
            Self::Exact(a) => a == app,
            Self::Prefix(p) => app.starts_with(p.as_str()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    sha256: String,
    tenant: String,
    #[serde(default)]
    apps: Vec<String>,
    #[serde(default)]
    admin: bool,
}

/// The parsed file: principals by the hex SHA-256 of their token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenTable {
    by_hash: HashMap<String, Arc<Principal>>,
}

impl TokenTable {
    /// Parses the TOML text of a tokens file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_hash = HashMap::new();
        for (i, e) in file.token.into_iter().enumerate() {
            let at = |why: String| format!("token[{i}] (tenant {:?}): {why}", e.tenant);
            let hash = e.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(at(
                    "sha256 must be 64 hex digits (sha256sum of the token)".into()
                ));
            }
            if e.tenant.trim().is_empty() {
                return Err(at("tenant must not be empty".into()));
            }
            let apps = e
                .apps
                .iter()
                .map(|a| AppPattern::parse(a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(at)?;
            let principal = Principal {
                tenant: e.tenant.clone(),
                apps,
                admin: e.admin,
            };
            if by_hash.insert(hash, Arc::new(principal)).is_some() {
                return Err(at("the same token is listed twice".into()));
            }
        }
        Ok(Self { by_hash })
    }

    /// The principal of a presented token.
    pub fn lookup(&self, token: &str) -> Option<Arc<Principal>> {
        self.by_hash.get(&sha256_hex(token.as_bytes())).cloned()
    }

    /// How many tokens are listed.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether no token is listed.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// Lower-case hex SHA-256, as `sha256sum` prints it.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino,
    })
}

/// A file whose modification is this recent is read again even with an unchanged stamp.
const RACY: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Loaded {
    stamp: Stamp,
    text: String,
    table: TokenTable,
}

/// The tokens file, kept current (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tokens {
    path: PathBuf,
    loaded: Arc<Mutex<Loaded>>,
    reloads: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
}

impl Tokens {
    /// Loads the file; a missing, unreadable or invalid file is an error at start.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, String> {
        let path = path.into();
        let at = |why: String| format!("tokens file {}: {why}", path.display());
        let stamp = stamp(&path).map_err(|e| at(e.to_string()))?;
        let text = std::fs::read_to_string(&path).map_err(|e| at(e.to_string()))?;
        let table = TokenTable::parse(&text).map_err(at)?;
        Ok(Self {
            path,
            loaded: Arc::new(Mutex::new(Loaded { stamp, text, table })),
            reloads: Arc::default(),
            rejected: Arc::default(),
        })
    }

    /// Versions of the file taken into use since the start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Versions of the file refused (the last good one stayed).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The principal for an `Authorization` header value (`Bearer TOKEN`).
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Arc<Principal>, ApiError> {
        let header =
            header.ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer TOKEN"))?;
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|h| {
                let (scheme, token) = h.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer TOKEN"))?;
        self.refresh();
        let loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        loaded
            .table
            .lookup(token)
            .ok_or_else(|| ApiError::unauthorized("unknown token"))
    }

    /// Reads the file again if it may have changed.
    fn refresh(&self) {
        let now = match stamp(&self.path) {
            Ok(s) => s,
            Err(e) => {
                // A file being replaced may be briefly absent: keep what we have.
                tracing::warn!(path = %self.path.display(), error = %e, "tokens file unreadable; keeping the last good version");
                return;
            }
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let recent = now
            .modified
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < RACY);
        if now == loaded.stamp && !recent {
            return;
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "tokens file unreadable; keeping the last good version");
                return;
            }
        };
        if text == loaded.text {
            loaded.stamp = now;
            return;
        }
        match TokenTable::parse(&text) {
            Ok(table) => {
                tracing::info!(path = %self.path.display(), tokens = table.len(), "tokens file reloaded");
                *loaded = Loaded {
                    stamp: now,
                    text,
                    table,
                };
                self.reloads.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Remember the stamp and text so a broken version is reported once.
                loaded.stamp = now;
                loaded.text = text;
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %self.path.display(), error = %e, "tokens file rejected; keeping the last good version");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACME: &str =
        "sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"";

    #[test]
    fn tokens_are_matched_by_their_hash() {
        assert_eq!(
            sha256_hex(b"test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        let t = TokenTable::parse(&format!(
            "[[token]]\n{ACME}\ntenant = \"acme\"\napps = [\"acme-*\", \"hello\"]\n"
        ))
        .unwrap();
        let p = t.lookup("test").unwrap();
        assert!(!p.admin);
        for (app, owned) in [
            ("acme-web", true),
            ("acme-", false),
            ("hello", true),
            ("hello2", false),
            ("other", false),
        ] {
            let Ok(id) = AppId::new(app) else {
                assert!(!owned);
                continue;
            };
            assert_eq!(p.owns(&id), owned, "{app}");
        }
        assert!(t.lookup("nope").is_none());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, needle) in [
            (
                "[[token]]\nsha256 = \"abc\"\ntenant = \"a\"",
                "64 hex digits",
            ),
            (&format!("[[token]]\n{ACME}\ntenant = \"\""), "tenant"),
            (
                &format!("[[token]]\n{ACME}\ntenant = \"a\"\napps = [\"Bad\"]"),
                "Bad",
            ),
            (
                &format!("[[token]]\n{ACME}\ntenant = \"a\"\napps = [\"a.*\"]"),
                "prefix",
            ),
            (
                &format!("[[token]]\n{ACME}\ntenant = \"a\"\ncolour = 1"),
                "colour",
            ),
            (
                &format!("[[token]]\n{ACME}\ntenant = \"a\"\n[[token]]\n{ACME}\ntenant = \"b\""),
                "twice",
            ),
        ] {
            let e = TokenTable::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
