//! The `tls` (inbound) and `tls-outbound` policies, read with the loader's checked accessors
//! and turned into rustls configurations.
//!
//! A `tls` policy becomes a [`ServerTls`]: one certificate with its DNS names, and the
//! handshake settings of its port. The TLS APIs of one port make one [`server_config`], which
//! picks the certificate by SNI. As in Flex, a port has one TLS context: the APIs sharing it
//! must agree on everything but the certificate. A `tls-outbound` policy becomes a
//! [`ClientTls`] for the Service's `https://` connections.
//!
//! Field facts (Flex Gateway Local Mode): `certificate{key, crt}` and `trustedCA` are PEM
//! strings (Ringwall also takes a file path: a value without `-----BEGIN` is read as a path,
//! relative to the YAML file's directory); `alpn`, `ciphers` are lists; `minversion`,
//! `maxversion` are versions such as `1.2`; `requireClientCertificate` and `skipValidation`
//! are booleans. Ringwall's choices: versions default to 1.2 through 1.3 (rustls offers
//! nothing older); `alpn` defaults to `http/1.1`, and `h2` is dropped with a warning, as the
//! proxy speaks HTTP/1.1; `ciphers` restricts the suites of each version it names, and a
//! version it names none of keeps rustls' suites (as Envoy, under Flex, does for TLS 1.3).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ringwall_config::{did_you_mean, Fields, Node, Policy, Scope};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CipherSuite, ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, ServerConfig,
    SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};

use crate::policy::optional_bool;

/// The fields of a `tls` policy's `config`.
const INBOUND: &[&str] = &[
    "certificate",
    "alpn",
    "minversion",
    "maxversion",
    "ciphers",
    "requireClientCertificate",
    "trustedCA",
    "unknownServerName",
];

/// The fields of a `tls-outbound` policy's `config`.
const OUTBOUND: &[&str] = &[
    "certificate",
    "alpn",
    "minversion",
    "maxversion",
    "ciphers",
    "trustedCA",
    "skipValidation",
    "sni",
];

const HTTP11: &[u8] = b"http/1.1";

// === impl ServerTls ===

/// One `tls` policy: a certificate and the handshake settings of its port.
pub struct ServerTls {
    certificate: Arc<CertifiedKey>,
    /// The certificate's DNS names, lowercase; `*.example.com` for a wildcard.
    names: Vec<String>,
    context: Context,
}

/// What the APIs sharing a port must agree on.
#[derive(PartialEq)]
struct Context {
    alpn: Vec<Vec<u8>>,
    versions: Versions,
    ciphers: Vec<CipherSuite>,
    client_auth: ClientAuth,
    unknown: UnknownServerName,
}

