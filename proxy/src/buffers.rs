//! Each worker's spare buffers, in two sizes. A keep-alive connection hands its write
//! buffer back while it waits for its next request and takes one when a request arrives,
//! so tens of thousands of idle connections hold none, and a busy worker reuses a few
//! instead of allocating one per exchange. A large body is relayed through a large buffer
//! taken for the length of the relay. Per worker, so a plain `RefCell`: no lock, no atomics.

use std::cell::RefCell;

use bytes::BytesMut;

/// The size of a write buffer: a response head and a small body coalesced with it.
pub const WRITE_BUF: usize = 16 * 1024;
/// The size of a buffer a large body is relayed through: a read takes what has arrived up
/// to this much, and each read is one write onward.
pub const LARGE_BUF: usize = 64 * 1024;

/// Spare buffers of one size.
pub struct Buffers {
    size: usize,
    /// How many are kept; more are freed.
    max_spare: usize,
    spare: RefCell<Vec<BytesMut>>,
}

impl Buffers {
    /// Write buffers: up to 256 spares (4 MiB).
    pub fn write() -> Self {
        Self::new(WRITE_BUF, 256)
    }

    /// Large relay buffers: up to 32 spares (2 MiB).
    pub fn large() -> Self {
        Self::new(LARGE_BUF, 32)
    }

    fn new(size: usize, max_spare: usize) -> Self {
        Buffers {
            size,
            max_spare,
            spare: RefCell::default(),
        }
    }

    /// An empty buffer of at least this pool's size.
    pub fn take(&self) -> BytesMut {
        self.spare
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(self.size))
    }

    /// Keeps `buf` for the next [`Buffers::take`], unless it is the wrong size (an empty
    /// one, or one a large head grew) or enough are kept already.
    pub fn give(&self, mut buf: BytesMut) {
        buf.clear();
        // A buffer split as it was written shows only its tail as capacity; reclaiming
        // shows its whole allocation, which is what is kept.
        let _ = buf.try_reclaim(self.size);
        if !(self.size..=4 * self.size).contains(&buf.capacity()) {
            return;
        }
        let mut spare = self.spare.borrow_mut();
        if spare.len() < self.max_spare {
            spare.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_only_the_right_size_is_kept() {
        for buffers in [Buffers::write(), Buffers::large()] {
            let mut a = buffers.take();
            assert!(a.capacity() >= buffers.size);
            a.extend_from_slice(b"response");
            let ptr = a.as_ptr();
            buffers.give(a);
            let again = buffers.take();
            assert!(again.is_empty());
            assert_eq!(again.as_ptr(), ptr, "the same allocation, reused");
            buffers.give(BytesMut::new());
            buffers.give(BytesMut::with_capacity(1 << 20));
            assert!(buffers.spare.borrow().is_empty());
            for _ in 0..buffers.max_spare + 10 {
                buffers.give(BytesMut::with_capacity(buffers.size));
            }
            assert_eq!(buffers.spare.borrow().len(), buffers.max_spare);
        }
    }

    #[test]
    fn a_buffer_split_as_it_was_written_is_kept_whole() {
        let buffers = Buffers::large();
        let mut buf = buffers.take();
        let ptr = buf.as_ptr();
        buf.extend_from_slice(&[7; 40 * 1024]);
        drop(buf.split_to(40 * 1024));
        assert!(buf.capacity() < LARGE_BUF);
        buffers.give(buf);
        let again = buffers.take();
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.capacity() >= LARGE_BUF);
    }
}
