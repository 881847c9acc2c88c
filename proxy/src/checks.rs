//! Active health checks (a Service's `healthCheck`, Ringwall's): `GET path` on each endpoint
//! every `interval`, from one thread per checked Service for the whole process, not one per
//! worker. An endpoint is taken out after `unhealthyThreshold` failures in a row (no answer
//! within `timeout`, or a status other than 2xx) and back after `healthyThreshold`
//! successes; workers skip the ones out (unless all are), beside what passive health tells
//! them. Endpoints start in: traffic flows before the first probe. Probes of an `https://`
//! Service go over TLS with its `tls-outbound` settings, as its requests do.
//!
//! The threads start with the gateway that serves (never for `validate`) and end once that
//! gateway is gone after a reload: each holds only a weak reference to what it checks. A
//! reload keeps what the probes found for a Service whose check is unchanged: an endpoint
//! out stays out, rather than taking traffic again until it has failed enough new probes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ringwall_config::{HealthCheck, Snapshot};

use crate::per_route::PerRoute;
use crate::tls::{TlsSetup, UpstreamTls};

/// One checked Service.
pub struct Target {
    service: String,
    authority: String,
    check: HealthCheck,
    /// How to reach an `https://` Service, as its requests do.
    tls: Option<Arc<UpstreamTls>>,
    endpoints: Vec<(SocketAddr, AtomicBool)>,
}

impl Target {
    /// Whether probes took `addr` out.
    pub fn is_down(&self, addr: &SocketAddr) -> bool {
        self.endpoints
            .iter()
            .any(|(a, healthy)| a == addr && !healthy.load(Ordering::Relaxed))
    }
}

/// The checks of one configuration.
#[derive(Default)]
pub struct Checks {
    routes: PerRoute<Target>,
    started: AtomicBool,
}

impl Checks {
    /// The checks of `snapshot`'s Services; `tls` is the same configuration's TLS, which
    /// probes of `https://` Services use. An endpoint that a Service with the same check had
    /// in `previous` starts as it was there; any other starts in.
    pub fn build(snapshot: &Snapshot, tls: &TlsSetup, previous: Option<&Checks>) -> Checks {
        let routes = PerRoute::build(snapshot, |up| {
            let check = up.health_check.as_ref()?;
            let was = previous
                .into_iter()
                .flat_map(|p| p.routes.values())
                .find(|t| t.service == up.name && t.check == *check);
            let healthy = |addr: &SocketAddr| was.is_none_or(|t| !t.is_down(addr));
            Some(Arc::new(Target {
                service: up.name.clone(),
                authority: up.authority.clone(),
                check: check.clone(),
                tls: tls.routes.of_upstream(up).cloned(),
                endpoints: up
                    .addrs
                    .iter()
                    .map(|&a| (a, AtomicBool::new(healthy(&a))))
                    .collect(),
            }))
        });
        Checks {
            routes,
            started: AtomicBool::new(false),
        }
    }

    /// The checks of route `route` of ApiInstance `api`.
    pub fn of(&self, api: usize, route: usize) -> Option<&Arc<Target>> {
        self.routes.get(api, route)
    }

    /// Starts probing, once.
    pub fn start(&self) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        for target in self.routes.values() {
            let weak = Arc::downgrade(target);
            let name = format!("health-{}", target.service);
            let spawned = std::thread::Builder::new()
                .name(name)
                .spawn(move || probe_loop(&weak));
            if let Err(e) = spawned {
                tracing::error!(service = %target.service, error = %e, "cannot start health checks");
            }
        }
    }
}

/// Probes every endpoint of the target each interval, for as long as it is in force.
fn probe_loop(target: &Weak<Target>) {
    // Successes (positive) or failures (negative) in a row, per endpoint.
    let mut streaks: Vec<i64> = Vec::new();
    loop {
        let Some(t) = target.upgrade() else {
            return;
        };
        streaks.resize(t.endpoints.len(), 0);
        for ((addr, healthy), streak) in t.endpoints.iter().zip(streaks.iter_mut()) {
            let ok = probe(*addr, &t, t.check.timeout);
            *streak = match (ok, *streak) {
                (true, n) if n > 0 => n + 1,
                (true, _) => 1,
                (false, n) if n < 0 => n - 1,
                (false, _) => -1,
            };
            let was = healthy.load(Ordering::Relaxed);
            let now = if was {
                -*streak < i64::from(t.check.unhealthy_threshold)
            } else {
                *streak >= i64::from(t.check.healthy_threshold)
            };
            if now != was {
                healthy.store(now, Ordering::Relaxed);
                if now {
                    tracing::info!(service = %t.service, endpoint = %addr, "health check: endpoint back");
                } else {
                    tracing::warn!(service = %t.service, endpoint = %addr, "health check: endpoint out");
                }
            }
            metrics::gauge!(crate::metrics::ENDPOINT_HEALTHY, "service" => t.service.clone(),
                "endpoint" => addr.to_string())
            .set(if now { 1.0 } else { 0.0 });
        }
        let interval = t.check.interval;
        drop(t);
        std::thread::sleep(interval);
    }
}

/// One probe: whether `GET path` on `addr` answers 2xx within `timeout`, over TLS for an
/// `https://` Service.
fn probe(addr: SocketAddr, target: &Target, timeout: Duration) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringwall-health-check\r\n\
         Connection: close\r\n\r\n",
        target.check.path, target.authority
    );
    match &target.tls {
        None => exchange(stream, &request),
        Some(tls) => {
            let config = Arc::clone(&tls.client.config);
            let Ok(conn) = rustls::ClientConnection::new(config, tls.name.clone()) else {
                return false;
            };
            exchange(rustls::StreamOwned::new(conn, stream), &request)
        }
    }
}

/// Sends `request` and reads the status line.
fn exchange(mut stream: impl Read + Write, request: &str) -> bool {
    if stream.write_all(request.as_bytes()).is_err() || stream.flush().is_err() {
        return false;
    }
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => read += n,
        }
    }
    status_is_success(&head[..read])
}

/// Whether a response starting with `head` has a 2xx status.
fn status_is_success(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\r').next().unwrap_or(head);
    let mut words = line.split(|&b| b == b' ');
    let version = words.next().unwrap_or_default();
    let status = words.next().unwrap_or_default();
    version.starts_with(b"HTTP/1.")
        && status.len() == 3
        && status.iter().all(u8::is_ascii_digit)
        && status[0] == b'2'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_2xx_is_healthy() {
        assert!(status_is_success(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_is_success(b"HTTP/1.0 204 No Content"));
        assert!(!status_is_success(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!status_is_success(b"HTTP/1.1 301 Moved\r\n"));
        assert!(!status_is_success(b"SSH-2.0-OpenSSH\r\n"));
        assert!(!status_is_success(b"HTTP/1.1 2000\r\n"));
        assert!(!status_is_success(b"HTTP/1.1 2xx\r\n"));
    }
}
