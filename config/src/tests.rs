//! Whole loads: the FLEX-CONFIG examples, each kind, and every error the loader reports, with
//! the line it is reported at. DNS and the environment are faked so results do not depend on
//! the machine.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::*;

fn fake_env(name: &str) -> Option<String> {
    match name {
        "API_PASSWORD" => Some("s3cret".into()),
        "API_PREFIX" => Some("/v9".into()),
        _ => None,
    }
}

fn fake_dns(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    match host {
        "orders.internal" => Ok(vec![SocketAddr::from(([10, 0, 0, 7], port))]),
        _ => Err(io::Error::new(io::ErrorKind::NotFound, "name not known")),
    }
}

fn load(files: &[(&str, &str)]) -> Result<Snapshot, LoadErrors> {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|&(name, text)| (name.to_owned(), text.to_owned()))
        .collect();
    load_with(&files, &fake_env, &fake_dns)
}

fn ok(files: &[(&str, &str)]) -> Snapshot {
    match load(files) {
        Ok(snapshot) => snapshot,
        Err(e) => panic!("expected a valid load, got:\n{e}"),
    }
}

fn errors(files: &[(&str, &str)]) -> Vec<ConfigError> {
    match load(files) {
        Ok(_) => panic!("expected errors"),
        Err(LoadErrors(errors)) => errors,
    }
}

/// The only error of loading `text` as `t.yaml`.
fn error(text: &str) -> ConfigError {
    let errors = errors(&[("t.yaml", text)]);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    errors.into_iter().next().expect("one error")
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("`{needle}` not in text"))
}

fn no_headers(_: &str) -> Option<&'static str> {
    None
}

const HEADER: &str = "apiVersion: gateway.mulesoft.com/v1alpha1\n";

/// An ApiInstance on `address` with one inline catch-all service.
fn api(name: &str, address: &str) -> String {
    format!(
        "{HEADER}kind: ApiInstance\nmetadata:\n  name: {name}\nspec:\n  address: {address}\n  \
         services:\n    up:\n      address: http://127.0.0.1:9000\n"
    )
}

fn service(name: &str, address: &str) -> String {
    format!("{HEADER}kind: Service\nmetadata:\n  name: {name}\nspec:\n  address: {address}\n")
}

