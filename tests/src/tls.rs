//! TLS for the end-to-end tests: a PKI made at test time ([`Pki`], with rcgen), a blocking
//! rustls client ([`TlsClient`]) that keeps what the gateway served it, and an origin that
//! terminates TLS ([`TlsOrigin`]) and records every handshake (SNI, resumption, the
//! gateway's client certificate). All of it uses rustls' ring provider, as the gateway does.
//!
//! A TLS client is a [`Client`] over a [`TlsStream`], so requests and responses go through the
//! same framing code as plain TCP; likewise the TLS origin is an [`Origin`] whose connections
//! are handshaken before they are served.

// The workspace bans std's Mutex to keep locks off the proxy's hot path; this is test code.
#![allow(clippy::disallowed_types)]

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CipherSuite, ClientConfig, ClientConnection, ConnectionCommon,
    DigitallySignedStruct, HandshakeKind, ProtocolVersion, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme, SupportedProtocolVersion,
};

use crate::client::{Client, Response};
use crate::origin::{Origin, Reply, Request};
use crate::wire::{Transport, IO_TIMEOUT};
use crate::yaml::API_VERSION;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

// === PKI ===

/// A CA made at test time, and the directory its certificates are written to.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

/// A certificate and its key, as PEM files and as PEM text.
pub struct Leaf {
    pub crt: PathBuf,
    pub key: PathBuf,
    pub crt_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("pki dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
        Pki { ca, dir }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        let der = CertificateDer::from_pem_slice(self.ca.pem().as_bytes()).expect("CA PEM");
        roots.add(der).expect("the CA as a trust anchor");
        roots
    }

    /// A server certificate for `names`, or (`client`) a client certificate; its subject is
    /// `CN=<file>`.
    pub fn leaf(&self, file: &str, names: &[&str], client: bool) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let cert = leaf_params(file, names, client)
            .signed_by(&key, &self.ca)
            .expect("sign");
        self.write(file, cert.pem(), key.serialize_pem())
    }

    /// A server certificate for `names` that is its own issuer: no CA vouches for it.
    pub fn self_signed(&self, file: &str, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let cert = leaf_params(file, names, false)
            .self_signed(&key)
            .expect("self-sign");
        self.write(file, cert.pem(), key.serialize_pem())
    }

    fn write(&self, file: &str, crt_pem: String, key_pem: String) -> Leaf {
        let leaf = Leaf {
            crt: self.dir.path().join(format!("{file}.crt")),
            key: self.dir.path().join(format!("{file}.key")),
            crt_pem,
            key_pem,
        };
        std::fs::write(&leaf.crt, &leaf.crt_pem).expect("write crt");
        std::fs::write(&leaf.key, &leaf.key_pem).expect("write key");
        leaf
    }
}

fn leaf_params(cn: &str, names: &[&str], client: bool) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    params
}

impl Leaf {
    /// The certificate, as a peer receives it.
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.crt_pem.as_bytes()).expect("certificate PEM")
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM")
    }

    /// `certificate: {key, crt}` naming the files (a policy's `config`, at column 0).
    pub fn certificate_paths(&self) -> String {
        format!(
            "certificate:\n  key: '{}'\n  crt: '{}'\n",
            self.key.display(),
            self.crt.display()
        )
    }

    /// `certificate: {key, crt}` with the PEM text itself.
    pub fn certificate_inline(&self) -> String {
        format!(
            "certificate:\n{}{}",
            pem_field("  ", "key", &self.key_pem),
            pem_field("  ", "crt", &self.crt_pem)
        )
    }
}

/// `key: |` and the PEM text as a YAML block scalar, indented under `indent`.
pub fn pem_field(indent: &str, key: &str, pem: &str) -> String {
    let mut out = format!("{indent}{key}: |\n");
    for line in pem.lines() {
        let _ = writeln!(out, "{indent}  {line}");
    }
    out
}

// === YAML ===

/// A `tls-outbound` PolicyBinding on Service `service`, with `config` (YAML at column 0).
pub fn outbound_binding(name: &str, service: &str, config: &str) -> String {
    let mut out = format!(
        "apiVersion: {API_VERSION}\nkind: PolicyBinding\nmetadata:\n  name: {name}\nspec:\n  \
         targetRef:\n    kind: Service\n    name: {service}\n  policyRef:\n    name: tls-outbound\n  \
         config:\n"
    );
    for line in config.lines() {
        let _ = writeln!(out, "    {line}");
    }
    out
}

// === the client ===

/// A TLS session over TCP, as the test client holds it.
pub type TlsStream = rustls::StreamOwned<ClientConnection, TcpStream>;

impl Transport for TlsStream {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }

    fn close_write(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush()?;
        self.sock.shutdown(Shutdown::Write)
    }
}

impl Transport for rustls::StreamOwned<ServerConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }

    fn close_write(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush()?;
        self.sock.shutdown(Shutdown::Write)
    }
}

