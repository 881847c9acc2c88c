//! Linking the resources of one load into a [`Snapshot`].
//!
//! Here resources meet: names must be unique per kind, `targetRef` and `destinationRef` must
//! name something that exists, route bindings become routes of their ApiInstance,
//! connection-level policies become its [`ConnectionRules`], and listeners must not clash (nor
//! disagree on those rules). A broken resource was already reported when it was read, so
//! references to it are followed silently rather than reported twice.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

use crate::connection::{ConnectionPolicy, ConnectionRules, ALLOWLIST, RATE_LIMIT};
use crate::error::{ConfigError, Diagnostics, Scope};
use crate::model::{path_prefix, ApiInstance, Policy, Route, Upstream};
use crate::policy::{PolicyKind, PolicySpec, CORS, TLS_OUTBOUND};
use crate::resources::{Kind, Meta, RawApi, RawBinding, RawService, Resources};
use crate::settings::Settings;

/// Everything one load produced, immutable from here on.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// In load order (file name, then document).
    pub apis: Vec<ApiInstance>,
    /// Every upstream: the top-level Services in load order, then the inline services.
    pub services: Vec<Arc<Upstream>>,
    /// The connection rules of each listener that has any, in the order of `apis`: one entry
    /// per distinct listen address, and one per ApiInstance on port 0 (each binds a port of its
    /// own, so `127.0.0.1:0` may appear more than once; the ApiInstance's own
    /// `connection_rules` say the same). ApiInstances sharing a listen address have equal rules,
    /// and so do listen addresses sharing a non-zero port, since the kernel keys by port.
    #[serde(serialize_with = "crate::view::listener_rules")]
    pub listener_rules: Vec<(SocketAddr, ConnectionRules)>,
    pub settings: Settings,
    pub summary: Summary,
    /// Valid but probably unintended (an ApiInstance without routes, an unused Service).
    pub warnings: Vec<ConfigError>,
}

// Shared as `Arc<Snapshot>` by every worker.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Snapshot>();
};

/// How many files and resources a load read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub files: usize,
    pub api_instances: usize,
    pub services: usize,
    pub policy_bindings: usize,
    pub configurations: usize,
}

impl fmt::Display for Summary {
    /// `2 files: 1 ApiInstance, 1 Service, 3 PolicyBindings, 0 Configurations`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        write!(
            f,
            "{} file{}: {} ApiInstance{}, {} Service{}, {} PolicyBinding{}, {} Configuration{}",
            self.files,
            plural(self.files),
            self.api_instances,
            plural(self.api_instances),
            self.services,
            plural(self.services),
            self.policy_bindings,
            plural(self.policy_bindings),
            self.configurations,
            plural(self.configurations),
        )
    }
}

/// A policy on its way to its ApiInstance: where it was written, and what it says.
struct Bound {
    binding: String,
    meta: Meta,
    spec: PolicySpec,
}

/// The top-level Services once their own policies are attached, shared by the routes.
struct Services {
    /// Every Service, broken ones included, so references to them are not reported twice.
    metas: Vec<Meta>,
    shared: HashMap<String, Arc<Upstream>>,
    /// The valid ones, in load order.
    upstreams: Vec<Arc<Upstream>>,
    used: HashSet<String>,
}

pub(crate) fn link(res: Resources, files: usize, diag: &mut Diagnostics) -> Snapshot {
    let summary = Summary {
        files,
        api_instances: res.apis.len(),
        services: res.services.len(),
        policy_bindings: res.bindings.len(),
        configurations: res.configurations.len(),
    };
    let Resources {
        mut apis,
        mut services,
        mut bindings,
        configurations,
        settings,
    } = res;

    // Names: the first definition wins, later ones are errors.
    let mut first: HashMap<(Kind, String), Meta> = HashMap::new();
    apis.retain(|a| unique(&mut first, &a.meta, diag));
    services.retain(|s| unique(&mut first, &s.meta, diag));
    bindings.retain(|b| unique(&mut first, &b.meta, diag));
    for meta in &configurations {
        unique(&mut first, meta, diag);
    }

    let mut bound = attach_bindings(bindings, &apis, &mut services, diag);
    let mut services = share(services);
    let mut linked = Vec::with_capacity(apis.len());
    let mut inline = Vec::new();
    for mut raw in apis {
        inline.append(&mut raw.inline_upstreams);
        let bound = bound.remove(&raw.meta.name).unwrap_or_default();
        linked.extend(build_api(raw, bound, &mut services, diag));
    }

    for meta in &services.metas {
        if !services.used.contains(&meta.name) {
            scope_of(diag, meta).warn(meta.line, "", "not used by any route");
        }
    }
    check_listeners(&linked, diag);
    check_tls_listeners(&linked, diag);
    let listener_rules = listener_rules(&linked, diag);

    let mut upstreams = services.upstreams;
    upstreams.extend(inline);
    Snapshot {
        apis: linked.into_iter().map(|(_, _, api)| api).collect(),
        services: upstreams,
        listener_rules,
        settings: settings.settings,
        summary,
        warnings: Vec::new(),
    }
}

