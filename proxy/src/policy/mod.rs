//! Per-request policies: the Flex policies bound to an ApiInstance, compiled per snapshot
//! and run on every exchange.
//!
//! ```text
//! head parsed → route chosen → request phase: each policy whose rules match, lowest
//!   `order` first (cors-flex always first); the first that refuses or answers ends it
//!   → upstream → response head → response phase: the same policies, in reverse → client
//! ```
//!
//! A policy is one module with a `build` function, which reads its `config` with the loader's
//! checked accessors (so its errors read `file:line: Kind/name: field: message`), and a type
//! implementing [`Policy`]. Adding one touches its own file and one line of [`REGISTRY`].
//! A known policy missing from the registry is refused at load, never skipped.
//!
//! Policies are built once per snapshot, off the hot path, and shared by every worker; state
//! that outlives a request (counters, fetched keys) lives in the policy and must be atomic or
//! otherwise lock-free. A reload that leaves a binding's `config` unchanged keeps its
//! instance, and so its counters, unless the policy read a file ([`Policy::reusable`]). The
//! phases allocate nothing on the common path: expressions and regexes are compiled at load,
//! and headers a policy adds go into per-connection buffers.

mod basic_auth;
mod client_id;
mod cors;
pub mod expr;
mod headers;
mod ip;
mod jwt;
mod logging;
mod rate_limit;
mod spike;
mod timeouts;

use std::any::Any;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use metrics::Counter;
use ringwall_config::{ApiInstance, Diagnostics, Fields, LoadErrors, Scope, Snapshot};

use crate::http::request::Request;
use crate::tls::Session;
use expr::Attributes;

/// Reads a policy's `config` and builds it; `None` when the config is invalid (the reasons
/// are in the scope).
pub type BuildFn = fn(&ringwall_config::Policy, &mut Scope<'_>, &Env) -> Option<Arc<dyn Policy>>;

/// What the process gives the policies it builds, beyond their config.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// The client of `spec.sharedStorage`, when there is one. Building never connects.
    pub shared: Option<crate::shared::Handle>,
}

impl Env {
    /// Whether policies built with `self` and with `other` can be swapped for each other.
    fn same(&self, other: &Env) -> bool {
        match (&self.shared, &other.shared) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same(b),
            _ => false,
        }
    }
}

/// Every per-request policy Ringwall enforces, by `policyRef.name`.
pub const REGISTRY: &[(&str, BuildFn)] = &[
    ("header-injection-flex", headers::build_injection),
    ("header-removal-flex", headers::build_removal),
    ("ip-allowlist-flex", ip::build_allowlist),
    ("ip-blocklist-flex", ip::build_blocklist),
    ("http-basic-authentication-flex", basic_auth::build),
    ("client-id-enforcement", client_id::build),
    ("cors-flex", cors::build),
    ("jwt-validation-flex", jwt::build),
    ("message-logging-flex", logging::build),
    ("response-timeout-flex", timeouts::build_response),
    ("idle-timeout-flex", timeouts::build_upstream_idle),
    ("stream-idle-timeout-flex", timeouts::build_stream_idle),
    ("rate-limiting-flex", rate_limit::build),
    ("spike-control-flex", spike::build),
];

/// Most per-request policies on one ApiInstance: which of them apply is a 64-bit mask.
pub const MAX_POLICIES: usize = 64;

/// One policy's behaviour. Both phases have defaults, so a policy implements what it uses.
pub trait Policy: Send + Sync + 'static {
    /// Decides on the request before it goes upstream. Headers to add upstream or to the
    /// client's response go into `cx`.
    fn request(&self, _cx: &mut RequestCx<'_>) -> Verdict {
        Verdict::Continue
    }

    /// Sees the upstream's response head before it goes to the client, when this policy's
    /// request phase ran and let the request through.
    fn response(&self, _cx: &mut ResponseCx<'_>) {}

    /// Whether the request header `name` is dropped before the head goes upstream.
    fn strips_request_header(&self, _name: &str) -> bool {
        false
    }

    /// Whether the response header `name` is dropped before the head goes to the client.
    fn strips_response_header(&self, _name: &str) -> bool {
        false
    }

    /// Whether a reload that leaves this binding's `config` unchanged may keep this instance.
    /// A policy that read something its config only names (a file) says no, so that the
    /// reload reads it again.
    fn reusable(&self) -> bool {
        true
    }
}

