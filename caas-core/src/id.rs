//! Validated identifiers: app ids, versions, instance ids and domain names.
//!
//! Ids follow DNS label rules (1-63 chars of `[a-z0-9-]`, no leading or trailing `-`) because
//! they appear in host names (`{version}.{appId}.{domain}`) and ZooKeeper paths. Bad ids are
//! rejected with an error that says why; they are never rewritten (an upper-case id is an
//! error, not a lower-cased id). Domain names are case-insensitive by definition, so they are
//! stored lower-cased.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier or domain name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The value is empty.
    #[error("invalid {kind} {value:?}: must not be empty")]
    Empty {
        /// What was being parsed ("app id", "version", ...).
        kind: &'static str,
        /// The rejected value.
        value: String,
    },
    /// The value is longer than allowed.
    #[error("invalid {kind} {value:?}: longer than {max} characters")]
    TooLong {
        /// What was being parsed.
        kind: &'static str,
        /// The rejected value.
        value: String,
        /// The maximum length.
        max: usize,
    },
    /// The value contains a character outside the allowed set.
    #[error("invalid {kind} {value:?}: character {ch:?} at {pos} is not one of [a-z0-9-]")]
    BadChar {
        /// What was being parsed.
        kind: &'static str,
        /// The rejected value.
        value: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        pos: usize,
    },
    /// The value starts or ends with a hyphen.
    #[error("invalid {kind} {value:?}: must not start or end with '-'")]
    Hyphen {
        /// What was being parsed.
        kind: &'static str,
        /// The rejected value.
        value: String,
    },
}

/// Checks one DNS label: 1-63 chars of `[a-z0-9-]`, no leading/trailing hyphen.
fn check_label(kind: &'static str, value: &str, whole: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty {
            kind,
            value: whole.to_owned(),
        });
    }
    if value.len() > 63 {
        return Err(IdError::TooLong {
            kind,
            value: whole.to_owned(),
            max: 63,
        });
    }
    if let Some((pos, ch)) = value
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return Err(IdError::BadChar {
            kind,
            value: whole.to_owned(),
            ch,
            pos,
        });
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(IdError::Hyphen {
            kind,
            value: whole.to_owned(),
        });
    }
    Ok(())
}

macro_rules! label_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `value` and wraps it.
            pub fn new(value: &str) -> Result<Self, IdError> {
                check_label($kind, value, value)?;
                Ok(Self(Arc::from(value)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

label_id!(
    /// An application id: the first label of `{appId}.{domain}` and a ZooKeeper path segment.
    AppId,
    "app id"
);
label_id!(
    /// A version of an app (`v1`, `2024-06-01`, ...): routable as `{version}.{appId}.{domain}`.
    Version,
    "version"
);
label_id!(
    /// One running instance (container) of an app version.
    InstanceId,
    "instance id"
);

/// A DNS name (a gateway domain or a custom domain bound to an app), stored lower-cased
/// without a trailing dot.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Domain(Arc<str>);

impl Domain {
    /// Validates a host name: 1-253 chars, dot-separated DNS labels. ASCII case is folded.
    pub fn new(value: &str) -> Result<Self, IdError> {
        let trimmed = value.strip_suffix('.').unwrap_or(value);
        if trimmed.len() > 253 {
            return Err(IdError::TooLong {
                kind: "domain",
                value: value.to_owned(),
                max: 253,
            });
        }
        let lower = trimmed.to_ascii_lowercase();
        if lower.is_empty() {
            return Err(IdError::Empty {
                kind: "domain",
                value: value.to_owned(),
            });
        }
        for label in lower.split('.') {
            check_label("domain", label, value)?;
        }
        Ok(Self(Arc::from(lower)))
    }

    /// The domain as a string slice (lower case).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Domain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl AsRef<str> for Domain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by domain be probed with a `&str` (the name is already lower case).
impl Borrow<str> for Domain {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for Domain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Domain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "app01", "my-app", "0", &"a".repeat(63)] {
            assert_eq!(AppId::new(ok).map(|a| a.to_string()), Ok(ok.to_owned()));
        }
    }

    #[test]
    fn rejects_bad_ids_with_reason() {
        assert!(matches!(AppId::new(""), Err(IdError::Empty { .. })));
        assert!(matches!(
            AppId::new(&"a".repeat(64)),
            Err(IdError::TooLong { .. })
        ));
        let err = AppId::new("App").unwrap_err();
        assert!(matches!(
            err,
            IdError::BadChar {
                ch: 'A',
                pos: 0,
                ..
            }
        ));
        assert!(err.to_string().contains("\"App\""), "{err}");
        assert!(matches!(
            Version::new("v_1"),
            Err(IdError::BadChar { ch: '_', .. })
        ));
        assert!(matches!(InstanceId::new("-x"), Err(IdError::Hyphen { .. })));
        assert!(matches!(InstanceId::new("x-"), Err(IdError::Hyphen { .. })));
        assert!(matches!(
            AppId::new("a.b"),
            Err(IdError::BadChar { ch: '.', .. })
        ));
    }

    #[test]
    fn deserialize_validates() {
        let ok: AppId = serde_json::from_str("\"hello\"").unwrap();
        assert_eq!(ok.as_str(), "hello");
        let err = serde_json::from_str::<AppId>("\"He llo\"").unwrap_err();
        assert!(err.to_string().contains("invalid app id"), "{err}");
    }

    #[test]
    fn domains_fold_case_and_trailing_dot() {
        let d = Domain::new("WWW.Hello.Test.").unwrap();
        assert_eq!(d.as_str(), "www.hello.test");
        assert!(Domain::new("a..b").is_err());
        assert!(Domain::new("").is_err());
        assert!(Domain::new("a_b.test").is_err());
    }
}
