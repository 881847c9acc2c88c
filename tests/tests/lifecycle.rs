//! The process: startup lines, and graceful shutdown on SIGTERM/SIGINT (stop accepting,
//! finish what is in flight, close idle connections, exit 0).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use ringwall_tests::yaml::*;
use ringwall_tests::*;

/// Connects until the gateway refuses: its listeners are closed. Panics after `limit`.
fn wait_until_refused(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return,
            // Still accepting (or mid-close): drop it and try again.
            Ok(stream) => drop(stream),
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "{addr} still accepted connections {limit:?} after SIGTERM"
        );
        // Poll interval only; what is awaited is the refusal itself.
        thread::sleep(Duration::from_millis(10));
    }
}

/// An origin whose answers wait until `gate` opens.
fn gated_origin(gate: &Gate) -> Origin {
    let gate = gate.clone();
    Origin::start(move |req| {
        gate.wait(Duration::from_secs(20));
        Reply::ok(format!("done {}", req.path))
    })
}

#[test]
fn sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_zero() {
    within(TEST_LIMIT, || {
        let gate = Gate::new();
        let origin = gated_origin(&gate);
        let mut gw = gateway_to(&origin);
        let addr = gw.addr("api");

        let clients: Vec<_> = (0..20)
            .map(|i| {
                thread::spawn(move || {
                    let mut client = Client::try_connect(addr).map_err(|e| e.to_string())?;
                    client
                        .send_lenient(client::get(&format!("/inflight/{i}")).as_bytes())
                        .map_err(|e| e.to_string())?;
                    client.try_read_response("GET").map_err(|e| e.to_string())
                })
            })
            .collect();
        assert!(
            origin.wait_for_requests(20, Duration::from_secs(10)),
            "only {} of 20 requests reached the origin",
            origin.request_count()
        );

        gw.terminate();
        wait_until_refused(addr, Duration::from_secs(5));
        gate.open();

        for (i, client) in clients.into_iter().enumerate() {
            let resp = client
                .join()
                .expect("client thread")
                .unwrap_or_else(|e| panic!("in-flight request {i} lost: {e}"));
            assert_eq!(resp.status, 200, "request {i}: {resp:?}");
            assert_eq!(resp.text(), format!("done /inflight/{i}"));
        }
        let status = gw.wait_exit(Duration::from_secs(10));
        assert_eq!(
            status.code(),
            Some(0),
            "exit {status}; stderr:\n{}",
            gw.stderr()
        );
    })
}

#[test]
fn sigterm_closes_idle_keep_alive_connections() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("ok");
        let mut gw = gateway_to(&origin);
        let mut idle = Client::connect(gw.addr("api"));
        assert_eq!(idle.get("/").status, 200);

        gw.terminate();

        assert!(
            idle.closes_within(Duration::from_secs(5)),
            "idle keep-alive connection still open 5 s after SIGTERM"
        );
        let status = gw.wait_exit(Duration::from_secs(5));
        assert_eq!(
            status.code(),
            Some(0),
            "exit {status}; stderr:\n{}",
            gw.stderr()
        );
    })
}

#[test]
fn sigint_exits_zero() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("ok");
        let mut gw = gateway_to(&origin);
        assert_eq!(Client::connect(gw.addr("api")).get("/").status, 200);

        gw.signal(libc::SIGINT);

        let status = gw.wait_exit(Duration::from_secs(5));
        assert_eq!(
            status.code(),
            Some(0),
            "exit {status}; stderr:\n{}",
            gw.stderr()
        );
    })
}

#[test]
fn shutdown_timeout_bounds_the_wait_for_in_flight_requests() {
    within(TEST_LIMIT, || {
        let gate = Gate::new();
        let origin = gated_origin(&gate);
        let mut gw = Gateway::start(
            &[("api.yaml", &simple_api(&origin.url()))],
            &["--shutdown-timeout", "1"],
        );
        let addr = gw.addr("api");
        let stuck = thread::spawn(move || {
            let mut client = Client::try_connect(addr)?;
            client.send_lenient(client::get("/stuck").as_bytes())?;
            client.try_read_response("GET")
        });
        assert!(origin.wait_for_requests(1, Duration::from_secs(10)));

        let signalled = Instant::now();
        gw.terminate();
        let status = gw.wait_exit(Duration::from_secs(4));
        let took = signalled.elapsed();

        assert!(
            status.code().is_some(),
            "killed by a signal instead of exiting: {status}"
        );
        assert!(
            took >= Duration::from_millis(900),
            "exited after {took:?}, before the 1 s shutdown timeout, with a request in flight"
        );
        gate.open();
        let _ = stuck.join();
    })
}

