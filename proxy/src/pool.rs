//! Per-worker keep-alive pool of upstream connections. Each worker owns its pool, so
//! checking a connection out or in is a plain `RefCell` borrow: no lock, no atomics.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU8;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hashbrown::HashMap;
use tokio_uring::net::TcpStream;
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

use crate::io::UpstreamStream;

/// Idle connections kept per upstream (address and TLS settings) and worker.
const MAX_IDLE_PER_ADDR: usize = 256;

/// Which idle connections can carry a request: those to the same address, made with the
/// same TLS settings (0 for plain TCP, else [`crate::tls::UpstreamTls::id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    pub tls: u64,
}

/// An upstream connection with the read buffer that lives as long as it does.
pub struct UpstreamConn {
    pub stream: UpstreamStream,
    pub buf: BytesMut,
    pub key: PoolKey,
    /// Came from the pool rather than from a fresh connect.
    pub reused: bool,
    /// Its place under the Service's `maxConnections`, given back when it closes.
    pub held: Option<crate::breaker::Held>,
}

struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<PoolKey, Vec<Idle>>>,
}

impl Pool {
    /// The most recently used idle connection for `key` that has not outlived
    /// `max_idle`; older ones are closed on the way.
    pub fn take(&self, key: PoolKey, max_idle: Duration) -> Option<UpstreamConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        let now = Instant::now();
        while let Some(entry) = list.pop() {
            if now.duration_since(entry.since) <= max_idle {
                let mut conn = entry.conn;
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    pub fn put(&self, conn: UpstreamConn) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(conn.key).or_default();
        if list.len() >= MAX_IDLE_PER_ADDR {
            // The oldest goes: it is the likeliest to be closed by the upstream soon.
            list.remove(0);
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes every idle connection that has outlived `max_idle`, so that an upstream
    /// that is no longer called does not keep them open forever.
    pub fn evict_expired(&self, max_idle: Duration) {
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        for list in idle.values_mut() {
            // Oldest first: stop at the first one still young enough.
            let expired = list
                .iter()
                .take_while(|e| now.duration_since(e.since) > max_idle)
                .count();
            list.drain(..expired);
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

/// Whether an idle upstream connection is still open and silent. Costs one syscall;
/// used before sending a request whose body cannot be replayed on another connection.
pub fn still_open(stream: &TcpStream) -> bool {
    peek(stream) == Peek::Silent
}

/// What a socket holds, looked at without consuming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// Open, nothing to read.
    Silent,
    /// Bytes wait to be read.
    Data,
    /// The peer closed its side, or the socket failed.
    Closed,
}

/// Looks at `stream` on the ring, in the same submission as the write that comes next:
/// the peek goes in now, hard-linked to the next operation submitted, so the kernel runs
/// the two in order without a syscall of their own, and the request pays no round trip
/// for the look. The write goes out whatever the peek finds: this is for requests that
/// may be sent again on another connection if it finds anything (see `conn::forward`).
/// The caller must submit the write before it awaits anything else.
pub fn peek_with_next_write(stream: &TcpStream) -> InFlightOneshot<(), PeekResult> {
    use io_uring::{opcode, squeue, types};
    let sqe = opcode::Recv::new(types::Fd(stream.as_raw_fd()), PEEK_SINK.as_ptr(), 1)
        .flags(libc::MSG_PEEK | libc::MSG_DONTWAIT)
        .build()
        .flags(squeue::Flags::IO_HARDLINK);
    // What the kernel is handed stays valid: the buffer is a static byte, valid for the
    // life of the process and never read, and the descriptor belongs to `stream`, which the
    // caller keeps open at least until the write that follows completes. A recv with
    // MSG_DONTWAIT completes at once; it cannot outlive the connection.
    UnsubmittedOneshot::new((), PeekResult, sqe).submit()
}

/// Where peeks on the ring put the byte they look at. Nothing reads it: only whether a
/// byte was there matters.
static PEEK_SINK: AtomicU8 = AtomicU8::new(0);

/// Turns the completion of [`peek_with_next_write`] into a [`Peek`].
pub struct PeekResult;

impl OneshotOutputTransform for PeekResult {
    type Output = Peek;
    type StoredData = ();

    fn transform_oneshot_output(self, (): (), cqe: io_uring::cqueue::Entry) -> Peek {
        peek_outcome(cqe.result())
    }
}

/// What a `recv` with `MSG_PEEK | MSG_DONTWAIT` returning `n` (or `-errno`) says.
fn peek_outcome(n: i32) -> Peek {
    match n {
        1.. => Peek::Data,
        0 => Peek::Closed,
        n if n == -libc::EAGAIN => Peek::Silent,
        _ => Peek::Closed,
    }
}

/// Looks at `stream` without reading from it: one non-blocking `recv` with `MSG_PEEK`.
pub fn peek(stream: &TcpStream) -> Peek {
    let mut byte = 0u8;
    // SAFETY: recv writes at most one byte into `byte`, which outlives the call; the fd
    // is owned by `stream` and open for the duration of the borrow.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0.. => peek_outcome(n.min(1) as i32),
        _ => peek_outcome(-std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_peek_returns_says_whether_the_connection_can_be_reused() {
        assert_eq!(peek_outcome(1), Peek::Data);
        assert_eq!(peek_outcome(0), Peek::Closed);
        assert_eq!(peek_outcome(-libc::EAGAIN), Peek::Silent);
        assert_eq!(peek_outcome(-libc::ECONNRESET), Peek::Closed);
        assert_eq!(peek_outcome(-libc::EBADF), Peek::Closed);
    }
}
