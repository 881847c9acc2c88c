//! Several endpoints behind one Service (`addresses`): a failed connect, or a reset before any
//! response byte on a replayable request, goes to another endpoint; failing endpoints are set
//! aside for a while (passive health), and retries stay within their budget.

use ringwall_tests::yaml::*;
use ringwall_tests::*;

/// An ApiInstance routing everything to Service `svc` with `endpoints`, one worker (so one
/// round robin and one view of the endpoints' health).
fn gateway(endpoints: &[String]) -> Gateway {
    balanced(endpoints, "")
}

/// The same, with `loadBalancing` lines (YAML, indented by four spaces) when not empty.
fn balanced(endpoints: &[String], balancing: &str) -> Gateway {
    let mut svc = service_at(endpoints);
    if !balancing.is_empty() {
        svc.push_str(&format!("  loadBalancing:\n{balancing}"));
    }
    let config = documents(&[
        &api_instance("api", ANY_PORT, &[]),
        &svc,
        &route_binding("api-route", "api", "svc", None, &[]),
    ]);
    Gateway::start(&[("api.yaml", &config)], &["--workers", "1"])
}

/// Service `svc` with `endpoints`.
fn service_at(endpoints: &[String]) -> String {
    let list: String = endpoints.iter().map(|e| format!("    - {e}\n")).collect();
    service("svc", "x").replace("  address: x\n", &format!("  addresses:\n{list}"))
}

/// Service `svc` with `endpoints`, probed on `/healthz` every `interval` seconds, out after
/// two failures and back after two successes.
fn checked_service(endpoints: &[String], interval: &str) -> String {
    service_at(endpoints)
        + &format!(
            "  healthCheck:\n    path: /healthz\n    intervalSeconds: {interval}\n    \
             timeoutSeconds: 0.5\n    unhealthyThreshold: 2\n    healthyThreshold: 2\n"
        )
}

fn counter(gw: &Gateway, name: &str) -> f64 {
    metric(&gw.metrics(), name, &[]).unwrap_or(0.0)
}

#[test]
fn a_refused_endpoint_is_retried_elsewhere_then_set_aside() {
    within(TEST_LIMIT, || {
        let down = closed_port();
        let origin = Origin::ok("up");
        let gw = gateway(&[format!("http://{}", down.addr()), origin.url()]);
        let mut client = Client::connect(gw.addr("api"));
        for i in 0..20 {
            let resp = client.get(&format!("/{i}"));
            assert_eq!(
                (resp.status, resp.text()),
                (200, "up".to_owned()),
                "request {i}"
            );
        }
        // One retry when the closed endpoint was first met; then it was skipped.
        assert_eq!(counter(&gw, "ringwall_upstream_retries_total"), 1.0);
        assert_eq!(counter(&gw, "ringwall_upstream_ejections_total"), 1.0);
        assert_eq!(origin.request_count(), 20);
    })
}

#[test]
fn five_server_errors_in_a_row_set_an_endpoint_aside() {
    within(TEST_LIMIT, || {
        let failing = Origin::start(|_| Reply::new(500).body("broken"));
        let healthy = Origin::ok("fine");
        let gw = gateway(&[failing.url(), healthy.url()]);
        let mut client = Client::connect(gw.addr("api"));
        let statuses: Vec<u16> = (0..30)
            .map(|i| client.get(&format!("/{i}")).status)
            .collect();
        // Round robin until the fifth 500 in a row, then only the healthy one.
        assert_eq!(
            statuses.iter().filter(|&&s| s == 500).count(),
            5,
            "{statuses:?}"
        );
        assert_eq!(failing.request_count(), 5);
        assert!(statuses[10..].iter().all(|&s| s == 200), "{statuses:?}");
        assert_eq!(counter(&gw, "ringwall_upstream_ejections_total"), 1.0);
    })
}

