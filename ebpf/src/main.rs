//! Ringwall's kernel plane. This first version passes every packet; the deny/allow
//! tries and the SYN rate limit arrive with the kernel-plane issue. It exists now so
//! that the nightly BPF toolchain is installed and exercised by `cargo xtask test`.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn ringwall_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
