//! `cargo xtask test`: every check CI runs, in the order that fails fastest, each step timed.
//! `.ci/run` is this and nothing else, so a developer runs exactly what CI runs.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::{build, proc, root, setup, target_dir};

pub fn test() -> Result<()> {
    let ringwall_bin = target_dir().join("debug").join("ringwall");
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let mut step = |name: &'static str, task: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        println!("==> {name}");
        let started = Instant::now();
        let result = task();
        let elapsed = started.elapsed();
        timings.push((name, elapsed));
        match &result {
            Ok(()) => println!("<== {name}: ok in {:.1} s", elapsed.as_secs_f64()),
            Err(_) => eprintln!("<== {name}: FAILED after {:.1} s", elapsed.as_secs_f64()),
        }
        result.map_err(|err| err.context(format!("step `{name}` failed")))
    };

    step("setup", &mut setup::setup)?;
    step("build-ebpf", &mut || build::ebpf().map(drop))?;
    step("fmt", &mut || {
        proc::run(&mut cargo(&["fmt", "--all", "--", "--check"]))
    })?;
    step("clippy", &mut || {
        proc::run(&mut cargo(&[
            "clippy",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step("build", &mut || {
        proc::run(&mut cargo(&["build", "-p", "ringwall"]))
    })?;
    step("test", &mut || {
        // Default members only: the XDP crate cannot build for the host.
        proc::run(cargo(&["test"]).env("RINGWALL_BIN", &ringwall_bin))
    })?;

    println!("all steps passed:");
    for (name, elapsed) in &timings {
        println!("  {name:<11} {:>7.1} s", elapsed.as_secs_f64());
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).args(args);
    cmd
}
