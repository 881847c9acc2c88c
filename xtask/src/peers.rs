//! The bench's cast: the peers, where each runs in a mode, the scenarios (workloads) they are
//! driven through, and the configuration files that make nginx, HAProxy, Envoy and Ringwall
//! comparable (one worker each, keep-alive to the client and to the upstream, bodies streamed
//! both ways rather than buffered, 1 MiB request bodies allowed, no access logs, every file
//! nginx would write kept in the work dir). Each proxy has one configuration per policy set
//! (see `policies`). The TLS scenarios start each proxy from a configuration of its own, on a
//! port of its own, terminating TLS with the bench's certificate and forwarding in plain HTTP
//! to the same upstream, without policies; Envoy has no TLS configuration here.
//!
//! The upstream (nginx) answers every workload: `/` the 5-byte hello, `/64k` and `/1m` files
//! the bench writes into the work dir, `/upload` a short answer after reading the body, and
//! `/echo-inbound` the header a proxy injected (how the bench sees that it did).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::envoy;
use crate::policies::{self, Policies};
use crate::tls::Pki;

pub const UPSTREAM_PORT: u16 = 9000;
/// The upstream's own TLS listener: `direct` in the TLS scenarios.
pub const UPSTREAM_TLS_PORT: u16 = 9443;
/// The upstream's whole answer: a proxy that returns it has forwarded the request.
pub const HELLO: &str = "hello";
/// The upstream's answer to an upload.
pub const UPLOADED: &str = "uploaded";
/// The upstream's path that answers with the injected request header's value.
pub const ECHO_INBOUND: &str = "/echo-inbound";
/// The sizes of the large responses, of the upload and of the small `POST`.
pub const KIB_1: usize = 1024;
pub const KIB_64: usize = 64 * 1024;
pub const MIB_1: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Peer {
    Direct,
    Nginx,
    Haproxy,
    Envoy,
    Ringwall,
    /// `ringwall-floor` (benches/src/bin/floor.rs): a byte relay on the cheapest io_uring
    /// loop: for small exchanges, the least any proxy can cost per request here. Plain HTTP
    /// without policies only.
    Floor,
}

impl Peer {
    pub const ALL: [Peer; 6] = [
        Peer::Direct,
        Peer::Nginx,
        Peer::Haproxy,
        Peer::Envoy,
        Peer::Ringwall,
        Peer::Floor,
    ];