/// Records `meta`'s name, reporting it when its kind already has that name.
fn unique(first: &mut HashMap<(Kind, String), Meta>, meta: &Meta, diag: &mut Diagnostics) -> bool {
    let key = (meta.kind, meta.name.clone());
    if let Some(earlier) = first.get(&key) {
        let message = format!(
            "duplicate {} `{}`; first defined at {}:{}",
            meta.kind.as_str(),
            meta.name,
            earlier.file,
            earlier.line
        );
        scope_of(diag, meta).error(meta.line, "metadata.name", message);
        return false;
    }
    first.insert(key, meta.clone());
    true
}

/// Follows each binding's `targetRef`: Service policies go onto the Service, the others are
/// returned by ApiInstance name.
fn attach_bindings(
    bindings: Vec<RawBinding>,
    apis: &[RawApi],
    services: &mut [RawService],
    diag: &mut Diagnostics,
) -> HashMap<String, Vec<Bound>> {
    let mut bound: HashMap<String, Vec<Bound>> = HashMap::new();
    for binding in bindings {
        let (Some(target), Some(spec)) = (binding.target, binding.policy) else {
            continue;
        };
        let mut scope = scope_of(diag, &binding.meta);
        if target.kind == Kind::Service {
            let Some(service) = services.iter_mut().find(|s| s.meta.name == target.name) else {
                let message = format!("targetRef names no Service called `{}`", target.name);
                scope.error(target.line, "spec.targetRef.name", message);
                continue;
            };
            let outbound = spec.name == TLS_OUTBOUND;
            if !outbound && !matches!(spec.kind, PolicyKind::PerRequest) {
                let message = format!("`{}` must target an ApiInstance", spec.name);
                scope.error(target.line, "spec.targetRef", message);
                continue;
            }
            let Some(upstream) = &mut service.upstream else {
                continue;
            };
            let name = binding.meta.name.clone();
            if !outbound {
                upstream.policies.push(policy(name, &binding.meta, spec));
            } else if !upstream.https {
                let message = format!(
                    "Service `{}` has an `http://` address: `tls-outbound` needs `https://`",
                    target.name
                );
                scope.error(target.line, "spec.targetRef.name", message);
            } else if let Some(first) = &upstream.tls {
                let message = format!(
                    "Service `{}` already has a `tls-outbound` policy, {} ({}:{})",
                    target.name, first.resource, first.file, first.line
                );
                scope.error(spec.line, &spec.name_field, message);
            } else {
                upstream.tls = Some(policy(name, &binding.meta, spec));
            }
        } else if spec.name == TLS_OUTBOUND {
            let message = "`tls-outbound` must target a Service (`targetRef.kind: Service`)";
            scope.error(target.line, "spec.targetRef", message);
        } else if apis.iter().any(|a| a.meta.name == target.name) {
            bound.entry(target.name).or_default().push(Bound {
                binding: binding.meta.name.clone(),
                meta: binding.meta,
                spec,
            });
        } else {
            let message = format!("targetRef names no ApiInstance called `{}`", target.name);
            scope.error(target.line, "spec.targetRef.name", message);
        }
    }
    bound
}

fn share(services: Vec<RawService>) -> Services {
    let mut out = Services {
        metas: Vec::with_capacity(services.len()),
        shared: HashMap::new(),
        upstreams: Vec::new(),
        used: HashSet::new(),
    };
    for service in services {
        if let Some(mut upstream) = service.upstream {
            upstream.policies.sort_by_key(|p| p.order);
            let upstream = Arc::new(upstream);
            out.shared
                .insert(service.meta.name.clone(), Arc::clone(&upstream));
            out.upstreams.push(upstream);
        }
        out.metas.push(service.meta);
    }
    out
}

