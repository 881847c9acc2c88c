//! The XDP object before the kernel, as root: aya 0.14 (what the proxy uses) loads it, so
//! every map is created and the verifier passes the program; then `BPF_PROG_TEST_RUN` plays
//! scripted frames through it against maps filled for the cases, and each verdict and the
//! counters are checked. Nothing is attached to any interface and no packet is sent: the
//! kernel runs the program on the bytes given. Last, bpftool loads it too, so that libbpf's
//! tools (`bpftool`, `ip link ... obj`) stay able to load it by hand. Not root: says so and
//! skips.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::Ebpf;
use ringwall_common::packet::{ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, TCP_ACK, TCP_SYN};
use ringwall_common::{
    counter, names, prefix_len_v4, prefix_len_v6, PortConfig, PortCounters, PortV4, PortV6,
    TrieValue, PROGRAM, TRIE_PRESENT,
};

use crate::proc;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const DENY_PORT: u16 = 8081;
const ALLOW_PORT: u16 = 8082;
const RATE_PORT: u16 = 8083;
const PREFIX_RATE_PORT: u16 = 8084;
const UNWATCHED_PORT: u16 = 9999;

const ALL_MAPS: [&str; 8] = [
    names::DENY_V4,
    names::DENY_V6,
    names::ALLOW_V4,
    names::ALLOW_V6,
    names::PORTS,
    names::RATE,
    names::COUNTERS,
    names::PORT_COUNTERS,
];

pub fn check(object: &Path) -> Result<()> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("XDP kernel check skipped: loading a program needs root");
        return Ok(());
    }
    let mut ebpf =
        Ebpf::load_file(object).with_context(|| format!("aya cannot load {}", object.display()))?;
    for name in ALL_MAPS {
        ensure!(ebpf.map(name).is_some(), "the object has no map {name}");
    }
    let mut maps = Maps::take(&mut ebpf)?;
    maps.fill()?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .with_context(|| format!("the object has no program {PROGRAM}"))?
        .try_into()?;
    program
        .load()
        .context("the kernel's verifier refused the XDP program")?;
    let verified = program
        .info()
        .ok()
        .and_then(|info| info.verified_instruction_count());

    let mut failures = Vec::new();
    for case in cases() {
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&case.frame),
                ..TestRunOptions::new()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN failed on `{}`", case.name))?;
        if result.return_value != case.expect {
            failures.push(format!(
                "{}: got {}, want {}",
                case.name,
                action(result.return_value),
                action(case.expect)
            ));
        }
    }
    if !failures.is_empty() {
        bail!("the XDP program misjudged:\n  {}", failures.join("\n  "));
    }
    maps.check_counters()?;
    drop(ebpf);
    let verified = verified.map_or(String::new(), |n| format!(" ({n} instructions processed)"));
    println!(
        "XDP kernel check: the verifier accepted {PROGRAM}{verified}; {} scripted packets \
         judged as expected",
        cases().len()
    );
    libbpf_load(object)
}

/// `bpftool prog load`, pinned for the moment of the check and unpinned (so unloaded) at
/// once. libbpf is stricter than aya in places: it refuses, for one, a program that calls
/// the `memset` bpf-linker leaves in when LLVM emits one.
fn libbpf_load(object: &Path) -> Result<()> {
    let bpffs = Path::new("/sys/fs/bpf");
    // bpftool pins what it loads, so it needs the BPF filesystem mounted there.
    let mounted = std::fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts
            .lines()
            .any(|line| line.starts_with("bpf /sys/fs/bpf "))
    });
    if !proc::on_path("bpftool") || !mounted {
        println!("libbpf check skipped: no bpftool, or no BPF filesystem on /sys/fs/bpf");
        return Ok(());
    }
    let pin = bpffs.join(format!("ringwall-xtask-{}", std::process::id()));
    let mut load = Command::new("bpftool");
    load.args(["prog", "load"])
        .arg(object)
        .arg(&pin)
        .args(["type", "xdp"]);
    let out = proc::output(&mut load)?;
    let _ = std::fs::remove_file(&pin);
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "bpftool (libbpf) cannot load {}:\n{}",
            object.display(),
            tail.join("\n")
        );
    }
    println!("libbpf check: bpftool loads the object too");
    Ok(())
}

