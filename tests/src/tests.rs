//! The harness tested on itself: the client talking straight to an origin, no gateway, so a
//! failing end-to-end test can be trusted to point at the gateway.

use std::time::Duration;

use crate::wire::encode_chunked;
use crate::yaml::*;
use crate::*;

#[test]
fn client_and_origin_agree_on_big_chunked_bodies_both_ways() {
    within(TEST_LIMIT, || {
        let mut rng = Rng::new(7);
        let data = rng.bytes(3 << 20);
        let sizes = rng.chunk_sizes(50);
        let served = data.clone();
        let origin = Origin::start(move |req| {
            if req.method == "GET" {
                Reply::new(200).chunked(served.clone(), sizes.clone())
            } else {
                Reply::ok(format!("{} {:016x}", req.body.len(), fnv1a(&req.body)))
            }
        });
        let mut client = Client::connect(origin.addr());

        let down = client.get("/");
        assert_eq!(down.header("transfer-encoding"), Some("chunked"));
        assert_same_bytes(&down.body, &data, "download");

        let mut raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        raw.extend_from_slice(&encode_chunked(&data, &rng.chunk_sizes(40)));
        let up = client.request(&raw);
        assert_eq!(up.text(), format!("{} {:016x}", data.len(), fnv1a(&data)));
        let req = &origin.requests()[1];
        assert!(req.chunked);
        assert_same_bytes(&req.body, &data, "upload");
        assert_eq!(origin.connections(), 1);
    })
}

#[test]
fn origin_answers_pipelined_requests_and_head_without_body() {
    within(TEST_LIMIT, || {
        let origin = Origin::echo_path();
        let mut client = Client::connect(origin.addr());
        client.send(b"HEAD /h HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");

        let head = client.read_response("HEAD");
        assert_eq!(head.header("content-length"), Some("2"));
        assert!(head.body.is_empty());
        assert_eq!(client.read_response("GET").text(), "/a");
        assert_eq!(client.read_response("GET").text(), "/b");
    })
}

#[test]
fn origin_sends_100_continue_before_reading_the_body() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|req| Reply::ok(req.body.clone()));
        let mut client = Client::connect(origin.addr());
        client.send(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(client.read_response("PUT").status, 100);
        client.send(b"abc");
        assert_eq!(client.read_final_response("PUT").text(), "abc");
    })
}

#[test]
fn close_detection_tells_closed_from_open() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|req| match req.path.as_str() {
            "/close" => Reply::close(),
            "/reset" => Reply::reset(),
            _ => Reply::ok("x").header("Connection", "close"),
        });
        for path in ["/close", "/reset", "/bye"] {
            let mut client = Client::connect(origin.addr());
            client.send(crate::client::get(path).as_bytes());
            if path == "/bye" {
                assert_eq!(client.read_response("GET").text(), "x");
            }
            assert!(client.closes_within(Duration::from_secs(5)), "{path}");
        }
        let keeper = Origin::ok("y");
        let mut kept = Client::connect(keeper.addr());
        assert_eq!(kept.get("/").text(), "y");
        assert!(!kept.closes_within(Duration::from_millis(100)));
    })
}

#[test]
fn http10_origin_closes_unless_keep_alive() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("z");
        let mut client = Client::connect(origin.addr());
        assert_eq!(client.request(b"GET / HTTP/1.0\r\n\r\n").text(), "z");
        assert!(client.closes_within(Duration::from_secs(5)));
    })
}

#[test]
fn closed_port_refuses() {
    let port = closed_port();
    assert!(Client::try_connect(port.addr()).is_err());
}

