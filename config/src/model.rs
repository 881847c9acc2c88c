//! The validated routing model the proxy serves from: ApiInstances, their routes and upstreams.
//!
//! Everything here is immutable once loaded and shared across worker threads inside an
//! `Arc<Snapshot>`. The two path helpers, [`ApiInstance::strip_base`] and [`upstream_path`],
//! implement Flex's rewrite: the request path loses the base path, and the upstream sees the
//! route's prefix followed by what is left.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::connection::ConnectionRules;
use crate::node::Node;
use crate::rules::{any_matches, Rule};

/// One `kind: ApiInstance`: a listener (plus base path) and what it routes to.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiInstance {
    pub name: String,
    /// Port 0 asks the OS for a port when binding.
    pub listen: SocketAddr,
    /// "" or `/base`, without a trailing slash.
    pub base_path: String,
    /// The address is `https://`. Whether the listener terminates TLS is decided per
    /// listener: it does when any ApiInstance on it binds `tls` (Flex applies TLS per port).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub https: bool,
    /// The `tls` policy bound to this ApiInstance: its certificate, and the TLS settings of
    /// its listener. Never in `policies`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Policy>,
    /// Inline-service routes first, then route bindings by `order`. Tried in order; the first
    /// that matches wins; none is a 404.
    pub routes: Vec<Route>,
    /// Per-request policies to enforce, `cors-flex` first, then by `order`.
    pub policies: Vec<Policy>,
    /// What is enforced on the peer address before a byte is read (`ip-blocklist-flex`,
    /// `ip-allowlist-flex`, `connection-rate-limit`; none of them is in `policies`). Every
    /// ApiInstance on a listener has the same, see [`crate::Snapshot::listener_rules`].
    pub connection_rules: ConnectionRules,
}

impl ApiInstance {
    /// What is left of `path` when it is the base path or under it: with base `/api`, `/api`
    /// gives "", `/api/x` gives `/x` and `/api?q` gives `?q`, while `/apix` is not ours.
    pub fn strip_base<'a>(&self, path: &'a str) -> Option<&'a str> {
        let rest = path.strip_prefix(self.base_path.as_str())?;
        if self.base_path.is_empty() || rest.is_empty() || rest.starts_with(['/', '?']) {
            Some(rest)
        } else {
            None
        }
    }
}

/// A way from an ApiInstance to an upstream.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The inline service's name, or the route binding's name.
    pub name: String,
    pub rules: Vec<Rule>,
    #[serde(serialize_with = "crate::view::upstream_name")]
    pub upstream: Arc<Upstream>,
    /// The upstream's path joined with the route's `destinationPath` (default `/`): what the
    /// rest of the request path is appended to, see [`upstream_path`].
    pub path_prefix: String,
    /// Set for `route-weighted` bindings.
    pub weight: Option<u32>,
}

impl Route {
    /// No rules match everything; several rules are OR'd. Arguments as for [`Rule::matches`].
    pub fn matches<'h>(
        &self,
        method: &str,
        path: &str,
        host: Option<&str>,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> bool {
        any_matches(&self.rules, method, path, host, header)
    }
}

/// Where requests are forwarded: a top-level Service or an ApiInstance's inline service.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    /// The Service's name; inline services are named `<api>/<service>` to stay unique.
    pub name: String,
    /// Resolved at load, in resolver order.
    #[serde(rename = "addresses")]
    pub addrs: Vec<SocketAddr>,
    /// `host[:port]` as written in the address, for the `Host` header.
    pub authority: String,
    /// "" or `/path`, without a trailing slash.
    pub path: String,
    /// The address is `https://`: connections to it are TLS.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub https: bool,
    /// The host as written in the address (no IPv6 brackets): the TLS server name sent and
    /// verified, unless `tls-outbound` names another.
    #[serde(skip)]
    pub host: String,
    /// The `tls-outbound` policy bound to the Service; without it an `https://` upstream is
    /// verified against the system's CAs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Policy>,
    /// Other policies bound to the Service (`targetRef.kind: Service`), by `order`.
    pub policies: Vec<Policy>,
    /// How a worker chooses among `addrs` (`loadBalancing`, Ringwall's).
    #[serde(
        rename = "loadBalancing",
        skip_serializing_if = "Balancing::is_default"
    )]
    pub balancing: Balancing,
    /// `healthCheck` (Ringwall's): probes of every endpoint, once per process.
    #[serde(rename = "healthCheck", skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// The weight of each of `addrs` (`addresses[i].weight`), for [`Balancing::Weighted`];
    /// empty when the Service gave none (all weigh the same).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<u32>,
}

/// A Service's active health check: `GET path` on each endpoint every `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub path: String,
    #[serde(serialize_with = "crate::view::seconds")]
    pub interval: std::time::Duration,
    #[serde(serialize_with = "crate::view::seconds")]
    pub timeout: std::time::Duration,
    /// Successes in a row that bring an endpoint back.
    pub healthy_threshold: u32,
    /// Failures in a row (no answer, or not 2xx) that take it out.
    pub unhealthy_threshold: u32,
}

