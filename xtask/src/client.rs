//! The bench's own HTTP/1.1 clients. [`exchange`]: one request on a fresh connection, its
//! whole answer with the headers, for the checks made before a peer is measured (that a
//! workload answers as it should, that each policy is active). [`fixed_count`]: a given number
//! of keep-alive requests over a few connections, for the count mode, where what a proxy did
//! is divided by a number of requests known exactly rather than by a time.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::handshakes::runtime_on;
use crate::peers::Request;

/// One request's bytes: `request`'s method, path and body (`x`s), with `headers`; with
/// `close`, asking the server to close the connection after answering.
pub fn request_bytes(request: &Request, headers: &[(&str, &str)], close: bool) -> Vec<u8> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        request.method, request.path
    );
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if request.body_bytes > 0 || request.method == "POST" {
        let _ = write!(head, "Content-Length: {}\r\n", request.body_bytes);
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.resize(bytes.len() + request.body_bytes, b'x');
    bytes
}

/// A response, whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response head: status, headers and length, and where its body starts.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    head_len: usize,
    content_length: usize,
}

/// The head at the start of `buf`, once it is all there. Every answer the bench reads has a
/// `Content-Length` (the upstream's, passed on, or a proxy's own refusal): one without is an
/// error rather than a guess.
fn parse_head(buf: &[u8]) -> Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf).context("bad response head")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let content_length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .context("response without Content-Length")?
        .1
        .trim()
        .parse()
        .context("bad Content-Length")?;
    Ok(Some(Head {
        status: response.code.context("response without status")?,
        headers,
        head_len,
        content_length,
    }))
}

/// Sends `bytes` on a new connection to 127.0.0.1:`port` and reads the answer.
pub fn exchange(port: u16, bytes: &[u8]) -> Result<Answer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(bytes)?;
    let mut buf = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        if let Some(head) = parse_head(&buf)? {
            let end = head.head_len + head.content_length;
            if buf.len() >= end {
                return Ok(Answer {
                    status: head.status,
                    headers: head.headers,
                    body: buf[head.head_len..end].to_vec(),
                });
            }
        }
        match stream.read(&mut chunk)? {
            0 => bail!("the connection closed before the end of the response"),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `total` requests of `bytes` to 127.0.0.1:`port` over `conns` keep-alive connections,
/// each waiting for its answer before the next, from one thread (on `cpu` if given); every
/// answer must be a 200. Returns how long it took.
pub fn fixed_count(
    port: u16,
    bytes: &[u8],
    total: u32,
    conns: u32,
    cpu: Option<u32>,
) -> Result<Duration> {
    let bytes = bytes.to_vec();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let load = thread::Builder::new()
        .name("fixed-count".to_owned())
        .spawn(move || -> Result<Duration> {
            runtime_on(cpu)?.block_on(async move {
                let started = Instant::now();
                let conns = conns.clamp(1, total.max(1));
                let tasks: Vec<_> = (0..conns)
                    .map(|i| {
                        // The first `total % conns` connections send one more.
                        let share = total / conns + u32::from(i < total % conns);
                        let bytes = bytes.clone();
                        tokio::spawn(async move { connection(addr, bytes, share).await })
                    })
                    .collect();
                for task in tasks {
                    task.await.map_err(|e| anyhow!("client task: {e}"))??;
                }
                Ok(started.elapsed())
            })
        })?;
    load.join()
        .map_err(|_| anyhow!("the fixed-count client panicked"))?
}

/// One connection's share of a [`fixed_count`]: `count` exchanges, one after the other.
async fn connection(addr: SocketAddr, bytes: Vec<u8>, count: u32) -> Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0; 64 * 1024];
    for _ in 0..count {
        stream.write_all(&bytes).await.context("write")?;
        let head = loop {
            if let Some(head) = parse_head(&buf)? {
                break head;
            }
            read_more(&mut stream, &mut buf, &mut chunk).await?;
        };
        if head.status != 200 {
            bail!("status {} from 127.0.0.1:{}", head.status, addr.port());
        }
        // The body, read and dropped; what arrives with it belongs to no request (none is
        // pipelined), so it is dropped too.
        let mut left = (head.head_len + head.content_length).saturating_sub(buf.len());
        buf.clear();
        while left > 0 {
            let n = stream.read(&mut chunk).await.context("read")?;
            if n == 0 {
                bail!("the connection closed in the middle of a body");
            }
            left = left.saturating_sub(n);
        }
    }
    Ok(())
}

async fn read_more(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> Result<()> {
    match stream.read(chunk).await.context("read")? {
        0 => bail!("the connection closed before the end of a response"),
        n => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn post() -> Request {
        Request {
            method: "POST",
            path: "/upload",
            body_bytes: 3,
            answer_bytes: 8,
        }
    }

    #[test]
    fn a_request_carries_its_headers_length_and_body() {
        let bytes = request_bytes(&post(), &[("Authorization", "Bearer t")], true);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t\r\n\
             Content-Length: 3\r\nConnection: close\r\n\r\nxxx"
        );
        let get = Request {
            method: "GET",
            path: "/",
            body_bytes: 0,
            answer_bytes: 5,
        };
        assert_eq!(
            request_bytes(&get, &[], false),
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        );
    }

    #[test]
    fn a_head_is_read_once_whole_and_needs_a_length() {
        let text = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nX-A: b\r\n\r\nno";
        let head = parse_head(text).unwrap().expect("complete");
        assert_eq!((head.status, head.content_length), (401, 2));
        assert_eq!(head.head_len, text.len() - 2);
        assert!(head.headers.contains(&("x-a".to_owned(), "b".to_owned())));
        assert_eq!(parse_head(&text[..20]).unwrap(), None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
    }

    /// A server on a port the OS picks that answers every request on a connection with `answer`
    /// until the client closes; returns its port and how many requests it answered.
    fn serve(answer: &'static [u8], connections: usize) -> (u16, thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let mut answered = 0;
            for _ in 0..connections {
                let (mut stream, _) = listener.accept().unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0; 4096];
                loop {
                    // Requests are whole once the head's end and the 3-byte body are there.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        if buf.len() < end + 4 + 3 {
                            break;
                        }
                        buf.drain(..end + 4 + 3);
                        stream.write_all(answer).unwrap();
                        answered += 1;
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            }
            answered
        });
        (port, server)
    }

    #[test]
    fn fixed_count_sends_exactly_the_count_over_the_connections() {
        let (port, server) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nuploaded", 3);
        let bytes = request_bytes(&post(), &[], false);
        fixed_count(port, &bytes, 10, 3, None).unwrap();
        assert_eq!(server.join().unwrap(), 10);
    }

    #[test]
    fn fixed_count_fails_on_another_status_and_exchange_reads_it() {
        let refusal =
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nWww-Authenticate: Bearer\r\n\r\nno";
        let (port, server) = serve(refusal, 1);
        let bytes = request_bytes(&post(), &[], false);
        let err = fixed_count(port, &bytes, 4, 1, None).unwrap_err();
        assert!(err.to_string().contains("status 401"), "{err}");
        server.join().unwrap();

        let (port, server) = serve(refusal, 1);
        let answer = exchange(port, &request_bytes(&post(), &[], true)).unwrap();
        assert_eq!((answer.status, answer.body.as_slice()), (401, &b"no"[..]));
        assert_eq!(answer.header("WWW-Authenticate"), Some("Bearer"));
        server.join().unwrap();
    }
}
