//! The `tls` and `tls-outbound` settings read from YAML, and handshakes and data over the ring
//! against a rustls client on a std thread. Certificates are made at test time (rcgen).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::BytesMut;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::{ClientConnection, ProtocolVersion, ServerConnection, StreamOwned};
use tokio_uring::net::TcpListener;

use super::*;

const HEADER: &str = "apiVersion: gateway.mulesoft.com/v1alpha1\n";
const WAIT: Duration = Duration::from_secs(10);

// === certificates ===

/// A CA, and the directory its certificates are written to.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

/// A certificate and its key, as files.
struct Leaf {
    crt: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringwall-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("CA");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
        Pki { ca, dir }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for `names` (`client: false`) or a client certificate whose
    /// subject is `CN=<cn>, O=Ringwall`.
    fn leaf(&self, file: &str, names: &[&str], cn: &str, client: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Ringwall");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let leaf = Leaf {
            crt: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.crt, cert.pem()).expect("write crt");
        std::fs::write(&leaf.key, key.serialize_pem()).expect("write key");
        leaf
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn certificate(leaf: &Leaf) -> String {
    format!(
        "certificate: {{crt: '{}', key: '{}'}}",
        leaf.crt.display(),
        leaf.key.display()
    )
}

// === settings from YAML ===

/// An ApiInstance `a` with a `tls` binding whose `config` is `config` (one field a line), and
/// a Service `s` with a `tls-outbound` binding whose `config` is `outbound`.
fn yaml(config: &str, outbound: &str) -> String {
    let indent = |c: &str| c.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "{HEADER}kind: ApiInstance\nmetadata: {{name: a}}\nspec:\n  address: https://127.0.0.1:0\n  \
         services:\n    up: {{address: 'http://127.0.0.1:9'}}\n---\n\
         {HEADER}kind: Service\nmetadata: {{name: s}}\nspec:\n  address: https://127.0.0.1:9\n---\n\
         {HEADER}kind: PolicyBinding\nmetadata: {{name: t}}\nspec:\n  targetRef: {{name: a}}\n  \
         policyRef: {{name: tls}}\n  config:\n{}---\n\
         {HEADER}kind: PolicyBinding\nmetadata: {{name: o}}\nspec:\n  targetRef: {{kind: Service, name: s}}\n  \
         policyRef: {{name: tls-outbound}}\n  config:\n{}",
        indent(config),
        indent(outbound),
    )
}

/// The first problem of a load as `line: field: message`.
fn first(diag: &ringwall_config::Diagnostics, warnings: bool) -> String {
    let list = if warnings {
        &diag.warnings
    } else {
        &diag.errors
    };
    let e = list.first().expect("a problem");
    format!(
        "{}: {}: {}",
        e.line,
        e.field.as_deref().unwrap_or(""),
        e.message
    )
}

fn snapshot(config: &str, outbound: &str) -> ringwall_config::Snapshot {
    let yaml = yaml(config, outbound);
    match ringwall_config::load_files(&[("p.yaml".into(), yaml.clone())]) {
        Ok(snapshot) => snapshot,
        Err(e) => panic!("{e}\n{yaml}"),
    }
}

fn inbound(config: &str) -> (Option<ServerTls>, ringwall_config::Diagnostics) {
    let snapshot = snapshot(config, "skipValidation: true");
    let spec = snapshot.apis[0].tls.as_ref().expect("the tls policy");
    assert_eq!(spec.name, "tls");
    let mut diag = ringwall_config::Diagnostics::default();
    let mut scope = ringwall_config::Scope::for_policy(&mut diag, spec);
    let tls = server_tls(spec, &mut scope);
    (tls, diag)
}

fn inbound_ok(config: &str) -> ServerTls {
    let (tls, diag) = inbound(config);
    assert!(diag.errors.is_empty(), "{:?}", diag.errors);
    tls.expect("settings")
}

fn inbound_error(config: &str) -> String {
    let (tls, diag) = inbound(config);
    assert!(tls.is_none());
    first(&diag, false)
}

