//! A connection's bytes, plain TCP or TLS, behind the one owned-buffer interface the
//! phases in `conn` use: the client side is a [`ClientStream`], an upstream a
//! [`UpstreamStream`]. Reads append to the spare capacity of the caller's buffer, so a
//! request head or body is parsed where it landed whichever the transport.

use std::io;
use std::marker::PhantomData;
use std::net::Shutdown;
use std::ops::DerefMut;

use std::os::fd::AsRawFd;

use bytes::{Buf, BytesMut};
use io_uring::squeue;
use rustls::{ClientConnection, ConnectionCommon, ServerConnection, SideData};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

use crate::tls::TlsStream;

/// A connection that is TCP, or TLS over TCP.
pub enum Stream<C> {
    Plain(TcpStream),
    /// Boxed: the TLS state is large and most connections of a plain port never have it.
    Tls(Box<TlsStream<C>>),
}

/// A client's connection: TLS when its listener terminates TLS.
pub type ClientStream = Stream<ServerConnection>;
/// An upstream connection: TLS to an `https://` Service.
pub type UpstreamStream = Stream<ClientConnection>;

/// What moving bytes needs of a stream, whichever its side.
pub(crate) trait Io {
    /// The socket underneath, for what TLS does not cover (peeking, shutting it down).
    fn socket(&self) -> &TcpStream;

    /// Whether nothing already received waits above the socket (in TLS), so that looking at
    /// the socket tells whether the peer sent anything more.
    fn is_drained(&mut self) -> bool;

    /// Appends what arrives to `buf`, within its spare capacity. `Ok(0)` at the end of the
    /// stream; over TLS, a peer closing without `close_notify` is an `UnexpectedEof` error
    /// instead, a possible truncation.
    async fn read(&mut self, buf: BytesMut) -> (io::Result<usize>, BytesMut);

    /// Writes all of `buf`.
    async fn write_all<B>(&mut self, buf: B) -> (io::Result<()>, B)
    where
        B: BoundedBuf + AsRef<[u8]>;
}

impl<C, D> Io for Stream<C>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData + 'static,
{
    fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref(),
        }
    }

    fn is_drained(&mut self) -> bool {
        match self {
            Stream::Plain(_) => true,
            Stream::Tls(tls) => tls.is_drained(),
        }
    }

    async fn read(&mut self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        match self {
            Stream::Plain(tcp) => recv(tcp, buf).await,
            Stream::Tls(tls) => tls.read(buf).await,
        }
    }

    async fn write_all<B>(&mut self, buf: B) -> (io::Result<()>, B)
    where
        B: BoundedBuf + AsRef<[u8]>,
    {
        match self {
            Stream::Plain(tcp) => send_all(tcp, buf).await,
            Stream::Tls(tls) => tls.write_all(buf).await,
        }
    }
}

