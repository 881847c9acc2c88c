//! The XDP object carried inside the binary, when the build could compile it
//! (`build.rs` sets `ringwall_xdp_embedded` then).

/// Aligns the embedded bytes for aya's ELF parser.
#[cfg(ringwall_xdp_embedded)]
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

#[cfg(ringwall_xdp_embedded)]
static ALIGNED: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/ringwall-xdp.o")));

/// The program's ELF object, or `None` when this binary was built without it.
#[cfg(ringwall_xdp_embedded)]
pub const OBJECT: Option<&[u8]> = Some(&ALIGNED.0);
#[cfg(not(ringwall_xdp_embedded))]
pub const OBJECT: Option<&[u8]> = None;