#[test]
fn yaml_builders_write_the_flex_shapes() {
    let api = api_instance(
        "api",
        "http://127.0.0.1:0/api",
        &[InlineService::new(
            "up",
            "http://127.0.0.1:9000",
            vec![Route::all()
                .rule(Rule::path("/items/.*").methods("GET|POST"))
                .destination("/v2/")],
        )],
    );
    assert_eq!(
        api,
        "\
apiVersion: gateway.mulesoft.com/v1alpha1
kind: ApiInstance
metadata:
  name: api
spec:
  address: http://127.0.0.1:0/api
  services:
    up:
      address: http://127.0.0.1:9000
      routes:
        - config:
            destinationPath: /v2/
          rules:
            - path: '/items/.*'
              methods: 'GET|POST'
"
    );
    let binding = route_binding("b", "api", "svc", Some("/x/"), &[Rule::path("/a/.*")]);
    assert_eq!(
        binding,
        "\
apiVersion: gateway.mulesoft.com/v1alpha1
kind: PolicyBinding
metadata:
  name: b
spec:
  targetRef:
    kind: ApiInstance
    name: api
  policyRef:
    name: route
  config:
    destinationRef:
      kind: Service
      name: svc
    destinationPath: /x/
  rules:
    - path: '/a/.*'
"
    );
    assert_eq!(
        configuration("c", "timeouts:\n  upstreamResponseSeconds: 1\n"),
        "apiVersion: gateway.mulesoft.com/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  timeouts:\n    upstreamResponseSeconds: 1\n"
    );
}

#[test]
fn within_reports_a_hung_body() {
    let res = std::panic::catch_unwind(|| {
        within(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(2));
        })
    });
    assert!(res.is_err());
}

#[test]
fn net_lab_connects_client_addresses_to_the_gateway_host_only() {
    use crate::netns::{connect_from, NetLab, CLIENT_IPS, GATEWAY_IP};
    use std::net::TcpListener;
    let lab = NetLab::new();
    let listener = lab.on_gateway(|| TcpListener::bind((GATEWAY_IP, 0)).expect("bind in the lab"));
    let addr = listener.local_addr().expect("addr");
    let peers = lab.on_client(move || {
        CLIENT_IPS
            .iter()
            .map(|&ip| connect_from(ip, addr, Duration::from_secs(2)).expect("connect"))
            .collect::<Vec<_>>()
    });
    let mut seen: Vec<_> = (0..peers.len())
        .map(|_| listener.accept().expect("accept").1.ip())
        .collect();
    seen.sort();
    let mut want: Vec<std::net::IpAddr> = CLIENT_IPS.iter().map(|&ip| ip.into()).collect();
    want.sort();
    assert_eq!(seen, want);
    // The lab's addresses do not exist in this (the test's own) namespace.
    assert!(TcpListener::bind((GATEWAY_IP, 0)).is_err());
}

#[test]
fn metric_reads_a_series_by_its_labels_in_any_order() {
    let text = "# TYPE x counter\nx{side=\"client\",reason=\"timeout\"} 2\n\
                x{reason=\"closed\",side=\"client\"} 3\nx{side=\"client\"} 7\ny 1.5\n\
                z{path=\"a\\\"b,c\"} 4\n";
    assert_eq!(
        metric(text, "x", &[("reason", "closed"), ("side", "client")]),
        Some(3.0)
    );
    assert_eq!(
        metric(text, "x", &[("side", "client"), ("reason", "timeout")]),
        Some(2.0)
    );
    assert_eq!(metric(text, "x", &[("side", "client")]), Some(7.0));
    assert_eq!(metric(text, "x", &[("side", "upstream")]), None);
    assert_eq!(metric(text, "y", &[]), Some(1.5));
    assert_eq!(metric(text, "z", &[("path", "a\"b,c")]), Some(4.0));
}

mod tls {
    //! The TLS client against the TLS origin, no gateway in between: what the gateway's TLS
    //! tests rely on the harness to see (certificates, versions, resumption, client
    //! certificates) is seen.

    use super::*;
    use crate::tls::*;