/// The ApiInstance with its routes and policies (inline ones first, then `bound`), with the
/// line of its address; `None` when its address was invalid.
fn build_api(
    raw: RawApi,
    bound: Vec<Bound>,
    services: &mut Services,
    diag: &mut Diagnostics,
) -> Option<(Meta, usize, ApiInstance)> {
    let inline = raw.policies.into_iter().map(|(binding, spec)| Bound {
        binding,
        meta: raw.meta.clone(),
        spec,
    });
    let mut routes: Vec<(i64, Route)> = Vec::new();
    let mut enforced = Vec::new();
    let mut tls: Option<Policy> = None;
    let mut connection = ConnectionFold::default();
    for Bound {
        binding,
        meta,
        spec,
    } in inline.chain(bound)
    {
        let route = match spec.kind {
            PolicyKind::PerRequest => {
                enforced.push(policy(binding, &meta, spec));
                continue;
            }
            PolicyKind::Connection(rule) => {
                let origin = Origin {
                    binding,
                    meta: &meta,
                    line: spec.line,
                    field: &spec.name_field,
                };
                connection.add(&raw.meta, origin, rule, diag);
                continue;
            }
            PolicyKind::Tls if spec.name == TLS_OUTBOUND => {
                let message = "`tls-outbound` must be bound to a Service (a PolicyBinding with \
                               `targetRef.kind: Service`)";
                scope_of(diag, &meta).error(spec.line, &spec.name_field, message);
                continue;
            }
            PolicyKind::Tls => {
                if let Some(first) = &tls {
                    let message = format!(
                        "ApiInstance `{}` already has a `tls` policy, {} ({}:{})",
                        raw.meta.name, first.binding, first.file, first.line
                    );
                    scope_of(diag, &meta).error(spec.line, &spec.name_field, message);
                } else {
                    tls = Some(policy(binding, &meta, spec));
                }
                continue;
            }
            PolicyKind::Route(route) => route,
        };
        if !services.metas.iter().any(|s| s.name == route.service) {
            let message = format!("destinationRef names no Service called `{}`", route.service);
            scope_of(diag, &meta).error(route.service_line, &route.service_field, message);
            continue;
        }
        services.used.insert(route.service.clone());
        let Some(upstream) = services.shared.get(&route.service) else {
            continue;
        };
        let route = Route {
            name: binding,
            path_prefix: path_prefix(&upstream.path, &route.destination_path),
            upstream: Arc::clone(upstream),
            weight: route.weight,
            rules: spec.rules,
        };
        routes.push((spec.order, route));
    }
    routes.sort_by_key(|&(order, _)| order);
    enforced.sort_by_key(|p| (p.name != CORS, p.order));

    let (listen, address_line) = raw.listen?;
    let mut api = ApiInstance {
        name: raw.meta.name.clone(),
        listen: listen.addr,
        base_path: listen.base_path,
        https: listen.https,
        tls,
        routes: raw.routes,
        policies: enforced,
        connection_rules: connection.rules,
    };
    api.routes
        .extend(routes.into_iter().map(|(_, route)| route));
    if api.routes.is_empty() {
        scope_of(diag, &raw.meta).warn(
            raw.meta.line,
            "",
            "no routes: every request to this ApiInstance will get a 404",
        );
    }
    Some((raw.meta, address_line, api))
}

/// Where a connection-level policy was written.
struct Origin<'a> {
    binding: String,
    meta: &'a Meta,
    line: usize,
    field: &'a str,
}

/// An ApiInstance's connection-level policies, folded into its rules as they come.
#[derive(Default)]
struct ConnectionFold {
    rules: ConnectionRules,
    /// `binding (file:line)` of the first allow list and of the rate limit, to name them
    /// when another comes.
    allow_from: Option<String>,
    rate_from: Option<String>,
}

