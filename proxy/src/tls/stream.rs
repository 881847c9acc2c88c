//! A rustls connection driven over a tokio-uring `TcpStream`.
//!
//! The ring owns the buffers it reads into and writes from, so rustls' buffered API is fed by
//! hand: ciphertext read by the ring into `incoming` goes to `read_tls` and
//! `process_new_packets`; plaintext comes out of `reader()` straight into the caller's buffer;
//! plaintext written goes into `writer()`, and what `write_tls` produces is gathered in
//! `outgoing` and written by the ring. Both ciphertext buffers live as long as the connection.
//!
//! Copies, per direction: in, the ciphertext once from `incoming` into rustls (which decrypts
//! in place) and the plaintext once into the caller's buffer; out, the plaintext once into
//! rustls (encrypted as it is framed) and the ciphertext once into `outgoing`. rustls'
//! unbuffered API could save the ciphertext copies; these are the ones its buffered API needs.

use std::io::{self, BufRead, Write};
use std::mem;
use std::ops::DerefMut;
use std::time::Duration;

use bytes::BytesMut;
use rustls::{
    AlertDescription, CertificateError, ConnectionCommon, PeerIncompatible, ProtocolVersion,
    ServerConnection, SideData,
};
use tokio::time::timeout;
use tokio_uring::net::TcpStream;

/// The ciphertext read at a time: one full TLS record with its overhead.
const INCOMING: usize = 16 * 1024 + 256;
/// The plaintext handed to rustls at a time: one full record, so `outgoing` stays about
/// one record long instead of growing to rustls' whole send buffer.
const RECORD: usize = 16 * 1024;

/// A TLS connection over the ring: `C` is a `rustls::ServerConnection` or a
/// `rustls::ClientConnection`.
pub struct TlsStream<C> {
    io: TcpStream,
    conn: C,
    /// Ciphertext from the socket; `incoming[taken..]` is not yet handed to rustls.
    incoming: Vec<u8>,
    taken: usize,
    /// Ciphertext from rustls, written by the ring.
    outgoing: Vec<u8>,
    /// Set while a ring read owns `incoming`: when the caller drops that future (a timeout),
    /// the stream has lost bytes and refuses to read again. Writing is unaffected, so the
    /// caller can still say why it gives up (a 408).
    read_broken: bool,
    /// The same for a ring write of `outgoing`: the peer got part of a record, so nothing
    /// more can be sent.
    write_broken: bool,
}

/// Why a handshake failed, one label per reason for the handshake-failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The handshake did not finish in time (a slow or stalled peer).
    Timeout,
    /// The peer closed the connection (a scanner, a client giving up) or the socket failed.
    Closed,
    /// A certificate could not be used: malformed, expired, wrong name or purpose.
    BadCertificate,
    /// A certificate not issued by a trusted CA.
    UnknownCa,
    /// A client certificate was required and none was presented.
    CertificateRequired,
    /// No TLS version in common.
    ProtocolVersion,
    /// No cipher suite (or key exchange group, or signature scheme) in common.
    NoSharedCipher,
    /// No ALPN protocol in common.
    NoSharedAlpn,
    /// The SNI names no certificate of the port and it refuses unknown names.
    UnknownServerName,
    /// Anything else: a malformed message, a decryption failure, an unexpected alert.
    Other,
}

