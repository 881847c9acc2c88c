//! Regression tests for correctness bugs found reviewing the connection pipeline
//! (`proxy/src/conn.rs`, `proxy/src/http/*`, `proxy/src/pool.rs`). Each test fails on the
//! code as reviewed and describes the bug it pins down.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ringwall_tests::yaml::*;
use ringwall_tests::*;

/// Reads from `stream` until the end of a response head; returns the head.
fn read_raw_head(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set_read_timeout");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            Ok(_) => break,
            Err(e) => panic!(
                "reading a response head: {e}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads one request head from a raw origin connection (the requests here have no body).
fn read_request_head(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

// === Request smuggling through `Connection: <framing header>` ===

/// `Connection: content-length` makes `is_hop_by_hop` drop the request's `Content-Length`
/// from the upstream head while the body is still relayed: the upstream reads a bodiless
/// POST, then the body as a second request the gateway never routed.
#[test]
fn connection_naming_content_length_does_not_strip_the_request_framing() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|req| Reply::ok(format!("{} {}", req.method, req.path)));
        let gw = gateway_to(&origin);
        let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: origin\r\n\r\n";
        let mut raw = format!(
            "POST /a HTTP/1.1\r\nHost: gateway.test\r\nConnection: content-length\r\n\
             Content-Length: {}\r\n\r\n",
            smuggled.len()
        )
        .into_bytes();
        raw.extend_from_slice(smuggled);
        let resp = Client::connect(gw.addr("api")).request(&raw);
        assert_eq!(resp.status, 200, "{resp:?}");
        let first = origin.requests().into_iter().next().expect("a request");
        assert_eq!(
            first.body,
            smuggled.to_vec(),
            "the origin got the POST without its body (Content-Length stripped): {:?}",
            first.headers
        );
        // The smuggled request must never reach the origin as a request of its own.
        origin.wait_for_requests(2, Duration::from_millis(500));
        assert!(
            !origin.requests().iter().any(|r| r.path == "/smuggled"),
            "a request hidden in a body reached the origin"
        );
    })
}

/// The same with `Connection: transfer-encoding`: the contract says Transfer-Encoding is
/// never removed as hop-by-hop, but a Connection header naming it removes it.
#[test]
fn connection_naming_transfer_encoding_does_not_strip_the_request_framing() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|req| Reply::ok(format!("{} {}", req.method, req.path)));
        let gw = gateway_to(&origin);
        let raw = b"POST /a HTTP/1.1\r\nHost: gateway.test\r\nConnection: transfer-encoding\r\n\
                    Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let resp = Client::connect(gw.addr("api")).request(raw);
        assert_eq!(resp.status, 200, "{resp:?}");
        let first = origin.requests().into_iter().next().expect("a request");
        assert!(
            first.chunked && first.body == b"hello",
            "the origin got the POST without its body (Transfer-Encoding stripped): {first:?}"
        );
    })
}

/// On the response side the same rule strips `Content-Length` from what the client gets
/// while the connection is kept alive: the client cannot find the end of the body.
#[test]
fn upstream_connection_naming_content_length_keeps_the_response_framing() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|_| Reply::ok("hello").header("Connection", "content-length"));
        let gw = gateway_to(&origin);
        let client = Client::connect(gw.addr("api"));
        let mut stream = client
            .stream()
            .try_clone()
            .expect("clone the client stream");
        stream
            .write_all(b"GET /a HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
            .expect("send");
        let head = read_raw_head(&mut stream).to_ascii_lowercase();
        assert!(
            head.contains("content-length: 5") || head.contains("connection: close"),
            "a keep-alive response without any framing reached the client: {head:?}"
        );
    })
}

// === Reuse of an upstream connection that is not clean ===

/// A raw origin whose first connection, after answering its first request, sends an
/// unsolicited second response (as a misbehaving upstream, or a HEAD answered with a body,
/// would) once told to. Every other request, on any connection, is answered `fresh`.
fn dirty_origin() -> (SocketAddr, mpsc::Sender<()>, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        let mut go = Some((go_rx, sent_tx));
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let script = if i == 0 { go.take() } else { None };
            thread::spawn(move || {
                let mut first = true;
                while read_request_head(&mut conn).is_some() {
                    let body = if first && script.is_some() {
                        "first"
                    } else {
                        "fresh"
                    };
                    let _ = conn.write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{body}").as_bytes(),
                    );
                    if first {
                        if let Some((go, sent)) = &script {
                            let _ = go.recv();
                            let _ = conn
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale");
                            let _ = sent.send(());
                        }
                    }
                    first = false;
                }
            });
        }
    });
    (addr, go_tx, sent_rx)
}

