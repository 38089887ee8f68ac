//! The SNI table: which certificate a TLS client gets for the name it asks for. Pure and
//! immutable; the resolver builds a new one on every change and swaps it in.
//!
//! - A certificate serves the names of its own subjectAltName list: exact names and
//!   `*.{domain}` wildcards. A wildcard covers exactly one more label (RFC 6125 §6.4.3):
//!   `*.hello.test` serves `www.hello.test`, not `hello.test` nor `a.b.hello.test`.
//! - The most specific match wins: an exact name over a wildcard, whatever the order of the
//!   certificates; between certificates naming the same thing, the first one listed.
//! - A name nothing matches, or a client that sends no SNI, gets the default certificate
//!   when there is one, and a failed handshake otherwise.
//! - Names compare case-insensitively and without a trailing dot; any string may be looked
//!   up (arbitrary SNI never panics, see the tests).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use caas_core::Domain;

/// A name a certificate is offered for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum CertName {
    /// Exactly this host name.
    Exact(Domain),
    /// Any one label followed by this domain (`*.{domain}`).
    Wildcard(Domain),
}

impl CertName {
    /// Reads a subjectAltName `dNSName`: `*.` + a domain is a wildcard, a domain an exact
    /// name; `None` for anything else (an IDN in U-labels, an underscore, `*` elsewhere, a
    /// bare `*`), which no client could ask for by SNI anyway.
    pub(crate) fn parse(raw: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(raw).ok()?;
        match text.strip_prefix("*.") {
            Some(parent) => Domain::new(parent).ok().map(CertName::Wildcard),
            None => Domain::new(text).ok().map(CertName::Exact),
        }
    }
}

impl std::fmt::Display for CertName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertName::Exact(d) => write!(f, "{d}"),
            CertName::Wildcard(d) => write!(f, "*.{d}"),
        }
    }
}

/// How a name was matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Match {
    /// A certificate names it exactly.
    Exact,
    /// A certificate's wildcard covers it.
    Wildcard,
    /// Nothing matched (or no SNI): the default certificate.
    Default,
}

/// A name two certificates both offer; the earlier one keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shadowed {
    /// The contested name.
    pub(crate) name: CertName,
    /// Index (in build order) of the certificate that keeps it.
    pub(crate) kept: usize,
    /// Index of the one that does not get it.
    pub(crate) dropped: usize,
}

/// Longest DNS name (RFC 1035).
const MAX_NAME: usize = 253;

/// Certificates by the names they serve. `T` is the certificate (an `Arc<CertifiedKey>` in
/// the gateway, anything in tests).
#[derive(Debug)]
pub(crate) struct CertTable<T> {
    exact: HashMap<Domain, T>,
    /// By the parent domain of the wildcard.
    wildcard: HashMap<Domain, T>,
    default: Option<T>,
}

impl<T> Default for CertTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
        }
    }
}

impl<T: Clone> CertTable<T> {
    /// Builds the table from certificates in priority order (earlier ones keep a name two
    /// offer) and the certificate for names nothing matches (`None`: refuse them). Returns
    /// the names that went to an earlier certificate.
    pub(crate) fn build<'a>(
        certs: impl IntoIterator<Item = (&'a [CertName], T)>,
        default: Option<T>,
    ) -> (Self, Vec<Shadowed>) {
        let mut table = CertTable {
            default,
            ..CertTable::default()
        };
        let mut owner: HashMap<&CertName, usize> = HashMap::new();
        let mut shadowed = Vec::new();
        for (index, (names, cert)) in certs.into_iter().enumerate() {
            for name in names {
                let map = match name {
                    CertName::Exact(d) => table.exact.entry(d.clone()),
                    CertName::Wildcard(d) => table.wildcard.entry(d.clone()),
                };
                match map {
                    Entry::Vacant(v) => {
                        v.insert(cert.clone());
                        owner.insert(name, index);
                    }
                    Entry::Occupied(_) => {
                        let kept = owner.get(name).copied().unwrap_or_default();
                        if kept != index {
                            shadowed.push(Shadowed {
                                name: name.clone(),
                                kept,
                                dropped: index,
                            });
                        }
                    }
                }
            }
        }
        (table, shadowed)
    }

    /// The certificate for a client's SNI, and how it matched; `None` means the handshake
    /// is refused.
    pub(crate) fn resolve(&self, sni: Option<&str>) -> Option<(&T, Match)> {
        let found = sni.and_then(|name| self.lookup(name));
        found.or_else(|| self.default.as_ref().map(|c| (c, Match::Default)))
    }

    /// Adds `cert` for exactly `name`, unless the table already serves that name (exactly
    /// or through a wildcard): names already in the table keep their certificate. Returns
    /// whether it was added.
    pub(crate) fn add_if_unserved(&mut self, name: &Domain, cert: T) -> bool {
        if self.lookup(name.as_str()).is_some() {
            return false;
        }
        self.exact.insert(name.clone(), cert);
        true
    }

    fn lookup(&self, sni: &str) -> Option<(&T, Match)> {
        let name = sni.strip_suffix('.').unwrap_or(sni);
        if name.is_empty() || name.len() > MAX_NAME {
            return None;
        }
        let mut buf = [0u8; MAX_NAME];
        let buf = &mut buf[..name.len()];
        buf.copy_from_slice(name.as_bytes());
        buf.make_ascii_lowercase();
        let name = std::str::from_utf8(buf).ok()?;
        if let Some(cert) = self.exact.get(name) {
            return Some((cert, Match::Exact));
        }
        // One label, then the wildcard's domain: `*` stands for a whole, non-empty label.
        let (label, parent) = name.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(parent).map(|c| (c, Match::Wildcard))
    }