fn outbound(
    config: &str,
    server_certificate: &str,
) -> (Option<ClientTls>, ringwall_config::Diagnostics) {
    let snapshot = snapshot(server_certificate, config);
    let spec = snapshot.services[0]
        .tls
        .as_ref()
        .expect("the tls-outbound policy");
    assert_eq!(spec.name, "tls-outbound");
    let mut diag = ringwall_config::Diagnostics::default();
    let mut scope = ringwall_config::Scope::for_policy(&mut diag, spec);
    let tls = client_tls(spec, &mut scope);
    (tls, diag)
}

fn outbound_ok(config: &str) -> ClientTls {
    let (tls, diag) = outbound(config, "alpn: [http/1.1]");
    assert!(diag.errors.is_empty(), "{:?}", diag.errors);
    tls.expect("settings")
}

fn outbound_error(config: &str) -> String {
    let (tls, diag) = outbound(config, "alpn: [http/1.1]");
    assert!(tls.is_none());
    first(&diag, false)
}

// Line 22 of `yaml` holds the first field of the `tls` config.
const TLS_LINE: usize = 22;

#[test]
fn pem_text_and_file_paths_both_load() {
    let pki = Pki::new("CA");
    let leaf = pki.leaf("a", &["a.test", "*.wild.test"], "a", false);
    let from_files = inbound_ok(&certificate(&leaf));
    assert_eq!(from_files.names(), ["a.test", "*.wild.test"]);

    let indent = |pem: String| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let crt = indent(std::fs::read_to_string(&leaf.crt).expect("crt"));
    let key = indent(std::fs::read_to_string(&leaf.key).expect("key"));
    let inline = inbound_ok(&format!("certificate:\n  crt: |\n{crt}  key: |\n{key}"));
    assert_eq!(inline.names(), ["a.test", "*.wild.test"]);
}

