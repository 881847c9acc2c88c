//! A warm gateway allocates nothing per request. The real server runs in this process, with
//! the Prometheus recorder installed as `ringwall run` installs it, between a client and an
//! origin that allocate nothing once connected; a counting global allocator (`counting`)
//! watches every thread while thousands of keep-alive exchanges go through.
//!
//! A bound well below one allocation per request, rather than zero, leaves room for what
//! the gateway's background tasks and the test harness allocate now and then, never per
//! request. Request durations go into fixed buckets (see `ringwall::metrics`), so nothing
//! else is let through; the exporter's own histograms, which allocated a block per 64
//! samples, are no longer on the request path.
//!
//! One gateway serves every test, and the measurements take turns: a count covers the whole
//! process, so two at once would count each other.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;
use std::sync::{mpsc, Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use ringwall::gateway::Gateway;
use ringwall::server::{self, Options};
use ringwall::xdp::{AttachMode, XdpSetting};
use socket2::{Domain, Socket, Type};

mod counting;

/// Exchanges on each connection before counting: pools, buffers and upstream connections
/// reach their working size.
const WARM_UP: usize = 2_000;
/// Exchanges counted in each small-body test.
const REQUESTS: usize = 20_000;
/// Allocations per request tolerated at most: `1/BOUND`. One allocation per request breaks
/// it many times over, and so does one per 64 (what the exporter's histogram made);
/// background tasks stay far below it.
const BOUND: usize = 200;

const GET: &[u8] = b"GET /small HTTP/1.1\r\nHost: ringwall\r\n\r\n";
const POST: &[u8] =
    b"POST /small HTTP/1.1\r\nHost: ringwall\r\nContent-Length: 10\r\n\r\n0123456789";
const GET_LARGE: &[u8] = b"GET /large HTTP/1.1\r\nHost: ringwall\r\n\r\n";

const SMALL_BODY: &[u8] = b"hello";
const LARGE_LEN: usize = 64 * 1024;
/// Larger than any buffer on the way, so the body is relayed rather than coalesced with its
/// head; not one repeated byte, so that a reordered or truncated relay shows.
static LARGE_BODY: [u8; LARGE_LEN] = pattern();

const fn pattern() -> [u8; LARGE_LEN] {
    let mut body = [0; LARGE_LEN];
    let mut i = 0;
    while i < LARGE_LEN {
        body[i] = (i % 251) as u8;
        i += 1;
    }
    body
}

#[test]
fn get_requests_allocate_nothing() {
    let counted = measure("GET, 1 connection", 1, REQUESTS, GET, SMALL_BODY);
    assert_under_bound(counted, REQUESTS);
}

#[test]
fn concurrent_connections_allocate_nothing() {
    // Several exchanges in flight on a worker take and give back several write buffers.
    let counted = measure("GET, 4 connections", 4, REQUESTS / 4, GET, SMALL_BODY);
    assert_under_bound(counted, REQUESTS);
}

#[test]
fn small_request_bodies_allocate_nothing() {
    let counted = measure("POST of 10 bytes", 1, REQUESTS, POST, SMALL_BODY);
    assert_under_bound(counted, REQUESTS);
}

#[test]
fn relayed_response_bodies_allocate_nothing() {
    // Fewer: each moves 64 KiB twice over loopback.
    let requests = REQUESTS / 4;
    let counted = measure("GET of 64 KiB", 1, requests, GET_LARGE, &LARGE_BODY);
    assert_under_bound(counted, requests);
}

fn assert_under_bound(counted: usize, requests: usize) {
    let allowed = requests / BOUND;
    assert!(
        counted < allowed,
        "{counted} allocations in {requests} requests ({:.3} per request), expected fewer \
         than {allowed}",
        counted as f64 / requests as f64
    );
}

/// Sends `per_connection` exchanges of `request` on each of `connections` keep-alive
/// connections (after [`WARM_UP`] each), checks every response carries `body`, and returns
/// the allocations every thread made meanwhile.
fn measure(
    what: &str,
    connections: usize,
    per_connection: usize,
    request: &'static [u8],
    body: &'static [u8],
) -> usize {
    // Poisoned by a test that failed: the gateway is still fine.
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let gateway = gateway();
    let addr = gateway.addr;
    // Everyone warm, then the count starts; everyone done, then it ends.
    let (warm, go, done) = (
        Arc::new(Barrier::new(connections + 1)),
        Arc::new(Barrier::new(connections + 1)),
        Arc::new(Barrier::new(connections + 1)),
    );
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            let (warm, go, done) = (warm.clone(), go.clone(), done.clone());
            std::thread::spawn(move || {
                // A failure is returned, not raised, and every barrier is still reached:
                // the other threads never wait forever.
                let mut client = Client::connect(addr);
                let mut exchanges = |n: usize| {
                    let client = client.as_mut().map_err(|e| e.clone())?;
                    (0..n).try_for_each(|_| client.exchange(request, body))
                };
                let warmed = exchanges(WARM_UP);
                warm.wait();
                go.wait();
                let counted = warmed.and_then(|()| exchanges(per_connection));
                done.wait();
                counted
            })
        })
        .collect();
    warm.wait();
    let before = counting::allocations();
    let started = Instant::now();
    go.wait();
    done.wait();
    let counted = counting::allocations() - before;
    let elapsed = started.elapsed();
    for client in clients {
        let exchanged = client.join().expect("the client thread panicked");
        if let Err(e) = exchanged {
            panic!("{what}: {e}");
        }
    }
    let requests = connections * per_connection;
    println!(
        "{what}: {counted} allocations in {requests} requests ({:.4} per request, {elapsed:.2?})",
        counted as f64 / requests as f64
    );
    counted
}

