//! The bench's cast: the peers, where each runs in a mode, and the configuration files that
//! make nginx, HAProxy and Ringwall comparable (one worker each, keep-alive to the client and
//! to the upstream, no access logs, every file nginx would write kept in the work dir).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const UPSTREAM_PORT: u16 = 9000;
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

/// The name of a peer's config and log files in the work dir.
pub fn log_name(peer: Peer) -> &'static str {
    match peer {
        Peer::Nginx => "nginx-proxy",
        _ => peer.name(),
    }
}

pub fn write_configs(work: &Path) -> Result<()> {
    let files: [(PathBuf, String); 4] = [
        (work.join("upstream.conf"), nginx_upstream_conf(work)),
        (work.join("nginx-proxy.conf"), nginx_proxy_conf(work)),
        (work.join("haproxy.cfg"), haproxy_cfg()),
        (
            work.join("ringwall").join("gateway.yaml"),
            ringwall_config(),
        ),
    ];
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

fn nginx_upstream_conf(work: &Path) -> String {
    format!(
        "{}http {{
{}  server {{
    listen 127.0.0.1:{UPSTREAM_PORT} backlog=4096;
    location / {{ return 200 \"{HELLO}\"; }}
  }}
}}
",
        nginx_main(work, "upstream"),
        nginx_http_common(work, "upstream")
    )
}

fn nginx_proxy_conf(work: &Path) -> String {
    format!(
        "{}http {{
{}  upstream origin {{
    server 127.0.0.1:{UPSTREAM_PORT};
    keepalive 512;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{} backlog=4096;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }}
  }}
}}
",
        nginx_main(work, "nginx-proxy"),
        nginx_http_common(work, "nginx-proxy"),
        Peer::Nginx.port()
    )
}

fn haproxy_cfg() -> String {
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
  bind 127.0.0.1:{}
  default_backend origin

backend origin
  server upstream 127.0.0.1:{UPSTREAM_PORT} maxconn 4096
",
        Peer::Haproxy.port()
    )
}

/// The plainest Flex Local Mode file: one ApiInstance with an inline service.
fn ringwall_config() -> String {
    format!(
        "apiVersion: gateway.mulesoft.com/v1alpha1
kind: ApiInstance
metadata:
  name: bench
spec:
  address: http://127.0.0.1:{}
  services:
    upstream:
      address: http://127.0.0.1:{UPSTREAM_PORT}
",
        Peer::Ringwall.port()
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
        let upstream = nginx_upstream_conf(work);
        assert!(upstream.contains("listen 127.0.0.1:9000 "));
        assert!(upstream.contains("return 200 \"hello\";"));
        assert!(upstream.contains("pid /tmp/w/upstream.pid;"));
        let proxy = nginx_proxy_conf(work);
        assert!(proxy.contains("listen 127.0.0.1:8001 "));
        assert!(proxy.contains("keepalive 512;") && proxy.contains("proxy_pass http://origin;"));
        let haproxy = haproxy_cfg();
        assert!(haproxy.contains("bind 127.0.0.1:8002") && haproxy.contains("http-reuse always"));
        let ringwall = ringwall_config();
        assert!(ringwall.contains("kind: ApiInstance\n"));
        assert!(ringwall.contains("  address: http://127.0.0.1:8005\n"));
        assert!(ringwall.contains("      address: http://127.0.0.1:9000\n"));
    }

    #[test]
    fn nginx_configs_balance_their_braces() {
        for conf in [
            nginx_upstream_conf(Path::new("/w")),
            nginx_proxy_conf(Path::new("/w")),
        ] {
            assert_eq!(
                conf.matches('{').count(),
                conf.matches('}').count(),
                "{conf}"
            );
        }
    }
}