    pub fn parse(name: &str) -> Result<Peer> {
        Ok(match name {
            "direct" => Peer::Direct,
            "nginx" => Peer::Nginx,
            "haproxy" => Peer::Haproxy,
            "envoy" => Peer::Envoy,
            "ringwall" => Peer::Ringwall,
            "floor" => Peer::Floor,
            _ => {
                let known: Vec<&str> = Peer::ALL.iter().map(|peer| peer.name()).collect();
                bail!("unknown peer `{name}` (known: {})", known.join(" "))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
            Peer::Envoy => "envoy",
            Peer::Ringwall => "ringwall",
            Peer::Floor => "floor",
        }
    }

    pub fn port(self) -> u16 {
        match self {
            Peer::Direct => UPSTREAM_PORT,
            Peer::Nginx => 8001,
            Peer::Haproxy => 8002,
            Peer::Envoy => 8004,
            Peer::Ringwall => 8005,
            Peer::Floor => 8006,
        }
    }

    /// Where the peer terminates TLS, in the TLS scenarios.
    pub fn tls_port(self) -> u16 {
        match self {
            Peer::Direct => UPSTREAM_TLS_PORT,
            Peer::Nginx => 8401,
            Peer::Haproxy => 8402,
            Peer::Envoy => 8404,
            Peer::Ringwall => 8405,
            Peer::Floor => 8406,
        }
    }

    /// Whether the bench has a TLS configuration for the peer.
    pub fn has_tls(self) -> bool {
        !matches!(self, Peer::Envoy | Peer::Floor)
    }

    /// Whether the peer can run the policy sets: `direct` has no proxy, the floor reads
    /// nothing of what it relays.
    pub fn runs_policies(self) -> bool {
        !matches!(self, Peer::Direct | Peer::Floor)
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

/// What the clients do (a workload). The first four are wrk over plain HTTP/1.1 keep-alive
/// connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scenario {
    /// `GET /`, the 5-byte hello (`plain` is its former name, still accepted).
    Small,
    /// `GET /64k`: a 64 KiB response.
    Get64k,
    /// `GET /1m`: a 1 MiB response, streamed through.
    Get1m,
    /// `POST /upload` with a 1 MiB body, a short answer.
    Upload,
    /// `POST /upload` with a 1 KiB body, a short answer: an API call, whose body usually
    /// arrives in the same read as its head.
    Post,
    /// wrk over TLS keep-alive connections: a handshake per connection, then requests.
    TlsKeepalive,
    /// A full TLS handshake per request (`handshakes`'s client).
    TlsHandshake,
}

/// One request of a scenario, and the answer that says a peer forwarded it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    pub method: &'static str,
    pub path: &'static str,
    /// Bytes of request body (`x`s).
    pub body_bytes: usize,
    /// The length of a 200 answer's body.
    pub answer_bytes: usize,
}

impl Scenario {
    pub const NAMES: &str = "small (or plain) 64k 1m upload post tls-keepalive tls-handshake";

    pub fn parse(name: &str) -> Result<Scenario> {
        Ok(match name {
            "small" | "plain" => Scenario::Small,
            "64k" => Scenario::Get64k,
            "1m" => Scenario::Get1m,
            "upload" => Scenario::Upload,
            "post" => Scenario::Post,
            "tls-keepalive" => Scenario::TlsKeepalive,
            "tls-handshake" => Scenario::TlsHandshake,
            _ => bail!("unknown scenario `{name}` (known: {})", Scenario::NAMES),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Small => "small",
            Scenario::Get64k => "64k",
            Scenario::Get1m => "1m",
            Scenario::Upload => "upload",
            Scenario::Post => "post",
            Scenario::TlsKeepalive => "tls-keepalive",
            Scenario::TlsHandshake => "tls-handshake",
        }
    }

    /// Whether the peers terminate TLS (and run from their TLS configuration).
    pub fn tls(self) -> bool {
        matches!(self, Scenario::TlsKeepalive | Scenario::TlsHandshake)
    }

    pub fn request(self) -> Request {
        let get = |path, answer_bytes| Request {
            method: "GET",
            path,
            body_bytes: 0,
            answer_bytes,
        };
        match self {
            Scenario::Small | Scenario::TlsKeepalive | Scenario::TlsHandshake => {
                get("/", HELLO.len())
            }
            Scenario::Get64k => get("/64k", KIB_64),
            Scenario::Get1m => get("/1m", MIB_1),
            Scenario::Upload => Request {
                method: "POST",
                path: "/upload",
                body_bytes: MIB_1,
                answer_bytes: UPLOADED.len(),
            },
            Scenario::Post => Request {
                method: "POST",
                path: "/upload",
                body_bytes: KIB_1,
                answer_bytes: UPLOADED.len(),
            },
        }
    }
}

/// Where the processes run and how many workers a proxy has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// One worker alone on CPU 1; the upstream and wrk share CPU 0.
    Pinned,
    /// One worker; every process where the scheduler puts it.
    Unpinned,
    /// As unpinned, with two workers: beside `unpinned`, how a proxy scales with cores.
    TwoWorkers,
}

impl Mode {
    pub fn parse(name: &str) -> Result<Mode> {
        Ok(match name {
            "pinned" => Mode::Pinned,
            "unpinned" => Mode::Unpinned,
            "2-workers" => Mode::TwoWorkers,
            _ => bail!("unknown mode `{name}` (known: pinned unpinned 2-workers)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Pinned => "pinned",
            Mode::Unpinned => "unpinned",
            Mode::TwoWorkers => "2-workers",
        }
    }

    /// A proxy's workers (processes or threads).
    pub fn workers(self) -> u32 {
        match self {
            Mode::Pinned | Mode::Unpinned => 1,
            Mode::TwoWorkers => 2,
        }
    }

    /// wrk's threads: one on CPU 0 when pinned; otherwise two, the same whether the proxy
    /// has one worker or two, so the two unpinned modes differ only in the proxy and a
    /// second proxy worker is not starved by one wrk thread.
    pub fn wrk_threads(self) -> u32 {
        match self {
            Mode::Pinned => 1,
            Mode::Unpinned | Mode::TwoWorkers => 2,
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
        (Mode::Unpinned | Mode::TwoWorkers, _) => Placement {
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

/// The name of a peer's config and log files in the work dir: `-typical` for its
/// configuration with the typical policies, `-tls` for its TLS one.
pub fn log_name(peer: Peer, tls: bool, policies: Policies) -> String {
    let base = match peer {
        Peer::Nginx => "nginx-proxy",
        _ => peer.name(),
    };
    match (tls, policies) {
        (true, _) => format!("{base}-tls"),
        (false, Policies::None) => base.to_owned(),
        (false, Policies::Typical) => format!("{base}-typical"),
    }
}

/// What the configurations depend on besides the work dir.
pub struct Setup<'a> {
    /// With it, the TLS configurations too, and the upstream's TLS listener.
    pub tls: Option<&'a Pki>,
    /// Whether njs is installed: with it nginx's typical configuration validates JWTs, and
    /// the upstream reads a whole upload before it answers.
    pub njs: bool,
}

/// The configuration files, for both policy sets, and the files the upstream serves.
pub fn write_configs(work: &Path, setup: &Setup<'_>) -> Result<()> {
    let mut files: Vec<(PathBuf, String)> = vec![(
        work.join("upstream.conf"),
        nginx_upstream_conf(work, setup.tls, setup.njs),
    )];
    for policies in [Policies::None, Policies::Typical] {
        let name = |peer| log_name(peer, false, policies);
        files.extend([
            (
                work.join(format!("{}.conf", name(Peer::Nginx))),
                nginx_proxy_conf(work, None, policies, setup.njs),
            ),
            (
                work.join(format!("{}.cfg", name(Peer::Haproxy))),
                haproxy_cfg(None, policies),
            ),
            (
                work.join(format!("{}.yaml", name(Peer::Envoy))),
                envoy::config(policies),
            ),
            (
                work.join(name(Peer::Ringwall)).join("gateway.yaml"),
                ringwall_config(None, policies),
            ),
        ]);
    }
    if setup.njs {
        files.push((work.join("jwt.js"), policies::njs_script()));
        files.push((work.join("upstream.js"), UPSTREAM_NJS.to_owned()));
    }
    if let Some(pki) = setup.tls {
        let name = |peer| log_name(peer, true, Policies::None);
        files.extend([
            (
                work.join(format!("{}.conf", name(Peer::Nginx))),
                nginx_proxy_conf(work, Some(pki), Policies::None, false),
            ),
            (
                work.join(format!("{}.cfg", name(Peer::Haproxy))),
                haproxy_cfg(Some(pki), Policies::None),
            ),
            (
                work.join(name(Peer::Ringwall)).join("gateway.yaml"),
                ringwall_config(Some(pki), Policies::None),
            ),
        ]);
    }
    for (path, text) in files {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    for (name, size) in [("64k", KIB_64), ("1m", MIB_1)] {
        let path = work.join("files").join(name);
        fs::create_dir_all(work.join("files"))?;
        fs::write(&path, body_bytes(size))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `size` bytes of printable text, for the files the upstream serves.
fn body_bytes(size: usize) -> Vec<u8> {
    (b'a'..=b'z').cycle().take(size).collect()
}

/// The nginx settings both nginx instances share: no logs, long keep-alive, and every path
/// nginx would otherwise write under /var kept in the work dir. The workers are set on the
/// command line, by mode.
fn nginx_main(work: &Path, name: &str) -> String {
    let work = work.display();
    format!(
        "daemon off;
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

/// The upstream's answer to an upload, through njs: `js_content` reads the whole body before
/// it runs, as an API that takes uploads would. nginx's own `return` answers at once and
/// discards the body afterwards, so a proxy streaming the body upstream gets its answer
/// early, cannot reuse that upstream connection and (nginx) closes the client's.
const UPSTREAM_NJS: &str = "// Written by `cargo xtask bench`: the upstream's upload handler.
function upload(r) {
    r.return(200, 'uploaded');
}

export default { upload };
";

/// The upstream: every workload's answer (see the module doc); with `njs`, uploads read
/// whole before the answer (see [`UPSTREAM_NJS`]).
fn nginx_upstream_conf(work: &Path, tls: Option<&Pki>, njs: bool) -> String {
    let files = work.join("files");
    let files = files.display();
    let (inbound, _) = policies::INBOUND_HEADER;
    let inbound = inbound.replace('-', "_");
    let (module, import, upload) = if njs {
        (
            format!("load_module {};\n", policies::NJS_MODULE),
            format!(
                "  js_import upstream from {}/upstream.js;\n",
                work.display()
            ),
            "client_body_buffer_size 2m; js_content upstream.upload;".to_owned(),
        )
    } else {
        (
            String::new(),
            String::new(),
            format!("return 200 \"{UPLOADED}\";"),
        )
    };
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
        "{module}{}http {{
{}{import}  sendfile on;
  server {{
    listen 127.0.0.1:{UPSTREAM_PORT} backlog=4096;
    client_max_body_size 2m;
    location / {{ return 200 \"{HELLO}\"; }}
    location = /64k {{ alias {files}/64k; }}
    location = /1m {{ alias {files}/1m; }}
    location = /upload {{ {upload} }}
    location = {ECHO_INBOUND} {{ return 200 \"$http_{inbound}\"; }}
  }}
{tls_server}}}
",
        nginx_main(work, "upstream"),
        nginx_http_common(work, "upstream")
    )
}

/// nginx as the proxy. Bodies stream both ways (`proxy_buffering off`,
/// `proxy_request_buffering off`), as the other peers do by default: buffered, nginx would
/// write a 1 MiB response to a temporary file. Streaming, nginx reads the upstream into its
/// `proxy_buffer_size` buffer, one page by default (258 reads for 1 MiB, counted): 16 KiB,
/// HAProxy's buffer size, so that neither reads in smaller pieces than the other (and
/// `proxy_buffers` to match, which nginx checks even when it does not buffer).
fn nginx_proxy_conf(work: &Path, tls: Option<&Pki>, policies: Policies, jwt: bool) -> String {
    let name = log_name(Peer::Nginx, tls.is_some(), policies);
    let listen = match tls {
        None => format!("listen 127.0.0.1:{} backlog=4096;\n", Peer::Nginx.port()),
        Some(pki) => format!(
            "listen 127.0.0.1:{} ssl backlog=4096;\n{}",
            Peer::Nginx.tls_port(),
            nginx_ssl(pki)
        ),
    };
    let typical = policies == Policies::Typical;
    let module = if typical && jwt {
        format!("load_module {};\n", policies::NJS_MODULE)
    } else {
        String::new()
    };
    let (http, server, location) = if typical {
        (
            policies::nginx_http(work, jwt),
            policies::nginx_server(jwt),
            policies::nginx_location(),
        )
    } else {
        Default::default()
    };
    format!(
        "{module}{}http {{
{}{http}  upstream origin {{
    server 127.0.0.1:{UPSTREAM_PORT};
    keepalive 512;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
  }}
  server {{
    {listen}    client_max_body_size 2m;
    proxy_buffering off;
    proxy_request_buffering off;
    proxy_buffer_size 16k;
    proxy_buffers 8 16k;
{server}    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
{location}    }}
  }}
}}
",
        nginx_main(work, &name),
        nginx_http_common(work, &name),
    )
}

/// HAProxy as the proxy: it streams bodies unless told to buffer them
/// (`option http-buffer-request`), and sets no limit on their size.
fn haproxy_cfg(tls: Option<&Pki>, policies: Policies) -> String {
    let bind = match tls {
        None => format!("127.0.0.1:{}", Peer::Haproxy.port()),
        Some(pki) => format!(
            "127.0.0.1:{} ssl crt {} ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3",
            Peer::Haproxy.tls_port(),
            pki.haproxy_pem().display()
        ),
    };
    let rules = match policies {
        Policies::None => String::new(),
        Policies::Typical => policies::haproxy_frontend(),
    };
    format!(
        "global
  nbthread \"${{BENCH_WORKERS}}\"
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
{rules}  default_backend origin

backend origin
  server upstream 127.0.0.1:{UPSTREAM_PORT} maxconn 4096
"
    )
}

/// The plainest Flex Local Mode file: one ApiInstance with an inline service; for TLS, an
/// `https` address and the `tls` policy with the bench's certificate, as Flex writes it; with
/// the typical policies, their bindings. Ringwall streams bodies and limits their size only
/// when a Configuration sets `limits.maxRequestBodyBytes` (unset: no limit), so 1 MiB passes.
fn ringwall_config(tls: Option<&Pki>, policies: Policies) -> String {
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
    let policies = match policies {
        Policies::None => String::new(),
        Policies::Typical => policies::ringwall_bindings("bench"),
    };
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
{binding}{policies}"
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
        assert_eq!(placement(Mode::TwoWorkers, Peer::Ringwall).wrk, None);
        let two = Mode::parse("2-workers").unwrap();
        assert_eq!((two.workers(), two.wrk_threads()), (2, 2));
        assert_eq!(
            Mode::Unpinned.wrk_threads(),
            2,
            "as many wrk threads as with 2 workers"
        );
        assert_eq!((Mode::Pinned.workers(), Mode::Pinned.wrk_threads()), (1, 1));
    }

    #[test]
    fn configs_listen_where_the_peers_are_driven() {
        let work = Path::new("/tmp/w");
        let upstream = nginx_upstream_conf(work, None, false);
        assert!(upstream.contains("listen 127.0.0.1:9000 "));
        assert!(upstream.contains("return 200 \"hello\";"));
        assert!(upstream.contains("pid /tmp/w/upstream.pid;"));
        for location in [
            "location = /64k { alias /tmp/w/files/64k; }",
            "location = /1m { alias /tmp/w/files/1m; }",
            "location = /upload { return 200 \"uploaded\"; }",
            "location = /echo-inbound { return 200 \"$http_x_bench_inbound\"; }",
            "client_max_body_size 2m;",
        ] {
            assert!(upstream.contains(location), "{location}");
        }
        let proxy = nginx_proxy_conf(work, None, Policies::None, true);
        assert!(proxy.contains("listen 127.0.0.1:8001 "));
        assert!(proxy.contains("keepalive 512;") && proxy.contains("proxy_pass http://origin;"));
        for streaming in [
            "client_max_body_size 2m;",
            "proxy_buffering off;",
            "proxy_request_buffering off;",
            "proxy_buffer_size 16k;",
        ] {
            assert!(proxy.contains(streaming), "{streaming}");
        }
        assert!(!proxy.contains("limit_req") && !proxy.contains("load_module"));
        let haproxy = haproxy_cfg(None, Policies::None);
        assert!(haproxy.contains("bind 127.0.0.1:8002") && haproxy.contains("http-reuse always"));
        assert!(!haproxy.contains("http-request"));
        let ringwall = ringwall_config(None, Policies::None);
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
        let upstream = nginx_upstream_conf(work, Some(&pki), false);
        assert!(upstream.contains("listen 127.0.0.1:9000 backlog=4096;"));
        assert!(upstream.contains("listen 127.0.0.1:9443 ssl backlog=4096;"));
        let proxy = nginx_proxy_conf(work, Some(&pki), Policies::None, true);
        assert!(proxy.contains("listen 127.0.0.1:8401 ssl backlog=4096;\n"));
        assert!(proxy.contains("    ssl_certificate /tmp/w/tls/cert.pem;\n"));
        assert!(proxy.contains("    ssl_certificate_key /tmp/w/tls/key.pem;\n"));
        assert!(proxy.contains("    ssl_protocols TLSv1.2 TLSv1.3;\n"));
        assert!(proxy.contains("pid /tmp/w/nginx-proxy-tls.pid;"));
        assert!(proxy.contains("keepalive_requests 1000000000;"));
        assert!(!proxy.contains("listen 127.0.0.1:8001"));
        let haproxy = haproxy_cfg(Some(&pki), Policies::None);
        assert!(haproxy.contains(
            "  bind 127.0.0.1:8402 ssl crt /tmp/w/tls/haproxy.pem ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3\n"
        ));
        assert!(haproxy.contains("http-reuse always"));
        let ringwall = ringwall_config(Some(&pki), Policies::None);
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
        assert_eq!(Scenario::parse("plain").unwrap(), Scenario::Small);
        assert_eq!(Scenario::parse("small").unwrap().name(), "small");
        for name in ["64k", "1m", "upload", "post"] {
            assert_eq!(Scenario::parse(name).unwrap().name(), name);
        }
        assert_eq!(
            Scenario::parse("tls-handshake").unwrap().name(),
            "tls-handshake"
        );
        assert!(Scenario::parse("tls").is_err());
        assert!(!Scenario::Small.tls() && !Scenario::Upload.tls() && Scenario::TlsKeepalive.tls());
        assert_eq!(Peer::Ringwall.port_in(Scenario::Get1m), 8005);
        assert_eq!(Peer::Ringwall.port_in(Scenario::TlsHandshake), 8405);
        assert_eq!(
            Peer::Direct.port_in(Scenario::TlsKeepalive),
            UPSTREAM_TLS_PORT
        );
        let mut ports: Vec<u16> = Peer::ALL
            .iter()
            .flat_map(|p| [p.port(), p.tls_port()])
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 12, "every peer has two ports of its own");
        assert_eq!(Peer::parse("envoy").unwrap().port(), 8004);
    }

    #[test]
    fn nginx_configs_balance_their_braces() {
        let pki = pki();
        for conf in [
            nginx_upstream_conf(Path::new("/w"), None, true),
            nginx_proxy_conf(Path::new("/w"), None, Policies::None, true),
            nginx_proxy_conf(Path::new("/w"), None, Policies::Typical, true),
            nginx_proxy_conf(Path::new("/w"), None, Policies::Typical, false),
            nginx_upstream_conf(Path::new("/w"), Some(&pki), false),
            nginx_proxy_conf(Path::new("/w"), Some(&pki), Policies::None, false),
        ] {
            assert_eq!(
                conf.matches('{').count(),
                conf.matches('}').count(),
                "{conf}"
            );
        }
    }

    #[test]
    fn each_workload_asks_what_its_name_says() {
        let small = Scenario::Small.request();
        assert_eq!(
            (small.method, small.path, small.answer_bytes),
            ("GET", "/", 5)
        );
        assert_eq!(Scenario::Get64k.request().answer_bytes, 65536);
        let big = Scenario::Get1m.request();
        assert_eq!(
            (big.path, big.answer_bytes, big.body_bytes),
            ("/1m", 1 << 20, 0)
        );
        let upload = Scenario::Upload.request();
        assert_eq!(
            (
                upload.method,
                upload.path,
                upload.body_bytes,
                upload.answer_bytes
            ),
            ("POST", "/upload", 1 << 20, UPLOADED.len())
        );
    }

    #[test]
    fn typical_configs_carry_the_policies_where_each_peer_reads_them() {
        let work = Path::new("/w");
        let upstream = nginx_upstream_conf(work, None, true);
        assert!(upstream.starts_with("load_module /usr/lib/nginx/modules/ngx_http_js_module.so;\n"));
        assert!(upstream.contains("  js_import upstream from /w/upstream.js;\n"));
        assert!(upstream.contains(
            "location = /upload { client_body_buffer_size 2m; js_content upstream.upload; }"
        ));
        assert!(UPSTREAM_NJS.contains("r.return(200, 'uploaded');"));
        let nginx = nginx_proxy_conf(work, None, Policies::Typical, true);
        assert!(nginx
            .starts_with("load_module /usr/lib/nginx/modules/ngx_http_js_module.so;\ndaemon off;"));
        assert!(nginx.contains("js_import bench_jwt from /w/jwt.js;"));
        assert!(nginx.contains("pid /w/nginx-proxy-typical.pid;"));
        // The injected request header sits in the location, beside its other proxy_set_header.
        let location = &nginx[nginx.find("location / {").unwrap()..];
        assert!(location.contains("proxy_set_header x-bench-inbound ringwall-bench;"));
        let without_njs = nginx_proxy_conf(work, None, Policies::Typical, false);
        assert!(!without_njs.contains("load_module") && !without_njs.contains("jwt"));
        assert!(without_njs.contains("limit_req zone=bench"));

        let haproxy = haproxy_cfg(None, Policies::Typical);
        let frontend = &haproxy[haproxy.find("frontend bench").unwrap()..];
        assert!(frontend.find("http-request track-sc0 src") < frontend.find("default_backend"));

        let ringwall = ringwall_config(None, Policies::Typical);
        let snapshot = ringwall_config::load_files(&[("gateway.yaml".to_owned(), ringwall)])
            .unwrap_or_else(|e| panic!("{e:?}"));
        let instance = &snapshot.apis[0];
        let names: Vec<&str> = instance.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "rate-limiting-flex",
                "jwt-validation-flex",
                "header-injection-flex"
            ]
        );
    }

    #[test]
    fn configs_and_served_files_are_written_for_both_policy_sets() {
        let work = crate::proc::TempDir::new("xtask-peers-test").unwrap();
        let setup = Setup {
            tls: None,
            njs: true,
        };
        write_configs(work.path(), &setup).unwrap();
        for file in [
            "upstream.conf",
            "nginx-proxy.conf",
            "nginx-proxy-typical.conf",
            "haproxy.cfg",
            "haproxy-typical.cfg",
            "envoy.yaml",
            "envoy-typical.yaml",
            "ringwall/gateway.yaml",
            "ringwall-typical/gateway.yaml",
            "jwt.js",
            "upstream.js",
        ] {
            assert!(work.path().join(file).is_file(), "{file}");
        }
        let size = |name: &str| {
            fs::metadata(work.path().join("files").join(name))
                .unwrap()
                .len()
        };
        assert_eq!((size("64k"), size("1m")), (65536, 1 << 20));
        assert!(!work.path().join("nginx-proxy-tls.conf").exists());
        assert_eq!(
            log_name(Peer::Envoy, false, Policies::Typical),
            "envoy-typical"
        );
        assert_eq!(
            log_name(Peer::Nginx, true, Policies::None),
            "nginx-proxy-tls"
        );
    }
}
