//! Per-worker keep-alive pool of upstream connections. Each worker owns its pool, so
//! checking a connection out or in is a plain `RefCell` borrow: no lock, no atomics.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hashbrown::HashMap;
use tokio_uring::net::TcpStream;

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
        1.. => Peek::Data,
        0 => Peek::Closed,
        _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock => {
            Peek::Silent
        }
        _ => Peek::Closed,
    }
}
