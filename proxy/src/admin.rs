//! The admin listener: liveness and readiness for load balancers and orchestrators, and what
//! operators look at: `/metrics` (Prometheus text), `/config` (the configuration in force, as
//! JSON, secrets redacted) and `/connection-rules`. It runs on the control thread, apart from
//! the workers, so it keeps answering while the workers drain; `/ready` turns 503 as soon as
//! draining starts.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admission::AcceptCounters;
use crate::metrics::{Exporter, Plane, Scrape};
use crate::xdp::{CounterReader, Counters};

/// Largest admin request head read.
const MAX_HEAD: usize = 8 * 1024;

/// The Prometheus text format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    /// Counters as given, as if read from `Plane`: the kernel's cannot be faked without root.
    #[cfg(test)]
    Fixed(Plane, Counters),
}

impl ConnectionStats {
    /// The plane enforcing the rules and its counters now.
    pub fn read(&self) -> Result<(Plane, Counters), String> {
        match self {
            ConnectionStats::Kernel(reader) => reader
                .read()
                .map(|c| (Plane::Xdp, c))
                .map_err(|e| e.to_string()),
            ConnectionStats::Userspace(c) => Ok((Plane::Accept, c.read())),
            #[cfg(test)]
            ConnectionStats::Fixed(plane, c) => Ok((*plane, *c)),
        }
    }
}

/// `GET /connection-rules`: where the rules are enforced and what they did, as JSON.
fn connection_rules_json(reading: Option<Result<(Plane, Counters), String>>) -> String {
    match reading {
        None => "{\"enforced_in\":\"none\"}".to_string(),
        Some(Err(e)) => format!("{{\"error\":{:?}}}", e),
        Some(Ok((plane, counters))) => format!(
            "{{\"enforced_in\":\"{}\",\"unit\":\"{}\",\"passed\":{},\"dropped_deny\":{},\
             \"dropped_allow\":{},\"dropped_rate\":{}}}",
            plane.as_str(),
            plane.unit(),
            counters.passed,
            counters.drop_deny,
            counters.drop_allow,
            counters.drop_rate
        ),
    }
}

/// The configuration the workers serve, as `/config` shows it and `/metrics` counts it.
#[derive(Debug, Clone)]
pub struct Applied {
    pub generation: u64,
    pub snapshot: Arc<ringwall_config::Snapshot>,
}

/// What the admin endpoints read. Cheap to clone: receivers and shared handles.
#[derive(Clone)]
pub struct AdminState {
    pub phase: watch::Receiver<Phase>,
    /// The connection rules' counters, where rules are enforced now (a reload may bring
    /// the first rules, and with them a plane).
    pub stats: watch::Receiver<Option<ConnectionStats>>,
    /// The configuration in force: `/config`, and the generation in `/metrics`.
    pub config: Option<watch::Receiver<Applied>>,
    /// `/metrics`; `None` when no recorder is installed.
    pub metrics: Option<Exporter>,
}

impl AdminState {
    /// What `/metrics` reads afresh at each scrape.
    fn scrape(&self) -> Scrape {
        Scrape {
            generation: self.config.as_ref().map(|c| c.borrow().generation),
            // A failed read (a map lookup in the kernel) leaves the last values.
            connection_rules: self.stats.borrow().as_ref().and_then(|s| s.read().ok()),
        }
    }
}

/// Serves admin requests until the task is dropped.
pub async fn serve_with(listener: TcpListener, state: AdminState) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), answer(stream, state))
                .await;
        });
    }
}

async fn answer(mut stream: TcpStream, state: AdminState) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let (reply, head) = loop {
        if buf.len() >= MAX_HEAD {
            break (Reply::Text(431, "request head too large"), false);
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
                let phase = *state.phase.borrow();
                break (respond(method, path, phase), method == "HEAD");
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => break (Reply::Text(400, "malformed request"), false),
        }
    };
    let (status, content_type, body) = render(reply, &state);
    write_response(&mut stream, status, content_type, &body, head).await
}

async fn write_response(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    head: bool,
) -> std::io::Result<()> {
    let newline = if body.ends_with('\n') { "" } else { "\n" };
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::http::reason(status),
        body.len() + newline.len()
    );
    if !head {
        response.push_str(body);
        response.push_str(newline);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// What an admin request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Text(u16, &'static str),
    ConnectionRules,
    Metrics,
    Config,
}

