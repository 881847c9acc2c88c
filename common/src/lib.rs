//! Types shared by the XDP program and userspace. Everything here is `#[repr(C)]`,
//! integers only, with its size asserted at compile time, so that both sides agree
//! on the layout of every map key and value.
#![no_std]

/// Indexes of the per-CPU counters the XDP program keeps.
pub mod counter {
    pub const PASSED: u32 = 0;
    pub const COUNT: u32 = 1;
}
