//! What the benches share. The criterion benches live in `benches/benches`; `src/bin/floor.rs`
//! is the bench's floor peer. Both the `ring_recv` bench and the floor receive into a
//! provided-buffer ring, kept here, and `relay_io` and `ring_recv` both open loopback pairs.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// A connected loopback pair: the end that connected, and the end that was accepted.
pub fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let outer = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (inner, _) = listener.accept().expect("accept");
    (outer, inner)
}

/// A provided-buffer ring: `entries` buffers of `size` bytes each that the kernel picks from
/// for receives that name `group`, handed back one by one once read.
pub struct BufRing {
    entries: *mut BufRingEntry,
    count: u16,
    size: usize,
    bufs: Vec<u8>,
    tail: u16,
}

impl BufRing {
    /// Registers the ring with `ring` under `group`, every buffer given to the kernel.
    /// `entries` must be a power of two, as the kernel requires.
    pub fn register(
        ring: &IoUring,
        entries: u16,
        size: usize,
        group: u16,
    ) -> std::io::Result<BufRing> {
        assert!(
            entries.is_power_of_two(),
            "a buffer ring's size is a power of two"
        );
        let bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping, page-aligned as the kernel requires.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf_ring = BufRing {
            entries: map.cast(),
            count: entries,
            size,
            bufs: vec![0; usize::from(entries) * size],
            tail: 0,
        };
        for bid in 0..entries {
            buf_ring.give_back(bid);
        }
        // SAFETY: the mapping holds `entries` entries and outlives the ring's use of it (the
        // owner drops its io_uring before this ring), as do the buffers the entries point at.
        unsafe {
            ring.submitter()
                .register_buf_ring(map as u64, entries, group)
        }?;
        Ok(buf_ring)
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them.
    pub fn filled(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.size;
        &self.bufs[start..start + len.min(self.size)]
    }

    /// Puts buffer `bid` back at the ring's tail for the kernel to pick again.
    pub fn give_back(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: `slot` is within the mapping of `count` entries; the kernel reads an entry
        // only once the tail below has moved past it.
        let entry = unsafe { &mut *self.entries.add(slot) };
        let offset = usize::from(bid) * self.size;
        entry.set_addr(self.bufs[offset..].as_ptr() as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field shares the first entry's memory and is read by the kernel
        // atomically; the release store publishes the entry written above.
        let tail = unsafe { &*BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        let bytes = usize::from(self.count) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: the mapping made in `register`; the io_uring it was registered with is
        // gone (the owner drops its ring first).
        unsafe { libc::munmap(self.entries.cast(), bytes) };
    }
}