#[test]
fn config_errors_name_the_field() {
    let pki = Pki::new("CA");
    let leaf = pki.leaf("a", &["a.test"], "a", false);
    let other = pki.leaf("b", &["b.test"], "b", false);
    let cert = certificate(&leaf);
    let crt = leaf.crt.display();

    assert_eq!(
        inbound_error(&format!("certificate: {{crt: '{crt}'}}")),
        format!("{TLS_LINE}: spec.config.certificate.key: missing required field `key`")
    );
    assert_eq!(
        inbound_error("certificate: {crt: \"-----BEGIN CERTIFICATE-----\\nnot base64!\\n-----END CERTIFICATE-----\\n\", key: k}"),
        format!("{TLS_LINE}: spec.config.certificate.crt: invalid PEM: base64 decode error: InvalidCharacter(33)")
    );
    assert_eq!(
        inbound_error("certificate: {crt: /nonexistent/a.crt, key: k}"),
        format!(
            "{TLS_LINE}: spec.config.certificate.crt: neither PEM text (no `-----BEGIN`) nor a \
             readable file `/nonexistent/a.crt`: No such file or directory (os error 2)"
        )
    );
    assert_eq!(
        inbound_error(&format!(
            "certificate: {{crt: '{crt}', key: '{}'}}",
            other.key.display()
        )),
        format!(
            "{TLS_LINE}: spec.config.certificate.key: `key` is not the private key of the \
             certificate in `crt`"
        )
    );
    assert_eq!(
        inbound_error(&format!("certificate: {{crt: '{crt}', key: '{crt}'}}")),
        format!(
            "{TLS_LINE}: spec.config.certificate.key: no private key (`PRIVATE KEY`, \
             `RSA PRIVATE KEY` or `EC PRIVATE KEY` block) in the PEM"
        )
    );
    let line = TLS_LINE + 1;
    assert_eq!(
        inbound_error(&format!("{cert}\nciphers: [ECDHE-RSA-AES128-GCM-SHA265]")),
        format!(
            "{line}: spec.config.ciphers[0]: unknown cipher `ECDHE-RSA-AES128-GCM-SHA265` \
             (did you mean `ECDHE-RSA-AES128-GCM-SHA256`?)"
        )
    );
    assert_eq!(
        inbound_error(&format!("{cert}\nciphers: [AES128-SHA]")),
        format!(
            "{line}: spec.config.ciphers[0]: `AES128-SHA` is not offered by rustls, which has \
             only AEAD suites with ECDHE key exchange (e.g. `ECDHE-RSA-AES128-GCM-SHA256`, \
             `TLS_AES_128_GCM_SHA256`)"
        )
    );
    assert_eq!(
        inbound_error(&format!("{cert}\nminversion: '1.3'\nmaxversion: '1.2'")),
        format!("{line}: spec.config.minversion: minversion `1.3` is above maxversion `1.2`")
    );
    assert_eq!(
        inbound_error(&format!("{cert}\nmaxversion: 1.1")),
        format!("{line}: spec.config.maxversion: TLS 1.1 is not offered: rustls supports TLS 1.2 and 1.3")
    );
    assert_eq!(
        inbound_error(&format!("{cert}\nminversion: 1.4")),
        format!(
            "{line}: spec.config.minversion: unknown TLS version `1.4`; expected `1.2` or `1.3`"
        )
    );
    assert_eq!(
        inbound_error(&format!(
            "{cert}\nminversion: '1.3'\nciphers: [ECDHE-RSA-AES128-GCM-SHA256]"
        )),
        format!(
            "{}: spec.config.ciphers: none of these ciphers is usable with the TLS versions \
             enabled by `minversion` and `maxversion`",
            line + 1
        )
    );
    assert_eq!(
        inbound_error(&format!("{cert}\nrequireClientCertificate: true")),
        format!(
            "{}: spec.config.requireClientCertificate: needs `trustedCA`, the CAs that client \
             certificates are verified against",
            TLS_LINE - 1
        )
    );
    assert_eq!(
        inbound_error(&format!("{cert}\nsni: a.test")),
        format!(
            "{line}: spec.config.sni: unknown field `sni`; accepted fields: `certificate`, \
             `alpn`, `minversion`, `maxversion`, `ciphers`, `requireClientCertificate`, `trustedCA`, `unknownServerName`"
        )
    );
    assert_eq!(
        outbound_error("skipValidation: true\nsni: 'not a name'"),
        "32: spec.config.sni: `not a name` is not a DNS name or an IP address"
    );
}

