//! In-process origin servers on OS-chosen ports.
//!
//! An [`Origin`] is a small blocking HTTP/1.1 server, one thread per connection, that records
//! every request it receives (before answering it, so a test can wait for requests that are
//! still in flight) and answers with whatever the test's handler returns: fixed or chunked
//! bodies, delays, or misbehaviour (close without answering, reset).

// The workspace bans std's Mutex to keep locks off the proxy's per-core hot path; this is a
// plain-threads test server, where a Mutex and Condvar are the simple, right tool.
#![allow(clippy::disallowed_types)]

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::wire::{self, Conn, Framing, Headers, Transport};

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// Minor version: `1` for HTTP/1.1.
    pub version: u8,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
    /// Which accepted connection it came on, counting from 0.
    pub conn_id: usize,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        wire::header_all(&self.headers, name)
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

#[derive(Debug, Clone)]
pub enum Body {
    Fixed(Vec<u8>),
    /// Sent with `Transfer-Encoding: chunked`, chunk sizes cycling through `sizes`.
    Chunked {
        data: Vec<u8>,
        sizes: Vec<usize>,
    },
}

/// What the origin does once the handler has decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Respond,
    /// Close the connection without a byte of response.
    Close,
    /// Reset the connection (SO_LINGER 0) without a byte of response.
    Reset,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Headers,
    pub body: Body,
    pub delay: Option<Duration>,
    /// A pause between the chunks of a chunked body: a slow stream.
    pub pace: Option<Duration>,
    pub action: Action,
    /// Close the connection after answering without announcing it (no `Connection: close`),
    /// as an upstream's idle timeout does.
    pub close_after: bool,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Fixed(Vec::new()),
            delay: None,
            pace: None,
            action: Action::Respond,
            close_after: false,
        }
    }

    /// `200` with a fixed body.
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply::new(200).body(body)
    }

    pub fn close() -> Reply {
        Reply {
            action: Action::Close,
            ..Reply::new(0)
        }
    }

    pub fn reset() -> Reply {
        Reply {
            action: Action::Reset,
            ..Reply::new(0)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = Body::Fixed(body.into());
        self
    }

    pub fn chunked(mut self, data: Vec<u8>, sizes: Vec<usize>) -> Reply {
        self.body = Body::Chunked { data, sizes };
        self
    }

    /// Closes the connection after this response, without a `Connection: close`.
    pub fn then_close(mut self) -> Reply {
        self.close_after = true;
        self
    }

    /// Pauses `pace` between chunks of a chunked body.
    pub fn pace(mut self, pace: Duration) -> Reply {
        self.pace = Some(pace);
        self
    }

    /// Waits this long before answering.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// Turns accepted connection `conn_id` into the transport requests are read from (a TLS
/// handshake, in crate::tls); `None` ends the connection.
pub(crate) type Accept =
    dyn Fn(TcpStream, usize) -> Option<Box<dyn Transport + Send>> + Send + Sync;

impl Transport for Box<dyn Transport + Send> {
    fn tcp(&self) -> &TcpStream {
        (**self).tcp()
    }

    fn close_write(&mut self) -> std::io::Result<()> {
        (**self).close_write()
    }
}

struct Shared {
    handler: Box<Handler>,
    accepted: AtomicUsize,
    /// Connections closed after an answer (announced or not).
    closed: AtomicUsize,
    requests: Mutex<Vec<Request>>,
    arrived: Condvar,
    stop: AtomicBool,
}

/// An HTTP/1.1 origin on `127.0.0.1:0`. Stops accepting when dropped.
pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Origin {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Origin {
        Origin::start_with(None, handler)
    }

    /// An origin whose connections go through `accept` first (None: plain TCP).
    pub(crate) fn start_with(
        accept: Option<Box<Accept>>,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an origin on 127.0.0.1:0");
        let addr = listener.local_addr().expect("origin local_addr");
        // std listens with a backlog of 128: a gateway opening thousands of upstream
        // connections at once (the soak test) overflowed it, and the kernel reset some.
        // Listening again on a listening socket only changes its backlog.
        // SAFETY: listen(2) on the descriptor `listener` owns, open for the call.
        let rc = unsafe { libc::listen(listener.as_raw_fd(), 4096) };
        assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            accepted: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            requests: Default::default(),
            arrived: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        thread::Builder::new()
            .name(format!("origin-{}", addr.port()))
            .spawn(move || accept_loop(listener, accept.map(Arc::from), accept_shared))
            .expect("spawn origin accept thread");
        Origin { addr, shared }
    }

    /// An origin answering every request `200` with `body`.
    pub fn ok(body: &'static str) -> Origin {
        Origin::start(move |_| Reply::ok(body))
    }

    /// An origin answering `200` with the request's target (path and query) as the body.
    pub fn echo_path() -> Origin {
        Origin::start(|req| Reply::ok(req.path.clone()))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for a service address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// How many connections it has closed after answering (`Connection: close`, or
    /// [`Reply::then_close`]); counted once the close is sent.
    pub fn closed(&self) -> usize {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.lock_requests().clone()
    }

    pub fn request_count(&self) -> usize {
        self.lock_requests().len()
    }

    /// The only request received; panics unless there was exactly one.
    pub fn single_request(&self) -> Request {
        let reqs = self.requests();
        assert_eq!(
            reqs.len(),
            1,
            "expected the origin to get exactly one request, got {:?}",
            reqs.iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect::<Vec<_>>()
        );
        reqs.into_iter().next().expect("one request")
    }

    /// Blocks until at least `n` requests have arrived; false if `timeout` passes first.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut reqs = self.lock_requests();
        while reqs.len() < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            reqs = match self.shared.arrived.wait_timeout(reqs, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    fn lock_requests(&self) -> std::sync::MutexGuard<'_, Vec<Request>> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn accept_loop(listener: TcpListener, accept: Option<Arc<Accept>>, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let conn_id = shared.accepted.fetch_add(1, Ordering::SeqCst);
        let conn_shared = shared.clone();
        let accept = accept.clone();
        // The TLS handshake runs on the connection's thread, so a stalled one holds up
        // nothing else.
        let _ = thread::Builder::new()
            .name(format!("origin-conn-{conn_id}"))
            .spawn(move || match accept {
                None => serve(stream, conn_id, &conn_shared),
                Some(accept) => {
                    if let Some(transport) = accept(stream, conn_id) {
                        serve(transport, conn_id, &conn_shared);
                    }
                }
            });
    }
}

/// Serves one connection until the peer closes, an error, or a close the exchange asks for.
fn serve<S: Transport>(stream: S, conn_id: usize, shared: &Shared) {
    let Ok(mut conn) = Conn::new(stream) else {
        return;
    };
    while let Ok(Some(req)) = read_request(&mut conn, conn_id) {
        {
            let mut reqs = shared
                .requests
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            reqs.push(req.clone());
            shared.arrived.notify_all();
        }
        let resp = (shared.handler)(&req);
        if let Some(delay) = resp.delay {
            thread::sleep(delay);
        }
        match resp.action {
            Action::Respond => {}
            Action::Close => {
                let _ = conn.stream().shutdown(Shutdown::Both);
                return;
            }
            Action::Reset => {
                reset(conn.stream());
                return;
            }
        }
        if write_response(&mut conn, &req, &resp).is_err() {
            return;
        }
        let close = wire::header_list(&req.headers, "connection", true).contains(&"close".into())
            || (req.version == 0
                && !wire::header_list(&req.headers, "connection", true)
                    .contains(&"keep-alive".into()))
            || wire::header_list(&resp.headers, "connection", true).contains(&"close".into())
            || resp.close_after;
        if close {
            let _ = conn.close_write();
            shared.closed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
}

fn read_request<S: Transport>(
    conn: &mut Conn<S>,
    conn_id: usize,
) -> std::io::Result<Option<Request>> {
    let Some(head) = conn.read_head()? else {
        return Ok(None);
    };
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => {
            return Err(wire::invalid(format!(
                "origin got an unparsable head: {:?}",
                String::from_utf8_lossy(&head)
            )))
        }
    }
    let headers = wire::owned_headers(parsed.headers);
    let method = parsed.method.unwrap_or("").to_string();
    let path = parsed.path.unwrap_or("").to_string();
    let version = parsed.version.unwrap_or(1);
    let framing = match wire::declared_framing(&headers)? {
        Some(Framing::UntilClose) => {
            return Err(wire::invalid("request body framed by close"));
        }
        Some(f) => f,
        None => Framing::None,
    };
    let expects_continue = wire::header_list(&headers, "expect", true)
        .iter()
        .any(|e| e == "100-continue");
    // Like common servers (hyper, Go's net/http): announce 100 before reading the body.
    if expects_continue && framing != Framing::None && framing != Framing::Length(0) {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = conn.read_body(framing)?;
    Ok(Some(Request {
        method,
        path,
        version,
        headers,
        body,
        chunked: framing == Framing::Chunked,
        conn_id,
    }))
}

fn write_response<S: Transport>(
    conn: &mut Conn<S>,
    req: &Request,
    resp: &Reply,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (name, value) in &resp.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let has_length = wire::header(&resp.headers, "content-length").is_some();
    let head_only = req.method == "HEAD";
    match &resp.body {
        Body::Fixed(data) => {
            if !has_length {
                head.push_str(&format!("Content-Length: {}\r\n", data.len()));
            }
            head.push_str("\r\n");
            let mut out = head.into_bytes();
            if !head_only {
                out.extend_from_slice(data);
            }
            conn.write_all(&out)
        }
        Body::Chunked { data, sizes } => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            conn.write_all(head.as_bytes())?;
            if head_only {
                return Ok(());
            }
            // One write per chunk, so chunk boundaries fall anywhere in the gateway's reads.
            for chunk in wire::chunk_frames(data, sizes) {
                conn.write_all(&chunk)?;
                if let Some(pace) = resp.pace {
                    thread::sleep(pace);
                }
            }
            Ok(())
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        418 => "I'm a teapot",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// Closes `stream` with an RST instead of a FIN.
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is open for the duration of the call (we hold `stream`), and the option
    // value is a valid `linger` whose exact size we pass.
    let _ = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    // Dropping the last handle now closes with RST; the caller returns and drops it.
}

/// A port on which nothing listens, held for as long as the value lives: the socket is
/// bound but never listens, so connections are refused and no other socket (a gateway
/// picking port 0 in a parallel test) can be given the port meanwhile.
pub struct ClosedPort {
    // Held, not read: closing it would free the port.
    _socket: std::os::fd::OwnedFd,
    addr: SocketAddr,
}

impl ClosedPort {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

pub fn closed_port() -> ClosedPort {
    let (socket, addr) = bound_socket(0);
    ClosedPort {
        _socket: socket,
        addr,
    }
}

/// A TCP socket bound to 127.0.0.1:`port` (0: the system's choice) that does not listen,
/// and the address it got.
fn bound_socket(port: u16) -> (std::os::fd::OwnedFd, SocketAddr) {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: socket(2)/bind(2)/getsockname(2) on a descriptor created here and owned by
    // OwnedFd at once; the sockaddr buffers are fully initialised sockaddr_in values.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        sa.sin_port = port.to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(socket.as_raw_fd(), (&raw const sa).cast(), len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut bound: libc::sockaddr_in = std::mem::zeroed();
        let mut blen = len;
        let rc = libc::getsockname(socket.as_raw_fd(), (&raw mut bound).cast(), &mut blen);
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, u16::from_be(bound.sin_port)));
        (socket, addr)
    }
}

/// A port that was free a moment ago: bound, then released. Only for a listener that
/// must have a concrete port; another process may take it first, so prefer port 0.
pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr")
}

/// A latch an origin handler can block on until the test opens it, so a test can hold
/// requests in flight for exactly as long as it needs them there.
#[derive(Clone, Default)]
pub struct Gate {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Blocks until opened, or `timeout` passes (so a failed test never hangs an origin).
    pub fn wait(&self, timeout: Duration) {
        let (lock, cond) = &*self.inner;
        let deadline = Instant::now() + timeout;
        let mut open = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !*open {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            open = match cond.wait_timeout(open, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    pub fn open(&self) {
        let (lock, cond) = &*self.inner;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cond.notify_all();
    }
}

/// A listener that never accepts and whose accept queue is already full, so the kernel
/// drops every further SYN: a connect to it hangs until the connector gives up. All on
/// loopback, held for as long as the value lives.
pub struct FullQueue {
    _listener: std::os::fd::OwnedFd,
    _queued: Vec<std::net::TcpStream>,
    addr: SocketAddr,
}

impl FullQueue {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

pub fn full_accept_queue() -> FullQueue {
    use std::os::fd::AsRawFd;
    let (listener, addr) = bound_socket(0);
    // SAFETY: listen(2) on a socket owned by `listener`. Backlog 0: the queue is full
    // after one connection.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), 0) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    let mut queued = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => queued.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return FullQueue {
                    _listener: listener,
                    _queued: queued,
                    addr,
                }
            }
            Err(e) => panic!("filling the accept queue of {addr}: {e}"),
        }
    }
    panic!("the accept queue of {addr} never filled: SYNs are not being dropped");
}
