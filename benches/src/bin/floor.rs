//! `ringwall-floor`: the least work a proxy can do per small request on this machine, as a
//! peer of `cargo xtask bench`. It pairs each client connection with an upstream connection of its
//! own and copies bytes both ways without reading them: no HTTP parsing, routing, pooling,
//! policies, timers, logs or metrics. What it costs per request is the kernel's part of any
//! proxy (a receive and a send on each side) plus the cheapest loop io_uring allows: a
//! multishot accept, one multishot receive per socket into a provided-buffer ring, and one
//! `io_uring_enter` per turn that both submits and waits, on a ring set up for one thread
//! (`SINGLE_ISSUER`, `DEFER_TASKRUN`).
//!
//! For small exchanges (a request and a response of one segment each, the `small` workload)
//! that is a floor: Ringwall over it says how much of the machine's ceiling Ringwall reaches,
//! and it over nginx how far above nginx any proxy could go here. For large bodies it is no
//! floor: it moves them in 32 KiB buffers with one send at a time and serves starved
//! receives last come first, where a proxy can do better (Ringwall does). It is not a proxy to
//! deploy: it trusts the upstream, has no timeouts and keeps nothing from one connection to
//! the next.
//!
//! Usage: `ringwall-floor LISTEN UPSTREAM [WORKERS]`, e.g. `127.0.0.1:8006 127.0.0.1:9000 1`.
//! Each worker is a thread with its own ring and its own `SO_REUSEPORT` listener.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::process::ExitCode;
use std::thread;

use io_uring::types::Fd;
use io_uring::{cqueue, opcode, squeue, IoUring};
use ringwall_benches::BufRing;
use socket2::{Domain, Socket, Type};

/// Submission entries; completions get twice as many.
const RING_ENTRIES: u32 = 4_096;
/// Receive buffers: enough for 256 connections with a 1 MiB body in flight each way to
/// keep a few buffers each.
const BUFS: u16 = 2_048;
const BUF_SIZE: usize = 32 * 1024;
const GROUP: u16 = 0;

/// What a completion is for, in the top bits of its user data; the low 32 bits hold the
/// pair's slot and bit 32 the side.
const ACCEPT: u64 = 1 << 62;
const RECEIVE: u64 = 2 << 62;
const SEND: u64 = 3 << 62;
const KIND: u64 = 3 << 62;
const SIDE: u64 = 1 << 32;

/// The client's side of a pair, then the upstream's. Bytes received on one side are sent on
/// the other.
const CLIENT: usize = 0;
const UPSTREAM: usize = 1;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [listen, upstream] => parse(listen, upstream, "1"),
        [listen, upstream, workers] => parse(listen, upstream, workers),
        _ => Err("usage: ringwall-floor LISTEN UPSTREAM [WORKERS]".to_owned()),
    };
    let (listen, upstream, workers) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => {
            eprintln!("ringwall-floor: {err}");
            return ExitCode::from(2);
        }
    };
    let threads: Vec<_> = (0..workers)
        .map(|_| thread::spawn(move || Worker::new(listen, upstream).and_then(Worker::run)))
        .collect();
    for thread in threads {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                eprintln!("ringwall-floor: {err}");
                return ExitCode::FAILURE;
            }
            Err(_) => return ExitCode::FAILURE,
        }
    }
    ExitCode::SUCCESS
}

fn parse(
    listen: &str,
    upstream: &str,
    workers: &str,
) -> Result<(SocketAddr, SocketAddr, usize), String> {
    let addr = |text: &str| {
        text.parse::<SocketAddr>()
            .map_err(|err| format!("bad address `{text}`: {err}"))
    };
    let workers = workers
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("bad worker count `{workers}`"))?;
    Ok((addr(listen)?, addr(upstream)?, workers))
}

/// Bytes received on one side and not yet sent on the other: part of a ring buffer.
struct Chunk {
    bid: u16,
    start: usize,
    end: usize,
}

/// A client connection and its upstream connection.
#[derive(Default)]
struct Pair {
    fds: [RawFd; 2],
    /// Per side: its multishot receive is armed.
    receiving: [bool; 2],
    /// Per side: what it received, waiting to go out on the other side, in order.
    pending: [VecDeque<Chunk>; 2],
    /// Per side: the front of `pending` is being sent (one send at a time keeps the order).
    sending: [bool; 2],
    /// Per side: it has sent its last byte (end of stream).
    ended: [bool; 2],
    closing: bool,
}

impl Pair {
    /// Whether no operation of the ring still refers to the pair.
    fn idle(&self) -> bool {
        !self.receiving.iter().any(|&r| r) && !self.sending.iter().any(|&s| s)
    }
}

