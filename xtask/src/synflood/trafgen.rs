//! The flood: a trafgen (netsniff-ng) packet configuration for TCP SYNs from random sources,
//! and reading what trafgen says it sent. Pure, so that the frame layout is tested here.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// What every SYN of the flood looks like.
#[derive(Debug, Clone)]
pub struct SynFlood {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub dst_ip: Ipv4Addr,
    /// The first two bytes of every source address; the last two are random per packet.
    pub src_prefix: [u8; 2],
    pub dst_port: u16,
}

/// Offset of the IPv4 header in the frame (after Ethernet).
const IP_OFFSET: usize = 14;
/// IPv4 header without options.
const IP_HEADER: usize = 20;
/// TCP header with one option (MSS), as real SYNs carry: SYN cookies encode it.
const TCP_HEADER: usize = 24;

impl SynFlood {
    /// A trafgen configuration: one packet template, re-randomised for each packet sent
    /// (source address and port, IP id, sequence number), with both checksums recomputed.
    pub fn config(&self) -> String {
        let ip_len = IP_HEADER + TCP_HEADER;
        let ip_end = IP_OFFSET + IP_HEADER - 1;
        let tcp_start = IP_OFFSET + IP_HEADER;
        let [s0, s1] = self.src_prefix;
        let [d0, d1, d2, d3] = self.dst_ip.octets();
        let mut cfg = String::from("{\n");
        let _ = writeln!(
            cfg,
            "  /* Ethernet */ {}, {}, c16(0x0800),",
            bytes(&self.dst_mac),
            bytes(&self.src_mac)
        );
        let _ = writeln!(
            cfg,
            "  /* IPv4: version+IHL, TOS, length, id, DF, TTL, TCP, checksum */ \
             0x45, 0x00, c16({ip_len}), drnd(2), c16(0x4000), 64, 6, csumip({IP_OFFSET}, {ip_end}),"
        );
        let _ = writeln!(
            cfg,
            "  /* source, random in {s0}.{s1}.0.0/16 */ {s0}, {s1}, drnd(2),"
        );
        let _ = writeln!(cfg, "  /* destination */ {d0}, {d1}, {d2}, {d3},");
        let _ = writeln!(
            cfg,
            "  /* TCP: source port, destination port, seq, ack, data offset 6 words, SYN, \
             window, checksum, urgent */ drnd(2), c16({}), drnd(4), c32(0), 0x{:02x}, 0x02, \
             c16(64240), csumtcp({IP_OFFSET}, {tcp_start}), c16(0),",
            self.dst_port,
            (TCP_HEADER / 4) << 4
        );
        cfg.push_str("  /* MSS 1460 */ 0x02, 0x04, 0x05, 0xb4,\n}\n");
        cfg
    }

    /// Bytes per frame (without the Ethernet FCS).
    pub fn frame_len(&self) -> usize {
        IP_OFFSET + IP_HEADER + TCP_HEADER
    }
}

fn bytes(values: &[u8]) -> String {
    values
        .iter()
        .map(|b| format!("0x{b:02x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `N packets outgoing` line of trafgen's exit summary.
pub fn packets_sent(output: &str) -> Option<u64> {
    output.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(count), Some("packets"), Some("outgoing")) => count.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flood() -> SynFlood {
        SynFlood {
            dst_mac: [0xe6, 0x32, 0xee, 0x6a, 0x72, 0x01],
            src_mac: [0xca, 0x96, 0xb9, 0x62, 0x7a, 0x3a],
            dst_ip: Ipv4Addr::new(198, 18, 0, 1),
            src_prefix: [198, 19],
            dst_port: 8080,
        }
    }

    /// The frame trafgen builds from a configuration: each element as (offset, size, text).
    fn layout(cfg: &str) -> Vec<(usize, usize, String)> {
        let mut body = String::new();
        let mut rest = cfg;
        // Drop the /* comments */.
        while let Some(start) = rest.find("/*") {
            body.push_str(&rest[..start]);
            let end = rest[start..].find("*/").expect("closed comment");
            rest = &rest[start + end + 2..];
        }
        body.push_str(rest);
        let body = body.trim().trim_start_matches('{').trim_end_matches('}');
        // Split on the commas outside parentheses: `csumip(14, 33)` is one element.
        let mut elements = vec![String::new()];
        let mut depth = 0;
        for c in body.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    elements.push(String::new());
                    continue;
                }
                _ => {}
            }
            elements.last_mut().expect("never empty").push(c);
        }
        let mut offset = 0;
        let mut out = Vec::new();
        for element in elements.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let size = match element.split('(').next().unwrap_or_default() {
                "c16" | "csumip" | "csumtcp" => 2,
                "c32" => 4,
                "drnd" => element[5..element.len() - 1].parse().expect("drnd size"),
                _ if element.contains('(') => panic!("unexpected element {element}"),
                _ => 1,
            };
            out.push((offset, size, element.to_owned()));
            offset += size;
        }
        out
    }

    fn at(layout: &[(usize, usize, String)], offset: usize) -> &str {
        &layout
            .iter()
            .find(|(o, _, _)| *o == offset)
            .unwrap_or_else(|| panic!("no element at offset {offset}"))
            .2
    }

    #[test]
    fn the_frame_is_a_58_byte_syn_with_the_fields_where_tcp_ip_wants_them() {
        let flood = flood();
        let layout = layout(&flood.config());
        let total: usize = layout.iter().map(|(_, size, _)| size).sum();
        assert_eq!(total, 58);
        assert_eq!(flood.frame_len(), 58);
        assert_eq!(at(&layout, 0), "0xe6", "destination MAC first");
        assert_eq!(at(&layout, 6), "0xca", "then the source MAC");
        assert_eq!(at(&layout, 12), "c16(0x0800)");
        assert_eq!(at(&layout, 14), "0x45");
        assert_eq!(at(&layout, 16), "c16(44)", "IP total length: 20 + 24");
        assert_eq!(at(&layout, 23), "6", "protocol TCP");
        assert_eq!(
            at(&layout, 24),
            "csumip(14, 33)",
            "IP checksum over bytes 14..=33"
        );
        assert_eq!(at(&layout, 26), "198");
        assert_eq!(at(&layout, 27), "19");
        assert_eq!(at(&layout, 28), "drnd(2)", "random host part of the source");
        assert_eq!(at(&layout, 30), "198");
        assert_eq!(at(&layout, 33), "1");
        assert_eq!(at(&layout, 34), "drnd(2)", "random source port");
        assert_eq!(at(&layout, 36), "c16(8080)");
        assert_eq!(at(&layout, 46), "0x60", "data offset: 6 words");
        assert_eq!(at(&layout, 47), "0x02", "flags: SYN only");
        assert_eq!(at(&layout, 50), "csumtcp(14, 34)");
        assert_eq!(at(&layout, 54), "0x02", "MSS option kind");
    }

    #[test]
    fn reads_the_packet_count() {
        let output = "     1 packets to schedule\n    58 bytes in total\nRunning! Hang up with ^C!\n\n\n      \
                      400000 packets outgoing\n    23200000 bytes outgoing\n           1 sec, 532577 usec on CPU0 (400000 packets)\n";
        assert_eq!(packets_sent(output), Some(400_000));
        assert_eq!(packets_sent("Running!\n"), None);
    }
}