#[test]
fn every_api_instance_gets_a_listening_line_and_serves() {
    within(TEST_LIMIT, || {
        let first = Origin::ok("first");
        let second = Origin::ok("second");
        // Distinct base paths, so the two are valid whether port 0 means one listener for
        // both or one each; the `listening` lines say which, and the test follows them.
        let instance = |name: &str, origin: &Origin| {
            api_instance(
                name,
                &format!("{ANY_PORT}/{name}"),
                &[yaml::InlineService::new(
                    "up",
                    &origin.url(),
                    vec![Route::all()],
                )],
            )
        };
        let config = documents(&[&instance("first", &first), &instance("second", &second)]);
        let gw = Gateway::start(&[("apis.yaml", &config)], &[]);

        for (name, origin) in [("first", &first), ("second", &second)] {
            let addr = gw.addr(name);
            assert!(
                addr.ip().is_loopback() && addr.port() != 0,
                "{name}: {addr}"
            );
            let resp = Client::connect(addr).get(&format!("/{name}/x"));
            assert_eq!(resp.status, 200, "{name}: {resp:?}");
            assert_eq!(resp.text(), name);
            assert_eq!(origin.single_request().path, "/x");
        }
    })
}

#[test]
fn ready_line_reports_the_worker_count() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("ok");
        let gw = Gateway::start(
            &[("api.yaml", &simple_api(&origin.url()))],
            &["--workers", "3"],
        );

        assert_eq!(gw.workers(), 3);
        // The workers share the one port: every connection is served, whichever takes it.
        for i in 0..12 {
            let resp = Client::connect(gw.addr("api")).get(&format!("/{i}"));
            assert_eq!(resp.status, 200, "connection {i}: {resp:?}");
        }
    })
}

#[test]
fn readiness_turns_503_while_draining_and_liveness_stays_200() {
    within(TEST_LIMIT, || {
        let gate = Gate::new();
        let origin = gated_origin(&gate);
        let config = simple_api(&origin.url());
        let mut gw = Gateway::start(&[("api.yaml", &config)], &["--admin", "127.0.0.1:0"]);
        let admin = gw.admin_addr();

        assert_eq!(Client::connect(admin).get("/ready").status, 200);
        assert_eq!(Client::connect(admin).get("/live").status, 200);
        assert_eq!(Client::connect(admin).get("/nope").status, 404);

        // One request held in flight keeps the gateway draining as long as the gate is shut.
        let addr = gw.addr("api");
        let held = thread::spawn(move || Client::connect(addr).get("/held").status);
        assert!(origin.wait_for_requests(1, Duration::from_secs(10)));
        gw.terminate();

        let deadline = Instant::now() + Duration::from_secs(5);
        let ready = loop {
            let status = Client::connect(admin).get("/ready").status;
            if status != 200 || Instant::now() > deadline {
                break status;
            }
            // Poll interval only: the flip itself is what is awaited.
            thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(ready, 503, "/ready while draining");
        assert_eq!(Client::connect(admin).get("/live").status, 200);

        gate.open();
        assert_eq!(held.join().expect("client"), 200);
        assert_eq!(gw.wait_exit(Duration::from_secs(10)).code(), Some(0));
    })
}

#[test]
fn sigterm_with_a_drain_period_keeps_serving_unready_and_closes_connections() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("fine");
        let config = simple_api(&origin.url());
        let mut gw = Gateway::start(
            &[("api.yaml", &config)],
            &["--admin", "127.0.0.1:0", "--drain-seconds", "1.5"],
        );
        let (addr, admin) = (gw.addr("api"), gw.admin_addr());
        let mut kept = Client::connect(addr);
        assert_eq!(kept.get("/before").header("connection"), None);

        let started = Instant::now();
        gw.terminate();
        // Not ready at once, while still serving: a new connection works, and says close.
        let deadline = Instant::now() + Duration::from_secs(1);
        while Client::connect(admin).get("/ready").status == 200 {
            assert!(Instant::now() < deadline, "/ready never turned 503");
            // Poll interval only: the flip itself is what is awaited.
            thread::sleep(Duration::from_millis(5));
        }
        let fresh = Client::connect(addr).get("/during");
        assert_eq!(fresh.status, 200);
        assert_eq!(fresh.header("connection"), Some("close"));
        // The idle keep-alive connection gets one more response, marked close, then ends.
        let last = kept.get("/during");
        assert_eq!(last.status, 200);
        assert_eq!(last.header("connection"), Some("close"));
        kept.assert_closed();
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "all within the period"
        );

        // After the period, nothing new is accepted and the process exits cleanly.
        wait_until_refused(addr, Duration::from_secs(5));
        assert!(
            started.elapsed() >= Duration::from_millis(1400),
            "refused too early"
        );
        assert_eq!(gw.wait_exit(Duration::from_secs(10)).code(), Some(0));
    })
}