#[derive(PartialEq)]
enum ClientAuth {
    None,
    /// Verified against the CAs when presented (`trustedCA` alone).
    Optional(Vec<CertificateDer<'static>>),
    /// `requireClientCertificate: true`.
    Required(Vec<CertificateDer<'static>>),
}

impl ServerTls {
    /// The DNS names the certificate serves, as SNI matches them.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// Reads a `tls` policy; `None` after reporting its errors in `scope`.
pub fn server_tls(spec: &Policy, scope: &mut Scope<'_>) -> Option<ServerTls> {
    let errors = scope.diag.errors.len();
    let fields = scope.map(&spec.config, &spec.config_path, INBOUND)?;
    let base = config_dir(spec);
    let certificate = match scope.require(&fields, "certificate") {
        Some(node) => certified_key(node, &fields.path_of("certificate"), base, scope),
        None => None,
    };
    let alpn = alpn(&fields, scope);
    let versions = versions(&fields, scope);
    let ciphers = match versions {
        Some(versions) => ciphers(&fields, versions, scope),
        None => None,
    };
    let require = optional_bool(&fields, "requireClientCertificate", false, scope);
    let trusted = trusted_ca(&fields, base, scope);
    let unknown = unknown_server_name(&fields, scope);
    let (certificate, alpn, versions, ciphers, require, trusted, unknown) = (
        certificate?,
        alpn?,
        versions?,
        ciphers?,
        require?,
        trusted?,
        unknown?,
    );
    let client_auth = match (require, trusted) {
        (false, None) => ClientAuth::None,
        (false, Some(cas)) => ClientAuth::Optional(cas),
        (true, Some(cas)) => ClientAuth::Required(cas),
        (true, None) => {
            let path = fields.path_of("requireClientCertificate");
            let message =
                "needs `trustedCA`, the CAs that client certificates are verified against";
            scope.error(fields.line, &path, message);
            return None;
        }
    };
    if scope.diag.errors.len() > errors {
        // An unknown field.
        return None;
    }
    let names = dns_names(&certificate);
    if names.is_empty() {
        let path = fields.path_of("certificate");
        let message = "the certificate names no DNS host (subjectAltName): SNI never selects it, \
                       it is served only as its port's default";
        scope.warn(fields.line, &path, message);
    }
    Some(ServerTls {
        certificate: Arc::new(certificate),
        names,
        context: Context {
            alpn,
            versions,
            ciphers: ciphers.iter().map(|s| s.suite()).collect(),
            client_auth,
            unknown,
        },
    })
}

/// What a port does with a client whose SNI names none of its certificates: the
/// `unknownServerName` field of the `tls` policy (Ringwall's; `default` when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownServerName {
    /// Serve the port's default certificate (that of its first TLS API).
    Default,
    /// Refuse the handshake (rustls sends an `access_denied` alert). A client sending no SNI
    /// at all (one connecting to an IP address) still gets the default certificate.
    Refuse,
}

/// Why the TLS APIs of one port make no configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenerError {
    #[error("no TLS API on this port")]
    Empty,
    #[error(
        "the TLS APIs of one port share one TLS context: `alpn`, `minversion`, `maxversion`, \
         `ciphers`, `requireClientCertificate`, `trustedCA` and `unknownServerName` must be the same"
    )]
    ContextsDiffer,
    #[error("`{0}` is the name of two different certificates on this port")]
    DuplicateName(String),
    #[error("{0}")]
    Rustls(String),
}

/// The configuration of a TLS port serving `sites` (the `tls` policies of its APIs, the first
/// being the default certificate), selecting the certificate by SNI. Session tickets are
/// sealed with keys shared by every port and kept across reloads, so a client resumes after
/// a reload too.
pub fn server_config(sites: &[ServerTls]) -> Result<Arc<ServerConfig>, ListenerError> {
    let first = sites.first().ok_or(ListenerError::Empty)?;
    if sites.iter().any(|s| s.context != first.context) {
        return Err(ListenerError::ContextsDiffer);
    }
    let mut resolver = BySni {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default: Arc::clone(&first.certificate),
        unknown: first.context.unknown,
    };
    for site in sites {
        for name in &site.names {
            let (map, key) = match name.strip_prefix("*.") {
                Some(parent) => (&mut resolver.wildcard, parent),
                None => (&mut resolver.exact, name.as_str()),
            };
            let previous = map.insert(key.to_owned(), Arc::clone(&site.certificate));
            if previous.is_some_and(|p| !Arc::ptr_eq(&p, &site.certificate)) {
                return Err(ListenerError::DuplicateName(name.clone()));
            }
        }
    }
    let context = &first.context;
    let provider = Arc::new(provider_with(&context.ciphers));
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(context.versions.rustls())
        .map_err(|e| ListenerError::Rustls(e.to_string()))?;
    let builder = match &context.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(cas) | ClientAuth::Required(cas) => {
            let roots = Arc::new(root_store(cas));
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = match context.client_auth {
                ClientAuth::Optional(_) => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| ListenerError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = context.alpn.clone();
    config.ticketer = ticketer()?;
    Ok(Arc::new(config))
}

/// The process's session-ticket sealer: it rotates its own keys (every 6 hours).
fn ticketer() -> Result<Arc<dyn ProducesTickets>, ListenerError> {
    static TICKETER: OnceLock<Arc<dyn ProducesTickets>> = OnceLock::new();
    if let Some(ticketer) = TICKETER.get() {
        return Ok(Arc::clone(ticketer));
    }
    let ticketer = ring::Ticketer::new().map_err(|e| ListenerError::Rustls(e.to_string()))?;
    Ok(Arc::clone(TICKETER.get_or_init(|| ticketer)))
}

/// The certificates of one port by SNI: exact names, then `*.parent` wildcards (one label).
#[derive(Debug)]
struct BySni {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    unknown: UnknownServerName,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands the SNI over lowercased.
        let Some(name) = hello.server_name() else {
            return Some(Arc::clone(&self.default));
        };
        let found = self.exact.get(name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        });
        match (found, self.unknown) {
            (Some(key), _) => Some(Arc::clone(key)),
            (None, UnknownServerName::Default) => Some(Arc::clone(&self.default)),
            (None, UnknownServerName::Refuse) => None,
        }
    }
}