#[test]
fn warnings_keep_the_settings() {
    let pki = Pki::new("CA");
    let leaf = pki.leaf("a", &["a.test"], "a", false);
    let cert = certificate(&leaf);
    let (tls, diag) = inbound(&format!("{cert}\nalpn: [h2, http/1.1]\nminversion: 1.1"));
    assert!(tls.is_some() && diag.errors.is_empty());
    let line = TLS_LINE + 1;
    assert_eq!(
        first(&diag, true),
        format!("{line}: spec.config.alpn: `h2` is not offered: Ringwall serves HTTP/1.1")
    );
    assert_eq!(
        diag.warnings[1].message,
        "TLS 1.1 is not offered (rustls supports TLS 1.2 and 1.3): the minimum is 1.2"
    );

    let mut params = CertificateParams::new(vec!["old.test".to_string()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let key = KeyPair::generate().expect("key");
    let old = params.signed_by(&key, &pki.ca).expect("sign");
    std::fs::write(pki.dir.join("old.crt"), old.pem()).expect("write");
    std::fs::write(pki.dir.join("old.key"), key.serialize_pem()).expect("write");
    let (tls, diag) = inbound(&format!(
        "certificate: {{crt: '{}', key: '{}'}}",
        pki.dir.join("old.crt").display(),
        pki.dir.join("old.key").display()
    ));
    assert!(tls.is_some());
    assert_eq!(
        first(&diag, true),
        format!("{TLS_LINE}: spec.config.certificate.crt: the certificate expired on Jan  1 00:00:00 2020 +00:00")
    );

    let nameless = pki.leaf("n", &[], "n", false);
    let (tls, diag) = inbound(&certificate(&nameless));
    assert!(tls.is_some());
    assert_eq!(
        first(&diag, true),
        format!(
            "{}: spec.config.certificate: the certificate names no DNS host (subjectAltName): \
             SNI never selects it, it is served only as its port's default",
            TLS_LINE - 1
        )
    );
}

#[test]
fn a_port_shares_one_context() {
    let pki = Pki::new("CA");
    let a = certificate(&pki.leaf("a", &["a.test"], "a", false));
    let b = certificate(&pki.leaf("b", &["b.test"], "b", false));
    let same = [inbound_ok(&a), inbound_ok(&b)];
    assert!(server_config(&same).is_ok());
    let differ = [
        inbound_ok(&a),
        inbound_ok(&format!("{b}\nminversion: '1.3'")),
    ];
    assert_eq!(
        server_config(&differ).err(),
        Some(ListenerError::ContextsDiffer)
    );
    let twice = [inbound_ok(&a), inbound_ok(&a)];
    assert_eq!(
        server_config(&twice).err(),
        Some(ListenerError::DuplicateName("a.test".into()))
    );
    assert_eq!(server_config(&[]).err(), Some(ListenerError::Empty));
}

// === handshakes over the ring ===

/// What the client saw.
#[derive(Debug)]
struct Seen {
    /// The DNS names of the certificate the server presented.
    names: Vec<String>,
    alpn: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
}

/// What the server saw of a completed handshake.
#[derive(Debug)]
struct Accepted {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
    subject: Option<String>,
}

fn presented_names(conn: &ClientConnection) -> Vec<String> {
    let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
        return Vec::new();
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).expect("x509");
    let san = parsed
        .subject_alternative_name()
        .expect("san")
        .expect("san");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// Connects to `addr` as `name` with `client`, completing the handshake.
fn connect(
    addr: SocketAddr,
    client: &ClientTls,
    name: &str,
) -> Result<StreamOwned<ClientConnection, std::net::TcpStream>, rustls::Error> {
    let name = client
        .sni
        .clone()
        .unwrap_or_else(|| rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name"));
    let conn = ClientConnection::new(Arc::clone(&client.config), name)?;
    let sock = std::net::TcpStream::connect(addr).expect("connect");
    let mut stream = StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        match stream.conn.complete_io(&mut stream.sock) {
            Ok(_) => {}
            Err(e) => {
                return Err(
                    match e.into_inner().map(|i| i.downcast::<rustls::Error>()) {
                        Some(Ok(e)) => *e,
                        _ => rustls::Error::General("io".into()),
                    },
                );
            }
        }
    }
    Ok(stream)
}

/// Accepts one connection on the ring with `server`, while a std thread connects with
/// `client` as `name`: the server's and the client's view of the handshake.
fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: ClientTls,
    name: &'static str,
) -> (
    Result<Accepted, HandshakeFailure>,
    Result<Seen, rustls::Error>,
) {
    tokio_uring::start(async move {
        let listener = TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = std::thread::spawn(move || {
            let mut stream = connect(addr, &client, name)?;
            let seen = Seen {
                names: presented_names(&stream.conn),
                alpn: stream.conn.alpn_protocol().map(<[u8]>::to_vec),
                version: stream.conn.protocol_version(),
            };
            // Waits for the server to close, so its last flight is read.
            let _ = stream.read(&mut [0; 16]);
            Ok(seen)
        });
        let (io, _) = listener.accept().await.expect("accept");
        let conn = ServerConnection::new(server).expect("conn");
        let mut tls = TlsStream::new(io, conn);
        let accepted = match tls.handshake(WAIT).await {
            Ok(()) => Ok(Accepted {
                sni: tls.server_name().map(str::to_owned),
                alpn: tls.alpn().map(<[u8]>::to_vec),
                version: tls.version(),
                subject: tls.peer_subject(),
            }),
            Err(e) => Err(e.reason),
        };
        let _ = tls.shutdown().await;
        drop(tls);
        (accepted, peer.join().expect("client thread"))
    })
}

fn server(configs: &[String], unknown: UnknownServerName) -> Arc<rustls::ServerConfig> {
    let field = match unknown {
        UnknownServerName::Default => "",
        UnknownServerName::Refuse => "\nunknownServerName: refuse",
    };
    let sites: Vec<ServerTls> = configs
        .iter()
        .map(|c| inbound_ok(&format!("{c}{field}")))
        .collect();
    server_config(&sites).expect("server config")
}

fn trusting(pki: &Pki, extra: &str) -> ClientTls {
    outbound_ok(&format!(
        "trustedCA: '{}'\n{extra}",
        pki.ca_path().display()
    ))
}

#[test]
fn sni_selects_the_certificate() {
    let pki = Pki::new("CA");
    let a = certificate(&pki.leaf("a", &["a.test"], "a", false));
    let b = certificate(&pki.leaf("b", &["b.test", "*.b.test"], "b", false));
    let config = server(&[a.clone(), b.clone()], UnknownServerName::Default);

    let (accepted, seen) = handshake(Arc::clone(&config), trusting(&pki, ""), "b.test");
    assert_eq!(seen.expect("client").names, ["b.test", "*.b.test"]);
    assert_eq!(accepted.expect("server").sni.as_deref(), Some("b.test"));

    let (_, seen) = handshake(Arc::clone(&config), trusting(&pki, ""), "a.test");
    assert_eq!(seen.expect("client").names, ["a.test"]);

    let (_, seen) = handshake(Arc::clone(&config), trusting(&pki, ""), "x.b.test");
    assert_eq!(seen.expect("client").names, ["b.test", "*.b.test"]);

    // An unknown name gets the default (first) certificate, which the client then refuses.
    let unverified = outbound_ok("skipValidation: true");
    let (_, seen) = handshake(Arc::clone(&config), unverified, "c.test");
    assert_eq!(seen.expect("client").names, ["a.test"]);
    let (accepted, seen) = handshake(config, trusting(&pki, ""), "c.test");
    assert!(seen.is_err());
    assert_eq!(accepted.err(), Some(HandshakeFailure::BadCertificate));

    // Or an alert, when the port refuses unknown names.
    let refusing = server(&[a, b], UnknownServerName::Refuse);
    let unverified = outbound_ok("skipValidation: true");
    let (accepted, seen) = handshake(refusing, unverified, "c.test");
    assert!(seen.is_err());
    assert_eq!(accepted.err(), Some(HandshakeFailure::UnknownServerName));
}

#[test]
fn alpn_is_negotiated() {
    let pki = Pki::new("CA");
    let a = certificate(&pki.leaf("a", &["a.test"], "a", false));
    let config = server(std::slice::from_ref(&a), UnknownServerName::Default);

    let (accepted, seen) = handshake(
        Arc::clone(&config),
        trusting(&pki, "alpn: [h2, http/1.1]"),
        "a.test",
    );
    assert_eq!(
        seen.expect("client").alpn.as_deref(),
        Some(&b"http/1.1"[..])
    );
    assert_eq!(
        accepted.expect("server").alpn.as_deref(),
        Some(&b"http/1.1"[..])
    );

    let (accepted, seen) = handshake(Arc::clone(&config), trusting(&pki, "alpn: [h2]"), "a.test");
    assert!(seen.is_err());
    assert_eq!(accepted.err(), Some(HandshakeFailure::NoSharedAlpn));

    // A client offering no ALPN is served without.
    let (accepted, _) = handshake(config, trusting(&pki, ""), "a.test");
    assert_eq!(accepted.expect("server").alpn, None);

    // The stream negotiates whatever the configuration lists, `h2` included.
    let sites = [inbound_ok(&a)];
    let mut h2 = (*server_config(&sites).expect("config")).clone();
    h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let (accepted, _) = handshake(
        Arc::new(h2),
        trusting(&pki, "alpn: [h2, http/1.1]"),
        "a.test",
    );
    assert_eq!(accepted.expect("server").alpn.as_deref(), Some(&b"h2"[..]));
}

#[test]
fn versions_are_bounded() {
    let pki = Pki::new("CA");
    let a = certificate(&pki.leaf("a", &["a.test"], "a", false));
    let tls12 = server(
        &[format!("{a}\nmaxversion: '1.2'")],
        UnknownServerName::Default,
    );
    let tls13 = server(
        &[format!("{a}\nminversion: '1.3'")],
        UnknownServerName::Default,
    );

    let (accepted, seen) = handshake(Arc::clone(&tls12), trusting(&pki, ""), "a.test");
    assert_eq!(
        seen.expect("client").version,
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        accepted.expect("server").version,
        Some(ProtocolVersion::TLSv1_2)
    );
    let (accepted, _) = handshake(Arc::clone(&tls13), trusting(&pki, ""), "a.test");
    assert_eq!(
        accepted.expect("server").version,
        Some(ProtocolVersion::TLSv1_3)
    );

    let (accepted, seen) = handshake(tls12, trusting(&pki, "minversion: '1.3'"), "a.test");
    assert!(seen.is_err());
    assert_eq!(accepted.err(), Some(HandshakeFailure::ProtocolVersion));
    let (accepted, seen) = handshake(tls13, trusting(&pki, "maxversion: '1.2'"), "a.test");
    assert!(seen.is_err());
    assert_eq!(accepted.err(), Some(HandshakeFailure::ProtocolVersion));
}

#[test]
fn ciphers_restrict_the_suites() {
    let pki = Pki::new("CA");
    let a = certificate(&pki.leaf("a", &["a.test"], "a", false));
    let config = server(
        &[format!(
            "{a}\nmaxversion: '1.2'\nciphers: [ECDHE-ECDSA-AES256-GCM-SHA384]"
        )],
        UnknownServerName::Default,
    );
    let (accepted, seen) = handshake(
        Arc::clone(&config),
        trusting(
            &pki,
            "ciphers: [TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256]\nmaxversion: '1.2'",
        ),
        "a.test",
    );
    assert!(seen.is_err());
    assert_eq!(accepted.err(), Some(HandshakeFailure::NoSharedCipher));
    let (accepted, _) = handshake(config, trusting(&pki, ""), "a.test");
    assert!(accepted.is_ok());
}

#[test]
fn client_certificates_are_verified() {
    let pki = Pki::new("CA");
    let strangers = Pki::new("Other CA");
    let a = certificate(&pki.leaf("a", &["a.test"], "a", false));
    let trusted = pki.leaf("client", &[], "client-1", true);
    let untrusted = strangers.leaf("client", &[], "client-2", true);
    let config = server(
        &[format!(
            "{a}\nrequireClientCertificate: true\ntrustedCA: '{}'",
            pki.ca_path().display()
        )],
        UnknownServerName::Default,
    );

    let with = |leaf: &Leaf| trusting(&pki, &certificate(leaf));
    let (accepted, seen) = handshake(Arc::clone(&config), with(&trusted), "a.test");
    assert!(seen.is_ok());
    assert_eq!(
        accepted.expect("server").subject.as_deref(),
        Some("CN=client-1, O=Ringwall")
    );

    let (accepted, _) = handshake(Arc::clone(&config), trusting(&pki, ""), "a.test");
    assert_eq!(accepted.err(), Some(HandshakeFailure::CertificateRequired));

    let (accepted, _) = handshake(Arc::clone(&config), with(&untrusted), "a.test");
    assert_eq!(accepted.err(), Some(HandshakeFailure::UnknownCa));

    // Without a client certificate configured, none is asked for.
    let open = server(&[a], UnknownServerName::Default);
    let (accepted, _) = handshake(open, with(&trusted), "a.test");
    assert_eq!(accepted.expect("server").subject, None);
}

#[test]
fn a_stalled_handshake_times_out() {
    let pki = Pki::new("CA");
    let a = certificate(&pki.leaf("a", &["a.test"], "a", false));
    let config = server(&[a], UnknownServerName::Default);
    tokio_uring::start(async move {
        let listener = TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (done, wait) = mpsc::channel::<()>();
        // Connects and says nothing until the server has given up.
        let peer = std::thread::spawn(move || {
            let sock = std::net::TcpStream::connect(addr).expect("connect");
            let _ = wait.recv();
            drop(sock);
        });
        let (io, _) = listener.accept().await.expect("accept");
        let mut tls = TlsStream::new(io, ServerConnection::new(config).expect("conn"));
        let failed = tls.handshake(Duration::from_millis(200)).await;
        assert_eq!(
            failed.err().map(|e| e.reason),
            Some(HandshakeFailure::Timeout)
        );
        // The cancelled read poisoned the stream.
        let (res, _) = tls.read(BytesMut::with_capacity(16)).await;
        assert!(res.is_err());
        let _ = done.send(());
        peer.join().expect("client thread");
    });
}

#[test]
fn a_mebibyte_echoes_intact_and_close_notify_ends_it() {
    let pki = Pki::new("CA");
    let a = certificate(&pki.leaf("a", &["a.test"], "a", false));
    let config = server(&[a], UnknownServerName::Default);
    let client = trusting(&pki, "");
    let payload: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let expected = payload.clone();
    tokio_uring::start(async move {
        let listener = TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = std::thread::spawn(move || {
            let mut stream = connect(addr, &client, "a.test").expect("handshake");
            // Writes on a thread of its own so that neither side blocks on a full socket.
            let mut writer = stream.sock.try_clone().expect("clone");
            let mut sent = Vec::new();
            stream.conn.set_buffer_limit(None);
            stream.conn.writer().write_all(&payload).expect("write");
            stream.conn.send_close_notify();
            while stream.conn.wants_write() {
                stream.conn.write_tls(&mut sent).expect("tls");
            }
            let send = std::thread::spawn(move || writer.write_all(&sent));
            let mut echoed = Vec::new();
            let end = stream.read_to_end(&mut echoed);
            send.join().expect("writer").expect("write");
            end.map(|_| echoed)
        });
        let (io, _) = listener.accept().await.expect("accept");
        let mut tls = TlsStream::new(io, ServerConnection::new(config).expect("conn"));
        tls.handshake(WAIT).await.expect("handshake");
        let mut total = 0;
        loop {
            let (res, buf) = tls.read(BytesMut::with_capacity(8192)).await;
            let n = res.expect("read");
            if n == 0 {
                break;
            }
            total += n;
            let (res, _) = tls.write_all(buf).await;
            res.expect("echo");
        }
        assert_eq!(total, 1 << 20);
        tls.shutdown().await.expect("close_notify");
        let echoed = peer.join().expect("client thread");
        // The client's read ended cleanly: the server's close_notify arrived.
        assert!(echoed.expect("clean end") == expected);
    });
}

#[test]
fn curl_speaks_to_it() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl not found: skipped");
        return;
    }
    let pki = Pki::new("CA");
    let a = certificate(&pki.leaf("a", &["a.test"], "a", false));
    let client = pki.leaf("client", &[], "curl", true);
    let ca = pki.ca_path();
    let config = server(
        &[format!(
            "{a}\nrequireClientCertificate: true\ntrustedCA: '{}'",
            ca.display()
        )],
        UnknownServerName::Default,
    );
    tokio_uring::start(async move {
        let listener = TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let curl = std::thread::spawn(move || {
            std::process::Command::new("curl")
                .args(["-sS", "--http1.1", "--cacert"])
                .arg(&ca)
                .arg("--cert")
                .arg(&client.crt)
                .arg("--key")
                .arg(&client.key)
                .arg("--resolve")
                .arg(format!("a.test:{port}:127.0.0.1"))
                .arg(format!("https://a.test:{port}/hello"))
                .output()
                .expect("curl")
        });
        let (io, _) = listener.accept().await.expect("accept");
        let mut tls = TlsStream::new(io, ServerConnection::new(config).expect("conn"));
        tls.handshake(WAIT).await.expect("handshake");
        assert_eq!(tls.alpn(), Some(&b"http/1.1"[..]));
        assert_eq!(tls.peer_subject().as_deref(), Some("CN=curl, O=Ringwall"));
        let mut head = BytesMut::with_capacity(4096);
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let (res, buf) = tls.read(head).await;
            head = buf;
            assert!(res.expect("read") > 0, "request cut short");
        }
        assert!(head.starts_with(b"GET /hello HTTP/1.1\r\n"));
        let response =
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"[..];
        let (res, _) = tls.write_all(response).await;
        res.expect("write");
        // curl may close first, having read the whole response.
        let _ = tls.shutdown().await;
        let out = curl.join().expect("curl thread");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"hello");
    });
}

