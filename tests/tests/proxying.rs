//! Forwarding: what the origin sees of a client's request, what the client sees of the
//! origin's response, and how client connections are kept, pipelined and closed.

use ringwall_tests::wire::header_list;
use ringwall_tests::*;

#[test]
fn get_is_proxied_with_status_headers_and_body() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|_| Reply::ok("hello from origin").header("X-Origin", "yes"));
        let gw = gateway_to(&origin);

        let resp = Client::connect(gw.addr("api")).get("/hello?name=x");

        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "hello from origin");
        assert_eq!(resp.header("x-origin"), Some("yes"));
        let req = origin.single_request();
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/hello?name=x");
        assert!(req.body.is_empty());
    })
}

#[test]
fn origin_error_statuses_are_passed_through() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|_| Reply::new(418).body("short and stout"));
        let gw = gateway_to(&origin);

        let resp = Client::connect(gw.addr("api")).get("/teapot");

        assert_eq!(resp.status, 418, "{resp:?}");
        assert_eq!(resp.text(), "short and stout");
        assert_eq!(origin.request_count(), 1);
    })
}

#[test]
fn host_is_rewritten_and_forwarding_headers_are_added() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("ok");
        let gw = gateway_to(&origin);

        let resp = Client::connect(gw.addr("api")).request(
            b"GET /where HTTP/1.1\r\nHost: client.example:8443\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n",
        );

        assert_eq!(resp.status, 200, "{resp:?}");
        let req = origin.single_request();
        let upstream_host = origin.addr().to_string();
        assert_eq!(req.header_all("host"), [upstream_host.as_str()]);
        assert_eq!(
            header_list(&req.headers, "x-forwarded-for", false),
            ["203.0.113.7", "127.0.0.1"],
            "the peer is appended to the client's X-Forwarded-For"
        );
        assert_eq!(req.header_all("x-forwarded-proto"), ["http"]);
        assert_eq!(req.header_all("x-forwarded-host"), ["client.example:8443"]);
    })
}

#[test]
fn x_forwarded_for_is_created_when_absent() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("ok");
        let gw = gateway_to(&origin);

        let resp = Client::connect(gw.addr("api")).get("/");

        assert_eq!(resp.status, 200, "{resp:?}");
        let req = origin.single_request();
        assert_eq!(
            header_list(&req.headers, "x-forwarded-for", false),
            ["127.0.0.1"]
        );
        assert_eq!(req.header_all("x-forwarded-host"), ["gateway.test"]);
    })
}

#[test]
fn hop_by_hop_request_headers_do_not_reach_the_origin() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("ok");
        let gw = gateway_to(&origin);

        let resp = Client::connect(gw.addr("api")).request(
            b"GET /hop HTTP/1.1\r\n\
              Host: gateway.test\r\n\
              Connection: keep-alive, X-Secret-Hop\r\n\
              X-Secret-Hop: 1\r\n\
              Keep-Alive: timeout=5\r\n\
              Proxy-Connection: keep-alive\r\n\
              TE: trailers\r\n\
              Trailer: X-Checksum\r\n\
              Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
              X-End-To-End: kept\r\n\
              Accept: text/plain\r\n\
              User-Agent: ringwall-tests\r\n\
              \r\n",
        );

        assert_eq!(resp.status, 200, "{resp:?}");
        let req = origin.single_request();
        for hop in [
            "x-secret-hop",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "proxy-authorization",
            "upgrade",
        ] {
            assert!(
                !req.has_header(hop),
                "the origin got hop-by-hop header {hop}: {:?}",
                req.headers
            );
        }
        // The gateway may speak for its own upstream connection, never for the client's.
        let connection = header_list(&req.headers, "connection", true);
        assert!(
            !connection.contains(&"x-secret-hop".to_string()),
            "Connection forwarded: {connection:?}"
        );
        assert_eq!(req.header("x-end-to-end"), Some("kept"));
        assert_eq!(req.header("accept"), Some("text/plain"));
        assert_eq!(req.header("user-agent"), Some("ringwall-tests"));
    })
}

#[test]
fn hop_by_hop_response_headers_do_not_reach_the_client() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|_| {
            Reply::ok("ok")
                .header("Connection", "X-Origin-Hop")
                .header("X-Origin-Hop", "1")
                .header("X-Kept", "yes")
        });
        let gw = gateway_to(&origin);

        let resp = Client::connect(gw.addr("api")).get("/");

        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.header("x-origin-hop"), None, "{:?}", resp.headers);
        let connection = header_list(&resp.headers, "connection", true);
        assert!(
            !connection.contains(&"x-origin-hop".to_string()),
            "Connection forwarded: {connection:?}"
        );
        assert_eq!(resp.header("x-kept"), Some("yes"));
    })
}