#[test]
fn a_reset_before_any_response_byte_replays_only_what_is_replayable() {
    within(TEST_LIMIT, || {
        // A GET reset by the first endpoint is answered by the second.
        let resetting = Origin::start(|_| Reply::reset());
        let healthy = Origin::ok("fine");
        let gw = gateway(&[resetting.url(), healthy.url()]);
        let resp = Client::connect(gw.addr("api")).get("/replayed");
        assert_eq!((resp.status, resp.text()), (200, "fine".to_owned()));
        assert_eq!((resetting.request_count(), healthy.request_count()), (1, 1));
        drop(gw);

        // A POST with a body is not sent twice: the first endpoint's reset is a 502.
        let resetting = Origin::start(|_| Reply::reset());
        let healthy = Origin::ok("fine");
        let gw = gateway(&[resetting.url(), healthy.url()]);
        let post = b"POST /once HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let resp = Client::connect(gw.addr("api")).request(post);
        assert_error(&resp, 502);
        assert_eq!((resetting.request_count(), healthy.request_count()), (1, 0));
    })
}

#[test]
fn a_consistent_hash_sends_each_key_to_one_endpoint() {
    within(TEST_LIMIT, || {
        let origins: Vec<Origin> = (0..3).map(|i| Origin::ok(["a", "b", "c"][i])).collect();
        let urls: Vec<String> = origins.iter().map(Origin::url).collect();
        let gw = balanced(
            &urls,
            "    algorithm: consistentHash\n    hashOn: header\n    hashHeader: X-User\n",
        );
        let mut client = Client::connect(gw.addr("api"));
        let mut seen = std::collections::BTreeSet::new();
        for user in 0..30 {
            let raw = format!("GET /u HTTP/1.1\r\nHost: a\r\nX-User: user-{user}\r\n\r\n");
            let first = client.request(raw.as_bytes()).text();
            for _ in 0..3 {
                assert_eq!(
                    client.request(raw.as_bytes()).text(),
                    first,
                    "user-{user} moved"
                );
            }
            seen.insert(first);
        }
        assert_eq!(
            seen.len(),
            3,
            "30 users spread over the 3 endpoints: {seen:?}"
        );
    })
}

#[test]
fn least_request_steers_around_a_busy_endpoint() {
    within(TEST_LIMIT, || {
        let gate = Gate::new();
        let held = gate.clone();
        let slow = Origin::start(move |req| {
            if req.path == "/hold" {
                held.wait(std::time::Duration::from_secs(10));
            }
            Reply::ok("slow")
        });
        let fast = Origin::ok("fast");
        let gw = balanced(&[slow.url(), fast.url()], "    algorithm: leastRequest\n");
        // Three requests held by the slow endpoint (others may land on the fast one).
        let addr = gw.addr("api");
        let holders: Vec<_> = (0..6)
            .map(|_| std::thread::spawn(move || Client::connect(addr).get("/hold")))
            .collect();
        assert!(slow.wait_for_requests(1, std::time::Duration::from_secs(5)));
        let before = slow.request_count();
        let mut client = Client::connect(gw.addr("api"));
        let answers: Vec<String> = (0..20)
            .map(|i| client.get(&format!("/{i}")).text())
            .collect();
        // Of two random picks the idle endpoint wins unless both are the busy one.
        let to_slow = slow.request_count() - before;
        assert!(
            to_slow <= 8,
            "{to_slow} of 20 went to the busy endpoint: {answers:?}"
        );
        gate.open();
        for holder in holders {
            assert_eq!(holder.join().expect("holder").status, 200);
        }
    })
}