impl ConnectionFold {
    fn add(
        &mut self,
        api: &Meta,
        origin: Origin<'_>,
        policy: ConnectionPolicy,
        diag: &mut Diagnostics,
    ) {
        let here = format!(
            "`{}` ({}:{})",
            origin.binding, origin.meta.file, origin.line
        );
        let rules = std::mem::take(&mut self.rules);
        self.rules = match policy {
            ConnectionPolicy::Deny(nets) => rules.with_deny(nets),
            ConnectionPolicy::Allow(nets) => {
                let narrowed = rules.with_allow(nets);
                if let Some(first) = &self.allow_from {
                    if narrowed.allow.as_ref().is_some_and(Vec::is_empty) {
                        let message = format!(
                            "{} also has {ALLOWLIST} {first}; each allow list filters on its \
                             own, and these have no address in common, so no connection is \
                             admitted",
                            api.label()
                        );
                        scope_of(diag, origin.meta).warn(origin.line, origin.field, message);
                    }
                } else {
                    self.allow_from = Some(here);
                }
                narrowed
            }
            ConnectionPolicy::Rate(rate) => {
                if let Some(first) = &self.rate_from {
                    let message = format!(
                        "{} already has {RATE_LIMIT} {first}; only one connection rate applies \
                         to a listener",
                        api.label()
                    );
                    scope_of(diag, origin.meta).error(origin.line, origin.field, message);
                    rules
                } else {
                    self.rate_from = Some(here);
                    rules.with_rate(rate)
                }
            }
        };
    }
}

fn scope_of<'a>(diag: &'a mut Diagnostics, meta: &'a Meta) -> Scope<'a> {
    let mut scope = Scope::new(diag, &meta.file);
    scope.resource = Some(meta.label());
    scope
}

fn policy(binding: String, meta: &Meta, spec: PolicySpec) -> Policy {
    Policy {
        name: spec.name,
        binding,
        order: spec.order,
        rules: spec.rules,
        config: spec.config,
        file: meta.file.clone(),
        line: spec.line,
        resource: meta.label(),
        config_path: spec.config_path,
    }
}

/// Two ApiInstances may share a listener only with different base paths, and a wildcard
/// address cannot be bound next to a specific one on the same port. Port 0 asks for a port
/// of the system's choosing, one per ApiInstance, so such addresses never clash.
fn check_listeners(apis: &[(Meta, usize, ApiInstance)], diag: &mut Diagnostics) {
    for (j, (meta, line, api)) in apis.iter().enumerate() {
        for (other_meta, _, other) in &apis[..j] {
            let shared = api.listen == other.listen && api.listen.port() != 0;
            let message = if shared && api.base_path == other.base_path {
                let base = if api.base_path.is_empty() {
                    "/"
                } else {
                    &api.base_path
                };
                format!(
                    "{} with base path `{base}` is already served by {} ({}:{})",
                    api.listen,
                    other_meta.label(),
                    other_meta.file,
                    other_meta.line
                )
            } else if overlaps(api.listen, other.listen) {
                format!(
                    "{} overlaps {} of {} ({}:{}): both cannot be bound; use the same address",
                    api.listen,
                    other.listen,
                    other_meta.label(),
                    other_meta.file,
                    other_meta.line
                )
            } else {
                continue;
            };
            scope_of(diag, meta).error(*line, "spec.address", message);
        }
    }
}

/// TLS is a property of the listener, as in Flex where it applies per port: a listener
/// terminates TLS when any of its ApiInstances binds `tls`. An `https://` ApiInstance on a
/// listener without one cannot be served; an `http://` one on a TLS listener is served over
/// TLS, which its address does not say (a warning).
fn check_tls_listeners(apis: &[(Meta, usize, ApiInstance)], diag: &mut Diagnostics) {
    for (meta, line, api) in apis {
        let shares = |other: &ApiInstance| {
            other.listen == api.listen && (api.listen.port() != 0 || other.name == api.name)
        };
        let with_tls = apis
            .iter()
            .find(|(_, _, other)| shares(other) && other.tls.is_some());
        match (api.https, with_tls) {
            (true, None) => {
                let message = format!(
                    "`https://` needs a `tls` policy (its certificate) bound to this ApiInstance \
                     or to another one on {}",
                    api.listen
                );
                scope_of(diag, meta).error(*line, "spec.address", message);
            }
            (false, Some((other_meta, _, _))) => {
                let by = if other_meta.name == meta.name {
                    "its own `tls` policy".to_owned()
                } else {
                    format!("the `tls` policy of {}", other_meta.label())
                };
                let message = format!(
                    "served over TLS because of {by} on {}: write `https://`",
                    api.listen
                );
                scope_of(diag, meta).warn(*line, "spec.address", message);
            }
            _ => {}
        }
    }
}