/// What one admin request gets.
fn respond(method: &str, path: &str, phase: Phase) -> Reply {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if method != "GET" && method != "HEAD" {
        return Reply::Text(405, "admin endpoints answer GET only");
    }
    match (path, phase) {
        ("/live", _) => Reply::Text(200, "live"),
        ("/ready", Phase::Ready) => Reply::Text(200, "ready"),
        ("/ready", Phase::Starting) => Reply::Text(503, "starting"),
        ("/ready", Phase::Draining) => Reply::Text(503, "draining"),
        ("/metrics", _) => Reply::Metrics,
        ("/config", _) => Reply::Config,
        ("/connection-rules", _) => Reply::ConnectionRules,
        _ => Reply::Text(
            404,
            "unknown admin endpoint; try /live, /ready, /metrics, /config or /connection-rules",
        ),
    }
}

/// Status, content type and body of a reply.
fn render(reply: Reply, state: &AdminState) -> (u16, &'static str, Cow<'static, str>) {
    match reply {
        Reply::Text(status, body) => (status, "text/plain", body.into()),
        Reply::ConnectionRules => {
            let reading = state.stats.borrow().as_ref().map(ConnectionStats::read);
            (
                200,
                "application/json",
                connection_rules_json(reading).into(),
            )
        }
        Reply::Metrics => match &state.metrics {
            Some(m) => (200, PROMETHEUS_TEXT, m.render(&state.scrape()).into()),
            None => (404, "text/plain", "metrics are not enabled".into()),
        },
        Reply::Config => match &state.config {
            Some(config) => match config_json(&config.borrow()) {
                Ok(json) => (200, "application/json", json.into()),
                Err(e) => (500, "text/plain", format!("cannot serialise: {e}").into()),
            },
            None => (
                404,
                "text/plain",
                "the configuration is not available".into(),
            ),
        },
    }
}

/// `GET /config`: the generation in force and its snapshot, secrets redacted by the
/// configuration's own serialisation.
fn config_json(applied: &Applied) -> serde_json::Result<String> {
    #[derive(Serialize)]
    struct View<'a> {
        generation: u64,
        #[serde(flatten)]
        snapshot: &'a ringwall_config::Snapshot,
    }
    serde_json::to_string_pretty(&View {
        generation: applied.generation,
        snapshot: &applied.snapshot,
    })
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
    use crate::admission::{Admission, Verdict};

    const CONFIG: &str = "apiVersion: gateway.mulesoft.com/v1alpha1
kind: ApiInstance
metadata: {name: shop}
spec:
  address: http://127.0.0.1:0/api
  services:
    orders: {address: 'http://127.0.0.1:9001'}
---
apiVersion: gateway.mulesoft.com/v1alpha1
kind: Configuration
metadata: {name: storage}
spec:
  sharedStorage:
    redis: {address: 'redis:6379', password: hunter2}