fn configuration(name: &str, spec: &str) -> String {
    format!("{HEADER}kind: Configuration\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

// === the FLEX-CONFIG.md example ===

const FLEX_API: &str = "\
apiVersion: gateway.mulesoft.com/v1alpha1
kind: ApiInstance
metadata:
  name: ingress-http
spec:
  address: http://0.0.0.0:8081
  services:
    upstream:
      address: http://127.0.0.1:9000
      routes:
        - rules:
            - path: /orders/.*
              methods: GET|POST
          config:
            destinationPath: /v2/
---
apiVersion: gateway.mulesoft.com/v1alpha1
kind: Service
metadata:
  name: inventory
spec:
  address: http://127.0.0.1:9100/
---
apiVersion: gateway.mulesoft.com/v1alpha1
kind: PolicyBinding
metadata:
  name: ingress-http-route
spec:
  targetRef:
    kind: ApiInstance
    name: ingress-http
  policyRef:
    name: route
  config:
    destinationRef:
      kind: Service
      name: inventory
";

const FLEX_RATE_LIMIT: &str = "\
apiVersion: gateway.mulesoft.com/v1alpha1
kind: PolicyBinding
metadata:
  name: ingress-http-limit
spec:
  targetRef:
    name: ingress-http
  policyRef:
    name: rate-limiting-flex
  order: 2
  config:
    rateLimits:
      - maximumRequests: 100
        timePeriodInMilliseconds: 60000
    keySelector: \"#[attributes.headers['x-client-id']]\"
    exposeHeaders: true
    clusterizable: true
";

const FLEX_CONFIGURATION: &str = "\
apiVersion: gateway.mulesoft.com/v1alpha1
kind: Configuration
metadata:
  name: shared-storage
spec:
  sharedStorage:
    redis:
      address: 127.0.0.1:6379
      DB: 0
  logging:
    outputs:
      - name: access-file
        type: file
        parameters:
          path: /var/log/ringwall
          file: access.log
    accessLogs:
      outputs: [access-file]
    runtimeLogs:
      logLevel: info
";

#[test]
fn flex_example_loads() {
    let snapshot = ok(&[("api.yaml", FLEX_API), ("config.yaml", FLEX_CONFIGURATION)]);
    assert_eq!(
        snapshot.summary.to_string(),
        "2 files: 1 ApiInstance, 1 Service, 1 PolicyBinding, 1 Configuration"
    );
    assert!(snapshot.warnings.is_empty(), "{:?}", snapshot.warnings);

    let [api] = &snapshot.apis[..] else {
        panic!("one ApiInstance expected");
    };
    assert_eq!(api.name, "ingress-http");
    assert_eq!(api.listen, SocketAddr::from(([0, 0, 0, 0], 8081)));
    assert_eq!(api.base_path, "");
    assert!(api.policies.is_empty());

    let [inline, bound] = &api.routes[..] else {
        panic!("two routes expected");
    };
    assert_eq!(inline.name, "upstream");
    assert_eq!(inline.path_prefix, "/v2/");
    assert_eq!(inline.upstream.name, "ingress-http/upstream");
    assert_eq!(inline.upstream.authority, "127.0.0.1:9000");
    assert!(inline.matches("GET", "/orders/1", None, no_headers));
    assert!(!inline.matches("PUT", "/orders/1", None, no_headers));
    assert_eq!(bound.name, "ingress-http-route");
    assert_eq!(bound.path_prefix, "/");
    assert_eq!(bound.upstream.name, "inventory");
    assert_eq!(bound.upstream.path, "");
    assert_eq!(bound.weight, None);
    assert!(bound.matches("PUT", "/anything", None, no_headers));

    assert_eq!(
        api.routes
            .iter()
            .find(|r| r.matches("PUT", "/orders/1", None, no_headers))
            .map(|r| r.name.as_str()),
        Some("ingress-http-route")
    );
    let names: Vec<&str> = snapshot.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["inventory", "ingress-http/upstream"]);

    let settings = &snapshot.settings;
    let Some(SharedStorage::Redis(redis)) = &settings.shared_storage else {
        panic!("redis expected");
    };
    assert_eq!((redis.address.as_str(), redis.db), ("127.0.0.1:6379", 0));
    assert_eq!(
        settings.logging.outputs,
        [LogOutput {
            name: "access-file".into(),
            kind: LogOutputKind::File(PathBuf::from("/var/log/ringwall/access.log")),
        }]
    );
    assert_eq!(settings.logging.access.outputs, ["access-file"]);
    assert_eq!(settings.logging.runtime.level, LogLevel::Info);
    assert_eq!(settings.timeouts, Timeouts::default());
    assert_eq!(settings.limits, Limits::default());
}

#[test]
fn flex_example_rate_limiting_is_handed_to_the_proxy() {
    let snapshot = ok(&[
        ("a.yaml", FLEX_API),
        ("b.yaml", FLEX_RATE_LIMIT),
        ("c.yaml", FLEX_CONFIGURATION),
    ]);
    let policy = &snapshot.apis[0].policies[0];
    assert_eq!(policy.name, "rate-limiting-flex");
    assert_eq!(policy.resource, "PolicyBinding/ingress-http-limit");
    assert_eq!(policy.config_path, "spec.config");
    assert_eq!(policy.file, "b.yaml");
    assert_eq!(policy.line, line_of(FLEX_RATE_LIMIT, "rate-limiting-flex"));
}

#[test]
fn every_known_policy_the_loader_does_not_interpret_reaches_the_proxy() {
    let interpreted = [
        "route",
        "route-weighted",
        "ip-allowlist-flex",
        "ip-blocklist-flex",
        "connection-rate-limit",
        "tls",
        "tls-outbound",
    ];
    for &name in POLICIES.iter().filter(|n| !interpreted.contains(n)) {
        let binding = format!(
            "{HEADER}kind: PolicyBinding\nmetadata:\n  name: b\nspec:\n  targetRef:\n    name: a\n  \
             policyRef:\n    name: {name}\n"
        );
        let snapshot = ok(&[
            ("a.yaml", &api("a", "http://127.0.0.1:0")),
            ("b.yaml", &binding),
        ]);
        let policies = &snapshot.apis[0].policies;
        assert_eq!(policies.len(), 1, "{name}");
        assert_eq!(policies[0].name, name);
    }
}

// === each kind ===

#[test]
fn an_api_instance_without_routes_is_valid_with_a_warning() {
    let text = format!("{HEADER}kind: ApiInstance\nmetadata:\n  name: bare\nspec:\n  address: http://localhost:0/api/\n");
    let snapshot = ok(&[("t.yaml", &text)]);
    let api = &snapshot.apis[0];
    assert_eq!(api.listen, SocketAddr::from(([127, 0, 0, 1], 0)));
    assert_eq!(api.base_path, "/api");
    assert!(api.routes.is_empty());
    assert_eq!(snapshot.warnings.len(), 1);
    assert_eq!(
        snapshot.warnings[0].to_string(),
        "t.yaml:4: ApiInstance/bare: no routes: every request to this ApiInstance will get a 404"
    );
}

#[test]
fn services_resolve_and_normalise_their_path() {
    let text = format!(
        "{}---\n{}",
        service("orders", "http://orders.internal:9000/api/"),
        api("a", "http://127.0.0.1:0")
    );
    let snapshot = ok(&[("t.yaml", &text)]);
    let orders = &snapshot.services[0];
    assert_eq!(orders.addrs, [SocketAddr::from(([10, 0, 0, 7], 9000))]);
    assert_eq!(
        (orders.authority.as_str(), orders.path.as_str()),
        ("orders.internal:9000", "/api")
    );
    let warning = &snapshot.warnings[0];
    assert_eq!(
        (warning.line, warning.message.as_str()),
        (4, "not used by any route")
    );
    let default_port = format!(
        "{}---\n{}",
        service("s", "http://127.0.0.1"),
        api("a", "http://127.0.0.1:0")
    );
    assert_eq!(
        ok(&[("t.yaml", &default_port)]).services[0].addrs[0].port(),
        80
    );
}

fn route_binding(name: &str, extra: &str, config: &str) -> String {
    format!(
        "{HEADER}kind: PolicyBinding\nmetadata:\n  name: {name}\nspec:\n  targetRef:\n    name: a\n  \
         policyRef:\n    name: route{extra}\n  config:\n{config}"
    )
}

#[test]
fn route_bindings_follow_inline_routes_by_order() {
    let files = [
        ("1.yaml", api("a", "http://127.0.0.1:0/base")),
        ("2.yaml", service("svc", "http://127.0.0.1:9100/api")),
        (
            "3.yaml",
            route_binding(
                "late",
                "\n  order: 60\n  rules:\n    - path: /late/.*",
                "    destinationRef:\n      name: svc\n",
            ),
        ),
        (
            "4.yaml",
            route_binding(
                "early",
                "-weighted\n  order: 10",
                "    destinationRef:\n      name: svc\n    destinationPath: /v2/\n    weight: 30\n",
            ),
        ),
        (
            "5.yaml",
            route_binding("default", "", "    destinationRef:\n      name: svc\n"),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let snapshot = ok(&files);
    let api = &snapshot.apis[0];
    let routes: Vec<(&str, &str, Option<u32>)> = api
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.path_prefix.as_str(), r.weight))
        .collect();
    assert_eq!(
        routes,
        [
            ("up", "/", None),
            ("early", "/api/v2/", Some(30)),
            ("default", "/api/", None),
            ("late", "/api/", None),
        ]
    );
    assert!(api.routes[3].matches("GET", "/late/x", None, no_headers));
    assert!(!api.routes[3].matches("GET", "/early", None, no_headers));
    let target = upstream_path(
        &api.routes[1].path_prefix,
        api.strip_base("/base/orders?x=1").unwrap_or("-"),
    )
    .concat();
    assert_eq!(target, "/api/v2/orders?x=1");
}

#[test]
fn inline_route_policies_and_env_substitution() {
    let text = format!(
        "{}---\n{HEADER}kind: ApiInstance\nmetadata:\n  name: a\nspec:\n  address: http://127.0.0.1:0\n  \
         policies:\n    - policyRef:\n        name: route\n      config:\n        destinationRef:\n          \
         name: svc\n        destinationPath: ${{API_PREFIX}}/x\n",
        service("svc", "http://127.0.0.1:1")
    );
    let snapshot = ok(&[("t.yaml", &text)]);
    let route = &snapshot.apis[0].routes[0];
    assert_eq!(route.name, "a/policies[0]");
    assert_eq!(route.path_prefix, "/v9/x");
}

#[test]
fn configuration_sections_parse_and_merge() {
    let timeouts = configuration(
        "timeouts",
        "  timeouts:\n    upstreamConnectSeconds: 0.5\n    upstreamResponseSeconds: 30\n    tlsHandshakeSeconds: 2\n    \
         requestHeaderSeconds: 4\n  limits:\n    maxRequestHeaderBytes: 1024\n    maxRequestBodyBytes: 1000000\n    \
         maxRequestHeaders: 20\n    maxRequestUriBytes: 512\n    maxConnections: 1000\n",
    );
    let storage = configuration(
        "storage",
        "  proxyProtocol:\n    enabled: true\n  sharedStorage:\n    sentinel:\n      addresses: [a:26379, b:26379]\n      \
         masterName: main\n      password: pw\n      DB: 3\n  logging:\n    outputs:\n      - name: out\n        type: stdout\n    \
         runtimeLogs:\n      logLevel: debug\n      outputs: [out]\n",
    );
    let snapshot = ok(&[
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
        ("b.yaml", &timeouts),
        ("c.yaml", &storage),
    ]);
    let settings = &snapshot.settings;
    assert_eq!(
        settings.timeouts.upstream_connect,
        Duration::from_millis(500)
    );
    assert_eq!(settings.timeouts.upstream_response, Duration::from_secs(30));
    assert_eq!(settings.timeouts.stream_idle, Duration::from_secs(300));
    assert_eq!(settings.timeouts.tls_handshake, Duration::from_secs(2));
    assert_eq!(settings.limits.max_header_bytes, 1024);
    assert_eq!(settings.limits.max_body_bytes, Some(1_000_000));
    assert_eq!(settings.timeouts.request_header, Duration::from_secs(4));
    assert_eq!(
        (settings.limits.max_headers, settings.limits.max_uri_bytes),
        (20, 512)
    );
    assert_eq!(settings.limits.max_connections, Some(1000));
    let defaults = Limits::default();
    assert_eq!(
        (
            defaults.max_headers,
            defaults.max_uri_bytes,
            defaults.max_connections
        ),
        (100, 8192, None)
    );
    assert!(settings.proxy_protocol);
    let Some(SharedStorage::Sentinel(sentinel)) = &settings.shared_storage else {
        panic!("sentinel expected");
    };
    assert_eq!(sentinel.addresses, ["a:26379", "b:26379"]);
    assert_eq!((sentinel.master_name.as_str(), sentinel.db), ("main", 3));
    assert_eq!(sentinel.password, Some(Secret("pw".into())));
    assert!(!format!("{sentinel:?}").contains("pw\""));
    assert_eq!(settings.logging.runtime.level, LogLevel::Debug);
    assert_eq!(settings.logging.runtime.outputs, ["out"]);
    assert_eq!(settings.logging.outputs[0].kind, LogOutputKind::Stdout);
}

#[test]
fn a_redis_cluster_is_redis_addresses() {
    let storage = configuration(
        "storage",
        "  sharedStorage:\n    redis:\n      addresses: [a:7000, b:7001]\n      password: pw\n      \
         tls:\n        trustedCA: /etc/ca.pem\n        certificate: {certFile: c.pem, keyFile: k.pem}\n",
    );
    let snapshot = ok(&[
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
        ("b.yaml", &storage),
    ]);
    assert!(snapshot.warnings.is_empty(), "{:?}", snapshot.warnings);
    let Some(SharedStorage::Cluster(cluster)) = &snapshot.settings.shared_storage else {
        panic!("cluster expected");
    };
    assert_eq!(cluster.addresses, ["a:7000", "b:7001"]);
    assert_eq!(cluster.password, Some(Secret("pw".into())));
    let tls = cluster.tls.as_ref().expect("tls");
    assert_eq!(tls.trusted_ca, Some(PathBuf::from("/etc/ca.pem")));
    assert_eq!(tls.key_file, Some(PathBuf::from("k.pem")));
    let json = serde_json::to_value(&snapshot).expect("serialises");
    assert_eq!(
        json["settings"]["sharedStorage"]["redis"]["addresses"],
        serde_json::json!(["a:7000", "b:7001"])
    );
}

#[test]
fn redis_cluster_errors() {
    let cases = [
        (
            "      addresses: [a:7000]\n      DB: 2\n",
            "DB: 2",
            "spec.sharedStorage.redis.DB",
            "a Redis Cluster has only DB 0",
        ),
        (
            "      addresses: []\n",
            "addresses",
            "spec.sharedStorage.redis.addresses",
            "expected at least one seed node address",
        ),
        (
            "      addresses: [a:7000, b]\n",
            "addresses",
            "spec.sharedStorage.redis.addresses[1]",
            "`b` is not a `host:port` address",
        ),
        (
            "      address: \"redis://:pw@a:6379\"\n",
            "address:",
            "spec.sharedStorage.redis.address",
            "expected `host:port`, not a URL (credentials go in `username` and `password`)",
        ),
        (
            "      addresses: [\"redis://:pw@a:7000\"]\n",
            "addresses",
            "spec.sharedStorage.redis.addresses[0]",
            "expected `host:port`, not a URL (credentials go in `username` and `password`)",
        ),
        (
            "      address: a:6379\n      addresses: [a:7000]\n",
            "redis:",
            "spec.sharedStorage.redis",
            "set either `address` or `addresses` (a Redis Cluster), not both",
        ),
        (
            "      DB: 1\n",
            "redis:",
            "spec.sharedStorage.redis",
            "expected `address` (or `addresses` for a Redis Cluster)",
        ),
        (
            "      addresses: [a:7000]\n      tls:\n        serverName: redis.internal\n",
            "tls:",
            "spec.sharedStorage.redis.tls.serverName",
            "a Redis Cluster's nodes are verified under the addresses they announce: \
             `serverName` cannot be set",
        ),
    ];
    for (redis, line, field, message) in cases {
        let config = configuration("s", &format!("  sharedStorage:\n    redis:\n{redis}"));
        let errors = errors_of(&config);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let e = &errors[0];
        assert_eq!(
            (e.line, e.field.as_deref(), e.message.as_str()),
            (line_of(&config, line), Some(field), message),
            "{redis}"
        );
    }
}

#[test]
fn redis_tls_settings_rustls_cannot_honour_are_warnings() {
    let storage = configuration(
        "storage",
        "  sharedStorage:\n    redis:\n      address: r:6380\n      tls:\n        minVersion: \"1.3\"\n        \
         cipherSuites: [TLS_AES_128_GCM_SHA256]\n",
    );
    let snapshot = ok(&[
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
        ("b.yaml", &storage),
    ]);
    let warnings: Vec<String> = snapshot
        .warnings
        .iter()
        .map(|w| w.message.clone())
        .collect();
    assert_eq!(
        warnings,
        [
            "not enforced: Ringwall's Redis client negotiates TLS 1.2 or 1.3",
            "not enforced: Ringwall's Redis client offers rustls's default suites",
        ]
    );
}

// === connection-level policies ===

/// A PolicyBinding of `policy` to the ApiInstance `target`; `body` is the rest of its spec,
/// indented by two spaces.
fn binding(name: &str, target: &str, policy: &str, body: &str) -> String {
    format!(
        "{HEADER}kind: PolicyBinding\nmetadata:\n  name: {name}\nspec:\n  targetRef:\n    name: {target}\n  \
         policyRef:\n    name: {policy}\n{body}"
    )
}

/// A binding of `policy` to `a` with `ips` listed one a line.
fn ip_binding(name: &str, policy: &str, ips: &[&str]) -> String {
    let list: String = ips.iter().map(|ip| format!("      - \"{ip}\"\n")).collect();
    binding(name, "a", policy, &format!("  config:\n    ips:\n{list}"))
}

fn net(s: &str) -> IpNet {
    s.parse().expect("net")
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().expect("ip")
}

/// The only error of loading ApiInstance `a` on port 0 and `policy` in the file `p.yaml`;
/// `policy`'s lines are numbered from 1.
fn policy_error(policy: &str) -> ConfigError {
    let errors = errors(&[
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
        ("p.yaml", policy),
    ]);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    let error = errors.into_iter().next().expect("one error");
    assert_eq!(error.file, "p.yaml");
    error
}

#[test]
fn ip_lists_become_the_connection_rules_of_the_listener() {
    let snapshot = ok(&[
        ("a.yaml", &api("a", "http://0.0.0.0:8081")),
        (
            "b.yaml",
            &ip_binding(
                "block-1",
                "ip-blocklist-flex",
                &["10.0.0.66", "2001:db8:bad::/48"],
            ),
        ),
        (
            "c.yaml",
            &ip_binding(
                "block-2",
                "ip-blocklist-flex",
                &["192.0.2.0/24", "10.0.0.66/32"],
            ),
        ),
        (
            "d.yaml",
            &ip_binding(
                "allow",
                "ip-allowlist-flex",
                &["10.0.0.0/8", "2001:db8::/32"],
            ),
        ),
    ]);
    assert!(snapshot.warnings.is_empty(), "{:?}", snapshot.warnings);
    let api = &snapshot.apis[0];
    assert!(
        api.policies.is_empty(),
        "connection-level policies are not per request"
    );
    let rules = &api.connection_rules;
    assert_eq!(
        rules.deny,
        ["10.0.0.66/32", "192.0.2.0/24", "2001:db8:bad::/48"].map(net),
        "the union of both blocklists"
    );
    assert_eq!(
        rules.allow,
        Some(vec![net("10.0.0.0/8"), net("2001:db8::/32")])
    );
    assert_eq!(rules.rate, None);
    assert_eq!(
        snapshot.listener_rules,
        [(SocketAddr::from(([0, 0, 0, 0], 8081)), rules.clone())]
    );

    assert!(rules.admits(ip("10.1.2.3")));
    assert!(!rules.admits(ip("10.0.0.66")));
    assert!(
        !rules.admits(ip("192.0.2.1")),
        "blocked, and not allowed either"
    );
    assert!(!rules.admits(ip("172.16.0.1")));
    assert!(rules.admits(ip("2001:db8::1")));
    assert!(!rules.admits(ip("2001:db8:bad::1")));
    assert!(rules.admits(ip("::ffff:10.9.9.9")));
}

#[test]
fn ip_expression_may_name_the_peer_address_and_inline_policies_count() {
    let text = format!(
        "{HEADER}kind: ApiInstance\nmetadata:\n  name: a\nspec:\n  address: http://[::1]:0\n  \
         policies:\n    - policyRef:\n        name: ip-allowlist-flex\n      config:\n        \
         ips: [\"::1\", 127.0.0.1]\n        ipExpression: \"#[attributes.remoteAddress]\"\n      \
         rules: []\n"
    );
    let snapshot = ok(&[("t.yaml", &text)]);
    let rules = &snapshot.apis[0].connection_rules;
    assert_eq!(rules.allow, Some(vec![net("127.0.0.1/32"), net("::1/128")]));
    assert!(rules.deny.is_empty());
    assert_eq!(
        snapshot.listener_rules[0].0,
        "[::1]:0".parse().expect("addr")
    );
}

#[test]
fn host_bits_are_cleared_with_a_warning() {
    let policy = ip_binding("b", "ip-blocklist-flex", &["10.0.0.1", "192.168.1.7/24"]);
    let snapshot = ok(&[
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
        ("p.yaml", &policy),
    ]);
    assert_eq!(
        snapshot.apis[0].connection_rules.deny,
        [net("10.0.0.1/32"), net("192.168.1.0/24")]
    );
    let [warning] = &snapshot.warnings[..] else {
        panic!("one warning expected: {:?}", snapshot.warnings);
    };
    assert_eq!(
        warning.to_string(),
        format!(
            "p.yaml:{}: PolicyBinding/b: spec.config.ips[1]: `192.168.1.7/24` has bits set past \
             its /24 prefix; it is read as the network `192.168.1.0/24`",
            line_of(&policy, "192.168.1.7/24")
        )
    );
}

#[test]
fn ip_list_errors_are_located() {
    let cases: [(String, &str, &str, &str); 8] = [
        (
            ip_binding("b", "ip-blocklist-flex", &["10.0.0.1", "10.0.0.300", "::1"]),
            "10.0.0.300",
            "spec.config.ips[1]",
            "`10.0.0.300` is not an IP address or CIDR; expected an address such as `192.168.1.7` \
             or `2001:db8::1`, or a network such as `192.168.1.0/24` or `2001:db8::/32`",
        ),
        (
            ip_binding("b", "ip-allowlist-flex", &["2001:db8::/129"]),
            "2001:db8::/129",
            "spec.config.ips[0]",
            "`2001:db8::/129`: the prefix length must be a number from 0 to 128 for IPv6",
        ),
        (
            ip_binding("b", "ip-allowlist-flex", &["192.168.2"]),
            "192.168.2",
            "spec.config.ips[0]",
            "`192.168.2` is a partial address; write the network as a CIDR, such as `192.168.2.0/24`",
        ),
        (
            binding("b", "a", "ip-blocklist-flex", "  config:\n    ips:\n      - 192.160\n"),
            "192.160",
            "spec.config.ips[0]",
            "expected an IP address or CIDR as a string, such as `10.0.0.1` or `10.0.0.0/8`, \
             found a number",
        ),
        (
            binding("b", "a", "ip-blocklist-flex", "  config:\n    ips: []\n"),
            "ips: []",
            "spec.config.ips",
            "must list at least one address or CIDR",
        ),
        (
            binding("b", "a", "ip-blocklist-flex", "  config:\n    ipExpression: \"#[attributes.remoteAddress]\"\n"),
            "config:",
            "spec.config.ips",
            "missing required field `ips`",
        ),
        (
            binding("b", "a", "ip-blocklist-flex", "  config:\n    ips: [10.0.0.1]\n    ip: 10.0.0.2\n"),
            "ip: 10.0.0.2",
            "spec.config.ip",
            "unknown field `ip` (did you mean `ips`?); accepted fields: `ips`, `ipExpression`",
        ),
        (
            binding("b", "a", "ip-blocklist-flex", "  config:\n    ips: 10.0.0.1\n"),
            "ips: 10.0.0.1",
            "spec.config.ips",
            "expected a sequence, found a string",
        ),
    ];
    for (policy, needle, field, message) in cases {
        let e = policy_error(&policy);
        assert_eq!(
            (e.line, e.field.as_deref(), e.message.as_str()),
            (line_of(&policy, needle), Some(field), message),
            "{policy}"
        );
    }
}

#[test]
fn ip_lists_that_need_the_request_are_per_request_policies() {
    let header = binding(
        "b",
        "a",
        "ip-blocklist-flex",
        "  config:\n    ips: [10.0.0.1]\n    ipExpression: \"#[attributes.headers['x-forwarded-for']]\"\n",
    );
    let rules = binding(
        "b",
        "a",
        "ip-allowlist-flex",
        "  rules:\n    - path: /admin/.*\n  config:\n    ips: [10.0.0.1]\n",
    );
    for policy in [header, rules] {
        let snapshot = ok(&[
            ("a.yaml", &api("a", "http://127.0.0.1:0")),
            ("b.yaml", &policy),
        ]);
        let a = &snapshot.apis[0];
        assert!(a.connection_rules.is_empty(), "{policy}");
        assert_eq!(a.policies.len(), 1, "{policy}");
    }

    let rate_rules = binding(
        "r",
        "a",
        "connection-rate-limit",
        "  rules:\n    - methods: GET\n  config:\n    connectionsPerSecond: 5\n",
    );
    let e = policy_error(&rate_rules);
    assert_eq!(
        (e.line, e.field.as_deref(), e.message.as_str()),
        (
            line_of(&rate_rules, "rules:"),
            Some("spec.rules"),
            "connection-rate-limit applies to whole connections and cannot be limited by `rules`"
        )
    );
}

#[test]
fn connection_policies_target_api_instances_only() {
    let policy = binding(
        "b",
        "s",
        "ip-blocklist-flex",
        "  config:\n    ips: [10.0.0.1]\n",
    )
    .replace("    name: s", "    kind: Service\n    name: s");
    let e = error(&format!(
        "{}---\n{policy}",
        service("s", "http://127.0.0.1:1")
    ));
    assert_eq!(e.field.as_deref(), Some("spec.targetRef"));
    assert_eq!(e.message, "`ip-blocklist-flex` must target an ApiInstance");
}

#[test]
fn connection_rate_limit_loads_with_defaults() {
    let rate = |config: &str| {
        let policy = binding(
            "r",
            "a",
            "connection-rate-limit",
            &format!("  config:\n{config}"),
        );
        let snapshot = ok(&[
            ("a.yaml", &api("a", "http://127.0.0.1:8081")),
            ("r.yaml", &policy),
        ]);
        assert!(snapshot.apis[0].policies.is_empty());
        assert_eq!(snapshot.listener_rules.len(), 1);
        snapshot.apis[0].connection_rules.rate
    };
    assert_eq!(
        rate("    connectionsPerSecond: 20\n"),
        Some(ConnectionRate {
            per_second: 20,
            burst: 20,
            key: RateKey::Source
        })
    );
    assert_eq!(
        rate("    connectionsPerSecond: 1\n    burst: 50\n    key: prefix\n"),
        Some(
            ConnectionRate::new(1)
                .with_burst(50)
                .with_key(RateKey::Prefix)
        )
    );
}

#[test]
fn connection_rate_limit_errors_are_located() {
    let cases: [(&str, &str, &str, &str); 6] = [
        ("    connectionsPerSecond: 0\n", ": 0", "spec.config.connectionsPerSecond", "must be between 1 and 4294967295, found 0"),
        ("    burst: 3\n", "config:", "spec.config.connectionsPerSecond", "missing required field `connectionsPerSecond`"),
        ("    connectionsPerSecond: 5\n    burst: -1\n", "burst", "spec.config.burst", "must be between 1 and 4294967295, found -1"),
        ("    connectionsPerSecond: 2.5\n", "2.5", "spec.config.connectionsPerSecond", "expected an integer, found a number"),
        (
            "    connectionsPerSecond: 5\n    key: subnet\n",
            "subnet",
            "spec.config.key",
            "unknown key `subnet`; expected `source` (one bucket per address) or `prefix` (one per IPv4 /24 or IPv6 /64)",
        ),
        (
            "    connectionsPerSecond: 5\n    period: 1\n",
            "period",
            "spec.config.period",
            "unknown field `period`; accepted fields: `connectionsPerSecond`, `burst`, `key`",
        ),
    ];
    for (config, needle, field, message) in cases {
        let policy = binding(
            "r",
            "a",
            "connection-rate-limit",
            &format!("  config:\n{config}"),
        );
        let e = policy_error(&policy);
        assert_eq!(
            (e.line, e.field.as_deref(), e.message.as_str()),
            (line_of(&policy, needle), Some(field), message),
            "{config}"
        );
    }
}

#[test]
fn a_second_rate_limit_or_allow_list_names_the_first() {
    let first = binding(
        "r1",
        "a",
        "connection-rate-limit",
        "  config:\n    connectionsPerSecond: 5\n",
    );
    let second = binding(
        "r2",
        "a",
        "connection-rate-limit",
        "  config:\n    connectionsPerSecond: 9\n",
    );
    let errors = errors(&[
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
        ("b.yaml", &first),
        ("c.yaml", &second),
    ]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].to_string(),
        format!(
            "c.yaml:{}: PolicyBinding/r2: spec.policyRef.name: ApiInstance/a already has \
             connection-rate-limit `r1` (b.yaml:{}); only one connection rate applies to a listener",
            line_of(&second, "connection-rate-limit"),
            line_of(&first, "connection-rate-limit"),
        )
    );

    // Each allow list filters on its own (as in Flex): two lists admit their intersection.
    let narrowed = ok(&[
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
        (
            "b.yaml",
            &ip_binding("al1", "ip-allowlist-flex", &["10.0.0.0/8"]),
        ),
        (
            "c.yaml",
            &ip_binding("al2", "ip-allowlist-flex", &["10.1.0.0/16", "192.0.2.0/24"]),
        ),
    ]);
    let rules = &narrowed.apis[0].connection_rules;
    assert!(rules.admits(ip("10.1.2.3")));
    assert!(!rules.admits(ip("10.2.0.1")) && !rules.admits(ip("192.0.2.1")));
    assert!(narrowed.warnings.is_empty(), "{:?}", narrowed.warnings);

    // Lists with nothing in common admit no one: allowed, but said.
    let snapshot = ok(&[
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
        (
            "b.yaml",
            &ip_binding("al1", "ip-allowlist-flex", &["10.0.0.0/8"]),
        ),
        (
            "c.yaml",
            &ip_binding("al2", "ip-allowlist-flex", &["192.0.2.0/24"]),
        ),
    ]);
    let rules = &snapshot.apis[0].connection_rules;
    assert!(!rules.admits(ip("10.1.1.1")) && !rules.admits(ip("192.0.2.1")));
    assert_eq!(snapshot.warnings.len(), 1, "{:?}", snapshot.warnings);
    assert_eq!(
        snapshot.warnings[0].message,
        "ApiInstance/a also has ip-allowlist-flex `al1` (b.yaml:9); each allow list filters on its \
         own, and these have no address in common, so no connection is admitted"
    );
}

