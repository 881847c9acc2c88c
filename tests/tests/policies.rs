//! The per-request policy chain through the binary: header injection and removal both ways,
//! IP lists on `X-Forwarded-For`, a response timeout shorter than the Configuration's,
//! message logging, and how refusals are logged, counted and validated.

use std::time::{Duration, Instant};

use ringwall_tests::yaml::*;
use ringwall_tests::*;

/// The ApiInstance `api` in front of `origin`, with `bindings` added.
fn files(origin: &Origin, bindings: &[String]) -> String {
    let mut docs = vec![simple_api(&origin.url())];
    docs.extend(bindings.iter().cloned());
    let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
    documents(&docs)
}

fn get(gw: &Gateway, path: &str, headers: &str) -> Response {
    Client::connect(gw.addr("api"))
        .request(format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\n{headers}\r\n").as_bytes())
}

#[test]
fn headers_are_injected_and_removed_both_ways() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|_| {
            Reply::ok("hi")
                .header("Server", "origin/1.0")
                .header("X-Served-By", "origin")
        });
        let inject = policy_binding(
            "inject",
            "api",
            "header-injection-flex",
            None,
            "inboundHeaders:\n  - {key: x-gateway, value: ringwall}\n  - {key: x-caller, value: \"#[attributes.headers['x-user'] ++ '@' ++ attributes.method]\"}\noutboundHeaders:\n  - {key: x-served-by, value: ringwall}\n  - {key: x-status, value: \"#[attributes.statusCode]\"}\n",
            &[],
        );
        let remove = policy_binding(
            "remove",
            "api",
            "header-removal-flex",
            None,
            "inboundHeaders: [x-secret]\noutboundHeaders: [server]\n",
            &[],
        );
        let gw = Gateway::start(&[("api.yaml", &files(&origin, &[inject, remove]))], &[]);

        let resp = get(
            &gw,
            "/orders",
            "X-User: ada\r\nX-Secret: hunter2\r\nX-Gateway: forged\r\n",
        );

        assert_eq!(resp.status, 200, "{resp:?}");
        let seen = origin.single_request();
        assert_eq!(seen.header_all("x-gateway"), ["ringwall"]);
        assert_eq!(seen.header("x-caller"), Some("ada@GET"));
        assert!(!seen.has_header("x-secret"), "{seen:?}");
        assert_eq!(resp.header_all("x-served-by"), ["ringwall"]);
        assert_eq!(resp.header("x-status"), Some("200"));
        assert_eq!(resp.header("server"), None, "{resp:?}");
    })
}

#[test]
fn ip_allowlist_on_forwarded_for_refuses_per_request_with_403() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("in");
        let allow = policy_binding(
            "partners",
            "api",
            "ip-allowlist-flex",
            None,
            "ips: [203.0.113.0/24]\nipExpression: \"#[(attributes.headers['x-forwarded-for'] splitBy ',')[-1]]\"\n",
            &[Rule::path("/partners/.*")],
        );
        let gw = Gateway::start(&[("api.yaml", &files(&origin, &[allow]))], &[]);

        let listed = get(
            &gw,
            "/partners/x",
            "X-Forwarded-For: 10.0.0.1, 203.0.113.5\r\n",
        );
        let forged = get(
            &gw,
            "/partners/x",
            "X-Forwarded-For: 203.0.113.5, 10.0.0.1\r\n",
        );
        let missing = get(&gw, "/partners/x", "");
        let elsewhere = get(&gw, "/public", "");

        assert_eq!(listed.status, 200, "{listed:?}");
        assert_eq!(forged.status, 403, "{forged:?}");
        assert_eq!(forged.text(), "IP address not allowed\n");
        assert_eq!(missing.status, 403, "{missing:?}");
        assert_eq!(elsewhere.status, 200, "{elsewhere:?}");
        assert_eq!(origin.request_count(), 2);
    })
}