";

    /// A state with every source set: fixed XDP counters, a configuration at generation 3,
    /// and metrics on a recorder of the test's own.
    fn state(stats: Option<ConnectionStats>) -> AdminState {
        let snapshot =
            ringwall_config::load_files(&[("a.yaml".into(), CONFIG.into())]).expect("valid config");
        let (_, config) = watch::channel(Applied {
            generation: 3,
            snapshot: Arc::new(snapshot),
        });
        let recorder = crate::metrics::recorder();
        let metrics = metrics::with_local_recorder(&recorder, || Exporter::new(recorder.handle()));
        AdminState {
            phase: watch::channel(Phase::Ready).1,
            stats: watch::channel(stats).1,
            config: Some(config),
            metrics: Some(metrics),
        }
    }

    fn xdp() -> ConnectionStats {
        ConnectionStats::Fixed(
            Plane::Xdp,
            Counters {
                passed: 40,
                drop_deny: 2,
                drop_allow: 0,
                drop_rate: 7,
            },
        )
    }

    #[test]
    fn readiness_follows_the_phase() {
        let text = |r| match r {
            Reply::Text(status, body) => (status, body),
            other => panic!("{other:?}"),
        };
        assert_eq!(text(respond("GET", "/ready", Phase::Starting)).0, 503);
        assert_eq!(text(respond("GET", "/ready", Phase::Ready)).0, 200);
        assert_eq!(
            text(respond("GET", "/ready?verbose", Phase::Draining)),
            (503, "draining")
        );
        assert_eq!(text(respond("GET", "/live", Phase::Draining)).0, 200);
        assert_eq!(text(respond("POST", "/live", Phase::Ready)).0, 405);
        assert_eq!(text(respond("GET", "/stats", Phase::Ready)).0, 404);
        assert_eq!(respond("GET", "/metrics", Phase::Draining), Reply::Metrics);
        assert_eq!(respond("HEAD", "/config?x", Phase::Ready), Reply::Config);
    }

    #[test]
    fn metrics_render_the_connection_rules_and_generation() {
        let (status, content_type, body) = render(Reply::Metrics, &state(Some(xdp())));
        assert_eq!((status, content_type), (200, PROMETHEUS_TEXT));
        for line in [
            "ringwall_connection_rules_total{plane=\"xdp\",outcome=\"passed\"} 40",
            "ringwall_connection_rules_total{plane=\"xdp\",outcome=\"dropped_deny\"} 2",
            "ringwall_connection_rules_total{plane=\"xdp\",outcome=\"dropped_rate\"} 7",
            "ringwall_config_generation 3",
        ] {
            assert!(body.lines().any(|l| l == line), "{line} not in:\n{body}");
        }
    }

    #[test]
    fn accept_time_counters_are_read_from_the_admission_check() {
        let rules =
            ringwall_config::ConnectionRules::default().with_deny(["10.0.0.1/32".parse().unwrap()]);
        let admission = Admission::new(vec![(8080, rules)]);
        assert_eq!(admission.check(0, [10, 0, 0, 1].into()), Verdict::Denied);
        assert_eq!(admission.check(0, [10, 0, 0, 2].into()), Verdict::Admit);
        let state = state(Some(ConnectionStats::Userspace(admission.counters())));
        let (_, _, body) = render(Reply::Metrics, &state);
        assert!(body.contains(
            "ringwall_connection_rules_total{plane=\"accept\",outcome=\"dropped_deny\"} 1"
        ));
        let (_, _, json) = render(Reply::ConnectionRules, &state);
        assert_eq!(
            json,
            "{\"enforced_in\":\"accept\",\"unit\":\"connections\",\"passed\":1,\
             \"dropped_deny\":1,\"dropped_allow\":0,\"dropped_rate\":0}"
        );
        let (_, _, none) = render(
            Reply::ConnectionRules,
            &AdminState {
                stats: watch::channel(None).1,
                ..state
            },
        );
        assert_eq!(none, "{\"enforced_in\":\"none\"}");
    }

    #[test]
    fn config_is_the_snapshot_in_force_without_secrets() {
        let (status, content_type, body) = render(Reply::Config, &state(None));
        assert_eq!((status, content_type), (200, "application/json"));
        assert!(!body.contains("hunter2"), "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(json["generation"], 3);
        assert_eq!(json["apis"][0]["name"], "shop");
        assert_eq!(json["apis"][0]["basePath"], "/api");
        assert_eq!(
            json["settings"]["sharedStorage"]["redis"]["password"],
            "***"
        );
    }

    #[test]
    fn without_sources_metrics_and_config_are_not_found() {
        let state = AdminState {
            phase: watch::channel(Phase::Ready).1,
            stats: watch::channel(None).1,
            config: None,
            metrics: None,
        };
        assert_eq!(render(Reply::Metrics, &state).0, 404);
        assert_eq!(render(Reply::Config, &state).0, 404);
    }

    #[tokio::test]
    async fn the_listener_answers_get_and_head() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve_with(listener, state(Some(xdp()))));
        let ask = |request: &'static str| async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut response = String::new();
            stream.read_to_string(&mut response).await.expect("read");
            response
        };
        let get = ask("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
        assert!(get.contains(&format!("Content-Type: {PROMETHEUS_TEXT}\r\n")));
        assert!(get.contains("ringwall_config_generation 3\n"));
        let head = ask("HEAD /config HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.ends_with("\r\n\r\n"),
            "a HEAD response has no body: {head}"
        );
        server.abort();
    }
}
