//! The header walk the XDP program makes: Ethernet, up to two VLAN tags, IPv4 (with
//! options) or IPv6, then TCP. It reads through [`Bytes`], which a slice implements for tests
//! and the XDP program implements with the bounds checks the verifier wants, so the same
//! layout logic runs in both places. Anything it does not recognise is `None`: the program
//! lets such packets through for the kernel to judge.

/// Reads fixed-size runs of bytes at an offset into a packet.
pub trait Bytes {
    /// The `N` bytes at `offset`, or `None` if the packet ends before `offset + N`.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Bytes for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
/// VLAN tags walked before giving up (802.1ad QinQ is two).
pub const MAX_VLAN_TAGS: usize = 2;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const IPPROTO_TCP: u8 = 6;
pub const TCP_MIN_HLEN: usize = 20;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// What the program needs of a TCP segment. Not a map type: it never crosses to userspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp {
    /// [`FAMILY_V4`](crate::FAMILY_V4) or [`FAMILY_V6`](crate::FAMILY_V6).
    pub family: u8,
    /// The source address, IPv4 in the first 4 bytes and the rest zero.
    pub src: [u8; 16],
    /// Host byte order.
    pub dst_port: u16,
    /// A connection attempt: SYN set, ACK clear.
    pub syn_without_ack: bool,
}

impl Tcp {
    /// The IPv4 source address (meaningful when `family` is IPv4).
    pub fn src_v4(&self) -> [u8; 4] {
        [self.src[0], self.src[1], self.src[2], self.src[3]]
    }
}

/// Walks an Ethernet frame to its TCP header. `None` for anything but a complete IPv4 or
/// IPv6 header followed by at least a minimal TCP header: other EtherTypes, more than two
/// VLAN tags, other protocols (IPv6 extension headers included), later IPv4 fragments (they
/// carry no TCP header) and truncated packets.
#[inline(always)]
pub fn parse<B: Bytes + ?Sized>(packet: &B) -> Option<Tcp> {
    let mut ethertype = u16::from_be_bytes(packet.read(12)?);
    let mut l3 = ETH_HLEN;
    // Unrolled by hand rather than a loop: the verifier then sees straight-line code.
    if is_vlan(ethertype) {
        ethertype = u16::from_be_bytes(packet.read(l3 + 2)?);
        l3 += VLAN_HLEN;
        if is_vlan(ethertype) {
            ethertype = u16::from_be_bytes(packet.read(l3 + 2)?);
            l3 += VLAN_HLEN;
        }
    }
    let (family, src, l4) = match ethertype {
        ETH_P_IPV4 => ipv4(packet, l3)?,
        ETH_P_IPV6 => ipv6(packet, l3)?,
        _ => return None,
    };
    let tcp: [u8; TCP_MIN_HLEN] = packet.read(l4)?;
    let flags = tcp[13];
    Some(Tcp {
        family,
        src,
        dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        syn_without_ack: flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
    })
}

const fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

/// The family, source and TCP header offset of an IPv4 packet carrying TCP.
#[inline(always)]
fn ipv4<B: Bytes + ?Sized>(packet: &B, at: usize) -> Option<(u8, [u8; 16], usize)> {
    let header: [u8; IPV4_MIN_HLEN] = packet.read(at)?;
    if header[0] >> 4 != 4 || header[9] != IPPROTO_TCP {
        return None;
    }
    let header_len = usize::from(header[0] & 0x0f) * 4;
    // The fragment offset (13 bits) is zero in the first fragment only.
    let fragment_offset = u16::from_be_bytes([header[6] & 0x1f, header[7]]);
    if header_len < IPV4_MIN_HLEN || fragment_offset != 0 {
        return None;
    }
    let [a, b, c, d] = [header[12], header[13], header[14], header[15]];
    let src = [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    Some((crate::FAMILY_V4, src, at + header_len))
}

/// The family, source and TCP header offset of an IPv6 packet whose next header is TCP.
#[inline(always)]
fn ipv6<B: Bytes + ?Sized>(packet: &B, at: usize) -> Option<(u8, [u8; 16], usize)> {
    let [version]: [u8; 1] = packet.read(at)?;
    let [next_header]: [u8; 1] = packet.read(at + 6)?;
    if version >> 4 != 6 || next_header != IPPROTO_TCP {
        return None;
    }
    let src: [u8; 16] = packet.read(at + 8)?;
    Some((crate::FAMILY_V6, src, at + IPV6_HLEN))
}

#[cfg(test)]
mod tests;