fn action(code: u32) -> String {
    match code {
        XDP_DROP => "DROP".into(),
        XDP_PASS => "PASS".into(),
        other => format!("action {other}"),
    }
}

// === maps ===

struct Maps {
    deny_v4: LpmTrie<MapData, PortV4, TrieValue>,
    deny_v6: LpmTrie<MapData, PortV6, TrieValue>,
    allow_v4: LpmTrie<MapData, PortV4, TrieValue>,
    allow_v6: LpmTrie<MapData, PortV6, TrieValue>,
    ports: HashMap<MapData, u16, PortConfig>,
    counters: PerCpuArray<MapData, u64>,
    port_counters: PerCpuHashMap<MapData, u16, PortCounters>,
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Self> {
        fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
            ebpf: &mut Ebpf,
            name: &str,
        ) -> Result<T> {
            let map = ebpf
                .take_map(name)
                .with_context(|| format!("no map {name}"))?;
            T::try_from(map).with_context(|| format!("map {name} has another type or layout"))
        }
        Ok(Self {
            deny_v4: take(ebpf, names::DENY_V4)?,
            deny_v6: take(ebpf, names::DENY_V6)?,
            allow_v4: take(ebpf, names::ALLOW_V4)?,
            allow_v6: take(ebpf, names::ALLOW_V6)?,
            ports: take(ebpf, names::PORTS)?,
            counters: take(ebpf, names::COUNTERS)?,
            port_counters: take(ebpf, names::PORT_COUNTERS)?,
        })
    }

    /// The rules the cases below are judged by.
    fn fill(&mut self) -> Result<()> {
        let v4 = |port, addr: Ipv4Addr, len| {
            Key::new(prefix_len_v4(len), PortV4::new(port, addr.octets()))
        };
        let v6 = |port, addr: Ipv6Addr, len| {
            Key::new(prefix_len_v6(len), PortV6::new(port, addr.octets()))
        };
        self.deny_v4.insert(
            &v4(DENY_PORT, Ipv4Addr::new(203, 0, 113, 0), 24),
            TRIE_PRESENT,
            0,
        )?;
        self.deny_v6.insert(
            &v6(DENY_PORT, "2001:db8:bad::".parse()?, 48),
            TRIE_PRESENT,
            0,
        )?;
        self.allow_v4.insert(
            &v4(ALLOW_PORT, Ipv4Addr::new(198, 51, 100, 0), 24),
            TRIE_PRESENT,
            0,
        )?;
        self.allow_v6.insert(
            &v6(ALLOW_PORT, "2001:db8:1::".parse()?, 64),
            TRIE_PRESENT,
            0,
        )?;
        let ports = [
            (DENY_PORT, 0, 0, 0),
            (ALLOW_PORT, PortConfig::HAS_ALLOW_LIST, 0, 0),
            // One SYN a second, two at once: the third SYN in a burst is dropped.
            (RATE_PORT, PortConfig::RATE_LIMIT, 1, 2),
            (
                PREFIX_RATE_PORT,
                PortConfig::RATE_LIMIT | PortConfig::RATE_BY_PREFIX,
                1,
                1,
            ),
        ];
        for (port, flags, rate_per_sec, burst) in ports {
            let config = PortConfig {
                flags,
                rate_per_sec,
                burst,
            };
            self.ports.insert(port, config, 0)?;
        }
        Ok(())
    }

    /// Every case is counted once, under its verdict or why it was not judged.
    fn check_counters(&self) -> Result<()> {
        let cases = cases();
        let sum = |index: u32| -> Result<u64> { Ok(self.counters.get(&index, 0)?.iter().sum()) };
        let got = [
            sum(counter::PASSED)?,
            sum(counter::DROP_DENY)?,
            sum(counter::DROP_ALLOW)?,
            sum(counter::DROP_RATE)?,
            sum(counter::NOT_TCP)?,
            sum(counter::OTHER_PORT)?,
        ];
        let want = [
            cases
                .iter()
                .filter(|c| c.counter == counter::PASSED)
                .count(),
            cases
                .iter()
                .filter(|c| c.counter == counter::DROP_DENY)
                .count(),
            cases
                .iter()
                .filter(|c| c.counter == counter::DROP_ALLOW)
                .count(),
            cases
                .iter()
                .filter(|c| c.counter == counter::DROP_RATE)
                .count(),
            cases
                .iter()
                .filter(|c| c.counter == counter::NOT_TCP)
                .count(),
            cases
                .iter()
                .filter(|c| c.counter == counter::OTHER_PORT)
                .count(),
        ]
        .map(|n| n as u64);
        ensure!(
            got == want,
            "RW_COUNTERS [passed, deny, allow, rate, not tcp, other port]: got {got:?}, want {want:?}"
        );
        let rate_port = self.port_counters.get(&RATE_PORT, 0)?.iter().fold(
            PortCounters::default(),
            |total, cpu| PortCounters {
                passed: total.passed + cpu.passed,
                drop_deny: total.drop_deny + cpu.drop_deny,
                drop_allow: total.drop_allow + cpu.drop_allow,
                drop_rate: total.drop_rate + cpu.drop_rate,
            },
        );
        ensure!(
            (rate_port.passed, rate_port.drop_rate) == (5, 1),
            "RW_PORT_STATS for port {RATE_PORT}: got {rate_port:?}, want 5 passed, 1 rate-dropped"
        );
        Ok(())
    }
}