#[test]
fn a_shared_listener_needs_the_same_connection_rules() {
    let block = |name: &str, target: &str| {
        binding(
            name,
            target,
            "ip-blocklist-flex",
            "  config:\n    ips: [203.0.113.0/24]\n",
        )
    };
    let errors = errors(&[
        ("a.yaml", &api("a", "http://0.0.0.0:8081/a")),
        ("b.yaml", &api("b", "http://0.0.0.0:8081/b")),
        ("c.yaml", &block("block-a", "a")),
    ]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].to_string(),
        "b.yaml:6: ApiInstance/b: spec.address: connection-level policies apply to the whole \
         listener 0.0.0.0:8081, which ApiInstance/b shares with ApiInstance/a (a.yaml:4) with \
         different ones; give b its own port or bind the same policies to both"
    );

    // The same policies, bound to both: one listener, one entry.
    let snapshot = ok(&[
        ("a.yaml", &api("a", "http://0.0.0.0:8081/a")),
        ("b.yaml", &api("b", "http://0.0.0.0:8081/b")),
        ("c.yaml", &api("c", "http://0.0.0.0:8082")),
        ("d.yaml", &block("block-a", "a")),
        ("e.yaml", &block("block-b", "b")),
    ]);
    let expected = ConnectionRules::default().with_deny([net("203.0.113.0/24")]);
    assert_eq!(
        snapshot.listener_rules,
        [(SocketAddr::from(([0, 0, 0, 0], 8081)), expected)]
    );
    assert!(snapshot.apis[2].connection_rules.is_empty());
}

