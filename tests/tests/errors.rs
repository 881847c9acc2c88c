//! What the gateway answers when something is wrong: with the upstream (502, 504), with the
//! request's syntax or framing (400), or with its size (431, 413). Framing errors must close
//! the connection (a request-smuggling defence) without taking the gateway down.

use std::time::{Duration, Instant};

use ringwall_tests::yaml::{configuration, documents, simple_api};
use ringwall_tests::*;

/// An origin that answers, and a gateway in front of it, for each malformed-input case.
fn rejecting_setup() -> (Origin, Gateway) {
    let origin = Origin::ok("fine");
    let gw = gateway_to(&origin);
    (origin, gw)
}

#[test]
fn upstream_down_is_502() {
    within(TEST_LIMIT, || {
        let port = closed_port();
        let down = format!("http://{}", port.addr());
        let gw = Gateway::start(&[("api.yaml", &simple_api(&down))], &[]);

        let resp = Client::connect(gw.addr("api")).get("/");

        assert_error(&resp, 502);
    })
}

#[test]
fn slow_upstream_is_504_after_the_response_timeout() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|_| Reply::ok("too late").delay(Duration::from_secs(3)));
        let config = documents(&[
            &simple_api(&origin.url()),
            &configuration("timeouts", "timeouts:\n  upstreamResponseSeconds: 1\n"),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let mut client = Client::connect(gw.addr("api"));

        let started = Instant::now();
        let resp = client.get("/slow");
        let elapsed = started.elapsed();

        assert_error(&resp, 504);
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2500),
            "504 after {elapsed:?}, want about 1 s"
        );
        assert_eq!(origin.request_count(), 1);
    })
}

#[test]
fn upstream_connect_timeout_is_504() {
    within(TEST_LIMIT, || {
        let hole = full_accept_queue();
        let config = documents(&[
            &simple_api(&format!("http://{}", hole.addr())),
            &configuration("timeouts", "timeouts:\n  upstreamConnectSeconds: 0.5\n"),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        let started = Instant::now();
        let resp = Client::connect(gw.addr("api")).get("/");
        let elapsed = started.elapsed();

        assert_error(&resp, 504);
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(2000),
            "504 after {elapsed:?}, want about 0.5 s"
        );
    })
}

#[test]
fn upstream_closing_without_a_response_is_502() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|_| Reply::close());
        let gw = gateway_to(&origin);

        let resp = Client::connect(gw.addr("api")).get("/");

        assert_error(&resp, 502);
        assert!(origin.request_count() >= 1);
    })
}

#[test]
fn upstream_reset_is_502() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|_| Reply::reset());
        let gw = gateway_to(&origin);

        let resp = Client::connect(gw.addr("api")).get("/");

        assert_error(&resp, 502);
    })
}

#[test]
fn malformed_header_line_is_400_and_closes() {
    within(TEST_LIMIT, || {
        let (origin, gw) = rejecting_setup();
        assert_rejected_and_closed(
            &gw,
            &origin,
            b"GET / HTTP/1.1\r\nHost: gateway.test\r\nBad Header\r\n\r\n",
            400,
        );
    })
}

#[test]
fn garbage_request_line_is_400_and_closes() {
    within(TEST_LIMIT, || {
        let (origin, gw) = rejecting_setup();
        assert_rejected_and_closed(&gw, &origin, b"this is not http at all\r\n\r\n", 400);
    })
}

