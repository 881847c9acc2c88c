//! `cargo xtask setup`: installs what Ringwall's builds, tests and benchmarks need and is
//! missing, and nothing else. Quiet when all is there; one line per thing installed. Where it
//! cannot install (not root, no apt, no rustup) it says what to install by hand and goes on,
//! so that the step that needs the missing tool fails with its own message.

use std::fs;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::proc;

/// Debian packages: the kernel-plane tools, Redis for shared storage, the bench peers (with
/// njs, nginx's JWT validation in the bench; and python3-venv for Envoy's wheel and the
/// latency plot), what `bench --count` counts with (valgrind, perf), and what bench-syn
/// floods and filters with (trafgen is in netsniff-ng).
pub const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "redis-server",
    "nginx",
    "libnginx-mod-http-js",
    "haproxy",
    "python3-venv",
    "wrk",
    "valgrind",
    "linux-perf",
    "curl",
    "netsniff-ng",
    "nftables",
    "iptables",
    "ethtool",
];

/// The bpf-linker release the XDP build is known to work with.
pub const BPF_LINKER_VERSION: &str = "0.10.4";

pub fn setup() -> Result<()> {
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    if !proc::on_path("dpkg-query") {
        by_hand(&format!(
            "not a Debian system: install {} by hand",
            APT_PACKAGES.join(" ")
        ));
        return Ok(());
    }
    let missing = missing_apt_packages()?;
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() || !proc::on_path("apt-get") {
        by_hand(&format!("missing Debian packages; run as root: {install}"));
        return Ok(());
    }
    apt_get(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter().map(String::as_str));
    apt_get(&args)?;
    let still_missing = missing_apt_packages()?;
    for package in missing.iter().filter(|p| !still_missing.contains(p)) {
        println!("installed {package} (apt)");
    }
    if !still_missing.is_empty() {
        bail!("apt-get did not install {}", still_missing.join(" "));
    }
    Ok(())
}

fn missing_apt_packages() -> Result<Vec<String>> {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f=${Package}\t${Status}\n"])
        .args(APT_PACKAGES);
    // dpkg-query exits 1 when a package is unknown to it: the status lines still say enough.
    let out = proc::output(&mut cmd)?;
    Ok(missing_packages(
        &String::from_utf8_lossy(&out.stdout),
        APT_PACKAGES,
    ))
}

fn apt_get(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("apt-get");
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    let out = proc::output(&mut cmd)?;
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("`{}` failed ({})", proc::show(&cmd), out.status);
    }
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    if !proc::on_path("rustup") {
        by_hand("no rustup: install a nightly toolchain with the rust-src component by hand");
        return Ok(());
    }
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--toolchain", "nightly", "--installed"]);
    let out = proc::output(&mut list)?;
    if !out.status.success() {
        // No nightly toolchain at all: install a minimal one (never `rustup update`).
        let mut install = Command::new("rustup");
        install.args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]);
        if proc::output(&mut install)?.status.success() {
            println!("installed the nightly toolchain with rust-src (rustup)");
        } else {
            by_hand("could not install a nightly toolchain; run: rustup toolchain install nightly --component rust-src");
        }
        return Ok(());
    }
    if has_component(&String::from_utf8_lossy(&out.stdout), "rust-src") {
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    let out = proc::output(&mut add)?;
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("`{}` failed ({})", proc::show(&add), out.status);
    }
    println!("installed rust-src (nightly, rustup)");
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let mut version = Command::new("bpf-linker");
    version.arg("--version");
    let installed = version
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| {
            bpf_linker_version(&String::from_utf8_lossy(&out.stdout)).map(str::to_owned)
        });
    if installed.as_deref() == Some(BPF_LINKER_VERSION) {
        return Ok(());
    }
    // About a minute on two cores: say so on the one line this prints.
    print!("installing bpf-linker {BPF_LINKER_VERSION} (cargo install, about a minute)...");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let started = Instant::now();
    let mut install = Command::new("cargo");
    install.args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
    ]);
    let out = proc::output(&mut install)?;
    if !out.status.success() {
        println!(" failed");
        let log = crate::target_dir().join("xtask-bpf-linker-install.log");
        let _ = fs::create_dir_all(crate::target_dir());
        let _ = fs::write(&log, &out.stderr);
        eprintln!("{}", proc::log_tail(&log, 20));
        bail!(
            "`{}` failed ({}); full log in {}",
            proc::show(&install),
            out.status,
            log.display()
        );
    }
    println!(" installed in {} s", started.elapsed().as_secs());
    Ok(())
}

fn by_hand(message: &str) {
    eprintln!("setup: {message}");
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The packages of `wanted` that `dpkg-query -W -f='${Package}\t${Status}\n'` does not
/// report as installed (unknown packages are not listed at all).
pub fn missing_packages(dpkg_output: &str, wanted: &[&str]) -> Vec<String> {
    let installed: Vec<&str> = dpkg_output
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| status.split_whitespace().last() == Some("installed"))
        .map(|(package, _)| package.split(':').next().unwrap_or(package))
        .collect();
    wanted
        .iter()
        .filter(|package| !installed.contains(package))
        .map(|package| (*package).to_owned())
        .collect()
}

/// The version in `bpf-linker --version`'s output (`bpf-linker 0.10.4`).
pub fn bpf_linker_version(output: &str) -> Option<&str> {
    let mut words = output.split_whitespace();
    match (words.next(), words.next()) {
        (Some("bpf-linker"), Some(version)) => Some(version),
        _ => None,
    }
}

/// Whether `rustup component list --installed` lists `component`.
pub fn has_component(list: &str, component: &str) -> bool {
    list.lines().any(|line| {
        let line = line.trim();
        line == component
            || line
                .strip_prefix(component)
                .is_some_and(|rest| rest.starts_with("-x86_64") || rest.starts_with("-aarch64"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_decides_what_is_missing() {
        let output = "iproute2\tinstall ok installed\n\
                      nginx\tdeinstall ok config-files\n\
                      wrk:amd64\tinstall ok installed\n\
                      curl\tinstall ok half-configured\n";
        let missing = missing_packages(output, &["iproute2", "nginx", "wrk", "curl", "haproxy"]);
        assert_eq!(missing, ["nginx", "curl", "haproxy"]);
    }

    #[test]
    fn nothing_missing_when_all_installed() {
        let output = "curl\tinstall ok installed\nwrk\thold ok installed\n";
        assert!(missing_packages(output, &["curl", "wrk"]).is_empty());
    }

    #[test]
    fn reads_the_bpf_linker_version() {
        assert_eq!(bpf_linker_version("bpf-linker 0.10.4\n"), Some("0.10.4"));
        assert_eq!(bpf_linker_version("something else 1.0"), None);
        assert_eq!(bpf_linker_version(""), None);
    }

    #[test]
    fn finds_installed_components() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(has_component(list, "cargo"));
        assert!(!has_component(list, "rust-docs"));
        assert!(!has_component("rust-src-extra\n", "rust-src"));
    }
}
