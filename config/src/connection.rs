//! Connection-level policies: what the gateway decides from a connection's peer address alone,
//! before reading a byte, in XDP when it can and at accept otherwise.
//!
//! `ip-blocklist-flex`, `ip-allowlist-flex` and Ringwall's `connection-rate-limit` are read here
//! into a [`ConnectionPolicy`]; [`crate::snapshot`] folds an ApiInstance's into its
//! [`ConnectionRules`] and checks that whatever shares a listener (or, since the kernel keys by
//! destination port, a port) agrees on them. An IP list whose `ipExpression` reads the request
//! (a header), or whose `rules` select some requests, is enforced per request by the proxy
//! instead: see [`per_request_ip_policy`].

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;

use crate::error::{item, Scope};
use crate::node::Node;

pub(crate) const BLOCKLIST: &str = "ip-blocklist-flex";
pub(crate) const ALLOWLIST: &str = "ip-allowlist-flex";
pub(crate) const RATE_LIMIT: &str = "connection-rate-limit";

/// Whether `name` is a policy enforced on connections rather than requests.
pub(crate) fn is_connection_policy(name: &str) -> bool {
    [BLOCKLIST, ALLOWLIST, RATE_LIMIT].contains(&name)
}

/// What the gateway enforces on a connection's peer address before reading a byte, per listener.
///
/// The lists are normalised (sorted, overlapping and adjacent networks merged, IPv4-mapped IPv6
/// networks written as IPv4), so two rule sets that admit the same addresses compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionRules {
    /// The union of every `ip-blocklist-flex` binding's `ips`.
    pub deny: Vec<IpNet>,
    /// `None`: no allow list. `Some`: the addresses every `ip-allowlist-flex` binding admits.
    /// Each binding filters on its own, as in Flex, so two lists admit their intersection.
    pub allow: Option<Vec<IpNet>>,
    /// At most one `connection-rate-limit` per listener.
    pub rate: Option<ConnectionRate>,
}

/// `connection-rate-limit`: a token bucket per key, refilled at `per_second`, holding `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRate {
    pub per_second: u32,
    pub burst: u32,
    pub key: RateKey,
}

/// Which peers share a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateKey {
    /// One bucket per peer address.
    Source,
    /// One bucket per IPv4 /24 or IPv6 /64.
    Prefix,
}

// === impl ConnectionRules ===

impl ConnectionRules {
    /// No list and no rate: the listener needs no connection-level enforcement.
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_none() && self.rate.is_none()
    }

    /// Whether the deny and allow lists let `ip` connect (the rate is not considered). A denied
    /// address is refused even when it is also allowed. An IPv4-mapped IPv6 address, as a
    /// dual-stack socket reports an IPv4 peer, is checked as the IPv4 address it is.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.deny.iter().any(|net| net.contains(&ip)) {
            return false;
        }
        self.allow
            .as_ref()
            .is_none_or(|allow| allow.iter().any(|net| net.contains(&ip)))
    }

    /// These rules with `nets` added to the deny list.
    pub fn with_deny(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.deny = union(std::mem::take(&mut self.deny), nets);
        self
    }

    /// These rules behind one more allow list: only addresses on `nets` and on every
    /// earlier list are admitted.
    pub fn with_allow(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        let nets = union(Vec::new(), nets);
        self.allow = Some(match self.allow.take() {
            None => nets,
            Some(earlier) => intersection(&earlier, &nets),
        });
        self
    }

    pub fn with_rate(mut self, rate: ConnectionRate) -> Self {
        self.rate = Some(rate);
        self
    }
}

/// The addresses on both lists. Two CIDR blocks are either nested or disjoint, so the
/// intersection is the narrower block of every nested pair.
fn intersection(a: &[IpNet], b: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if x.contains(y) {
                out.push(*y);
            } else if y.contains(x) {
                out.push(*x);
            }
        }
    }
    IpNet::aggregate(&out)
}

/// `list` and `more`, normalised.
fn union(mut list: Vec<IpNet>, more: impl IntoIterator<Item = IpNet>) -> Vec<IpNet> {
    list.extend(more.into_iter().map(canonical));
    IpNet::aggregate(&list)
}

/// `::ffff:a.b.c.d/n` (n ≥ 96) as the IPv4 network it covers, since IPv4 peers are matched as
/// IPv4 (the kernel sees IPv4 packets, and [`ConnectionRules::admits`] canonicalises). Host bits
/// are cleared.
fn canonical(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (Some(v4), Some(len)) = (v6.addr().to_ipv4_mapped(), v6.prefix_len().checked_sub(96))
        {
            if let Ok(v4) = Ipv4Net::new(v4, len) {
                return IpNet::V4(v4.trunc());
            }
        }
    }
    net.trunc()
}

// === impl ConnectionRate ===

