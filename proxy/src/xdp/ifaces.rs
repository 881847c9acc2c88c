//! Which interfaces a listener's traffic arrives on: the one carrying its address, or
//! every interface for a wildcard address.

use std::net::IpAddr;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

use super::XdpError;

/// The interfaces to attach to so that traffic to `addrs` passes the program, sorted and
/// without repeats.
pub fn interfaces_for(addrs: impl IntoIterator<Item = IpAddr>) -> Result<Vec<String>, XdpError> {
    let all: Vec<_> = getifaddrs()
        .map_err(|e| XdpError::Interfaces(e.into()))?
        .filter(|i| i.flags.contains(InterfaceFlags::IFF_UP))
        .collect();
    let mut names = Vec::new();
    for ip in addrs {
        let before = names.len();
        for i in &all {
            // A listener binds an address assigned here, or anywhere in 127/8 on loopback.
            let carries = i.address.as_ref().is_some_and(|a| holds(a, ip))
                || (ip.is_loopback() && i.flags.contains(InterfaceFlags::IFF_LOOPBACK));
            if ip.is_unspecified() || carries {
                names.push(i.interface_name.clone());
            }
        }
        if names.len() == before {
            return Err(XdpError::NoInterface(ip));
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Whether the interface address `addr` is `ip`.
fn holds(addr: &nix::sys::socket::SockaddrStorage, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => addr.as_sockaddr_in().is_some_and(|a| a.ip() == ip),
        IpAddr::V6(ip) => addr.as_sockaddr_in6().is_some_and(|a| a.ip() == ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_live_on_lo() {
        assert_eq!(
            interfaces_for(["127.0.0.1".parse().unwrap()]).unwrap(),
            ["lo"]
        );
        // Anything in 127.0.0.0/8 is on lo, not just the address it was given.
        assert_eq!(
            interfaces_for(["127.0.0.9".parse().unwrap()]).unwrap(),
            ["lo"]
        );
    }

    #[test]
    fn wildcard_means_every_interface() {
        let all = interfaces_for(["0.0.0.0".parse().unwrap()]).unwrap();
        assert!(all.contains(&"lo".to_string()), "{all:?}");
    }

    #[test]
    fn an_address_nobody_carries_is_an_error() {
        let e = interfaces_for(["198.51.100.77".parse().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("198.51.100.77"), "{e}");
    }
}
