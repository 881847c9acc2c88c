//! The bench's certificate and its TLS client side. At bench time one CA and one server
//! certificate for `localhost` and 127.0.0.1 are made (rcgen, ECDSA P-256) and written to the
//! work dir, where every peer's configuration points: the same key type, the same chain (the
//! leaf alone) and the same name for nginx, HAProxy and Ringwall. The probe checks that a peer
//! serves that certificate, answers through it, and which protocol, suite and group it settles
//! on with a client that offers what wrk's OpenSSL offers first (TLS 1.3, X25519).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// The key type of the certificate every peer serves, for the output.
pub const KEY_TYPE: &str = "ECDSA P-256";
/// The name the clients send (SNI) and verify; the certificate also carries 127.0.0.1, the
/// host wrk sends as SNI since its URL names the address (`localhost` might resolve to ::1).
pub const SERVER_NAME: &str = "localhost";

/// The bench's CA and server certificate, and where their PEM files are.
pub struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
}

impl Pki {
    /// A fresh CA and server certificate, written to `dir`.
    pub fn create(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Ringwall bench CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)?;

        let mut params =
            CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let leaf = params.signed_by(&key, &ca)?;

        let pki = Pki {
            dir: dir.to_owned(),
            ca: ca.der().clone(),
            leaf: leaf.der().clone(),
        };
        let files = [
            (pki.ca_pem(), ca.pem()),
            (pki.cert_pem(), leaf.pem()),
            (pki.key_pem(), key.serialize_pem()),
            // HAProxy's `crt` takes the chain and the key in one file.
            (
                pki.haproxy_pem(),
                format!("{}{}", leaf.pem(), key.serialize_pem()),
            ),
        ];
        for (path, text) in files {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(pki)
    }

    /// The paths of a certificate in `dir`, none made: for tests of the configurations.
    #[cfg(test)]
    pub fn at(dir: &Path) -> Pki {
        Pki {
            dir: dir.to_owned(),
            ca: CertificateDer::from(Vec::new()),
            leaf: CertificateDer::from(Vec::new()),
        }
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server certificate alone: the chain every peer sends.
    pub fn cert_pem(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// Its key, PKCS#8.
    pub fn key_pem(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    pub fn haproxy_pem(&self) -> PathBuf {
        self.dir.join("haproxy.pem")
    }

    /// The server certificate, DER: what the handshake load checks a peer sent.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.leaf
    }

    /// A client that trusts the bench's CA alone and resumes nothing.
    fn verifying_client(&self) -> Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// What a handshake settled on.
#[derive(Debug, Clone, PartialEq)]
pub struct Negotiated {
    pub version: String,
    pub suite: String,
    pub group: String,
}

impl std::fmt::Display for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.version, self.suite, self.group)
    }
}

impl Negotiated {
    pub fn of(conn: &rustls::CommonState) -> Negotiated {
        let name = |debug: Option<String>| debug.unwrap_or_else(|| "?".to_owned());
        Negotiated {
            version: name(conn.protocol_version().map(|v| format!("{v:?}"))),
            suite: name(
                conn.negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite())),
            ),
            group: name(
                conn.negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name())),
            ),
        }
    }
}

/// `GET /` over TLS, the certificate verified against the bench's CA for `localhost`: the
/// body of a 200 answer and what the handshake settled on.
pub fn get_root(pki: &Pki, port: u16) -> Result<(String, Negotiated)> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(1)))?;
    let name = ServerName::try_from(SERVER_NAME)?;
    let conn = ClientConnection::new(pki.verifying_client()?, name)?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(REQUEST)?;
    let mut answer = Vec::new();
    let mut chunk = [0; 4096];
    let (status, body) = loop {
        if let Some(end) = response_end(&answer)? {
            break end;
        }
        match tls.read(&mut chunk)? {
            0 => bail!("the connection closed before the end of the response"),
            n => answer.extend_from_slice(&chunk[..n]),
        }
    };
    if status != 200 {
        bail!("status {status}");
    }
    let body = String::from_utf8_lossy(&answer[body]).into_owned();
    Ok((body, Negotiated::of(&tls.conn)))
}

/// The request both TLS clients send: one request per connection.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// Once `buf` holds a whole response (a head, then `Content-Length` bytes): its status and the
/// range of its body. The peers all answer with a length, never chunked.
pub fn response_end(buf: &[u8]) -> Result<Option<(u16, std::ops::Range<usize>)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buf).context("bad response head")? {
        httparse::Status::Complete(head) => head,
        httparse::Status::Partial => return Ok(None),
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .context("response without Content-Length")?;
    let length: usize = std::str::from_utf8(length.value)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .context("bad Content-Length")?;
    let status = response.code.context("response without status")?;
    let end = head + length;
    Ok((buf.len() >= end).then_some((status, head..end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_ends_after_its_content_length() {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        let (status, body) = response_end(whole).unwrap().expect("complete");
        assert_eq!((status, &whole[body]), (200, &b"hello"[..]));
        assert_eq!(response_end(&whole[..whole.len() - 1]).unwrap(), None);
        assert_eq!(response_end(&whole[..20]).unwrap(), None);
        let empty = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            response_end(empty).unwrap(),
            Some((404, empty.len()..empty.len()))
        );
    }

    #[test]
    fn a_response_without_a_length_is_refused() {
        assert!(response_end(b"HTTP/1.1 200 OK\r\n\r\nhello").is_err());
        assert!(response_end(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(response_end(b"NOT HTTP\r\n\r\n").is_err());
    }

    #[test]
    fn the_certificate_names_localhost_and_its_address_and_chains_to_the_ca() {
        let dir = std::env::temp_dir().join(format!("ringwall-bench-pki-{}", std::process::id()));
        let pki = Pki::create(&dir).expect("certificates");
        let read = |path: PathBuf| std::fs::read_to_string(path).expect("PEM file");
        let haproxy = read(pki.haproxy_pem());
        assert!(haproxy.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(haproxy.contains("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(read(pki.cert_pem()).matches("BEGIN CERTIFICATE").count(), 1);
        // The certificate verifies for both names under the bench's CA, as the probe requires.
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca.clone()).expect("CA");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(ring::default_provider()),
        )
        .build()
        .expect("verifier");
        for name in [SERVER_NAME, "127.0.0.1"] {
            let name = ServerName::try_from(name).expect("name");
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                verifier.as_ref(),
                pki.leaf(),
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        std::fs::remove_dir_all(dir).expect("clean up");
    }
}