// === cases ===

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    expect: u32,
    counter: u32,
}

/// In order: the rate-limit cases depend on the SYNs before them.
fn cases() -> Vec<Case> {
    let denied = Ipv4Addr::new(203, 0, 113, 9);
    let allowed = Ipv4Addr::new(198, 51, 100, 20);
    let stranger = Ipv4Addr::new(192, 0, 2, 1);
    let neighbour = Ipv4Addr::new(192, 0, 2, 2);
    let other_net = Ipv4Addr::new(192, 0, 3, 1);
    let denied6: Ipv6Addr = "2001:db8:bad:1::5".parse().expect("literal");
    let allowed6: Ipv6Addr = "2001:db8:1::7".parse().expect("literal");
    let stranger6: Ipv6Addr = "2001:db8:2::7".parse().expect("literal");
    let syn = TCP_SYN;
    let ack = TCP_ACK;
    let syn_ack = TCP_SYN | TCP_ACK;
    let (pass, drop) = (XDP_PASS, XDP_DROP);
    use counter::{DROP_ALLOW, DROP_DENY, DROP_RATE, NOT_TCP, OTHER_PORT, PASSED};
    let case = |name, frame, expect, counter| Case {
        name,
        frame,
        expect,
        counter,
    };
    vec![
        case("udp", v4(stranger, 17, DENY_PORT, syn, &[]), pass, NOT_TCP),
        case("arp", arp(), pass, NOT_TCP),
        case(
            "other port",
            v4(denied, 6, UNWATCHED_PORT, syn, &[]),
            pass,
            OTHER_PORT,
        ),
        case(
            "denied source",
            v4(denied, 6, DENY_PORT, syn, &[]),
            drop,
            DROP_DENY,
        ),
        case(
            "denied source, established",
            v4(denied, 6, DENY_PORT, ack, &[]),
            drop,
            DROP_DENY,
        ),
        case(
            "denied source, VLAN",
            v4(denied, 6, DENY_PORT, syn, &[ETH_P_8021Q]),
            drop,
            DROP_DENY,
        ),
        case(
            "denied source on a port that does not deny it",
            v4(denied, 6, PREFIX_RATE_PORT, ack, &[]),
            pass,
            PASSED,
        ),
        case(
            "denied IPv6 source",
            v6(denied6, DENY_PORT, syn),
            drop,
            DROP_DENY,
        ),
        case(
            "undenied source",
            v4(stranger, 6, DENY_PORT, syn, &[]),
            pass,
            PASSED,
        ),
        case(
            "undenied IPv6 source",
            v6(stranger6, DENY_PORT, syn),
            pass,
            PASSED,
        ),
        case(
            "allowed source",
            v4(allowed, 6, ALLOW_PORT, syn, &[]),
            pass,
            PASSED,
        ),
        case(
            "allowed IPv6 source",
            v6(allowed6, ALLOW_PORT, syn),
            pass,
            PASSED,
        ),
        case(
            "source outside the allow list",
            v4(stranger, 6, ALLOW_PORT, syn, &[]),
            drop,
            DROP_ALLOW,
        ),
        case(
            "IPv6 source outside the allow list",
            v6(stranger6, ALLOW_PORT, syn_ack),
            drop,
            DROP_ALLOW,
        ),
        case(
            "first SYN of a burst of 2",
            v4(stranger, 6, RATE_PORT, syn, &[]),
            pass,
            PASSED,
        ),
        case(
            "second SYN of a burst of 2",
            v4(stranger, 6, RATE_PORT, syn, &[]),
            pass,
            PASSED,
        ),
        case(
            "third SYN",
            v4(stranger, 6, RATE_PORT, syn, &[]),
            drop,
            DROP_RATE,
        ),
        case(
            "established flow past the limit",
            v4(stranger, 6, RATE_PORT, ack, &[]),
            pass,
            PASSED,
        ),
        case(
            "SYN-ACK past the limit",
            v4(stranger, 6, RATE_PORT, syn_ack, &[]),
            pass,
            PASSED,
        ),
        case(
            "SYN from another source",
            v4(neighbour, 6, RATE_PORT, syn, &[]),
            pass,
            PASSED,
        ),
        case(
            "first SYN from a /24",
            v4(stranger, 6, PREFIX_RATE_PORT, syn, &[]),
            pass,
            PASSED,
        ),
        case(
            "SYN from a neighbour in that /24",
            v4(neighbour, 6, PREFIX_RATE_PORT, syn, &[]),
            drop,
            DROP_RATE,
        ),
        case(
            "SYN from another /24",
            v4(other_net, 6, PREFIX_RATE_PORT, syn, &[]),
            pass,
            PASSED,
        ),
        case(
            "IPv6 SYN on a rate-limited port",
            v6(stranger6, PREFIX_RATE_PORT, syn),
            pass,
            PASSED,
        ),
    ]
}

fn ethernet(vlans: &[u16], ethertype: u16) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for tpid in vlans {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&[0, 100]);
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

fn tcp(dst_port: u16, flags: u8) -> [u8; 20] {
    let mut header = [0u8; 20];
    header[..2].copy_from_slice(&40000u16.to_be_bytes());
    header[2..4].copy_from_slice(&dst_port.to_be_bytes());
    header[12] = 0x50;
    header[13] = flags;
    header
}

fn v4(src: Ipv4Addr, protocol: u8, dst_port: u16, flags: u8, vlans: &[u16]) -> Vec<u8> {
    let mut frame = ethernet(vlans, ETH_P_IPV4);
    frame.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, protocol, 0, 0]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&[10, 0, 0, 1]);
    frame.extend_from_slice(&tcp(dst_port, flags));
    frame
}

fn v6(src: Ipv6Addr, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut frame = ethernet(&[], ETH_P_IPV6);
    frame.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    frame.extend_from_slice(&tcp(dst_port, flags));
    frame
}

fn arp() -> Vec<u8> {
    let mut frame = ethernet(&[], 0x0806);
    frame.extend_from_slice(&[0; 28]);
    frame
}
