//! Reading each document into a resource: the envelope (`apiVersion`, `kind`, `metadata`)
//! and the `spec` of each kind, checked field by field.
//!
//! This stage sees one document at a time; whatever needs other resources (a `targetRef`, a
//! `destinationRef`, duplicate names, clashing listeners) is left to [`crate::snapshot`]. A
//! resource with errors is still returned, with the broken parts missing, so that references to
//! it do not produce a second, misleading error.

use std::sync::Arc;
use std::time::Duration;

use crate::address::{parse_listen, parse_upstream, Listen, Resolve};
use crate::error::{child, did_you_mean, item, Scope};
use crate::model::{path_prefix, Balancing, HashOn, HealthCheck, Route, Upstream};
use crate::node::{Fields, Node};
use crate::policy::{destination_path_field, parse_policy, PolicySpec};
use crate::rules::parse_rules;
use crate::settings::SettingsBuilder;

pub(crate) const API_VERSION: &str = "gateway.mulesoft.com/v1alpha1";

/// What the loader needs from the machine it runs on (replaced in tests).
pub(crate) struct Environment<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    pub resolve: &'a Resolve<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    ApiInstance,
    Service,
    PolicyBinding,
    Configuration,
}

const KINDS: &[(&str, Kind)] = &[
    ("ApiInstance", Kind::ApiInstance),
    ("Service", Kind::Service),
    ("PolicyBinding", Kind::PolicyBinding),
    ("Configuration", Kind::Configuration),
];

impl Kind {
    pub fn as_str(self) -> &'static str {
        KINDS
            .iter()
            .find(|&&(_, kind)| kind == self)
            .map_or("?", |&(name, _)| name)
    }
}

/// Where a named resource is defined.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub kind: Kind,
    pub name: String,
    pub file: String,
    /// The line of `metadata.name`.
    pub line: usize,
}

impl Meta {
    /// `Kind/name`, as errors name resources.
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind.as_str(), self.name)
    }
}

#[derive(Debug)]
pub(crate) struct RawApi {
    pub meta: Meta,
    /// The parsed `spec.address` and its line.
    pub listen: Option<(Listen, usize)>,
    /// Routes to inline services, complete.
    pub routes: Vec<Route>,
    pub inline_upstreams: Vec<Arc<Upstream>>,
    /// Inline `policies`, with `<api>/policies[i]` as binding name.
    pub policies: Vec<(String, PolicySpec)>,
}

#[derive(Debug)]
pub(crate) struct RawService {
    pub meta: Meta,
    pub upstream: Option<Upstream>,
}

#[derive(Debug)]
pub(crate) struct RawBinding {
    pub meta: Meta,
    pub target: Option<Target>,
    pub policy: Option<PolicySpec>,
}

#[derive(Debug)]
pub(crate) struct Target {
    pub kind: Kind,
    pub name: String,
    pub line: usize,
}

/// Every resource of a load, in file order.
#[derive(Default)]
pub(crate) struct Resources {
    pub apis: Vec<RawApi>,
    pub services: Vec<RawService>,
    pub bindings: Vec<RawBinding>,
    pub configurations: Vec<Meta>,
    pub settings: SettingsBuilder,
}

impl Resources {
    /// Reads one document. `scope.resource` is set as soon as the kind is known.
    pub fn add(&mut self, doc: &Node, env: &Environment<'_>, scope: &mut Scope<'_>) {
        let Some((meta, spec)) = envelope(doc, scope) else {
            return;
        };
        match meta.kind {
            Kind::ApiInstance => {
                let api = api_instance(meta, spec, env, scope);
                self.apis.push(api);
            }
            Kind::Service => {
                let upstream = spec.and_then(|spec| service(&meta.name, spec, env, scope));
                self.services.push(RawService { meta, upstream });
            }
            Kind::PolicyBinding => {
                let (target, policy) = spec.map_or((None, None), |spec| binding(spec, env, scope));
                self.bindings.push(RawBinding {
                    meta,
                    target,
                    policy,
                });
            }
            Kind::Configuration => {
                if let Some(spec) = spec {
                    self.settings.apply(spec, scope);
                }
                self.configurations.push(meta);
            }
        }
    }
}