impl ConnectionRate {
    /// `per_second` connections a second per source address, with a burst of as many.
    pub fn new(per_second: u32) -> Self {
        ConnectionRate {
            per_second,
            burst: per_second,
            key: RateKey::Source,
        }
    }

    pub fn with_burst(self, burst: u32) -> Self {
        ConnectionRate { burst, ..self }
    }

    pub fn with_key(self, key: RateKey) -> Self {
        ConnectionRate { key, ..self }
    }
}

/// Whether a DataWeave `ipExpression` names the connection's peer address, the one thing a
/// connection-level policy can read: `#[attributes.remoteAddress]` (spaces inside the brackets
/// allowed). Flex's DataWeave reference lists `attributes.remoteAddress` for this, and no
/// `attributes.source.ip`.
pub fn peer_expression_is_remote_address(expr: &str) -> bool {
    dataweave_body(expr) == Some("attributes.remoteAddress")
}

/// The expression inside `#[...]`, trimmed.
fn dataweave_body(expr: &str) -> Option<&str> {
    let body = expr.trim().strip_prefix("#[")?.strip_suffix(']')?;
    Some(body.trim())
}

// === loading ===

/// A connection-level policy's `config`, checked.
#[derive(Debug)]
pub(crate) enum ConnectionPolicy {
    Deny(Vec<IpNet>),
    Allow(Vec<IpNet>),
    Rate(ConnectionRate),
}

/// Reads the `config` (at `path`) of the connection-level policy `name`; `None` when invalid
/// (reported).
pub(crate) fn parse_connection_policy(
    name: &str,
    config: &Node,
    path: &str,
    scope: &mut Scope<'_>,
) -> Option<ConnectionPolicy> {
    match name {
        BLOCKLIST => ip_list(config, path, scope).map(ConnectionPolicy::Deny),
        ALLOWLIST => ip_list(config, path, scope).map(ConnectionPolicy::Allow),
        _ => rate(config, path, scope).map(ConnectionPolicy::Rate),
    }
}

/// Whether an IP list policy needs the request: its `ipExpression` reads something other than
/// the peer address, or `rules` limit it to some requests. Such a policy is the proxy's.
pub(crate) fn per_request_ip_policy(name: &str, config: &Node, has_rules: bool) -> bool {
    if name != BLOCKLIST && name != ALLOWLIST {
        return false;
    }
    let expression = config.get("ipExpression").filter(|n| !n.is_null());
    has_rules
        || expression.is_some_and(|e| !e.as_str().is_some_and(peer_expression_is_remote_address))
}

/// `ips` and `ipExpression` of `ip-blocklist-flex` / `ip-allowlist-flex` on the peer address
/// (any other `ipExpression` made it a per-request policy).
fn ip_list(config: &Node, path: &str, scope: &mut Scope<'_>) -> Option<Vec<IpNet>> {
    let fields = scope.map(config, path, &["ips", "ipExpression"])?;

    let ips = scope.require(&fields, "ips").and_then(|node| {
        let ips_path = fields.path_of("ips");
        let items = scope.seq(node, &ips_path)?;
        if items.is_empty() {
            let message = "must list at least one address or CIDR";
            scope.error(node.line, &ips_path, message);
            return None;
        }
        let mut nets = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, entry) in items.iter().enumerate() {
            let entry_path = item(&ips_path, i);
            match ip_entry(entry, &entry_path, scope) {
                Some(net) => nets.push(net),
                None => ok = false,
            }
        }
        ok.then_some(nets)
    });
    ips
}