#[test]
fn addresses_on_one_port_need_the_same_connection_rules() {
    let rate = binding(
        "r",
        "b",
        "connection-rate-limit",
        "  config:\n    connectionsPerSecond: 5\n",
    );
    let errors = errors(&[
        ("a.yaml", &api("a", "http://127.0.0.1:8081")),
        ("b.yaml", &api("b", "http://127.0.0.2:8081")),
        ("c.yaml", &rate),
    ]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].to_string(),
        "b.yaml:6: ApiInstance/b: spec.address: connection-level policies are enforced per port, \
         and 127.0.0.2:8081 shares port 8081 with 127.0.0.1:8081 of ApiInstance/a (a.yaml:4) \
         with different ones; give b another port or bind the same policies to both"
    );
}

#[test]
fn port_zero_listeners_have_rules_of_their_own() {
    let snapshot = ok(&[
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
        ("b.yaml", &api("b", "http://127.0.0.1:0")),
        ("c.yaml", &api("c", "http://127.0.0.1:0")),
        (
            "d.yaml",
            &binding(
                "r",
                "a",
                "connection-rate-limit",
                "  config:\n    connectionsPerSecond: 5\n",
            ),
        ),
        (
            "e.yaml",
            &ip_binding("x", "ip-blocklist-flex", &["10.0.0.1"]).replace("name: a", "name: c"),
        ),
    ]);
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    assert_eq!(
        snapshot.listener_rules,
        [
            (
                any_port,
                ConnectionRules::default().with_rate(ConnectionRate::new(5))
            ),
            (
                any_port,
                ConnectionRules::default().with_deny([net("10.0.0.1/32")])
            ),
        ]
    );
    assert!(snapshot.apis[1].connection_rules.is_empty());
}