/// Drives a handshake to its end, then sends what it left queued (a TLS 1.3 client's
/// Finished), so a server that refuses this side learns it now.
fn handshake<C, D>(conn: &mut C, tcp: &mut TcpStream) -> io::Result<()>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
{
    while conn.is_handshaking() {
        conn.complete_io(tcp)?;
    }
    while conn.wants_write() {
        conn.write_tls(tcp)?;
    }
    tcp.flush()
}

#[derive(Clone)]
enum Trust {
    Ca(Arc<RootCertStore>),
    /// Any certificate, for tests that look at which one was served rather than whether it
    /// is valid for the name asked.
    Anything,
}

/// How a test client connects: what it trusts, the name it asks for, what it offers.
#[derive(Clone)]
pub struct TlsClient {
    trust: Trust,
    name: String,
    sni: bool,
    alpn: Vec<Vec<u8>>,
    versions: Vec<&'static SupportedProtocolVersion>,
    /// Only these suites (all of rustls' when empty).
    suites: Vec<CipherSuite>,
    identity: Option<(String, String)>,
}

impl TlsClient {
    /// Verifies the server's certificate against `pki`'s CA for `name`, sends `name` as SNI,
    /// offers `http/1.1`, TLS 1.2 and 1.3, and no client certificate.
    pub fn new(pki: &Pki, name: &str) -> TlsClient {
        TlsClient::with_trust(Trust::Ca(Arc::new(pki.roots())), name)
    }

    /// Sends `name` as SNI and accepts any certificate (see [`Client::served_certificate`]).
    pub fn trusting_anything(name: &str) -> TlsClient {
        TlsClient::with_trust(Trust::Anything, name)
    }

    fn with_trust(trust: Trust, name: &str) -> TlsClient {
        TlsClient {
            trust,
            name: name.into(),
            sni: true,
            alpn: vec![b"http/1.1".to_vec()],
            versions: rustls::ALL_VERSIONS.to_vec(),
            suites: Vec::new(),
            identity: None,
        }
    }

    /// Sends no SNI (the name is still what the certificate is verified for).
    pub fn without_sni(mut self) -> TlsClient {
        self.sni = false;
        self
    }

    /// Offers these ALPN protocols (none when empty).
    pub fn alpn(mut self, protocols: &[&str]) -> TlsClient {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Offers only `version` (`"1.2"` or `"1.3"`).
    pub fn only(mut self, version: &str) -> TlsClient {
        self.versions = vec![match version {
            "1.2" => &rustls::version::TLS12,
            "1.3" => &rustls::version::TLS13,
            other => panic!("no TLS version {other:?} in rustls"),
        }];
        self
    }

    /// Offers only these cipher suites.
    pub fn suites(mut self, suites: &[CipherSuite]) -> TlsClient {
        self.suites = suites.to_vec();
        self
    }

    /// Presents `leaf` as the client certificate.
    pub fn identity(mut self, leaf: &Leaf) -> TlsClient {
        self.identity = Some((leaf.crt_pem.clone(), leaf.key_pem.clone()));
        self
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        let mut offered = ring::default_provider();
        if !self.suites.is_empty() {
            offered
                .cipher_suites
                .retain(|s| self.suites.contains(&s.suite()));
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(offered))
            .with_protocol_versions(&self.versions)
            .expect("versions the provider supports");
        let builder = match &self.trust {
            Trust::Ca(roots) => builder.with_root_certificates(roots.clone()),
            Trust::Anything => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider()))),
        };
        let mut config = match &self.identity {
            Some((crt, key)) => {
                let chain = vec![CertificateDer::from_pem_slice(crt.as_bytes()).expect("crt")];
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("a usable client certificate")
            }
            None => builder.with_no_client_auth(),
        };
        config.enable_sni = self.sni;
        config.alpn_protocols = self.alpn.clone();
        Arc::new(config)
    }

    /// Connects and completes the handshake; the error is the handshake's (see [`alert`]).
    /// Every connection has a fresh configuration, so none resumes an earlier session.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<Client<TlsStream>> {
        self.connect_with(self.config(), addr)
    }

    /// As [`TlsClient::connect`] with `config` (from [`TlsClient::config`]): connections
    /// sharing one resume each other's sessions.
    pub fn connect_with(
        &self,
        config: Arc<ClientConfig>,
        addr: SocketAddr,
    ) -> io::Result<Client<TlsStream>> {
        let mut tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        let name = ServerName::try_from(self.name.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        handshake(&mut conn, &mut tcp)?;
        Client::over(rustls::StreamOwned::new(conn, tcp))
    }

    /// Connects, panicking with the handshake's error.
    pub fn client(&self, addr: SocketAddr) -> Client<TlsStream> {
        self.connect(addr)
            .unwrap_or_else(|e| panic!("TLS handshake with {addr} as {:?}: {e}", self.name))
    }

    /// `GET path` (with `Host: <name>`) on a fresh connection: the response, or the error
    /// of the handshake or of the first read. A server refusing a TLS 1.3 client's
    /// certificate says so only after the client's side of the handshake is done, so a
    /// refusal may surface either way.
    pub fn get(&self, addr: SocketAddr, path: &str) -> io::Result<Response> {
        let mut client = self.connect(addr)?;
        client.send_lenient(get_host(path, &self.name).as_bytes())?;
        client.try_read_response("GET")
    }
}

