//! HTTP/1.1 framing shared by the test client and the in-process origins.
//!
//! A [`Conn`] owns a socket and a read buffer, so bytes that arrive early (a pipelined request,
//! a body behind its head) stay there for the next read. Everything is blocking with socket
//! timeouts: a misbehaving gateway makes a test fail, never hang.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Read and write timeout of every socket the harness opens.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest head the harness accepts: generous, the gateway's own limit is what is tested.
const MAX_HEAD: usize = 1 << 20;
const READ_CHUNK: usize = 64 * 1024;

/// A header list in wire order, names as sent.
pub type Headers = Vec<(String, String)>;

/// First value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of header `name` (case-insensitive), in order.
pub fn header_all<'a>(headers: &'a Headers, name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The comma-separated list a header's values make together, trimmed, lower-cased when `fold`.
pub fn header_list(headers: &Headers, name: &str, fold: bool) -> Vec<String> {
    header_all(headers, name)
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if fold {
                t.to_ascii_lowercase()
            } else {
                t.to_string()
            }
        })
        .collect()
}

/// How a message body is delimited (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// The framing a message with these headers declares; `None` when it declares nothing.
pub fn declared_framing(headers: &Headers) -> io::Result<Option<Framing>> {
    let te = header_list(headers, "transfer-encoding", true);
    if let Some(last) = te.last() {
        return if last == "chunked" {
            Ok(Some(Framing::Chunked))
        } else {
            Ok(Some(Framing::UntilClose))
        };
    }
    match header(headers, "content-length") {
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map(|n| Some(Framing::Length(n)))
            .map_err(|_| invalid(format!("bad Content-Length {v:?}"))),
        None => Ok(None),
    }
}

pub fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// What a [`Conn`] reads and writes: a TCP socket, or a TLS session over one
/// (crate::tls). Timeouts and shutdowns go to the socket underneath.
pub trait Transport: Read + Write {
    /// The socket underneath.
    fn tcp(&self) -> &TcpStream;

    /// Ends the sending side; TLS sends its close_notify first, so the peer sees a clean end.
    fn close_write(&mut self) -> io::Result<()> {
        self.tcp().shutdown(std::net::Shutdown::Write)
    }
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// A socket with a read buffer.
pub struct Conn<S = TcpStream> {
    stream: S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S: Transport> Conn<S> {
    pub fn new(stream: S) -> io::Result<Conn<S>> {
        let tcp = stream.tcp();
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
        })
    }

