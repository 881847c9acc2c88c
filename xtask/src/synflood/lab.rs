//! The bench's network: a generator namespace and a gateway namespace joined by one veth
//! pair, created here and deleted when the `Lab` is dropped (an error, a panic or Ctrl-C
//! included). Addresses come from the benchmarking range 198.18.0.0/15 and exist only inside
//! these two namespaces, so no packet of the flood can leave them.
//!
//! The gateway's veth end runs in NAPI mode (GRO on, the mode attaching an XDP program
//! switches it to anyway) with threaded NAPI: every packet the gateway receives is then
//! handled in one kernel thread, `napi/<iface>-<id>`, pinned to the receive CPU, whatever the
//! case. Its run time is what the bench charges to the gateway.

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::thread;

use anyhow::{bail, Context, Result};

use crate::proc;

/// The gateway's address, inside its namespace.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The generator's own address: the gateway's next hop for the flood's sources.
pub const GENERATOR_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The on-link prefix; the flood's sources (198.19.0.0/16) are off-link, behind the generator.
const PREFIX_LEN: u8 = 16;

/// Prefix of every name this module gives a namespace, followed by `gen-PID` or `gw-PID`.
const NS_PREFIX: &str = "rwsyn-";

pub struct Lab {
    pub gen_ns: String,
    pub gw_ns: String,
    pub gen_if: String,
    pub gw_if: String,
    pub gen_mac: [u8; 6],
    pub gw_mac: [u8; 6],
}

impl Lab {
    /// Both namespaces and the veth pair, configured; `gen_cpu` takes the generator's share of
    /// the kernel's work (the gateway's answers, when it sends any).
    pub fn create(gen_cpu: usize) -> Result<Lab> {
        remove_stale_namespaces();
        let pid = std::process::id();
        let mut lab = Lab {
            gen_ns: format!("{NS_PREFIX}gen-{pid}"),
            gw_ns: format!("{NS_PREFIX}gw-{pid}"),
            // Interface names have at most 15 bytes; a pid has at most 7 digits.
            gen_if: format!("synbg{pid}"),
            gw_if: format!("synbw{pid}"),
            gen_mac: [0; 6],
            gw_mac: [0; 6],
        };
        // From here on, dropping `lab` deletes whatever was created.
        ip(&["netns", "add", &lab.gen_ns])?;
        ip(&["netns", "add", &lab.gw_ns])?;
        // Both ends are created inside their namespaces: they never exist on the host.
        ip(&[
            "link",
            "add",
            &lab.gen_if,
            "netns",
            &lab.gen_ns,
            "type",
            "veth",
            "peer",
            "name",
            &lab.gw_if,
            "netns",
            &lab.gw_ns,
        ])?;
        let gen_addr = format!("{GENERATOR_IP}/{PREFIX_LEN}");
        let gw_addr = format!("{GATEWAY_IP}/{PREFIX_LEN}");
        ip(&[
            "-n",
            &lab.gen_ns,
            "addr",
            "add",
            &gen_addr,
            "dev",
            &lab.gen_if,
        ])?;
        ip(&["-n", &lab.gw_ns, "addr", "add", &gw_addr, "dev", &lab.gw_if])?;
        for (ns, dev) in [(&lab.gen_ns, &lab.gen_if), (&lab.gw_ns, &lab.gw_if)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        lab.gen_mac = mac_of(&lab.gen_ns, &lab.gen_if)?;
        lab.gw_mac = mac_of(&lab.gw_ns, &lab.gw_if)?;

        // veth hands a frame to the peer's NAPI only if the sender has no TSO (otherwise it
        // goes through the backlog of the sending CPU); GRO on the gateway side turns NAPI on.
        lab.exec(
            &lab.gen_ns,
            "ethtool",
            &["-K", &lab.gen_if, "tso", "off", "gso", "off"],
        )?;
        lab.exec(&lab.gw_ns, "ethtool", &["-K", &lab.gw_if, "gro", "on"])?;
        let threaded = format!("/sys/class/net/{}/threaded", lab.gw_if);
        lab.write_sysfs(&lab.gw_ns, &threaded, "1")?;
        // The gateway's answers (SYN-ACKs, RSTs) are received by the generator's namespace on
        // the generator's CPU: on a real network, that work would be another machine's.
        let rps = format!("/sys/class/net/{}/queues/rx-0/rps_cpus", lab.gen_if);
        lab.write_sysfs(&lab.gen_ns, &rps, &format!("{:x}", 1u64 << gen_cpu))?;

        // Answers to the flood's sources go to the generator, whose MAC is fixed: no ARP for
        // the 65,536 spoofed addresses, and the generator's kernel drops them (not its address,
        // no forwarding).
        let via = GENERATOR_IP.to_string();
        ip(&[
            "-n", &lab.gw_ns, "route", "add", "default", "via", &via, "dev", &lab.gw_if,
        ])?;
        let mac = mac_text(&lab.gen_mac);
        ip(&[
            "-n",
            &lab.gw_ns,
            "neigh",
            "replace",
            &via,
            "lladdr",
            &mac,
            "dev",
            &lab.gw_if,
            "nud",
            "permanent",
        ])?;
        Ok(lab)
    }

    /// `ip netns exec NS PROGRAM ARGS...`, which must succeed.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(
        &self,
        ns: &str,
        program: &str,
        args: &[S],
    ) -> Result<String> {
        let mut cmd = self.command(ns, program);
        cmd.args(args);
        checked(&mut cmd)
    }