/// One measurement at a time. (The workspace bans std's Mutex to keep locks off the proxy's
/// hot path; here it only makes the tests take turns.)
#[allow(clippy::disallowed_types)]
static TURN: Mutex<()> = Mutex::new(());

// === The gateway ===

/// The gateway every test shares.
struct Running {
    addr: SocketAddr,
}

/// The gateway, started by the first test to ask.
fn gateway() -> &'static Running {
    static GATEWAY: OnceLock<Running> = OnceLock::new();
    GATEWAY.get_or_init(start_gateway)
}

/// Starts the gateway on a background thread, as `ringwall run` does, in front of an
/// [`origin`], and returns once it accepts connections. It runs until the process ends.
fn start_gateway() -> Running {
    let origin = origin();
    // The port is the system's choice, and the gateway announces it only on stdout, which a
    // test cannot read: a socket bound first with SO_REUSEPORT picks it and keeps it ours,
    // and the gateway's own sockets join it. Never listening, it is never given connections.
    let hold = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    hold.set_reuse_address(true).expect("SO_REUSEADDR");
    hold.set_reuse_port(true).expect("SO_REUSEPORT");
    hold.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .expect("bind");
    let addr = hold
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("an inet address");

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("request_path_alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("config dir");
    std::fs::write(dir.join("api.yaml"), config(addr, origin)).expect("config file");
    let loaded = ringwall::watch::fingerprint(&dir);
    let snapshot = ringwall_config::load_dir(&dir).expect("a valid configuration");
    // Read once: without a watcher or a SIGHUP, the gateway never reads it again.
    let _ = std::fs::remove_dir_all(&dir);
    ringwall::runtime_log::init(snapshot.settings.logging.runtime.level);
    let metrics = ringwall::metrics::install().expect("the only recorder");
    let gateway = Gateway::build(Arc::new(snapshot), None).expect("a valid gateway");
    let opts = Options {
        config_dir: dir,
        watch: false,
        loaded,
        // One per core of a small machine; the connections spread over them.
        workers: 2,
        drain_period: Duration::ZERO,
        shutdown_timeout: Duration::from_secs(1),
        // The recorder is installed and recorded into, which is what is counted; nothing
        // needs to scrape it.
        admin: None,
        metrics: Some(metrics),
        xdp: XdpSetting::Off,
        xdp_ifaces: Vec::new(),
        xdp_mode: AttachMode::Auto,
    };
    let (stopped_tx, stopped) = mpsc::channel();
    std::thread::spawn(move || {
        let _hold = hold;
        let _ = stopped_tx.send(server::run(Arc::new(gateway), &opts));
    });
    // Refused until the gateway listens; queued from then on, and served once its workers
    // run.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(stopped) = stopped.try_recv() {
            panic!("the gateway stopped: {stopped:?}");
        }
        match TcpStream::connect(addr) {
            Ok(_) => return Running { addr },
            Err(e) if Instant::now() > deadline => panic!("the gateway never listened: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Routes with path rules the requests never match, before the one they take: enough of
/// them for the gateway to route through its index of path patterns, which is then on the
/// path of every request counted.
const UNMATCHED_ROUTES: usize = 20;

fn config(addr: SocketAddr, origin: SocketAddr) -> String {
    let unmatched: String = (0..UNMATCHED_ROUTES)
        .map(|i| {
            format!(
                "        - rules:
            - path: /unmatched{i}/.*
          config:
            destinationPath: /
"
            )
        })
        .collect();
    format!(
        "apiVersion: gateway.mulesoft.com/v1alpha1
kind: ApiInstance
metadata:
  name: api
spec:
  address: http://{addr}
  services:
    origin:
      address: http://{origin}
      routes:
{unmatched}        - config:
            destinationPath: /
"
    )
}

// === Both ends ===

/// Room for any response head and the largest body.
const CLIENT_BUF: usize = 2 * LARGE_LEN;

struct Client {
    stream: TcpStream,
    buf: Box<[u8]>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Self, String> {
        let stream =
            TcpStream::connect(addr).map_err(|e| format!("cannot connect to the gateway: {e}"))?;
        // A gateway that stops answering fails the test rather than hanging it.
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| format!("cannot set up the client socket: {e}"))?;
        Ok(Self {
            stream,
            buf: vec![0; CLIENT_BUF].into_boxed_slice(),
        })
    }

    /// Sends `request` and reads its response, which must be a 200 with `body`.
    fn exchange(&mut self, request: &[u8], body: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(request)
            .map_err(|e| format!("cannot write the request: {e}"))?;
        let mut filled = 0;
        loop {
            match self.stream.read(&mut self.buf[filled..]) {
                Ok(0) => return Err("the gateway closed the connection".into()),
                Ok(n) => filled += n,
                Err(e) => return Err(format!("cannot read the response: {e}")),
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let head = match response.parse(&self.buf[..filled]) {
                Ok(httparse::Status::Complete(head)) => head,
                Ok(httparse::Status::Partial) => continue,
                Err(e) => return Err(format!("an invalid response head: {e}")),
            };
            if response.code != Some(200) {
                return Err(format!("status {:?}", response.code));
            }
            let len = content_length(response.headers);
            if len != body.len() {
                return Err(format!("Content-Length {len}, not {}", body.len()));
            }
            if filled < head + len {
                continue;
            }
            if filled > head + len || self.buf[head..filled] != *body {
                return Err(format!(
                    "a body of {} bytes unlike the origin's",
                    filled - head
                ));
            }
            return Ok(());
        }
    }
}

fn content_length(headers: &[httparse::Header<'_>]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .unwrap_or(0)
}

/// An origin on a port of the system's choosing: a thread per connection, answering every
/// request with [`SMALL_BODY`], or [`LARGE_BODY`] for `/large`.
fn origin() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the origin");
    let addr = listener.local_addr().expect("origin address");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve_origin(stream));
        }
    });
    addr
}

/// Answers the requests of one keep-alive connection, in a buffer allocated once.
fn serve_origin(mut stream: TcpStream) {
    const SMALL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    const LARGE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n";
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0; 16 * 1024];
    let mut filled = 0;
    loop {
        match request_end(&buf[..filled]) {
            Some((end, large)) => {
                let written = if large {
                    stream
                        .write_all(LARGE_HEAD)
                        .and_then(|()| stream.write_all(&LARGE_BODY))
                } else {
                    stream.write_all(SMALL)
                };
                if written.is_err() {
                    return;
                }
                buf.copy_within(end..filled, 0);
                filled -= end;
            }
            None => match stream.read(&mut buf[filled..]) {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            },
        }
    }
}

/// Where the first request in `buf` ends, body included, if it is whole, and whether it
/// asks for the large body.
fn request_end(buf: &[u8]) -> Option<(usize, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let head = match request.parse(buf).expect("a valid request head") {
        httparse::Status::Complete(head) => head,
        httparse::Status::Partial => return None,
    };
    let end = head + content_length(request.headers);
    let large = request.path == Some("/large");
    (buf.len() >= end).then_some((end, large))
}