impl<C, D> Stream<C>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData + 'static,
{
    /// Writes all of `first` then all of `second`: over plain TCP with one `writev` on the
    /// ring (and more writes only for what a short write left), so a response head and
    /// the body bytes that came with it leave in one send without being copied together.
    /// Over TLS, one after the other. Gives back both buffers and the vectors.
    pub async fn write_both(
        &mut self,
        first: BytesMut,
        second: BytesMut,
        iov: IoVecs,
    ) -> (io::Result<()>, Pair) {
        let tcp = match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => {
                let (res, first) = tls.write_all(first).await;
                if let Err(e) = res {
                    return (Err(e), Pair { iov, first, second });
                }
                let (res, second) = tls.write_all(second).await;
                return (res, Pair { iov, first, second });
            }
        };
        let mut pair = Pair { iov, first, second };
        let total = pair.aim();
        let sqe = io_uring::opcode::Writev::new(
            io_uring::types::Fd(tcp.as_raw_fd()),
            pair.iov.0.iov.as_ptr(),
            2,
        )
        .build();
        // What the kernel is handed stays valid until the operation completes: the vectors
        // and both buffers live on the heap and travel with the operation (the runtime
        // keeps them until its completion even if this future is dropped), and the socket
        // is kept open by the caller for as long as it waits.
        let (res, pair) = UnsubmittedOneshot::new(pair, Done::new(), sqe)
            .submit()
            .await;
        match res {
            Ok(n) if n == total => (Ok(()), pair),
            // A short write: the rest goes out plainly.
            Ok(n) => pair.finish(tcp, n).await,
            Err(e) => (Err(e), pair),
        }
    }

    /// Writes all of `out`, then reads once into the spare capacity of `into`: a request
    /// and the first bytes of its response. Over plain TCP the `send` and the `recv` go in
    /// one submission, linked so that the kernel starts the read once the write is done,
    /// and the task is woken once, by the read, rather than once for each. Gives back both
    /// buffers; the read's outcome means something only when the write succeeded.
    pub async fn write_then_read(
        &mut self,
        out: BytesMut,
        into: BytesMut,
    ) -> (io::Result<()>, BytesMut, io::Result<usize>, BytesMut) {
        let tcp = match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => {
                let (wrote, out) = tls.write_all(out).await;
                if wrote.is_err() {
                    return (wrote, out, Ok(0), into);
                }
                let (read, into) = tls.read(into).await;
                return (wrote, out, read, into);
            }
        };
        // All or a failure (MSG_WAITALL): a short send that still let the linked read start
        // would leave the peer waiting for the rest and this side for an answer. The two
        // entries are pushed back to back; only a submission queue filled exactly between
        // them would split the chain, and then the read, unlinked, merely starts early: the
        // send still goes out whole or fails, as MSG_WAITALL has made it since Linux 5.19.
        let sent = submit_send(tcp, out, 0, libc::MSG_WAITALL, squeue::Flags::IO_LINK);
        let read = submit_recv(tcp, into, squeue::Flags::empty());
        let (read, into) = read.await;
        // Done by now (the read ran after it, or was cancelled when it failed), so this
        // does not wait.
        let (wrote, out) = sent.await;
        match wrote {
            Ok(n) if n == out.len() => (Ok(()), out, read, into),
            Err(e) => (Err(e), out, read, into),
            // Cut short by an error part-way (the count is what went out before it): the
            // rest, which meets the error again, then the read the kernel cancelled.
            Ok(n) => {
                let (wrote, rest) = send_all(tcp, out.slice(n..)).await;
                let out = rest.into_inner();
                if wrote.is_err() {
                    return (wrote, out, Ok(0), into);
                }
                let (read, into) = read_unless_done(tcp, read, into).await;
                (Ok(()), out, read, into)
            }
        }
    }

    /// As [`Stream::write_then_read`], for a request head (`first`) and the body bytes
    /// that came with it (`second`): over plain TCP both go in one `sendmsg` (of two
    /// vectors, from `iov`, and all or a failure), linked to the read. Gives back both
    /// buffers (consumed, after a write that failed part-way) and the vectors.
    pub async fn write_both_then_read(
        &mut self,
        first: BytesMut,
        second: BytesMut,
        iov: IoVecs,
        into: BytesMut,
    ) -> (io::Result<()>, Pair, io::Result<usize>, BytesMut) {
        let tcp = match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(_) => {
                let (wrote, pair) = self.write_both(first, second, iov).await;
                if wrote.is_err() {
                    return (wrote, pair, Ok(0), into);
                }
                let (read, into) = self.read(into).await;
                return (wrote, pair, read, into);
            }
        };
        let mut pair = Pair { iov, first, second };
        let total = pair.aim();
        let sqe =
            io_uring::opcode::SendMsg::new(io_uring::types::Fd(tcp.as_raw_fd()), &pair.iov.0.msg)
                .flags((libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32)
                .build()
                .flags(squeue::Flags::IO_LINK);
        // As in `write_both`: the message header, the vectors and both buffers live on the
        // heap and travel with the operation. The chain is as in `write_then_read`.
        let sent = UnsubmittedOneshot::new(pair, Done::new(), sqe).submit();
        let read = submit_recv(tcp, into, squeue::Flags::empty());
        let (read, into) = read.await;
        let (wrote, pair) = sent.await;
        match wrote {
            Ok(n) if n == total => (Ok(()), pair, read, into),
            Err(e) => (Err(e), pair, read, into),
            // Cut short by an error part-way, as in `write_then_read`.
            Ok(n) => {
                let (wrote, pair) = pair.finish(tcp, n).await;
                if wrote.is_err() {
                    return (wrote, pair, Ok(0), into);
                }
                let (read, into) = read_unless_done(tcp, read, into).await;
                (Ok(()), pair, read, into)
            }
        }
    }

    /// Ends the writing side: over TLS, `close_notify` first, so the peer can tell the end
    /// from a truncation. Best effort: the connection is closing either way.
    pub async fn close_write(&mut self) {
        match self {
            Stream::Plain(tcp) => {
                let _ = tcp.shutdown(Shutdown::Write);
            }
            Stream::Tls(tls) => {
                let _ = tls.shutdown().await;
            }
        }
    }
}

