//! `rate-limiting-flex` and `spike-control-flex` on the real binary: quotas exact across
//! four workers under many concurrent keep-alive clients, keys counted apart, the
//! `x-ratelimit-*` headers, counters kept across a reload that leaves the binding alone,
//! and spike control's delayed retries and queue.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ringwall_tests::yaml::{documents, simple_api, API_VERSION};
use ringwall_tests::*;

/// A `PolicyBinding` of `policy` to ApiInstance `api`, `config` indented by four spaces.
fn binding(policy: &str, config: &str) -> String {
    format!(
        "apiVersion: {API_VERSION}\nkind: PolicyBinding\nmetadata:\n  name: limit\nspec:\n  \
         targetRef:\n    name: api\n  policyRef:\n    name: {policy}\n  config:\n{config}"
    )
}

/// 50 per minute for each `X-Client-Id`, with the headers.
const PER_CLIENT: &str = "    rateLimits:\n      - maximumRequests: 50\n        timePeriodInMilliseconds: 60000\n    \
                          keySelector: \"#[attributes.headers['x-client-id']]\"\n    exposeHeaders: true\n";

fn get_as(client: &str) -> String {
    format!("GET /orders HTTP/1.1\r\nHost: gateway.test\r\nX-Client-Id: {client}\r\n\r\n")
}

/// A header as a number.
#[track_caller]
fn number(resp: &Response, name: &str) -> u64 {
    let value = resp
        .header(name)
        .unwrap_or_else(|| panic!("no {name}: {resp:?}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {value:?} is not a number"))
}

/// `clients` keep-alive connections, started together, each sending `each` requests `raw`;
/// every response with how long it took.
fn burst(gw: &Gateway, clients: usize, each: usize, raw: &str) -> Vec<(Response, Duration)> {
    let start = Arc::new(Barrier::new(clients));
    let addr = gw.addr("api");
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (start, raw) = (start.clone(), raw.to_owned());
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                start.wait();
                (0..each)
                    .map(|_| {
                        let sent = Instant::now();
                        let resp = client.request(raw.as_bytes());
                        (resp, sent.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect()
}

/// Splits `responses` into 200s and 429s, failing on anything else.
fn passed_and_refused(responses: Vec<(Response, Duration)>) -> (Vec<Response>, Vec<Response>) {
    let (ok, refused): (Vec<_>, Vec<_>) = responses
        .into_iter()
        .map(|(r, _)| r)
        .partition(|r| r.status == 200);
    for r in &refused {
        assert_eq!(r.status, 429, "{r:?}");
    }
    (ok, refused)
}

#[test]
fn exactly_the_limit_passes_across_four_workers() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("fine");
        let config = documents(&[
            &simple_api(&origin.url()),
            &binding("rate-limiting-flex", PER_CLIENT),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &["--workers", "4"]);
        assert_eq!(gw.workers(), 4);

        // 16 clients, 400 requests of one key, all within the minute.
        let (ok, refused) = passed_and_refused(burst(&gw, 16, 25, &get_as("alpha")));
        assert_eq!((ok.len(), refused.len()), (50, 350));
        assert_eq!(origin.request_count(), 50);

        // Each pass saw its own place: remaining counts down through 49..=0 exactly once.
        let mut remaining: Vec<u64> = ok
            .iter()
            .map(|r| number(r, "x-ratelimit-remaining"))
            .collect();
        remaining.sort_unstable();
        assert_eq!(remaining, (0..50).collect::<Vec<_>>());
        for r in &ok {
            assert_eq!(number(r, "x-ratelimit-limit"), 50);
            let reset = number(r, "x-ratelimit-reset");
            assert!((1..=60_000).contains(&reset), "{r:?}");
            assert!(r.header("retry-after").is_none(), "{r:?}");
        }
        for r in &refused {
            assert_eq!(r.text().trim_end(), "too many requests");
            assert_eq!(number(r, "x-ratelimit-limit"), 50);
            assert_eq!(number(r, "x-ratelimit-remaining"), 0);
            let reset = number(r, "x-ratelimit-reset");
            assert!((1..=60_000).contains(&reset), "{r:?}");
            assert_eq!(number(r, "retry-after"), reset.div_ceil(1000));
        }

        // Another key has a quota of its own; so has the empty key (no header).
        let (ok, refused) = passed_and_refused(burst(&gw, 8, 10, &get_as("beta")));
        assert_eq!((ok.len(), refused.len()), (50, 30));
        let anonymous = "GET /orders HTTP/1.1\r\nHost: gateway.test\r\n\r\n";
        let (ok, _) = passed_and_refused(burst(&gw, 4, 15, anonymous));
        assert_eq!(ok.len(), 50);
        assert_eq!(origin.request_count(), 150);
    })
}

#[test]
fn the_upstreams_own_rate_limit_headers_give_way_to_the_policys() {
    within(TEST_LIMIT, || {
        let origin = Origin::start(|_| Reply::ok("fine").header("X-RateLimit-Remaining", "999"));
        let config = documents(&[
            &simple_api(&origin.url()),
            &binding("rate-limiting-flex", PER_CLIENT),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let resp = Client::connect(gw.addr("api")).request(get_as("gamma").as_bytes());
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header_all("x-ratelimit-remaining"), vec!["49"]);
    })
}

#[test]
fn a_reload_that_leaves_the_binding_alone_keeps_the_count() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("fine");
        let limit = |max: u32| {
            binding(
                "rate-limiting-flex",
                &format!("    rateLimits: [{{maximumRequests: {max}, timePeriodInMilliseconds: 60000}}]\n"),
            )
        };
        let api = simple_api(&origin.url());
        let mut gw = Gateway::start(
            &[("api.yaml", &api), ("limit.yaml", &limit(3))],
            &["--no-watch"],
        );
        let mut client = Client::connect(gw.addr("api"));
        for _ in 0..3 {
            assert_eq!(client.get("/").status, 200);
        }
        assert_eq!(client.get("/").status, 429);

        // Another file changes; the binding does not: still refused.
        let reloaded = gw.reload_with("other.yaml", Some(&api.replace("name: api", "name: other")));
        assert!(reloaded.starts_with("reloaded"), "{reloaded}");
        assert_eq!(Client::connect(gw.addr("api")).get("/").status, 429);

        // A new limit is a new policy, with counters of its own.
        let reloaded = gw.reload_with("limit.yaml", Some(&limit(4)));
        assert!(reloaded.starts_with("reloaded"), "{reloaded}");
        assert_eq!(Client::connect(gw.addr("api")).get("/").status, 200);
        assert_eq!(origin.request_count(), 4);
    })
}

