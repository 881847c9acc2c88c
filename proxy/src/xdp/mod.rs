//! The kernel plane from userspace: loads Ringwall's XDP program, attaches it to the
//! listeners' interfaces, keeps its maps in step with the configuration and reads its
//! counters back. Where it cannot load, [`crate::admission`] enforces the same rules at
//! accept, and the gateway says so.

mod ifaces;
mod kernel;
pub mod object;

use std::fmt;

pub use ifaces::interfaces_for;
pub use kernel::{CounterReader, KernelPlane};

/// `--xdp`: whether the kernel plane is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpSetting {
    /// Use XDP when it loads; otherwise warn once and enforce at accept.
    Auto,
    /// Exit if XDP cannot be loaded and attached.
    Required,
    /// Never load XDP; enforce at accept.
    Off,
}

/// `--xdp-mode`: how the program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// In the driver, before an skb exists; not every device supports it.
    Native,
    /// After the skb is built; works on every device.
    Generic,
    /// Native where the device supports it, generic elsewhere.
    Auto,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Auto => "auto",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("this ringwall binary carries no XDP program (the BPF toolchain was missing when it was built)")]
    NotBuilt,
    #[error("cannot load the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP program was refused: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("cannot attach XDP to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: AttachMode,
        source: aya::programs::ProgramError,
    },
    #[error("the XDP object has no usable map {0}")]
    MissingMap(&'static str),
    #[error("XDP map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("cannot list network interfaces: {0}")]
    Interfaces(std::io::Error),
    #[error("no network interface carries {0}, so XDP has nowhere to attach for it")]
    NoInterface(std::net::IpAddr),
}

/// Connection counters, from the kernel's per-CPU array or from the accept path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub passed: u64,
    pub drop_deny: u64,
    pub drop_allow: u64,
    pub drop_rate: u64,
}
