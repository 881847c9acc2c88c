//! What says a SYN was dropped, and where: the XDP and accept counters of ringwall's admin
//! listener, the nft and iptables rule counters, and the gateway namespace's IP and TCP
//! counters (`/proc/net/snmp`, `/proc/net/netstat`). Parsers only, tested on captured output.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{Context, Result};

/// `GET /connection-rules` on ringwall's admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCounters {
    /// `xdp` or `accept`.
    pub enforced_in: String,
    pub passed: u64,
    pub dropped_deny: u64,
}

pub fn parse_rule_counters(body: &str) -> Result<RuleCounters> {
    let doc: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("not JSON: {body}"))?;
    let number = |name: &str| {
        doc[name]
            .as_u64()
            .with_context(|| format!("no `{name}` in {body}"))
    };
    Ok(RuleCounters {
        enforced_in: doc["enforced_in"].as_str().unwrap_or_default().to_owned(),
        passed: number("passed")?,
        dropped_deny: number("dropped_deny")?,
    })
}

/// A line ringwall prints on stdout that the bench acts on.
#[derive(Debug, PartialEq, Eq)]
pub enum Announcement {
    Admin(SocketAddr),
    /// `connection-rules xdp IFACE:MODE`, `connection-rules accept` or `connection-rules none`.
    Rules(String),
    Ready,
}

pub fn parse_announcement(line: &str) -> Option<Announcement> {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "admin" => rest.trim().parse().ok().map(Announcement::Admin),
        "connection-rules" => Some(Announcement::Rules(rest.trim().to_owned())),
        "ready" => Some(Announcement::Ready),
        _ => None,
    }
}

/// The packets of the first rule counter in `nft list ...` output.
pub fn nft_counter_packets(listing: &str) -> Option<u64> {
    let words: Vec<&str> = listing.split_whitespace().collect();
    words
        .windows(3)
        .find(|w| w[0] == "counter" && w[1] == "packets")
        .and_then(|w| w[2].parse().ok())
}

/// The packets of the DROP rules in `iptables -L CHAIN -v -x -n` output.
pub fn iptables_drop_packets(listing: &str) -> Option<u64> {
    let mut total = None;
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [packets, _bytes, "DROP", ..] = words.as_slice() {
            if let Ok(packets) = packets.parse::<u64>() {
                *total.get_or_insert(0) += packets;
            }
        }
    }
    total
}

/// `/proc/net/snmp` and `/proc/net/netstat` as `Group.Name → value` (`Tcp.InSegs`,
/// `TcpExt.SyncookiesSent`): each group is a line of names followed by a line of values.
pub fn parse_net_counters(text: &str) -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.windows(2) {
        let (Some((group, names)), Some((value_group, values))) =
            (pair[0].split_once(':'), pair[1].split_once(':'))
        else {
            continue;
        };
        let names_are_numbers = names
            .split_whitespace()
            .next()
            .is_some_and(|first| first.parse::<i64>().is_ok());
        if group != value_group || names_are_numbers {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            // Negative values (Tcp.MaxConn is -1) are not counters.
            if let Ok(value) = value.parse::<u64>() {
                counters.insert(format!("{group}.{name}"), value);
            }
        }
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_admin_counters() {
        let body = r#"{"enforced_in":"xdp","unit":"packets","passed":3,"dropped_deny":997,"dropped_allow":0,"dropped_rate":0}"#;
        let c = parse_rule_counters(body).unwrap();
        assert_eq!(c.enforced_in, "xdp");
        assert_eq!((c.passed, c.dropped_deny), (3, 997));
        assert!(parse_rule_counters(r#"{"error":"map gone"}"#).is_err());
        assert!(parse_rule_counters("503 not ready").is_err());
    }

    #[test]
    fn reads_ringwall_announcements() {
        assert_eq!(
            parse_announcement("admin 127.0.0.1:42511"),
            Some(Announcement::Admin("127.0.0.1:42511".parse().unwrap()))
        );
        assert_eq!(
            parse_announcement("connection-rules xdp synbw7:native"),
            Some(Announcement::Rules("xdp synbw7:native".to_owned()))
        );
        assert_eq!(
            parse_announcement("ready workers=1"),
            Some(Announcement::Ready)
        );
        assert_eq!(parse_announcement("listening 198.18.0.1:8080 edge"), None);
        assert_eq!(parse_announcement("admin nowhere"), None);
    }

    #[test]
    fn reads_the_nft_rule_counter() {
        let listing = "table inet synbench {\n\tchain prerouting {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\tip saddr 198.18.0.0/15 tcp dport 8080 counter packets 998877 bytes 57934866 drop\n\t}\n}\n";
        assert_eq!(nft_counter_packets(listing), Some(998_877));
        assert_eq!(nft_counter_packets("table inet synbench {\n}\n"), None);
    }

    #[test]
    fn reads_the_iptables_drop_counter() {
        let listing = "Chain PREROUTING (policy ACCEPT 12 packets, 720 bytes)\n    pkts      bytes target     prot opt in     out     source               destination         \n  999000 57942000 DROP       6    --  *      *       198.18.0.0/15        0.0.0.0/0            tcp dpt:8080\n";
        assert_eq!(iptables_drop_packets(listing), Some(999_000));
        let empty = "Chain PREROUTING (policy ACCEPT 0 packets, 0 bytes)\n    pkts      bytes target     prot opt in     out     source               destination         \n";
        assert_eq!(iptables_drop_packets(empty), None);
    }

    #[test]
    fn reads_snmp_and_netstat_groups() {
        let snmp = "Ip: Forwarding DefaultTTL InReceives\nIp: 2 64 2100000\n\
                    Tcp: RtoAlgorithm MaxConn InSegs\nTcp: 1 -1 2100000\n";
        let netstat = "TcpExt: SyncookiesSent SyncookiesRecv ListenDrops\nTcpExt: 2088878 0 5\n";
        let c = parse_net_counters(&format!("{snmp}{netstat}"));
        assert_eq!(c["Ip.InReceives"], 2_100_000);
        assert_eq!(c["Tcp.InSegs"], 2_100_000);
        assert_eq!(c["TcpExt.SyncookiesSent"], 2_088_878);
        assert_eq!(c["TcpExt.ListenDrops"], 5);
        assert!(!c.contains_key("Tcp.MaxConn"));
        assert!(
            !c.keys().any(|k| k.starts_with("Tcp.1")),
            "a value line is not names"
        );
    }
}