impl HandshakeFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::CertificateRequired => "certificate_required",
            HandshakeFailure::ProtocolVersion => "protocol_version",
            HandshakeFailure::NoSharedCipher => "no_shared_cipher",
            HandshakeFailure::NoSharedAlpn => "no_shared_alpn",
            HandshakeFailure::UnknownServerName => "unknown_server_name",
            HandshakeFailure::Other => "other",
        }
    }

    /// The reason behind a rustls error, whether this side detected it or the peer's alert
    /// reported it.
    fn of(error: &rustls::Error) -> Self {
        use rustls::Error as E;
        use HandshakeFailure as F;
        match error {
            E::InvalidCertificate(CertificateError::UnknownIssuer) => F::UnknownCa,
            E::InvalidCertificate(_) | E::InvalidCertRevocationList(_) => F::BadCertificate,
            E::NoCertificatesPresented => F::CertificateRequired,
            E::NoApplicationProtocol => F::NoSharedAlpn,
            E::PeerIncompatible(why) => match why {
                PeerIncompatible::NoCipherSuitesInCommon
                | PeerIncompatible::NoKxGroupsInCommon
                | PeerIncompatible::NoSignatureSchemesInCommon
                | PeerIncompatible::NoCertificateRequestSignatureSchemesInCommon => {
                    F::NoSharedCipher
                }
                PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::ServerDoesNotSupportTls12Or13
                | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled => F::ProtocolVersion,
                _ => F::Other,
            },
            E::AlertReceived(alert) => match alert {
                AlertDescription::UnknownCA => F::UnknownCa,
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateUnknown => F::BadCertificate,
                AlertDescription::CertificateRequired => F::CertificateRequired,
                AlertDescription::ProtocolVersion => F::ProtocolVersion,
                AlertDescription::NoApplicationProtocol => F::NoSharedAlpn,
                AlertDescription::UnrecognisedName => F::UnknownServerName,
                _ => F::Other,
            },
            // What rustls reports when the certificate resolver has none for the SNI.
            E::General(message) if message == "no server certificate chain resolved" => {
                F::UnknownServerName
            }
            _ => F::Other,
        }
    }
}

/// A failed handshake: its reason, and the error for the log.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed ({}): {source}", reason.as_str())]
pub struct HandshakeError {
    pub reason: HandshakeFailure,
    #[source]
    pub source: io::Error,
}

/// What went wrong while moving bytes: the socket, or TLS itself.
enum Fault {
    Io(io::Error),
    Tls(rustls::Error),
}

impl From<io::Error> for Fault {
    fn from(e: io::Error) -> Self {
        Fault::Io(e)
    }
}

impl From<Fault> for io::Error {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Io(e) => e,
            Fault::Tls(e) => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

impl From<Fault> for HandshakeError {
    fn from(fault: Fault) -> Self {
        let reason = match &fault {
            Fault::Io(_) => HandshakeFailure::Closed,
            Fault::Tls(e) => HandshakeFailure::of(e),
        };
        HandshakeError {
            reason,
            source: fault.into(),
        }
    }
}

fn broken() -> io::Error {
    io::Error::other("the TLS stream lost bytes to a cancelled read or write")
}

// === impl TlsStream ===

impl<C, D> TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData + 'static,
{
    /// Wraps `io` and a fresh rustls connection; call [`TlsStream::handshake`] next.
    pub fn new(io: TcpStream, conn: C) -> Self {
        TlsStream {
            io,
            conn,
            incoming: Vec::with_capacity(INCOMING),
            taken: 0,
            outgoing: Vec::new(),
            read_broken: false,
            write_broken: false,
        }
    }

    /// Runs the handshake to its end, within `wait`. On failure the alert rustls produced has
    /// been sent (best effort) and the stream should be dropped.
    pub async fn handshake(&mut self, wait: Duration) -> Result<(), HandshakeError> {
        match timeout(wait, self.drive_handshake()).await {
            Ok(done) => done,
            Err(_) => Err(HandshakeError {
                reason: HandshakeFailure::Timeout,
                source: io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"),
            }),
        }
    }