    pub fn stream(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// The transport itself (the TLS session, for what it negotiated).
    pub fn transport(&self) -> &S {
        &self.stream
    }

    pub fn close_write(&mut self) -> io::Result<()> {
        self.stream.close_write()
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Bytes received but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more bytes into the buffer; `Ok(0)` is end of stream.
    pub fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        // A zeroed allocation (calloc) rather than `resize`, which zeroes byte by byte in
        // unoptimised builds: at 64 KiB a read, that was most of a busy test's CPU.
        let mut chunk = vec![0u8; READ_CHUNK];
        let res = self.stream.read(&mut chunk);
        if let Ok(n) = res {
            self.buf.extend_from_slice(&chunk[..n]);
        }
        res
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads one head up to and including its blank line. `Ok(None)` when the peer closed
    /// before sending a single byte of it (the normal end of a keep-alive connection).
    pub fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut scanned: usize = 0;
        loop {
            let avail = self.buffered();
            let from = scanned.saturating_sub(3);
            if let Some(i) = avail[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                let end = from + i + 4;
                let head = avail[..end].to_vec();
                self.consume(end);
                return Ok(Some(head));
            }
            scanned = avail.len();
            if scanned > MAX_HEAD {
                return Err(invalid("head larger than 1 MiB"));
            }
            if self.fill()? == 0 {
                return if self.buffered().is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "connection closed inside a head: {:?}",
                            String::from_utf8_lossy(self.buffered())
                        ),
                    ))
                };
            }
        }
    }

    /// Reads exactly `n` body bytes.
    pub fn read_exact_vec(&mut self, n: usize) -> io::Result<Vec<u8>> {
        // Grown as bytes arrive, so a bogus huge length fails on the read, not the allocation.
        let mut out = Vec::with_capacity(n.min(1 << 20));
        let take = n.min(self.buffered().len());
        out.extend_from_slice(&self.buffered()[..take]);
        self.consume(take);
        // Zeroed once (see `fill`), then reused for every read.
        let mut chunk = vec![0u8; READ_CHUNK.min(n - take)];
        while out.len() < n {
            let want = (n - out.len()).min(chunk.len());
            let got = self.stream.read(&mut chunk[..want])?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {} of {n} body bytes", out.len()),
                ));
            }
            out.extend_from_slice(&chunk[..got]);
        }
        Ok(out)
    }

    /// Reads one CRLF-terminated line, without the CRLF.
    pub fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buffered().windows(2).position(|w| w == b"\r\n") {
                let line = self.buffered()[..i].to_vec();
                self.consume(i + 2);
                return Ok(line);
            }
            if self.buffered().len() > 64 * 1024 {
                return Err(invalid("line longer than 64 KiB"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a line",
                ));
            }
        }
    }

    /// Reads a chunked body through its last chunk and trailer section.
    pub fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line = self.read_line()?;
            let text = String::from_utf8_lossy(&line);
            let size_text = text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| invalid(format!("bad chunk size line {text:?}")))?;
            if size == 0 {
                // Trailer section: header lines up to an empty line.
                while !self.read_line()?.is_empty() {}
                return Ok(out);
            }
            out.extend_from_slice(&self.read_exact_vec(size)?);
            if !self.read_line()?.is_empty() {
                return Err(invalid("chunk data not followed by CRLF"));
            }
        }
    }

    /// Reads until the peer closes.
    pub fn read_to_close(&mut self) -> io::Result<Vec<u8>> {
        let mut out = self.buffered().to_vec();
        self.buf.clear();
        self.pos = 0;
        self.stream.read_to_end(&mut out)?;
        Ok(out)
    }

    pub fn read_body(&mut self, framing: Framing) -> io::Result<Vec<u8>> {
        match framing {
            Framing::None => Ok(Vec::new()),
            Framing::Length(n) => self.read_exact_vec(n),
            Framing::Chunked => self.read_chunked(),
            Framing::UntilClose => self.read_to_close(),
        }
    }

    /// Whether the peer closes the connection within `within`, with nothing more sent:
    /// `Ok(true)` on end of stream or reset, `Ok(false)` if it stays open, `Err` with the bytes
    /// if it sends more.
    pub fn closes_within(&mut self, within: Duration) -> Result<bool, Vec<u8>> {
        if !self.buffered().is_empty() {
            return Err(self.buffered().to_vec());
        }
        // A zero timeout means "block forever" to std.
        let _ = self
            .stream
            .tcp()
            .set_read_timeout(Some(within.max(Duration::from_millis(1))));
        let mut byte = [0u8; 4096];
        let res = self.stream.read(&mut byte);
        let _ = self.stream.tcp().set_read_timeout(Some(IO_TIMEOUT));
        match res {
            Ok(0) => Ok(true),
            Ok(n) => Err(byte[..n].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            // ECONNRESET and friends: closed, if rudely.
            Err(_) => Ok(true),
        }
    }
}

/// Writes `data` as chunks whose sizes cycle through `sizes`, then the last chunk.
pub fn encode_chunked(data: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 16);
    for chunk in chunk_frames(data, sizes) {
        out.extend_from_slice(&chunk);
    }
    out
}

/// The chunked encoding of `data` one chunk at a time, chunk sizes cycling through
/// `sizes`, the last chunk (`0\r\n\r\n`) last.
pub fn chunk_frames<'a>(data: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = Vec<u8>> + 'a {
    let mut rest = data;
    let mut i = 0;
    let mut finished = false;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            if finished {
                return None;
            }
            finished = true;
            return Some(b"0\r\n\r\n".to_vec());
        }
        let size = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(rest.len());
        let n = size.clamp(1, rest.len());
        let mut chunk = format!("{n:x}\r\n").into_bytes();
        chunk.extend_from_slice(&rest[..n]);
        chunk.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
        Some(chunk)
    })
}

pub fn owned_headers(headers: &[httparse::Header<'_>]) -> Headers {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}