/// What the second of two requests on one client connection gets, when the upstream
/// connection the first used was put back in the pool and then received an unsolicited
/// response: `first` then `second` (a raw request) go through a gateway to `dirty_origin`.
fn answer_after_a_dirty_pool(second: &[u8]) -> String {
    let (addr, go, sent) = dirty_origin();
    let gw = gateway_to_url(&format!("http://{addr}"));
    let mut client = Client::connect(gw.addr("api"));
    assert_eq!(client.get("/one").text(), "first");
    // The upstream connection is back in the pool: now it gets dirty.
    go.send(()).expect("origin alive");
    sent.recv_timeout(Duration::from_secs(5))
        .expect("origin sent");
    client.request(second).text()
}

/// A pooled connection with unread bytes on it is used for an idempotent, bodiless request
/// without the `still_open` peek (conn.rs: `Some(up) if replayable || still_open(..)`), so
/// the stale bytes are taken for the new request's response.
#[test]
fn a_pooled_connection_with_unread_bytes_is_not_reused() {
    within(TEST_LIMIT, || {
        assert_eq!(
            answer_after_a_dirty_pool(client::get("/two").as_bytes()),
            "fresh",
            "bytes left on a pooled connection were served as the response"
        );
    })
}

/// The same for a request with a body that came whole with its head, which is sent linked
/// to the response's first read: it must not go on that connection either, since it cannot
/// be sent again (the `still_open` peek comes before it).
#[test]
fn a_pooled_connection_with_unread_bytes_carries_no_post() {
    within(TEST_LIMIT, || {
        assert_eq!(
            answer_after_a_dirty_pool(
                b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
            ),
            "fresh",
            "bytes left on a pooled connection were served as the response to a POST"
        );
    })
}

fn gateway_to_url(url: &str) -> Gateway {
    Gateway::start(&[("api.yaml", &simple_api(url))], &[])
}

// === Access log fields ===

fn logging_to(dir: &std::path::Path) -> String {
    format!(
        "logging:\n  outputs:\n    - name: access\n      type: file\n      parameters:\n        \
         path: {}\n        file: access.log\n  accessLogs:\n    outputs: [access]\n",
        dir.display()
    )
}

/// A request that cannot be parsed is logged with an empty method and path; on a
/// keep-alive connection the entry got the previous request's method and target glued
/// together as its path (`Client::meta` is not cleared, `method_len` is reset to 0).
#[test]
fn an_unparsable_request_is_not_logged_with_the_previous_requests_path() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("hello");
        let logs = tempfile::tempdir().expect("log dir");
        let config = documents(&[
            &api_to("http://127.0.0.1:0/api", &origin.url(), "/"),
            &configuration("logs", &logging_to(logs.path())),
        ]);
        let mut gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let mut client = Client::connect(gw.addr("api"));
        assert_eq!(client.get("/api/first").status, 200);
        client.send(b"GET /api/second HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n");
        assert_eq!(client.read_response("GET").status, 400);
        gw.terminate();
        assert_eq!(gw.wait_exit(Duration::from_secs(10)).code(), Some(0));
        let text = std::fs::read_to_string(logs.path().join("access.log")).expect("access log");
        let bad = text
            .lines()
            .find(|l| l.contains("\"status\":400"))
            .unwrap_or_else(|| panic!("no 400 line in {text}"));
        assert!(
            !bad.contains("first"),
            "the 400's entry names the previous request: {bad}"
        );
    })
}

/// `bytes_in`/`bytes_out` are documented as the bytes read from / written to the client,
/// head and body; for chunked bodies `relay` returns only the chunk *data* it saw, so the
/// chunk framing (sizes, CRLFs, last chunk) that did cross the wire is not counted.
#[test]
fn access_log_counts_chunked_bodies_as_they_crossed_the_wire() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|_| Reply::ok("").chunked(b"hello world".to_vec(), vec![5, 6]));
        let logs = tempfile::tempdir().expect("log dir");
        let config = documents(&[
            &api_to("http://127.0.0.1:0/api", &origin.url(), "/"),
            &configuration("logs", &logging_to(logs.path())),
        ]);
        let mut gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let client = Client::connect(gw.addr("api"));
        let mut stream = client.stream().try_clone().expect("clone");
        let upload: &[u8] = b"POST /api/up HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\
                              Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        stream.write_all(upload).expect("send");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut received = Vec::new();
        stream
            .read_to_end(&mut received)
            .expect("read to the close");
        assert!(received.starts_with(b"HTTP/1.1 200"), "{received:?}");
        gw.terminate();
        assert_eq!(gw.wait_exit(Duration::from_secs(10)).code(), Some(0));
        let text = std::fs::read_to_string(logs.path().join("access.log")).expect("access log");
        let line = text.lines().next().expect("one line");
        let field = |name: &str| -> u64 {
            let at = line.find(&format!("\"{name}\":")).expect(name) + name.len() + 3;
            line[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a number")
        };
        assert_eq!(field("bytes_out"), received.len() as u64, "{line}");
        assert_eq!(field("bytes_in"), upload.len() as u64, "{line}");
    })
}

