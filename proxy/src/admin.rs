//! The admin listener: liveness and readiness for load balancers and orchestrators.
//! It runs on the control thread, apart from the workers, so it keeps answering while
//! the workers drain; `/ready` turns 503 as soon as draining starts.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Largest admin request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Where the gateway is in its life, as the admin endpoints report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Ready,
    Draining,
}

/// Serves admin requests until the task is dropped.
pub async fn serve(listener: TcpListener, phase: watch::Receiver<Phase>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let phase = *phase.borrow();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), answer(stream, phase))
                .await;
        });
    }
}

async fn answer(mut stream: TcpStream, phase: Phase) -> std::io::Result<()> {
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
                break respond(req.method.unwrap_or(""), req.path.unwrap_or(""), phase)
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => break (400, "malformed request"),
        }
    };
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
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
        _ => (404, "unknown admin endpoint; try /live or /ready"),
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
