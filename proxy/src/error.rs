//! What can go wrong with one exchange, which side caused it, and the one status each
//! failure maps to.

use std::io;

use crate::http::chunked::ChunkError;
use crate::http::response::BadResponse;
use crate::http::HttpError;

/// Which party an error is attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Request(#[from] HttpError),
    #[error("request body: {0}")]
    RequestBody(ChunkError),
    #[error("request body larger than the configured limit")]
    BodyTooLarge,
    #[error("no route for this request")]
    NoRoute,
    #[error("client connection: {0}")]
    Client(io::Error),
    #[error("client went silent")]
    ClientTimeout,
    #[error("cannot connect to the upstream: {0}")]
    Connect(io::Error),
    #[error("upstream connect timed out")]
    ConnectTimeout,
    #[error("upstream {0}")]
    UpstreamTls(crate::tls::HandshakeError),
    #[error("upstream connection failed: {0}")]
    UpstreamIo(io::Error),
    #[error("upstream closed the connection before responding")]
    UpstreamClosed,
    #[error("upstream response timed out")]
    UpstreamTimeout,
    #[error("upstream sent a bad response: {0}")]
    BadResponse(#[from] BadResponse),
    #[error("upstream response body: {0}")]
    ResponseBody(ChunkError),
    /// The Service's circuit breaker is open (`circuit-breaker-flex`).
    #[error("{}", .0.reason())]
    CircuitOpen(crate::breaker::Open),
    /// A policy refused the request: its status and reason.
    #[error("{1}")]
    Refused(u16, &'static str),
}

impl ProxyError {
    pub fn side(&self) -> Side {
        match self {
            ProxyError::Request(_)
            | ProxyError::RequestBody(_)
            | ProxyError::BodyTooLarge
            | ProxyError::Client(_)
            | ProxyError::ClientTimeout
            | ProxyError::Refused(..) => Side::Downstream,
            ProxyError::NoRoute => Side::Internal,
            ProxyError::Connect(_)
            | ProxyError::ConnectTimeout
            | ProxyError::UpstreamTls(_)
            | ProxyError::CircuitOpen(_)
            | ProxyError::UpstreamIo(_)
            | ProxyError::UpstreamClosed
            | ProxyError::UpstreamTimeout
            | ProxyError::BadResponse(_)
            | ProxyError::ResponseBody(_) => Side::Upstream,
        }
    }

    /// The status the client gets, if a response can still be sent.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::Request(e) => e.status(),
            ProxyError::RequestBody(_) => 400,
            ProxyError::BodyTooLarge => 413,
            ProxyError::NoRoute => 404,
            ProxyError::Client(_) => 400,
            ProxyError::ClientTimeout => 408,
            ProxyError::Connect(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamIo(_)
            | ProxyError::UpstreamClosed
            | ProxyError::BadResponse(_)
            | ProxyError::ResponseBody(_) => 502,
            ProxyError::ConnectTimeout | ProxyError::UpstreamTimeout => 504,
            ProxyError::CircuitOpen(_) => 503,
            ProxyError::Refused(status, _) => *status,
        }
    }

    /// Whether the request may be sent again on a fresh upstream connection: only when
    /// a reused connection failed before the upstream saw anything it could act on.
    pub fn is_stale_connection(&self) -> bool {
        matches!(self, ProxyError::UpstreamIo(_) | ProxyError::UpstreamClosed)
    }
}