// === impl ClientTls ===

/// One `tls-outbound` policy: how a Service's `https://` connections are made. The rustls
/// configuration keeps the sessions it may resume (its default in-memory cache), so every
/// connection made with the same `ClientTls` shares them.
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    /// `sni`: the name sent and verified instead of the Service address's host.
    pub sni: Option<ServerName<'static>>,
    /// Unique in the process: pooled connections made with this configuration are kept
    /// apart from those of any other.
    pub id: u64,
}

/// The next [`ClientTls::id`]; 0 is left for plain connections.
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl ClientTls {
    /// What an `https://` Service without `tls-outbound` gets, as in Flex: the server is
    /// verified against the system's CAs (see [`system_roots`]), with rustls' default
    /// versions and suites. One for the process, so its sessions survive reloads.
    pub fn system() -> Arc<ClientTls> {
        static SYSTEM: OnceLock<Arc<ClientTls>> = OnceLock::new();
        let tls = SYSTEM.get_or_init(|| {
            let provider = Arc::new(ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("rustls' ring provider supports its default versions")
                .with_root_certificates(system_roots().0)
                .with_no_client_auth();
            Arc::new(ClientTls {
                config: Arc::new(config),
                sni: None,
                id: next_id(),
            })
        });
        Arc::clone(tls)
    }
}

/// The system's CA certificates, read once, and a warning when there are none: then every
/// upstream verified against them fails (a 502) rather than going unverified.
pub fn system_roots() -> (Arc<RootCertStore>, Option<&'static str>) {
    static ROOTS: OnceLock<(Arc<RootCertStore>, Option<String>)> = OnceLock::new();
    let (roots, warning) = ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        let warning = (added == 0).then(|| {
            let why = found.errors.first().map(ToString::to_string);
            format!(
                "no system CA certificates found ({}): `https://` Services verified against \
                 them will fail",
                why.as_deref().unwrap_or("the store is empty")
            )
        });
        (Arc::new(roots), warning)
    });
    (Arc::clone(roots), warning.as_deref())
}