#[test]
fn content_length_with_transfer_encoding_is_400_and_closes() {
    within(TEST_LIMIT, || {
        let (origin, gw) = rejecting_setup();
        assert_rejected_and_closed(
            &gw,
            &origin,
            b"POST / HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        );
    })
}

#[test]
fn differing_content_lengths_are_400_and_close() {
    within(TEST_LIMIT, || {
        let (origin, gw) = rejecting_setup();
        assert_rejected_and_closed(
            &gw,
            &origin,
            b"POST / HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
        );
    })
}

#[test]
fn differing_content_lengths_in_one_header_are_400_and_close() {
    within(TEST_LIMIT, || {
        let (origin, gw) = rejecting_setup();
        assert_rejected_and_closed(
            &gw,
            &origin,
            b"POST / HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
            400,
        );
    })
}

#[test]
fn transfer_encoding_not_ending_in_chunked_is_400_and_closes() {
    within(TEST_LIMIT, || {
        let (origin, gw) = rejecting_setup();
        assert_rejected_and_closed(
            &gw,
            &origin,
            b"POST / HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: gzip\r\n\r\nabc",
            400,
        );
    })
}

#[test]
fn transfer_encoding_chunked_then_gzip_is_400_and_closes() {
    within(TEST_LIMIT, || {
        let (origin, gw) = rejecting_setup();
        assert_rejected_and_closed(
            &gw,
            &origin,
            b"POST / HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            400,
        );
    })
}

/// A GET whose head carries `count` headers of `size` value bytes each.
fn get_with_headers(count: usize, size: usize) -> Vec<u8> {
    let mut raw = String::from("GET /big-head HTTP/1.1\r\nHost: gateway.test\r\n");
    for i in 0..count {
        raw.push_str(&format!("X-Fill-{i}: {}\r\n", "a".repeat(size)));
    }
    raw.push_str("\r\n");
    raw.into_bytes()
}

#[test]
fn head_over_the_default_limit_is_431_and_closes() {
    within(TEST_LIMIT, || {
        let (origin, gw) = rejecting_setup();
        // 64 KiB against the default 32768.
        assert_rejected_and_closed(&gw, &origin, &get_with_headers(16, 4096), 431);
    })
}

#[test]
fn head_under_the_default_limit_is_forwarded_whole() {
    within(TEST_LIMIT, || {
        let (origin, gw) = rejecting_setup();

        // 24 KiB, under the default 32768.
        let resp = Client::connect(gw.addr("api")).request(&get_with_headers(8, 3072));

        assert_eq!(resp.status, 200, "{resp:?}");
        let req = origin.single_request();
        for i in 0..8 {
            assert_eq!(
                req.header(&format!("x-fill-{i}")).map(str::len),
                Some(3072),
                "header X-Fill-{i}"
            );
        }
    })
}

#[test]
fn configured_header_limit_is_enforced() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("fine");
        let config = documents(&[
            &simple_api(&origin.url()),
            &configuration("limits", "limits:\n  maxRequestHeaderBytes: 4096\n"),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        let small = Client::connect(gw.addr("api")).request(&get_with_headers(2, 1024));
        assert_eq!(
            small.status, 200,
            "2 KiB head under a 4096 limit: {small:?}"
        );

        let mut client = Client::connect(gw.addr("api"));
        let _ = client.send_lenient(&get_with_headers(8, 1024));
        assert_error(&client.read_response("GET"), 431);
        client.assert_closed();
        assert_eq!(origin.request_count(), 1);
    })
}

/// A gateway with `maxRequestBodyBytes: 1024` in front of an origin that reports body sizes.
fn body_limited_setup() -> (Origin, Gateway) {
    let origin = Origin::start(|req| Reply::ok(req.body.len().to_string()));
    let config = documents(&[
        &simple_api(&origin.url()),
        &configuration("limits", "limits:\n  maxRequestBodyBytes: 1024\n"),
    ]);
    let gw = Gateway::start(&[("api.yaml", &config)], &[]);
    (origin, gw)
}

fn post_with_length(len: usize) -> Vec<u8> {
    let mut raw =
        format!("POST /up HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: {len}\r\n\r\n")
            .into_bytes();
    raw.extend(std::iter::repeat_n(b'b', len));
    raw
}

#[test]
fn body_at_the_limit_is_forwarded() {
    within(TEST_LIMIT, || {
        let (origin, gw) = body_limited_setup();

        let resp = Client::connect(gw.addr("api")).request(&post_with_length(1024));

        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "1024");
        assert_eq!(origin.single_request().body.len(), 1024);
    })
}

#[test]
fn content_length_body_over_the_limit_is_413() {
    within(TEST_LIMIT, || {
        let (origin, gw) = body_limited_setup();
        let mut client = Client::connect(gw.addr("api"));

        let _ = client.send_lenient(&post_with_length(4096));

        assert_error(&client.read_response("POST"), 413);
        client.assert_closed();
        assert_eq!(origin.request_count(), 0);
    })
}