/// The rules of each listener that has any (see [`Snapshot::listener_rules`]), reporting
/// ApiInstances whose connection rules differ from those of the listener, or of the port, they
/// share: the kernel sees only the destination address and port, so it cannot tell them apart.
fn listener_rules(
    apis: &[(Meta, usize, ApiInstance)],
    diag: &mut Diagnostics,
) -> Vec<(SocketAddr, ConnectionRules)> {
    // Each listener with the ApiInstance that opened it, which sets its rules.
    let mut listeners: Vec<(&Meta, &ApiInstance)> = Vec::new();
    for (meta, line, api) in apis {
        let port = api.listen.port();
        let shared = listeners
            .iter()
            .find(|(_, first)| port != 0 && first.listen == api.listen);
        let same_port = listeners.iter().find(|(_, first)| {
            port != 0 && first.listen.port() == port && !overlaps(first.listen, api.listen)
        });
        let message = match (shared, same_port) {
            (Some((first_meta, first)), _) => {
                if first.connection_rules == api.connection_rules {
                    continue;
                }
                format!(
                    "connection-level policies apply to the whole listener {}, which {} shares \
                     with {} ({}:{}) with different ones; give {} its own port or bind the same \
                     policies to both",
                    api.listen,
                    meta.label(),
                    first_meta.label(),
                    first_meta.file,
                    first_meta.line,
                    api.name,
                )
            }
            (None, Some((first_meta, first))) if first.connection_rules != api.connection_rules => {
                format!(
                    "connection-level policies are enforced per port, and {} shares port {port} \
                     with {} of {} ({}:{}) with different ones; give {} another port or bind the \
                     same policies to both",
                    api.listen,
                    first.listen,
                    first_meta.label(),
                    first_meta.file,
                    first_meta.line,
                    api.name,
                )
            }
            _ => {
                listeners.push((meta, api));
                continue;
            }
        };
        scope_of(diag, meta).error(*line, "spec.address", message);
        if shared.is_none() {
            listeners.push((meta, api));
        }
    }
    listeners
        .into_iter()
        .filter(|(_, api)| !api.connection_rules.is_empty())
        .map(|(_, api)| (api.listen, api.connection_rules.clone()))
        .collect()
}

/// Whether binding both addresses would fail: same port, one a wildcard covering the other.
/// `[::]` is taken to be dual-stack (Linux's default), so it covers IPv4 addresses as well.
/// Port 0 never clashes: each such listener gets its own port.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |wild: IpAddr, ip: IpAddr| {
        wild.is_unspecified() && wild != ip && (wild.is_ipv6() || ip.is_ipv4())
    };
    a.port() == b.port() && a.port() != 0 && (covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_pluralises() {
        let summary = Summary {
            files: 2,
            api_instances: 1,
            services: 1,
            policy_bindings: 3,
            configurations: 0,
        };
        assert_eq!(
            summary.to_string(),
            "2 files: 1 ApiInstance, 1 Service, 3 PolicyBindings, 0 Configurations"
        );
        let one = Summary {
            files: 1,
            configurations: 1,
            ..Summary::default()
        };
        assert_eq!(
            one.to_string(),
            "1 file: 0 ApiInstances, 0 Services, 0 PolicyBindings, 1 Configuration"
        );
    }

    #[test]
    fn wildcards_overlap_specific_addresses_on_the_same_port() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(overlaps(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(overlaps(addr("127.0.0.1:80"), addr("0.0.0.0:80")));
        assert!(overlaps(addr("[::]:80"), addr("0.0.0.0:80")));
        assert!(overlaps(addr("[::]:80"), addr("[::1]:80")));
        assert!(!overlaps(addr("0.0.0.0:80"), addr("[::1]:80")));
        assert!(!overlaps(addr("0.0.0.0:80"), addr("127.0.0.1:81")));
        assert!(!overlaps(addr("0.0.0.0:80"), addr("0.0.0.0:80")));
        assert!(!overlaps(addr("0.0.0.0:0"), addr("127.0.0.1:0")));
        assert!(!overlaps(addr("127.0.0.1:80"), addr("127.0.0.2:80")));
    }
}