/// The kind and name of a document, and its `spec` (`None` when missing, reported).
fn envelope<'n>(doc: &'n Node, scope: &mut Scope<'_>) -> Option<(Meta, Option<&'n Node>)> {
    // Unknown fields are reported once the resource is known, to name it.
    let fields = scope.any_map(doc, "")?;

    let kind = scope.require(&fields, "kind").and_then(|node| {
        let text = scope.str(node, "kind")?;
        let kind = KINDS.iter().find(|(name, _)| *name == text).map(|&(_, k)| k);
        if kind.is_none() {
            let hint = did_you_mean(text, KINDS.iter().map(|&(name, _)| name))
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            let message = format!(
                "unknown kind `{text}`{hint}; expected ApiInstance, Service, PolicyBinding or Configuration"
            );
            scope.error(node.line, "kind", message);
        }
        kind
    });
    if let Some(kind) = kind {
        scope.resource = Some(kind.as_str().to_owned());
    }

    let name = scope.require(&fields, "metadata").and_then(|metadata| {
        let m = scope.map(metadata, "metadata", &["name", "labels", "annotations"])?;
        for key in ["labels", "annotations"] {
            if let Some(node) = m.get(key).filter(|node| node.as_map().is_none()) {
                scope.expected(node, &m.path_of(key), "a mapping");
            }
        }
        let name = scope.require(&m, "name")?;
        let text = scope.str(name, "metadata.name")?;
        if text.is_empty() {
            scope.error(name.line, "metadata.name", "must not be empty");
            return None;
        }
        Some((text.to_owned(), name.line))
    });

    if let (Some(kind), Some((name, _))) = (kind, &name) {
        scope.resource = Some(format!("{}/{name}", kind.as_str()));
    }
    scope.reject_unknown(&fields, &["apiVersion", "kind", "metadata", "spec"]);
    if let Some(version) = scope.require(&fields, "apiVersion") {
        if let Some(text) = scope.str(version, "apiVersion") {
            if text != API_VERSION {
                let message = format!("unsupported apiVersion `{text}`; expected `{API_VERSION}`");
                scope.error(version.line, "apiVersion", message);
            }
        }
    }

    let (kind, (name, line)) = (kind?, name?);
    let spec = scope.require(&fields, "spec");
    let meta = Meta {
        kind,
        name,
        file: scope.file.to_owned(),
        line,
    };
    Some((meta, spec))
}

fn api_instance(
    meta: Meta,
    spec: Option<&Node>,
    env: &Environment<'_>,
    scope: &mut Scope<'_>,
) -> RawApi {
    let mut api = RawApi {
        meta,
        listen: None,
        routes: Vec::new(),
        inline_upstreams: Vec::new(),
        policies: Vec::new(),
    };
    let Some(f) =
        spec.and_then(|spec| scope.map(spec, "spec", &["address", "services", "policies"]))
    else {
        return api;
    };

    if let Some(node) = scope.require(&f, "address") {
        let path = f.path_of("address");
        if let Some(text) = scope.str(node, &path) {
            match parse_listen(text) {
                Ok(listen) => api.listen = Some((listen, node.line)),
                Err(e) => scope.error(node.line, &path, e),
            }
        }
    }

    if let Some(services) = f.get("services") {
        let path = f.path_of("services");
        match services.as_map() {
            Some(entries) => {
                for (name, node) in entries {
                    inline_service(&mut api, name, node, &child(&path, name), env, scope);
                }
            }
            None => scope.expected(services, &path, "a mapping of service name to service"),
        }
    }

    if let Some(policies) = f.get("policies") {
        let path = f.path_of("policies");
        for (i, node) in scope
            .seq(policies, &path)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let policy_path = item(&path, i);
            let Some(pf) = scope.map(
                node,
                &policy_path,
                &["policyRef", "config", "rules", "order"],
            ) else {
                continue;
            };
            if let Some(policy) = parse_policy(&pf, env.var, scope) {
                let binding = format!("{}/policies[{i}]", api.meta.name);
                api.policies.push((binding, policy));
            }
        }
    }
    api
}

