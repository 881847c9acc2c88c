//! The bench's cast: the peers, where each runs in a mode, the scenarios they are driven
//! through, and the configuration files that make nginx, HAProxy and Ringwall comparable (one
//! worker each, keep-alive to the client and to the upstream, no access logs, every file nginx
//! would write kept in the work dir). The TLS scenarios start each proxy from a configuration
//! of its own, on a port of its own, terminating TLS with the bench's certificate and
//! forwarding in plain HTTP to the same upstream; the plain configurations stay as they were.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::tls::Pki;

pub const UPSTREAM_PORT: u16 = 9000;
/// The upstream's own TLS listener: `direct` in the TLS scenarios.
pub const UPSTREAM_TLS_PORT: u16 = 9443;
/// The upstream's whole answer: a proxy that returns it has forwarded the request.
pub const HELLO: &str = "hello";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Peer {
    Direct,
    Nginx,
    Haproxy,
    Ringwall,
}

impl Peer {
    pub fn parse(name: &str) -> Result<Peer> {
        Ok(match name {
            "direct" => Peer::Direct,
            "nginx" => Peer::Nginx,
            "haproxy" => Peer::Haproxy,
            "ringwall" => Peer::Ringwall,
            _ => bail!("unknown peer `{name}` (known: direct nginx haproxy ringwall)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
            Peer::Ringwall => "ringwall",
        }
    }

    pub fn port(self) -> u16 {
        match self {
            Peer::Direct => UPSTREAM_PORT,
            Peer::Nginx => 8001,
            Peer::Haproxy => 8002,
            Peer::Ringwall => 8005,
        }
    }

    /// Where the peer terminates TLS, in the TLS scenarios.
    pub fn tls_port(self) -> u16 {
        match self {
            Peer::Direct => UPSTREAM_TLS_PORT,
            Peer::Nginx => 8401,
            Peer::Haproxy => 8402,
            Peer::Ringwall => 8405,
        }
    }

    /// The port the peer is driven on in a scenario.
    pub fn port_in(self, scenario: Scenario) -> u16 {
        if scenario.tls() {
            self.tls_port()
        } else {
            self.port()
        }
    }
}

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scenario {
    /// wrk over plain HTTP/1.1 keep-alive connections.
    Plain,
    /// wrk over TLS keep-alive connections: a handshake per connection, then requests.
    TlsKeepalive,
    /// A full TLS handshake per request (`handshakes`'s client).
    TlsHandshake,
}

impl Scenario {
    pub fn parse(name: &str) -> Result<Scenario> {
        Ok(match name {
            "plain" => Scenario::Plain,
            "tls-keepalive" => Scenario::TlsKeepalive,
            "tls-handshake" => Scenario::TlsHandshake,
            _ => bail!("unknown scenario `{name}` (known: plain tls-keepalive tls-handshake)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Plain => "plain",
            Scenario::TlsKeepalive => "tls-keepalive",
            Scenario::TlsHandshake => "tls-handshake",
        }
    }

    /// Whether the peers terminate TLS (and run from their TLS configuration).
    pub fn tls(self) -> bool {
        self != Scenario::Plain
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Pinned,
    Unpinned,
}

impl Mode {
    pub fn parse(name: &str) -> Result<Mode> {
        Ok(match name {
            "pinned" => Mode::Pinned,
            "unpinned" => Mode::Unpinned,
            _ => bail!("unknown mode `{name}` (known: pinned unpinned)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Pinned => "pinned",
            Mode::Unpinned => "unpinned",
        }
    }
}

/// Which CPU each process runs on in a mode (`None`: wherever the scheduler likes).
#[derive(Debug, PartialEq)]
pub struct Placement {
    pub upstream: Option<u32>,
    pub proxy: Option<u32>,
    pub wrk: Option<u32>,
}

pub fn placement(mode: Mode, peer: Peer) -> Placement {
    match (mode, peer) {
        (Mode::Unpinned, _) => Placement {
            upstream: None,
            proxy: None,
            wrk: None,
        },
        // No proxy: the upstream takes the proxy's place apart from wrk.
        (Mode::Pinned, Peer::Direct) => Placement {
            upstream: Some(0),
            proxy: None,
            wrk: Some(1),
        },
        (Mode::Pinned, _) => Placement {
            upstream: Some(0),
            proxy: Some(1),
            wrk: Some(0),
        },
    }
}

/// The name of a peer's config and log files in the work dir (`-tls` for its TLS ones).
pub fn log_name(peer: Peer, tls: bool) -> &'static str {
    match (peer, tls) {
        (Peer::Nginx, false) => "nginx-proxy",
        (Peer::Nginx, true) => "nginx-proxy-tls",
        (Peer::Haproxy, true) => "haproxy-tls",
        (Peer::Ringwall, true) => "ringwall-tls",
        _ => peer.name(),
    }
}

/// The configuration files; with `tls`, the TLS ones too, and the upstream's TLS listener.
pub fn write_configs(work: &Path, tls: Option<&Pki>) -> Result<()> {
    let mut files: Vec<(PathBuf, String)> = vec![
        (work.join("upstream.conf"), nginx_upstream_conf(work, tls)),
        (work.join("nginx-proxy.conf"), nginx_proxy_conf(work, None)),
        (work.join("haproxy.cfg"), haproxy_cfg(None)),
        (
            work.join("ringwall").join("gateway.yaml"),
            ringwall_config(None),
        ),
    ];
    if let Some(pki) = tls {
        files.extend([
            (
                work.join("nginx-proxy-tls.conf"),
                nginx_proxy_conf(work, Some(pki)),
            ),
            (work.join("haproxy-tls.cfg"), haproxy_cfg(Some(pki))),
            (
                work.join("ringwall-tls").join("gateway.yaml"),
                ringwall_config(Some(pki)),
            ),
        ]);
    }
    for (path, text) in files {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The nginx settings both nginx instances share: one worker, no logs, long keep-alive, and
/// every path nginx would otherwise write under /var kept in the work dir.
fn nginx_main(work: &Path, name: &str) -> String {
    let work = work.display();
    format!(
        "worker_processes 1;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}.log warn;
events {{ worker_connections 8192; }}
"
    )
}

fn nginx_http_common(work: &Path, name: &str) -> String {
    let work = work.display();
    format!(
        "  access_log off;
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  client_body_temp_path {work}/{name}-body;
  proxy_temp_path {work}/{name}-proxy;
  fastcgi_temp_path {work}/{name}-fastcgi;
  uwsgi_temp_path {work}/{name}-uwsgi;
  scgi_temp_path {work}/{name}-scgi;
"
    )
}

/// The lines of an nginx `server` block that terminate TLS with the bench's certificate.
fn nginx_ssl(pki: &Pki) -> String {
    format!(
        "    ssl_certificate {};
    ssl_certificate_key {};
    ssl_protocols TLSv1.2 TLSv1.3;
",
        pki.cert_pem().display(),
        pki.key_pem().display()
    )
}

fn nginx_upstream_conf(work: &Path, tls: Option<&Pki>) -> String {
    // `direct` over TLS: the same answer, behind the bench's certificate.
    let tls_server = tls.map_or(String::new(), |pki| {
        format!(
            "  server {{
    listen 127.0.0.1:{UPSTREAM_TLS_PORT} ssl backlog=4096;
{}    location / {{ return 200 \"{HELLO}\"; }}
  }}
",
            nginx_ssl(pki)
        )
    });
    format!(
        "{}http {{
{}  server {{
    listen 127.0.0.1:{UPSTREAM_PORT} backlog=4096;
    location / {{ return 200 \"{HELLO}\"; }}
  }}
{tls_server}}}
",
        nginx_main(work, "upstream"),
        nginx_http_common(work, "upstream")
    )
}

fn nginx_proxy_conf(work: &Path, tls: Option<&Pki>) -> String {
    let name = log_name(Peer::Nginx, tls.is_some());
    let listen = match tls {
        None => format!("listen 127.0.0.1:{} backlog=4096;\n", Peer::Nginx.port()),
        Some(pki) => format!(
            "listen 127.0.0.1:{} ssl backlog=4096;\n{}",
            Peer::Nginx.tls_port(),
            nginx_ssl(pki)
        ),
    };
    format!(
        "{}http {{
{}  upstream origin {{
    server 127.0.0.1:{UPSTREAM_PORT};
    keepalive 512;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
  }}
  server {{
    {listen}    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }}
  }}
}}
",
        nginx_main(work, name),
        nginx_http_common(work, name),
    )
}

fn haproxy_cfg(tls: Option<&Pki>) -> String {
    let bind = match tls {
        None => format!("127.0.0.1:{}", Peer::Haproxy.port()),
        Some(pki) => format!(
            "127.0.0.1:{} ssl crt {} ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3",
            Peer::Haproxy.tls_port(),
            pki.haproxy_pem().display()
        ),
    };
    format!(
        "global
  nbthread 1
  maxconn 8000

defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s

frontend bench
  bind {bind}
  default_backend origin

backend origin
  server upstream 127.0.0.1:{UPSTREAM_PORT} maxconn 4096
"
    )
}

/// The plainest Flex Local Mode file: one ApiInstance with an inline service; for TLS, an
/// `https` address and the `tls` policy with the bench's certificate, as Flex writes it.
fn ringwall_config(tls: Option<&Pki>) -> String {
    let address = match tls {
        None => format!("http://127.0.0.1:{}", Peer::Ringwall.port()),
        Some(_) => format!("https://127.0.0.1:{}", Peer::Ringwall.tls_port()),
    };
    let binding = tls.map_or(String::new(), |pki| {
        format!(
            "---
apiVersion: gateway.mulesoft.com/v1alpha1
kind: PolicyBinding
metadata:
  name: bench-tls
spec:
  targetRef:
    name: bench
  policyRef:
    name: tls
  config:
    certificate:
      key: {}
      crt: {}
",
            pki.key_pem().display(),
            pki.cert_pem().display()
        )
    });
    format!(
        "apiVersion: gateway.mulesoft.com/v1alpha1
kind: ApiInstance
metadata:
  name: bench
spec:
  address: {address}
  services:
    upstream:
      address: http://127.0.0.1:{UPSTREAM_PORT}
{binding}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_keeps_the_proxy_alone_on_cpu_1() {
        let proxied = placement(Mode::Pinned, Peer::Haproxy);
        assert_eq!(
            proxied,
            Placement {
                upstream: Some(0),
                proxy: Some(1),
                wrk: Some(0)
            }
        );
        let direct = placement(Mode::Pinned, Peer::Direct);
        assert_eq!((direct.upstream, direct.wrk), (Some(0), Some(1)));
        assert_eq!(placement(Mode::Unpinned, Peer::Ringwall).proxy, None);
    }

    #[test]
    fn configs_listen_where_the_peers_are_driven() {
        let work = Path::new("/tmp/w");
        let upstream = nginx_upstream_conf(work, None);
        assert!(upstream.contains("listen 127.0.0.1:9000 "));
        assert!(upstream.contains("return 200 \"hello\";"));
        assert!(upstream.contains("pid /tmp/w/upstream.pid;"));
        let proxy = nginx_proxy_conf(work, None);
        assert!(proxy.contains("listen 127.0.0.1:8001 "));
        assert!(proxy.contains("keepalive 512;") && proxy.contains("proxy_pass http://origin;"));
        let haproxy = haproxy_cfg(None);
        assert!(haproxy.contains("bind 127.0.0.1:8002") && haproxy.contains("http-reuse always"));
        let ringwall = ringwall_config(None);
        assert!(ringwall.contains("kind: ApiInstance\n"));
        assert!(ringwall.contains("  address: http://127.0.0.1:8005\n"));
        assert!(ringwall.contains("      address: http://127.0.0.1:9000\n"));
        assert!(!ringwall.contains("---") && !upstream.contains("ssl"));
    }

    /// A certificate's paths, without making one: the configs only name the files.
    fn pki() -> Pki {
        Pki::at(Path::new("/tmp/w/tls"))
    }

    #[test]
    fn tls_configs_terminate_with_the_one_certificate_where_the_peers_are_driven() {
        let (work, pki) = (Path::new("/tmp/w"), pki());
        let upstream = nginx_upstream_conf(work, Some(&pki));
        assert!(upstream.contains("listen 127.0.0.1:9000 backlog=4096;"));
        assert!(upstream.contains("listen 127.0.0.1:9443 ssl backlog=4096;"));
        let proxy = nginx_proxy_conf(work, Some(&pki));
        assert!(proxy.contains("listen 127.0.0.1:8401 ssl backlog=4096;\n"));
        assert!(proxy.contains("    ssl_certificate /tmp/w/tls/cert.pem;\n"));
        assert!(proxy.contains("    ssl_certificate_key /tmp/w/tls/key.pem;\n"));
        assert!(proxy.contains("    ssl_protocols TLSv1.2 TLSv1.3;\n"));
        assert!(proxy.contains("pid /tmp/w/nginx-proxy-tls.pid;"));
        assert!(proxy.contains("keepalive_requests 1000000000;"));
        assert!(!proxy.contains("listen 127.0.0.1:8001"));
        let haproxy = haproxy_cfg(Some(&pki));
        assert!(haproxy.contains(
            "  bind 127.0.0.1:8402 ssl crt /tmp/w/tls/haproxy.pem ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3\n"
        ));
        assert!(haproxy.contains("http-reuse always"));
        let ringwall = ringwall_config(Some(&pki));
        assert!(ringwall.contains("  address: https://127.0.0.1:8405\n"));
        assert!(ringwall.contains("      address: http://127.0.0.1:9000\n"));
        assert!(ringwall.contains(
            "---
apiVersion: gateway.mulesoft.com/v1alpha1
kind: PolicyBinding
metadata:
  name: bench-tls
spec:
  targetRef:
    name: bench
  policyRef:
    name: tls
  config:
    certificate:
      key: /tmp/w/tls/key.pem
      crt: /tmp/w/tls/cert.pem
"
        ));
    }

    #[test]
    fn scenarios_parse_and_say_where_each_peer_is_driven() {
        assert_eq!(Scenario::parse("plain").unwrap(), Scenario::Plain);
        assert_eq!(
            Scenario::parse("tls-handshake").unwrap().name(),
            "tls-handshake"
        );
        assert!(Scenario::parse("tls").is_err());
        assert!(!Scenario::Plain.tls() && Scenario::TlsKeepalive.tls());
        assert_eq!(Peer::Ringwall.port_in(Scenario::Plain), 8005);
        assert_eq!(Peer::Ringwall.port_in(Scenario::TlsHandshake), 8405);
        assert_eq!(
            Peer::Direct.port_in(Scenario::TlsKeepalive),
            UPSTREAM_TLS_PORT
        );
        let all = [Peer::Direct, Peer::Nginx, Peer::Haproxy, Peer::Ringwall];
        let mut ports: Vec<u16> = all.iter().flat_map(|p| [p.port(), p.tls_port()]).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 8, "every peer has two ports of its own");
    }

    #[test]
    fn nginx_configs_balance_their_braces() {
        let pki = pki();
        for conf in [
            nginx_upstream_conf(Path::new("/w"), None),
            nginx_proxy_conf(Path::new("/w"), None),
            nginx_upstream_conf(Path::new("/w"), Some(&pki)),
            nginx_proxy_conf(Path::new("/w"), Some(&pki)),
        ] {
            assert_eq!(
                conf.matches('{').count(),
                conf.matches('}').count(),
                "{conf}"
            );
        }
    }
}
