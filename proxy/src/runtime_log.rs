//! Runtime logs through `tracing`, to stderr: the level comes from the configuration
//! (`Configuration.spec.logging.runtimeLogs.logLevel`) and follows it on reload, unless
//! `RUST_LOG` is set, which then rules.

use std::sync::OnceLock;

use ringwall_config::LogLevel;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

static HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn directive(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

/// Installs the subscriber at `level` (or `RUST_LOG`). Call once.
pub fn init(level: LogLevel) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let overridden = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(directive(level)));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
        && !overridden
    {
        let _ = HANDLE.set(handle);
    }
}

/// Follows a reloaded configuration's level (no effect under `RUST_LOG`).
pub fn set_level(level: LogLevel) {
    if let Some(handle) = HANDLE.get() {
        if let Err(e) = handle.reload(EnvFilter::new(directive(level))) {
            tracing::warn!(error = %e, "cannot change the log level");
        }
    }
}