/// Reads a `tls-outbound` policy; `None` after reporting its errors in `scope`.
pub fn client_tls(spec: &Policy, scope: &mut Scope<'_>) -> Option<ClientTls> {
    let errors = scope.diag.errors.len();
    let fields = scope.map(&spec.config, &spec.config_path, OUTBOUND)?;
    let base = config_dir(spec);
    let certificate = match fields.get("certificate") {
        Some(node) => certified_key(node, &fields.path_of("certificate"), base, scope).map(Some),
        None => Some(None),
    };
    let alpn = optional_alpn(&fields, scope);
    let versions = versions(&fields, scope);
    let ciphers = match versions {
        Some(versions) => ciphers(&fields, versions, scope),
        None => None,
    };
    let skip = optional_bool(&fields, "skipValidation", false, scope);
    let trusted = trusted_ca(&fields, base, scope);
    let sni = match fields.get("sni") {
        Some(node) => server_name(node, &fields.path_of("sni"), scope).map(Some),
        None => Some(None),
    };
    let (certificate, alpn, versions, ciphers, skip, trusted, sni) = (
        certificate?,
        alpn?,
        versions?,
        ciphers?,
        skip?,
        trusted?,
        sni?,
    );
    if scope.diag.errors.len() > errors {
        // An unknown field.
        return None;
    }
    let provider = Arc::new(provider_with(
        &ciphers.iter().map(|s| s.suite()).collect::<Vec<_>>(),
    ));
    let builder = match ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions.rustls())
    {
        Ok(builder) => builder,
        Err(e) => {
            scope.error(fields.line, &fields.path, e.to_string());
            return None;
        }
    };
    let builder = match (skip, trusted) {
        (true, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider))),
        (false, Some(cas)) => builder.with_root_certificates(root_store(&cas)),
        // As in Flex: without `trustedCA`, the operating system's CAs.
        (false, None) => builder.with_root_certificates(system_roots().0),
    };
    let mut config = match certificate {
        None => builder.with_no_client_auth(),
        Some(key) => builder.with_client_cert_resolver(Arc::new(ClientCertificate(Arc::new(key)))),
    };
    config.alpn_protocols = alpn;
    Some(ClientTls {
        config: Arc::new(config),
        sni,
        id: next_id(),
    })
}

/// `certificate` of a `tls-outbound` policy, presented to every upstream that asks.
#[derive(Debug)]
struct ClientCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCertificate {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The upstream verifier of `skipValidation: true`.
///
/// DANGEROUS: any certificate is accepted for any name, so an attacker on the path can
/// impersonate the upstream. Only the handshake signatures are still checked, which proves
/// nothing about who holds the key. Flex offers it for origins with self-signed certificates.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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

// === the fields ===

/// The directory relative file paths are read from: that of the policy's YAML file.
fn config_dir(spec: &Policy) -> &Path {
    Path::new(&spec.file).parent().unwrap_or(Path::new(""))
}

/// PEM text as given, or the contents of the file it names.
fn pem_source(node: &Node, path: &str, base: &Path, scope: &mut Scope<'_>) -> Option<Vec<u8>> {
    let value = scope.str(node, path)?;
    if value.contains("-----BEGIN") {
        return Some(value.as_bytes().to_vec());
    }
    let file = base.join(value.trim());
    match std::fs::read(&file) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            let message = format!(
                "neither PEM text (no `-----BEGIN`) nor a readable file `{}`: {e}",
                file.display()
            );
            scope.error(node.line, path, message);
            None
        }
    }
}

/// Every certificate of the PEM at `node`; at least one.
fn certificates(
    node: &Node,
    path: &str,
    base: &Path,
    scope: &mut Scope<'_>,
) -> Option<Vec<CertificateDer<'static>>> {
    let pem = pem_source(node, path, base, scope)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(certs) if certs.is_empty() => {
            scope.error(node.line, path, "no `CERTIFICATE` block in the PEM");
            None
        }
        Ok(certs) => Some(certs),
        Err(e) => {
            scope.error(node.line, path, format!("invalid PEM: {e}"));
            None
        }
    }
}

/// `certificate{key, crt}` as a checked key pair, and the end-entity certificate's expiry
/// (reported as a warning: clients refuse it, but the rest of the configuration is valid).
fn certified_key(
    node: &Node,
    path: &str,
    base: &Path,
    scope: &mut Scope<'_>,
) -> Option<CertifiedKey> {
    let fields = scope.map(node, path, &["key", "crt"])?;
    let crt = scope.require(&fields, "crt");
    let key = scope.require(&fields, "key");
    let (crt_path, key_path) = (fields.path_of("crt"), fields.path_of("key"));
    let chain = certificates(crt?, &crt_path, base, scope);
    let key_node = key?;
    let pem = pem_source(key_node, &key_path, base, scope)?;
    let key = match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            let message = "no private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block) in the PEM";
            scope.error(key_node.line, &key_path, message);
            return None;
        }
        Err(e) => {
            scope.error(key_node.line, &key_path, format!("invalid PEM: {e}"));
            return None;
        }
    };
    let chain = chain?;
    let leaf = chain[0].clone();
    let provider = ring::default_provider();
    match CertifiedKey::from_der(chain, key, &provider) {
        Ok(certified) => {
            if let Some(message) = expired(&leaf) {
                scope.warn(crt?.line, &crt_path, message);
            }
            Some(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            let message = "`key` is not the private key of the certificate in `crt`";
            scope.error(key_node.line, &key_path, message);
            None
        }
        Err(e) => {
            scope.error(
                key_node.line,
                &key_path,
                format!("unusable private key: {e}"),
            );
            None
        }
    }
}

