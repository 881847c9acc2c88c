//! How the XDP object is built, in one place for its two users: `proxy/build.rs`, which
//! embeds it in the `ringwall` binary, and `cargo xtask build-ebpf`, which builds and checks
//! it on its own. Both use the same target directory, so whichever runs second finds the
//! object fresh.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const PACKAGE: &str = "ringwall-ebpf";
pub const BIN: &str = "ringwall-xdp";
pub const TARGET: &str = "bpfel-unknown-none";
const TOOLCHAIN: &str = "nightly";

/// `xdp/` under the workspace's target directory (which honours `CARGO_TARGET_DIR`). Not the
/// target directory itself: a cargo started by a build script would wait forever for the
/// build lock its parent holds.
pub fn target_dir(root: &Path) -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    };
    target.join("xdp")
}

/// Where the build leaves the object.
pub fn object(target_dir: &Path) -> PathBuf {
    target_dir.join(TARGET).join("release").join(BIN)
}

/// Why the build cannot run here, if a tool it needs is missing.
pub fn missing_tool() -> Option<String> {
    let sysroot = match Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
    {
        Err(_) => return Some("rustup is not installed".into()),
        Ok(out) if !out.status.success() => {
            return Some(
                "the nightly toolchain is not installed \
                 (rustup toolchain install nightly --component rust-src)"
                    .into(),
            )
        }
        Ok(out) => PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
    };
    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core.exists() {
        return Some(
            "nightly has no rust-src (rustup component add rust-src --toolchain nightly)".into(),
        );
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !linker.is_ok_and(|out| out.status.success()) {
        return Some("bpf-linker is not installed (cargo xtask setup installs it)".into());
    }
    None
}

/// The nested build: nightly cargo with `build-std=core` for the BPF target, linked by
/// bpf-linker with BTF, run from the workspace `root`.
pub fn command(root: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root)
        .args(["run", TOOLCHAIN, "cargo", "build", "-Z", "build-std=core"])
        .args(["--target", TARGET, "--release", "-p", PACKAGE])
        .arg("--target-dir")
        .arg(target_dir)
        // aya-build, a build-dependency of aya-ebpf, declares a rust-version newer than the
        // nightly installed here, and builds with it all the same.
        .arg("--ignore-rust-version")
        // A missing nightly is reported by `missing_tool`, never downloaded behind a build.
        .env("RUSTUP_AUTO_INSTALL", "0")
        // BTF for the loader, as aya-build passes it.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Clink-arg=--btf")
        // Full debug info for every crate, core and compiler_builtins included: with less,
        // bpf-linker's BTF has a `memcpy` whose type is missing, the kernel refuses the BTF,
        // and aya then fails to create the maps.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "2");
    // Set by an outer cargo (a build script's or `cargo run`'s environment): they would pin
    // the stable compiler, clippy's driver, or the outer target.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(key);
    }
    cmd
}