// === errors, one at a time ===

#[test]
fn envelope_errors() {
    let wrong_version = api("a", "http://127.0.0.1:0").replace("v1alpha1", "v2");
    let e = error(&wrong_version);
    assert_eq!(
        e.to_string(),
        "t.yaml:1: ApiInstance/a: apiVersion: unsupported apiVersion `gateway.mulesoft.com/v2`; \
         expected `gateway.mulesoft.com/v1alpha1`"
    );

    let e = error(&format!(
        "{HEADER}kind: ApiInstanse\nmetadata:\n  name: a\nspec: {{}}\n"
    ));
    assert_eq!(
        (e.line, e.resource.as_deref(), e.field.as_deref()),
        (2, None, Some("kind"))
    );
    assert!(
        e.message
            .starts_with("unknown kind `ApiInstanse` (did you mean `ApiInstance`?)"),
        "{e}"
    );

    let e = error(&format!(
        "{HEADER}kind: Service\nmetadata:\n  labels: {{a: b}}\nspec: {{}}\n"
    ));
    assert_eq!(
        e.to_string(),
        "t.yaml:3: Service: metadata.name: missing required field `name`"
    );

    let e = error(&format!("{HEADER}kind: Service\nmetadata:\n  name: s\n"));
    assert_eq!(
        e.to_string(),
        "t.yaml:1: Service/s: spec: missing required field `spec`"
    );

    let e = error("- just\n- a list\n");
    assert_eq!(
        e.to_string(),
        "t.yaml:1: expected a mapping, found a sequence"
    );
}

#[test]
fn unknown_fields_are_named_with_the_accepted_ones() {
    let text = api("a", "http://127.0.0.1:0").replace("  services:", "  adress: x\n  services:");
    let e = error(&text);
    assert_eq!(e.line, line_of(&text, "adress"));
    assert_eq!(e.field.as_deref(), Some("spec.adress"));
    assert_eq!(
        e.message,
        "unknown field `adress` (did you mean `address`?); accepted fields: `address`, `services`, `policies`"
    );
}

#[test]
fn wrong_types_are_reported() {
    let text =
        format!("{HEADER}kind: Service\nmetadata:\n  name: s\nspec:\n  address:\n    - http://a\n");
    let e = error(&text);
    assert_eq!(
        e.to_string(),
        "t.yaml:6: Service/s: spec.address: expected a string, found a sequence"
    );
}

#[test]
fn duplicate_names_point_at_the_first() {
    let errors = errors(&[
        ("a.yaml", &service("s", "http://127.0.0.1:1")),
        (
            "b.yaml",
            &format!(
                "{}---\n{}",
                api("s", "http://127.0.0.1:0"),
                service("s", "http://127.0.0.1:2")
            ),
        ),
    ]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].to_string(),
        "b.yaml:14: Service/s: metadata.name: duplicate Service `s`; first defined at a.yaml:4"
    );
}

#[test]
fn listener_errors() {
    let e = error(&api("a", "https://0.0.0.0:8443"));
    assert_eq!(
        e.to_string(),
        "t.yaml:6: ApiInstance/a: spec.address: `https://` needs a `tls` policy (its certificate) \
         bound to this ApiInstance or to another one on 0.0.0.0:8443"
    );
    let e = error(&api("a", "http://gateway.local:80"));
    assert!(e.message.contains("must be an IP address"), "{e}");

    let same = errors(&[
        ("a.yaml", &api("a", "http://0.0.0.0:8081/api")),
        ("b.yaml", &api("b", "http://0.0.0.0:8081/api/")),
        ("c.yaml", &api("c", "http://0.0.0.0:8081/other")),
    ]);
    assert_eq!(same.len(), 1, "{same:#?}");
    assert_eq!(
        same[0].to_string(),
        "b.yaml:6: ApiInstance/b: spec.address: 0.0.0.0:8081 with base path `/api` is already served by \
         ApiInstance/a (a.yaml:4)"
    );

    let overlap = errors(&[
        ("a.yaml", &api("a", "http://0.0.0.0:8081")),
        ("b.yaml", &api("b", "http://127.0.0.1:8081/b")),
    ]);
    assert_eq!(overlap.len(), 1);
    assert!(overlap[0]
        .message
        .starts_with("127.0.0.1:8081 overlaps 0.0.0.0:8081 of ApiInstance/a"));

    // Port 0 gives each ApiInstance a port of its own: no clash even on one base path.
    let files = [
        ("a.yaml".to_string(), api("a", "http://127.0.0.1:0")),
        ("b.yaml".to_string(), api("b", "http://127.0.0.1:0")),
    ];
    assert!(crate::load_files(&files).is_ok());
}