/// The two I/O vectors of a gathered write ([`Stream::write_both`],
/// [`Stream::write_both_then_read`]) and the message header that points at them, kept by a
/// connection across writes so a write allocates nothing.
pub struct IoVecs(Box<Vectors>);

struct Vectors {
    iov: [libc::iovec; 2],
    msg: libc::msghdr,
}

impl Default for IoVecs {
    fn default() -> Self {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: a `msghdr` is integers and pointers, for which all zeroes is a valid value
        // (no address, no vectors, no control data); the vectors are set before each use.
        let msg = unsafe { std::mem::zeroed() };
        IoVecs(Box::new(Vectors {
            iov: [empty; 2],
            msg,
        }))
    }
}

/// What a gathered write holds while the kernel reads from it; given back afterwards.
pub struct Pair {
    iov: IoVecs,
    first: BytesMut,
    second: BytesMut,
}

impl Pair {
    /// Points the vectors at both buffers, and the message header at the vectors; the
    /// bytes to write.
    fn aim(&mut self) -> usize {
        let v = &mut *self.iov.0;
        v.iov[0] = libc::iovec {
            iov_base: self.first.as_ptr().cast_mut().cast(),
            iov_len: self.first.len(),
        };
        v.iov[1] = libc::iovec {
            iov_base: self.second.as_ptr().cast_mut().cast(),
            iov_len: self.second.len(),
        };
        v.msg.msg_iov = v.iov.as_mut_ptr();
        v.msg.msg_iovlen = 2;
        self.first.len() + self.second.len()
    }

    /// Writes what a gathered write of `n` bytes left, plainly; gives back the parts.
    async fn finish(self, tcp: &TcpStream, n: usize) -> (io::Result<()>, Pair) {
        let Pair {
            iov,
            mut first,
            mut second,
        } = self;
        let from_first = n.min(first.len());
        first.advance(from_first);
        second.advance(n - from_first);
        if !first.is_empty() {
            let (res, rest) = send_all(tcp, first).await;
            first = rest;
            if let Err(e) = res {
                return (Err(e), Pair { iov, first, second });
            }
        }
        let (res, second) = send_all(tcp, second).await;
        (res, Pair { iov, first, second })
    }

    /// Puts the vectors back in the connection's `slot` for its next gathered write, and
    /// gives back the first buffer (a head, kept for reuse); the second goes.
    pub fn keep_vecs(self, slot: &mut Option<IoVecs>) -> BytesMut {
        *slot = Some(self.iov);
        self.first
    }
}

