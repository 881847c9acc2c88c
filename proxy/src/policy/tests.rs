//! The registry, the chain, and the policies that live in this directory without a test
//! module of their own, driven through `compile` as a reload would.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::http::request;

pub(crate) const HEADER: &str = "apiVersion: gateway.mulesoft.com/v1alpha1\n";

/// An ApiInstance `a` with one policy bound to it (`config` indented by four spaces), plus
/// `extra` bindings.
pub(crate) fn with_policy(name: &str, config: &str) -> String {
    format!(
        "{HEADER}kind: ApiInstance\nmetadata: {{name: a}}\nspec:\n  address: http://127.0.0.1:0\n  \
         services:\n    up: {{address: 'http://127.0.0.1:9'}}\n---\n{HEADER}kind: PolicyBinding\n\
         metadata: {{name: p}}\nspec:\n  targetRef: {{name: a}}\n  policyRef: {{name: {name}}}\n  \
         config:\n{config}"
    )
}

pub(crate) fn compiled(yaml: &str) -> Result<(Arc<Snapshot>, Policies), LoadErrors> {
    let snapshot = ringwall_config::load_files(&[("p.yaml".into(), yaml.into())])?;
    let snapshot = Arc::new(snapshot);
    let policies = compile(&snapshot, None, &Default::default())?;
    Ok((snapshot, policies))
}

/// The first error of a config that must not load, as `line: field: message`.
pub(crate) fn error_of(yaml: &str) -> String {
    let Err(errors) = compiled(yaml) else {
        panic!("loaded: {yaml}");
    };
    let e = &errors.0[0];
    format!(
        "{}: {}: {}",
        e.line,
        e.field.as_deref().unwrap_or(""),
        e.message
    )
}

