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
use rustls::{ClientConnection, ConnectionCommon, ServerConnection, SideData};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

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
    /// Over TLS, one after the other. Gives back both buffers and the vector array.
    pub async fn write_both(
        &mut self,
        first: BytesMut,
        second: BytesMut,
        iov: IoVecs,
    ) -> (io::Result<()>, BytesMut, BytesMut, IoVecs) {
        let tcp = match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => {
                let (res, first) = tls.write_all(first).await;
                if let Err(e) = res {
                    return (Err(e), first, second, iov);
                }
                let (res, second) = tls.write_all(second).await;
                return (res, first, second, iov);
            }
        };
        let total = first.len() + second.len();
        let mut pair = Pair { iov, first, second };
        pair.iov.0[0] = libc::iovec {
            iov_base: pair.first.as_ptr().cast_mut().cast(),
            iov_len: pair.first.len(),
        };
        pair.iov.0[1] = libc::iovec {
            iov_base: pair.second.as_ptr().cast_mut().cast(),
            iov_len: pair.second.len(),
        };
        let sqe = io_uring::opcode::Writev::new(
            io_uring::types::Fd(tcp.as_raw_fd()),
            pair.iov.0.as_ptr(),
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
        let Pair {
            iov,
            mut first,
            mut second,
        } = pair;
        let n = match res {
            Ok(n) if n == total => return (Ok(()), first, second, iov),
            Ok(n) => n,
            Err(e) => return (Err(e), first, second, iov),
        };
        // A short write: the rest goes out plainly.
        let from_first = n.min(first.len());
        first.advance(from_first);
        second.advance(n - from_first);
        if !first.is_empty() {
            let (res, rest) = send_all(tcp, first).await;
            first = rest;
            if let Err(e) = res {
                return (Err(e), first, second, iov);
            }
        }
        let (res, second) = send_all(tcp, second).await;
        (res, first, second, iov)
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

/// The two I/O vectors of [`Stream::write_both`], kept by a connection across writes so a
/// write allocates nothing.
pub struct IoVecs(Box<[libc::iovec; 2]>);

impl Default for IoVecs {
    fn default() -> Self {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        IoVecs(Box::new([empty; 2]))
    }
}

/// What a gathered write holds while the kernel reads from it.
struct Pair {
    iov: IoVecs,
    first: BytesMut,
    second: BytesMut,
}

// === Plain TCP on the ring ===
//
// tokio-uring's `read` and `write_all` go through its shared descriptor (a reference count
// per operation), a buffer slice and two layers of `async fn` per call; an exchange makes
// four such calls. These submit the `recv` or `send` itself and keep only the buffer with
// the operation.

/// Appends what one `recv` on the ring brings to the spare capacity of `buf`.
async fn recv(tcp: &TcpStream, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
    let mut buf = buf;
    let spare = buf.spare_capacity_mut();
    let len = u32::try_from(spare.len()).unwrap_or(u32::MAX);
    let sqe = io_uring::opcode::Recv::new(
        io_uring::types::Fd(tcp.as_raw_fd()),
        spare.as_mut_ptr().cast(),
        len,
    )
    .build();
    // What the kernel is handed stays valid until the operation completes: the buffer's
    // heap allocation travels with the operation (the runtime keeps it until the
    // completion even if this future is dropped), and the caller keeps the socket open
    // while it waits; once it gives up, it shuts the socket down, which ends the recv.
    let (res, mut buf) = UnsubmittedOneshot::new(buf, Done::new(), sqe)
        .submit()
        .await;
    if let Ok(n) = res {
        // SAFETY: the kernel wrote `n` bytes (at most `len`, the spare capacity) right
        // after the initialised part.
        unsafe { buf.set_len(buf.len() + n) };
    }
    (res, buf)
}

/// Writes all of `buf` with `send`s on the ring: one, unless the socket takes less.
async fn send_all<B: BoundedBuf>(tcp: &TcpStream, buf: B) -> (io::Result<()>, B) {
    let mut buf = buf;
    let mut sent = 0;
    while sent < buf.bytes_init() {
        let left = u32::try_from(buf.bytes_init() - sent).unwrap_or(u32::MAX);
        // SAFETY: `sent` is within the initialised bytes of `buf` (checked above).
        let from = unsafe { buf.stable_ptr().add(sent) };
        let sqe = io_uring::opcode::Send::new(io_uring::types::Fd(tcp.as_raw_fd()), from, left)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // As in `recv`: the buffer travels with the operation, its bytes at a stable
        // address, and the caller keeps the socket open while it waits.
        let (res, back) = UnsubmittedOneshot::new(buf, Done::new(), sqe)
            .submit()
            .await;
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

/// Turns the completion of a `recv`, a `send` or a gathered write into its byte count,
/// giving back what the operation held.
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
        let n = cqe.result();
        let res = usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(-n));
        (res, buf)
    }
}