/// "expired on ..." or "not valid before ..." when the certificate is not valid now.
fn expired(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Some(format!("the certificate expired on {}", validity.not_after));
    }
    if now < validity.not_before {
        return Some(format!(
            "the certificate is not valid before {}",
            validity.not_before
        ));
    }
    None
}

/// The DNS names of the end-entity certificate (its subject alternative names), lowercase.
fn dns_names(key: &CertifiedKey) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Some(cert) = key.cert.first() else {
        return Vec::new();
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(names)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// `unknownServerName`: `default` when absent.
fn unknown_server_name(fields: &Fields<'_>, scope: &mut Scope<'_>) -> Option<UnknownServerName> {
    let Some(node) = fields.get("unknownServerName") else {
        return Some(UnknownServerName::Default);
    };
    let path = fields.path_of("unknownServerName");
    match scope.str(node, &path)? {
        "default" => Some(UnknownServerName::Default),
        "refuse" => Some(UnknownServerName::Refuse),
        other => {
            let message = format!("`{other}` is neither `default` nor `refuse`");
            scope.error(node.line, &path, message);
            None
        }
    }
}

/// `trustedCA`: `Some(None)` when absent.
fn trusted_ca(
    fields: &Fields<'_>,
    base: &Path,
    scope: &mut Scope<'_>,
) -> Option<Option<Vec<CertificateDer<'static>>>> {
    match fields.get("trustedCA") {
        None => Some(None),
        Some(node) => {
            let path = fields.path_of("trustedCA");
            let cas = certificates(node, &path, base, scope)?;
            let mut store = RootCertStore::empty();
            let (_, refused) = store.add_parsable_certificates(cas.iter().cloned());
            if refused > 0 {
                let message =
                    format!("{refused} of the certificates is not a usable CA certificate");
                scope.error(node.line, &path, message);
                return None;
            }
            Some(Some(cas))
        }
    }
}