#[test]
fn upstream_errors() {
    let text = format!(
        "{}---\n{}",
        service("s", "ws://127.0.0.1:443"),
        api("a", "http://127.0.0.1:0")
    );
    let e = error(&text);
    assert_eq!(
        e.to_string(),
        "t.yaml:6: Service/s: spec.address: unsupported scheme `ws`; expected `http://` or `https://`"
    );
    let text = format!(
        "{}---\n{}",
        service("s", "http://nowhere.example:80"),
        api("a", "http://127.0.0.1:0")
    );
    let e = error(&text);
    assert_eq!(
        e.message,
        "cannot resolve `nowhere.example`: name not known"
    );
}

#[test]
fn reference_errors() {
    let binding = route_binding("r", "", "    destinationRef:\n      name: missing\n");
    let e = error(&format!("{}---\n{binding}", api("a", "http://127.0.0.1:0")));
    assert_eq!(e.line, 10 + line_of(&binding, "missing"));
    assert_eq!(e.field.as_deref(), Some("spec.config.destinationRef.name"));
    assert_eq!(
        e.message,
        "destinationRef names no Service called `missing`"
    );

    let binding = route_binding("r", "", "    destinationRef:\n      name: s\n")
        .replace("name: a", "name: nope");
    let e = error(&format!(
        "{}---\n{binding}",
        service("s", "http://127.0.0.1:1")
    ));
    assert_eq!(e.line, 7 + line_of(&binding, "nope"));
    assert_eq!(e.to_string().split(": ").nth(1), Some("PolicyBinding/r"));
    assert_eq!(e.message, "targetRef names no ApiInstance called `nope`");
}

#[test]
fn unknown_policies_suggest_a_name() {
    let binding = route_binding("r", "", "    {}\n").replace("name: route", "name: cors");
    let e = error(&format!("{}---\n{binding}", api("a", "http://127.0.0.1:0")));
    assert_eq!(e.field.as_deref(), Some("spec.policyRef.name"));
    assert_eq!(
        e.message,
        "unknown policy `cors` (did you mean `cors-flex`?)"
    );
}

#[test]
fn bad_rule_regex_is_located() {
    let binding = route_binding(
        "r",
        "\n  rules:\n    - path: /a/(\n",
        "    destinationRef:\n      name: s\n",
    );
    let text = format!(
        "{}---\n{}---\n{binding}",
        api("a", "http://127.0.0.1:0"),
        service("s", "http://127.0.0.1:1")
    );
    let e = error(&text);
    assert_eq!(e.line, line_of(&text, "/a/("));
    assert_eq!(e.field.as_deref(), Some("spec.rules[0].path"));
    assert!(
        e.message.starts_with("invalid regular expression `/a/(`"),
        "{e}"
    );
}

#[test]
fn configuration_errors() {
    let first = configuration("one", "  timeouts:\n    streamIdleSeconds: 10\n");
    let second = configuration("two", "  timeouts:\n    streamIdleSeconds: -1\n");
    let errors = errors(&[
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
        ("b.yaml", &first),
        ("c.yaml", &second),
    ]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].to_string(),
        "c.yaml:6: Configuration/two: spec.timeouts: `timeouts` is already set by Configuration/one (b.yaml:6)"
    );

    let bad = configuration(
        "bad",
        "  timeouts:\n    streamIdleSeconds: -1\n  limits:\n    maxRequestHeaderBytes: 10\n    maxRequestHeaders: 129\n    \
         maxConnections: 0\n  logging:\n    \
         outputs:\n      - name: o\n        type: syslog\n    runtimeLogs:\n      logLevel: loud\n    accessLogs:\n      \
         outputs: [missing]\n",
    );
    let messages: Vec<(usize, String)> = errors_of(&bad)
        .into_iter()
        .map(|e| (e.line, e.message))
        .collect();
    assert_eq!(
        messages,
        [
            (
                line_of(&bad, "type: syslog"),
                "unknown output type `syslog`; expected `file` or `stdout`".into()
            ),
            (
                line_of(&bad, "loud"),
                "unknown log level `loud`; expected trace, debug, info, warn or error".into()
            ),
            (
                line_of(&bad, "[missing]"),
                "no output called `missing` in `logging.outputs`".into()
            ),
            (
                line_of(&bad, "-1"),
                "must be a non-negative number of seconds, found -1".into()
            ),
            (
                line_of(&bad, ": 10"),
                "must be between 1024 and 1048576, found 10".into()
            ),
            (
                line_of(&bad, ": 129"),
                "must be between 1 and 128, found 129".into()
            ),
            (
                line_of(&bad, "maxConnections"),
                "must be between 1 and 100000000, found 0".into()
            ),
        ]
    );
}

fn errors_of(config: &str) -> Vec<ConfigError> {
    errors(&[
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
        ("b.yaml", config),
    ])
}

#[test]
fn missing_environment_variables_are_errors() {
    let binding = route_binding("r", "", "    destinationRef:\n      name: $NO_SUCH_VAR\n");
    let text = format!(
        "{}---\n{}---\n{binding}",
        api("a", "http://127.0.0.1:0"),
        service("s", "http://127.0.0.1:1")
    );
    let e = error(&text);
    assert_eq!(e.line, line_of(&text, "NO_SUCH_VAR"));
    assert_eq!(e.message, "environment variable `NO_SUCH_VAR` is not set");
}

#[test]
fn every_error_of_a_load_is_reported() {
    let broken_api =
        api("a", "gopher://0.0.0.0:1").replace("  services:", "  extra: 1\n  services:");
    let errors = errors(&[
        ("a.yaml", &broken_api),
        ("b.yaml", "key: [unclosed\n"),
        ("c.yaml", &service("s", "ftp://x")),
        (
            "d.yaml",
            &route_binding("r", "", "    destinationRef:\n      name: zzz\n"),
        ),
    ]);
    let located: Vec<String> = errors
        .iter()
        .map(|e| format!("{}:{}", e.file, e.line))
        .collect();
    assert_eq!(
        located,
        ["a.yaml:7", "a.yaml:6", "b.yaml:2", "c.yaml:6", "d.yaml:12"],
        "{errors:#?}"
    );
}

#[test]
fn empty_input_has_no_resources() {
    let e = error("# nothing here\n");
    assert_eq!(
        e.to_string(),
        "no resources: the files hold no YAML documents"
    );
    assert_eq!(
        load(&[]).expect_err("empty").0[0].message,
        "no resources: no *.yaml or *.yml files"
    );
}

// === load_dir ===

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ringwall-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).expect("write");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn load_dir_reads_yaml_files_in_name_order() {
    let dir = TempDir::new("order");
    dir.write("b.yml", &api("b", "http://127.0.0.1:0/b"));
    dir.write("a.yaml", &api("a", "http://127.0.0.1:0/a"));
    dir.write("README.md", "not: [yaml");
    dir.write(".#a.yaml", "not: [yaml");
    std::fs::create_dir(dir.0.join("sub.yaml")).expect("subdir");
    let snapshot = load_dir(&dir.0).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = snapshot.apis.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(snapshot.summary.files, 2);

    dir.write("c.yaml", "kind: [\n");
    let e = load_dir(&dir.0).expect_err("syntax error").0;
    assert!(e[0].file.ends_with("c.yaml") && e[0].line == 2, "{e:?}");
}

