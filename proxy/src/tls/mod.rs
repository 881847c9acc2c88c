//! TLS with rustls: the `tls` and `tls-outbound` policies read into rustls configurations
//! ([`settings`]), and a TLS stream over tokio-uring's owned-buffer IO ([`stream`]).
//!
//! tokio-uring has no `AsyncRead`/`AsyncWrite`, so rustls is driven by hand: ciphertext read
//! by the ring is handed to `read_tls`, and what `write_tls` produces is written by the ring,
//! each through one buffer reused for the life of the connection.

pub mod settings;
pub mod stream;

pub use settings::{
    client_tls, server_config, server_tls, ClientTls, ListenerError, ServerTls, UnknownServerName,
};
pub use stream::{HandshakeError, HandshakeFailure, TlsStream};

#[cfg(test)]
mod tests;