struct Worker {
    ring: IoUring,
    listener: Socket,
    upstream: SocketAddr,
    pairs: Vec<Pair>,
    free: Vec<usize>,
    /// Sides whose receive stopped because the buffer ring was empty, to re-arm once buffers
    /// come back.
    starved: Vec<(usize, usize)>,
    /// The completions of one turn, reused.
    done: Vec<cqueue::Entry>,
    /// Declared last: dropped after the ring that the kernel reads it through.
    bufs: BufRing,
}

impl Worker {
    fn new(listen: SocketAddr, upstream: SocketAddr) -> io::Result<Worker> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(RING_ENTRIES * 2)
            .build(RING_ENTRIES)?;
        let bufs = BufRing::register(&ring, BUFS, BUF_SIZE, GROUP)?;
        let listener = Socket::new(Domain::for_address(listen), Type::STREAM, None)?;
        listener.set_reuse_address(true)?;
        listener.set_reuse_port(true)?;
        listener.bind(&listen.into())?;
        listener.listen(4_096)?;
        let mut worker = Worker {
            ring,
            listener,
            upstream,
            pairs: Vec::new(),
            free: Vec::new(),
            starved: Vec::new(),
            done: Vec::new(),
            bufs,
        };
        worker.arm_accept();
        Ok(worker)
    }

    fn run(mut self) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
            let mut done = std::mem::take(&mut self.done);
            done.extend(self.ring.completion());
            for cqe in done.drain(..) {
                self.complete(&cqe)?;
            }
            self.done = done;
        }
    }

    fn complete(&mut self, cqe: &cqueue::Entry) -> io::Result<()> {
        let data = cqe.user_data();
        let slot = (data & 0xffff_ffff) as usize;
        let side = usize::from(data & SIDE != 0);
        match data & KIND {
            ACCEPT => {
                if !cqueue::more(cqe.flags()) {
                    self.arm_accept();
                }
                if cqe.result() < 0 {
                    let err = io::Error::from_raw_os_error(-cqe.result());
                    eprintln!("ringwall-floor: accept: {err}");
                    return Ok(());
                }
                self.open(cqe.result());
            }
            RECEIVE => self.received(slot, side, cqe),
            SEND => self.sent(slot, side, cqe.result()),
            _ => unreachable!("user data {data:#x} that the worker never set"),
        }
        Ok(())
    }

    /// A client connected: connects its upstream connection and starts receiving on both.
    fn open(&mut self, client: RawFd) {
        // SAFETY: the accepted descriptor is ours and used nowhere else; dropped, it closes.
        let client = unsafe { TcpStream::from_raw_fd(client) };
        let upstream = match TcpStream::connect(self.upstream) {
            Ok(stream) => stream,
            Err(err) => {
                eprintln!("ringwall-floor: connect to {}: {err}", self.upstream);
                return;
            }
        };
        for stream in [&client, &upstream] {
            let _ = stream.set_nodelay(true);
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.pairs.push(Pair::default());
            self.pairs.len() - 1
        });
        let pair = &mut self.pairs[slot];
        pair.fds = [client.into_raw_fd(), upstream.into_raw_fd()];
        pair.ended = [false; 2];
        pair.closing = false;
        for side in [CLIENT, UPSTREAM] {
            self.arm_receive(slot, side);
        }
    }

    fn received(&mut self, slot: usize, side: usize, cqe: &cqueue::Entry) {
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        let pair = &mut self.pairs[slot];
        pair.receiving[side] = more;
        let closing = pair.closing;
        if res > 0 {
            let bid =
                cqueue::buffer_select(cqe.flags()).expect("a receive with data names its buffer");
            if closing {
                self.give_back(bid);
            } else {
                pair.pending[side].push_back(Chunk {
                    bid,
                    start: 0,
                    end: res as usize,
                });
                if !more {
                    self.arm_receive(slot, side);
                }
                self.send_next(slot, side);
            }
        } else if res == -libc::ENOBUFS && !closing {
            self.starved.push((slot, side));
        } else if res == 0 && !closing {
            // The side finished: close once what it sent has gone out.
            pair.ended[side] = true;
            self.close_when_flushed(slot, side);
        } else {
            self.close(slot);
        }
        self.release_if_idle(slot);
    }

    fn sent(&mut self, slot: usize, side: usize, res: i32) {
        let pair = &mut self.pairs[slot];
        pair.sending[side] = false;
        let chunk = pair.pending[side]
            .front_mut()
            .expect("a send has its chunk");
        if res > 0 {
            chunk.start += res as usize;
        }
        let finished = res <= 0 || pair.closing || chunk.start == chunk.end;
        if finished {
            let bid = chunk.bid;
            pair.pending[side].pop_front();
            self.give_back(bid);
        }
        if res <= 0 {
            self.close(slot);
        } else {
            self.send_next(slot, side);
            self.close_when_flushed(slot, side);
        }
        self.release_if_idle(slot);
    }

    /// Sends the front of what `side` received on the other side, unless a send is out.
    fn send_next(&mut self, slot: usize, side: usize) {
        let pair = &mut self.pairs[slot];
        if pair.sending[side] || pair.closing {
            return;
        }
        let Some(chunk) = pair.pending[side].front() else {
            return;
        };
        let bytes = &self.bufs.filled(chunk.bid, chunk.end)[chunk.start..];
        let to = Fd(pair.fds[1 - side]);
        let sqe = opcode::Send::new(to, bytes.as_ptr(), bytes.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        pair.sending[side] = true;
        self.push(sqe.user_data(SEND | side_bit(side) | slot as u64));
    }

    fn close_when_flushed(&mut self, slot: usize, side: usize) {
        let pair = &self.pairs[slot];
        if pair.ended[side] && pair.pending[side].is_empty() {
            self.close(slot);
        }
    }

    /// Shuts both sockets down, which ends their receives; the descriptors are closed once
    /// no operation refers to them.
    fn close(&mut self, slot: usize) {
        let pair = &mut self.pairs[slot];
        if pair.closing {
            return;
        }
        pair.closing = true;
        for fd in pair.fds {
            // SAFETY: the pair's descriptors stay open until `release_if_idle` closes them.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        for side in [CLIENT, UPSTREAM] {
            // What is being sent goes back when its send completes.
            let keep = usize::from(pair.sending[side]);
            for chunk in pair.pending[side].drain(keep..) {
                self.bufs.give_back(chunk.bid);
            }
        }
        self.rearm_starved();
    }

    fn release_if_idle(&mut self, slot: usize) {
        let pair = &mut self.pairs[slot];
        if pair.closing && pair.idle() && !pair.fds.contains(&-1) {
            for fd in pair.fds {
                // SAFETY: no operation of the ring refers to the descriptor any more.
                unsafe { libc::close(fd) };
            }
            pair.fds = [-1; 2];
            self.free.push(slot);
        }
    }

    fn give_back(&mut self, bid: u16) {
        self.bufs.give_back(bid);
        self.rearm_starved();
    }

    fn rearm_starved(&mut self) {
        while let Some((slot, side)) = self.starved.pop() {
            self.arm_receive(slot, side);
        }
    }

    fn arm_accept(&mut self) {
        let sqe = opcode::AcceptMulti::new(Fd(self.listener.as_raw_fd())).build();
        self.push(sqe.user_data(ACCEPT));
    }

    fn arm_receive(&mut self, slot: usize, side: usize) {
        let pair = &mut self.pairs[slot];
        if pair.receiving[side] || pair.closing {
            return;
        }
        pair.receiving[side] = true;
        let sqe = opcode::RecvMulti::new(Fd(pair.fds[side]), GROUP).build();
        self.push(sqe.user_data(RECEIVE | side_bit(side) | slot as u64));
    }

    fn push(&mut self, sqe: squeue::Entry) {
        // SAFETY: what an entry points at (a ring buffer being sent) stays put until its
        // completion: buffers go back to the ring only after their send completes.
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            if let Err(err) = self.ring.submit() {
                eprintln!("ringwall-floor: submit: {err}");
            }
        }
    }
}