#[test]
fn load_dir_without_resources_fails() {
    let dir = TempDir::new("empty");
    let e = load_dir(&dir.0).expect_err("empty dir").0;
    assert_eq!(e[0].message, "no resources: no *.yaml or *.yml files");
    assert_eq!(e[0].file, dir.0.display().to_string());
    let missing = load_dir(&dir.0.join("nope")).expect_err("missing dir").0;
    assert!(missing[0].message.starts_with("cannot read directory"));
}

#[test]
fn truncated_or_mangled_input_never_panics() {
    let connection = format!(
        "{}---\n{}",
        ip_binding("b", "ip-blocklist-flex", &["10.0.0.0/8", "2001:db8::1"]),
        binding(
            "r",
            "a",
            "connection-rate-limit",
            "  config:\n    connectionsPerSecond: 5\n    key: prefix\n"
        )
    );
    let whole =
        format!("{FLEX_API}---\n{FLEX_RATE_LIMIT}---\n{FLEX_CONFIGURATION}---\n{connection}");
    for end in (0..whole.len()).filter(|&i| whole.is_char_boundary(i)) {
        let _ = load(&[("t.yaml", &whole[..end])]);
    }
    for (from, to) in [
        (": ", ": [\n"),
        ("name", "nam"),
        ("  ", " "),
        ("-", "{"),
        (":", ": !!int x"),
    ] {
        let _ = load(&[("t.yaml", &whole.replacen(from, to, 3))]);
    }
}

// === the effective configuration as JSON (GET /config) ===

#[test]
fn a_snapshot_serialises_with_the_yaml_names_and_no_secrets() {
    let api = format!(
        "{HEADER}kind: ApiInstance\nmetadata:\n  name: shop\nspec:\n  address: http://127.0.0.1:8081/api\n  \
         services:\n    orders:\n      address: http://127.0.0.1:9000/v1\n      routes:\n        \
         - rules: [{{path: /orders/.*, methods: GET|POST}}]\n          config: {{destinationPath: /o}}\n"
    );
    let settings = configuration(
        "settings",
        "  timeouts:\n    upstreamConnectSeconds: 0.5\n  sharedStorage:\n    redis:\n      \
         address: redis:6379\n      password: $API_PASSWORD\n  logging:\n    outputs:\n      \
         - name: out\n        type: stdout\n",
    );
    let snapshot = ok(&[
        ("a.yaml", &api),
        ("b.yaml", &settings),
        (
            "c.yaml",
            &binding(
                "deny",
                "shop",
                "ip-blocklist-flex",
                "  config:\n    ips: [192.0.2.0/24]\n",
            ),
        ),
    ]);
    let json = serde_json::to_value(&snapshot).expect("serialises");
    let text = json.to_string();
    assert!(!text.contains("s3cret"), "{text}");

    let shop = &json["apis"][0];
    assert_eq!(shop["name"], "shop");
    assert_eq!(shop["listen"], "127.0.0.1:8081");
    assert_eq!(shop["basePath"], "/api");
    assert_eq!(
        shop["routes"][0],
        serde_json::json!({
            "name": "orders",
            "rules": [{"path": "/orders/.*", "methods": "GET|POST"}],
            "upstream": "shop/orders",
            "pathPrefix": "/v1/o",
            "weight": null,
        })
    );
    assert_eq!(
        shop["connectionRules"],
        serde_json::json!({"deny": ["192.0.2.0/24"], "allow": null, "rate": null})
    );
    assert_eq!(
        json["listenerRules"][0]["address"],
        serde_json::json!("127.0.0.1:8081")
    );
    assert_eq!(
        json["services"][0],
        serde_json::json!({
            "name": "shop/orders",
            "addresses": ["127.0.0.1:9000"],
            "authority": "127.0.0.1:9000",
            "path": "/v1",
            "policies": [],
        })
    );
    let s = &json["settings"];
    assert_eq!(s["timeouts"]["upstreamConnectSeconds"], 0.5);
    assert_eq!(s["timeouts"]["upstreamResponseSeconds"], 15.0);
    assert_eq!(s["limits"]["maxRequestBodyBytes"], serde_json::Value::Null);
    assert_eq!(
        s["sharedStorage"],
        serde_json::json!({"redis": {"address": "redis:6379", "username": null, "password": "***", "DB": 0, "tls": null}})
    );
    assert_eq!(
        s["logging"],
        serde_json::json!({
            "outputs": [{"name": "out", "type": "stdout"}],
            "runtimeLogs": {"logLevel": "info", "outputs": []},
            "accessLogs": {"outputs": []},
        })
    );
    assert_eq!(s["proxyProtocol"], false);
    assert_eq!(json["summary"]["apiInstances"], 1);
    assert_eq!(json["warnings"], serde_json::json!([]));
}

#[test]
fn policy_config_is_redacted_when_serialised() {
    let policy = Policy {
        name: "http-basic-authentication-flex".into(),
        binding: "basic".into(),
        order: 50,
        rules: Vec::new(),
        config: Node::new(
            1,
            Value::Map(vec![
                ("username".into(), Node::new(2, Value::Str("alice".into()))),
                ("password".into(), Node::new(3, Value::Str("s3cret".into()))),
            ]),
        ),
        file: "p.yaml".into(),
        line: 1,
        resource: "PolicyBinding/basic".into(),
        config_path: "spec.config".into(),
    };
    let json = serde_json::to_value(&policy).expect("serialises");
    assert_eq!(
        json["config"],
        serde_json::json!({"username": "alice", "password": "***"})
    );
    assert_eq!(json["binding"], "basic");
}

// === TLS ===

fn tls_binding(name: &str, target: &str) -> String {
    binding(
        name,
        target,
        "tls",
        "  config:\n    certificate: {key: k.pem, crt: c.pem}\n",
    )
}

fn outbound_binding(target: &str) -> String {
    binding(
        "out",
        target,
        "tls-outbound",
        "  config:\n    skipValidation: true\n",
    )
    .replace(
        &format!("    name: {target}\n  policyRef"),
        &format!("    kind: Service\n    name: {target}\n  policyRef"),
    )
}

#[test]
fn an_https_api_instance_takes_its_tls_policy_apart_from_the_per_request_ones() {
    let snapshot = ok(&[
        ("a.yaml", &api("a", "https://127.0.0.1:8443/api")),
        ("b.yaml", &tls_binding("a-tls", "a")),
    ]);
    let a = &snapshot.apis[0];
    assert!(a.https);
    assert!(a.policies.is_empty(), "{:?}", a.policies);
    let tls = a.tls.as_ref().expect("the tls policy");
    assert_eq!((tls.name.as_str(), tls.binding.as_str()), ("tls", "a-tls"));
    assert_eq!(tls.config_path, "spec.config");
    assert!(snapshot.warnings.is_empty(), "{:?}", snapshot.warnings);
}

#[test]
fn https_without_a_tls_policy_on_the_listener_is_an_error_at_the_address() {
    let text = api("a", "https://127.0.0.1:8443");
    let e = error(&text);
    assert_eq!(
        (e.line, e.field.as_deref()),
        (line_of(&text, "address: https"), Some("spec.address"))
    );
    assert!(e.message.contains("needs a `tls` policy"), "{}", e.message);
    // Port 0 gives each ApiInstance a port of its own: another one's certificate is no help.
    let errors = errors(&[
        ("a.yaml", &api("a", "https://127.0.0.1:0")),
        (
            "b.yaml",
            &api("b", "https://127.0.0.1:0").replace("  services:\n    up", "  services:\n    up2"),
        ),
        ("c.yaml", &tls_binding("b-tls", "b")),
    ]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].resource.as_deref(), Some("ApiInstance/a"));
}

#[test]
fn tls_applies_to_the_whole_listener_and_says_so_for_http_addresses() {
    let other = api("b", "http://127.0.0.1:8443/b");
    let snapshot = ok(&[
        ("a.yaml", &api("a", "https://127.0.0.1:8443/a")),
        ("b.yaml", &other),
        ("c.yaml", &tls_binding("a-tls", "a")),
    ]);
    let warning = snapshot
        .warnings
        .iter()
        .find(|w| w.resource.as_deref() == Some("ApiInstance/b"))
        .expect("a warning on b");
    assert_eq!(warning.line, line_of(&other, "address:"));
    assert!(
        warning
            .message
            .contains("served over TLS because of the `tls` policy of ApiInstance/a"),
        "{}",
        warning.message
    );
    // Another port is not concerned.
    let snapshot = ok(&[
        ("a.yaml", &api("a", "https://127.0.0.1:8443/a")),
        ("b.yaml", &api("b", "http://127.0.0.1:8080/b")),
        ("c.yaml", &tls_binding("a-tls", "a")),
    ]);
    assert!(snapshot.warnings.is_empty(), "{:?}", snapshot.warnings);
}