#[test]
fn a_response_timeout_policy_cuts_a_slow_upstream_short() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|req| match req.path.as_str() {
            "/slow" => Reply::ok("late").delay(Duration::from_secs(3)),
            _ => Reply::ok("fast"),
        });
        let timeout = policy_binding(
            "quick",
            "api",
            "response-timeout-flex",
            None,
            "timeout: 0.3\n",
            &[Rule::path("/slow")],
        );
        let gw = Gateway::start(&[("api.yaml", &files(&origin, &[timeout]))], &[]);

        let started = Instant::now();
        let slow = get(&gw, "/slow", "");
        let took = started.elapsed();

        assert_eq!(slow.status, 504, "{slow:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert_eq!(get(&gw, "/fast", "").status, 200);
    })
}

#[test]
fn message_logging_writes_request_and_response_lines() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("logged");
        let logging = policy_binding(
            "audit",
            "api",
            "message-logging-flex",
            None,
            "loggingConfiguration:\n  - itemName: in\n    itemData:\n      message: \"#['seen ' ++ attributes.method ++ ' ' ++ attributes.requestPath ++ ' by ' ++ attributes.headers['x-user']]\"\n      conditional: \"#[attributes.headers['x-user'] != 'bob']\"\n  - itemName: out\n    itemData:\n      message: \"#['answered ' ++ attributes.statusCode]\"\n      level: WARN\n      firstSection: false\n      secondSection: true\n",
            &[],
        );
        let gw = Gateway::start(&[("api.yaml", &files(&origin, &[logging]))], &[]);

        assert_eq!(get(&gw, "/orders/6", "X-User: bob\r\n").status, 200);
        assert_eq!(get(&gw, "/orders/7", "X-User: ada\r\n").status, 200);

        // Bob's line, had it been logged, would come before Ada's.
        let stderr = gw.wait_stderr("seen GET /orders/7 by ada", Duration::from_secs(5));
        assert!(!stderr.contains("by bob"), "{stderr}");
        let stderr = gw.wait_stderr("answered 200", Duration::from_secs(5));
        let line = stderr
            .lines()
            .find(|l| l.contains("answered 200"))
            .unwrap_or_default();
        assert!(
            line.contains("WARN") && line.contains("item=\"out\""),
            "{line}"
        );
    })
}

#[test]
fn a_refusal_names_its_policy_in_the_access_log_and_is_counted() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("in");
        let logs = tempfile::tempdir().expect("log dir");
        let logging = format!(
            "logging:\n  outputs:\n    - name: access\n      type: file\n      parameters:\n        \
             path: {}\n        file: access.log\n  accessLogs:\n    outputs: [access]\n",
            logs.path().display()
        );
        let block = policy_binding(
            "no-bots",
            "api",
            "ip-blocklist-flex",
            None,
            "ips: [198.51.100.0/24]\nipExpression: \"#[attributes.headers['x-real-ip']]\"\n",
            &[],
        );
        let config = documents(&[&files(&origin, &[block]), &configuration("logs", &logging)]);
        let mut gw = Gateway::start(&[("api.yaml", &config)], &["--admin", "127.0.0.1:0"]);

        assert_eq!(get(&gw, "/a", "X-Real-IP: 198.51.100.9\r\n").status, 403);
        assert_eq!(get(&gw, "/b", "X-Real-IP: 192.0.2.1\r\n").status, 200);

        let series = |decision: &str| {
            format!(
                "ringwall_policy_decisions_total{{api=\"api\",policy=\"ip-blocklist-flex\",\
                 binding=\"no-bots\",decision=\"{decision}\"}}"
            )
        };
        let metrics = Client::connect(gw.admin_addr()).get("/metrics").text();
        assert!(
            metrics.contains("ringwall_refused_total{status=\"403\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!("{} 1", series("reject"))),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!("{} 1", series("pass"))),
            "{metrics}"
        );

        gw.terminate();
        assert_eq!(gw.wait_exit(Duration::from_secs(10)).code(), Some(0));
        let text = std::fs::read_to_string(logs.path().join("access.log")).expect("access log");
        // Each worker writes its own log: the two lines come in either order.
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let refused = lines.iter().find(|l| l.contains("\"status\":403"));
        let passed = lines.iter().find(|l| l.contains("\"status\":200"));
        assert!(
            refused.is_some_and(|l| l.contains("\"rejected_by\":\"ip-blocklist-flex\"")),
            "{text}"
        );
        assert!(
            passed.is_some_and(|l| l.contains("\"rejected_by\":null")),
            "{text}"
        );
    })
}