fn root_store(cas: &[CertificateDer<'static>]) -> RootCertStore {
    let mut store = RootCertStore::empty();
    // Checked when read (`trusted_ca`).
    store.add_parsable_certificates(cas.iter().cloned());
    store
}

/// `alpn` of a `tls` policy: `http/1.1` when absent; `h2` dropped with a warning.
fn alpn(fields: &Fields<'_>, scope: &mut Scope<'_>) -> Option<Vec<Vec<u8>>> {
    let Some(node) = fields.get("alpn") else {
        return Some(vec![HTTP11.to_vec()]);
    };
    let path = fields.path_of("alpn");
    let protocols = protocols(node, &path, scope)?;
    let mut kept = Vec::with_capacity(protocols.len());
    for (protocol, line) in protocols {
        if protocol == "h2" {
            let message = "`h2` is not offered: Ringwall serves HTTP/1.1";
            scope.warn(line, &path, message);
        } else {
            kept.push(protocol.into_bytes());
        }
    }
    if kept.is_empty() {
        let message = "no protocol Ringwall serves: list `http/1.1`, or leave `alpn` out";
        scope.error(node.line, &path, message);
        return None;
    }
    Some(kept)
}

/// `alpn` of a `tls-outbound` policy, offered as given; none when absent.
fn optional_alpn(fields: &Fields<'_>, scope: &mut Scope<'_>) -> Option<Vec<Vec<u8>>> {
    let Some(node) = fields.get("alpn") else {
        return Some(Vec::new());
    };
    let protocols = protocols(node, &fields.path_of("alpn"), scope)?;
    Some(protocols.into_iter().map(|(p, _)| p.into_bytes()).collect())
}

/// A list of ALPN protocol names (1 to 255 bytes each), with their lines.
fn protocols(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<Vec<(String, usize)>> {
    crate::policy::each_item(node, path, scope, |item, path, scope| {
        let name = scope.str(item, path)?;
        if name.is_empty() || name.len() > 255 {
            let message = "an ALPN protocol name is 1 to 255 bytes long";
            scope.error(item.line, path, message);
            return None;
        }
        Some((name.to_owned(), item.line))
    })
}

/// The enabled TLS versions, from `minversion` to `maxversion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Versions {
    Tls12,
    Tls12To13,
    Tls13,
}

impl Versions {
    fn rustls(self) -> &'static [&'static SupportedProtocolVersion] {
        static TLS12: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
        static TLS13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        static BOTH: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        match self {
            Versions::Tls12 => &TLS12,
            Versions::Tls12To13 => &BOTH,
            Versions::Tls13 => &TLS13,
        }
    }

    fn allows(self, version: ProtocolVersion) -> bool {
        match self {
            Versions::Tls12 => version == ProtocolVersion::TLSv1_2,
            Versions::Tls13 => version == ProtocolVersion::TLSv1_3,
            Versions::Tls12To13 => true,
        }
    }
}

/// A TLS version as written: `1.2` (a string, or a YAML number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    V10,
    V11,
    V12,
    V13,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V10 => "1.0",
            Version::V11 => "1.1",
            Version::V12 => "1.2",
            Version::V13 => "1.3",
        })
    }
}