/// What the request phase did with one raw request.
pub(crate) struct Outcome {
    pub verdict: Option<(u16, &'static str)>,
    pub answered: Option<u16>,
    pub upstream: String,
    pub client: String,
    pub overrides: Overrides,
    pub applied: u64,
}

pub(crate) fn run(policies: &Policies, snapshot: &Snapshot, raw: &[u8], peer: &str) -> Outcome {
    let mut headers = crate::http::header_slots::<{ request::MAX_HEADERS }>();
    let req = request::parse(raw, &mut headers, 65536)
        .expect("valid request")
        .expect("complete request");
    let api = &snapshot.apis[0];
    let chain = &policies.chains[0];
    let path = api.strip_base(req.path).unwrap_or(req.path);
    let applied = chain.applicable(api, req.method, path, req.host, |n| req.header(n));
    let (mut up, mut client, mut overrides) = (
        HeaderLines::default(),
        HeaderLines::default(),
        Overrides::default(),
    );
    let peer: SocketAddr = peer.parse().expect("peer");
    let mut cx = RequestCx {
        req: &req,
        peer,
        tls: None,
        attempt: 0,
        upstream_headers: &mut up,
        client_headers: &mut client,
        overrides: &mut overrides,
    };
    let (verdict, answered) = match chain.request(applied, 0, &mut cx) {
        Stop::Passed | Stop::At(_, Verdict::Continue) => (None, None),
        Stop::At(_, Verdict::Reject(status, why)) => (Some((status, why)), None),
        Stop::At(_, Verdict::Answer(status)) => (None, Some(status)),
        Stop::At(_, Verdict::Retry { .. }) => (Some((0, "retry")), None),
    };
    Outcome {
        verdict,
        answered,
        upstream: String::from_utf8_lossy(up.as_bytes()).into_owned(),
        client: String::from_utf8_lossy(client.as_bytes()).into_owned(),
        overrides,
        applied,
    }
}

const GET: &[u8] = b"GET /orders?id=7 HTTP/1.1\r\nHost: a\r\nX-Id: 42\r\nX-Forwarded-For: 203.0.113.7, 10.1.1.1\r\n\r\n";

#[test]
fn unenforced_policies_are_refused_at_load() {
    let yaml = with_policy("http-caching-flex", "    ttl: 60\n");
    assert_eq!(
        error_of(&yaml),
        "14: spec.policyRef.name: policy `http-caching-flex` is recognised but not enforced by \
         this version of Ringwall yet"
    );
}

#[test]
fn every_registered_policy_is_a_known_name_and_listed_once() {
    for (i, (name, _)) in REGISTRY.iter().enumerate() {
        assert!(ringwall_config::is_known_policy(name), "{name}");
        assert!(
            REGISTRY[i + 1..].iter().all(|(n, _)| n != name),
            "{name} twice"
        );
    }
}

#[test]
fn the_readme_status_table_matches_the_registry() {
    let readme = include_str!("../../../README.md");
    let table = readme
        .split_once("## Policy status")
        .map_or("", |(_, rest)| rest);
    // Enforced outside the per-request registry: by the loader, the kernel plane, TLS or
    // the upstream phase (the circuit breaker).
    let by_loader = [
        "route",
        "route-weighted",
        "connection-rate-limit",
        "tls",
        "tls-outbound",
        "circuit-breaker-flex",
    ];
    for &name in ringwall_config::POLICIES {
        let row = table
            .lines()
            .find(|line| line.starts_with("| ") && line.contains(&format!("`{name}`")));
        let Some(row) = row else {
            panic!("{name} is missing from the README's policy status table");
        };
        let enforced = by_loader.contains(&name) || REGISTRY.iter().any(|(n, _)| *n == name);
        assert_eq!(row.contains("| enforced"), enforced, "{name}: {row}");
    }
}

#[test]
fn header_injection_adds_upstream_and_client_headers_and_replaces_the_clients_own() {
    let yaml = with_policy(
        "header-injection-flex",
        "    inboundHeaders:\n      - {key: x-gateway, value: ringwall}\n      - {key: x-id, value: \"#[attributes.headers['x-id']]\"}\n      - {key: x-missing, value: \"#[attributes.headers['nope']]\"}\n      - {key: x-route, value: \"#[attributes.method ++ ' ' ++ attributes.requestPath]\"}\n    outboundHeaders:\n      - {key: x-served-by, value: ringwall}\n",
    );
    let (snapshot, policies) = compiled(&yaml).expect("valid");
    let out = run(&policies, &snapshot, GET, "192.0.2.1:5000");
    assert!(out.verdict.is_none() && out.answered.is_none());
    // Outbound headers wait for the response phase.
    assert_eq!(out.client, "");
    assert_eq!(
        out.upstream,
        "x-gateway: ringwall\r\nx-id: 42\r\nx-route: GET /orders\r\n"
    );
    let chain = &policies.chains[0];
    assert!(chain.strips_request_header(out.applied, "X-Id"));
    assert!(chain.strips_response_header(out.applied, "x-served-by"));
    assert!(!chain.strips_request_header(out.applied, "accept"));

    let mut client = HeaderLines::default();
    let headers = [httparse::Header {
        name: "Content-Type",
        value: b"text/plain",
    }];
    let mut cx = ResponseCx {
        status: 200,
        headers: &headers,
        peer: "192.0.2.1:5000".parse().unwrap(),
        tls: None,
        client_headers: &mut client,
    };
    chain.response(out.applied, chain.entries.len(), &mut cx);
    assert_eq!(client.as_bytes(), b"x-served-by: ringwall\r\n");
}

#[test]
fn header_policies_refuse_framing_headers_and_bad_values() {
    let yaml = with_policy(
        "header-injection-flex",
        "    inboundHeaders:\n      - {key: Content-Length, value: '0'}\n",
    );
    assert!(error_of(&yaml).ends_with(
        "spec.config.inboundHeaders[0].key: `Content-Length` is managed by the gateway and \
         cannot be changed here"
    ));
    let yaml = with_policy(
        "header-removal-flex",
        "    outboundHeaders: [transfer-encoding]\n",
    );
    assert!(error_of(&yaml).contains("`transfer-encoding` is managed by the gateway"));
    // The gateway writes X-Forwarded-* itself; a policy's copy would be a second value.
    for name in ["X-Forwarded-For", "x-forwarded-proto", "X-Forwarded-Host"] {
        let yaml = with_policy(
            "header-injection-flex",
            &format!("    inboundHeaders:\n      - {{key: {name}, value: x}}\n"),
        );
        assert!(
            error_of(&yaml).contains("is managed by the gateway"),
            "{name}"
        );
        let yaml = with_policy(
            "header-removal-flex",
            &format!("    inboundHeaders: [{name}]\n"),
        );
        assert!(
            error_of(&yaml).contains("is managed by the gateway"),
            "{name}"
        );
    }
    let yaml = with_policy(
        "header-injection-flex",
        "    inboundHeaders:\n      - {key: 'bad name', value: x}\n",
    );
    assert!(error_of(&yaml).contains("`bad name` is not a valid header name"));
    let yaml = with_policy(
        "header-injection-flex",
        "    outboundHeaders:\n      - {key: x, value: \"a\\r\\nb\"}\n",
    );
    assert!(error_of(&yaml).contains("cannot hold control characters"));
    let yaml = with_policy(
        "header-injection-flex",
        "    inboundHeaders:\n      - {key: x, value: \"#[payload]\"}\n",
    );
    assert!(error_of(&yaml).contains("unsupported expression `#[payload]`"));
}

#[test]
fn header_removal_strips_both_ways() {
    let yaml = with_policy(
        "header-removal-flex",
        "    inboundHeaders: [X-Id]\n    outboundHeaders: [server]\n",
    );
    let (snapshot, policies) = compiled(&yaml).expect("valid");
    let out = run(&policies, &snapshot, GET, "192.0.2.1:5000");
    let chain = &policies.chains[0];
    assert!(chain.strips_request_header(out.applied, "x-id"));
    assert!(chain.strips_response_header(out.applied, "Server"));
    assert!(!chain.strips_response_header(out.applied, "x-id"));
}

#[test]
fn ip_lists_read_the_header_hop_asked_for() {
    let first = with_policy(
        "ip-allowlist-flex",
        "    ips: [203.0.113.0/24]\n    ipExpression: \"#[attributes.headers['x-forwarded-for']]\"\n",
    );
    let (snapshot, policies) = compiled(&first).expect("valid");
    assert!(snapshot.apis[0].connection_rules.is_empty());
    assert!(run(&policies, &snapshot, GET, "10.9.9.9:1")
        .verdict
        .is_none());

    let last = first.replace(
        "#[attributes.headers['x-forwarded-for']]",
        "#[(attributes.headers['x-forwarded-for'] splitBy ',')[-1]]",
    );
    let (snapshot, policies) = compiled(&last).expect("valid");
    assert_eq!(
        run(&policies, &snapshot, GET, "10.9.9.9:1").verdict,
        Some((403, "IP address not allowed"))
    );
    // Without the header an allowlist refuses.
    let bare = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(
        run(&policies, &snapshot, bare, "203.0.113.1:1").verdict,
        Some((403, "IP address not allowed"))
    );

    let block = with_policy(
        "ip-blocklist-flex",
        "    ips: [10.1.1.1]\n    ipExpression: \"#[(attributes.headers['x-forwarded-for'] splitBy ',')[-1]]\"\n",
    );
    let (snapshot, policies) = compiled(&block).expect("valid");
    assert_eq!(
        run(&policies, &snapshot, GET, "192.0.2.1:1").verdict,
        Some((403, "IP address blocked"))
    );
    // Nothing to match: a blocklist lets it through.
    assert!(run(&policies, &snapshot, bare, "192.0.2.1:1")
        .verdict
        .is_none());
    // A second line appended by a proxy is the last hop, not the client's own line.
    let two_lines = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.9\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n";
    assert_eq!(
        run(&policies, &snapshot, two_lines, "192.0.2.1:1").verdict,
        Some((403, "IP address blocked"))
    );
    // A value that is no address cannot blind the blocklist.
    let binary = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: \x80\r\n\r\n";
    assert_eq!(
        run(&policies, &snapshot, binary, "192.0.2.1:1").verdict,
        Some((403, "IP address unreadable"))
    );
    let junk = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.1.1.1, nonsense\r\n\r\n";
    assert_eq!(
        run(&policies, &snapshot, junk, "192.0.2.1:1").verdict,
        Some((403, "IP address unreadable"))
    );
}

#[test]
fn ip_lists_with_rules_apply_to_matching_requests_only() {
    let yaml = format!(
        "{}  rules:\n    - path: /admin/.*\n",
        with_policy("ip-allowlist-flex", "    ips: [10.0.0.0/8]\n")
    );
    let (snapshot, policies) = compiled(&yaml).expect("valid");
    let admin = b"GET /admin/x HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(
        run(&policies, &snapshot, admin, "192.0.2.1:1").verdict,
        Some((403, "IP address not allowed"))
    );
    assert!(run(&policies, &snapshot, admin, "10.2.3.4:1")
        .verdict
        .is_none());
    assert!(run(&policies, &snapshot, GET, "192.0.2.1:1")
        .verdict
        .is_none());
}

