//! Known policy names, and reading one policy (bound or inline) into a [`PolicySpec`].
//!
//! The loader interprets the policies that shape the model itself: `route` and
//! `route-weighted` become routes, and IP lists and `connection-rate-limit` on the peer address
//! become [`crate::ConnectionRules`]. Every other known policy is handed to the proxy as a
//! [`crate::Policy`] with its `config` block; the proxy's policy registry checks that `config`
//! and refuses, at load, a policy it does not enforce, so a security policy is never silently
//! skipped. A name not in [`POLICIES`] is an unknown policy, reported here with a hint.

use crate::address::destination_path;
use crate::connection::{
    is_connection_policy, parse_connection_policy, per_request_ip_policy, ConnectionPolicy,
};
use crate::error::{child, did_you_mean, Scope};
use crate::node::{Fields, Node, Value};
use crate::rules::{parse_rules, Rule};

/// Every policy name Ringwall knows, by `policyRef.name`: Flex's, then Ringwall's own.
pub const POLICIES: &[&str] = &[
    "route",
    "route-weighted",
    "rate-limiting-flex",
    "spike-control-flex",
    "ip-allowlist-flex",
    "ip-blocklist-flex",
    "http-basic-authentication-flex",
    "jwt-validation-flex",
    "cors-flex",
    "header-injection-flex",
    "header-removal-flex",
    "message-logging-flex",
    "response-timeout-flex",
    "idle-timeout-flex",
    "stream-idle-timeout-flex",
    "circuit-breaker-flex",
    "http-caching-flex",
    "tls",
    "tls-outbound",
    "json-threat-protection-flex",
    "spec-validation-flex",
    "oauth2-token-introspection-flex",
    "ldap-authentication-flex",
    "native-ext-authz-flex",
    // Ringwall's own.
    "connection-rate-limit",
    "client-id-enforcement",
];

/// Whether `name` is a policy Ringwall knows (enforced or not).
pub fn is_known_policy(name: &str) -> bool {
    POLICIES.contains(&name)
}

/// Inbound TLS: the certificate and TLS settings of an ApiInstance's listener.
pub(crate) const TLS: &str = "tls";
/// Outbound TLS: how a Service's `https://` connections are made.
pub(crate) const TLS_OUTBOUND: &str = "tls-outbound";

/// Runs first whatever its `order`: a preflight must be answered before anything rejects it.
pub(crate) const CORS: &str = "cors-flex";

/// The default `order` of a policy.
const DEFAULT_ORDER: i64 = 50;

/// A policy as written, checked but not yet attached to its target.
#[derive(Debug)]
pub(crate) struct PolicySpec {
    pub name: String,
    pub order: i64,
    pub rules: Vec<Rule>,
    pub config: Node,
    /// The line and field path of `policyRef.name`.
    pub line: usize,
    pub name_field: String,
    /// The dotted path of `config`.
    pub config_path: String,
    pub kind: PolicyKind,
}

/// Where a policy takes effect, with its checked `config` when the loader interprets it.
#[derive(Debug)]
pub(crate) enum PolicyKind {
    /// Handed to the proxy as it is, in [`crate::Policy`].
    PerRequest,
    /// `route` and `route-weighted`: becomes a [`crate::Route`].
    Route(RouteConfig),
    /// Decided on the peer address: becomes part of [`crate::ConnectionRules`].
    Connection(ConnectionPolicy),
    /// `tls` or `tls-outbound`: a connection's TLS settings, kept apart from the per-request
    /// policies ([`crate::ApiInstance::tls`], [`crate::Upstream::tls`]). The proxy reads the
    /// `config`.
    Tls,
}

/// The `config` of `route` / `route-weighted`.
#[derive(Debug)]
pub(crate) struct RouteConfig {
    pub service: String,
    /// Where `destinationRef.name` is, to report a Service that does not exist.
    pub service_line: usize,
    pub service_field: String,
    pub destination_path: String,
    pub weight: Option<u32>,
}

/// Reads `policyRef`, `order`, `rules` and `config` from a binding's spec or an inline policy.
/// Returns `None` when the policy cannot be used (the reason has been reported).
pub(crate) fn parse_policy(
    fields: &Fields<'_>,
    var: &dyn Fn(&str) -> Option<String>,
    scope: &mut Scope<'_>,
) -> Option<PolicySpec> {
    let (name, name_line) = policy_ref(fields, scope)?;
    let order = fields.get("order").map_or(Some(DEFAULT_ORDER), |n| {
        scope.int(n, &fields.path_of("order"))
    });
    let rules = fields
        .get("rules")
        .map(|n| parse_rules(n, &fields.path_of("rules"), scope));
    let name_path = child(&fields.path_of("policyRef"), "name");
    if !is_known_policy(&name) {
        scope.error(name_line, &name_path, unknown_policy(&name));
        return None;
    }
    // `rules: []` means every request.
    let rules_node = fields
        .get("rules")
        .filter(|node| node.as_seq().is_some_and(|r| !r.is_empty()));
    let has_rules = rules_node.is_some();

    let config_path = fields.path_of("config");
    let mut config = fields
        .get("config")
        .cloned()
        .unwrap_or_else(|| Node::new(fields.line, Value::Map(Vec::new())));
    if !matches!(config.value, Value::Map(_)) {
        scope.expected(&config, &config_path, "a mapping");
        return None;
    }
    if !crate::env::substitute(&mut config, &config_path, var, scope) {
        return None;
    }
    if let Some(node) = rules_node {
        if name == TLS || name == TLS_OUTBOUND {
            let message = format!("{name} applies to whole connections and cannot have `rules`");
            scope.error(node.line, &fields.path_of("rules"), message);
            return None;
        }
        if is_connection_policy(&name) && !per_request_ip_policy(&name, &config, true) {
            let message =
                format!("{name} applies to whole connections and cannot be limited by `rules`");
            scope.error(node.line, &fields.path_of("rules"), message);
            return None;
        }
    }
    let kind = check_config(&name, &config, &config_path, has_rules, scope)?;
    Some(PolicySpec {
        name,
        order: order?,
        rules: rules.unwrap_or_default(),
        config,
        line: name_line,
        name_field: name_path,
        config_path,
        kind,
    })
}

