//! Does multishot receive with a provided buffer ring pay here? tokio-uring, which the
//! workers run on, has no call for either, so taking them means a ring driver of our own;
//! this bench says what that would save at the bottom of the stack. A bare io_uring loop
//! answers small requests (120 bytes in, 8 out) on 32 loopback connections, kept busy by a
//! client thread, in two ways: a one-shot `RECV` into the connection's own buffer, submitted
//! again after each request (what a worker does through tokio-uring), and one `RECV` with
//! `IORING_RECV_MULTISHOT` per connection that picks a buffer from a registered ring for
//! each request. The figure is the serving thread's CPU time (user and kernel) per request:
//! the client's work is the same in both, and the kernel runs each receive in the thread that
//! reaps it.

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use io_uring::types::Fd;
use io_uring::{cqueue, opcode, squeue, IoUring};
use ringwall_benches::{loopback_pair, BufRing};

const CONNS: usize = 32;
const REQUEST: [u8; 120] = [b'q'; 120];
const ANSWER: &[u8; 8] = b"answer!\n";
/// Requests per measured iteration.
const PER_ITER: u64 = 3_200;
/// Receive buffers: the one-shot way has one per connection; the ring as many.
const BUF: usize = 4_096;
const RING_ENTRIES: u16 = 64;
const GROUP: u16 = 7;
/// user_data: the connection in the low bits, whether it is a send in this bit.
const SEND: u64 = 1 << 32;

/// Both sides of `CONNS` loopback connections, and a client thread that writes a request on
/// each, then reads each answer, until stopped.
struct Load {
    servers: Vec<TcpStream>,
    stop: Arc<AtomicBool>,
    client: Option<thread::JoinHandle<()>>,
}

impl Load {
    fn start() -> Load {
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..CONNS {
            let (client, server) = loopback_pair();
            client.set_nodelay(true).expect("nodelay");
            client
                .set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            server.set_nodelay(true).expect("nodelay");
            clients.push(client);
            servers.push(server);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let client = thread::spawn(move || {
            let mut answer = [0_u8; ANSWER.len()];
            while !stopped.load(Ordering::Relaxed) {
                for c in &mut clients {
                    c.write_all(&REQUEST).expect("request");
                }
                for c in &mut clients {
                    if c.read_exact(&mut answer).is_err() {
                        return;
                    }
                }
            }
        });
        Load {
            servers,
            stop,
            client: Some(client),
        }
    }

    fn fds(&self) -> Vec<RawFd> {
        self.servers.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(client) = self.client.take() {
            let _ = client.join();
        }
    }
}

/// How a connection's next request is received.
enum Receive {
    /// A one-shot `RECV` per request into the connection's buffer.
    OneShot { bufs: Vec<Vec<u8>> },
    /// One multishot `RECV` per connection, buffers from a registered ring.
    Multishot { ring: BufRing },
}

struct Server {
    ring: IoUring,
    fds: Vec<RawFd>,
    receive: Receive,
}

impl Server {
    fn new(fds: Vec<RawFd>, multishot: bool) -> Server {
        let ring = IoUring::new(256).expect("an io_uring");
        let receive = if multishot {
            Receive::Multishot {
                ring: BufRing::register(&ring, RING_ENTRIES, BUF, GROUP)
                    .expect("register the buffer ring"),
            }
        } else {
            Receive::OneShot {
                bufs: vec![vec![0; BUF]; fds.len()],
            }
        };
        let mut server = Server { ring, fds, receive };
        for conn in 0..server.fds.len() {
            server.arm(conn);
        }
        server
    }

    /// Queues the receive of `conn`'s next request(s).
    fn arm(&mut self, conn: usize) {
        let fd = Fd(self.fds[conn]);
        let sqe = match &mut self.receive {
            Receive::OneShot { bufs } => {
                let buf = &mut bufs[conn];
                opcode::Recv::new(fd, buf.as_mut_ptr(), BUF as u32).build()
            }
            Receive::Multishot { .. } => opcode::RecvMulti::new(fd, GROUP).build(),
        };
        self.push(sqe.user_data(conn as u64));
    }

    fn push(&mut self, sqe: squeue::Entry) {
        // SAFETY: what the entry points at (a connection's buffer, the ring's buffers, the
        // static answer) lives as long as the server, which outlives its ring's operations.
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            self.ring.submit().expect("submit");
        }
    }

    /// Answers `count` requests (a request arrives whole: 120 bytes on a fresh socket).
    fn serve(&mut self, count: u64) {
        let mut served = 0;
        while served < count {
            self.ring.submit_and_wait(1).expect("submit and wait");
            let done: Vec<cqueue::Entry> = self.ring.completion().collect();
            for cqe in done {
                let conn = (cqe.user_data() & (SEND - 1)) as usize;
                let res = cqe.result();
                if cqe.user_data() & SEND != 0 {
                    assert_eq!(res, ANSWER.len() as i32, "a short or failed send");
                    continue;
                }
                assert!(res > 0, "receive: {}", io::Error::from_raw_os_error(-res));
                black_box(res);
                if let Receive::Multishot { ring } = &mut self.receive {
                    let bid = cqueue::buffer_select(cqe.flags()).expect("a ring buffer");
                    ring.give_back(bid);
                }
                let rearm = match self.receive {
                    Receive::OneShot { .. } => true,
                    Receive::Multishot { .. } => !cqueue::more(cqe.flags()),
                };
                let fd = Fd(self.fds[conn]);
                let send = opcode::Send::new(fd, ANSWER.as_ptr(), ANSWER.len() as u32).build();
                self.push(send.user_data(SEND | conn as u64));
                if rearm {
                    self.arm(conn);
                }
                served += 1;
            }
        }
    }
}

/// The calling thread's CPU time, user and kernel.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("receive");
    group.throughput(Throughput::Elements(PER_ITER));
    for (name, multishot) in [("one-shot", false), ("multishot", true)] {
        let load = Load::start();
        let mut server = Server::new(load.fds(), multishot);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = thread_cpu();
                for _ in 0..iters {
                    server.serve(PER_ITER);
                }
                thread_cpu() - start
            })
        });
        // The client stops once an answer is late; the ring's operations end with it.
        drop(load);
        drop(server);
    }
    group.finish();
}

criterion_group!(benches, receive);
criterion_main!(benches);