    #[test]
    fn client_and_origin_negotiate_and_carry_big_bodies() {
        within(TEST_LIMIT, || {
            let pki = Pki::new("harness CA");
            let cert = pki.leaf("origin", &["origin.test"], false);
            let origin = TlsOrigin::start(&cert, None, |req| Reply::ok(req.body.clone()));
            let client = TlsClient::new(&pki, "origin.test");

            let mut conn = client.client(origin.addr());
            assert_eq!(conn.served_certificate(), cert.der());
            assert_eq!(conn.alpn().as_deref(), Some("http/1.1"));
            assert_eq!(conn.version(), "1.3");
            let body = Rng::new(11).bytes(1 << 20);
            let mut raw = format!(
                "POST / HTTP/1.1\r\nHost: origin.test\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            raw.extend_from_slice(&body);
            assert_same_bytes(&conn.request(&raw).body, &body, "echo over TLS");

            let old = client.clone().only("1.2").client(origin.addr());
            assert_eq!(old.version(), "1.2");
            // The origin records a handshake on its own thread, after the client has seen it
            // complete: wait for the record, not for time.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while origin.negotiated().len() < 2 && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
            let seen = origin.negotiated();
            assert_eq!(seen.len(), 2, "{seen:?}");
            assert_eq!(seen[0].sni.as_deref(), Some("origin.test"));
            assert_eq!(seen[0].alpn.as_deref(), Some("http/1.1"));
            assert_eq!((seen[0].version, seen[1].version), ("1.3", "1.2"));
            assert!(!seen[0].resumed && !seen[1].resumed, "{seen:?}");
        })
    }

    #[test]
    fn the_origin_tells_a_resumed_session_from_a_full_one() {
        within(TEST_LIMIT, || {
            let pki = Pki::new("harness CA");
            let cert = pki.leaf("origin", &["origin.test"], false);
            let origin = TlsOrigin::start(&cert, None, |_| Reply::ok("hi"));
            for version in ["1.2", "1.3"] {
                let client = TlsClient::new(&pki, "origin.test").only(version);
                let config = client.config();
                for _ in 0..2 {
                    let mut conn = client
                        .connect_with(config.clone(), origin.addr())
                        .expect("tls");
                    // TLS 1.3 tickets come after the handshake: a response reads them in.
                    assert_eq!(conn.get_from("origin.test", "/").status, 200);
                }
            }
            let resumed: Vec<bool> = origin.negotiated().iter().map(|n| n.resumed).collect();
            assert_eq!(resumed, [false, true, false, true]);
        })
    }

    #[test]
    fn an_origin_requiring_a_client_certificate_records_it_or_refuses() {
        within(TEST_LIMIT, || {
            let pki = Pki::new("harness CA");
            let cert = pki.leaf("origin", &["origin.test"], false);
            let alice = pki.leaf("alice", &[], true);
            let origin = TlsOrigin::start(&cert, Some(&pki), |_| Reply::ok("hi"));
            let client = TlsClient::new(&pki, "origin.test");

            let resp = client.clone().identity(&alice).get(origin.addr(), "/");
            assert_eq!(resp.expect("with a certificate").status, 200);
            let err = client
                .get(origin.addr(), "/")
                .expect_err("without a certificate");
            assert_eq!(
                alert(&err),
                Some(rustls::AlertDescription::CertificateRequired),
                "{err}"
            );
            let seen = origin.handshakes();
            assert_eq!(seen.len(), 2, "{seen:?}");
            let first = seen[0].outcome.as_ref().expect("first handshake");
            assert_eq!(first.client_certificate.as_ref(), Some(&alice.der()));
            assert!(seen[1].outcome.is_err(), "{seen:?}");
            assert_eq!(origin.request_count(), 1);
        })
    }

    #[test]
    fn a_partial_client_hello_is_a_tls_record() {
        let hello = client_hello("a.test");
        // Handshake record, TLS 1.0 compatibility version, length that covers the rest.
        assert_eq!(hello[0], 0x16);
        let len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
        assert_eq!(hello.len(), 5 + len);
    }
}