#[test]
fn tls_policy_errors() {
    let a = api("a", "https://127.0.0.1:8443");
    // Rules make no sense for a whole connection.
    let ruled = tls_binding("t", "a") + "  rules:\n    - path: /x\n";
    let e = error(&format!(
        "{}---\n{ruled}",
        api("a", "http://127.0.0.1:8443")
    ));
    assert_eq!(e.field.as_deref(), Some("spec.rules"));
    assert_eq!(
        e.message,
        "tls applies to whole connections and cannot have `rules`"
    );
    // One per ApiInstance.
    let errors = errors(&[
        ("a.yaml", &a),
        ("t.yaml", &tls_binding("t1", "a")),
        ("u.yaml", &tls_binding("t2", "a")),
    ]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0]
            .message
            .starts_with("ApiInstance `a` already has a `tls` policy, t1 (t.yaml:"),
        "{}",
        errors[0].message
    );
    // Inbound TLS on a Service, outbound TLS on an ApiInstance.
    let s = service("s", "https://127.0.0.1:9443");
    let wrong = tls_binding("t", "s").replace(
        "    name: s\n  policyRef",
        "    kind: Service\n    name: s\n  policyRef",
    );
    let e = error(&format!("{s}---\n{wrong}"));
    assert_eq!(e.message, "`tls` must target an ApiInstance");
    let wrong = binding("o", "a", "tls-outbound", "");
    let e = error(&format!("{a}---\n{}---\n{wrong}", tls_binding("t", "a")));
    assert_eq!(e.field.as_deref(), Some("spec.targetRef"));
    assert!(e.message.contains("must target a Service"), "{}", e.message);
    let inline = format!("{a}  policies:\n    - policyRef:\n        name: tls-outbound\n");
    let e = error(&format!("{inline}---\n{}", tls_binding("t", "a")));
    assert!(
        e.message.contains("must be bound to a Service"),
        "{}",
        e.message
    );
}

#[test]
fn tls_outbound_attaches_to_an_https_service() {
    let route = route_binding("r", "", "    destinationRef:\n      name: s\n");
    let snapshot = ok(&[
        ("s.yaml", &service("s", "https://orders.internal/v1")),
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
        ("r.yaml", &route),
        ("o.yaml", &outbound_binding("s")),
    ]);
    let s = &snapshot.services[0];
    assert!(s.https);
    assert_eq!(
        (s.host.as_str(), s.addrs[0].port()),
        ("orders.internal", 443)
    );
    assert_eq!(s.tls.as_ref().map(|p| p.binding.as_str()), Some("out"));
    assert!(s.policies.is_empty());
    let e = error(&format!(
        "{}---\n{}",
        service("s", "http://127.0.0.1:9000"),
        outbound_binding("s")
    ));
    assert_eq!(
        e.message,
        "Service `s` has an `http://` address: `tls-outbound` needs `https://`"
    );
    let errors = errors(&[
        ("s.yaml", &service("s", "https://127.0.0.1:9443")),
        ("o.yaml", &outbound_binding("s")),
        (
            "p.yaml",
            &outbound_binding("s").replace("name: out", "name: out2"),
        ),
    ]);
    assert!(
        errors.iter().any(|e| e.message.starts_with(
            "Service `s` already has a `tls-outbound` policy, PolicyBinding/out (o.yaml:"
        )),
        "{errors:#?}"
    );
}

#[test]
fn a_service_may_list_several_endpoints() {
    let text = format!(
        "{HEADER}kind: Service\nmetadata:\n  name: s\nspec:\n  addresses:\n    - http://127.0.0.1:9001/v1\n    - \
         http://orders.internal:9002/v1\n"
    );
    let snapshot = ok(&[
        ("s.yaml", &text),
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
    ]);
    let s = &snapshot.services[0];
    let ports: Vec<u16> = s.addrs.iter().map(SocketAddr::port).collect();
    assert_eq!(ports, [9001, 9002]);
    assert_eq!(
        (s.authority.as_str(), s.path.as_str()),
        ("127.0.0.1:9001", "/v1")
    );

    let weighted = text.replace(
        "http://orders.internal:9002/v1",
        "{address: 'http://orders.internal:9002/v1', weight: 3}",
    );
    let snapshot = ok(&[
        ("s.yaml", &weighted),
        ("a.yaml", &api("a", "http://127.0.0.1:0")),
    ]);
    assert_eq!(snapshot.services[0].weights, [1, 3]);
    let heavy = weighted.replace("weight: 3", "weight: 0");
    let e = error(&format!("{heavy}---\n{}", api("a", "http://127.0.0.1:0")));
    assert_eq!(e.field.as_deref(), Some("spec.addresses[1].weight"));

    let mixed = text.replace(
        "http://orders.internal:9002/v1",
        "https://127.0.0.1:9002/v1",
    );
    let e = error(&format!("{mixed}---\n{}", api("a", "http://127.0.0.1:0")));
    assert_eq!(e.field.as_deref(), Some("spec.addresses[1]"));
    assert_eq!(
        e.message,
        "every address must have the first one's scheme and path"
    );
    let both = text.replace(
        "  addresses:",
        "  address: http://127.0.0.1:1\n  addresses:",
    );
    let e = error(&format!("{both}---\n{}", api("a", "http://127.0.0.1:0")));
    assert_eq!(e.message, "give `address` or `addresses`, not both");
}

#[test]
fn load_balancing_is_read_and_checked() {
    let with = |lb: &str| {
        format!(
            "{HEADER}kind: Service\nmetadata:\n  name: s\nspec:\n  address: http://127.0.0.1:9001\n  \
             loadBalancing:\n{lb}---\n{}",
            api("a", "http://127.0.0.1:0")
        )
    };
    let balancing = |lb: &str| ok(&[("s.yaml", &with(lb))]).services[0].balancing.clone();
    assert_eq!(
        balancing("    algorithm: leastRequest\n"),
        Balancing::LeastRequest
    );
    assert_eq!(
        balancing("    algorithm: consistentHash\n    hashOn: header\n    hashHeader: X-User\n"),
        Balancing::ConsistentHash(HashOn::Header("x-user".into()))
    );
    assert_eq!(
        balancing("    algorithm: consistentHash\n    hashOn: remoteAddress\n"),
        Balancing::ConsistentHash(HashOn::RemoteAddress)
    );
    let e = error(&with("    algorithm: random\n"));
    assert_eq!(e.field.as_deref(), Some("spec.loadBalancing.algorithm"));
    assert!(
        e.message.starts_with("unknown algorithm `random`"),
        "{}",
        e.message
    );
    let e = error(&with("    algorithm: consistentHash\n"));
    assert_eq!(e.message, "missing required field `hashOn`");
}

#[test]
fn health_checks_are_read_with_their_defaults() {
    let with = |address: &str, check: &str| {
        format!(
            "{HEADER}kind: Service\nmetadata:\n  name: s\nspec:\n  address: {address}\n  \
             healthCheck:\n{check}---\n{}",
            api("a", "http://127.0.0.1:0")
        )
    };
    let snapshot = ok(&[(
        "s.yaml",
        &with(
            "http://127.0.0.1:9001",
            "    path: /healthz\n    intervalSeconds: 0.5\n",
        ),
    )]);
    let check = snapshot.services[0].health_check.clone().expect("a check");
    assert_eq!(
        (check.path.as_str(), check.interval, check.timeout),
        (
            "/healthz",
            Duration::from_millis(500),
            Duration::from_secs(1)
        )
    );
    assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (2, 3));
    let e = error(&with("http://127.0.0.1:9001", "    path: healthz\n"));
    assert_eq!(e.message, "`healthz` is not a path starting with `/`");
    let e = error(&with(
        "http://127.0.0.1:9001",
        "    path: /h\n    intervalSeconds: 0\n",
    ));
    assert_eq!(e.message, "must be at least 0.01 seconds, found 0");
}
