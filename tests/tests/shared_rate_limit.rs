//! `rate-limiting-flex` shared by replicas through a real `redis-server`: three `ringwall`
//! processes on one Redis pass at most the limit together (and lose at most one grant each,
//! the README's bound); with Redis killed they keep serving (`failOpen`, the default) or
//! answer 503 (`failOpen: false`); with Redis back, counting is shared again without a
//! restart. The same on a Redis Cluster, and over TLS (a client certificate, a wrong CA).

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ringwall_tests::redis::{RedisCluster, RedisSentinel, RedisServer};
use ringwall_tests::tls::Pki;
use ringwall_tests::yaml::{configuration, documents, policy_binding, simple_api};
use ringwall_tests::*;

/// The most one replica reserves and may leave unused, for a limit of `max`
/// (`max(1, ceil(max / 100))`, as the README states).
fn grant_cap(max: usize) -> usize {
    max.div_ceil(100).max(1)
}

/// An ApiInstance to `origin` with a rate limit of `max` per minute per `X-Client-Id`, and
/// `sharedStorage` on `redis`.
fn config(origin: &Origin, redis: &RedisServer, max: usize, extra: &str) -> String {
    let storage = format!(
        "sharedStorage:\n  redis:\n    address: {}\n",
        redis.address()
    );
    config_with(origin, &storage, max, extra)
}

/// [`config`] with the `sharedStorage` block given as it is.
fn config_with(origin: &Origin, storage: &str, max: usize, extra: &str) -> String {
    let limit = format!(
        "rateLimits:\n  - maximumRequests: {max}\n    timePeriodInMilliseconds: 60000\n\
         keySelector: \"#[attributes.headers['x-client-id']]\"\n{extra}"
    );
    documents(&[
        &configuration("shared", storage),
        &simple_api(&origin.url()),
        &policy_binding("limit", "api", "rate-limiting-flex", None, &limit, &[]),
    ])
}

fn replicas(n: usize, config: &str) -> Vec<Gateway> {
    let replicas: Vec<Gateway> = (0..n)
        .map(|_| Gateway::start(&[("api.yaml", config)], &["--workers", "2"]))
        .collect();
    for gw in &replicas {
        wait_storage(gw, true);
    }
    replicas
}

/// `ringwall_shared_storage_up` of `gw`.
fn storage_up(gw: &Gateway) -> Option<bool> {
    let text = Client::connect(gw.admin_addr()).get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix("ringwall_shared_storage_up "))
        .map(|v| v.trim() == "1")
}