#[test]
fn a_bad_policy_config_fails_validation_with_its_line_and_a_reload_keeps_the_old_one() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("in");
        let good = policy_binding(
            "quick",
            "api",
            "response-timeout-flex",
            None,
            "timeout: 5\n",
            &[],
        );
        let bad = good.replace("timeout: 5", "timeout: -1");
        let dir = config_dir(&[("api.yaml", &files(&origin, std::slice::from_ref(&bad)))]);
        let out = run_cli(
            &["validate", dir.path().to_str().expect("utf-8")],
            Duration::from_secs(10),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let text = files(&origin, std::slice::from_ref(&bad));
        let line = text
            .lines()
            .position(|l| l.contains("timeout: -1"))
            .map_or(0, |i| i + 1);
        assert_eq!(
            stderr.trim(),
            format!(
                "{}:{line}: PolicyBinding/quick: spec.config.timeout: must be more than 0 and at \
                 most 86400 seconds",
                dir.path().join("api.yaml").display()
            )
        );

        let mut gw = Gateway::start(&[("api.yaml", &files(&origin, &[good]))], &["--no-watch"]);
        let line = gw.reload_with("api.yaml", Some(&files(&origin, &[bad])));
        assert!(line.starts_with("reload-failed "), "{line}");
        assert_eq!(get(&gw, "/still", "").status, 200);
    })
}

#[test]
fn policies_run_before_an_unrouted_path_gets_its_404() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("in");
        let api = api_instance(
            "api",
            ANY_PORT,
            &[InlineService::new(
                "up",
                &origin.url(),
                vec![Route::all().rule(Rule::path("/orders/.*"))],
            )],
        );
        let block = policy_binding(
            "no-bots",
            "api",
            "ip-blocklist-flex",
            None,
            "ips: [198.51.100.0/24]\nipExpression: \"#[attributes.headers['x-real-ip']]\"\n",
            &[],
        );
        let gw = Gateway::start(&[("api.yaml", &documents(&[&api, &block]))], &[]);

        // A refused client learns nothing about which paths have routes.
        assert_eq!(
            get(&gw, "/secret", "X-Real-IP: 198.51.100.1\r\n").status,
            403
        );
        assert_eq!(get(&gw, "/secret", "X-Real-IP: 192.0.2.1\r\n").status, 404);
        assert_eq!(
            get(&gw, "/orders/1", "X-Real-IP: 192.0.2.1\r\n").status,
            200
        );
    })
}

#[test]
fn an_error_answered_before_the_policies_carries_no_headers_of_the_previous_exchange() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|_| Reply::ok("in").header("X-User", "alice"));
        let inject = policy_binding(
            "inject",
            "api",
            "header-injection-flex",
            None,
            "outboundHeaders:\n  - {key: x-user, value: \"#[attributes.headers['x-user']]\"}\n",
            &[],
        );
        let gw = Gateway::start(&[("api.yaml", &files(&origin, &[inject]))], &[]);
        let mut client = Client::connect(gw.addr("api"));

        let first = client.request(b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n");
        // No Host: refused as malformed before any policy runs.
        let second = client.request(b"GET /b HTTP/1.1\r\n\r\n");

        assert_eq!(first.status, 200, "{first:?}");
        assert_eq!(first.header("x-user"), Some("alice"));
        assert_eq!(second.status, 400, "{second:?}");
        assert!(second.header("x-user").is_none(), "{second:?}");
    })
}