/// `loadBalancing.algorithm` of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Balancing {
    /// In turn (the default).
    #[default]
    RoundRobin,
    /// At random, in proportion to each address's `weight`.
    Weighted,
    /// The endpoint with fewer requests in flight from this worker, of two picked at random.
    LeastRequest,
    /// The same endpoint for the same key while it is healthy (rendezvous hashing).
    ConsistentHash(HashOn),
}

impl Balancing {
    fn is_default(&self) -> bool {
        *self == Balancing::RoundRobin
    }
}

/// What a consistent hash keys on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashOn {
    /// The client's IP address.
    RemoteAddress,
    /// A request header, by lowercase name; requests without it go in turn.
    Header(String),
}

/// A policy bound to an ApiInstance (or a Service), ready to be enforced.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// `policyRef.name`, e.g. `cors-flex`.
    pub name: String,
    /// The PolicyBinding's name, or `<api>/policies[i]` for an ApiInstance's inline policy.
    pub binding: String,
    /// Lower runs first; 50 when not given.
    pub order: i64,
    /// Which requests the policy applies to; no rules mean all of them.
    pub rules: Vec<Rule>,
    /// The `config` block with environment variables substituted (`{}` when absent).
    /// Shown with its secrets redacted, see [`crate::is_secret_key`].
    #[serde(serialize_with = "crate::view::redacted")]
    pub config: Node,
    pub file: String,
    /// The line of `policyRef.name`.
    pub line: usize,
    /// `PolicyBinding/name`, or `ApiInstance/name` for an inline policy: where errors about
    /// its `config` are reported.
    #[serde(skip)]
    pub resource: String,
    /// The dotted path of `config` in that resource (`spec.config`, `spec.policies[0].config`).
    #[serde(skip)]
    pub config_path: String,
}

impl Policy {
    /// Whether the policy applies to the request. Arguments as for [`Rule::matches`].
    pub fn applies<'h>(
        &self,
        method: &str,
        path: &str,
        host: Option<&str>,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> bool {
        any_matches(&self.rules, method, path, host, header)
    }
}

/// The upstream request target as three pieces to write in order: `prefix` without its
/// trailing slashes, a `/` if `rest` needs one, then `rest` (the request path and query after
/// the base path). Pieces rather than a string so the caller writes them into whatever buffer
/// it owns, allocation-free. An empty `rest` counts as `/`.
///
/// `/anything/echo/` + `/orders?x=1` gives `/anything/echo/orders?x=1`; `/` + `/orders` gives
/// `/orders`; `/v1` + `/` gives `/v1/`.
pub fn upstream_path<'a>(prefix: &'a str, rest: &'a str) -> [&'a str; 3] {
    let slash = if rest.starts_with('/') { "" } else { "/" };
    [prefix.trim_end_matches('/'), slash, rest]
}

/// A route's `path_prefix`: the upstream's path ("" or `/p`) followed by the `destinationPath`
/// (which starts with `/`).
pub(crate) fn path_prefix(upstream_path: &str, destination_path: &str) -> String {
    format!("{upstream_path}{destination_path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(prefix: &str, rest: &str) -> String {
        upstream_path(prefix, rest).concat()
    }

    #[test]
    fn upstream_paths_have_one_slash_between_prefix_and_rest() {
        assert_eq!(
            joined("/anything/echo/", "/orders?x=1"),
            "/anything/echo/orders?x=1"
        );
        assert_eq!(joined("/", "/orders"), "/orders");
        assert_eq!(joined("/v1", "/"), "/v1/");
        assert_eq!(joined("/v1", ""), "/v1/");
        assert_eq!(joined("/", ""), "/");
        assert_eq!(joined("/v1/", "?q=1"), "/v1/?q=1");
        assert_eq!(joined("/v1", "/a/b/"), "/v1/a/b/");
        assert_eq!(joined("", "/x"), "/x");
    }

    #[test]
    fn path_prefixes_join_service_and_destination_paths() {
        assert_eq!(path_prefix("/api", "/v2/"), "/api/v2/");
        assert_eq!(path_prefix("", "/"), "/");
        assert_eq!(path_prefix("/api", "/"), "/api/");
        assert_eq!(
            joined(&path_prefix("/api", "/v2/"), "/orders"),
            "/api/v2/orders"
        );
    }

    fn api(base_path: &str) -> ApiInstance {
        ApiInstance {
            name: "a".into(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            base_path: base_path.into(),
            https: false,
            tls: None,
            routes: Vec::new(),
            policies: Vec::new(),
            connection_rules: ConnectionRules::default(),
        }
    }

    #[test]
    fn strip_base_respects_segment_boundaries() {
        let a = api("/api");
        assert_eq!(a.strip_base("/api"), Some(""));
        assert_eq!(a.strip_base("/api/x"), Some("/x"));
        assert_eq!(a.strip_base("/api?q"), Some("?q"));
        assert_eq!(a.strip_base("/apix"), None);
        assert_eq!(a.strip_base("/other"), None);
        assert_eq!(api("").strip_base("/x?y"), Some("/x?y"));
    }
}