#[test]
fn ip_expressions_must_name_one_attribute() {
    let yaml = with_policy(
        "ip-blocklist-flex",
        "    ips: [10.0.0.1]\n    ipExpression: \"#[attributes.headers['a'] ++ attributes.headers['b']]\"\n",
    );
    assert!(error_of(&yaml).ends_with("an ipExpression must name one attribute"));
}

#[test]
fn timeouts_override_the_configuration() {
    let yaml = with_policy("response-timeout-flex", "    timeout: 2.5\n");
    let (snapshot, policies) = compiled(&yaml).expect("valid");
    let out = run(&policies, &snapshot, GET, "192.0.2.1:1");
    assert_eq!(
        out.overrides.response_timeout,
        Some(std::time::Duration::from_millis(2500))
    );
    let yaml = with_policy("stream-idle-timeout-flex", "    timeout: 3\n");
    let (snapshot, policies) = compiled(&yaml).expect("valid");
    let out = run(&policies, &snapshot, GET, "192.0.2.1:1");
    assert_eq!(
        out.overrides.stream_idle,
        Some(std::time::Duration::from_secs(3))
    );
    // Flex's "Upstream Idle Timeout": the pooled connection's idle time, not the stream's.
    let yaml = with_policy("idle-timeout-flex", "    timeout: 4\n");
    let (snapshot, policies) = compiled(&yaml).expect("valid");
    let out = run(&policies, &snapshot, GET, "192.0.2.1:1");
    assert_eq!(
        out.overrides.upstream_idle,
        Some(std::time::Duration::from_secs(4))
    );
    assert_eq!(out.overrides.stream_idle, None);
    let yaml = with_policy("response-timeout-flex", "    timeout: 0\n");
    assert!(error_of(&yaml).contains("spec.config.timeout: must be more than 0"));
}