#[test]
fn a_policy_scoped_by_path_cannot_be_dodged_by_spelling_the_path_differently() {
    within(TEST_LIMIT, || {
        let origin = Origin::echo_path();
        let auth = policy_binding(
            "admin-auth",
            "api",
            "http-basic-authentication-flex",
            None,
            "username: root\npassword: s3cret\n",
            &[Rule::path("/admin/.*")],
        );
        let gw = Gateway::start(&[("api.yaml", &files(&origin, &[auth]))], &[]);

        for path in [
            "/admin/users",
            "/%61dmin/users",
            "//admin/users",
            "/public/../admin/users",
            "/%2e%2e/admin/users",
        ] {
            let resp = get(&gw, path, "");
            assert_eq!(resp.status, 401, "{path}: {resp:?}");
        }
        assert_eq!(get(&gw, "/public/users", "").status, 200);
        // What passes goes upstream as the client sent it.
        assert_eq!(origin.request_count(), 1);
    })
}

#[test]
fn a_policy_warning_is_shown_by_validate_and_logged_at_start() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("in");
        let jwt = policy_binding(
            "tokens",
            "api",
            "jwt-validation-flex",
            None,
            "signingMethod: hmac\nsigningKeyLength: 256\ntextKey: 0123456789abcdef0123456789abcdef\n\
             skipClientIdValidation: true\nmandatoryAudClaim: true\n",
            &[],
        );
        let text = files(&origin, &[jwt]);
        let line = text
            .lines()
            .position(|l| l.contains("mandatoryAudClaim"))
            .map_or(0, |i| i + 1);
        let dir = config_dir(&[("api.yaml", &text)]);
        let out = run_cli(
            &["validate", dir.path().to_str().expect("utf-8")],
            Duration::from_secs(10),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert_eq!(
            stderr.trim(),
            format!(
                "warning: {}:{line}: PolicyBinding/tokens: spec.config.mandatoryAudClaim: has no \
                 effect unless validateAudClaim is true",
                dir.path().join("api.yaml").display()
            )
        );

        let gw = Gateway::start(&[("api.yaml", &text)], &[]);
        gw.wait_stderr(
            "spec.config.mandatoryAudClaim: has no effect unless validateAudClaim is true",
            Duration::from_secs(5),
        );
    })
}

#[test]
fn a_client_that_leaves_while_held_by_spike_control_gives_its_place_up() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("in");
        // A held request would keep the only queue place for 10 x 200 ms.
        let spike = policy_binding(
            "spikes",
            "api",
            "spike-control-flex",
            None,
            "maximumRequests: 1\ntimePeriodInMilliseconds: 60000\ndelayTimeInMillis: 200\n\
             delayAttempts: 10\nqueuingLimit: 1\n",
            &[],
        );
        let gw = Gateway::start(&[("api.yaml", &files(&origin, &[spike]))], &[]);
        assert_eq!(get(&gw, "/first", "").status, 200);

        // Over the rate: held in the only queue place, then gone.
        let mut leaver = Client::connect(gw.addr("api"));
        leaver.send(b"GET /leaver HTTP/1.1\r\nHost: gw\r\n\r\n");
        drop(leaver);

        // While the place is held a newcomer is refused at once. Once the leaver's first
        // wait ends its departure is noticed, and a newcomer is held instead (no answer yet).
        let deadline = Instant::now() + Duration::from_millis(1200);
        let held = loop {
            let mut newcomer = Client::connect(gw.addr("api"));
            newcomer.send(b"GET /newcomer HTTP/1.1\r\nHost: gw\r\n\r\n");
            newcomer
                .stream()
                .set_read_timeout(Some(Duration::from_millis(150)))
                .expect("read timeout");
            match newcomer.try_read_response("GET") {
                Ok(resp) => assert_eq!(resp.status, 429, "{resp:?}"),
                Err(_) => break true,
            }
            if Instant::now() > deadline {
                break false;
            }
        };
        assert!(held, "the leaver kept its place");
        assert_eq!(origin.request_count(), 1);
    })
}
