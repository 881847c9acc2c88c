//! The loaded XDP program and its maps. Map updates are ordered so that no change opens a
//! window without protection: new deny and allow entries go in before a port's flags
//! change, and stale ones come out after.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;
use ringwall_common::{
    counter, names, prefix_len_v4, prefix_len_v6, PortConfig, PortV4, PortV6, TrieValue,
    TRIE_PRESENT,
};
use ringwall_config::{ConnectionRules, IpNet, RateKey};

use super::{object, AttachMode, Counters, XdpError};

/// A (port, network) entry of a deny or allow trie.
type Entry = (u16, IpNet);

pub struct KernelPlane {
    /// Owns the program; dropping it detaches from every interface.
    _ebpf: Ebpf,
    deny_v4: LpmTrie<MapData, PortV4, TrieValue>,
    deny_v6: LpmTrie<MapData, PortV6, TrieValue>,
    allow_v4: LpmTrie<MapData, PortV4, TrieValue>,
    allow_v6: LpmTrie<MapData, PortV6, TrieValue>,
    ports: HashMap<MapData, u16, PortConfig>,
    counters: Arc<PerCpuArray<MapData, u64>>,
    deny: BTreeSet<Entry>,
    allow: BTreeSet<Entry>,
    port_configs: BTreeMap<u16, PortConfig>,
    /// Where the program is attached, and how.
    pub attached: Vec<(String, &'static str)>,
}

impl KernelPlane {
    /// Loads the embedded program and attaches it to `ifaces`.
    pub fn start(ifaces: &[String], mode: AttachMode) -> Result<Self, XdpError> {
        let object = object::OBJECT.ok_or(XdpError::NotBuilt)?;
        let mut ebpf = Ebpf::load(object)?;
        let program: &mut Xdp = ebpf
            .program_mut(ringwall_common::PROGRAM)
            .ok_or(XdpError::MissingMap(ringwall_common::PROGRAM))?
            .try_into()?;
        program.load()?;
        let mut attached = Vec::with_capacity(ifaces.len());
        for iface in ifaces {
            let how = attach(program, iface, mode)?;
            attached.push((iface.clone(), how));
        }
        Ok(Self {
            deny_v4: take(&mut ebpf, names::DENY_V4)?,
            deny_v6: take(&mut ebpf, names::DENY_V6)?,
            allow_v4: take(&mut ebpf, names::ALLOW_V4)?,
            allow_v6: take(&mut ebpf, names::ALLOW_V6)?,
            ports: take(&mut ebpf, names::PORTS)?,
            counters: Arc::new(take(&mut ebpf, names::COUNTERS)?),
            _ebpf: ebpf,
            deny: BTreeSet::new(),
            allow: BTreeSet::new(),
            port_configs: BTreeMap::new(),
            attached,
        })
    }

    /// Brings the maps in line with `rules` (listener port → rules), in place: the
    /// program stays attached throughout.
    pub fn apply(&mut self, rules: &[(u16, ConnectionRules)]) -> Result<(), XdpError> {
        let mut deny = BTreeSet::new();
        let mut allow = BTreeSet::new();
        let mut configs = BTreeMap::new();
        for (port, r) in rules {
            if r.is_empty() {
                continue;
            }
            deny.extend(r.deny.iter().map(|n| (*port, *n)));
            if let Some(list) = &r.allow {
                allow.extend(list.iter().map(|n| (*port, *n)));
            }
            configs.insert(*port, port_config(r));
        }

        for e in deny.difference(&self.deny) {
            insert(&mut self.deny_v4, &mut self.deny_v6, e, names::DENY_V4)?;
        }
        for e in allow.difference(&self.allow) {
            insert(&mut self.allow_v4, &mut self.allow_v6, e, names::ALLOW_V4)?;
        }
        for (port, config) in &configs {
            if self.port_configs.get(port) != Some(config) {
                self.ports
                    .insert(port, config, 0)
                    .map_err(|source| XdpError::Map {
                        name: names::PORTS,
                        source,
                    })?;
            }
        }
        for port in self
            .port_configs
            .keys()
            .filter(|p| !configs.contains_key(p))
        {
            self.ports.remove(port).map_err(|source| XdpError::Map {
                name: names::PORTS,
                source,
            })?;
        }
        for e in self.allow.difference(&allow) {
            remove(&mut self.allow_v4, &mut self.allow_v6, e, names::ALLOW_V4)?;
        }
        for e in self.deny.difference(&deny) {
            remove(&mut self.deny_v4, &mut self.deny_v6, e, names::DENY_V4)?;
        }
        self.deny = deny;
        self.allow = allow;
        self.port_configs = configs;
        Ok(())
    }

