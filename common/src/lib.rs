//! Types and logic shared by the XDP program and userspace. Map keys and values are
//! `#[repr(C)]`, integers and byte arrays only, with their sizes asserted at compile time,
//! so that both sides agree on every byte; `Pod` (for aya's userspace maps) comes with the
//! `user` feature. The packet parser and the token bucket live here too, written over plain
//! bytes so that they are tested on the host and run unchanged in the kernel.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod packet;
pub mod rate;

/// The XDP program's function name, which is also its name in the object file; its ELF
/// section is `xdp`.
pub const PROGRAM: &str = "ringwall_xdp";

/// Map names, as the program declares them and as userspace looks them up. The kernel keeps
/// at most 15 characters of a map's name, so every name here fits.
pub mod names {
    /// `LpmTrie<PortV4, TrieValue>`: sources refused on a port.
    pub const DENY_V4: &str = "RW_DENY_V4";
    /// `LpmTrie<PortV6, TrieValue>`.
    pub const DENY_V6: &str = "RW_DENY_V6";
    /// `LpmTrie<PortV4, TrieValue>`: on a port with [`crate::PortConfig::HAS_ALLOW_LIST`], the
    /// only sources accepted.
    pub const ALLOW_V4: &str = "RW_ALLOW_V4";
    /// `LpmTrie<PortV6, TrieValue>`.
    pub const ALLOW_V6: &str = "RW_ALLOW_V6";
    /// `HashMap<u16, PortConfig>`, keyed by the port in host byte order.
    pub const PORTS: &str = "RW_PORTS";
    /// `LruHashMap<RateKey, TokenBucket>`.
    pub const RATE: &str = "RW_RATE";
    /// `PerCpuArray<u64>`, indexed by the [`counter`](crate::counter) constants.
    pub const COUNTERS: &str = "RW_COUNTERS";
    /// `PerCpuHashMap<u16, PortCounters>`, keyed by the port in host byte order.
    pub const PORT_COUNTERS: &str = "RW_PORT_STATS";
}

/// Map capacities, shared so that userspace can size its own checks by them.
pub mod capacity {
    /// Entries in each of the four tries (they allocate on insert, so this is only a cap).
    pub const TRIE: u32 = 65_536;
    /// Listening ports the program can know (`RW_PORTS` and `RW_PORT_STATS`).
    pub const PORTS: u32 = 1024;
    /// Token buckets kept at once. The map is an LRU, so a flood of spoofed sources evicts
    /// the least recently seen buckets instead of exhausting memory or failing inserts.
    pub const RATE: u32 = 65_536;
}

/// Indexes into `RW_COUNTERS`. Every packet the program sees is counted under exactly one.
pub mod counter {
    /// TCP to a Ringwall port, let through.
    pub const PASSED: u32 = 0;
    /// TCP to a Ringwall port from a source in the port's deny trie.
    pub const DROP_DENY: u32 = 1;
    /// TCP to a Ringwall port with an allow list, from a source not in it.
    pub const DROP_ALLOW: u32 = 2;
    /// A SYN to a rate-limited Ringwall port that found its bucket empty.
    pub const DROP_RATE: u32 = 3;
    /// Not TCP over IPv4 or IPv6 (or truncated, or a later IPv4 fragment): let through.
    pub const NOT_TCP: u32 = 4;
    /// TCP to a port not in `RW_PORTS`: let through untouched.
    pub const OTHER_PORT: u32 = 5;
    /// The number of counters.
    pub const COUNT: u32 = 6;
}

/// IPv4, as [`RateKey::family`] and [`packet::Tcp::family`] store it.
pub const FAMILY_V4: u8 = 4;
/// IPv6, as [`RateKey::family`] and [`packet::Tcp::family`] store it.
pub const FAMILY_V6: u8 = 6;

/// The LPM trie prefix length of an IPv4 rule: the 16 port bits always match exactly.
pub const fn prefix_len_v4(addr_prefix: u32) -> u32 {
    16 + addr_prefix
}

/// The LPM trie prefix length of an IPv6 rule: the 16 port bits always match exactly.
pub const fn prefix_len_v6(addr_prefix: u32) -> u32 {
    16 + addr_prefix
}

/// The value of a deny or allow trie entry. The program only asks whether a prefix matches,
/// so the value carries nothing; userspace writes [`TRIE_PRESENT`]. One byte because the
/// kernel stores a trie value right after the key data (6 or 18 bytes), where a `u32` would
/// sit misaligned and aya-ebpf refuses to hand out references to it.
pub type TrieValue = u8;
/// What userspace stores in a trie entry.
pub const TRIE_PRESENT: TrieValue = 1;

