//! The request and response phases of a warm policy chain allocate nothing: a counting
//! global allocator (`counting`) watches a chain of every per-request policy
//! whose common path must stay allocation-free. JWT validation is left out: decoding a token
//! allocates by nature.

use std::sync::Arc;

use ringwall::http::request;
use ringwall::policy::{compile, HeaderLines, Overrides, RequestCx, ResponseCx, Stop};

mod counting;

/// The policies under watch, bound to one ApiInstance.
const CONFIG: &str = "apiVersion: gateway.mulesoft.com/v1alpha1
kind: ApiInstance
metadata: {name: a}
spec:
  address: http://127.0.0.1:0
  services:
    up: {address: 'http://127.0.0.1:9'}
  policies:
    - policyRef: {name: header-injection-flex}
      config:
        inboundHeaders:
          - {key: x-gateway, value: ringwall}
          - {key: x-caller, value: \"#[attributes.headers['x-user'] ++ '@' ++ attributes.remoteAddress]\"}
        outboundHeaders:
          - {key: x-status, value: \"#[attributes.statusCode]\"}
    - policyRef: {name: header-removal-flex}
      config: {inboundHeaders: [x-secret], outboundHeaders: [server]}
    - policyRef: {name: ip-allowlist-flex}
      config:
        ips: [203.0.113.0/24, 10.0.0.0/8]
        ipExpression: \"#[(attributes.headers['x-forwarded-for'] splitBy ',')[-1]]\"
    - policyRef: {name: response-timeout-flex}
      config: {timeout: 5}
      rules: [{path: /orders/.*, methods: GET}]
    - policyRef: {name: cors-flex}
      config:
        publicResource: false
        originGroups:
          - origins: [https://app.example.com]
            exposedHeaders: [x-status]
    - policyRef: {name: http-basic-authentication-flex}
      config: {username: ada, password: lovelace}
    - policyRef: {name: rate-limiting-flex}
      config:
        rateLimits:
          - {maximumRequests: 67108863, timePeriodInMilliseconds: 1000}
          - {maximumRequests: 67108863, timePeriodInMilliseconds: 60000}
        keySelector: \"#[attributes.headers['x-client-id'] ++ attributes.remoteAddress]\"
        exposeHeaders: true
    - policyRef: {name: spike-control-flex}
      config: {maximumRequests: 1000000, timePeriodInMilliseconds: 100, exposeHeaders: true}
    - policyRef: {name: client-id-enforcement}
      config:
        clientIdExpression: \"#[attributes.headers['x-client-id']]\"
        clientSecretExpression: \"#[attributes.headers['x-client-secret']]\"
        clients: [{clientId: app-1, clientSecret: s3cret}]
";

const REQUEST: &[u8] = b"GET /orders/7?x=1 HTTP/1.1\r\nHost: a\r\nX-User: ada\r\n\
    X-Secret: s\r\nX-Forwarded-For: 192.0.2.1, 203.0.113.9\r\n\
    Origin: https://app.example.com\r\nAuthorization: Basic YWRhOmxvdmVsYWNl\r\n\
    X-Client-Id: app-1\r\nX-Client-Secret: s3cret\r\n\r\n";

#[test]
fn a_warm_chain_allocates_nothing_per_request() {
    let snapshot =
        ringwall_config::load_files(&[("a.yaml".into(), CONFIG.into())]).expect("valid config");
    let snapshot = Arc::new(snapshot);
    let policies = compile(&snapshot, None, &Default::default()).expect("valid policies");
    let api = &snapshot.apis[0];
    let chain = &policies.chains[0];
    let (mut up, mut client) = (HeaderLines::default(), HeaderLines::default());
    let response_headers = [httparse::Header {
        name: "Server",
        value: b"origin",
    }];

    let mut exchange = || {
        let mut headers = ringwall::http::header_slots::<{ request::MAX_HEADERS }>();
        let req = request::parse(REQUEST, &mut headers, 65536)
            .expect("valid")
            .expect("complete");
        up.clear();
        client.clear();
        let mut overrides = Overrides::default();
        let applied = chain.applicable(api, req.method, req.path, req.host, |n| req.header(n));
        let mut cx = RequestCx {
            req: &req,
            peer: "192.0.2.1:4000".parse().expect("addr"),
            tls: None,
            attempt: 0,
            upstream_headers: &mut up,
            client_headers: &mut client,
            overrides: &mut overrides,
        };
        assert!(matches!(chain.request(applied, 0, &mut cx), Stop::Passed));
        let mut cx = ResponseCx {
            status: 200,
            headers: &response_headers,
            peer: "192.0.2.1:4000".parse().expect("addr"),
            tls: None,
            client_headers: &mut client,
        };
        chain.response(applied, usize::MAX, &mut cx);
        assert!(chain.strips_request_header(applied, "x-secret"));
        (applied, overrides)
    };

    // Warm-up: the header buffers grow to their working size once.
    let (applied, overrides) = exchange();
    assert_eq!(applied.count_ones(), 9);
    assert!(overrides.response_timeout.is_some());
    let before = counting::allocations();
    for _ in 0..1000 {
        exchange();
    }
    let allocated = counting::allocations() - before;
    assert_eq!(
        allocated, 0,
        "{allocated} allocations in 1000 warm exchanges"
    );
    assert_eq!(
        String::from_utf8_lossy(up.as_bytes()),
        "x-gateway: ringwall\r\nx-caller: ada@192.0.2.1\r\n"
    );
    let client = String::from_utf8_lossy(client.as_bytes());
    assert!(client.contains("x-status: 200\r\n"), "{client}");
    assert!(
        client
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example.com"),
        "{client}"
    );
}
