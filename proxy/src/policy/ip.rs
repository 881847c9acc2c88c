//! `ip-allowlist-flex` and `ip-blocklist-flex` when they need the request: an `ipExpression`
//! that reads a header (`X-Forwarded-For` behind a load balancer), or `rules` that select
//! some requests. On the peer address alone the loader turns them into connection rules,
//! enforced in the kernel instead.
//!
//! A header listing several addresses (`client, proxy1, proxy2`) gives its first, the
//! original client; `(attributes.headers['x-forwarded-for'] splitBy ",")[-1]` picks the hop
//! the nearest proxy saw, which the client cannot forge (the header's lines count as one
//! list). A request without the header is refused by an allowlist and let through by a
//! blocklist, which has nothing to match; a header that is there but holds no readable
//! address (`X-Forwarded-For: \x80`) is refused by both, since a client could otherwise
//! blind a blocklist. Refusals are 403.

use std::net::IpAddr;
use std::sync::Arc;

use ringwall_config::{ip_entry, IpNet, Scope};

use super::expr::{Expr, Value};
use super::{config_fields, each_item, expression, Policy, RequestCx, Verdict};

struct IpList {
    allow: bool,
    nets: Vec<IpNet>,
    /// `None`: the connection's peer address.
    source: Option<Expr>,
}

pub(super) fn build_allowlist(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    _env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    build(spec, scope, true)
}

pub(super) fn build_blocklist(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    _env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    build(spec, scope, false)
}

fn build(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    allow: bool,
) -> Option<Arc<dyn Policy>> {
    let fields = config_fields(spec, scope, &["ips", "ipExpression"])?;
    let source = match fields.get("ipExpression") {
        None => Some(None),
        Some(node) => {
            let path = fields.path_of("ipExpression");
            expression(node, &path, scope).and_then(|e| {
                if e.is_single() && !e.reads_response() {
                    Some(Some(e))
                } else {
                    scope.error(node.line, &path, "an ipExpression must name one attribute");
                    None
                }
            })
        }
    };
    let nets = scope.require(&fields, "ips").and_then(|node| {
        let path = fields.path_of("ips");
        let nets = each_item(node, &path, scope, ip_entry)?;
        if nets.is_empty() {
            scope.error(node.line, &path, "must list at least one address or CIDR");
            return None;
        }
        Some(nets)
    });
    Some(Arc::new(IpList {
        allow,
        nets: nets?,
        source: source?,
    }))
}

/// The address a request is judged by.
enum Source {
    Ip(IpAddr),
    /// The header the expression reads is not there.
    Absent,
    /// It is there, but holds no address that can be read.
    Unreadable,
}

impl IpList {
    fn address(&self, cx: &RequestCx<'_>) -> Source {
        let Some(e) = &self.source else {
            return Source::Ip(cx.peer.ip().to_canonical());
        };
        let ip = match e.eval(cx) {
            // A list of hops: the first is the original client.
            Some(Value::Str(s)) => Value::Str(s.split(',').next().unwrap_or(s)).ip(),
            Some(v) => v.ip(),
            None => None,
        };
        match ip {
            Some(ip) => Source::Ip(ip.to_canonical()),
            None if e.header_name().is_some_and(|name| {
                cx.req
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case(name))
            }) =>
            {
                Source::Unreadable
            }
            None => Source::Absent,
        }
    }

    fn listed(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

impl Policy for IpList {
    fn request(&self, cx: &mut RequestCx<'_>) -> Verdict {
        match (self.allow, self.address(cx)) {
            (true, Source::Ip(ip)) if self.listed(ip) => Verdict::Continue,
            (true, _) => Verdict::Reject(403, "IP address not allowed"),
            (false, Source::Ip(ip)) if self.listed(ip) => {
                Verdict::Reject(403, "IP address blocked")
            }
            (false, Source::Unreadable) => Verdict::Reject(403, "IP address unreadable"),
            (false, Source::Ip(_) | Source::Absent) => Verdict::Continue,
        }
    }
}