    async fn drive_handshake(&mut self) -> Result<(), HandshakeError> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                self.flush().await.map_err(Fault::Io)?;
                continue;
            }
            match self.receive().await {
                Ok(true) => {}
                Ok(false) => {
                    let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "closed in handshake");
                    return Err(Fault::Io(eof).into());
                }
                Err(fault) => {
                    if let Fault::Tls(_) = fault {
                        // Best effort: the alert rustls queued tells the peer why.
                        let _ = self.flush().await;
                    }
                    return Err(fault.into());
                }
            }
        }
        // The last flight (and TLS 1.3 session tickets).
        self.flush().await.map_err(Fault::Io)?;
        Ok(())
    }

    /// Appends decrypted bytes to `buf`, within its spare capacity (reserving some when it has
    /// none). `Ok(0)` once the peer has sent `close_notify`; an `UnexpectedEof` error when it
    /// closed the connection without it (a possible truncation: the caller decides).
    ///
    /// Everything rustls holds goes out at once, up to the spare capacity: a peer sending many
    /// tiny records gets one return per read of the socket, not one per record, so it cannot
    /// make the caller re-parse its buffer for every byte.
    pub async fn read(&mut self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        loop {
            if buf.capacity() == buf.len() {
                buf.reserve(INCOMING);
            }
            let mut copied = 0;
            loop {
                match self.conn.reader().fill_buf() {
                    Ok([]) => break,
                    Ok(chunk) => {
                        let n = chunk.len().min(buf.capacity() - buf.len());
                        buf.extend_from_slice(&chunk[..n]);
                        self.conn.reader().consume(n);
                        copied += n;
                        if buf.capacity() == buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if copied == 0 => return (Err(e), buf),
                    // The end is reported by the next read, after these bytes.
                    Err(_) => break,
                }
            }
            if copied > 0 {
                return (Ok(copied), buf);
            }
            // Nothing buffered: `Ok(0)` after `close_notify`, else more ciphertext is needed.
            if let Ok([]) = self.conn.reader().fill_buf() {
                return (Ok(0), buf);
            }
            match self.receive().await {
                // At EOF rustls now knows it, and the reader says how the peer closed.
                Ok(_) => {
                    // A post-handshake message may want an answer (a TLS 1.3 key update).
                    if self.conn.wants_write() {
                        if let Err(e) = self.flush().await {
                            return (Err(e), buf);
                        }
                    }
                }
                Err(fault) => {
                    // Best effort: the alert rustls queued for the peer.
                    let _ = self.flush().await;
                    return (Err(fault.into()), buf);
                }
            }
        }
    }

    /// Whether nothing received is waiting to be read: no plaintext in rustls and no
    /// ciphertext left over from the socket. A connection going back to a pool must be, or
    /// the next request would read this one's leftovers as its response.
    pub fn is_drained(&mut self) -> bool {
        self.taken == self.incoming.len()
            && matches!(self.conn.reader().fill_buf(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Encrypts and writes all of `buf`.
    pub async fn write_all<B: AsRef<[u8]>>(&mut self, buf: B) -> (io::Result<()>, B) {
        let mut rest = buf.as_ref();
        while !rest.is_empty() {
            // A record at a time, each written before the next is made.
            let n = match self.conn.writer().write(&rest[..rest.len().min(RECORD)]) {
                Ok(0) if !self.conn.wants_write() => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "TLS session closed");
                    return (Err(e), buf);
                }
                Ok(n) => n,
                Err(e) => return (Err(e), buf),
            };
            rest = &rest[n..];
            if let Err(e) = self.flush().await {
                return (Err(e), buf);
            }
        }
        (Ok(()), buf)
    }

    /// Sends `close_notify` and shuts the write side down; the read side stays open for what
    /// the peer still sends. A peer that has closed first (and reset the connection) can make
    /// the `close_notify` write fail: callers closing anyway may ignore the error.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush().await?;
        match self.io.shutdown(std::net::Shutdown::Write) {
            // The peer has closed already: nothing left to shut.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            done => done,
        }
    }

    /// The negotiated ALPN protocol.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The negotiated TLS version.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The subject DN of the peer's verified certificate, for policies and the access log;
    /// `None` when the peer presented none. See [`distinguished_name`]. It parses the
    /// certificate: call it once per connection.
    pub fn peer_subject(&self) -> Option<String> {
        let leaf = self.conn.peer_certificates()?.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        Some(distinguished_name(cert.subject()))
    }

    /// The socket, for what TLS does not cover (the peer address, socket options).
    pub fn get_ref(&self) -> &TcpStream {
        &self.io
    }

    /// The rustls connection.
    pub fn connection(&self) -> &C {
        &self.conn
    }

    /// Gives rustls more ciphertext, the rest of the last socket read or a new one, and
    /// processes it. `Ok(false)` when the socket is at EOF (rustls is told).
    async fn receive(&mut self) -> Result<bool, Fault> {
        if self.read_broken {
            return Err(Fault::Io(broken()));
        }
        if self.taken == self.incoming.len() {
            let mut incoming = mem::take(&mut self.incoming);
            incoming.clear();
            self.taken = 0;
            self.read_broken = true;
            let (res, incoming) = self.io.read(incoming).await;
            self.read_broken = false;
            self.incoming = incoming;
            if res? == 0 {
                self.conn.read_tls(&mut io::empty())?;
                self.process()?;
                return Ok(false);
            }
        }
        let n = self.conn.read_tls(&mut &self.incoming[self.taken..])?;
        self.taken += n;
        self.process()?;
        Ok(true)
    }

    fn process(&mut self) -> Result<(), Fault> {
        match self.conn.process_new_packets() {
            Ok(_) => Ok(()),
            Err(e) => Err(Fault::Tls(e)),
        }
    }

    /// Writes out everything rustls has to send.
    async fn flush(&mut self) -> io::Result<()> {
        if self.write_broken {
            return Err(broken());
        }
        while self.conn.wants_write() {
            let mut outgoing = mem::take(&mut self.outgoing);
            outgoing.clear();
            self.conn.write_tls(&mut outgoing)?;
            self.write_broken = true;
            let (res, outgoing) = self.io.write_all(outgoing).await;
            self.write_broken = false;
            self.outgoing = outgoing;
            res?;
        }
        Ok(())
    }
}