    /// A command that runs inside `ns`.
    pub fn command(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// Writes a sysfs file as the namespace sees it (`ip netns exec` mounts its own /sys).
    fn write_sysfs(&self, ns: &str, path: &str, value: &str) -> Result<()> {
        self.exec(ns, "sh", &["-c", "echo \"$1\" > \"$2\"", "sh", value, path])
            .map(drop)
            .with_context(|| format!("cannot set {path} to {value} in {ns}"))
    }

    /// The threads that run the gateway interface's NAPI, pinned to `cpu`. XDP attach and
    /// detach may re-create them, so each case calls this once its receiver is up.
    pub fn pin_napi_threads(&self, cpu: usize) -> Result<Vec<u32>> {
        let prefix = format!("napi/{}-", self.gw_if);
        let pids = threads_named(|comm| comm.starts_with(&prefix));
        if pids.is_empty() {
            bail!(
                "no `{prefix}*` kernel thread: threaded NAPI did not start on {}",
                self.gw_if
            );
        }
        for &pid in &pids {
            pin(pid, cpu).with_context(|| format!("cannot pin {prefix}* ({pid}) to CPU {cpu}"))?;
        }
        Ok(pids)
    }

    /// (rx packets, rx dropped) of the gateway's veth end.
    pub fn gateway_rx(&self) -> Result<(u64, u64)> {
        let out = checked(Command::new("ip").args([
            "-n",
            &self.gw_ns,
            "-j",
            "-s",
            "link",
            "show",
            "dev",
            &self.gw_if,
        ]))?;
        let doc: serde_json::Value = serde_json::from_str(&out).context("`ip -j -s link`")?;
        let rx = &doc[0]["stats64"]["rx"];
        match (rx["packets"].as_u64(), rx["dropped"].as_u64()) {
            (Some(packets), Some(dropped)) => Ok((packets, dropped)),
            _ => bail!("no rx packet counts for {} in {out}", self.gw_if),
        }
    }

    /// Runs `f` on a thread inside `ns`: every socket it opens, and /proc/thread-self/net,
    /// belong to that namespace.
    pub fn in_ns<T: Send>(&self, ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let handle = File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("cannot open network namespace {ns}"))?;
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns(2) on a namespace descriptor we hold open; it moves only
                    // this thread, which ends with the scope.
                    if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("cannot enter network namespace {ns}"));
                    }
                    f()
                })
                .join()
                .unwrap_or_else(|_| bail!("the thread inside {ns} panicked"))
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end inside it, and so the pair.
        for ns in [&self.gw_ns, &self.gen_ns] {
            let _ = proc::output(Command::new("ip").args(["netns", "del", ns]));
        }
    }
}

/// Namespaces left by a bench that was killed outright (SIGKILL skips `Drop`).
fn remove_stale_namespaces() {
    let Ok(out) = proc::output(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for name in stale_namespaces(&String::from_utf8_lossy(&out.stdout), |pid| {
        fs::metadata(format!("/proc/{pid}")).is_ok()
    }) {
        eprintln!("removing network namespace {name}, left by an earlier bench-syn");
        let _ = proc::output(Command::new("ip").args(["netns", "del", &name]));
    }
}

/// The bench's namespaces in `ip netns list` output whose owner process is gone.
pub fn stale_namespaces(list: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            let Some(rest) = name.strip_prefix(NS_PREFIX) else {
                return false;
            };
            let pid = rest
                .strip_prefix("gen-")
                .or_else(|| rest.strip_prefix("gw-"))
                .and_then(|pid| pid.parse::<u32>().ok());
            pid.is_some_and(|pid| !alive(pid))
        })
        .map(str::to_owned)
        .collect()
}

fn ip(args: &[&str]) -> Result<()> {
    checked(Command::new("ip").args(args)).map(drop)
}

/// Runs a command to completion; its stdout, or an error with its stderr.
fn checked(cmd: &mut Command) -> Result<String> {
    let out = proc::output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            proc::show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mac_of(ns: &str, dev: &str) -> Result<[u8; 6]> {
    let out = checked(Command::new("ip").args(["-n", ns, "-j", "link", "show", "dev", dev]))?;
    let doc: serde_json::Value = serde_json::from_str(&out).context("`ip -j link`")?;
    let text = doc[0]["address"].as_str().unwrap_or_default();
    parse_mac(text).with_context(|| format!("no MAC address for {dev} in {out}"))
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Every thread on the host whose command name passes `wanted` (kernel threads included).
pub fn threads_named(wanted: impl Fn(&str) -> bool) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| wanted(comm.trim_end()))
        })
        .collect()
}

/// Pins a thread (a kernel thread too) to one CPU.
pub fn pin(pid: u32, cpu: usize) -> Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: cpu_set_t is plain data, zeroed is the empty set; CPU_SET writes inside it and
    // sched_setaffinity(2) only reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_namespaces_are_ours_with_a_dead_owner() {
        let list =
            "rwsyn-gw-123 (id: 3)\nrwsyn-gen-123 (id: 2)\nrwsyn-gw-77\nrwgw1x0\nrwsyn-gw-x\n";
        let stale = stale_namespaces(list, |pid| pid == 77);
        assert_eq!(stale, ["rwsyn-gw-123", "rwsyn-gen-123"]);
    }

    #[test]
    fn macs_round_trip() {
        let mac = parse_mac("e6:32:ee:6a:72:01").unwrap();
        assert_eq!(mac, [0xe6, 0x32, 0xee, 0x6a, 0x72, 0x01]);
        assert_eq!(mac_text(&mac), "e6:32:ee:6a:72:01");
        assert_eq!(parse_mac("e6:32:ee:6a:72"), None);
        assert_eq!(parse_mac("e6:32:ee:6a:72:01:02"), None);
        assert_eq!(parse_mac("zz:32:ee:6a:72:01"), None);
    }
}
