//! What do policies cost per request? The request and response phases of one ApiInstance's
//! chain, without IO, for no policy (the floor: parsing the head and the rules check), the
//! three policies users bind most (a rate limit, a header injection, JWT validation; and the
//! same without JWT, to separate the signature check) and every per-request policy Ringwall
//! enforces at once. The answer says whether a policy
//! belongs on the hot path as written and what a typical deployment adds to a request.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringwall::http::request::{self, MAX_HEADERS};
use ringwall::policy::{compile, HeaderLines, Overrides, Policies, RequestCx, ResponseCx, Stop};
use ringwall_config::Snapshot;

/// Signed with `SECRET` (HS256), `aud: ringwall`, expiring in 2100.
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
eyJzdWIiOiJiZW5jaCIsImF1ZCI6InJpbmd3YWxsIiwiZXhwIjo0MTAyNDQ0ODAwLCJjbGllbnRfaWQiOiJiZW5jaC1jbGllbnQifQ.\
nFuhe1j2rqOwqa8L1okByOU6eRMReYIoz6a44cNesS0";
const SECRET: &str = "bench-secret-0123456789abcdef-0123456789abcdef";

const API: &str = "apiVersion: gateway.mulesoft.com/v1alpha1
kind: ApiInstance
metadata: {name: a}
spec:
  address: http://127.0.0.1:0
  services:
    up: {address: 'http://127.0.0.1:9'}
  policies:
";

/// The limits never refuse (67M a second, 10M a second for spikes): what is measured is the
/// counting, not the 429.
const RATE_LIMIT: &str = "    - policyRef: {name: rate-limiting-flex}
      config:
        rateLimits: [{maximumRequests: 67108863, timePeriodInMilliseconds: 1000}]
        keySelector: \"#[attributes.headers['x-client-id']]\"
        exposeHeaders: true
";

const HEADER_INJECTION: &str = "    - policyRef: {name: header-injection-flex}
      config:
        inboundHeaders:
          - {key: x-gateway, value: ringwall}
          - {key: x-caller, value: \"#[attributes.headers['x-client-id']]\"}
        outboundHeaders: [{key: x-served-by, value: ringwall}]
";

fn jwt() -> String {
    format!(
        "    - policyRef: {{name: jwt-validation-flex}}
      config:
        signingMethod: hmac
        signingKeyLength: 256
        textKey: {SECRET}
        jwtOrigin: httpBearerAuthenticationHeader
        skipClientIdValidation: true
        validateAudClaim: true
        supportedAudiences: ringwall
        mandatoryExpClaim: true
"
    )
}

/// The rest of the per-request policies, on top of the typical three.
const OTHERS: &str = "    - policyRef: {name: cors-flex}
      config:
        originGroups:
          - origins: [https://app.example.com]
            allowedMethods:
              - {methodName: GET, allowed: true}
            headers: [x-client-id]
    - policyRef: {name: ip-allowlist-flex}
      config:
        ips: [203.0.113.0/24]
        ipExpression: \"#[(attributes.headers['x-forwarded-for'] splitBy ',')[-1]]\"
    - policyRef: {name: spike-control-flex}
      config: {maximumRequests: 1000000, timePeriodInMilliseconds: 100, delayTimeInMillis: 100, delayAttempts: 1, queuingLimit: 5}
    - policyRef: {name: client-id-enforcement}
      config:
        credentialsOriginHasHttpBasicAuthenticationHeader: customExpression
        clientIdExpression: \"#[attributes.headers['x-client-id']]\"
        clientSecretExpression: \"#[attributes.headers['x-client-secret']]\"
        clients: [{clientId: bench-client, clientSecret: bench-secret}]
    - policyRef: {name: header-removal-flex}
      config: {inboundHeaders: [x-client-secret], outboundHeaders: [server]}
    - policyRef: {name: response-timeout-flex}
      config: {timeout: 10}
    - policyRef: {name: message-logging-flex}
      config:
        loggingConfiguration:
          - itemName: audit
            itemData: {message: \"#[attributes.method ++ ' ' ++ attributes.requestPath]\", level: DEBUG}
";

fn request_text() -> String {
    format!(
        "GET /orders/12345?expand=items HTTP/1.1\r\nHost: api.example.com\r\n\
         Origin: https://app.example.com\r\nAuthorization: Bearer {TOKEN}\r\n\
         X-Client-Id: bench-client\r\nX-Client-Secret: bench-secret\r\n\
         X-Forwarded-For: 192.0.2.1, 203.0.113.9\r\nAccept: application/json\r\n\r\n"
    )
}

fn chain_of(policies: &str) -> (Arc<Snapshot>, Policies) {
    let yaml = if policies.is_empty() {
        API.replace("  policies:\n", "")
    } else {
        format!("{API}{policies}")
    };
    let snapshot = ringwall_config::load_files(&[("bench.yaml".into(), yaml)])
        .unwrap_or_else(|e| panic!("bench config: {e}"));
    let snapshot = Arc::new(snapshot);
    let compiled = compile(&snapshot, None, &Default::default())
        .unwrap_or_else(|e| panic!("bench policies: {e}"));
    (snapshot, compiled)
}

fn policy_chain(c: &mut Criterion) {
    let typical = format!("{RATE_LIMIT}{HEADER_INJECTION}{}", jwt());
    let all = format!("{typical}{OTHERS}");
    let raw = request_text();
    let response_headers = [
        httparse::Header {
            name: "Content-Type",
            value: b"application/json",
        },
        httparse::Header {
            name: "Server",
            value: b"origin",
        },
    ];
    let mut group = c.benchmark_group("policy_chain");
    // The typical three without JWT shows what the signature check costs on its own.
    let cheap = format!("{RATE_LIMIT}{HEADER_INJECTION}");
    for (name, policies) in [
        ("none", String::new()),
        ("rate_limit_and_headers", cheap),
        ("typical_3", typical),
        ("all", all),
    ] {
        let (snapshot, compiled) = chain_of(&policies);
        let api = &snapshot.apis[0];
        let chain = &compiled.chains[0];
        let (mut up, mut client) = (HeaderLines::default(), HeaderLines::default());
        group.bench_with_input(
            BenchmarkId::new("request_and_response", name),
            &raw,
            |b, raw| {
                b.iter(|| {
                    let mut headers = ringwall::http::header_slots::<MAX_HEADERS>();
                    let req = request::parse(raw.as_bytes(), &mut headers, 65536)
                        .ok()
                        .flatten()
                        .expect("complete request");
                    up.clear();
                    client.clear();
                    let mut overrides = Overrides::default();
                    let applied =
                        chain.applicable(api, req.method, req.path, req.host, |n| req.header(n));
                    let mut cx = RequestCx {
                        req: &req,
                        peer: "192.0.2.1:40000".parse().expect("addr"),
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
                        peer: "192.0.2.1:40000".parse().expect("addr"),
                        tls: None,
                        client_headers: &mut client,
                    };
                    chain.response(applied, usize::MAX, &mut cx);
                    std::hint::black_box((up.as_bytes().len(), client.as_bytes().len()))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, policy_chain);
criterion_main!(benches);
