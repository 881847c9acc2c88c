//! The `ringwall` command: `validate` a configuration directory or `run` the gateway.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringwall::gateway::Gateway;
use ringwall::server;
use ringwall::xdp::{AttachMode, XdpSetting};

/// The stopping flags, in seconds.
struct Timing {
    drain: f64,
    shutdown: f64,
}

/// The `--xdp*` flags.
struct XdpOptions {
    setting: XdpSetting,
    ifaces: Vec<String>,
    mode: AttachMode,
}

#[derive(Parser)]
#[command(
    name = "ringwall",
    version,
    about = "A thread-per-core io_uring API gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a configuration directory and report every error.
    Validate {
        /// Directory of Flex Gateway Local Mode YAML resources.
        dir: PathBuf,
    },
    /// Run the gateway.
    Run {
        /// Directory of Flex Gateway Local Mode YAML resources.
        #[arg(long)]
        config: PathBuf,
        /// Worker threads, each with its own io_uring runtime (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Address of the admin endpoints (/live, /ready, /metrics, /config,
        /// /connection-rules); loopback unless you say otherwise.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        /// No admin listener (and no metrics).
        #[arg(long, conflicts_with = "admin")]
        no_admin: bool,
        /// Enforce connection rules with XDP: auto (when it loads), required, or off.
        #[arg(long, value_enum, default_value_t = XdpSetting::Auto)]
        xdp: XdpSetting,
        /// Interface to attach XDP to (repeatable; default: where the listeners' addresses live).
        #[arg(long = "xdp-iface")]
        xdp_ifaces: Vec<String>,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        xdp_mode: AttachMode,
        /// Reload only on SIGHUP, not when a file in the directory changes.
        #[arg(long)]
        no_watch: bool,
        /// Seconds to keep serving after SIGTERM with /ready at 503 and every response
        /// closing its connection, so a load balancer can take the replica out first.
        #[arg(long, default_value_t = 0.0)]
        drain_seconds: f64,
        /// Seconds to let in-flight requests finish after SIGTERM.
        #[arg(long, default_value_t = 30.0)]
        shutdown_timeout: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { dir } => match Gateway::load(&dir, None) {
            Ok(gateway) => {
                for w in gateway.warnings() {
                    eprintln!("warning: {w}");
                }
                println!("ok: {}", gateway.snapshot.summary);
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            workers,
            admin,
            no_admin,
            xdp,
            xdp_ifaces,
            xdp_mode,
            no_watch,
            drain_seconds,
            shutdown_timeout,
        } => {
            let xdp = XdpOptions {
                setting: xdp,
                ifaces: xdp_ifaces,
                mode: xdp_mode,
            };
            let timing = Timing {
                drain: drain_seconds,
                shutdown: shutdown_timeout,
            };
            let admin = (!no_admin).then_some(admin);
            match run(&config, workers, admin, xdp, !no_watch, timing) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringwall: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(
    config: &std::path::Path,
    workers: Option<usize>,
    admin: Option<std::net::SocketAddr>,
    xdp: XdpOptions,
    watch: bool,
    timing: Timing,
) -> anyhow::Result<()> {
    // Taken first, so that a change made while the gateway starts is noticed.
    let loaded = ringwall::watch::fingerprint(config);
    let snapshot = match ringwall_config::load_dir(config) {
        Ok(s) => Arc::new(s),
        Err(errors) => {
            eprintln!("{errors}");
            anyhow::bail!("invalid configuration in {}", config.display());
        }
    };
    ringwall::runtime_log::init(snapshot.settings.logging.runtime.level);
    let workers = match workers {
        Some(0) => anyhow::bail!("--workers must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    for (flag, secs) in [
        ("--shutdown-timeout", timing.shutdown),
        ("--drain-seconds", timing.drain),
    ] {
        if !(secs.is_finite() && secs >= 0.0) {
            anyhow::bail!("{flag} must be a non-negative number of seconds");
        }
    }
    // Before the gateway: handles registered before the recorder record nothing. Only
    // with an admin listener, which scrapes (and so drains) the histograms.
    let metrics = admin.map(|_| ringwall::metrics::install()).transpose()?;
    let gateway = match Gateway::build(snapshot, None) {
        Ok(g) => Arc::new(g),
        Err(errors) => {
            eprintln!("{errors}");
            anyhow::bail!("invalid configuration in {}", config.display());
        }
    };
    for w in gateway.warnings() {
        tracing::warn!("{w}");
    }
    server::run(
        gateway,
        &server::Options {
            config_dir: config.to_path_buf(),
            watch,
            loaded,
            workers,
            drain_period: Duration::from_secs_f64(timing.drain),
            shutdown_timeout: Duration::from_secs_f64(timing.shutdown),
            admin,
            metrics,
            xdp: xdp.setting,
            xdp_ifaces: xdp.ifaces,
            xdp_mode: xdp.mode,
        },
    )?;
    Ok(())
}
