//! `header-injection-flex` and `header-removal-flex`: headers added to or dropped from the
//! request on its way upstream (`inboundHeaders`) and the response on its way to the client
//! (`outboundHeaders`).
//!
//! Injected values may be expressions (`#[attributes.headers['x-id']]`); one whose
//! attribute is absent adds nothing. Inbound expressions read the request; outbound ones read
//! the response. Framing and connection-management headers cannot be injected or removed:
//! they are the gateway's to decide.

use std::sync::Arc;

use ringwall_config::{Node, Scope};

use super::expr::{Attributes, Expr};
use super::{
    config_fields, expression, header_name, optional_list, valid_header_value, Policy, RequestCx,
    ResponseCx, Verdict,
};

/// Headers the gateway sets itself: framing (a policy touching them could desynchronise
/// message boundaries) and the `X-Forwarded-*` fields it writes from what it saw.
const RESERVED: [&str; 12] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "host",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

struct Injection {
    inbound: Vec<(String, Expr)>,
    outbound: Vec<(String, Expr)>,
}

struct Removal {
    /// Lower-cased.
    inbound: Vec<String>,
    outbound: Vec<String>,
}

pub(super) fn build_injection(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    _env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    let fields = config_fields(spec, scope, &["inboundHeaders", "outboundHeaders"])?;
    let inbound = optional_list(&fields, "inboundHeaders", scope, injected);
    let outbound = optional_list(&fields, "outboundHeaders", scope, injected);
    let (inbound, outbound) = (inbound?, outbound?);
    if inbound.iter().any(|(_, e)| e.reads_response()) {
        let message = "inbound headers are added before there is a response: their values \
                       cannot read attributes.statusCode";
        scope.error(spec.line, &fields.path_of("inboundHeaders"), message);
        return None;
    }
    Some(Arc::new(Injection { inbound, outbound }))
}

/// One `{key, value}` entry.
fn injected(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<(String, Expr)> {
    let fields = scope.map(node, path, &["key", "value"])?;
    let name = scope
        .require(&fields, "key")
        .and_then(|n| changeable(n, &fields.path_of("key"), scope));
    let value = scope.require(&fields, "value").and_then(|n| {
        let path = fields.path_of("value");
        let text = scope.str(n, &path)?;
        if !valid_header_value(text) {
            scope.error(
                n.line,
                &path,
                "a header value cannot hold control characters",
            );
            return None;
        }
        expression(n, &path, scope)
    });
    Some((name?, value?))
}

/// A header name a policy may touch.
fn changeable(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<String> {
    let name = header_name(node, path, scope)?;
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        let message = format!("`{name}` is managed by the gateway and cannot be changed here");
        scope.error(node.line, path, message);
        return None;
    }
    Some(name.to_owned())
}

pub(super) fn build_removal(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    _env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    let fields = config_fields(spec, scope, &["inboundHeaders", "outboundHeaders"])?;
    let lower = |node: &Node, path: &str, scope: &mut Scope<'_>| {
        changeable(node, path, scope).map(|name| name.to_ascii_lowercase())
    };
    let inbound = optional_list(&fields, "inboundHeaders", scope, lower);
    let outbound = optional_list(&fields, "outboundHeaders", scope, lower);
    Some(Arc::new(Removal {
        inbound: inbound?,
        outbound: outbound?,
    }))
}

/// Writes each header whose value is present.
fn inject(pairs: &[(String, Expr)], attrs: &impl Attributes, out: &mut super::HeaderLines) {
    for (name, value) in pairs {
        // A lone attribute that is absent adds nothing; a joined value adds what it has.
        if !value.is_single() || value.eval(attrs).is_some() {
            out.add_expr(name, value, attrs);
        }
    }
}

impl Policy for Injection {
    fn request(&self, cx: &mut RequestCx<'_>) -> Verdict {
        if !self.inbound.is_empty() {
            let mut lines = std::mem::take(cx.upstream_headers);
            inject(&self.inbound, cx, &mut lines);
            *cx.upstream_headers = lines;
        }
        Verdict::Continue
    }

    fn response(&self, cx: &mut ResponseCx<'_>) {
        if !self.outbound.is_empty() {
            let mut lines = std::mem::take(cx.client_headers);
            inject(&self.outbound, cx, &mut lines);
            *cx.client_headers = lines;
        }
    }

    /// An injected header replaces the client's own, so the upstream sees one value.
    fn strips_request_header(&self, name: &str) -> bool {
        self.inbound
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    fn strips_response_header(&self, name: &str) -> bool {
        self.outbound
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

impl Policy for Removal {
    fn strips_request_header(&self, name: &str) -> bool {
        self.inbound.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    fn strips_response_header(&self, name: &str) -> bool {
        self.outbound.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}