/// `spec.services.<name>`: an upstream and the routes to it (one catch-all when none).
fn inline_service(
    api: &mut RawApi,
    name: &str,
    node: &Node,
    path: &str,
    env: &Environment<'_>,
    scope: &mut Scope<'_>,
) {
    let Some(f) = scope.map(node, path, &["address", "routes"]) else {
        return;
    };
    let qualified = format!("{}/{name}", api.meta.name);
    let upstream = scope
        .require(&f, "address")
        .and_then(|address| upstream(&qualified, address, &f.path_of("address"), env, scope))
        .map(Arc::new);

    let mut routes = Vec::new();
    if let Some(node) = f.get("routes") {
        let routes_path = f.path_of("routes");
        let items = scope.seq(node, &routes_path).unwrap_or_default();
        for (i, route) in items.iter().enumerate() {
            routes.extend(inline_route(route, &item(&routes_path, i), scope));
        }
    }
    if f.get("routes")
        .and_then(Node::as_seq)
        .is_none_or(<[Node]>::is_empty)
    {
        routes.push((Vec::new(), "/".to_owned()));
    }

    let Some(upstream) = upstream else {
        return;
    };
    for (rules, destination) in routes {
        api.routes.push(Route {
            name: name.to_owned(),
            rules,
            path_prefix: path_prefix(&upstream.path, &destination),
            upstream: Arc::clone(&upstream),
            weight: None,
        });
    }
    api.inline_upstreams.push(upstream);
}

/// One `routes[i]` of an inline service: its rules and `config.destinationPath`.
fn inline_route(
    node: &Node,
    path: &str,
    scope: &mut Scope<'_>,
) -> Option<(Vec<crate::rules::Rule>, String)> {
    let f = scope.map(node, path, &["rules", "config"])?;
    let rules = f
        .get("rules")
        .map(|n| parse_rules(n, &f.path_of("rules"), scope))
        .unwrap_or_default();
    let destination = match f.get("config") {
        None => Some("/".to_owned()),
        Some(config) => {
            let config = scope.map(config, &f.path_of("config"), &["destinationPath"])?;
            destination_path_field(&config, scope)
        }
    };
    Some((rules, destination?))
}

fn service(
    name: &str,
    spec: &Node,
    env: &Environment<'_>,
    scope: &mut Scope<'_>,
) -> Option<Upstream> {
    let f = scope.map(
        spec,
        "spec",
        &["address", "addresses", "loadBalancing", "healthCheck"],
    )?;
    let balancing = match f.get("loadBalancing") {
        Some(node) => Some(balancing(node, &f.path_of("loadBalancing"), scope)?),
        None => None,
    };
    let check = match f.get("healthCheck") {
        Some(node) => Some(health_check(node, &f.path_of("healthCheck"), scope)?),
        None => None,
    };
    let mut upstream = service_endpoints(name, &f, env, scope)?;
    upstream.balancing = balancing.unwrap_or_default();
    upstream.health_check = check;
    Some(upstream)
}

