//! Gives the memory a burst freed back to the kernel.
//!
//! glibc's allocator keeps what is freed in its arenas (one per thread that allocates) and
//! returns by itself only the free top of a heap. After a burst of connections, the
//! gateway's resident memory stays at its peak. Each new burst then lands on fragmented
//! arenas and raises it further: the soak test saw 71 → 99 MiB over five rounds of 2,000
//! connections, and 40 MiB after each round once trimmed.
//!
//! Every [`INTERVAL`] the control thread asks how much the arenas hold free (the
//! `ringwall_heap_free_bytes` gauge). Past [`THRESHOLD`] it calls `malloc_trim`
//! (counted in `ringwall_heap_trims_total`), which hands the free pages of every arena back
//! (`MADV_DONTNEED`). The workers barely notice: their hot path allocates nothing, and
//! each arena is locked only while it is walked. Other C libraries have neither call, and
//! their builds do nothing here.

use std::time::Duration;

/// How often the free memory is looked at.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Free bytes in the arenas below which a trim is not worth its page faults later.
const THRESHOLD: usize = 8 << 20;

/// Trims every [`INTERVAL`], for as long as the process runs, and says what it saw in
/// [`crate::metrics::HEAP_FREE`] and [`crate::metrics::HEAP_TRIMS`].
pub async fn trim_periodically() {
    let free_bytes = metrics::gauge!(crate::metrics::HEAP_FREE);
    let trims = metrics::counter!(crate::metrics::HEAP_TRIMS);
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(look) = trim(THRESHOLD) else {
            continue;
        };
        free_bytes.set(look.free as f64);
        if look.trimmed {
            trims.increment(1);
            tracing::debug!(free_bytes = look.free, "gave freed heap memory back");
        }
    }
}

/// What one look at the allocator found.
#[derive(Debug, Clone, Copy)]
struct Look {
    /// Bytes its arenas held free.
    free: usize,
    /// Whether they went back to the kernel, at least `threshold` of them.
    trimmed: bool,
}

/// Trims when the arenas hold at least `threshold` bytes free. `None` where the allocator
/// cannot say (not glibc).
#[cfg(target_env = "gnu")]
fn trim(threshold: usize) -> Option<Look> {
    // SAFETY: both only read and adjust the allocator's own state, under its locks.
    let free = unsafe { libc::mallinfo2() }.fordblks;
    let trimmed = free >= threshold;
    if trimmed {
        unsafe { libc::malloc_trim(0) };
    }
    Some(Look { free, trimmed })
}

#[cfg(not(target_env = "gnu"))]
fn trim(_threshold: usize) -> Option<Look> {
    None
}

#[cfg(all(test, target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let kib: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib << 10
    }

    #[test]
    fn memory_freed_below_a_live_block_goes_back_once_trimmed() {
        // On a thread of its own, so that its arena is nobody else's.
        std::thread::spawn(|| {
            // 96 MiB in blocks below the mmap threshold, written so that they are resident,
            // then freed but for the last, which holds the heap's top where it is.
            let mut blocks: Vec<Vec<u8>> = (0..960).map(|_| vec![1u8; 100 << 10]).collect();
            let last = blocks.pop();
            let before = rss();
            drop(blocks);
            let freed = rss();
            let look = trim(usize::MAX).expect("glibc says what it holds");
            assert!(!look.trimmed, "trimmed below its threshold");
            let look = trim(THRESHOLD).expect("glibc says what it holds");
            assert!(look.trimmed, "96 MiB free is past the threshold");
            let free = look.free;
            assert!(free >= 90 << 20, "{free} bytes free");
            let after = rss();
            drop(last);
            // Freeing kept the pages; the trim gave them back (other tests may allocate
            // meanwhile: half is enough to tell).
            assert!(
                before - freed.min(before) < 48 << 20,
                "freeing alone gave pages back"
            );
            assert!(
                freed - after.min(freed) > 48 << 20,
                "{freed} -> {after} bytes resident"
            );
        })
        .join()
        .expect("the test thread");
    }
}