fn version(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<Version> {
    let text = match (node.as_str(), node.as_f64()) {
        (Some(s), _) => s.trim().to_owned(),
        (None, Some(f)) => format!("{f:.1}"),
        (None, None) => {
            scope.expected(node, path, "a TLS version (`1.2` or `1.3`)");
            return None;
        }
    };
    let text = text
        .strip_prefix("TLSv")
        .or_else(|| text.strip_prefix("TLS"))
        .unwrap_or(&text);
    match text.replace('_', ".").as_str() {
        "1.0" | "1" => Some(Version::V10),
        "1.1" => Some(Version::V11),
        "1.2" => Some(Version::V12),
        "1.3" => Some(Version::V13),
        _ => {
            let message = format!("unknown TLS version `{text}`; expected `1.2` or `1.3`");
            scope.error(node.line, path, message);
            None
        }
    }
}

/// `minversion` and `maxversion`: 1.2 through 1.3 by default. A minimum below 1.2 is raised to
/// 1.2 with a warning (rustls offers nothing older); a maximum below 1.2 is an error.
fn versions(fields: &Fields<'_>, scope: &mut Scope<'_>) -> Option<Versions> {
    let (min_path, max_path) = (fields.path_of("minversion"), fields.path_of("maxversion"));
    let min = match fields.get("minversion") {
        Some(node) => (version(node, &min_path, scope)?, node.line),
        None => (Version::V12, fields.line),
    };
    let max = match fields.get("maxversion") {
        Some(node) => (version(node, &max_path, scope)?, node.line),
        None => (Version::V13, fields.line),
    };
    if max.0 < Version::V12 {
        let message = format!(
            "TLS {} is not offered: rustls supports TLS 1.2 and 1.3",
            max.0
        );
        scope.error(max.1, &max_path, message);
        return None;
    }
    if min.0 > max.0 {
        let message = format!("minversion `{}` is above maxversion `{}`", min.0, max.0);
        scope.error(min.1, &min_path, message);
        return None;
    }
    if min.0 < Version::V12 {
        let message = format!(
            "TLS {} is not offered (rustls supports TLS 1.2 and 1.3): the minimum is 1.2",
            min.0
        );
        scope.warn(min.1, &min_path, message);
    }
    Some(match (min.0.max(Version::V12), max.0) {
        (Version::V13, _) => Versions::Tls13,
        (_, Version::V12) => Versions::Tls12,
        _ => Versions::Tls12To13,
    })
}

/// The cipher suites rustls (with ring) offers, by their OpenSSL and IANA names.
const OFFERED: &[(&str, &str, SupportedCipherSuite)] = &[
    (
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ),
    (
        "TLS_AES_256_GCM_SHA384",
        "TLS_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// Suites other TLS stacks (and Flex's list) offer and rustls does not: CBC modes, static RSA
/// key exchange, finite-field DHE.
const NOT_OFFERED: &[&str] = &[
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "AES128-SHA256",
    "AES256-SHA256",
    "DES-CBC3-SHA",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-CHACHA20-POLY1305",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
];

/// `ciphers`: the suites in the order listed. Each version the list names no suite of keeps
/// rustls' suites for it; a list naming no suite of any enabled version is an error.
fn ciphers(
    fields: &Fields<'_>,
    versions: Versions,
    scope: &mut Scope<'_>,
) -> Option<Vec<SupportedCipherSuite>> {
    let defaults = ring::DEFAULT_CIPHER_SUITES;
    let enabled = |s: &SupportedCipherSuite| versions.allows(s.version().version);
    let Some(node) = fields.get("ciphers") else {
        return Some(defaults.iter().copied().filter(enabled).collect());
    };
    let path = fields.path_of("ciphers");
    let listed = crate::policy::each_item(node, &path, scope, |item, path, scope| {
        let name = scope.str(item, path)?.trim();
        if let Some((_, _, suite)) = OFFERED.iter().find(|(openssl, iana, _)| {
            name.eq_ignore_ascii_case(openssl) || name.eq_ignore_ascii_case(iana)
        }) {
            return Some(*suite);
        }
        let message = if NOT_OFFERED.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            format!(
                "`{name}` is not offered by rustls, which has only AEAD suites with ECDHE key \
                 exchange (e.g. `ECDHE-RSA-AES128-GCM-SHA256`, `TLS_AES_128_GCM_SHA256`)"
            )
        } else {
            let names = OFFERED.iter().flat_map(|(o, i, _)| [*o, *i]);
            let hint = did_you_mean(name, names)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            format!("unknown cipher `{name}`{hint}")
        };
        scope.error(item.line, path, message);
        None
    })?;
    let mut suites: Vec<SupportedCipherSuite> = listed.iter().copied().filter(enabled).collect();
    if suites.is_empty() {
        let message = "none of these ciphers is usable with the TLS versions enabled by `minversion` and `maxversion`";
        scope.error(node.line, &path, message);
        return None;
    }
    for version in [ProtocolVersion::TLSv1_3, ProtocolVersion::TLSv1_2] {
        if versions.allows(version) && !suites.iter().any(|s| s.version().version == version) {
            suites.extend(defaults.iter().filter(|s| s.version().version == version));
        }
    }
    suites.dedup_by_key(|s| s.suite());
    Some(suites)
}

/// The ring provider with only `ciphers` (by id), in that order.
fn provider_with(ciphers: &[CipherSuite]) -> CryptoProvider {
    let mut provider = ring::default_provider();
    provider.cipher_suites = ciphers
        .iter()
        .filter_map(|id| {
            ring::ALL_CIPHER_SUITES
                .iter()
                .find(|s| s.suite() == *id)
                .copied()
        })
        .collect();
    provider
}

/// `sni`: a DNS name or an IP address.
fn server_name(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<ServerName<'static>> {
    let name = scope.str(node, path)?;
    match ServerName::try_from(name.trim().to_owned()) {
        Ok(name) => Some(name),
        Err(_) => {
            let message = format!("`{name}` is not a DNS name or an IP address");
            scope.error(node.line, path, message);
            None
        }
    }
}
