//! A shared rate limit in front of a Redis that is up but slow: a burst that one refill at a
//! time cannot serve is refused (429), never counted in memory as if Redis were down, which
//! would let the fleet pass more than the limit.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ringwall_tests::redis::RedisServer;
use ringwall_tests::yaml::{configuration, documents, policy_binding, simple_api};
use ringwall_tests::*;

/// Forwards TCP to `to`, holding every chunk for `delay` in each direction: a Redis with a
/// round trip of twice `delay`. Runs until the test process ends.
fn slow_proxy(to: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            for (mut from, mut into) in [
                (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                ),
                (server, client),
            ] {
                thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                // Latency being simulated, not synchronisation.
                                thread::sleep(delay);
                                if into.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = into.shutdown(Shutdown::Write);
                });
            }
        }
    });
    port
}

#[test]
fn a_burst_beyond_what_a_slow_redis_serves_is_refused_not_counted_locally() {
    within(Duration::from_secs(60), || {
        let redis = RedisServer::start();
        let slow = slow_proxy(redis.port, Duration::from_millis(12));
        let origin = Origin::ok("fine");
        let max = 20;
        let limit = format!(
            "rateLimits:\n  - maximumRequests: {max}\n    timePeriodInMilliseconds: 60000\n"
        );
        let config = documents(&[
            &configuration(
                "shared",
                &format!("sharedStorage:\n  redis:\n    address: 127.0.0.1:{slow}\n"),
            ),
            &simple_api(&origin.url()),
            &policy_binding("limit", "api", "rate-limiting-flex", None, &limit, &[]),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &["--workers", "2"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = Client::connect(gw.admin_addr()).get("/metrics").text();
            if metrics.contains("ringwall_shared_storage_up 1") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "storage never up: {}",
                gw.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }

        // Three bursts of 40 requests at once, each far beyond one grant (1) per ~25 ms.
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let start = Arc::new(Barrier::new(40));
            let addr = gw.addr("api");
            let threads: Vec<_> = (0..40)
                .map(|_| {
                    let start = start.clone();
                    thread::spawn(move || {
                        let mut client = Client::connect(addr);
                        start.wait();
                        client.get("/burst").status
                    })
                })
                .collect();
            statuses.extend(threads.into_iter().map(|t| t.join().expect("client")));
        }

        let passed = statuses.iter().filter(|&&s| s == 200).count();
        let other: Vec<_> = statuses
            .iter()
            .filter(|s| !matches!(s, 200 | 429))
            .collect();
        assert!(other.is_empty(), "unexpected statuses: {other:?}");
        // Slow, never down: had a call timed out, counting in memory would be the design.
        let metrics = Client::connect(gw.admin_addr()).get("/metrics").text();
        assert!(
            !metrics.lines().any(
                |l| l.starts_with("ringwall_shared_storage_errors_total") && !l.ends_with(" 0")
            ),
            "the storage had errors: {metrics}"
        );
        assert!(passed <= max, "{passed} passed, limit {max}");
        assert_eq!(origin.request_count(), passed);
    })
}
