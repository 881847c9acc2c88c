//! Ringwall's kernel plane: an XDP program that refuses, before a socket sees them, the TCP
//! packets a listening port's connection rules forbid. Per packet, in this order:
//!
//! 1. parse (Ethernet, up to two VLAN tags, IPv4 or IPv6, TCP); anything else passes;
//! 2. the destination port's `RW_PORTS` entry; a port without one is not Ringwall's and its
//!    packets pass untouched;
//! 3. the port's deny trie: a matching source is dropped;
//! 4. with an allow list, a source outside it is dropped;
//! 5. with a rate limit, a SYN without ACK takes a token from its source's (or prefix's)
//!    bucket, and is dropped when there is none. Established flows are never rate limited.
//!
//! Everything else passes. Each packet is counted once in `RW_COUNTERS`, and packets to
//! Ringwall's ports also per port in `RW_PORT_STATS`. The parser and the token bucket are
//! `ringwall-common`'s, tested on the host.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    btf_maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
    helpers::bpf_ktime_get_ns,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use ringwall_common::{
    capacity, counter, names,
    packet::{self, Bytes, Tcp},
    prefix_len_v4, prefix_len_v6,
    rate::take_token,
    PortConfig, PortCounters, PortV4, PortV6, RateKey, TokenBucket, TrieValue, FAMILY_V4,
};

// === maps ===
// BTF-defined (`.maps`), so that libbpf's tools (bpftool, ip) load and print them as well as
// aya does. The `name`s must be literals; the assertion below holds them to
// `ringwall_common::names`.

const TRIE: usize = capacity::TRIE as usize;
const PORTS_MAX: usize = capacity::PORTS as usize;
type DenyAllowV4 = LpmTrie<PortV4, TrieValue, TRIE>;
type DenyAllowV6 = LpmTrie<PortV6, TrieValue, TRIE>;

#[btf_map(name = "RW_DENY_V4")]
static DENY_V4: DenyAllowV4 = LpmTrie::new();
#[btf_map(name = "RW_DENY_V6")]
static DENY_V6: DenyAllowV6 = LpmTrie::new();
#[btf_map(name = "RW_ALLOW_V4")]
static ALLOW_V4: DenyAllowV4 = LpmTrie::new();
#[btf_map(name = "RW_ALLOW_V6")]
static ALLOW_V6: DenyAllowV6 = LpmTrie::new();
/// Not preallocated: an update then swaps in a new element under RCU, so a packet reads one
/// version of a port's entry, never a mix of two (preallocated elements are reused at once).
#[btf_map(name = "RW_PORTS")]
static PORTS: HashMap<u16, PortConfig, PORTS_MAX, { BPF_F_NO_PREALLOC as usize }> = HashMap::new();
#[btf_map(name = "RW_RATE")]
static RATE: LruHashMap<RateKey, TokenBucket, { capacity::RATE as usize }> = LruHashMap::new();
#[btf_map(name = "RW_COUNTERS")]
static COUNTERS: PerCpuArray<u64, { counter::COUNT as usize }> = PerCpuArray::new();
#[btf_map(name = "RW_PORT_STATS")]
static PORT_STATS: PerCpuHashMap<u16, PortCounters, PORTS_MAX> = PerCpuHashMap::new();

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = assert!(
    str_eq(names::DENY_V4, "RW_DENY_V4")
        && str_eq(names::DENY_V6, "RW_DENY_V6")
        && str_eq(names::ALLOW_V4, "RW_ALLOW_V4")
        && str_eq(names::ALLOW_V6, "RW_ALLOW_V6")
        && str_eq(names::PORTS, "RW_PORTS")
        && str_eq(names::RATE, "RW_RATE")
        && str_eq(names::COUNTERS, "RW_COUNTERS")
        && str_eq(names::PORT_COUNTERS, "RW_PORT_STATS"),
    "map names differ from ringwall_common::names"
);

// === the program ===

#[xdp]
pub fn ringwall_xdp(ctx: XdpContext) -> u32 {
    let Some(tcp) = packet::parse(&Packet(&ctx)) else {
        count(counter::NOT_TCP);
        return xdp_action::XDP_PASS;
    };
    let Some(config) = PORTS.get_ptr(tcp.dst_port).map(|p| {
        // SAFETY: the element stays valid for this run (RCU; see `PORTS`).
        unsafe { *p }
    }) else {
        count(counter::OTHER_PORT);
        return xdp_action::XDP_PASS;
    };
    let verdict = verdict(&tcp, &config);
    count(verdict.counter());
    count_port(tcp.dst_port, verdict);
    verdict.action()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    DropDeny,
    DropAllow,
    DropRate,
}

