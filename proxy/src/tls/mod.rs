//! TLS with rustls: the `tls` and `tls-outbound` policies read into rustls configurations
//! ([`settings`]), and a TLS stream over tokio-uring's owned-buffer IO ([`stream`]).
//!
//! tokio-uring has no `AsyncRead`/`AsyncWrite`, so rustls is driven by hand: ciphertext read
//! by the ring is handed to `read_tls`, and what `write_tls` produces is written by the ring,
//! each through one buffer reused for the life of the connection.

pub mod settings;
pub mod setup;
pub mod stream;

pub use settings::{
    client_tls, server_config, server_tls, ClientTls, ListenerError, ServerTls, UnknownServerName,
};
pub use setup::{TlsSetup, UpstreamTls};
pub use stream::{HandshakeError, HandshakeFailure, TlsStream};

use rustls::{ProtocolVersion, ServerConnection};

/// What a client's handshake settled, for the policies and the access log.
#[derive(Debug, Default, Clone)]
pub struct Session {
    /// `1.2` or `1.3`.
    pub version: &'static str,
    /// The name the client asked for (SNI), lowercase.
    pub sni: Option<Box<str>>,
    /// The subject DN of the client's verified certificate (`CN=client, O=Example`).
    pub client_subject: Option<Box<str>>,
}

impl Session {
    pub fn of(stream: &TlsStream<ServerConnection>) -> Session {
        Session {
            version: version_label(stream.version()),
            sni: stream.server_name().map(Into::into),
            client_subject: stream.peer_subject().map(Into::into),
        }
    }
}

/// The metric and log label of a negotiated version.
pub fn version_label(version: Option<ProtocolVersion>) -> &'static str {
    match version {
        Some(ProtocolVersion::TLSv1_3) => "1.3",
        Some(ProtocolVersion::TLSv1_2) => "1.2",
        _ => "other",
    }
}

#[cfg(test)]
mod tests;