#[test]
fn message_logging_checks_its_items() {
    let ok = with_policy(
        "message-logging-flex",
        "    loggingConfiguration:\n      - itemName: in\n        itemData:\n          message: \"#[attributes.method ++ ' ' ++ attributes.requestPath]\"\n          level: INFO\n      - itemName: out\n        itemData:\n          message: \"#[attributes.statusCode]\"\n          firstSection: false\n          secondSection: true\n",
    );
    let (snapshot, policies) = compiled(&ok).expect("valid");
    assert!(run(&policies, &snapshot, GET, "192.0.2.1:1")
        .verdict
        .is_none());
    let bad_level = ok.replace("level: INFO", "level: LOUD");
    assert!(error_of(&bad_level).contains("unknown level `LOUD`"));
    let too_early = ok.replace("          firstSection: false\n", "");
    assert!(error_of(&too_early)
        .contains("a firstSection message is logged before there is a response"));
}

#[test]
fn an_unchanged_binding_keeps_its_instance_across_a_reload() {
    let yaml = with_policy("response-timeout-flex", "    timeout: 2\n");
    let (snapshot, first) = compiled(&yaml).expect("valid");
    let again = compile(&snapshot, Some(&first), &Default::default()).expect("valid");
    assert!(Arc::ptr_eq(
        &first.chains[0].entries[0].policy,
        &again.chains[0].entries[0].policy
    ));
    let changed = with_policy("response-timeout-flex", "    timeout: 3\n");
    let (snapshot, _) = compiled(&changed).expect("valid");
    let rebuilt = compile(&snapshot, Some(&first), &Default::default()).expect("valid");
    assert!(!Arc::ptr_eq(
        &first.chains[0].entries[0].policy,
        &rebuilt.chains[0].entries[0].policy
    ));
}

#[test]
fn header_lines_are_read_and_removed_in_place() {
    let mut lines = HeaderLines::default();
    lines.add("X-A", b"1");
    lines.add("x-ratelimit-remaining", b"57");
    lines.add("X-B", b"2");
    lines.add("X-RateLimit-Remaining", b"3");
    assert_eq!(lines.get("x-ratelimit-remaining"), Some(&b"57"[..]));
    assert!(lines.contains("x-b") && !lines.contains("x-"));
    lines.remove("x-ratelimit-remaining");
    assert_eq!(lines.as_bytes(), b"X-A: 1\r\nX-B: 2\r\n");
    lines.remove("x-a");
    lines.remove("x-b");
    assert!(lines.is_empty());
}

#[test]
fn two_limiting_policies_report_one_set_of_rate_limit_headers() {
    use super::rate_limit::Decision;
    let pass = |remaining| Decision {
        admitted: true,
        limit: 100,
        remaining,
        reset: 4000,
    };
    let refusal = Decision {
        admitted: false,
        limit: 5,
        remaining: 0,
        reset: 300,
    };
    let written = |decisions: &[Decision]| {
        let mut out = HeaderLines::default();
        for d in decisions {
            d.write(&mut out);
        }
        String::from_utf8_lossy(out.as_bytes()).into_owned()
    };
    let one_refusal =
        "x-ratelimit-limit: 5\r\nx-ratelimit-remaining: 0\r\nx-ratelimit-reset: 300\r\n\
                       retry-after: 1\r\n";
    assert_eq!(written(&[pass(57), refusal]), one_refusal);
    assert_eq!(written(&[refusal, pass(57)]), one_refusal);
    let fewest =
        "x-ratelimit-limit: 100\r\nx-ratelimit-remaining: 10\r\nx-ratelimit-reset: 4000\r\n";
    assert_eq!(written(&[pass(57), pass(10)]), fewest);
    assert_eq!(written(&[pass(10), pass(57)]), fewest);
}
