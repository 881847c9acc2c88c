//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` (libFuzzer, AddressSanitizer,
//! nightly) for a bounded time each, installing cargo-fuzz when it is missing. Each target
//! starts from the seeds committed in `fuzz/seeds/<target>` plus what earlier runs found
//! (`target/fuzz/corpus/<target>`, kept between runs, never committed). A crash stops the
//! run with the input that caused it in `target/fuzz/artifacts/<target>/`: that input
//! becomes a regression test beside the code it broke, and the bug is fixed.

use std::fs;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{proc, root, target_dir};

/// The cargo-fuzz release this task installs (it builds on the stable toolchain).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Every target of `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &["request_head", "chunked", "config"];

#[derive(clap::Args)]
pub struct Options {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    /// Targets, from: request_head chunked config.
    #[arg(long, default_value = "request_head chunked config")]
    targets: String,
}

/// The targets named in `list` (space- or comma-separated), each known.
fn targets(list: &str) -> Result<Vec<&str>> {
    let chosen: Vec<&str> = list
        .split([' ', ','])
        .filter(|word| !word.is_empty())
        .collect();
    if chosen.is_empty() {
        bail!("--targets needs at least one of: {}", TARGETS.join(" "));
    }
    if let Some(unknown) = chosen.iter().find(|t| !TARGETS.contains(t)) {
        bail!(
            "unknown fuzz target `{unknown}`; the targets are: {}",
            TARGETS.join(" ")
        );
    }
    Ok(chosen)
}

/// The arguments of `cargo fuzz run` for `target`, fuzzing for `seconds`.
fn run_args(target: &str, seconds: u32) -> Vec<String> {
    let dir = target_dir().join("fuzz");
    let path = |p: std::path::PathBuf| p.display().to_string();
    vec![
        "+nightly".into(),
        "fuzz".into(),
        "run".into(),
        "--fuzz-dir".into(),
        path(root().join("fuzz")),
        "--target-dir".into(),
        path(dir.join("build")),
        target.into(),
        // The first corpus directory receives what the run finds; the seeds stay as they are.
        path(dir.join("corpus").join(target)),
        path(root().join("fuzz").join("seeds").join(target)),
        "--".into(),
        format!("-max_total_time={seconds}"),
        format!(
            "-artifact_prefix={}/",
            path(dir.join("artifacts").join(target))
        ),
        // Heads and YAML files are small; longer inputs only slow each execution down.
        "-max_len=16384".into(),
    ]
}

pub fn fuzz(options: &Options) -> Result<()> {
    let chosen = targets(&options.targets)?;
    if options.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    cargo_fuzz()?;
    for target in chosen {
        let dir = target_dir().join("fuzz");
        for sub in ["corpus", "artifacts"] {
            let path = dir.join(sub).join(target);
            fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        println!("==> fuzz {target} for {} s", options.seconds);
        let started = Instant::now();
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root())
            .args(run_args(target, options.seconds))
            // The proxy's build script would build the XDP program: not needed here.
            .env("RINGWALL_SKIP_XDP", "1");
        let artifacts = dir.join("artifacts").join(target);
        let before = entries(&artifacts);
        if let Err(e) = proc::run(&mut cmd) {
            // A crash leaves its input; a build that failed leaves nothing new.
            let found: Vec<_> = entries(&artifacts)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if found.is_empty() {
                return Err(e.context(format!("fuzz target `{target}` did not run")));
            }
            let found: Vec<String> = found.iter().map(|f| f.display().to_string()).collect();
            bail!(
                "fuzz target `{target}` crashed; the input that broke it: {}",
                found.join(", ")
            );
        }
        println!(
            "<== fuzz {target}: no crash in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The files in `dir` (none when it cannot be read).
fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Installs cargo-fuzz when `cargo fuzz` is missing or another version.
fn cargo_fuzz() -> Result<()> {
    let version = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    if version.as_deref().and_then(cargo_fuzz_version) == Some(CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    print!("installing cargo-fuzz {CARGO_FUZZ_VERSION} (cargo install, a few minutes)...");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let started = Instant::now();
    let mut install = Command::new("cargo");
    install.args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]);
    let out = proc::output(&mut install)?;
    if !out.status.success() {
        println!(" failed");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("`{}` failed ({})", proc::show(&install), out.status);
    }
    println!(" installed in {} s", started.elapsed().as_secs());
    Ok(())
}

/// The version in `cargo fuzz --version`'s output (`cargo-fuzz 0.13.2`).
fn cargo_fuzz_version(output: &str) -> Option<&str> {
    let mut words = output.split_whitespace();
    match (words.next(), words.next()) {
        (Some("cargo-fuzz"), Some(version)) => Some(version),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked() {
        assert_eq!(
            targets("chunked, config").ok(),
            Some(vec!["chunked", "config"])
        );
        let err = targets("request_head parser").expect_err("unknown");
        assert!(
            err.to_string().contains("unknown fuzz target `parser`"),
            "{err}"
        );
        assert!(targets(" ").is_err());
    }

    #[test]
    fn every_target_has_seeds_and_a_source() {
        for target in TARGETS {
            let seeds = root().join("fuzz").join("seeds").join(target);
            let count = fs::read_dir(&seeds).map(|d| d.count()).unwrap_or(0);
            assert!(count > 0, "no seeds in {}", seeds.display());
            let source = root()
                .join("fuzz")
                .join("fuzz_targets")
                .join(format!("{target}.rs"));
            assert!(source.is_file(), "no {}", source.display());
        }
    }

    #[test]
    fn a_run_is_bounded_and_keeps_the_seeds_apart() {
        let args = run_args("chunked", 30);
        assert_eq!(&args[..3], ["+nightly", "fuzz", "run"]);
        assert!(args.contains(&"-max_total_time=30".to_owned()));
        let chunked = args.iter().position(|a| a == "chunked").expect("target");
        assert!(args[chunked + 1].ends_with("target/fuzz/corpus/chunked"));
        assert!(args[chunked + 2].ends_with("fuzz/seeds/chunked"));
    }

    #[test]
    fn reads_the_cargo_fuzz_version() {
        assert_eq!(cargo_fuzz_version("cargo-fuzz 0.13.2\n"), Some("0.13.2"));
        assert_eq!(cargo_fuzz_version("error: no such command"), None);
    }
}