#[test]
fn keep_alive_reuses_the_client_and_the_upstream_connection() {
    within(TEST_LIMIT, || {
        let origin = Origin::echo_path();
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        for i in 0..20 {
            let path = format!("/keep/{i}");
            let resp = client.get(&path);
            assert_eq!(resp.status, 200, "request {i}: {resp:?}");
            assert_eq!(resp.text(), path);
        }

        assert_eq!(origin.request_count(), 20);
        // One client connection lives on one worker, whose pool keeps one upstream connection.
        assert_eq!(
            origin.connections(),
            1,
            "the origin saw a new connection per request"
        );
    })
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|req| {
            Reply::ok(format!(
                "{} {} {}",
                req.method,
                req.path,
                String::from_utf8_lossy(&req.body)
            ))
        });
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        // GETs and POSTs with bodies alternate, all in one write.
        let mut batch = String::new();
        for i in 0..10 {
            if i % 2 == 0 {
                batch.push_str(&format!(
                    "GET /p/{i} HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
                ));
            } else {
                let body = format!("body-{i}");
                batch.push_str(&format!(
                    "POST /p/{i} HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
            }
        }
        client.send(batch.as_bytes());

        for i in 0..10 {
            let method = if i % 2 == 0 { "GET" } else { "POST" };
            let resp = client.read_final_response(method);
            assert_eq!(resp.status, 200, "response {i}: {resp:?}");
            let body = if i % 2 == 0 {
                String::new()
            } else {
                format!("body-{i}")
            };
            assert_eq!(resp.text(), format!("{method} /p/{i} {body}"));
        }
    })
}

#[test]
fn connection_close_from_the_client_closes_after_the_response() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("bye");
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        let resp =
            client.request(b"GET / HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n");

        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "bye");
        client.assert_closed();
    })
}

#[test]
fn http10_request_is_answered_then_closed() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("old school");
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        let resp = client.request(b"GET /old HTTP/1.0\r\nHost: gateway.test\r\n\r\n");

        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "old school");
        client.assert_closed();
        assert_eq!(origin.single_request().path, "/old");
    })
}

#[test]
fn http10_keep_alive_request_keeps_the_connection() {
    within(TEST_LIMIT, || {
        let origin = Origin::echo_path();
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        for path in ["/one", "/two"] {
            let resp = client.request(
                format!(
                    "GET {path} HTTP/1.0\r\nHost: gateway.test\r\nConnection: keep-alive\r\n\r\n"
                )
                .as_bytes(),
            );
            assert_eq!(resp.status, 200, "{resp:?}");
            assert_eq!(resp.text(), path);
            // An HTTP/1.0 client reads to close unless told the connection is kept.
            assert!(
                header_list(&resp.headers, "connection", true).contains(&"keep-alive".into()),
                "no `Connection: keep-alive` for an HTTP/1.0 keep-alive client: {:?}",
                resp.headers
            );
        }
    })
}

#[test]
fn http10_client_never_gets_a_chunked_response() {
    within(TEST_LIMIT, || {
        let body = Rng::new(10).bytes(100_000);
        let sent = body.clone();
        let origin = Origin::start(move |_| Reply::new(200).chunked(sent.clone(), vec![1000, 7]));
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        let resp = client.request(b"GET /chunks HTTP/1.0\r\nHost: gateway.test\r\n\r\n");

        assert_eq!(resp.status, 200);
        assert!(
            resp.header("transfer-encoding").is_none(),
            "HTTP/1.0 has no chunked coding: {:?}",
            resp.headers
        );
        assert_same_bytes(&resp.body, &body, "body to an HTTP/1.0 client");
    })
}

#[test]
fn head_response_has_no_body_although_the_origin_declares_a_length() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|req| Reply::ok(format!("body of {}", req.path)));
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        let head = client.request(b"HEAD /h HTTP/1.1\r\nHost: gateway.test\r\n\r\n");
        assert_eq!(head.status, 200, "{head:?}");
        assert!(head.body.is_empty());
        // A stray body after the HEAD response would be parsed as the next response's head.
        let get = client.get("/g");
        assert_eq!(get.status, 200, "{get:?}");
        assert_eq!(get.text(), "body of /g");
        let methods: Vec<_> = origin.requests().into_iter().map(|r| r.method).collect();
        assert_eq!(methods, ["HEAD", "GET"]);
    })
}

#[test]
fn head_response_has_no_body_although_the_origin_declares_chunked() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|req| {
            Reply::new(200).chunked(format!("chunks of {}", req.path).into_bytes(), vec![3])
        });
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        let head = client.request(b"HEAD /h HTTP/1.1\r\nHost: gateway.test\r\n\r\n");
        assert_eq!(head.status, 200, "{head:?}");
        let get = client.get("/g");
        assert_eq!(get.status, 200, "{get:?}");
        assert_eq!(get.text(), "chunks of /g");
    })
}

#[test]
fn http10_keep_alive_client_is_told_the_connection_stays_after_a_gateway_answer() {
    within(TEST_LIMIT, || {
        let origin = Origin::echo_path();
        let config = ringwall_tests::yaml::api_to("http://127.0.0.1:0/api", &origin.url(), "/");
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let mut client = Client::connect(gw.addr("api"));

        // A 404 the gateway writes itself, then a forwarded request on the same connection.
        let missed = client.request(
            b"GET /api-not HTTP/1.0\r\nHost: gateway.test\r\nConnection: keep-alive\r\n\r\n",
        );
        assert_eq!(missed.status, 404, "{missed:?}");
        assert!(
            header_list(&missed.headers, "connection", true).contains(&"keep-alive".into()),
            "no `Connection: keep-alive` on the gateway's own answer: {:?}",
            missed.headers
        );
        let resp = client.request(
            b"GET /api/two HTTP/1.0\r\nHost: gateway.test\r\nConnection: keep-alive\r\n\r\n",
        );
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "/two");
    })
}
