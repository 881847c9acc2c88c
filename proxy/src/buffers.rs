//! Each worker's spare write buffers. A keep-alive connection hands its write buffer back
//! while it waits for its next request and takes one when a request arrives, so tens of
//! thousands of idle connections hold none, and a busy worker reuses a few instead of
//! allocating one per exchange. Per worker, so a plain `RefCell`: no lock, no atomics.

use std::cell::RefCell;

use bytes::BytesMut;

/// The size of a write buffer: a response head and a small body coalesced with it.
pub const WRITE_BUF: usize = 16 * 1024;
/// Spare buffers kept per worker (4 MiB); more are freed.
const MAX_SPARE: usize = 256;

#[derive(Default)]
pub struct Buffers {
    spare: RefCell<Vec<BytesMut>>,
}

impl Buffers {
    /// An empty buffer of at least [`WRITE_BUF`] bytes.
    pub fn take(&self) -> BytesMut {
        self.spare
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(WRITE_BUF))
    }

    /// Keeps `buf` for the next [`Buffers::take`], unless it is the wrong size (an empty
    /// one, or one a large head grew) or enough are kept already.
    pub fn give(&self, mut buf: BytesMut) {
        buf.clear();
        if !(WRITE_BUF..=4 * WRITE_BUF).contains(&buf.capacity()) {
            return;
        }
        let mut spare = self.spare.borrow_mut();
        if spare.len() < MAX_SPARE {
            spare.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_only_the_right_size_is_kept() {
        let buffers = Buffers::default();
        let mut a = buffers.take();
        a.extend_from_slice(b"response");
        let ptr = a.as_ptr();
        buffers.give(a);
        let again = buffers.take();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same allocation, reused");
        buffers.give(BytesMut::new());
        buffers.give(BytesMut::with_capacity(1 << 20));
        assert!(buffers.spare.borrow().is_empty());
        for _ in 0..MAX_SPARE + 10 {
            buffers.give(BytesMut::with_capacity(WRITE_BUF));
        }
        assert_eq!(buffers.spare.borrow().len(), MAX_SPARE);
    }
}
