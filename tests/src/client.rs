//! A raw HTTP/1.1 client: writes exactly the bytes a test gives it and parses what comes back,
//! so tests can send what a well-behaved client library never would (pipelined, malformed,
//! smuggling-shaped requests).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::wire::{self, Conn, Framing, Headers, Transport};

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Minor version: `1` for HTTP/1.1.
    pub version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        wire::header_all(&self.headers, name)
    }

    /// The body as text, for assertions and messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client over plain TCP, or over TLS (`Client<tls::TlsStream>`, made by
/// [`crate::tls::TlsClient`]).
pub struct Client<S = TcpStream> {
    conn: Conn<S>,
}

impl Client {
    /// Connects, panicking with the address on failure.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, wire::IO_TIMEOUT)?;
        Client::over(stream)
    }
}

impl<S: Transport> Client<S> {
    /// A client on an established transport.
    pub fn over(transport: S) -> io::Result<Client<S>> {
        Ok(Client {
            conn: Conn::new(transport)?,
        })
    }

    /// The socket underneath.
    pub fn stream(&self) -> &TcpStream {
        self.conn.stream()
    }

    /// The transport (for TLS: what the handshake negotiated).
    pub fn transport(&self) -> &S {
        self.conn.transport()
    }

    /// Writes `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.conn
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing {} bytes to the gateway: {e}", bytes.len()));
    }

    /// Writes `bytes`, tolerating a gateway that has already answered and closed.
    pub fn send_lenient(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.conn.write_all(bytes)
    }

    /// Reads one response (interim 1xx responses included) to a request with `method`.
    pub fn try_read_response(&mut self, method: &str) -> io::Result<Response> {
        let head = self.conn.read_head()?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })?;
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(wire::invalid("partial response head")),
            Err(e) => {
                return Err(wire::invalid(format!(
                    "unparsable response head ({e}): {:?}",
                    String::from_utf8_lossy(&head)
                )))
            }
        }
        let status = parsed.code.unwrap_or(0);
        let headers = wire::owned_headers(parsed.headers);
        let framing = if method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&status)
            || status == 204
            || status == 304
        {
            Framing::None
        } else {
            wire::declared_framing(&headers)?.unwrap_or(Framing::UntilClose)
        };
        let body = self.conn.read_body(framing)?;
        Ok(Response {
            version: parsed.version.unwrap_or(0),
            status,
            reason: parsed.reason.unwrap_or("").to_string(),
            headers,
            body,
        })
    }

    /// Reads one response, panicking with context if there is none.
    pub fn read_response(&mut self, method: &str) -> Response {
        self.try_read_response(method)
            .unwrap_or_else(|e| panic!("reading the response to {method}: {e}"))
    }

    /// Reads responses until a final (non-1xx) one.
    pub fn read_final_response(&mut self, method: &str) -> Response {
        loop {
            let resp = self.read_response(method);
            if !(100..200).contains(&resp.status) {
                return resp;
            }
        }
    }

    /// Sends `raw` and reads the final response to it.
    pub fn request(&mut self, raw: &[u8]) -> Response {
        self.send(raw);
        let method = raw
            .split(|b| *b == b' ')
            .next()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .unwrap_or_default();
        self.read_final_response(&method)
    }

    /// Sends `GET path` with keep-alive and reads the response.
    pub fn get(&mut self, path: &str) -> Response {
        self.request(get(path).as_bytes())
    }

    /// Whether the gateway closes this connection within `within` without sending more;
    /// panics if it sends anything.
    pub fn closes_within(&mut self, within: Duration) -> bool {
        self.conn.closes_within(within).unwrap_or_else(|extra| {
            panic!(
                "expected the connection to close, got {} more bytes: {:?}",
                extra.len(),
                String::from_utf8_lossy(&extra)
            )
        })
    }

    /// Asserts the gateway closes the connection (within 5 s) and sends nothing more.
    pub fn assert_closed(&mut self) {
        assert!(
            self.closes_within(Duration::from_secs(5)),
            "the gateway kept the connection open"
        );
    }
}

/// A minimal keep-alive `GET` request.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
}

/// One request on a fresh connection, returning the final response.
pub fn one_shot(addr: SocketAddr, raw: &[u8]) -> Response {
    Client::connect(addr).request(raw)
}