/// The data of an IPv4 trie key: the destination port, then the source address, both in
/// network byte order, so that one trie holds the rules of every port and a prefix length
/// of `16 + n` matches the port and the first `n` address bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortV4 {
    /// Big-endian.
    pub port: [u8; 2],
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<PortV4>() == 6);

impl PortV4 {
    pub const fn new(port: u16, addr: [u8; 4]) -> Self {
        Self {
            port: port.to_be_bytes(),
            addr,
        }
    }
}

/// The data of an IPv6 trie key; see [`PortV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortV6 {
    /// Big-endian.
    pub port: [u8; 2],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<PortV6>() == 18);

impl PortV6 {
    pub const fn new(port: u16, addr: [u8; 16]) -> Self {
        Self {
            port: port.to_be_bytes(),
            addr,
        }
    }
}

/// What the program enforces on one listening port (`RW_PORTS`, keyed by the port in host
/// byte order). A port absent from the map is not Ringwall's: its packets pass untouched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortConfig {
    /// [`Self::HAS_ALLOW_LIST`], [`Self::RATE_LIMIT`], [`Self::RATE_BY_PREFIX`].
    pub flags: u32,
    /// New connections (SYNs) per second per source or prefix, with [`Self::RATE_LIMIT`].
    pub rate_per_sec: u32,
    /// The bucket's capacity: SYNs accepted at once after a quiet spell (0 counts as 1).
    pub burst: u32,
}
const _: () = assert!(size_of::<PortConfig>() == 12);

impl PortConfig {
    /// Only sources in the port's allow trie may connect.
    pub const HAS_ALLOW_LIST: u32 = 1;
    /// SYNs are rate limited per source.
    pub const RATE_LIMIT: u32 = 2;
    /// With [`Self::RATE_LIMIT`], per /24 (IPv4) or /64 (IPv6) instead of per address.
    pub const RATE_BY_PREFIX: u32 = 4;

    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

/// A token bucket's key in `RW_RATE`: the destination port and the source, or the source's
/// /24 or /64 with [`PortConfig::RATE_BY_PREFIX`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateKey {
    /// Big-endian.
    pub port: [u8; 2],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: u8,
    /// IPv4 in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<RateKey>() == 20);

impl RateKey {
    /// The key for `addr` (as [`packet::Tcp::src`] holds it), masked with
    /// [`rate::mask_prefix`] when `by_prefix`.
    pub const fn new(port: u16, family: u8, addr: [u8; 16], by_prefix: bool) -> Self {
        Self {
            port: port.to_be_bytes(),
            family,
            _pad: 0,
            addr: if by_prefix {
                rate::mask_prefix(family, addr)
            } else {
                addr
            },
        }
    }
}

/// A token bucket in `RW_RATE`, in thousandths of a token so that slow rates refill
/// smoothly with integer arithmetic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens × 1000.
    pub tokens_milli: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the tokens were last brought up to date.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<TokenBucket>() == 16);

/// Per-port totals in `RW_PORT_STATS` (per CPU: userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub passed: u64,
    pub drop_deny: u64,
    pub drop_allow: u64,
    pub drop_rate: u64,
}
const _: () = assert!(size_of::<PortCounters>() == 32);

// === impl Pod ===

// SAFETY: each type is `#[repr(C)]`, `Copy`, made of integers and byte arrays only, with no
// padding (the size assertions above equal the sum of the fields), so every bit pattern is a
// valid value and every byte is initialised.
#[cfg(feature = "user")]
mod pod {
    use super::*;

    unsafe impl aya::Pod for PortV4 {}
    unsafe impl aya::Pod for PortV6 {}
    unsafe impl aya::Pod for PortConfig {}
    unsafe impl aya::Pod for RateKey {}
    unsafe impl aya::Pod for TokenBucket {}
    unsafe impl aya::Pod for PortCounters {}
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use aya::maps::lpm_trie::Key;

    use super::*;

    /// The kernel's LPM key is the prefix length then the data, packed: what userspace
    /// inserts must be what the program looks up.
    #[test]
    fn trie_keys_are_packed() {
        assert_eq!(size_of::<Key<PortV4>>(), 4 + 6);
        assert_eq!(size_of::<Key<PortV6>>(), 4 + 18);
    }
}