/// What a policy decided about a request.
pub enum Verdict {
    Continue,
    /// Refuse with `status`; the reason is the body and must not leak secrets. Headers the
    /// policy put in [`RequestCx::client_headers`] go with it.
    Reject(u16, &'static str),
    /// The gateway answers with `status` and no body: not a refusal (a CORS preflight).
    Answer(u16),
    /// Ask this policy again after `after` (at least a millisecond; spike control). `hold` is
    /// kept while the request waits and until the policy's next answer (a new hold replaces
    /// it only then), so a policy can count the requests it holds without a gap. A policy
    /// adds no headers when it returns this (it will be asked again); a client that goes away
    /// is noticed when the waits end.
    Retry {
        after: Duration,
        hold: Option<Hold>,
    },
}

/// Something a policy keeps alive while a request waits; dropping it releases it.
pub type Hold = Box<dyn Any>;

/// Lines of `Name: value\r\n` to add to a head, in a buffer the connection reuses.
#[derive(Default)]
pub struct HeaderLines(BytesMut);

impl HeaderLines {
    pub fn add(&mut self, name: &str, value: &[u8]) {
        self.0.put_slice(name.as_bytes());
        self.0.put_slice(b": ");
        self.0.put_slice(value);
        self.0.put_slice(b"\r\n");
    }

    /// A value that formats itself (a number, an address).
    pub fn add_display(&mut self, name: &str, value: impl fmt::Display) {
        use std::fmt::Write;
        self.0.put_slice(name.as_bytes());
        self.0.put_slice(b": ");
        // BytesMut's fmt::Write never fails.
        let _ = write!(self.0, "{value}");
        self.0.put_slice(b"\r\n");
    }