#[test]
fn chunked_body_over_the_limit_is_413() {
    within(TEST_LIMIT, || {
        let (_origin, gw) = body_limited_setup();
        let mut client = Client::connect(gw.addr("api"));

        let mut raw =
            b"POST /up HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        raw.extend_from_slice(&ringwall_tests::wire::encode_chunked(&[b'c'; 4096], &[512]));
        let _ = client.send_lenient(&raw);

        assert_error(&client.read_response("POST"), 413);
        client.assert_closed();
    })
}

// === Limits against hostile clients ===

/// A gateway in front of `origin` with the Configuration `spec` (YAML, unindented).
fn limited(origin: &Origin, spec: &str) -> Gateway {
    let config = documents(&[&simple_api(&origin.url()), &configuration("limits", spec)]);
    Gateway::start(&[("api.yaml", &config)], &["--workers", "1"])
}

#[test]
fn a_trickled_head_gets_408_after_request_header_seconds() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("fine");
        let gw = limited(&origin, "timeouts:\n  requestHeaderSeconds: 1\n");

        // Each byte comes well within the (default, 300 s) idle timeout, the whole head never.
        let mut client = Client::connect(gw.addr("api"));
        let started = Instant::now();
        client.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n");
        client
            .stream()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut answered = None;
        for _ in 0..40 {
            let _ = client.send_lenient(b"X-Drip: 1\r\n");
            if let Ok(resp) = client.try_read_response("GET") {
                answered = Some((started.elapsed(), resp));
                break;
            }
        }
        let (took, resp) = answered.expect("the gateway gave up on the head");
        assert_error(&resp, 408);
        client.assert_closed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "closed after {took:?}"
        );
        assert_eq!(origin.request_count(), 0);

        // An idle keep-alive connection is another matter: its wait is streamIdleSeconds.
        let mut idle = Client::connect(gw.addr("api"));
        assert_eq!(idle.get("/first").status, 200);
        std::thread::sleep(Duration::from_millis(1300));
        assert_eq!(idle.get("/after-idling").status, 200);
    })
}

#[test]
fn a_long_request_target_is_414_whole_or_not() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("fine");
        let gw = limited(&origin, "limits:\n  maxRequestUriBytes: 100\n");
        let fits = format!("/{}", "a".repeat(99));
        assert_eq!(Client::connect(gw.addr("api")).get(&fits).status, 200);

        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100));
        let mut client = Client::connect(gw.addr("api"));
        let _ = client.send_lenient(long.as_bytes());
        assert_error(&client.read_response("GET"), 414);
        client.assert_closed();

        // A request line still arriving is judged before it ends.
        let mut client = Client::connect(gw.addr("api"));
        let _ = client.send_lenient(format!("GET /{}", "b".repeat(200)).as_bytes());
        assert_error(&client.read_response("GET"), 414);
        client.assert_closed();
        assert_eq!(origin.request_count(), 1);
    })
}

#[test]
fn more_header_lines_than_allowed_is_431() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("fine");
        let gw = limited(&origin, "limits:\n  maxRequestHeaders: 5\n");
        // Host and four more: five lines.
        let five = Client::connect(gw.addr("api")).request(&get_with_headers(4, 8));
        assert_eq!(five.status, 200, "{five:?}");
        let mut client = Client::connect(gw.addr("api"));
        let _ = client.send_lenient(&get_with_headers(5, 8));
        assert_error(&client.read_response("GET"), 431);
        client.assert_closed();
        assert_eq!(origin.request_count(), 1);
    })
}

#[test]
fn at_max_connections_accepting_pauses_until_one_closes() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("fine");
        let gw = limited(&origin, "limits:\n  maxConnections: 2\n");
        let mut first = Client::connect(gw.addr("api"));
        let mut second = Client::connect(gw.addr("api"));
        assert_eq!(first.get("/1").status, 200);
        assert_eq!(second.get("/2").status, 200);

        // The kernel completes the handshake; the gateway does not take the connection.
        let mut third = Client::connect(gw.addr("api"));
        third.send(b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n");
        third
            .stream()
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let waited = third.try_read_response("GET");
        assert!(waited.is_err(), "served past the limit: {waited:?}");
        assert_eq!(origin.request_count(), 2);

        drop(first);
        third
            .stream()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        assert_eq!(third.read_response("GET").status, 200);
        assert_eq!(second.get("/2-again").status, 200);
        let paused = gw.metric_until("ringwall_accept_paused_total", &[], |v| v >= 1.0);
        assert!(paused >= 1.0);
    })
}