impl TlsStream<ServerConnection> {
    /// The name the client asked for (SNI).
    pub fn server_name(&self) -> Option<&str> {
        self.conn.server_name()
    }
}

/// A name as RFC 4514 writes it, most specific part first as Java's `X500Principal` does
/// (`CN=client, O=Example, C=FR`, with `, ` between parts as Mule shows `subjectDN`). Values
/// are escaped, so a common name such as `x, O=Admins` cannot pass for another part of the
/// name; a value that is not a string is `#` and its DER in hex.
pub fn distinguished_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    use std::fmt::Write;
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for (i, rdn) in name
        .iter_rdn()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push_str(", ");
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => {
                    let _ = write!(out, "{}", attr.attr_type());
                }
            }
            out.push('=');
            match attr.as_str() {
                Ok(value) => escape_dn_value(value, &mut out),
                Err(_) => {
                    out.push('#');
                    for byte in attr.attr_value().as_bytes() {
                        let _ = write!(out, "{byte:02X}");
                    }
                }
            }
        }
    }
    out
}

/// RFC 4514, section 2.4: the characters that would end or change the value are escaped.
fn escape_dn_value(value: &str, out: &mut String) {
    use std::fmt::Write;
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut utf8 = [0; 4];
                for byte in c.encode_utf8(&mut utf8).bytes() {
                    let _ = write!(out, "\\{byte:02X}");
                }
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::escape_dn_value;

    fn escaped(value: &str) -> String {
        let mut out = String::new();
        escape_dn_value(value, &mut out);
        out
    }

    #[test]
    fn dn_values_escape_what_would_change_the_name() {
        assert_eq!(escaped("plain name"), "plain name");
        assert_eq!(escaped("a,b+c=d;e"), r"a\,b\+c\=d\;e");
        assert_eq!(escaped(r#"<"q"\>"#), r#"\<\"q\"\\\>"#);
        assert_eq!(escaped("#lead"), r"\#lead");
        assert_eq!(escaped("mid#dle"), "mid#dle");
        assert_eq!(escaped(" both "), r"\ both\ ");
        assert_eq!(escaped("nul\0tab\t"), r"nul\00tab\09");
        assert_eq!(escaped("café"), "café");
    }
}
