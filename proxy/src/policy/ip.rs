//! `ip-allowlist-flex` and `ip-blocklist-flex` when they need the request: an `ipExpression`
//! that reads a header (`X-Forwarded-For` behind a load balancer), or `rules` that select
//! some requests. On the peer address alone the loader turns them into connection rules,
//! enforced in the kernel instead.
//!
//! A header listing several addresses (`client, proxy1, proxy2`) gives its first, the
//! original client; `(attributes.headers['x-forwarded-for'] splitBy ",")[-1]` picks the hop
//! the nearest proxy saw, which the client cannot forge. A request whose address is absent
//! or unreadable is refused by an allowlist and let through by a blocklist, which has
//! nothing to match. Refusals are 403.

use std::net::IpAddr;
use std::sync::Arc;

use ringwall_config::{ip_entry, item, IpNet, Scope};

use super::expr::{Expr, Value};
use super::{config_fields, expression, Policy, RequestCx, Verdict};

struct IpList {
    allow: bool,
    nets: Vec<IpNet>,
    /// `None`: the connection's peer address.
    source: Option<Expr>,
}

pub(super) fn build_allowlist(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
) -> Option<Arc<dyn Policy>> {
    build(spec, scope, true)
}

pub(super) fn build_blocklist(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
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
        let items = scope.seq(node, &path)?;
        if items.is_empty() {
            scope.error(node.line, &path, "must list at least one address or CIDR");
            return None;
        }
        let mut nets = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, entry) in items.iter().enumerate() {
            match ip_entry(entry, &item(&path, i), scope) {
                Some(net) => nets.push(net),
                None => ok = false,
            }
        }
        ok.then_some(nets)
    });
    Some(Arc::new(IpList {
        allow,
        nets: nets?,
        source: source?,
    }))
}

impl IpList {
    fn address(&self, cx: &RequestCx<'_>) -> Option<IpAddr> {
        let ip = match &self.source {
            None => cx.peer.ip(),
            Some(e) => match e.eval(cx)? {
                // A list of hops: the first is the original client.
                Value::Str(s) => Value::Str(s.split(',').next().unwrap_or(s)).ip()?,
                v => v.ip()?,
            },
        };
        Some(ip.to_canonical())
    }

    fn listed(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

impl Policy for IpList {
    fn request(&self, cx: &mut RequestCx<'_>) -> Verdict {
        let listed = self.address(cx).map(|ip| self.listed(ip));
        match (self.allow, listed) {
            (true, Some(true)) | (false, Some(false) | None) => Verdict::Continue,
            (true, _) => Verdict::Reject(403, "IP address not allowed"),
            (false, Some(true)) => Verdict::Reject(403, "IP address blocked"),
        }
    }
}