    /// A value an expression writes.
    pub fn add_expr(&mut self, name: &str, value: &expr::Expr, attrs: &impl Attributes) {
        self.0.put_slice(name.as_bytes());
        self.0.put_slice(b": ");
        value.write(attrs, &mut self.0);
        self.0.put_slice(b"\r\n");
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a line for `name` was added (case-insensitively).
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The value of the first line for `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0[..]
            .split(|&b| b == b'\n')
            .find_map(|line| value_of(line, name))
            .map(|v| v.strip_suffix(b"\r").unwrap_or(v))
    }

    /// Drops every line for `name`, in place.
    pub fn remove(&mut self, name: &str) {
        let mut kept = 0;
        let mut start = 0;
        while start < self.0.len() {
            let end = self.0[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.0.len(), |i| start + i + 1);
            if value_of(&self.0[start..end], name).is_none() {
                self.0.copy_within(start..end, kept);
                kept += end - start;
            }
            start = end;
        }
        self.0.truncate(kept);
    }
}

/// The value of `line` (`Name: value`) when it is a line for `name`.
fn value_of<'l>(line: &'l [u8], name: &str) -> Option<&'l [u8]> {
    let rest = line.get(name.len()..)?;
    (line[..name.len()].eq_ignore_ascii_case(name.as_bytes()) && rest.first() == Some(&b':'))
        .then(|| rest[1..].trim_ascii_start())
}

/// What a policy may change about how this one request is served.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Overrides {
    /// `response-timeout-flex`: how long the upstream has to start its response.
    pub response_timeout: Option<Duration>,
    /// `stream-idle-timeout-flex`: how long either stream may stay silent.
    pub stream_idle: Option<Duration>,
    /// `idle-timeout-flex`: how long a pooled upstream connection may have been idle to be
    /// reused for this request.
    pub upstream_idle: Option<Duration>,
}

/// The request as the request phase sees it.
pub struct RequestCx<'a> {
    pub req: &'a Request<'a, 'a>,
    pub peer: SocketAddr,
    /// The client's TLS session, on a TLS listener.
    pub tls: Option<&'a Session>,
    /// How many times this policy was asked again after a [`Verdict::Retry`].
    pub attempt: u32,
    /// Added to the head sent upstream.
    pub upstream_headers: &'a mut HeaderLines,
    /// Added to the response the client gets, forwarded or the gateway's own.
    pub client_headers: &'a mut HeaderLines,
    pub overrides: &'a mut Overrides,
}

impl Attributes for RequestCx<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.req.header(name)
    }
    fn header_lines<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8])) {
        for h in self.req.headers {
            if h.name.eq_ignore_ascii_case(name) {
                each(h.value);
            }
        }
    }
    fn method(&self) -> Option<&str> {
        Some(self.req.method)
    }
    fn request_path(&self) -> Option<&str> {
        Some(self.req.path)
    }
    fn query(&self) -> Option<&str> {
        self.req.target.split_once('?').map(|(_, q)| q)
    }
    fn remote_ip(&self) -> Option<IpAddr> {
        Some(self.peer.ip())
    }
    fn client_subject(&self) -> Option<&str> {
        self.tls?.client_subject.as_deref()
    }
}

/// The upstream's response head as the response phase sees it.
pub struct ResponseCx<'a> {
    pub status: u16,
    pub headers: &'a [httparse::Header<'a>],
    pub peer: SocketAddr,
    /// The client's TLS session, on a TLS listener.
    pub tls: Option<&'a Session>,
    /// Added to the head the client gets.
    pub client_headers: &'a mut HeaderLines,
}

impl Attributes for ResponseCx<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    }
    fn header_lines<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8])) {
        for h in self.headers {
            if h.name.eq_ignore_ascii_case(name) {
                each(h.value);
            }
        }
    }
    fn remote_ip(&self) -> Option<IpAddr> {
        Some(self.peer.ip())
    }
    fn client_subject(&self) -> Option<&str> {
        self.tls?.client_subject.as_deref()
    }
    fn status_code(&self) -> Option<u16> {
        Some(self.status)
    }
}

// === The chain of one ApiInstance ===

/// The compiled policies of every ApiInstance, in the snapshot's order.
#[derive(Default)]
pub struct Policies {
    pub chains: Vec<Chain>,
    /// Valid but probably unintended settings the policies noticed (a field ignored without
    /// the one that enables it).
    pub warnings: Vec<ringwall_config::ConfigError>,
    /// What they were built with: instances are kept across a reload only with the same.
    env: Env,
}

/// One ApiInstance's policies, in the order they run; entry `i` is `api.policies[i]`.
#[derive(Default)]
pub struct Chain {
    api: String,
    entries: Vec<Entry>,
}

struct Entry {
    name: String,
    binding: String,
    config: ringwall_config::Node,
    policy: Arc<dyn Policy>,
    passed: Counter,
    refused: Counter,
    answered: Counter,
}

/// Where the request phase stopped.
pub enum Stop {
    /// Every applicable policy let the request through.
    Passed,
    /// Policy `index` decided otherwise (never `Continue`).
    At(usize, Verdict),
}

impl Chain {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Which policies apply to the request, as a mask of entry indices. Arguments as for
    /// [`ringwall_config::Rule::matches`].
    pub fn applicable<'h>(
        &self,
        api: &ApiInstance,
        method: &str,
        path: &str,
        host: Option<&str>,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> u64 {
        let mut mask = 0;
        for (i, spec) in api.policies.iter().enumerate().take(self.entries.len()) {
            if spec.applies(method, path, host, &header) {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// Runs the request phase of the applicable policies from entry `from` on.
    pub fn request(&self, applied: u64, from: usize, cx: &mut RequestCx<'_>) -> Stop {
        for (i, entry) in self.entries.iter().enumerate().skip(from) {
            if applied & (1 << i) == 0 {
                continue;
            }
            match entry.policy.request(cx) {
                Verdict::Continue => entry.passed.increment(1),
                v @ Verdict::Reject(..) => {
                    entry.refused.increment(1);
                    return Stop::At(i, v);
                }
                v @ Verdict::Answer(_) => {
                    entry.answered.increment(1);
                    return Stop::At(i, v);
                }
                v @ Verdict::Retry { .. } => return Stop::At(i, v),
            }
            cx.attempt = 0;
        }
        Stop::Passed
    }

    /// Runs the response phase of the policies in `applied` that ran before entry `until`,
    /// last first.
    pub fn response(&self, applied: u64, until: usize, cx: &mut ResponseCx<'_>) {
        for (i, entry) in self.entries.iter().enumerate().take(until).rev() {
            if applied & (1 << i) != 0 {
                entry.policy.response(cx);
            }
        }
    }

    pub fn strips_request_header(&self, applied: u64, name: &str) -> bool {
        self.any(applied, |p| p.strips_request_header(name))
    }

    pub fn strips_response_header(&self, applied: u64, name: &str) -> bool {
        self.any(applied, |p| p.strips_response_header(name))
    }

    fn any(&self, applied: u64, f: impl Fn(&dyn Policy) -> bool) -> bool {
        applied != 0
            && self
                .entries
                .iter()
                .enumerate()
                .any(|(i, e)| applied & (1 << i) != 0 && f(e.policy.as_ref()))
    }

    /// `policyRef.name` of entry `i`, for the access log.
    pub fn name(&self, i: usize) -> Option<&str> {
        self.entries.get(i).map(|e| e.name.as_str())
    }
}

// === Building ===

/// Builds every ApiInstance's chain. A binding whose `config` is unchanged since `previous`
/// keeps its instance (when [`Policy::reusable`], and `env` is the same), so counters and
/// fetched keys survive the reload.
pub fn compile(
    snapshot: &Snapshot,
    previous: Option<&Policies>,
    env: &Env,
) -> Result<Policies, LoadErrors> {
    let mut diag = Diagnostics::default();
    let mut chains = Vec::with_capacity(snapshot.apis.len());
    let previous = previous.filter(|p| p.env.same(env));
    for api in &snapshot.apis {
        let old = previous.and_then(|p| p.chains.iter().find(|c| c.api == api.name));
        if api.policies.len() > MAX_POLICIES {
            let first = &api.policies[MAX_POLICIES];
            let message = format!(
                "ApiInstance `{}` has {} per-request policies; at most {MAX_POLICIES} are supported",
                api.name,
                api.policies.len()
            );
            Scope::for_policy(&mut diag, first).error(first.line, "", message);
            continue;
        }
        let mut entries = Vec::with_capacity(api.policies.len());
        for spec in &api.policies {
            let kept = old.and_then(|c| {
                c.entries.iter().find(|e| {
                    e.binding == spec.binding
                        && e.name == spec.name
                        && e.config == spec.config
                        && e.policy.reusable()
                })
            });
            let policy = match kept {
                Some(e) => Some(Arc::clone(&e.policy)),
                None => build(spec, &mut diag, env),
            };
            if let Some(policy) = policy {
                entries.push(entry(&api.name, spec, policy));
            }
        }
        chains.push(Chain {
            api: api.name.clone(),
            entries,
        });
    }
    for service in &snapshot.services {
        // The circuit breaker is the gateway's (see `crate::breaker`), not a request policy.
        for spec in service
            .policies
            .iter()
            .filter(|p| p.name != crate::breaker::NAME)
        {
            let message = format!(
                "policy `{}` on a Service is recognised but not enforced by this version of \
                 Ringwall yet",
                spec.name
            );
            Scope::for_policy(&mut diag, spec).error(spec.line, "spec.policyRef.name", message);
        }
    }
    if diag.errors.is_empty() {
        Ok(Policies {
            chains,
            warnings: diag.warnings,
            env: env.clone(),
        })
    } else {
        Err(LoadErrors(diag.errors))
    }
}

fn build(
    spec: &ringwall_config::Policy,
    diag: &mut Diagnostics,
    env: &Env,
) -> Option<Arc<dyn Policy>> {
    let mut scope = Scope::for_policy(diag, spec);
    match REGISTRY.iter().find(|(name, _)| *name == spec.name) {
        Some((_, build)) => build(spec, &mut scope, env),
        None => {
            let message = format!(
                "policy `{}` is recognised but not enforced by this version of Ringwall yet",
                spec.name
            );
            scope.error(spec.line, &name_field(spec), message);
            None
        }
    }
}

/// Where `policyRef.name` is: the config path's sibling.
fn name_field(spec: &ringwall_config::Policy) -> String {
    let parent = spec
        .config_path
        .strip_suffix("config")
        .unwrap_or("spec.")
        .to_owned();
    format!("{parent}policyRef.name")
}

fn entry(api: &str, spec: &ringwall_config::Policy, policy: Arc<dyn Policy>) -> Entry {
    let counter = |decision: &'static str| {
        metrics::counter!(crate::metrics::POLICY_DECISIONS, "api" => api.to_owned(),
            "policy" => spec.name.clone(), "binding" => spec.binding.clone(),
            "decision" => decision)
    };
    Entry {
        name: spec.name.clone(),
        binding: spec.binding.clone(),
        config: spec.config.clone(),
        policy,
        passed: counter("pass"),
        refused: counter("reject"),
        answered: counter("answer"),
    }
}

/// The root of a policy's `config` as a mapping with only `accepted` keys.
pub fn config_fields<'p>(
    spec: &'p ringwall_config::Policy,
    scope: &mut Scope<'_>,
    accepted: &[&str],
) -> Option<Fields<'p>> {
    scope.map(&spec.config, &spec.config_path, accepted)
}

/// The boolean under `key`, `default` when absent; `None` when it is not a boolean
/// (reported).
pub fn optional_bool(
    fields: &Fields<'_>,
    key: &str,
    default: bool,
    scope: &mut Scope<'_>,
) -> Option<bool> {
    match fields.get(key) {
        None => Some(default),
        Some(node) => scope.bool(node, &fields.path_of(key)),
    }
}

/// Every item of the sequence `node` (at `path`), each read by `read`; `None` when `node` is
/// not a sequence or an item is invalid (each item's errors are reported).
pub fn each_item<T>(
    node: &ringwall_config::Node,
    path: &str,
    scope: &mut Scope<'_>,
    mut read: impl FnMut(&ringwall_config::Node, &str, &mut Scope<'_>) -> Option<T>,
) -> Option<Vec<T>> {
    let items = scope.seq(node, path)?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, entry) in items.iter().enumerate() {
        match read(entry, &ringwall_config::item(path, i), scope) {
            Some(value) => out.push(value),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// The list under `key` as [`each_item`] reads it; empty when absent.
pub fn optional_list<T>(
    fields: &Fields<'_>,
    key: &str,
    scope: &mut Scope<'_>,
    read: impl FnMut(&ringwall_config::Node, &str, &mut Scope<'_>) -> Option<T>,
) -> Option<Vec<T>> {
    match fields.get(key) {
        None => Some(Vec::new()),
        Some(node) => each_item(node, &fields.path_of(key), scope, read),
    }
}

/// Compiles the expression in `node`, reporting its error at the node.
pub fn expression(
    node: &ringwall_config::Node,
    path: &str,
    scope: &mut Scope<'_>,
) -> Option<expr::Expr> {
    let text = scope.str(node, path)?;
    match expr::Expr::parse(text) {
        Ok(e) => Some(e),
        Err(message) => {
            scope.error(node.line, path, message);
            None
        }
    }
}

/// A header name as written in config: an HTTP token.
pub fn header_name<'n>(
    node: &'n ringwall_config::Node,
    path: &str,
    scope: &mut Scope<'_>,
) -> Option<&'n str> {
    let name = scope.str(node, path)?;
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        scope.error(
            node.line,
            path,
            format!("`{name}` is not a valid header name"),
        );
        return None;
    }
    Some(name)
}

/// A header value as written in config: no control characters but tab.
pub fn valid_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests;
