//! The admin listener: liveness and readiness for load balancers and orchestrators.
//! It runs on the control thread, apart from the workers, so it keeps answering while
//! the workers drain; `/ready` turns 503 as soon as draining starts.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admission::AcceptCounters;
use crate::xdp::CounterReader;

/// Largest admin request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Where the gateway is in its life, as the admin endpoints report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Ready,
    Draining,
}

/// Where the connection counters come from.
#[derive(Clone)]
pub enum ConnectionStats {
    /// The XDP program's per-CPU counters: packets.
    Kernel(CounterReader),
    /// The accept-time check: connections.
    Userspace(Arc<AcceptCounters>),
}

impl ConnectionStats {
    /// `GET /connection-rules`: where the rules are enforced and what they did, as JSON.
    fn json(&self) -> String {
        let (plane, unit, counters) = match self {
            ConnectionStats::Kernel(reader) => match reader.read() {
                Ok(c) => ("xdp", "packets", c),
                Err(e) => return format!("{{\"error\":{:?}}}", e.to_string()),
            },
            ConnectionStats::Userspace(c) => ("accept", "connections", c.read()),
        };
        format!(
            "{{\"enforced_in\":\"{plane}\",\"unit\":\"{unit}\",\"passed\":{},\"dropped_deny\":{},\
             \"dropped_allow\":{},\"dropped_rate\":{}}}",
            counters.passed, counters.drop_deny, counters.drop_allow, counters.drop_rate
        )
    }
}

/// Serves admin requests until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    phase: watch::Receiver<Phase>,
    stats: Option<ConnectionStats>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let phase = *phase.borrow();
        let stats = stats.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                answer(stream, phase, stats),
            )
            .await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    phase: Phase,
    stats: Option<ConnectionStats>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let (status, body) = loop {
        if buf.len() >= MAX_HEAD {
            break (431, "request head too large");
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let (method, path) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
                if method == "GET" && path == "/connection-rules" {
                    let body = stats.as_ref().map_or_else(
                        || "{\"enforced_in\":\"none\"}".to_string(),
                        ConnectionStats::json,
                    );
                    return write_response(&mut stream, 200, "application/json", &body).await;
                }
                break respond(method, path, phase);
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => break (400, "malformed request"),
        }
    };
    write_response(&mut stream, status, "text/plain", body).await
}

async fn write_response(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
        crate::http::reason(status),
        body.len() + 1
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The status and body for one admin request.
fn respond(method: &str, path: &str, phase: Phase) -> (u16, &'static str) {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if method != "GET" && method != "HEAD" {
        return (405, "admin endpoints answer GET only");
    }
    match (path, phase) {
        ("/live", _) => (200, "live"),
        ("/ready", Phase::Ready) => (200, "ready"),
        ("/ready", Phase::Starting) => (503, "starting"),
        ("/ready", Phase::Draining) => (503, "draining"),
        _ => (
            404,
            "unknown admin endpoint; try /live, /ready or /connection-rules",
        ),
    }
}

/// Binds the admin listener before the workers start, so a busy port fails start-up.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_phase() {
        assert_eq!(respond("GET", "/ready", Phase::Starting).0, 503);
        assert_eq!(respond("GET", "/ready", Phase::Ready).0, 200);
        assert_eq!(
            respond("GET", "/ready?verbose", Phase::Draining),
            (503, "draining")
        );
        assert_eq!(respond("GET", "/live", Phase::Draining).0, 200);
        assert_eq!(respond("POST", "/live", Phase::Ready).0, 405);
        assert_eq!(respond("GET", "/metrics", Phase::Ready).0, 404);
    }
}
