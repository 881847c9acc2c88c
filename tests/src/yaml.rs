//! Builders for the Flex Local Mode resources the tests configure (shared/FLEX-CONFIG.md).
//!
//! They produce YAML text, so a test's config reads like the file a user would write and can be
//! printed when a test fails.

use std::fmt::Write as _;

pub const API_VERSION: &str = "gateway.mulesoft.com/v1alpha1";

/// The listening address every test ApiInstance uses: loopback, port chosen by the OS.
pub const ANY_PORT: &str = "http://127.0.0.1:0";

/// One rule of a route or binding: fields AND'd, `None` fields left out.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub path: Option<String>,
    pub methods: Option<String>,
}

impl Rule {
    pub fn path(path: &str) -> Rule {
        Rule {
            path: Some(path.into()),
            methods: None,
        }
    }

    pub fn methods(mut self, methods: &str) -> Rule {
        self.methods = Some(methods.into());
        self
    }

    fn write(&self, out: &mut String, indent: &str) {
        let mut first = true;
        let mut field = |out: &mut String, key: &str, value: &str| {
            let lead = if first { "- " } else { "  " };
            first = false;
            let _ = writeln!(out, "{indent}{lead}{key}: '{}'", value.replace('\'', "''"));
        };
        if let Some(p) = &self.path {
            field(out, "path", p);
        }
        if let Some(m) = &self.methods {
            field(out, "methods", m);
        }
        if first {
            let _ = writeln!(out, "{indent}- {{}}");
        }
    }
}

/// A route of an inline service.
#[derive(Debug, Clone, Default)]
pub struct Route {
    pub rules: Vec<Rule>,
    pub destination_path: Option<String>,
}

impl Route {
    /// A route without rules: matches every request.
    pub fn all() -> Route {
        Route::default()
    }

    pub fn rule(mut self, rule: Rule) -> Route {
        self.rules.push(rule);
        self
    }

    pub fn destination(mut self, path: &str) -> Route {
        self.destination_path = Some(path.into());
        self
    }
}

/// A service declared inside an ApiInstance.
#[derive(Debug, Clone)]
pub struct InlineService {
    pub name: String,
    pub address: String,
    pub routes: Vec<Route>,
}

impl InlineService {
    pub fn new(name: &str, address: &str, routes: Vec<Route>) -> InlineService {
        InlineService {
            name: name.into(),
            address: address.into(),
            routes,
        }
    }
}

fn head(out: &mut String, kind: &str, name: &str) {
    let _ = writeln!(out, "apiVersion: {API_VERSION}");
    let _ = writeln!(out, "kind: {kind}");
    let _ = writeln!(out, "metadata:\n  name: {name}");
    let _ = writeln!(out, "spec:");
}

/// An `ApiInstance` at `address` (`http://127.0.0.1:0[/base]`) with inline `services`.
pub fn api_instance(name: &str, address: &str, services: &[InlineService]) -> String {
    let mut out = String::new();
    head(&mut out, "ApiInstance", name);
    let _ = writeln!(out, "  address: {address}");
    if services.is_empty() {
        return out;
    }
    let _ = writeln!(out, "  services:");
    for svc in services {
        let _ = writeln!(out, "    {}:", svc.name);
        let _ = writeln!(out, "      address: {}", svc.address);
        if svc.routes.is_empty() {
            continue;
        }
        let _ = writeln!(out, "      routes:");
        for route in &svc.routes {
            // A YAML sequence item needs a first key; `config` always exists.
            let _ = writeln!(out, "        - config:");
            let dest = route.destination_path.as_deref().unwrap_or("/");
            let _ = writeln!(out, "            destinationPath: {dest}");
            if !route.rules.is_empty() {
                let _ = writeln!(out, "          rules:");
                for rule in &route.rules {
                    rule.write(&mut out, "            ");
                }
            }
        }
    }
    out
}

/// The plainest setup: ApiInstance `api` at `address` sending everything to `upstream`
/// (`http://127.0.0.1:PORT`) through an inline service with one rule-less route to
/// `destination_path`.
pub fn api_to(address: &str, upstream: &str, destination_path: &str) -> String {
    api_instance(
        "api",
        address,
        &[InlineService::new(
            "up",
            upstream,
            vec![Route::all().destination(destination_path)],
        )],
    )
}

/// [`api_to`] on `http://127.0.0.1:0`, destination `/`.
pub fn simple_api(upstream: &str) -> String {
    api_to(ANY_PORT, upstream, "/")
}

/// A top-level `Service`.
pub fn service(name: &str, address: &str) -> String {
    let mut out = String::new();
    head(&mut out, "Service", name);
    let _ = writeln!(out, "  address: {address}");
    out
}

/// A `route` `PolicyBinding` sending requests of ApiInstance `api` that match `rules` (all
/// when empty) to top-level Service `service`.
pub fn route_binding(
    name: &str,
    api: &str,
    service: &str,
    destination_path: Option<&str>,
    rules: &[Rule],
) -> String {
    let mut out = String::new();
    head(&mut out, "PolicyBinding", name);
    let _ = writeln!(out, "  targetRef:\n    kind: ApiInstance\n    name: {api}");
    let _ = writeln!(out, "  policyRef:\n    name: route");
    let _ = writeln!(
        out,
        "  config:\n    destinationRef:\n      kind: Service\n      name: {service}"
    );
    if let Some(dest) = destination_path {
        let _ = writeln!(out, "    destinationPath: {dest}");
    }
    if !rules.is_empty() {
        let _ = writeln!(out, "  rules:");
        for rule in rules {
            rule.write(&mut out, "    ");
        }
    }
    out
}

/// A `Configuration` whose spec is `spec` (YAML at column 0, indented here).
pub fn configuration(name: &str, spec: &str) -> String {
    let mut out = String::new();
    head(&mut out, "Configuration", name);
    for line in spec.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// Several documents in one file.
pub fn documents(docs: &[&str]) -> String {
    docs.join("---\n")
}

/// A `PolicyBinding` of `policy` to ApiInstance `api`, in `order`, with `config` (YAML at
/// column 0, indented here) and `rules` (all requests when empty).
pub fn policy_binding(
    name: &str,
    api: &str,
    policy: &str,
    order: Option<i64>,
    config: &str,
    rules: &[Rule],
) -> String {
    let mut out = String::new();
    head(&mut out, "PolicyBinding", name);
    let _ = writeln!(out, "  targetRef:\n    name: {api}");
    let _ = writeln!(out, "  policyRef:\n    name: {policy}");
    if let Some(order) = order {
        let _ = writeln!(out, "  order: {order}");
    }
    let _ = writeln!(out, "  config:");
    for line in config.lines() {
        let _ = writeln!(out, "    {line}");
    }
    if config.trim().is_empty() {
        out.truncate(out.len() - "  config:\n".len());
    }
    if !rules.is_empty() {
        let _ = writeln!(out, "  rules:");
        for rule in rules {
            rule.write(&mut out, "    ");
        }
    }
    out
}
