//! A connection's bytes, plain TCP or TLS, behind the one owned-buffer interface the
//! phases in `conn` use: the client side is a [`ClientStream`], an upstream a
//! [`UpstreamStream`]. Reads append to the spare capacity of the caller's buffer, so a
//! request head or body is parsed where it landed whichever the transport.

use std::io;
use std::net::Shutdown;
use std::ops::DerefMut;

use bytes::BytesMut;
use rustls::{ClientConnection, ConnectionCommon, ServerConnection, SideData};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

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

    /// Appends what arrives to `buf`, within its spare capacity. `Ok(0)` at the end of the
    /// stream.
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

    async fn read(&mut self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        match self {
            Stream::Plain(tcp) => {
                let start = buf.len();
                let (res, slice) = tcp.read(buf.slice(start..)).await;
                (res, slice.into_inner())
            }
            Stream::Tls(tls) => match tls.read(buf).await {
                // A peer that closes without `close_notify` ends the stream as a TCP close
                // does: HTTP's own framing (a length, the last chunk) tells a body cut
                // short, and most clients and servers close that way.
                (Err(e), buf) if e.kind() == io::ErrorKind::UnexpectedEof => (Ok(0), buf),
                done => done,
            },
        }
    }

    async fn write_all<B>(&mut self, buf: B) -> (io::Result<()>, B)
    where
        B: BoundedBuf + AsRef<[u8]>,
    {
        match self {
            Stream::Plain(tcp) => tcp.write_all(buf).await,
            Stream::Tls(tls) => tls.write_all(buf).await,
        }
    }
}

impl<C, D> Stream<C>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData + 'static,
{
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
