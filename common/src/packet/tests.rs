//! The parser on crafted frames: each test builds the bytes a NIC would hand over.

use std::vec::Vec;

use super::*;
use crate::{FAMILY_V4, FAMILY_V6};

const SRC_V4: [u8; 4] = [192, 0, 2, 7];
const SRC_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42,
];
const SYN: u8 = TCP_SYN;
const SYN_ACK: u8 = TCP_SYN | TCP_ACK;
const ACK: u8 = TCP_ACK;

/// Destination and source MACs, the VLAN tags (TPID, VLAN id), then the EtherType.
fn ethernet(vlans: &[u16], ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::from([0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
    for &tpid in vlans {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&100u16.to_be_bytes());
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

fn ipv4(protocol: u8, options: &[u8], fragment: u16) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = u8::try_from((IPV4_MIN_HLEN + options.len()) / 4).unwrap();
    let mut header = Vec::from([0x40 | ihl, 0, 0, 60, 0, 1]);
    header.extend_from_slice(&fragment.to_be_bytes());
    header.extend_from_slice(&[64, protocol, 0, 0]);
    header.extend_from_slice(&SRC_V4);
    header.extend_from_slice(&[198, 51, 100, 1]);
    header.extend_from_slice(options);
    header
}

fn ipv6(next_header: u8) -> Vec<u8> {
    let mut header = Vec::from([0x60, 0, 0, 0, 0, 20, next_header, 64]);
    header.extend_from_slice(&SRC_V6);
    header.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    header
}

fn tcp(dst_port: u16, flags: u8) -> Vec<u8> {
    let mut header = Vec::from(54321u16.to_be_bytes());
    header.extend_from_slice(&dst_port.to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    header
}

fn frame(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn v4_src() -> [u8; 16] {
    let mut src = [0; 16];
    src[..4].copy_from_slice(&SRC_V4);
    src
}

#[test]
fn ipv4_syn() {
    let packet = frame(&[
        ethernet(&[], ETH_P_IPV4),
        ipv4(IPPROTO_TCP, &[], 0),
        tcp(8081, SYN),
    ]);
    let parsed = parse(packet.as_slice()).unwrap();
    assert_eq!(
        parsed,
        Tcp {
            family: FAMILY_V4,
            src: v4_src(),
            dst_port: 8081,
            syn_without_ack: true,
        }
    );
    assert_eq!(parsed.src_v4(), SRC_V4);
}

#[test]
fn syn_ack_and_ack_are_not_connection_attempts() {
    for flags in [SYN_ACK, ACK, 0x18 /* PSH|ACK */, 0x01 /* FIN */] {
        let packet = frame(&[
            ethernet(&[], ETH_P_IPV4),
            ipv4(IPPROTO_TCP, &[], 0),
            tcp(443, flags),
        ]);
        let parsed = parse(packet.as_slice()).unwrap();
        assert!(!parsed.syn_without_ack, "flags {flags:#x}");
        assert_eq!(parsed.dst_port, 443);
    }
    // Other flags beside SYN (ECE|CWR, as ECN-capable clients send) do not matter.
    let packet = frame(&[
        ethernet(&[], ETH_P_IPV4),
        ipv4(IPPROTO_TCP, &[], 0),
        tcp(443, SYN | 0xc0),
    ]);
    assert!(parse(packet.as_slice()).unwrap().syn_without_ack);
}

#[test]
fn ipv4_options_move_the_tcp_header() {
    // IHL 8: 12 bytes of options (NOPs and an end of list).
    let options = [1u8, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0];
    let packet = frame(&[
        ethernet(&[], ETH_P_IPV4),
        ipv4(IPPROTO_TCP, &options, 0),
        tcp(9000, SYN),
    ]);
    let parsed = parse(packet.as_slice()).unwrap();
    assert_eq!(parsed.dst_port, 9000);
    assert!(parsed.syn_without_ack);
    // The longest header, IHL 15.
    let packet = frame(&[
        ethernet(&[], ETH_P_IPV4),
        ipv4(IPPROTO_TCP, &[1; 40], 0),
        tcp(9001, ACK),
    ]);
    assert_eq!(parse(packet.as_slice()).unwrap().dst_port, 9001);
}

#[test]
fn ipv4_header_shorter_than_its_minimum_is_not_parsed() {
    let mut packet = frame(&[
        ethernet(&[], ETH_P_IPV4),
        ipv4(IPPROTO_TCP, &[], 0),
        tcp(80, SYN),
    ]);
    packet[ETH_HLEN] = 0x44; // IHL 4: 16 bytes, below the minimum
    assert_eq!(parse(packet.as_slice()), None);
}

#[test]
fn ipv4_fragments() {
    // The first fragment (More Fragments set, offset 0) carries the TCP header.
    let first = frame(&[
        ethernet(&[], ETH_P_IPV4),
        ipv4(IPPROTO_TCP, &[], 0x2000),
        tcp(80, SYN),
    ]);
    assert_eq!(parse(first.as_slice()).unwrap().dst_port, 80);
    // A later one starts with payload, not a header: it is not read as TCP.
    let later = frame(&[
        ethernet(&[], ETH_P_IPV4),
        ipv4(IPPROTO_TCP, &[], 0x2003),
        tcp(80, SYN),
    ]);
    assert_eq!(parse(later.as_slice()), None);
}

#[test]
fn vlan_tags() {
    for tags in [
        &[ETH_P_8021Q][..],
        &[ETH_P_8021AD, ETH_P_8021Q],
        &[ETH_P_8021Q, ETH_P_8021Q],
    ] {
        let packet = frame(&[
            ethernet(tags, ETH_P_IPV4),
            ipv4(IPPROTO_TCP, &[4, 4, 0, 0], 0),
            tcp(8443, SYN),
        ]);
        let parsed = parse(packet.as_slice()).unwrap();
        assert_eq!((parsed.src, parsed.dst_port), (v4_src(), 8443), "{tags:x?}");
    }
    let packet = frame(&[
        ethernet(&[ETH_P_8021AD], ETH_P_IPV6),
        ipv6(IPPROTO_TCP),
        tcp(8443, SYN),
    ]);
    assert_eq!(parse(packet.as_slice()).unwrap().src, SRC_V6);
}

#[test]
fn three_vlan_tags_are_not_walked() {
    let packet = frame(&[
        ethernet(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q], ETH_P_IPV4),
        ipv4(IPPROTO_TCP, &[], 0),
        tcp(80, SYN),
    ]);
    assert_eq!(parse(packet.as_slice()), None);
}

#[test]
fn ipv6_syn() {
    let packet = frame(&[ethernet(&[], ETH_P_IPV6), ipv6(IPPROTO_TCP), tcp(8081, SYN)]);
    assert_eq!(
        parse(packet.as_slice()),
        Some(Tcp {
            family: FAMILY_V6,
            src: SRC_V6,
            dst_port: 8081,
            syn_without_ack: true,
        })
    );
    let packet = frame(&[
        ethernet(&[], ETH_P_IPV6),
        ipv6(IPPROTO_TCP),
        tcp(8081, SYN_ACK),
    ]);
    assert!(!parse(packet.as_slice()).unwrap().syn_without_ack);
}

#[test]
fn not_tcp() {
    const UDP: u8 = 17;
    const HOP_BY_HOP: u8 = 0;
    let cases = [
        frame(&[ethernet(&[], ETH_P_IPV4), ipv4(UDP, &[], 0), tcp(53, SYN)]),
        frame(&[ethernet(&[], ETH_P_IPV6), ipv6(UDP), tcp(53, SYN)]),
        // Extension headers are not walked.
        frame(&[ethernet(&[], ETH_P_IPV6), ipv6(HOP_BY_HOP), tcp(80, SYN)]),
        // ARP.
        frame(&[ethernet(&[], 0x0806), [0; 28].to_vec()]),
        // An IPv6 header behind the IPv4 EtherType, and the other way round.
        frame(&[ethernet(&[], ETH_P_IPV4), ipv6(IPPROTO_TCP), tcp(80, SYN)]),
        frame(&[
            ethernet(&[], ETH_P_IPV6),
            ipv4(IPPROTO_TCP, &[], 0),
            [0; 40].to_vec(),
        ]),
    ];
    for packet in &cases {
        assert_eq!(parse(packet.as_slice()), None, "{packet:x?}");
    }
}

#[test]
fn truncated_packets_are_not_parsed() {
    let whole = [
        frame(&[
            ethernet(&[ETH_P_8021Q], ETH_P_IPV4),
            ipv4(IPPROTO_TCP, &[1; 8], 0),
            tcp(80, SYN),
        ]),
        frame(&[
            ethernet(&[ETH_P_8021AD, ETH_P_8021Q], ETH_P_IPV6),
            ipv6(IPPROTO_TCP),
            tcp(80, SYN),
        ]),
    ];
    for packet in &whole {
        assert!(parse(packet.as_slice()).is_some());
        for len in 0..packet.len() {
            assert_eq!(parse(&packet[..len]), None, "cut at {len}");
        }
    }
}

#[test]
fn slice_reads_stop_at_the_end() {
    let bytes = [1u8, 2, 3];
    assert_eq!(bytes.read::<2>(1), Some([2, 3]));
    assert_eq!(bytes.read::<2>(2), None);
    assert_eq!(bytes.read::<1>(usize::MAX), None);
}
