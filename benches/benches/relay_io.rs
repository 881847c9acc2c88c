//! Which io_uring operation moves a large body from one socket to another at the least
//! cost here? A body is relayed from a loopback connection to another, 64 KiB at a time, by
//! three means: reading into an owned buffer and writing it (what `conn` does, through a
//! worker's spare 64 KiB buffer), the same through a registered (fixed) buffer
//! (`READ_FIXED`/`WRITE_FIXED`, which spare the kernel mapping the user pages on each
//! operation), and `SPLICE` through a pipe (no copy into user space at all, but io_uring
//! always hands a splice to an io-wq worker thread). A sender thread keeps the first
//! connection full and a receiver thread drains the second, so with two cores the time to
//! relay a body is the whole machine's CPU per byte, the io-wq threads' included. Bodies of
//! 64 KiB and 1 MiB: one and sixteen relay rounds. The answer says whether a relay should
//! take registered buffers or splice instead of the owned buffer it takes.

use std::io::{self, Read, Write};
use std::net::TcpStream as StdStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::thread;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringwall_benches::loopback_pair;
use tokio_uring::buf::fixed::FixedBufRegistry;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

/// A relay round: what a worker's large buffer holds.
const CHUNK: usize = 64 * 1024;

/// The two sockets a relay moves bytes between, with a sender filling `from` and a
/// receiver draining `to` until the sockets close (each pair's outer end is a test
/// thread's, its inner end the relay's).
fn relay_sockets() -> (StdStream, StdStream) {
    let (mut sender, from) = loopback_pair();
    let (mut receiver, to) = loopback_pair();
    thread::spawn(move || {
        let block = vec![0x5a_u8; CHUNK];
        while sender.write_all(&block).is_ok() {}
    });
    thread::spawn(move || {
        let mut sink = vec![0_u8; CHUNK];
        while matches!(receiver.read(&mut sink), Ok(n) if n > 0) {}
    });
    (from, to)
}

/// The read-then-write relay through an owned buffer, as `conn` relays a large body.
async fn owned(from: &TcpStream, to: &TcpStream, body: usize) -> io::Result<()> {
    let mut buf = Vec::with_capacity(CHUNK);
    let mut left = body;
    while left > 0 {
        buf.clear();
        let (res, slice) = from.read(buf.slice(..CHUNK.min(left))).await;
        buf = slice.into_inner();
        let n = res?;
        left -= n;
        let (res, back) = to.write_all(buf).await;
        buf = back;
        res?;
    }
    Ok(())
}

/// The same relay through one registered buffer.
async fn fixed(
    registry: &FixedBufRegistry<Vec<u8>>,
    from: &TcpStream,
    to: &TcpStream,
    body: usize,
) -> io::Result<()> {
    let mut buf = registry
        .check_out(0)
        .expect("the registered buffer is free");
    let mut left = body;
    while left > 0 {
        let (res, slice) = from.read_fixed(buf.slice(..CHUNK.min(left))).await;
        buf = slice.into_inner();
        let n = res?;
        left -= n;
        let (res, back) = to.write_fixed_all(buf.slice(..n)).await;
        buf = back.into_inner();
        res?;
    }
    Ok(())
}

/// The relay by `splice`: socket into a pipe, pipe into the other socket.
async fn splice(pipe: &Pipe, from: RawFd, to: RawFd, body: usize) -> io::Result<()> {
    let mut left = body;
    while left > 0 {
        let len = u32::try_from(CHUNK.min(left)).expect("a chunk fits u32");
        let n = splice_once(from, pipe.write.as_raw_fd(), len).await?;
        left -= n;
        let mut in_pipe = n;
        while in_pipe > 0 {
            let len = u32::try_from(in_pipe).expect("a chunk fits u32");
            in_pipe -= splice_once(pipe.read.as_raw_fd(), to, len).await?;
        }
    }
    Ok(())
}

async fn splice_once(from: RawFd, to: RawFd, len: u32) -> io::Result<usize> {
    use io_uring::types::Fd;
    let sqe = io_uring::opcode::Splice::new(Fd(from), -1, Fd(to), -1, len).build();
    // The operation refers to no memory of ours, only to descriptors that outlive it.
    let n = UnsubmittedOneshot::new((), Spliced, sqe).submit().await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(n)
}

/// A splice's completion as a byte count.
struct Spliced;

impl OneshotOutputTransform for Spliced {
    type Output = io::Result<usize>;
    type StoredData = ();

    fn transform_oneshot_output(self, _: (), cqe: io_uring::cqueue::Entry) -> Self::Output {
        let n = cqe.result();
        usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(-n))
    }
}

/// A pipe as large as a relay round, so one splice in is one splice out.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> Pipe {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let size = libc::c_int::try_from(CHUNK).expect("fits");
        // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours.
        let rc = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        assert!(rc >= size, "F_SETPIPE_SZ: {}", io::Error::last_os_error());
        Pipe { read, write }
    }
}

fn relay(c: &mut Criterion) {
    let rt = tokio_uring::Runtime::new(&tokio_uring::builder()).expect("an io_uring runtime");
    // A ring registers its buffers once.
    let registry = rt.block_on(async {
        let registry = FixedBufRegistry::new([vec![0; CHUNK]]);
        registry.register().expect("register the buffer");
        registry
    });
    let pipe = Pipe::new();
    let mut group = c.benchmark_group("relay");
    for body in [CHUNK, 1 << 20] {
        group.throughput(Throughput::Bytes(body as u64));
        let label = format!("{} KiB", body / 1024);

        let (from, to) = relay_sockets();
        let (from, to) =
            rt.block_on(async { (TcpStream::from_std(from), TcpStream::from_std(to)) });
        group.bench_with_input(BenchmarkId::new("owned", &label), &body, |b, &body| {
            b.iter(|| rt.block_on(owned(&from, &to, body)).expect("relayed"))
        });

        group.bench_with_input(BenchmarkId::new("fixed", &label), &body, |b, &body| {
            b.iter(|| {
                rt.block_on(fixed(&registry, &from, &to, body))
                    .expect("relayed")
            })
        });

        let (from_fd, to_fd) = (from.as_raw_fd(), to.as_raw_fd());
        group.bench_with_input(BenchmarkId::new("splice", &label), &body, |b, &body| {
            b.iter(|| {
                rt.block_on(splice(&pipe, from_fd, to_fd, body))
                    .expect("relayed")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