    /// Names served (exact and wildcard).
    pub(crate) fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<CertName> {
        list.iter()
            .map(|n| CertName::parse(n.as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn san_names_parse_into_exact_and_wildcard() {
        for (raw, want) in [
            ("www.hello.test", Some("www.hello.test")),
            ("WWW.Hello.Test.", Some("www.hello.test")),
            ("*.caas.local", Some("*.caas.local")),
            ("*.Caas.Local", Some("*.caas.local")),
            ("localhost", Some("localhost")),
            ("*", None),
            ("*.", None),
            ("w*.caas.local", None),
            ("*.*.caas.local", None),
            ("a.*.caas.local", None),
            ("under_score.test", None),
            ("", None),
            ("bücher.test", None),
        ] {
            let got = CertName::parse(raw.as_bytes()).map(|n| n.to_string());
            assert_eq!(got.as_deref(), want, "{raw:?}");
        }
        assert_eq!(CertName::parse(b"\xff.test"), None);
    }

    /// The certificates of the table tests, in priority order.
    fn table(default: bool) -> CertTable<&'static str> {
        let certs = [
            ("gateway", names(&["caas.local", "*.caas.local"])),
            ("hello-wild", names(&["*.hello.test"])),
            ("hello-www", names(&["www.hello.test"])),
            ("api", names(&["api.hello.test", "*.hello.test"])),
            ("dup", names(&["www.hello.test", "other.test"])),
        ];
        let (t, shadowed) = CertTable::build(
            certs.iter().map(|(c, n)| (n.as_slice(), *c)),
            default.then_some("gateway"),
        );
        assert_eq!(
            shadowed,
            [
                Shadowed {
                    name: CertName::parse(b"*.hello.test").unwrap(),
                    kept: 1,
                    dropped: 3
                },
                Shadowed {
                    name: CertName::parse(b"www.hello.test").unwrap(),
                    kept: 2,
                    dropped: 4
                },
            ]
        );
        t
    }

    #[test]
    fn sni_selection_table() {
        use Match::*;
        let with_default = table(true);
        let reject = table(false);
        for (sni, want, how) in [
            // Exact names.
            (Some("caas.local"), Some("gateway"), Exact),
            (Some("www.hello.test"), Some("hello-www"), Exact),
            (Some("api.hello.test"), Some("api"), Exact),
            (Some("other.test"), Some("dup"), Exact),
            // Case and a trailing dot do not matter.
            (Some("WWW.Hello.TEST."), Some("hello-www"), Exact),
            // Exact beats wildcard, whatever the order of the certificates.
            (Some("x.hello.test"), Some("hello-wild"), Wildcard),
            (Some("app01.caas.local"), Some("gateway"), Wildcard),
            (Some("V1.App01.caas.local"), None, Default),
            // A wildcard covers one label: not the bare domain, not two labels.
            (Some("hello.test"), None, Default),
            (Some("a.b.hello.test"), None, Default),
            (Some(".hello.test"), None, Default),
            // Unknown, no SNI, odd input.
            (Some("unknown.example"), None, Default),
            (None, None, Default),
            (Some(""), None, Default),
            (Some("."), None, Default),
            (Some("*.hello.test"), Some("hello-wild"), Wildcard),
        ] {
            let got = with_default.resolve(sni).map(|(c, m)| (*c, m));
            let expected = (want.unwrap_or("gateway"), how);
            assert_eq!(got, Some(expected), "default table, SNI {sni:?}");
            let got = reject.resolve(sni).map(|(c, m)| (*c, m));
            let expected = want.map(|w| (w, how));
            assert_eq!(got, expected, "reject table, SNI {sni:?}");
        }
        assert_eq!(with_default.len(), 6);
    }

    #[test]
    fn later_names_never_take_over_served_ones() {
        let mut t = table(false);
        let d = |s: &str| Domain::new(s).unwrap();
        assert!(
            !t.add_if_unserved(&d("www.hello.test"), "store"),
            "exact name taken"
        );
        assert!(
            !t.add_if_unserved(&d("x.hello.test"), "store"),
            "covered by a wildcard"
        );
        assert!(!t.add_if_unserved(&d("app.caas.local"), "store"));
        assert!(t.add_if_unserved(&d("www.custom.test"), "store"));
        assert!(
            t.add_if_unserved(&d("hello.test"), "store"),
            "the wildcard's bare domain"
        );
        assert_eq!(
            t.resolve(Some("www.custom.test")),
            Some((&"store", Match::Exact))
        );
        assert_eq!(
            t.resolve(Some("x.hello.test")),
            Some((&"hello-wild", Match::Wildcard))
        );
    }

    #[test]
    fn arbitrary_sni_strings_never_panic() {
        let t = table(false);
        let long = "a.".repeat(200);
        for s in [long.as_str(), "é.hello.test", "\0", "..", "a..hello.test"] {
            let _ = t.resolve(Some(s));
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        const CHARS: &[&str] = &["a", ".", "hello", "test", "*", "é", "\0", "-", "W", "..."];
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed % 12) as usize;
            let s: String = (0..n)
                .map(|i| CHARS[((seed >> (i * 5)) % CHARS.len() as u64) as usize])
                .collect();
            if let Some((_, m)) = t.resolve(Some(&s)) {
                assert_ne!(m, Match::Default, "no default in this table: {s:?}");
            }
        }
    }
}
