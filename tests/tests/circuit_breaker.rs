//! `circuit-breaker-flex` on a Service: past `maxRequests` in flight a request gets a 503 at
//! once; at `maxConnections` a request needing a connection waits, as one of
//! `maxPendingRequests`, for one to come back, and gets a 503 when there is no room to wait.

use std::thread;
use std::time::Duration;

use ringwall_tests::client::get;
use ringwall_tests::yaml::*;
use ringwall_tests::*;

/// An ApiInstance routing everything to Service `svc` at `origin`, with a
/// `circuit-breaker-flex` of `thresholds` (YAML lines at column 0) bound to the Service.
fn config(origin: &Origin, thresholds: &str) -> String {
    let indented: String = thresholds.lines().map(|l| format!("  {l}\n")).collect();
    let breaker = policy_binding(
        "svc-breaker",
        "svc",
        "circuit-breaker-flex",
        None,
        &format!("thresholds:\n{indented}"),
        &[],
    )
    .replace("    name: svc\n", "    kind: Service\n    name: svc\n");
    documents(&[
        &api_instance("api", ANY_PORT, &[]),
        &service("svc", &origin.url()),
        &route_binding("api-route", "api", "svc", None, &[]),
        &breaker,
    ])
}

/// An origin that holds `/slow` until `gate` opens and answers everything else at once.
fn gated(gate: &Gate) -> Origin {
    let gate = gate.clone();
    Origin::start(move |req| {
        if req.path == "/slow" {
            gate.wait(Duration::from_secs(10));
        }
        Reply::ok(req.path.clone())
    })
}

/// Sends `/slow` on a connection of its own and waits until the origin holds it.
fn hold_one(gw: &Gateway, origin: &Origin) -> thread::JoinHandle<Response> {
    let addr = gw.addr("api");
    let held = thread::spawn(move || Client::connect(addr).get("/slow"));
    assert!(origin.wait_for_requests(1, Duration::from_secs(5)));
    held
}

#[test]
fn past_max_requests_a_request_gets_503_at_once() {
    within(TEST_LIMIT, || {
        let gate = Gate::new();
        let origin = gated(&gate);
        let gw = Gateway::start(
            &[("api.yaml", &config(&origin, "maxRequests: 1"))],
            &["--workers", "1"],
        );
        let held = hold_one(&gw, &origin);

        let refused = Client::connect(gw.addr("api")).get("/other");
        assert_error(&refused, 503);
        assert!(
            refused.text().contains("circuit breaker open"),
            "{refused:?}"
        );
        assert_eq!(
            origin.request_count(),
            1,
            "the refused request reached the origin"
        );

        gate.open();
        assert_eq!(held.join().expect("held").status, 200);
        assert_eq!(Client::connect(gw.addr("api")).get("/after").status, 200);
    })
}

#[test]
fn at_max_connections_a_request_waits_for_one_or_is_refused_without_room() {
    within(TEST_LIMIT, || {
        // No room to wait: refused while the only connection is busy.
        let gate = Gate::new();
        let origin = gated(&gate);
        let gw = Gateway::start(
            &[(
                "api.yaml",
                &config(&origin, "maxConnections: 1\nmaxPendingRequests: 0"),
            )],
            &["--workers", "1"],
        );
        let held = hold_one(&gw, &origin);
        let refused = Client::connect(gw.addr("api")).get("/other");
        assert_error(&refused, 503);
        assert!(refused
            .text()
            .contains("waiting for an upstream connection"));
        gate.open();
        assert_eq!(held.join().expect("held").status, 200);

        // Room for one to wait: it is served once the busy connection comes back, on it.
        let gate = Gate::new();
        let origin = gated(&gate);
        let gw = Gateway::start(
            &[(
                "api.yaml",
                &config(&origin, "maxConnections: 1\nmaxPendingRequests: 1"),
            )],
            &["--workers", "1"],
        );
        let held = hold_one(&gw, &origin);
        let addr = gw.addr("api");
        let waiting = thread::spawn(move || {
            let mut client = Client::connect(addr);
            client.send(get("/waited").as_bytes());
            client.read_response("GET")
        });
        // It waits rather than being refused or opening a second connection.
        thread::sleep(Duration::from_millis(200));
        assert_eq!(origin.request_count(), 1);
        gate.open();
        assert_eq!(held.join().expect("held").status, 200);
        let waited = waiting.join().expect("waiting");
        assert_eq!((waited.status, waited.text()), (200, "/waited".to_owned()));
        assert_eq!(
            origin.connections(),
            1,
            "served on the connection that came back"
        );
    })
}

#[test]
fn breaker_thresholds_are_checked_at_load() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("fine");
        let dir = config_dir(&[(
            "api.yaml",
            &config(&origin, "maxRequests: -1\nmaxConections: 5"),
        )]);
        let out = run_cli(
            &["validate", &dir.path().display().to_string()],
            Duration::from_secs(10),
        );
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains(
                "spec.config.thresholds.maxRequests: must be between 0 and 4294967295, found -1"
            ),
            "{text}"
        );
        assert!(text.contains("unknown field `maxConections`"), "{text}");
    })
}