/// A keep-alive `GET` with `Host: host`.
pub fn get_host(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

/// The alert the peer sent, if that is what `error` is.
pub fn alert(error: &io::Error) -> Option<AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Accepts every certificate; the handshake signatures are still checked.
#[derive(Debug)]
struct AcceptAnything(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
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

impl Client<TlsStream> {
    pub fn tls(&self) -> &ClientConnection {
        &self.transport().conn
    }

    /// The end-entity certificate the server presented.
    pub fn served_certificate(&self) -> CertificateDer<'static> {
        self.tls()
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.clone().into_owned())
            .expect("the server presented a certificate")
    }

    /// The negotiated ALPN protocol.
    pub fn alpn(&self) -> Option<String> {
        self.tls()
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// `"1.2"` or `"1.3"`.
    pub fn version(&self) -> &'static str {
        version_name(self.tls().protocol_version())
    }

    pub fn cipher_suite(&self) -> Option<CipherSuite> {
        self.tls().negotiated_cipher_suite().map(|s| s.suite())
    }

    /// `GET path` with `Host: host` on this connection.
    pub fn get_from(&mut self, host: &str, path: &str) -> Response {
        self.request(get_host(path, host).as_bytes())
    }
}

fn version_name(version: Option<ProtocolVersion>) -> &'static str {
    match version {
        Some(ProtocolVersion::TLSv1_2) => "1.2",
        Some(ProtocolVersion::TLSv1_3) => "1.3",
        Some(_) => "other",
        None => "none",
    }
}

/// The first bytes a TLS client sends (its ClientHello), offering SNI `name`; for tests
/// that send part of it and stall.
pub fn client_hello(name: &str) -> Vec<u8> {
    let client = TlsClient::trusting_anything(name);
    let server = ServerName::try_from(name.to_string()).expect("a DNS name");
    let mut conn = ClientConnection::new(client.config(), server).expect("a client connection");
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).expect("write to a Vec");
    }
    hello
}

// === the origin ===

/// What an origin's handshake with the gateway came to.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub conn_id: usize,
    /// What was negotiated, or why the handshake failed.
    pub outcome: Result<Negotiated, String>,
}

#[derive(Debug, Clone)]
pub struct Negotiated {
    /// An abbreviated handshake that resumed an earlier session.
    pub resumed: bool,
    pub sni: Option<String>,
    pub alpn: Option<String>,
    /// `"1.2"` or `"1.3"`.
    pub version: &'static str,
    /// The certificate the gateway presented, when asked for one.
    pub client_certificate: Option<CertificateDer<'static>>,
}

/// An [`Origin`] behind TLS on `127.0.0.1:0`, with `cert` (offering `http/1.1` by ALPN),
/// requiring a client certificate from `client_ca` when given. Dereferences to the
/// [`Origin`] for its requests and connections.
pub struct TlsOrigin {
    origin: Origin,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
}

impl TlsOrigin {
    pub fn start(
        cert: &Leaf,
        client_ca: Option<&Pki>,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> TlsOrigin {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .expect("versions the provider supports");
        let builder = match client_ca {
            Some(pki) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(pki.roots()), provider())
                        .build()
                        .expect("a client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(vec![cert.der()], cert.private_key())
            .expect("a usable server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let handshakes: Arc<Mutex<Vec<Handshake>>> = Arc::default();
        let record = handshakes.clone();
        let accept = move |mut tcp: TcpStream, conn_id: usize| {
            let _ = tcp.set_read_timeout(Some(IO_TIMEOUT));
            let _ = tcp.set_write_timeout(Some(IO_TIMEOUT));
            let mut conn = ServerConnection::new(config.clone()).ok()?;
            let outcome = match handshake(&mut conn, &mut tcp) {
                Ok(()) => Ok(Negotiated {
                    resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
                    sni: conn.server_name().map(str::to_string),
                    alpn: conn
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned()),
                    version: version_name(conn.protocol_version()),
                    client_certificate: conn
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|c| c.clone().into_owned()),
                }),
                Err(e) => Err(e.to_string()),
            };
            let ok = outcome.is_ok();
            record
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Handshake { conn_id, outcome });
            let transport: Box<dyn Transport + Send> =
                Box::new(rustls::StreamOwned::new(conn, tcp));
            ok.then_some(transport)
        };
        TlsOrigin {
            origin: Origin::start_with(Some(Box::new(accept)), handler),
            handshakes,
        }
    }

    /// `https://HOST:PORT`, for a Service address.
    pub fn https(&self, host: &str) -> String {
        format!("https://{host}:{}", self.origin.addr().port())
    }

    /// Every handshake so far, in the order they ended.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The handshakes that succeeded.
    pub fn negotiated(&self) -> Vec<Negotiated> {
        self.handshakes()
            .into_iter()
            .filter_map(|h| h.outcome.ok())
            .collect()
    }
}

impl Deref for TlsOrigin {
    type Target = Origin;

    fn deref(&self) -> &Origin {
        &self.origin
    }
}
