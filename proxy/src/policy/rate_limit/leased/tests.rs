//! Replicas as `Leased` stores sharing a real `redis-server`.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::shared::tests::{wait_up, RedisServer};

fn replica(redis: &RedisServer, limits: &[Limit]) -> Arc<Leased> {
    let handle = Handle::new(redis.storage());
    handle.start();
    wait_up(&handle, true);
    Arc::new(Leased::with_slots(
        limits.to_vec(),
        "binding",
        handle,
        Instant::now(),
        64,
    ))
}

fn now(l: &Leased) -> u64 {
    ms(l.epoch.elapsed())
}

/// A request as the policy runs it: asked again while a refill is in flight.
fn admit(l: &Arc<Leased>, hash: u64, key: &str) -> bool {
    for _ in 0..5000 {
        match l.take(hash, now(l), || key.as_bytes().to_vec()) {
            Outcome::Decided(d) => return d.admitted,
            Outcome::Wait => std::thread::sleep(Duration::from_micros(200)),
            Outcome::Unavailable => panic!("storage unavailable"),
        }
    }
    panic!("no lease came")
}

#[test]
fn replicas_together_pass_at_most_the_limit_and_lose_at_most_a_grant_each() {
    let redis = RedisServer::start();
    let limit = Limit {
        max: 1000,
        period: 60_000,
    };
    let replicas: Vec<Arc<Leased>> = (0..3).map(|_| replica(&redis, &[limit])).collect();
    let passed = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (l, passed) = (replicas[i % 3].clone(), passed.clone());
            // Each replica hashes the key its own way; the text is what they agree on.
            let hash = 0x1234_5678 + i as u64 % 3;
            std::thread::spawn(move || {
                for _ in 0..400 {
                    if admit(&l, hash, "client-a") {
                        passed.fetch_add(1, SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let passed = passed.load(SeqCst);
    let bound = 3 * shared::grant_cap(limit.max);
    assert!(passed <= 1000, "{passed} passed");
    assert!(passed >= 1000 - bound, "{passed} passed");
    // Another key has its own window.
    assert!(admit(&replicas[0], 99, "client-b"));
}

#[test]
fn every_limit_needs_a_token_and_a_full_window_refuses_without_asking() {
    let redis = RedisServer::start();
    let limits = [
        Limit {
            max: 3,
            period: 60_000,
        },
        Limit {
            max: 500,
            period: 1000,
        },
    ];
    let l = replica(&redis, &limits);
    for _ in 0..3 {
        assert!(admit(&l, 7, "k"));
    }
    assert!(!admit(&l, 7, "k"));
    // Known full: decided here, with the window's end for the headers.
    match l.take(7, now(&l), || unreachable!("no refill for a full window")) {
        Outcome::Decided(d) => {
            assert!(!d.admitted);
            assert_eq!(d.limit, 3);
            assert!(d.reset > 50_000, "{d:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn long_or_odd_keys_go_to_redis_hashed() {
    assert_eq!(redis_key_text(b"client-a"), "client-a");
    assert!(redis_key_text(b"a{b}").starts_with("sha256:"));
    assert_eq!(redis_key_text(&[b'x'; 200]).len(), 7 + 64);
}
