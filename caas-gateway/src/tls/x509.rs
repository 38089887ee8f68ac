//! The DNS names a certificate is for: the `dNSName` entries of its subjectAltName extension
//! (RFC 5280 §4.2.1.6), read straight from the DER.
//!
//! Only as much DER as that needs is walked (tag, length, value; definite lengths of up to
//! four bytes; single-byte tags), and every step is bounds-checked: arbitrary bytes give an
//! error, never a panic (fuzzed below). rustls and webpki check the certificate itself; this
//! only answers which names the gateway offers it for, and [`dns_names`]' caller confirms
//! each name with webpki.

/// Why no names could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum X509Error {
    /// The bytes are not the DER of an X.509 certificate.
    #[error("not a DER X.509 certificate ({0})")]
    Malformed(&'static str),
    /// The certificate has no subjectAltName extension (names in the subject's CN are not
    /// honoured by browsers, so none are taken from there).
    #[error("the certificate has no subjectAltName extension")]
    NoSan,
}

use X509Error::Malformed;

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT`, constructed: the extensions of a v3 certificate.
const EXTENSIONS: u8 = 0xa3;
/// `[2] IMPLICIT IA5String`, primitive: a GeneralName's dNSName.
const DNS_NAME: u8 = 0x82;
/// id-ce-subjectAltName, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// One DER element: its tag, its content, and what follows it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), X509Error> {
    let (&tag, rest) = input.split_first().ok_or(Malformed("truncated"))?;
    if tag & 0x1f == 0x1f {
        return Err(Malformed("multi-byte tag"));
    }
    let (&first, rest) = rest.split_first().ok_or(Malformed("truncated length"))?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(Malformed("bad length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(Malformed("length beyond the end"));
    }
    let (content, after) = rest.split_at(len);
    Ok((tag, content, after))
}

/// The content of an element that must have `tag`.
fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), X509Error> {
    match element(input)? {
        (t, content, after) if t == tag => Ok((content, after)),
        _ => Err(Malformed(what)),
    }
}

/// The `dNSName`s of the certificate's subjectAltName, as written (not yet normalised).
pub(crate) fn dns_names(der: &[u8]) -> Result<Vec<&[u8]>, X509Error> {
    let (cert, _) = expect(der, SEQUENCE, "certificate")?;
    let (mut tbs, _) = expect(cert, SEQUENCE, "tbsCertificate")?;
    // version, serial, signature, issuer, validity, subject, subjectPublicKeyInfo, then the
    // optional unique ids and `[3]` extensions: skip to the extensions.
    let extensions = loop {
        if tbs.is_empty() {
            return Err(X509Error::NoSan);
        }
        let (tag, content, rest) = element(tbs)?;
        if tag == EXTENSIONS {
            break content;
        }
        tbs = rest;
    };
    let (mut list, _) = expect(extensions, SEQUENCE, "extensions")?;
    while !list.is_empty() {
        let (ext, rest) = expect(list, SEQUENCE, "extension")?;
        list = rest;
        let (oid, mut ext) = expect(ext, OID, "extension id")?;
        if oid != SAN_OID {
            continue;
        }
        if let Ok((BOOLEAN, _, rest)) = element(ext) {
            ext = rest; // `critical`
        }
        let (value, _) = expect(ext, OCTET_STRING, "extension value")?;
        let (mut names, _) = expect(value, SEQUENCE, "subjectAltName")?;
        let mut out = Vec::new();
        while !names.is_empty() {
            let (tag, name, rest) = element(names)?;
            if tag == DNS_NAME {
                out.push(name);
            }
            names = rest;
        }
        return Ok(out);
    }
    Err(X509Error::NoSan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_der(names: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_the_dns_names_of_real_certificates() {
        for names in [
            &["www.hello.test"][..],
            &["a.test", "*.caas.local", "B.Example.Org"],
            &[],
        ] {
            let der = cert_der(names);
            let got: Vec<String> = dns_names(&der)
                .unwrap()
                .into_iter()
                .map(|n| String::from_utf8(n.to_vec()).unwrap())
                .collect();
            assert_eq!(got, names, "the IP address SAN is not a DNS name");
        }
    }

    #[test]
    fn no_san_and_garbage_are_errors() {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cn-only.test");
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(dns_names(&der), Err(X509Error::NoSan));
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x1f\x00",
            b"hello",
        ] {
            assert!(matches!(dns_names(bad), Err(Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn arbitrary_and_mutated_bytes_never_panic() {
        let base = cert_der(&["www.hello.test", "*.caas.local"]);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..20_000 {
            let mut bytes = if i % 2 == 0 {
                base.clone()
            } else {
                (0..(next() % 300)).map(|_| next() as u8).collect()
            };
            if !bytes.is_empty() {
                for _ in 0..(next() % 4 + 1) {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
                let cut = (next() as usize) % (bytes.len() + 1);
                bytes.truncate(bytes.len() - cut / 8);
            }
            let _ = dns_names(&bytes);
        }
    }
}