#[test]
fn active_health_checks_take_an_endpoint_out_and_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    within(TEST_LIMIT, || {
        let sick = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&sick);
        let a = Origin::start(move |req| match req.path.as_str() {
            "/healthz" if flag.load(Ordering::SeqCst) => Reply::new(503).body("sick"),
            "/healthz" => Reply::ok("ok"),
            _ => Reply::ok("a"),
        });
        let b = Origin::start(|req| Reply::ok(if req.path == "/healthz" { "ok" } else { "b" }));
        let svc = checked_service(&[a.url(), b.url()], "0.05");
        let config = documents(&[
            &api_instance("api", ANY_PORT, &[]),
            &svc,
            &route_binding("api-route", "api", "svc", None, &[]),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &["--workers", "2"]);
        let a_endpoint = a.addr().to_string();
        let labels = [("service", "svc"), ("endpoint", a_endpoint.as_str())];
        let state = gw.metric_until("ringwall_upstream_endpoint_healthy", &labels, |v| v == 0.0);
        assert_eq!(state, 0.0, "the failing endpoint was not taken out");
        let answers: Vec<String> = (0..10)
            .map(|i| Client::connect(gw.addr("api")).get(&format!("/{i}")).text())
            .collect();
        assert!(answers.iter().all(|t| t == "b"), "{answers:?}");
        // Probes carry the Service's host and say who they are.
        let probe = a
            .requests()
            .into_iter()
            .find(|r| r.path == "/healthz")
            .expect("a probe");
        assert_eq!(probe.header("user-agent"), Some("ringwall-health-check"));
        assert_eq!(probe.header("host"), Some(a_endpoint.as_str()));

        sick.store(false, Ordering::SeqCst);
        let state = gw.metric_until("ringwall_upstream_endpoint_healthy", &labels, |v| v == 1.0);
        assert_eq!(state, 1.0, "the endpoint did not come back");
        let answers: Vec<String> = (0..10)
            .map(|i| Client::connect(gw.addr("api")).get(&format!("/{i}")).text())
            .collect();
        assert!(answers.iter().any(|t| t == "a"), "{answers:?}");
    })
}

#[test]
fn a_reload_keeps_an_endpoint_the_checks_took_out_out() {
    within(TEST_LIMIT, || {
        let a = Origin::start(|req| match req.path.as_str() {
            "/healthz" => Reply::new(503).body("sick"),
            _ => Reply::ok("a"),
        });
        let b = Origin::start(|req| Reply::ok(if req.path == "/healthz" { "ok" } else { "b" }));
        // Two failures a second apart take `a` out: a reload that forgot it would send it
        // traffic for about a second.
        let svc = checked_service(&[a.url(), b.url()], "1");
        let docs = |more: &[&str]| {
            let mut all = vec![
                api_instance("api", ANY_PORT, &[]),
                svc.clone(),
                route_binding("api-route", "api", "svc", None, &[]),
            ];
            all.extend(more.iter().map(|d| d.to_string()));
            documents(&all.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let mut gw = Gateway::start(
            &[("api.yaml", &docs(&[]))],
            &["--workers", "1", "--no-watch"],
        );
        let a_endpoint = a.addr().to_string();
        let labels = [("service", "svc"), ("endpoint", a_endpoint.as_str())];
        let state = gw.metric_until("ringwall_upstream_endpoint_healthy", &labels, |v| v == 0.0);
        assert_eq!(state, 0.0, "the failing endpoint was not taken out");

        // An edit elsewhere: a second ApiInstance on the same Service, same check.
        let other = api_instance("other", ANY_PORT, &[]);
        let other_route = route_binding("other-route", "other", "svc", None, &[]);
        let verdict = gw.reload_with("api.yaml", Some(&docs(&[&other, &other_route])));
        assert!(verdict.starts_with("reloaded "), "{verdict}");
        let answers: Vec<String> = (0..10)
            .map(|i| Client::connect(gw.addr("api")).get(&format!("/{i}")).text())
            .collect();
        assert!(answers.iter().all(|t| t == "b"), "{answers:?}");
    })
}

#[test]
fn weighted_endpoints_take_their_share() {
    within(TEST_LIMIT, || {
        let heavy = Origin::ok("heavy");
        let light = Origin::ok("light");
        let list = format!(
            "    - {{address: {}, weight: 3}}\n    - {{address: {}, weight: 1}}\n",
            heavy.url(),
            light.url()
        );
        let svc = service("svc", "x").replace("  address: x\n", &format!("  addresses:\n{list}"))
            + "  loadBalancing:\n    algorithm: weighted\n";
        let config = documents(&[
            &api_instance("api", ANY_PORT, &[]),
            &svc,
            &route_binding("api-route", "api", "svc", None, &[]),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &["--workers", "1"]);
        let mut client = Client::connect(gw.addr("api"));
        let answers: Vec<String> = (0..80)
            .map(|i| client.get(&format!("/{i}")).text())
            .collect();
        let to_heavy = answers.iter().filter(|a| *a == "heavy").count();
        assert!(
            (48..=72).contains(&to_heavy),
            "{to_heavy} of 80 to the 3-weight endpoint"
        );
        assert_eq!(heavy.request_count() + light.request_count(), 80);
    })
}
