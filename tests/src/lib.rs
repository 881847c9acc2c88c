//! Harness for the end-to-end tests: the built `ringwall` binary ([`Gateway`]) against
//! in-process origins ([`Origin`]) on OS-chosen ports, driven by a raw client ([`Client`]).
//!
//! Nothing here synchronises with sleeps: the gateway is ready when it says `ready`, a request
//! is in flight when the origin has recorded it, a connection is closed when a read says so.
//! Every socket has a timeout and every test body runs under [`within`], so a broken gateway
//! fails a test instead of hanging the suite.

pub mod checks;
pub mod client;
pub mod gateway;
pub mod netns;
pub mod origin;
pub mod process;
pub mod redis;
pub mod tls;
pub mod wire;
pub mod yaml;

#[cfg(test)]
mod tests;

pub use checks::{assert_error, assert_rejected_and_closed};
pub use client::{Client, Response};
pub use gateway::{config_dir, metric, ringwall_bin, run_cli, Gateway};
pub use origin::{
    closed_port, free_port, full_accept_queue, ClosedPort, FullQueue, Gate, Origin, Reply,
};

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Runs a test body on its own thread and fails the test if it takes longer than `limit`.
/// A panic in the body is re-raised as is.
pub fn within<T: Send + 'static>(limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (done_tx, done) = mpsc::channel();
    let handle = thread::Builder::new()
        .name("test-body".into())
        .spawn(move || {
            let value = body();
            let _ = done_tx.send(());
            value
        })
        .expect("spawn the test body");
    match done.recv_timeout(limit) {
        // Finished, or panicked (the sender dropped while unwinding): join tells which.
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("test did not finish within {limit:?}")
        }
    }
}

/// The default per-test limit.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);

/// 64-bit FNV-1a, to compare large bodies without printing them.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A small deterministic PRNG (xorshift64*), so a failing run can be reproduced.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Chunk sizes for a chunked body: mostly a few KiB to 64 KiB, some tiny ones, so chunk
    /// boundaries land everywhere relative to the gateway's buffers.
    pub fn chunk_sizes(&mut self, count: usize) -> Vec<usize> {
        (0..count)
            .map(|_| match self.range(0, 9) {
                0 => self.range(1, 16),
                1 => self.range(17, 1024),
                _ => self.range(1025, 65536),
            })
            .collect()
    }
}

/// Asserts `got == want` for large buffers, reporting sizes, hashes and the first difference
/// instead of dumping megabytes.
#[track_caller]
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: got {} bytes (fnv {:016x}), want {} bytes (fnv {:016x}); first difference at {:?}",
        got.len(),
        fnv1a(got),
        want.len(),
        fnv1a(want),
        first_diff.or(Some(got.len().min(want.len())))
    );
}

/// A gateway whose one ApiInstance, `api` on `127.0.0.1:0`, sends everything to `origin`.
pub fn gateway_to(origin: &Origin) -> Gateway {
    Gateway::start(&[("api.yaml", &yaml::simple_api(&origin.url()))], &[])
}