// === Abandoned ops and idle upstream connections ===

/// Gateway sockets in SYN_SENT towards `port`, from /proc/net/tcp.
fn syn_sent_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "02"
                && f[2]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

/// On a connect timeout `connect` drops the `TcpStream::connect` future: the connect op
/// stays in flight on the ring and owns the socket, which the kernel keeps retrying (SYN
/// after SYN, about two minutes) after the client already got its 504. Each timed-out
/// request leaks a socket for that long.
#[test]
fn a_timed_out_upstream_connect_does_not_leave_its_socket_connecting() {
    within(TEST_LIMIT, || {
        let hole = full_accept_queue();
        let config = documents(&[
            &simple_api(&format!("http://{}", hole.addr())),
            &configuration("timeouts", "timeouts:\n  upstreamConnectSeconds: 0.5\n"),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        assert_eq!(
            syn_sent_to(hole.addr().port()),
            0,
            "connects left over from the set-up"
        );
        let resp = Client::connect(gw.addr("api")).get("/");
        assert_eq!(resp.status, 504);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while syn_sent_to(hole.addr().port()) > 0 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            syn_sent_to(hole.addr().port()),
            0,
            "the gateway is still connecting to the upstream after answering 504"
        );
    })
}

/// `upstreamConnectionIdleSeconds` is checked only when the pool is next asked for the
/// same address: an idle upstream connection to an address that gets no more requests
/// (traffic moved, upstream removed by a reload) is never closed.
#[test]
fn an_idle_pooled_connection_is_closed_after_the_idle_timeout() {
    within(TEST_LIMIT, || {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = documents(&[
            &simple_api(&format!("http://{addr}")),
            &configuration(
                "timeouts",
                "timeouts:\n  upstreamConnectionIdleSeconds: 0.5\n",
            ),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            read_request_head(&mut conn).expect("a request");
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .expect("answer");
            conn.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut byte = [0u8; 1];
            let _ = tx.send(conn.read(&mut byte).map_err(|e| e.kind()));
        });
        assert_eq!(Client::connect(gw.addr("api")).get("/").text(), "ok");
        let after_idle = rx.recv().expect("origin thread");
        assert!(
            matches!(after_idle, Ok(0)) || after_idle == Err(std::io::ErrorKind::ConnectionReset),
            "the pooled connection was still open 5 s after a 0.5 s idle timeout: {after_idle:?}"
        );
    })
}

// === Drain ===

/// During the drain period every response is to close its connection (`--drain-seconds`:
/// "every response closing its connection"), but a request the gateway answers itself
/// with a 404 keeps the connection alive: `plan_request` decides `close` from the request
/// alone and never looks at `Worker::closes_connections`.
#[test]
fn during_the_drain_period_a_404_closes_its_connection_too() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("fine");
        let config = api_to("http://127.0.0.1:0/api", &origin.url(), "/");
        let mut gw = Gateway::start(
            &[("api.yaml", &config)],
            &[
                "--workers",
                "1",
                "--admin",
                "127.0.0.1:0",
                "--drain-seconds",
                "3",
            ],
        );
        let (addr, admin) = (gw.addr("api"), gw.admin_addr());
        let mut kept = Client::connect(addr);
        assert_eq!(kept.get("/api/before").status, 200);
        gw.terminate();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while Client::connect(admin).get("/ready").status == 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "/ready never turned 503"
            );
            thread::sleep(Duration::from_millis(5));
        }
        // The one worker is in its drain period once a proxied response says close.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while Client::connect(addr).get("/api/probe").header("connection") != Some("close") {
            assert!(
                std::time::Instant::now() < deadline,
                "responses never said close"
            );
            thread::sleep(Duration::from_millis(5));
        }
        let missed = kept.get("/elsewhere");
        assert_eq!(missed.status, 404);
        assert_eq!(
            missed.header("connection"),
            Some("close"),
            "a 404 during the drain period kept its connection: {missed:?}"
        );
        kept.assert_closed();
        let _ = gw.wait_exit(Duration::from_secs(10));
    })
}

// === Timeouts ===