/// 2 per second; over that, retried every `delay` ms up to `attempts` times, `queue` at once.
fn spike(delay: u64, attempts: u32, queue: u32) -> String {
    binding(
        "spike-control-flex",
        &format!(
            "    maximumRequests: 2\n    timePeriodInMilliseconds: 1000\n    delayTimeInMillis: {delay}\n    \
             delayAttempts: {attempts}\n    queuingLimit: {queue}\n    exposeHeaders: true\n"
        ),
    )
}

#[test]
fn spike_control_delays_requests_over_the_rate_until_the_window_has_room() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("fine");
        let config = documents(&[&simple_api(&origin.url()), &spike(300, 10, 10)]);
        let gw = Gateway::start(&[("api.yaml", &config)], &["--workers", "4"]);

        let mut responses = burst(&gw, 4, 1, "GET / HTTP/1.1\r\nHost: gateway.test\r\n\r\n");
        responses.sort_by_key(|(_, took)| *took);
        for (r, _) in &responses {
            assert_eq!(r.status, 200, "{r:?}");
        }
        // Two within the rate; two held until the first two left the 1 s window, asked
        // again every 300 ms meanwhile.
        let took: Vec<Duration> = responses.iter().map(|(_, t)| *t).collect();
        assert!(took[1] < Duration::from_millis(300), "{took:?}");
        assert!(took[2] >= Duration::from_millis(900), "{took:?}");
        assert_eq!(origin.request_count(), 4);
    })
}

#[test]
fn spike_control_refuses_when_retries_run_out_or_the_queue_is_full() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("fine");
        // One retry after 600 ms (the window is still full then), one request queued at most.
        let config = documents(&[&simple_api(&origin.url()), &spike(600, 1, 1)]);
        let gw = Gateway::start(&[("api.yaml", &config)], &["--workers", "4"]);

        let mut responses = burst(&gw, 4, 1, "GET / HTTP/1.1\r\nHost: gateway.test\r\n\r\n");
        responses.sort_by_key(|(r, took)| (r.status, *took));
        let summary: Vec<(u16, Duration)> = responses.iter().map(|(r, t)| (r.status, *t)).collect();
        let statuses: Vec<u16> = summary.iter().map(|s| s.0).collect();
        assert_eq!(statuses, [200, 200, 429, 429], "{summary:?}");
        // The queue was full: refused at once. The queued one: refused after its retry.
        assert!(summary[2].1 < Duration::from_millis(600), "{summary:?}");
        assert!(summary[3].1 >= Duration::from_millis(600), "{summary:?}");
        for (r, _) in &responses[2..] {
            assert_eq!(r.text().trim_end(), "too many requests");
            assert_eq!(number(r, "x-ratelimit-limit"), 2);
            assert_eq!(number(r, "x-ratelimit-remaining"), 0);
            assert!(number(r, "retry-after") >= 1);
        }
        assert_eq!(origin.request_count(), 2);
    })
}