    /// A reader of the counters that can live on another thread.
    pub fn counter_reader(&self) -> CounterReader {
        CounterReader(self.counters.clone())
    }
}

/// Sums the program's per-CPU counters.
#[derive(Clone)]
pub struct CounterReader(Arc<PerCpuArray<MapData, u64>>);

impl CounterReader {
    pub fn read(&self) -> Result<Counters, XdpError> {
        let sum = |index: u32| -> Result<u64, XdpError> {
            let values = self.0.get(&index, 0).map_err(|source| XdpError::Map {
                name: names::COUNTERS,
                source,
            })?;
            Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(Counters {
            passed: sum(counter::PASSED)?,
            drop_deny: sum(counter::DROP_DENY)?,
            drop_allow: sum(counter::DROP_ALLOW)?,
            drop_rate: sum(counter::DROP_RATE)?,
        })
    }
}

fn port_config(r: &ConnectionRules) -> PortConfig {
    let mut config = PortConfig::default();
    if r.allow.is_some() {
        config.flags |= PortConfig::HAS_ALLOW_LIST;
    }
    if let Some(rate) = r.rate {
        config.flags |= PortConfig::RATE_LIMIT;
        if rate.key == RateKey::Prefix {
            config.flags |= PortConfig::RATE_BY_PREFIX;
        }
        config.rate_per_sec = rate.per_second;
        config.burst = rate.burst;
    }
    config
}

fn attach(program: &mut Xdp, iface: &str, mode: AttachMode) -> Result<&'static str, XdpError> {
    let err = |mode, source| XdpError::Attach {
        iface: iface.to_string(),
        mode,
        source,
    };
    match mode {
        AttachMode::Native => program
            .attach(iface, XdpMode::Driver)
            .map(|_| "native")
            .map_err(|e| err(mode, e)),
        AttachMode::Generic => program
            .attach(iface, XdpMode::Skb)
            .map(|_| "generic")
            .map_err(|e| err(mode, e)),
        AttachMode::Auto => match program.attach(iface, XdpMode::Driver) {
            Ok(_) => Ok("native"),
            Err(native) => {
                tracing::debug!(iface, error = %native, "native XDP refused; trying generic");
                program
                    .attach(iface, XdpMode::Skb)
                    .map(|_| "generic")
                    .map_err(|e| err(AttachMode::Generic, e))
            }
        },
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, XdpError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(XdpError::MissingMap(name))?;
    T::try_from(map).map_err(|source| XdpError::Map { name, source })
}

/// A trie entry's key, in the trie of its address family.
enum TrieKey {
    V4(Key<PortV4>),
    V6(Key<PortV6>),
}

fn trie_key((port, net): &Entry) -> TrieKey {
    let len = u32::from(net.prefix_len());
    match net.addr() {
        IpAddr::V4(a) => TrieKey::V4(Key::new(prefix_len_v4(len), PortV4::new(*port, a.octets()))),
        IpAddr::V6(a) => TrieKey::V6(Key::new(prefix_len_v6(len), PortV6::new(*port, a.octets()))),
    }
}

fn insert(
    v4: &mut LpmTrie<MapData, PortV4, TrieValue>,
    v6: &mut LpmTrie<MapData, PortV6, TrieValue>,
    entry: &Entry,
    name: &'static str,
) -> Result<(), XdpError> {
    let res = match trie_key(entry) {
        TrieKey::V4(k) => v4.insert(&k, TRIE_PRESENT, 0),
        TrieKey::V6(k) => v6.insert(&k, TRIE_PRESENT, 0),
    };
    res.map_err(|source| XdpError::Map { name, source })
}

fn remove(
    v4: &mut LpmTrie<MapData, PortV4, TrieValue>,
    v6: &mut LpmTrie<MapData, PortV6, TrieValue>,
    entry: &Entry,
    name: &'static str,
) -> Result<(), XdpError> {
    let res = match trie_key(entry) {
        TrieKey::V4(k) => v4.remove(&k),
        TrieKey::V6(k) => v6.remove(&k),
    };
    res.map_err(|source| XdpError::Map { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringwall_config::ConnectionRate;

    #[test]
    fn port_flags_follow_the_rules() {
        let open = ConnectionRules::default();
        assert_eq!(port_config(&open).flags, 0);
        let allow = ConnectionRules::default().with_allow(["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(port_config(&allow).flags, PortConfig::HAS_ALLOW_LIST);
        let rate = ConnectionRules::default().with_rate(ConnectionRate {
            per_second: 5,
            burst: 7,
            key: RateKey::Prefix,
        });
        let c = port_config(&rate);
        assert_eq!(c.flags, PortConfig::RATE_LIMIT | PortConfig::RATE_BY_PREFIX);
        assert_eq!((c.rate_per_sec, c.burst), (5, 7));
    }
}
