//! `cargo xtask`: Ringwall's developer tasks. This file only parses the command line and
//! dispatches; each task lives in its own module, with its pure parts unit-tested there.

mod bench;
mod build;
mod ci;
mod client;
mod demo;
mod envoy;
mod fuzz;
mod handshakes;
mod peers;
mod policies;
mod proc;
mod report;
mod setup;
mod synflood;
mod tls;
mod venv;
mod wrk;
mod xdp_check;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Ringwall's developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages, nightly rust-src, bpf-linker.
    Setup,
    /// Build the XDP object (nightly, bpfel-unknown-none, bpf-linker).
    BuildEbpf,
    /// setup, build-ebpf, then the release build of ringwall.
    Build,
    /// Build, start a demo upstream on 127.0.0.1:9080 and run ringwall on examples/.
    Run {
        /// Extra arguments for `ringwall run` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Every check CI runs: setup, build-ebpf, fmt, clippy, build, tests.
    Test,
    /// Load benchmark of Ringwall beside nginx, HAProxy and Envoy (wrk, loopback only).
    Bench(bench::Options),
    /// CPU cost of dropping a SYN flood: XDP, nftables, iptables, accept, no rule (namespaces).
    BenchSyn(synflood::Options),
    /// Fuzz the request-head and chunked-body parsers and the config loader, a bounded time each.
    Fuzz(fuzz::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup().map(|()| ExitCode::SUCCESS),
        Task::BuildEbpf => build::ebpf().map(|_| ExitCode::SUCCESS),
        Task::Build => build::all().map(|_| ExitCode::SUCCESS),
        Task::Run { args } => demo::run(&args),
        Task::Test => ci::test().map(|()| ExitCode::SUCCESS),
        Task::Bench(options) => bench::bench(&options).map(|()| ExitCode::SUCCESS),
        Task::BenchSyn(options) => synflood::bench_syn(&options).map(|()| ExitCode::SUCCESS),
        Task::Fuzz(options) => fuzz::fuzz(&options).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}

/// The workspace root: xtask always runs from its own checkout, wherever the shell is.
pub fn root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// Cargo's target directory, absolute (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}
