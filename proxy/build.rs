//! Embeds the XDP program: builds `ebpf/` with the nightly toolchain (see `build/xdp.rs`),
//! copies the object to `$OUT_DIR/ringwall-xdp.o` and sets `cfg(ringwall_xdp_embedded)`.
//! Where it cannot (no nightly, rust-src or bpf-linker, a failed build, or
//! `RINGWALL_SKIP_XDP` set for fast iteration) it warns and the binary carries no program:
//! ringwall then enforces connection rules in userspace.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::{env, fs};

#[path = "build/xdp.rs"]
mod xdp;

const SKIP: &str = "RINGWALL_SKIP_XDP";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ringwall_xdp_embedded)");
    println!("cargo::rerun-if-env-changed={SKIP}");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("proxy/ is inside the workspace");
    for path in [
        "ebpf/src",
        "ebpf/Cargo.toml",
        "common/src",
        "common/Cargo.toml",
    ] {
        println!("cargo::rerun-if-changed={}", root.join(path).display());
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    match embed(root, &out_dir) {
        Ok(()) => println!("cargo::rustc-cfg=ringwall_xdp_embedded"),
        Err(reason) => println!(
            "cargo::warning=XDP program not built: {reason}; \
             ringwall will enforce connection rules in userspace"
        ),
    }
}

fn embed(root: &Path, out_dir: &Path) -> Result<(), String> {
    if env::var_os(SKIP).is_some() {
        return Err(format!("{SKIP} is set"));
    }
    if let Some(missing) = xdp::missing_tool() {
        return Err(missing);
    }
    let target_dir = xdp::target_dir(root);
    // Both streams captured: the nested cargo's output must not reach ours, where cargo
    // would read it as build-script directives.
    let output = xdp::command(root, &target_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run rustup: {err}"))?;
    if !output.status.success() {
        let log = out_dir.join("xdp-build.log");
        let mut text = output.stdout;
        text.extend_from_slice(&output.stderr);
        let _ = fs::write(&log, &text);
        let text = String::from_utf8_lossy(&text);
        let first_error = text
            .lines()
            .find(|line| line.starts_with("error"))
            .unwrap_or("the build failed");
        return Err(format!("{first_error} (full log: {})", log.display()));
    }
    let object = xdp::object(&target_dir);
    fs::copy(&object, out_dir.join("ringwall-xdp.o"))
        .map(drop)
        .map_err(|err| format!("cannot copy {}: {err}", object.display()))
}