/// One `ips` entry, reporting at its line what was expected. Host bits beyond the prefix are
/// cleared, with a warning.
pub fn ip_entry(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<IpNet> {
    let Some(text) = node.as_str() else {
        // `- 192.160` reads as a number: likely a partial address, see `parse_ip_entry`.
        let what = "an IP address or CIDR as a string, such as `10.0.0.1` or `10.0.0.0/8`";
        scope.expected(node, path, what);
        return None;
    };
    match parse_ip_entry(text) {
        Ok((net, host_bits)) => {
            if host_bits {
                let message = format!(
                    "`{text}` has bits set past its /{} prefix; it is read as the network `{net}`",
                    net.prefix_len()
                );
                scope.warn(node.line, path, message);
            }
            Some(net)
        }
        Err(message) => {
            scope.error(node.line, path, message);
            None
        }
    }
}

/// An address (a /32 or /128) or a CIDR, truncated to its network, and whether host bits had to
/// be cleared. Flex's examples also show partial IPv4 addresses (`192.168.2`); their meaning is
/// ambiguous (a /24 prefix, or `inet_aton`'s `192.168.0.2`), so they are refused with the CIDR to
/// write instead.
fn parse_ip_entry(text: &str) -> Result<(IpNet, bool), String> {
    let (addr_text, prefix_text) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let Ok(addr) = addr_text.parse::<IpAddr>() else {
        if let Some(octets) = partial_ipv4(addr_text) {
            let written = prefix_text
                .and_then(|p| p.parse::<u8>().ok())
                .filter(|&p| p <= 32);
            let len = written.map_or(8 * octets.len(), usize::from);
            let mut full = [0u8; 4];
            full[..octets.len()].copy_from_slice(&octets);
            let network = Ipv4Addr::from(full);
            return Err(format!(
                "`{text}` is a partial address; write the network as a CIDR, such as \
                 `{network}/{len}`"
            ));
        }
        return Err(format!(
            "`{text}` is not an IP address or CIDR; expected an address such as `192.168.1.7` or \
             `2001:db8::1`, or a network such as `192.168.1.0/24` or `2001:db8::/32`"
        ));
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let Some(prefix_text) = prefix_text else {
        return Ok((IpNet::from(addr), false));
    };
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    let prefix = prefix_text
        .parse::<u8>()
        .ok()
        .filter(|&len| len <= max && prefix_text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            format!("`{text}`: the prefix length must be a number from 0 to {max} for {family}")
        })?;
    let net = IpNet::new(addr, prefix).map_err(|e| format!("`{text}`: {e}"))?;
    let network = net.trunc();
    Ok((network, network.addr() != addr))
}

/// The octets of `192.168.2` or `10`: one to three decimal octets, without leading zeros.
fn partial_ipv4(text: &str) -> Option<Vec<u8>> {
    let octets: Vec<&str> = text.split('.').collect();
    if octets.len() > 3 {
        return None;
    }
    octets
        .iter()
        .map(|o| {
            let plain = !o.is_empty()
                && o.bytes().all(|b| b.is_ascii_digit())
                && (o.len() == 1 || !o.starts_with('0'));
            plain.then(|| o.parse::<u8>().ok()).flatten()
        })
        .collect()
}

/// `connectionsPerSecond`, `burst` and `key` of `connection-rate-limit`.
fn rate(config: &Node, path: &str, scope: &mut Scope<'_>) -> Option<ConnectionRate> {
    let fields = scope.map(config, path, &["connectionsPerSecond", "burst", "key"])?;
    let positive = |field: &str, scope: &mut Scope<'_>| {
        let node = fields.get(field)?;
        let n = scope.int_in(node, &fields.path_of(field), 1..=i64::from(u32::MAX));
        Some(n.and_then(|n| u32::try_from(n).ok()))
    };
    let per_second = match scope.require(&fields, "connectionsPerSecond") {
        Some(_) => positive("connectionsPerSecond", scope).flatten(),
        None => None,
    };
    let burst = positive("burst", scope);
    let key = match fields.get("key") {
        None => Some(RateKey::Source),
        Some(node) => {
            let field = fields.path_of("key");
            match scope.str(node, &field) {
                Some("source") => Some(RateKey::Source),
                Some("prefix") => Some(RateKey::Prefix),
                Some(other) => {
                    let message = format!(
                        "unknown key `{other}`; expected `source` (one bucket per address) or \
                         `prefix` (one per IPv4 /24 or IPv6 /64)"
                    );
                    scope.error(node.line, &field, message);
                    None
                }
                None => None,
            }
        }
    };
    let per_second = per_second?;
    Some(ConnectionRate {
        per_second,
        burst: burst.unwrap_or(Some(per_second))?,
        key: key?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Value;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn entries_parse_as_networks() {
        let parse = |s: &str| parse_ip_entry(s).map(|(n, bits)| (n.to_string(), bits));
        assert_eq!(parse("10.1.2.3"), Ok(("10.1.2.3/32".into(), false)));
        assert_eq!(
            parse("192.168.1.0/24"),
            Ok(("192.168.1.0/24".into(), false))
        );
        assert_eq!(parse("192.168.1.7/24"), Ok(("192.168.1.0/24".into(), true)));
        assert_eq!(parse("0.0.0.0/0"), Ok(("0.0.0.0/0".into(), false)));
        assert_eq!(parse("2001:db8::1"), Ok(("2001:db8::1/128".into(), false)));
        assert_eq!(parse("2001:db8::/32"), Ok(("2001:db8::/32".into(), false)));
        assert_eq!(parse("2001:db8::1/64"), Ok(("2001:db8::/64".into(), true)));

        let err = |s: &str| parse_ip_entry(s).err().unwrap_or_default();
        assert_eq!(
            err("10.0.0.0/33"),
            "`10.0.0.0/33`: the prefix length must be a number from 0 to 32 for IPv4"
        );
        assert!(err("::/129").contains("from 0 to 128 for IPv6"));
        assert!(err("10.0.0.0/+8").contains("prefix length"));
        assert!(err("10.0.0.0/").contains("prefix length"));
        assert_eq!(
            err("192.168.2"),
            "`192.168.2` is a partial address; write the network as a CIDR, such as `192.168.2.0/24`"
        );
        assert!(err("10/8").contains("such as `10.0.0.0/8`"));
        assert!(err("192.168/24").contains("such as `192.168.0.0/24`"));
        for bad in [
            "10.0.0.256",
            "example.com",
            "",
            "10.0.0.1 ",
            "010.0.0.1",
            "1.2.3.4.5",
        ] {
            assert!(err(bad).contains("is not an IP address or CIDR"), "{bad}");
        }
    }

    #[test]
    fn lists_are_normalised() {
        let rules = ConnectionRules::default()
            .with_deny([net("10.0.1.0/24"), net("2001:db8::/32")])
            .with_deny([
                net("10.0.0.0/24"),
                net("10.0.0.7/32"),
                net("::ffff:1.2.3.4/128"),
            ]);
        let expected = ["1.2.3.4/32", "10.0.0.0/23", "2001:db8::/32"].map(net);
        assert_eq!(rules.deny, expected);
        let reordered = ConnectionRules::default().with_deny(expected.iter().rev().copied());
        assert_eq!(rules, reordered);
        let everything = ConnectionRules::default().with_allow([net("0.0.0.0/0"), net("::/0")]);
        assert_eq!(everything.allow, Some(vec![net("0.0.0.0/0"), net("::/0")]));
    }

    #[test]
    fn admits_checks_deny_then_allow() {
        let open = ConnectionRules::default();
        assert!(open.is_empty() && open.admits(ip("203.0.113.9")));

        let rules = ConnectionRules::default()
            .with_deny([net("10.0.0.66/32"), net("2001:db8:bad::/48")])
            .with_allow([net("10.0.0.0/24"), net("2001:db8::/32")]);
        assert!(!rules.is_empty());
        assert!(rules.admits(ip("10.0.0.1")));
        assert!(!rules.admits(ip("10.0.0.66")), "deny wins over allow");
        assert!(!rules.admits(ip("10.0.1.1")), "outside the allow list");
        assert!(rules.admits(ip("::ffff:10.0.0.1")), "mapped IPv4 is IPv4");
        assert!(!rules.admits(ip("::ffff:10.0.0.66")));
        assert!(rules.admits(ip("2001:db8::1")));
        assert!(!rules.admits(ip("2001:db8:bad::1")));
        assert!(!rules.admits(ip("2001:db9::1")));

        let deny_only = ConnectionRules::default().with_deny([net("192.0.2.0/24")]);
        assert!(!deny_only.admits(ip("192.0.2.200")));
        assert!(deny_only.admits(ip("198.51.100.1")));
        assert!(deny_only.admits(ip("::1")));

        let rate_only = ConnectionRules::default().with_rate(ConnectionRate::new(5));
        assert!(!rate_only.is_empty() && rate_only.admits(ip("192.0.2.1")));
    }

    #[test]
    fn rate_builders_and_buckets() {
        let rate = ConnectionRate::new(10);
        assert_eq!(
            (rate.per_second, rate.burst, rate.key),
            (10, 10, RateKey::Source)
        );
        let rate = rate.with_burst(40).with_key(RateKey::Prefix);
        assert_eq!(
            (rate.per_second, rate.burst, rate.key),
            (10, 40, RateKey::Prefix)
        );
    }

    #[test]
    fn only_the_peer_address_expression_is_accepted() {
        assert!(peer_expression_is_remote_address(
            "#[attributes.remoteAddress]"
        ));
        assert!(peer_expression_is_remote_address(
            " #[ attributes.remoteAddress ] "
        ));
        assert!(!peer_expression_is_remote_address(
            "attributes.remoteAddress"
        ));
        assert!(!peer_expression_is_remote_address(
            "#[attributes.localAddress]"
        ));
        assert!(!peer_expression_is_remote_address(
            "#[attributes.source.ip]"
        ));

        let config = |expr: &str| {
            let entries = vec![(
                "ipExpression".to_owned(),
                Node::new(1, Value::Str(expr.into())),
            )];
            Node::new(1, Value::Map(entries))
        };
        let empty = Node::new(1, Value::Map(Vec::new()));
        let header = config("#[attributes.headers['x-forwarded-for']]");
        let peer = config("#[attributes.remoteAddress]");
        assert!(per_request_ip_policy(BLOCKLIST, &header, false));
        assert!(per_request_ip_policy(ALLOWLIST, &header, false));
        assert!(!per_request_ip_policy(BLOCKLIST, &peer, false));
        assert!(!per_request_ip_policy(BLOCKLIST, &empty, false));
        assert!(per_request_ip_policy(BLOCKLIST, &empty, true));
        assert!(!per_request_ip_policy(RATE_LIMIT, &header, true));
    }
}