/// `upstreamResponseSeconds` is applied to each read of the response head, and interim
/// responses are dropped and the loop goes on reading: an upstream that sends a 103 every
/// so often never times out, however long the final response takes.
#[test]
fn interim_responses_do_not_extend_the_upstream_response_timeout() {
    within(TEST_LIMIT, || {
        let (status, elapsed) = status_with_a_1s_response_timeout(|conn| {
            let until = std::time::Instant::now() + Duration::from_secs(8);
            while std::time::Instant::now() < until {
                conn.write_all(b"HTTP/1.1 103 Early Hints\r\n\r\n")?;
                thread::sleep(Duration::from_millis(300));
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
        });
        assert!(
            status == 504 && elapsed < Duration::from_secs(3),
            "got {status} after {elapsed:?} with a 1 s response timeout"
        );
    })
}

/// The response head has one deadline from the request's write, also when the read made
/// together with that write brings only an interim response: a final head due 1 s after
/// the request, 0.6 s after a 103, gets a 504 at 1 s, however soon after the 103 it comes.
#[test]
fn an_interim_response_in_the_first_read_does_not_restart_the_response_timeout() {
    within(TEST_LIMIT, || {
        let (status, _) = status_with_a_1s_response_timeout(|conn| {
            thread::sleep(Duration::from_millis(800));
            conn.write_all(b"HTTP/1.1 103 Early Hints\r\n\r\n")?;
            thread::sleep(Duration::from_millis(600));
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
        });
        assert_eq!(status, 504, "the 103 extended the 1 s response timeout");
    })
}

/// The status a client gets for `GET /`, and how long it took, from a gateway with
/// `upstreamResponseSeconds: 1` in front of an upstream that reads each request head and
/// then runs `answer`.
fn status_with_a_1s_response_timeout(
    answer: fn(&mut TcpStream) -> std::io::Result<()>,
) -> (u16, Duration) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                if read_request_head(&mut conn).is_some() {
                    // The gateway may have given up and closed: nothing to do then.
                    let _ = answer(&mut conn);
                }
            });
        }
    });
    let config = documents(&[
        &simple_api(&format!("http://{addr}")),
        &configuration("timeouts", "timeouts:\n  upstreamResponseSeconds: 1\n"),
    ]);
    let gw = Gateway::start(&[("api.yaml", &config)], &[]);
    let started = std::time::Instant::now();
    let status = Client::connect(gw.addr("api")).get("/").status;
    (status, started.elapsed())
}

/// Runs `exchange` on a fresh connection to a logging gateway in front of `upstream`,
/// reads everything the gateway sends until it closes, and returns that and the
/// exchange's access log line.
fn logged_exchange(upstream: &str, exchange: impl FnOnce(&mut TcpStream)) -> (Vec<u8>, String) {
    let logs = tempfile::tempdir().expect("log dir");
    let config = documents(&[
        &api_to("http://127.0.0.1:0/api", upstream, "/"),
        &configuration("logs", &logging_to(logs.path())),
    ]);
    let mut gw = Gateway::start(&[("api.yaml", &config)], &[]);
    let client = Client::connect(gw.addr("api"));
    let mut stream = client.stream().try_clone().expect("clone");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    exchange(&mut stream);
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    gw.terminate();
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let text = std::fs::read_to_string(logs.path().join("access.log")).expect("access log");
    (received, text.lines().next().expect("a line").to_string())
}

fn number_field(line: &str, name: &str) -> u64 {
    let at = line.find(&format!("\"{name}\":")).expect(name) + name.len() + 3;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

/// `bytes_out` is "bytes written to the client for this exchange"; the `100 Continue` the
/// gateway writes is not counted.
#[test]
fn access_log_counts_the_100_continue_it_sent() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("fine");
        let (received, line) = logged_exchange(&origin.url(), |stream| {
            stream
                .write_all(
                    b"POST /api/up HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\
                      Expect: 100-continue\r\nContent-Length: 5\r\n\r\n",
                )
                .expect("send head");
            let interim = read_raw_head(stream);
            assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
            stream.write_all(b"hello").expect("send body");
        });
        let total = received.len() as u64 + "HTTP/1.1 100 Continue\r\n\r\n".len() as u64;
        assert_eq!(number_field(&line, "bytes_out"), total, "{line}");
    })
}

/// A response cut short by the upstream still wrote its head and part of its body to
/// the client; `bytes_out` only counts the head (the relay's count is dropped with its
/// error).
#[test]
fn access_log_counts_a_response_cut_short() {
    within(TEST_LIMIT, || {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let _ = read_request_head(&mut conn);
                let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
                out.extend(std::iter::repeat_n(b'x', 40_000));
                let _ = conn.write_all(&out);
            }
        });
        let (received, line) = logged_exchange(&format!("http://{addr}"), |stream| {
            stream
                .write_all(b"GET /api/big HTTP/1.1\r\nHost: a\r\n\r\n")
                .expect("send");
        });
        assert!(received.len() > 40_000, "{}", received.len());
        assert_eq!(
            number_field(&line, "bytes_out"),
            received.len() as u64,
            "{line}"
        );
    })
}