fn policy_ref(fields: &Fields<'_>, scope: &mut Scope<'_>) -> Option<(String, usize)> {
    let node = scope.require(fields, "policyRef")?;
    let path = fields.path_of("policyRef");
    let policy_ref = scope.map(node, &path, &["name", "kind"])?;
    if let Some(kind) = policy_ref.get("kind") {
        scope.str(kind, &policy_ref.path_of("kind"));
    }
    let name_node = scope.require(&policy_ref, "name")?;
    let name = scope.str(name_node, &policy_ref.path_of("name"))?;
    Some((name.to_owned(), name_node.line))
}

fn unknown_policy(name: &str) -> String {
    let known = POLICIES.iter().copied();
    // Mule 4 names (`rate-limiting`, `cors`) became `*-flex` in Flex.
    let flex = format!("{name}-flex");
    let hint = POLICIES
        .iter()
        .copied()
        .find(|&n| n == flex)
        .or_else(|| did_you_mean(name, known));
    match hint {
        Some(hint) => format!("unknown policy `{name}` (did you mean `{hint}`?)"),
        None => format!("unknown policy `{name}`"),
    }
}

/// Checks the `config` of the policies the loader interprets; `None` when invalid. The others
/// are the proxy's to check.
fn check_config(
    name: &str,
    config: &Node,
    path: &str,
    has_rules: bool,
    scope: &mut Scope<'_>,
) -> Option<PolicyKind> {
    match name {
        "route" => route_config(config, path, false, scope).map(PolicyKind::Route),
        "route-weighted" => route_config(config, path, true, scope).map(PolicyKind::Route),
        TLS | TLS_OUTBOUND => Some(PolicyKind::Tls),
        // An IP list on a header, or for some requests only, needs the request: the kernel sees
        // addresses and ports, never a path.
        _ if per_request_ip_policy(name, config, has_rules) => Some(PolicyKind::PerRequest),
        _ if is_connection_policy(name) => {
            parse_connection_policy(name, config, path, scope).map(PolicyKind::Connection)
        }
        _ => Some(PolicyKind::PerRequest),
    }
}

fn route_config(
    config: &Node,
    path: &str,
    weighted: bool,
    scope: &mut Scope<'_>,
) -> Option<RouteConfig> {
    let accepted: &[&str] = if weighted {
        &["destinationRef", "destinationPath", "weight"]
    } else {
        &["destinationRef", "destinationPath"]
    };
    let fields = scope.map(config, path, accepted)?;

    let service = scope.require(&fields, "destinationRef").and_then(|node| {
        let dest = scope.map(node, &fields.path_of("destinationRef"), &["kind", "name"])?;
        if let Some(kind) = dest.get("kind") {
            let kind_path = dest.path_of("kind");
            let kind_name = scope.str(kind, &kind_path)?;
            if kind_name != "Service" {
                let message = format!("destinationRef must name a Service, not a {kind_name}");
                scope.error(kind.line, &kind_path, message);
                return None;
            }
        }
        let name = scope.require(&dest, "name")?;
        let field = dest.path_of("name");
        let service = scope.str(name, &field)?;
        Some((service.to_owned(), name.line, field))
    });

    let destination = destination_path_field(&fields, scope);

    let weight = if weighted {
        scope.require(&fields, "weight").and_then(|node| {
            let weight = scope.int_in(node, &fields.path_of("weight"), 0..=i64::from(u32::MAX))?;
            u32::try_from(weight).ok().map(Some)
        })
    } else {
        Some(None)
    };

    let (service, service_line, service_field) = service?;
    Some(RouteConfig {
        service,
        service_line,
        service_field,
        destination_path: destination?,
        weight: weight?,
    })
}

/// `destinationPath` of a route's config: `/` when absent.
pub(crate) fn destination_path_field(fields: &Fields<'_>, scope: &mut Scope<'_>) -> Option<String> {
    let Some(node) = fields.get("destinationPath") else {
        return Some("/".to_owned());
    };
    let path = fields.path_of("destinationPath");
    let text = scope.str(node, &path)?;
    match destination_path(text) {
        Ok(p) => Some(p),
        Err(e) => {
            scope.error(node.line, &path, e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_has_each_name_once() {
        for (i, name) in POLICIES.iter().enumerate() {
            assert!(!POLICIES[i + 1..].contains(name), "{name} listed twice");
        }
        assert!(is_known_policy("route"));
        assert!(is_known_policy("client-id-enforcement"));
        assert!(!is_known_policy("nope"));
    }

    #[test]
    fn unknown_policies_get_a_hint() {
        assert_eq!(
            unknown_policy("rate-limiting"),
            "unknown policy `rate-limiting` (did you mean `rate-limiting-flex`?)"
        );
        assert_eq!(
            unknown_policy("rout"),
            "unknown policy `rout` (did you mean `route`?)"
        );
        assert_eq!(unknown_policy("frobnicate"), "unknown policy `frobnicate`");
    }
}