/// Waits until the gauge says `up`.
fn wait_storage(gw: &Gateway, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while storage_up(gw) != Some(up) {
        assert!(
            Instant::now() < deadline,
            "ringwall_shared_storage_up never became {up}: {}",
            gw.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `each` requests of client `key` on each of `per_replica` connections to every replica,
/// all at once; the statuses.
fn drive(replicas: &[Gateway], per_replica: usize, each: usize, key: &str) -> Vec<u16> {
    let clients = replicas.len() * per_replica;
    let start = Arc::new(Barrier::new(clients));
    let raw = format!("GET /orders HTTP/1.1\r\nHost: gateway.test\r\nX-Client-Id: {key}\r\n\r\n");
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let addr = replicas[i % replicas.len()].addr("api");
            let (start, raw) = (start.clone(), raw.clone());
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                start.wait();
                (0..each)
                    .map(|_| client.request(raw.as_bytes()).status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect()
}

/// How many of `statuses` are 200, failing on anything but 200 and 429.
#[track_caller]
fn passed(statuses: &[u16]) -> usize {
    let other: Vec<_> = statuses
        .iter()
        .filter(|s| !matches!(s, 200 | 429))
        .collect();
    assert!(other.is_empty(), "unexpected statuses: {other:?}");
    statuses.iter().filter(|&&s| s == 200).count()
}

#[test]
fn three_replicas_pass_the_limit_together() {
    within(Duration::from_secs(60), || {
        let redis = RedisServer::start();
        let origin = Origin::ok("fine");
        let max = 300;
        let replicas = replicas(3, &config(&origin, &redis, max, ""));
        // 2 clients per replica, 600 requests of one key.
        let ok = passed(&drive(&replicas, 2, 100, "alpha"));
        assert!(ok <= max, "{ok} passed, limit {max}");
        assert!(ok >= max - 3 * grant_cap(max), "{ok} passed, limit {max}");
        assert_eq!(origin.request_count(), ok);
        // Each key has its window.
        let ok = passed(&drive(&replicas, 1, 10, "beta"));
        assert_eq!(ok, 30);
    })
}

#[test]
fn losing_redis_fails_open_and_its_return_shares_again() {
    within(Duration::from_secs(60), || {
        let mut redis = RedisServer::start();
        let origin = Origin::ok("fine");
        let max = 100;
        let replicas = replicas(3, &config(&origin, &redis, max, ""));
        let ok = passed(&drive(&replicas, 1, 50, "before"));
        assert!((max - 3 * grant_cap(max)..=max).contains(&ok), "{ok}");

        // Down: every request still gets an answer from the local limit, none a 5xx.
        redis.stop();
        let statuses = drive(&replicas, 2, 30, "during");
        assert_eq!(passed(&statuses), statuses.len());
        for gw in &replicas {
            wait_storage(gw, false);
        }
        // Locally, each replica allows the limit on its own.
        let ok = passed(&drive(&replicas, 1, 120, "local"));
        assert_eq!(ok, 3 * max);
        // One warning per outage, not one per request.
        for gw in &replicas {
            let warnings = gw.stderr().matches("shared storage unavailable").count();
            assert_eq!(warnings, 1, "{}", gw.stderr());
        }

        // Back on the same port, empty: counting is shared again, no restart.
        redis.restart();
        for gw in &replicas {
            wait_storage(gw, true);
            gw.wait_stderr("shared storage is back", Duration::from_secs(5));
        }
        let ok = passed(&drive(&replicas, 1, 50, "after"));
        assert!((max - 3 * grant_cap(max)..=max).contains(&ok), "{ok}");
    })
}

#[test]
fn with_fail_open_false_requests_get_503_while_redis_is_down() {
    within(Duration::from_secs(60), || {
        let mut redis = RedisServer::start();
        let origin = Origin::ok("fine");
        let replicas = replicas(1, &config(&origin, &redis, 100, "failOpen: false\n"));
        let gw = &replicas[0];
        let get = |key: &str| {
            let raw = format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Client-Id: {key}\r\n\r\n");
            Client::connect(gw.addr("api")).request(raw.as_bytes())
        };
        assert_eq!(get("a").status, 200);
        redis.stop();
        // The first request may still find the connection up and wait for its timeout.
        let _ = get("b");
        wait_storage(gw, false);
        let refused = get("c");
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.text().trim_end(), "rate limit storage unavailable");
        redis.restart();
        wait_storage(gw, true);
        assert_eq!(get("d").status, 200);
    })
}

#[test]
fn replicas_find_redis_through_a_sentinel() {
    within(Duration::from_secs(60), || {
        let redis = RedisServer::start();
        let sentinel = RedisSentinel::start(&redis, "ringwall-master");
        let origin = Origin::ok("fine");
        let max = 100;
        let storage = format!(
            "sharedStorage:\n  sentinel:\n    addresses: [{}]\n    masterName: ringwall-master\n",
            sentinel.address()
        );
        let replicas = replicas(2, &config_with(&origin, &storage, max, ""));
        let ok = passed(&drive(&replicas, 2, 50, "gamma"));
        assert!(ok <= max, "{ok} passed, limit {max}");
        assert!(ok >= max - 2 * grant_cap(max), "{ok} passed, limit {max}");
        assert_eq!(origin.request_count(), ok);
    })
}

#[test]
fn replicas_share_limits_on_a_redis_cluster() {
    within(Duration::from_secs(90), || {
        let cluster = RedisCluster::start(3);
        let origin = Origin::ok("fine");
        let max = 60;
        let storage = format!(
            "sharedStorage:\n  redis:\n    addresses: [{}]\n",
            cluster.addresses().join(", ")
        );
        let replicas = replicas(3, &config_with(&origin, &storage, max, ""));
        let ok = passed(&drive(&replicas, 2, 20, "alpha"));
        assert!(ok <= max, "{ok} passed, limit {max}");
        assert!(ok >= max - 3 * grant_cap(max), "{ok} passed, limit {max}");
        // Each key has its own window, wherever its slot lives.
        for key in ["k1", "k2", "k3", "k4", "k5", "k6"] {
            let ok = passed(&drive(&replicas, 1, 25, key));
            assert!(ok <= max, "{key}: {ok} passed, limit {max}");
            assert!(ok >= max - 3 * grant_cap(max), "{key}: {ok} passed");
        }
        let counts = cluster.key_counts();
        let holding = counts.iter().filter(|&&n| n > 0).count();
        assert!(
            holding >= 2,
            "the keys did not spread over the nodes: {counts:?}"
        );
        assert_eq!(counts.iter().sum::<u64>(), 7, "{counts:?}");
    })
}

/// `sharedStorage.redis` over TLS to `redis` (named `redis.test` in its certificate),
/// trusting `ca`, with `extra` TLS fields.
fn tls_storage(redis: &RedisServer, ca: &Pki, extra: &str) -> String {
    format!(
        "sharedStorage:\n  redis:\n    address: {}\n    tls:\n      trustedCA: '{}'\n      \
         serverName: redis.test\n{extra}",
        redis.address(),
        ca.ca_path().display()
    )
}

#[test]
fn replicas_reach_a_tls_only_redis_with_a_client_certificate() {
    within(Duration::from_secs(60), || {
        let pki = Pki::new("redis CA");
        let server = pki.leaf("redis", &["redis.test"], false);
        let client = pki.leaf("ringwall", &[], true);
        let redis = RedisServer::start_tls(&pki, &server, true);
        let origin = Origin::ok("fine");
        let max = 100;
        let certificate = format!(
            "      certificate:\n        certFile: '{}'\n        keyFile: '{}'\n",
            client.crt.display(),
            client.key.display()
        );
        let storage = tls_storage(&redis, &pki, &certificate);
        let replicas = replicas(2, &config_with(&origin, &storage, max, ""));
        let ok = passed(&drive(&replicas, 2, 50, "gamma"));
        assert!(ok <= max, "{ok} passed, limit {max}");
        assert!(ok >= max - 2 * grant_cap(max), "{ok} passed, limit {max}");
        assert_eq!(origin.request_count(), ok);
    })
}

#[test]
fn an_untrusted_redis_certificate_keeps_storage_down_and_fails_open() {
    within(Duration::from_secs(60), || {
        let pki = Pki::new("redis CA");
        let server = pki.leaf("redis", &["redis.test"], false);
        let redis = RedisServer::start_tls(&pki, &server, false);
        let other = Pki::new("another CA");
        let origin = Origin::ok("fine");
        let max = 5;
        let wrong = config_with(&origin, &tls_storage(&redis, &other, ""), max, "");
        let gw = Gateway::start(&[("api.yaml", &wrong)], &["--workers", "1"]);
        gw.wait_stderr("shared storage unavailable", Duration::from_secs(10));
        assert_eq!(storage_up(&gw), Some(false));
        // failOpen (the default): the limit is counted by this replica alone.
        let ok = passed(&drive(std::slice::from_ref(&gw), 1, 8, "delta"));
        assert_eq!(ok, max);
        assert_eq!(storage_up(&gw), Some(false));

        // skipVerify trusts any certificate.
        let storage = tls_storage(&redis, &other, "      skipVerify: true\n");
        let replicas = replicas(1, &config_with(&origin, &storage, max, ""));
        let ok = passed(&drive(&replicas, 1, 8, "delta"));
        assert_eq!(ok, max);
    })
}