// === Plain TCP on the ring ===
//
// tokio-uring's `read` and `write_all` go through its shared descriptor (a reference count
// per operation), a buffer slice and two layers of `async fn` per call; an exchange makes
// four such calls. These submit the `recv` or `send` itself and keep only the buffer with
// the operation.

/// Appends what one `recv` on the ring brings to the spare capacity of `buf`.
async fn recv(tcp: &TcpStream, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
    submit_recv(tcp, buf, squeue::Flags::empty()).await
}

/// The outcome of a read linked to a write that was cut short: the kernel cancelled it, so
/// it is made now, after the rest of the write; one that ran anyway stands.
async fn read_unless_done(
    tcp: &TcpStream,
    read: io::Result<usize>,
    into: BytesMut,
) -> (io::Result<usize>, BytesMut) {
    match read {
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => recv(tcp, into).await,
        read => (read, into),
    }
}

/// Submits a `recv` into the spare capacity of `buf`, with `flags` on the entry; the
/// completion appends what arrived.
fn submit_recv(
    tcp: &TcpStream,
    mut buf: BytesMut,
    flags: squeue::Flags,
) -> InFlightOneshot<BytesMut, Received> {
    let spare = buf.spare_capacity_mut();
    let len = u32::try_from(spare.len()).unwrap_or(u32::MAX);
    let sqe = io_uring::opcode::Recv::new(
        io_uring::types::Fd(tcp.as_raw_fd()),
        spare.as_mut_ptr().cast(),
        len,
    )
    .build()
    .flags(flags);
    // What the kernel is handed stays valid until the operation completes: the buffer's
    // heap allocation travels with the operation (the runtime keeps it until the
    // completion even if this future is dropped), and the caller keeps the socket open
    // while it waits; once it gives up, it shuts the socket down, which ends the recv.
    UnsubmittedOneshot::new(buf, Received, sqe).submit()
}

/// Turns the completion of a `recv` into its byte count, appended to the buffer.
struct Received;

impl OneshotOutputTransform for Received {
    type Output = (io::Result<usize>, BytesMut);
    type StoredData = BytesMut;

    fn transform_oneshot_output(
        self,
        mut buf: BytesMut,
        cqe: io_uring::cqueue::Entry,
    ) -> Self::Output {
        let res = byte_count(&cqe);
        if let Ok(n) = res {
            // SAFETY: the kernel wrote `n` bytes (at most the spare capacity it was given)
            // right after the initialised part.
            unsafe { buf.set_len(buf.len() + n) };
        }
        (res, buf)
    }
}