/// `healthCheck` (Ringwall's): `path` (required), `intervalSeconds` (5), `timeoutSeconds`
/// (1), `healthyThreshold` (2), `unhealthyThreshold` (3).
fn health_check(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<HealthCheck> {
    let f = scope.map(
        node,
        path,
        &[
            "path",
            "intervalSeconds",
            "timeoutSeconds",
            "healthyThreshold",
            "unhealthyThreshold",
        ],
    )?;
    let errors = scope.diag.errors.len();
    let target = scope.require(&f, "path")?;
    let target_path = f.path_of("path");
    let probe = scope.str(target, &target_path)?;
    if !probe.starts_with('/') || probe.chars().any(|c| c.is_whitespace() || c.is_control()) {
        let message = format!("`{probe}` is not a path starting with `/`");
        scope.error(target.line, &target_path, message);
    }
    let mut check = HealthCheck {
        path: probe.to_owned(),
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        healthy_threshold: 2,
        unhealthy_threshold: 3,
    };
    for (key, slot) in [
        ("intervalSeconds", &mut check.interval),
        ("timeoutSeconds", &mut check.timeout),
    ] {
        if let Some(n) = f.get(key) {
            let key_path = f.path_of(key);
            let secs = scope.number(n, &key_path)?;
            match Duration::try_from_secs_f64(secs) {
                Ok(d) if d >= Duration::from_millis(10) => *slot = d,
                _ => {
                    let message = format!("must be at least 0.01 seconds, found {secs}");
                    scope.error(n.line, &key_path, message);
                }
            }
        }
    }
    for (key, slot) in [
        ("healthyThreshold", &mut check.healthy_threshold),
        ("unhealthyThreshold", &mut check.unhealthy_threshold),
    ] {
        if let Some(n) = f.get(key) {
            if let Some(v) = scope.int_in(n, &f.path_of(key), 1..=100) {
                *slot = u32::try_from(v).unwrap_or(1);
            }
        }
    }
    (scope.diag.errors.len() == errors).then_some(check)
}

/// `loadBalancing` (Ringwall's): `algorithm` (`roundRobin`, `weighted`, `leastRequest`,
/// `consistentHash`), and for a consistent hash `hashOn` (`remoteAddress`, or `header` with
/// `hashHeader`).
fn balancing(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<Balancing> {
    let f = scope.map(node, path, &["algorithm", "hashOn", "hashHeader"])?;
    let algorithm = scope.require(&f, "algorithm")?;
    let algorithm_path = f.path_of("algorithm");
    let chosen = match scope.str(algorithm, &algorithm_path)? {
        "roundRobin" => Balancing::RoundRobin,
        "leastRequest" => Balancing::LeastRequest,
        "weighted" => Balancing::Weighted,
        "consistentHash" => {
            let on = scope.require(&f, "hashOn")?;
            let on_path = f.path_of("hashOn");
            match scope.str(on, &on_path)? {
                "remoteAddress" => Balancing::ConsistentHash(HashOn::RemoteAddress),
                "header" => {
                    let header = scope.require(&f, "hashHeader")?;
                    let name = scope.str(header, &f.path_of("hashHeader"))?;
                    Balancing::ConsistentHash(HashOn::Header(name.to_ascii_lowercase()))
                }
                other => {
                    let message = format!("`{other}` is neither `remoteAddress` nor `header`");
                    scope.error(on.line, &on_path, message);
                    return None;
                }
            }
        }
        other => {
            let message = format!(
                "unknown algorithm `{other}`; expected `roundRobin`, `weighted`, `leastRequest` or `consistentHash`"
            );
            scope.error(algorithm.line, &algorithm_path, message);
            return None;
        }
    };
    if !matches!(chosen, Balancing::ConsistentHash(_)) {
        if let Some(extra) = f.get("hashOn").or(f.get("hashHeader")) {
            scope.warn(
                extra.line,
                path,
                "`hashOn` and `hashHeader` apply to `consistentHash` only",
            );
        }
    }
    Some(chosen)
}

/// `address` or `addresses`.
fn service_endpoints(
    name: &str,
    f: &Fields<'_>,
    env: &Environment<'_>,
    scope: &mut Scope<'_>,
) -> Option<Upstream> {
    match (f.get("address"), f.get("addresses")) {
        (Some(_), Some(list)) => {
            let message = "give `address` or `addresses`, not both";
            scope.error(list.line, &f.path_of("addresses"), message);
            None
        }
        (None, Some(list)) => endpoints(name, list, &f.path_of("addresses"), env, scope),
        _ => {
            let address = scope.require(f, "address")?;
            upstream(name, address, &f.path_of("address"), env, scope)
        }
    }
}

/// `addresses` (Ringwall's): several endpoints of one Service, balanced and ejected when they
/// fail as one name's addresses are. They share a scheme and a path; the `Host` header and the
/// TLS server name are those of the first.
fn endpoints(
    name: &str,
    list: &Node,
    path: &str,
    env: &Environment<'_>,
    scope: &mut Scope<'_>,
) -> Option<Upstream> {
    let items = scope.seq(list, path)?;
    if items.is_empty() {
        scope.error(list.line, path, "lists no address");
        return None;
    }
    let mut first: Option<Upstream> = None;
    let mut valid = true;
    for (i, node) in items.iter().enumerate() {
        let item_path = item(path, i);
        // `url`, or `{address: url, weight: n}` for the `weighted` algorithm.
        let (address, address_path, weight) = match node.as_map() {
            None => (node, item_path.clone(), 1),
            Some(_) => {
                let Some(f) = scope.map(node, &item_path, &["address", "weight"]) else {
                    valid = false;
                    continue;
                };
                let weight = match f.get("weight") {
                    Some(w) => scope.int_in(w, &f.path_of("weight"), 1..=10_000),
                    None => Some(1),
                };
                let (Some(address), Some(weight)) = (scope.require(&f, "address"), weight) else {
                    valid = false;
                    continue;
                };
                (address, f.path_of("address"), weight as u32)
            }
        };
        let Some(mut next) = upstream(name, address, &address_path, env, scope) else {
            valid = false;
            continue;
        };
        next.weights = vec![weight; next.addrs.len()];
        match &mut first {
            None => first = Some(next),
            Some(up) if up.https != next.https || up.path != next.path => {
                let message = "every address must have the first one's scheme and path";
                scope.error(node.line, &item_path, message);
                valid = false;
            }
            Some(up) => {
                up.addrs.extend(next.addrs);
                up.weights.extend(next.weights);
            }
        }
    }
    first.filter(|_| valid)
}

fn upstream(
    name: &str,
    node: &Node,
    path: &str,
    env: &Environment<'_>,
    scope: &mut Scope<'_>,
) -> Option<Upstream> {
    let text = scope.str(node, path)?;
    match parse_upstream(text, env.resolve) {
        Ok(address) => Some(Upstream {
            name: name.to_owned(),
            addrs: address.addrs,
            authority: address.authority,
            path: address.path,
            https: address.https,
            host: address.host,
            tls: None,
            policies: Vec::new(),
            balancing: Balancing::default(),
            health_check: None,
            weights: Vec::new(),
        }),
        Err(e) => {
            scope.error(node.line, path, e);
            None
        }
    }
}

fn binding(
    spec: &Node,
    env: &Environment<'_>,
    scope: &mut Scope<'_>,
) -> (Option<Target>, Option<PolicySpec>) {
    let Some(f) = scope.map(
        spec,
        "spec",
        &["targetRef", "policyRef", "config", "order", "rules"],
    ) else {
        return (None, None);
    };
    let target = scope.require(&f, "targetRef").and_then(|node| {
        let path = f.path_of("targetRef");
        let t = scope.map(node, &path, &["kind", "name"])?;
        let kind = match t.get("kind") {
            None => Kind::ApiInstance,
            Some(kind) => {
                let kind_path = t.path_of("kind");
                match scope.str(kind, &kind_path)? {
                    "ApiInstance" => Kind::ApiInstance,
                    "Service" => Kind::Service,
                    other => {
                        let message =
                            format!("targetRef must be an ApiInstance or a Service, not `{other}`");
                        scope.error(kind.line, &kind_path, message);
                        return None;
                    }
                }
            }
        };
        let name = scope.require(&t, "name")?;
        let text = scope.str(name, &t.path_of("name"))?;
        Some(Target {
            kind,
            name: text.to_owned(),
            line: name.line,
        })
    });
    let policy = parse_policy(&f, env.var, scope);
    (target, policy)
}
