//! HTTPS for custom domains: a certificate and its key per claimed domain, stored at
//! `/certs/{domain}` and served by every store-fed gateway.
//!
//! ```text
//! /certs/{domain}   PERSISTENT   {"app": "{appId}", "cert": "<PEM chain>", "key": "enc:v1:..."}
//! ```
//!
//! - The node is [`CertNode`] JSON: the app the certificate belongs to, the chain as PEM
//!   text, and the private key PEM sealed with the config encryption key (`crypto`, AES-256-
//!   GCM with the node's path as associated data, so a key copied to another domain's node
//!   does not open). A key is never stored in the clear.
//! - Only the app holding the domain's claim (`/domains/{domain}` names it) has its
//!   certificate served. [`CertStore`] refuses to store a certificate for a domain another
//!   app holds, and [`StoreCertSource`](crate::store::StoreCertSource) re-checks on every
//!   read, so a claim that moves (or a node written around the store) takes the certificate
//!   out of service at once.
//! - `decide` is that rule, pure and table-tested; `store` writes (ZooKeeper);
//!   [`StoreCertSource`](crate::store::StoreCertSource) watches any store and feeds the
//!   gateway's `CertSource`.

mod store;

use caas_core::{AppId, Domain, DomainCert};
use serde::{Deserialize, Serialize};

pub use store::CertStore;

use super::crypto::{self, ValueCipher};
use super::read::parse_owner;

/// The JSON of `/certs/{domain}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertNode {
    /// The app the certificate belongs to; it must hold the domain's claim to be served.
    pub app: AppId,
    /// The certificate chain, PEM, leaf first.
    pub cert: String,
    /// The private key PEM, sealed with the config encryption key (`enc:v1:...`).
    pub key: String,
}

/// What a gateway does with one domain's certificate node, given its claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Serve it.
    Serve(DomainCert),
    /// There is no certificate node: nothing to serve.
    Absent,
    /// The certificate must not be served (the claim is missing or another app's): it
    /// leaves service at once.
    Refuse(String),
    /// The node cannot be read (malformed, a key that does not decrypt): logged and
    /// counted; a certificate served before stays, as a broken app spec keeps the last good.
    Bad(String),
}

/// Decides whether the certificate node of `domain` may be served: it must parse, its app
/// must hold the domain's claim, and its key must open with `cipher`. `path` is the node's
/// path (the key's associated data).
pub(crate) fn decide(
    domain: &Domain,
    path: &str,
    node: Option<&[u8]>,
    claim: Option<&[u8]>,
    cipher: Option<&ValueCipher>,
) -> Decision {
    let Some(node) = node else {
        return Decision::Absent;
    };
    let node: CertNode = match serde_json::from_slice(node) {
        Ok(n) => n,
        Err(e) => return Decision::Bad(format!("not a certificate node: {e}")),
    };
    let owner = match claim.map(parse_owner) {
        None => {
            return Decision::Refuse(format!(
                "the domain is not claimed (no /domains/{domain}); app {} cannot serve it",
                node.app
            ));
        }
        Some(Err(e)) => return Decision::Refuse(format!("the claim is unreadable: {e}")),
        Some(Ok(owner)) => owner,
    };
    if owner != node.app {
        return Decision::Refuse(format!(
            "the domain is claimed by app {owner}, the certificate belongs to app {}",
            node.app
        ));
    }
    if !crypto::is_encrypted(node.key.as_bytes()) {
        return Decision::Bad(
            "the private key is stored unencrypted; store it with CertStore".into(),
        );
    }
    let key = match crypto::open(cipher, path, node.key.into_bytes()) {
        Ok(k) => k,
        Err(e) => return Decision::Bad(e.to_string()),
    };
    match String::from_utf8(key) {
        Ok(key_pem) => Decision::Serve(DomainCert {
            domain: domain.clone(),
            app: node.app,
            cert_pem: node.cert,
            key_pem,
        }),
        Err(_) => Decision::Bad("the private key is not PEM text".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/certs/www.a.test";

    fn node(app: &str, key: &[u8], cipher: &ValueCipher, path: &str) -> Vec<u8> {
        let key = cipher.encrypt(path, key).unwrap();
        serde_json::to_vec(&CertNode {
            app: AppId::new(app).unwrap(),
            cert: "CERT PEM".into(),
            key: String::from_utf8(key).unwrap(),
        })
        .unwrap()
    }

    #[test]
    fn only_the_claimant_app_with_a_sealed_key_is_served() {
        let k = ValueCipher::from_key(&[3; 32]).unwrap();
        let other_key = ValueCipher::from_key(&[4; 32]).unwrap();
        let d = Domain::new("www.a.test").unwrap();
        let good = node("a", b"KEY PEM", &k, PATH);
        let moved = node("a", b"KEY PEM", &k, "/certs/www.b.test");
        let plain = br#"{"app":"a","cert":"C","key":"-----BEGIN PRIVATE KEY-----"}"#;
        let extra = br#"{"app":"a","cert":"C","key":"enc:v1:x","chain":"y"}"#;
        for (node, claim, cipher, want) in [
            (Some(&good[..]), Some(&b"a"[..]), Some(&k), "serve"),
            (None, Some(&b"a"[..]), Some(&k), "absent"),
            (None, None, Some(&k), "absent"),
            (
                Some(&good[..]),
                None,
                Some(&k),
                "refuse: the domain is not claimed",
            ),
            (
                Some(&good[..]),
                Some(b"b"),
                Some(&k),
                "refuse: the domain is claimed by app b",
            ),
            (
                Some(&good[..]),
                Some(b"Bad!"),
                Some(&k),
                "refuse: the claim is unreadable",
            ),
            (
                Some(&good[..]),
                Some(b"a"),
                Some(&other_key),
                "bad: zookeeper node /certs/www.a.test: cannot decrypt",
            ),
            (
                Some(&good[..]),
                Some(b"a"),
                None,
                "bad: zookeeper node /certs/www.a.test: value is encrypted but no",
            ),
            (
                Some(&moved[..]),
                Some(b"a"),
                Some(&k),
                "bad: zookeeper node /certs/www.a.test: cannot decrypt",
            ),
            (
                Some(&plain[..]),
                Some(b"a"),
                Some(&k),
                "bad: the private key is stored unencrypted",
            ),
            (
                Some(&extra[..]),
                Some(b"a"),
                Some(&k),
                "bad: not a certificate node: unknown field `chain`",
            ),
            (
                Some(b"{"),
                Some(b"a"),
                Some(&k),
                "bad: not a certificate node",
            ),
            (
                Some(b""),
                Some(b"a"),
                Some(&k),
                "bad: not a certificate node",
            ),
        ] {
            let got = match decide(&d, PATH, node, claim, cipher) {
                Decision::Serve(c) => {
                    assert_eq!((c.app.as_str(), c.key_pem.as_str()), ("a", "KEY PEM"));
                    assert_eq!((c.domain, c.cert_pem.as_str()), (d.clone(), "CERT PEM"));
                    "serve".to_owned()
                }
                Decision::Absent => "absent".to_owned(),
                Decision::Refuse(r) => format!("refuse: {r}"),
                Decision::Bad(r) => format!("bad: {r}"),
            };
            assert!(got.starts_with(want), "want {want:?}, got {got:?}");
        }
    }
}