fn side_bit(side: usize) -> u64 {
    if side == UPSTREAM {
        SIDE
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;

    const UP: usize = 300_000;
    const DOWN: usize = 1 << 20;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    /// An upstream that reads `UP` bytes, answers `DOWN` bytes and closes, per connection.
    fn upstream() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.expect("accept");
                thread::spawn(move || {
                    let mut got = vec![0; UP];
                    conn.read_exact(&mut got).expect("the client's bytes");
                    assert_eq!(got, pattern(UP, 1), "the bytes arrive as sent");
                    conn.write_all(&pattern(DOWN, 2)).expect("answer");
                });
            }
        });
        addr
    }

    #[test]
    fn relays_both_ways_in_order_and_closes_after_the_last_byte() {
        let upstream = upstream();
        let (addr_tx, addr) = mpsc::channel();
        thread::spawn(move || {
            let worker =
                Worker::new("127.0.0.1:0".parse().expect("address"), upstream).expect("a worker");
            let local = worker.listener.local_addr().expect("bound");
            addr_tx
                .send(local.as_socket().expect("an IP address"))
                .expect("send");
            worker.run()
        });
        let addr = addr.recv().expect("the worker's address");
        // Sequential connections reuse the released pair's slot.
        for _ in 0..3 {
            let mut client = TcpStream::connect(addr).expect("connect");
            client.write_all(&pattern(UP, 1)).expect("write");
            let mut answer = Vec::new();
            // Ends only when the floor closes the client after the upstream closed.
            client.read_to_end(&mut answer).expect("read to the end");
            assert!(
                answer == pattern(DOWN, 2),
                "{} bytes, not the answer",
                answer.len()
            );
        }
    }
}