#[test]
fn upstream_connections_verify_the_origin_and_resume_sessions() {
    let pki = Pki::new("CA");
    let strangers = Pki::new("Other CA");
    let a = certificate(&pki.leaf("a", &["a.test"], "a", false));
    let config = server(&[a], UnknownServerName::Default);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // The origin: three connections, each answered with `hi` and close_notify.
    let origin = std::thread::spawn(move || {
        for _ in 0..3 {
            let (sock, _) = listener.accept().expect("accept");
            let conn = ServerConnection::new(Arc::clone(&config)).expect("conn");
            let mut stream = StreamOwned::new(conn, sock);
            if stream.write_all(b"hi").is_err() {
                continue;
            }
            stream.conn.send_close_notify();
            while stream.conn.wants_write() {
                let _ = stream.conn.write_tls(&mut stream.sock);
            }
            let _ = stream.read_to_end(&mut Vec::new());
        }
    });
    let verified = trusting(&pki, "");
    let untrusting = trusting(&strangers, "");
    tokio_uring::start(async move {
        let connect = |client: &ClientTls| {
            let name = rustls::pki_types::ServerName::try_from("a.test").expect("name");
            let conn = ClientConnection::new(Arc::clone(&client.config), name).expect("conn");
            async move {
                let io = tokio_uring::net::TcpStream::connect(addr)
                    .await
                    .expect("connect");
                TlsStream::new(io, conn)
            }
        };
        for kind in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed] {
            let mut tls = connect(&verified).await;
            tls.handshake(WAIT).await.expect("handshake");
            assert_eq!(tls.connection().handshake_kind(), Some(kind));
            let mut got = BytesMut::with_capacity(64);
            loop {
                let (res, buf) = tls.read(got).await;
                got = buf;
                if res.expect("read") == 0 {
                    break;
                }
            }
            assert_eq!(&got[..], b"hi");
            tls.shutdown().await.expect("close_notify");
        }
        let mut tls = connect(&untrusting).await;
        let failed = tls.handshake(WAIT).await;
        assert_eq!(
            failed.err().map(|e| e.reason),
            Some(HandshakeFailure::UnknownCa)
        );
    });
    origin.join().expect("origin thread");
}

#[test]
fn closed_and_garbled_handshakes_have_reasons() {
    let pki = Pki::new("CA");
    let a = certificate(&pki.leaf("a", &["a.test"], "a", false));
    let config = server(&[a], UnknownServerName::Default);
    tokio_uring::start(async move {
        let listener = TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = std::thread::spawn(move || {
            // A client that gives up at once, then one speaking plain HTTP.
            drop(std::net::TcpStream::connect(addr).expect("connect"));
            let mut plain = std::net::TcpStream::connect(addr).expect("connect");
            plain
                .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
                .expect("write");
            let _ = plain.read_to_end(&mut Vec::new());
        });
        for reason in [HandshakeFailure::Closed, HandshakeFailure::Other] {
            let (io, _) = listener.accept().await.expect("accept");
            let conn = ServerConnection::new(Arc::clone(&config)).expect("conn");
            let mut tls = TlsStream::new(io, conn);
            let failed = tls.handshake(WAIT).await;
            assert_eq!(failed.err().map(|e| e.reason), Some(reason));
        }
        peer.join().expect("client thread");
    });
}
