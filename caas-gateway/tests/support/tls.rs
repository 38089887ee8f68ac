//! TLS test support: a throwaway CA issuing certificates at test time (rcgen), rustls
//! clients (one that verifies against the CA, one that accepts anything and lets the test
//! look at what it was given), handshakes over real loopback sockets, and a gateway with a
//! plain and a TLS listener.

use super::limits;
use bytes::Bytes;
use caas_core::Domain;
use caas_core::{IpNet, Snapshot, Static};
use caas_gateway::tls::UnknownSni;
use caas_gateway::{CertResolver, Gateway, GatewayConfig, TlsAcceptor};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::net::TcpListener;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A CA that signs leaf certificates for any names.
pub struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate and its key, as PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    /// The DER of the leaf certificate (to compare with what a client was shown).
    pub fn der(&self) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .unwrap()
            .to_vec()
    }
}

impl Pki {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "caas test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        Self { ca }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf certificate for `names` (its SAN list), signed by the CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.ca.pem()),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client that trusts this CA only, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// Accepts any certificate: for tests that look at which one the server chose.
#[derive(Debug)]
struct AcceptAnything(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that accepts any certificate (the test checks which one it got). It never
/// resumes a session: a resumed TLS 1.3 session shows the certificate of the first one.
pub fn any_cert_client() -> Arc<ClientConfig> {
    let p = provider();
    let mut cfg = ClientConfig::builder_with_provider(Arc::clone(&p))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(p)))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// A TLS connection to `addr`, sending `sni` (an IP address: no SNI is sent).
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// The DER of the leaf certificate the server presented.
pub fn presented(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

// --- gateways with a TLS listener -------------------------------------------------------

/// A gateway with a plain and a TLS listener sharing routes.
pub struct TlsGw {
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    pub gateway: Gateway,
    _routes: Static,
}

pub async fn start(snapshot: Snapshot, certs: Arc<CertResolver>) -> TlsGw {
    start_trusting(snapshot, certs, Vec::new()).await
}

/// A gateway that believes the `X-Forwarded-*` fields of `trusted_proxies`.
pub async fn start_trusting(
    snapshot: Snapshot,
    certs: Arc<CertResolver>,
    trusted_proxies: Vec<IpNet>,
) -> TlsGw {
    start_with(snapshot, TlsAcceptor::new(certs).unwrap(), trusted_proxies).await
}

/// A gateway whose TLS listener serves with `acceptor`.
pub async fn start_with(
    snapshot: Snapshot,
    acceptor: TlsAcceptor,
    trusted_proxies: Vec<IpNet>,
) -> TlsGw {
    let tls_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = tls_listener.local_addr().unwrap();
    let routes = Static::new(snapshot);
    let gateway = Gateway::builder(GatewayConfig {
        domains: vec![Domain::new("caas.local").unwrap()],
        limits: limits(),
        https_port: Some(tls.port()),
        trusted_proxies,
        access_log: None,
    })
    .discovery(routes.subscribe())
    .build()
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = listener.local_addr().unwrap();
    let (g1, g2) = (gateway.clone(), gateway.clone());
    tokio::spawn(async move { g1.serve(listener, std::future::pending()).await });
    tokio::spawn(async move {
        g2.serve_tls(tls_listener, acceptor, std::future::pending())
            .await
    });
    while gateway.router().load().generation() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    TlsGw {
        plain,
        tls,
        gateway,
        _routes: routes,
    }
}

pub fn pem_pairs(leaves: &[&Leaf]) -> Vec<(String, String)> {
    leaves
        .iter()
        .map(|l| (l.cert_pem.clone(), l.key_pem.clone()))
        .collect()
}

pub fn resolver(leaves: &[&Leaf], unknown: UnknownSni) -> Arc<CertResolver> {
    let pairs = pem_pairs(leaves);
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(c, k)| (c.as_str(), k.as_str()))
        .collect();
    CertResolver::from_pem(&refs, unknown).unwrap()
}

pub type H1Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// An HTTP/1.1 client on an established (TLS) stream.
pub async fn h1<S>(stream: S) -> H1Sender
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Status, headers and body of one request on an HTTP/1.1 connection.
pub async fn h1_get(
    sender: &mut H1Sender,
    host: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Waits until `counter` reaches `want`.
pub async fn wait_count(what: &str, counter: &std::sync::atomic::AtomicU64, want: u64) {
    for _ in 0..1000 {
        if counter.load(Relaxed) >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what}: stayed at {} (want {want})", counter.load(Relaxed));
}