/// Writes all of `buf` with `send`s on the ring: one, unless the socket takes less.
async fn send_all<B: BoundedBuf>(tcp: &TcpStream, buf: B) -> (io::Result<()>, B) {
    let mut buf = buf;
    let mut sent = 0;
    while sent < buf.bytes_init() {
        let (res, back) = submit_send(tcp, buf, sent, 0, squeue::Flags::empty()).await;
        buf = back;
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

/// Submits a `send` (`MSG_NOSIGNAL` and `msg_flags`) of the initialised bytes of `buf` from
/// `from` on, with `flags` on the entry.
fn submit_send<B: BoundedBuf>(
    tcp: &TcpStream,
    buf: B,
    from: usize,
    msg_flags: i32,
    flags: squeue::Flags,
) -> InFlightOneshot<B, Done<B>> {
    let from = from.min(buf.bytes_init());
    let len = u32::try_from(buf.bytes_init() - from).unwrap_or(u32::MAX);
    // SAFETY: `from` is within the initialised bytes of `buf` (clamped above).
    let start = unsafe { buf.stable_ptr().add(from) };
    let sqe = io_uring::opcode::Send::new(io_uring::types::Fd(tcp.as_raw_fd()), start, len)
        .flags(libc::MSG_NOSIGNAL | msg_flags)
        .build()
        .flags(flags);
    // As in `submit_recv`: the buffer travels with the operation, its bytes at a stable
    // address, and the caller keeps the socket open while it waits.
    UnsubmittedOneshot::new(buf, Done::new(), sqe).submit()
}

/// Turns the completion of a `send` or a gathered write into its byte count, giving back
/// what the operation held.
struct Done<B>(PhantomData<B>);

impl<B> Done<B> {
    fn new() -> Self {
        Done(PhantomData)
    }
}

impl<B> OneshotOutputTransform for Done<B> {
    type Output = (io::Result<usize>, B);
    type StoredData = B;

    fn transform_oneshot_output(self, buf: B, cqe: io_uring::cqueue::Entry) -> Self::Output {
        (byte_count(&cqe), buf)
    }
}

/// What a completion says: the bytes moved, or the error (a negative errno).
fn byte_count(cqe: &io_uring::cqueue::Entry) -> io::Result<usize> {
    let n = cqe.result();
    usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(-n))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread;
    use std::time::Duration;

    use super::*;

    /// A plain client stream to a peer that `serve` runs on a thread of its own.
    async fn plain_to(
        serve: impl FnOnce(std::net::TcpStream) + Send + 'static,
    ) -> (ClientStream, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let peer = thread::spawn(move || serve(listener.accept().expect("accept").0));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        (Stream::Plain(tcp), peer)
    }

    /// How a test hands a request to the linked write and read: as one buffer
    /// (`write_then_read`), or as a head and the body bytes after it, split at this offset
    /// (`write_both_then_read`).
    const WAYS: [Option<usize>; 2] = [None, Some(3)];

    /// The write of `out` (split as `way` says) linked to a read into `into`. Gives back
    /// the write's outcome, what came back of `out` (both parts, in order), the read's
    /// outcome and `into`.
    async fn write_then_read(
        stream: &mut ClientStream,
        way: Option<usize>,
        out: BytesMut,
        into: BytesMut,
    ) -> (io::Result<()>, Vec<u8>, io::Result<usize>, BytesMut) {
        write_then_read_with(stream, way, out, into, &mut None).await
    }

    /// [`write_then_read`] with the vectors of `iov`, given back there, as a connection
    /// keeps them across requests.
    async fn write_then_read_with(
        stream: &mut ClientStream,
        way: Option<usize>,
        mut out: BytesMut,
        into: BytesMut,
        iov: &mut Option<IoVecs>,
    ) -> (io::Result<()>, Vec<u8>, io::Result<usize>, BytesMut) {
        match way {
            None => {
                let (wrote, out, read, into) = stream.write_then_read(out, into).await;
                (wrote, out.to_vec(), read, into)
            }
            Some(at) => {
                let part = out.split_off(at);
                let vecs = iov.take().unwrap_or_default();
                let both = stream.write_both_then_read(out, part, vecs, into);
                let (wrote, pair, read, into) = both.await;
                let back = [&pair.first[..], &pair.second[..]].concat();
                pair.keep_vecs(iov);
                (wrote, back, read, into)
            }
        }
    }

    #[test]
    fn a_request_goes_out_whole_and_its_answer_lands_after_what_the_buffer_held() {
        const REQUEST: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        const ANSWER: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
        for way in WAYS {
            tokio_uring::start(async {
                let (mut stream, peer) = plain_to(|mut s| {
                    for _ in 0..2 {
                        let mut got = vec![0; REQUEST.len()];
                        s.read_exact(&mut got).expect("request");
                        assert_eq!(got, REQUEST);
                        s.write_all(ANSWER).expect("answer");
                    }
                })
                .await;
                // Twice, the second time through the vectors the first gave back.
                let mut iov = None;
                for _ in 0..2 {
                    let mut into = BytesMut::with_capacity(4096);
                    into.extend_from_slice(b"kept:");
                    let out = BytesMut::from(REQUEST);
                    let (wrote, out, read, into) =
                        write_then_read_with(&mut stream, way, out, into, &mut iov).await;
                    wrote.expect("write");
                    assert_eq!(out, REQUEST, "the request comes back whole, for a replay");
                    let mut n = read.expect("read");
                    let mut into = into;
                    // The answer may come in more than one read.
                    while n < ANSWER.len() {
                        let (more, back) = stream.read(into).await;
                        into = back;
                        n += more.expect("rest of the answer");
                    }
                    assert_eq!(&into[..5], b"kept:");
                    assert_eq!(&into[5..], ANSWER);
                }
                peer.join().expect("peer");
            });
        }
    }

    #[test]
    fn a_request_larger_than_the_socket_takes_at_once_goes_out_whole_before_the_read() {
        const SIZE: usize = 32 << 20;
        for way in WAYS {
            tokio_uring::start(async {
                let (mut stream, peer) = plain_to(|mut s| {
                    let mut got = vec![0; SIZE];
                    s.read_exact(&mut got).expect("the whole request");
                    s.write_all(b"done").expect("answer");
                })
                .await;
                let out = BytesMut::from(&vec![b'x'; SIZE][..]);
                let both = write_then_read(&mut stream, way, out, BytesMut::with_capacity(64));
                // A read started after a partial send would wait for an answer to a request
                // the peer has not had whole.
                let (wrote, _, read, into) = tokio::time::timeout(Duration::from_secs(20), both)
                    .await
                    .expect("the read waited for the rest of the request");
                wrote.expect("write");
                assert_eq!(read.expect("read"), 4);
                assert_eq!(&into[..], b"done");
                peer.join().expect("peer");
            });
        }
    }

    #[test]
    fn a_write_that_fails_cancels_its_read_rather_than_leave_it_waiting() {
        for way in WAYS {
            tokio_uring::start(async {
                // A peer that stays connected and never answers.
                let (done, silent) = std::sync::mpsc::channel::<()>();
                let (mut stream, peer) = plain_to(move |_s| {
                    let _ = silent.recv();
                })
                .await;
                // This side's writing half is shut: the send fails with EPIPE, and only the
                // link keeps the read from waiting on a peer that will never write.
                stream.socket().shutdown(Shutdown::Write).expect("shutdown");
                let into = BytesMut::with_capacity(4096);
                let out = BytesMut::from(&b"POST"[..]);
                let both = write_then_read(&mut stream, way, out, into);
                let (wrote, _, read, into) = tokio::time::timeout(Duration::from_secs(20), both)
                    .await
                    .expect("the read waited after its write failed");
                assert_eq!(wrote.expect_err("write").raw_os_error(), Some(libc::EPIPE));
                assert_eq!(
                    read.expect_err("read").raw_os_error(),
                    Some(libc::ECANCELED)
                );
                assert!(into.is_empty());
                done.send(()).expect("peer");
                peer.join().expect("peer");
            });
        }
    }

    #[test]
    fn a_write_cut_short_by_a_reset_is_an_error_too() {
        for way in WAYS {
            tokio_uring::start(async {
                let (mut stream, peer) = plain_to(|mut s| {
                    let mut some = vec![0; 64 * 1024];
                    s.read_exact(&mut some).expect("the start of the request");
                    socket2::SockRef::from(&s)
                        .set_linger(Some(Duration::ZERO))
                        .expect("linger");
                })
                .await;
                // Far more than the socket buffers hold: the send is still going when the
                // peer resets the connection.
                let out = BytesMut::from(&vec![b'x'; 32 << 20][..]);
                let into = BytesMut::with_capacity(4096);
                let (wrote, out, _, into) = write_then_read(&mut stream, way, out, into).await;
                assert!(wrote.is_err(), "{wrote:?}");
                if way.is_none() {
                    assert_eq!(out.len(), 32 << 20, "the head comes back whole");
                }
                assert!(into.is_empty());
                peer.join().expect("peer");
            });
        }
    }
}