impl Verdict {
    #[inline(always)]
    fn counter(self) -> u32 {
        match self {
            Self::Pass => counter::PASSED,
            Self::DropDeny => counter::DROP_DENY,
            Self::DropAllow => counter::DROP_ALLOW,
            Self::DropRate => counter::DROP_RATE,
        }
    }

    #[inline(always)]
    fn action(self) -> u32 {
        match self {
            Self::Pass => xdp_action::XDP_PASS,
            _ => xdp_action::XDP_DROP,
        }
    }
}

/// The port's rules applied to one of its packets, in the order of the module's list.
#[inline(always)]
fn verdict(tcp: &Tcp, config: &PortConfig) -> Verdict {
    if in_trie(tcp, &DENY_V4, &DENY_V6) {
        return Verdict::DropDeny;
    }
    if config.has(PortConfig::HAS_ALLOW_LIST) && !in_trie(tcp, &ALLOW_V4, &ALLOW_V6) {
        return Verdict::DropAllow;
    }
    if config.has(PortConfig::RATE_LIMIT) && tcp.syn_without_ack && !admit_syn(tcp, config) {
        return Verdict::DropRate;
    }
    Verdict::Pass
}

/// Whether the packet's port and source fall in one of the trie pair's prefixes.
#[inline(always)]
fn in_trie(tcp: &Tcp, v4: &DenyAllowV4, v6: &DenyAllowV6) -> bool {
    if tcp.family == FAMILY_V4 {
        let key = Key::new(prefix_len_v4(32), PortV4::new(tcp.dst_port, tcp.src_v4()));
        v4.get(&key).is_some()
    } else {
        let key = Key::new(prefix_len_v6(128), PortV6::new(tcp.dst_port, tcp.src));
        v6.get(&key).is_some()
    }
}

/// Takes a token from the SYN's bucket, creating the bucket full on a source's first SYN.
/// Two CPUs may update one bucket at once and lose one of the updates; see `rate`.
#[inline(always)]
fn admit_syn(tcp: &Tcp, config: &PortConfig) -> bool {
    let key = RateKey::new(
        tcp.dst_port,
        tcp.family,
        tcp.src,
        config.has(PortConfig::RATE_BY_PREFIX),
    );
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match RATE.get_ptr_mut(key) {
        // SAFETY: the value stays valid for this run; a concurrent writer only makes the
        // count approximate (accepted above).
        Some(bucket) => take_token(
            unsafe { &mut *bucket },
            now,
            config.rate_per_sec,
            config.burst,
        ),
        None => {
            let mut bucket = TokenBucket::full(now, config.burst);
            let admitted = take_token(&mut bucket, now, config.rate_per_sec, config.burst);
            // Failing to insert (never expected of an LRU map) leaves the source unlimited
            // for this packet only.
            let _ = RATE.insert(key, bucket, u64::from(BPF_ANY));
            admitted
        }
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot, and XDP programs do not preempt each other on one CPU.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn count_port(port: u16, verdict: Verdict) {
    let Some(counters) = PORT_STATS.get_ptr_mut(port) else {
        // Built field by field: `default()` then an increment compiles to a memset call,
        // which libbpf-based loaders refuse.
        let one = |wanted| u64::from(verdict == wanted);
        let counters = PortCounters {
            passed: one(Verdict::Pass),
            drop_deny: one(Verdict::DropDeny),
            drop_allow: one(Verdict::DropAllow),
            drop_rate: one(Verdict::DropRate),
        };
        // NOEXIST: if another CPU created the entry first, this one packet goes uncounted
        // per port rather than resetting that CPU's count.
        let _ = PORT_STATS.insert(port, counters, u64::from(BPF_NOEXIST));
        return;
    };
    // SAFETY: this CPU's copy of the value, as in `count`.
    let counters = unsafe { &mut *counters };
    match verdict {
        Verdict::Pass => counters.passed += 1,
        Verdict::DropDeny => counters.drop_deny += 1,
        Verdict::DropAllow => counters.drop_allow += 1,
        Verdict::DropRate => counters.drop_rate += 1,
    }
}

// === packet access ===

/// The packet as [`Bytes`], every read checked against `data_end` as the verifier requires.
struct Packet<'a>(&'a XdpContext);

impl Bytes for Packet<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data() + offset;
        if start + N > self.0.data_end() {
            return None;
        }
        // SAFETY: `start..start + N` lies inside the packet, checked just above; `[u8; N]`
        // has alignment 1.
        Some(unsafe { (start as *const [u8; N]).read() })
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
