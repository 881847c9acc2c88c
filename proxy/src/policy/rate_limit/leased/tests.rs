//! Replicas as `Leased` stores sharing a real `redis-server`.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::*;
use crate::shared::tests::{wait_up, RedisServer};

/// The limit most tests run under: wide enough that only what a test does on purpose
/// reaches it.
const A_THOUSAND_A_MINUTE: Limit = Limit {
    max: 1000,
    period: 60_000,
};

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
        SPARES,
    ))
}

/// A replica whose table is one set (every key collides) and one set of spares.
fn crowded(redis: &RedisServer, limit: Limit) -> Arc<Leased> {
    let handle = Handle::new(redis.storage());
    handle.start();
    wait_up(&handle, true);
    Arc::new(Leased::with_slots(
        vec![limit],
        "binding",
        handle,
        Instant::now(),
        WAYS,
        WAYS,
    ))
}

/// What the fleet has reserved in Redis of `key`'s window under `limit` (the first).
fn reserved(l: &Leased, key: &str, limit: Limit) -> u64 {
    let (tx, rx) = std::sync::mpsc::channel();
    let window = Window {
        key: format!(
            "ringwall:rl:{{binding:{key}}}:0:{}:{}",
            limit.max, limit.period
        ),
        want: 0,
        max: limit.max,
        period: limit.period,
    };
    l.storage.lease(Lease::new(
        vec![window],
        Box::new(move |result, _| {
            let _ = tx.send(result);
        }),
    ));
    let grants = rx.recv_timeout(Duration::from_secs(5)).expect("an answer");
    limit.max - grants.expect("redis")[0].left
}

fn now(l: &Leased) -> u64 {
    ms(l.epoch.elapsed())
}

/// Waits until no refill of `l` is in flight.
fn refills_landed(l: &Leased) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while l.slots.iter().any(|slot| slot.busy.load(SeqCst)) {
        assert!(Instant::now() < deadline, "a refill never landed");
        std::thread::sleep(Duration::from_millis(1));
    }
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

/// A crowded replica (1,000 a minute) where the key `k1` (hash 1) holds way 0, its
/// refills landed.
fn k1_in_way_0(redis: &RedisServer) -> Arc<Leased> {
    let limit = A_THOUSAND_A_MINUTE;
    let l = crowded(redis, limit);
    assert!(admit(&l, 1, "k1"));
    refills_landed(&l);
    assert_eq!(l.slots[0].key.load(SeqCst), 1);
    l
}

#[test]
fn replicas_together_pass_at_most_the_limit_and_lose_at_most_a_grant_each() {
    let redis = RedisServer::start();
    let limit = A_THOUSAND_A_MINUTE;
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

#[test]
fn keys_sharing_a_set_keep_their_quota() {
    let redis = RedisServer::start();
    let limit = A_THOUSAND_A_MINUTE;
    let l = crowded(&redis, limit);
    let keys = [(1u64, "a"), (2, "b"), (3, "c")];
    let mut passed = [0u64; 3];
    for _ in 0..1100 {
        for (i, &(hash, key)) in keys.iter().enumerate() {
            if admit(&l, hash, key) {
                passed[i] += 1;
            }
        }
    }
    let cap = shared::grant_cap(limit.max);
    for (i, &(_, key)) in keys.iter().enumerate() {
        assert!(passed[i] <= 1000, "{key}: {passed:?}");
        assert!(passed[i] >= 1000 - cap, "{key}: {passed:?}");
        assert_eq!(reserved(&l, key, limit), 1000, "{key}");
    }
}

#[test]
fn keys_rotating_through_a_full_set_cannot_spend_a_live_keys_quota() {
    let redis = RedisServer::start();
    let limit = A_THOUSAND_A_MINUTE;
    let l = crowded(&redis, limit);
    let cap = shared::grant_cap(limit.max);
    let mut passed = 0;
    for round in 0..1100u64 {
        if admit(&l, 7, "victim") {
            passed += 1;
        }
        // A new key each time, as a client rotating its key would send.
        let attacker = format!("attacker-{round}");
        assert!(admit(&l, 1000 + round, &attacker), "{attacker}");
        if round % 100 == 99 && round < 900 {
            let held = reserved(&l, "victim", limit) - passed;
            assert!(held <= cap, "round {round}: {held} reserved and unused");
        }
    }
    assert!(passed <= 1000, "{passed} passed");
    assert!(passed >= 1000 - cap, "{passed} passed");
}

#[test]
fn a_new_key_takes_only_a_slot_with_no_tokens() {
    let redis = RedisServer::start();
    let limit = A_THOUSAND_A_MINUTE;
    let l = crowded(&redis, limit);
    // Four keys hold the four ways, with tokens.
    for hash in 1..=4u64 {
        for _ in 0..3 {
            assert!(admit(&l, hash, &format!("k{hash}")));
        }
    }
    // Their refills in flight land first.
    refills_landed(&l);
    let held = |l: &Leased| {
        (0..WAYS)
            .map(|s| l.slots[s].key.load(SeqCst))
            .collect::<Vec<_>>()
    };
    let before = held(&l);
    assert_eq!(before, [1, 2, 3, 4]);
    // A fifth gets one-off leases in the spares, one token at a time.
    for _ in 0..3 {
        assert!(admit(&l, 5, "k5"));
    }
    assert_eq!(held(&l), before);
    assert_eq!(reserved(&l, "k5", limit), 3);
    // Once a way's tokens are spent, the key that finds it free takes it.
    let tokens = l.lane(0, 0).word.load(SeqCst) & COUNT_MASK;
    l.lane(0, 0).word.fetch_sub(tokens, SeqCst);
    assert!(admit(&l, 5, "k5"));
    assert_eq!(l.slots[0].key.load(SeqCst), 5);
}

#[test]
fn a_refill_from_a_window_redis_started_anew_replaces_the_old_tokens() {
    let redis = RedisServer::start();
    let limit = A_THOUSAND_A_MINUTE;
    let l = replica(&redis, &[limit]);
    let lane = l.lane(0, 0);
    lane.word.store((60_000 << COUNT_BITS) | 5, SeqCst);
    // The same window, as seen by a later refill: added.
    let same = Grant {
        granted: 3,
        ttl: 59_000,
        left: 900,
    };
    l.apply(0, 0, &same, 1_020, 1_030);
    assert_eq!(lane.word.load(SeqCst), (60_020 << COUNT_BITS) | 8);
    // Redis lost the key and started a new window: the old tokens go.
    let anew = Grant {
        granted: 3,
        ttl: 60_000,
        left: 997,
    };
    l.apply(0, 0, &anew, 2_000, 2_010);
    assert_eq!(lane.word.load(SeqCst), (62_000 << COUNT_BITS) | 3);
}

#[test]
fn a_refill_that_would_ask_for_nothing_is_not_sent() {
    let redis = RedisServer::start();
    let l = k1_in_way_0(&redis);
    // A batch of two whose last refill was long ago (at 0, over 4 x HORIZON_MS before
    // now): the next one halves it to one, which the one token left already fills.
    std::thread::sleep(Duration::from_millis(5 * HORIZON_MS));
    let t = now(&l);
    l.slots[0].batch.store(2, SeqCst);
    l.slots[0].refilled.store(0, SeqCst);
    l.lane(0, 0)
        .word
        .store(((t + 60_000) << COUNT_BITS) | 1, SeqCst);
    assert!(
        !l.refill(0, 1, t, || b"k1".to_vec()),
        "a refill for nothing was sent"
    );
    assert!(!l.slots[0].busy.load(SeqCst));
    // Spending that token asks for the next one.
    assert!(admit(&l, 1, "k1"));
    refills_landed(&l);
    assert!(
        l.holds_tokens(0, now(&l)),
        "the key was left without tokens"
    );
}

#[test]
fn a_refill_that_lands_low_sends_the_next() {
    let redis = RedisServer::start();
    let l = k1_in_way_0(&redis);
    // A refill of a batch of eight in flight, while requests spent every token: the
    // requests found the flag held and sent nothing.
    let slot = &l.slots[0];
    slot.busy.store(true, SeqCst);
    slot.batch.store(8, SeqCst);
    let lane = l.lane(0, 0);
    lane.word.store((now(&l) + 60_000) << COUNT_BITS, SeqCst);
    // It lands with one token: half a batch or less.
    let landed = Grant {
        granted: 1,
        ttl: 60_000,
        left: 900,
    };
    l.refilled(0, 1, Ok(vec![landed]), Instant::now(), "k1".to_owned());
    refills_landed(&l);
    let tokens = lane.word.load(SeqCst) & COUNT_MASK;
    assert!(tokens > 1, "{tokens} token(s) and no refill in flight");
}

#[test]
fn a_refill_that_lands_in_a_full_or_ended_window_sends_no_next() {
    let redis = RedisServer::start();
    let limit = A_THOUSAND_A_MINUTE;
    let l = k1_in_way_0(&redis);
    let reserved_before = reserved(&l, "k1", limit);
    let lane = l.lane(0, 0);
    // Each lands with one token of a batch of eight, as in the test above, but Redis has
    // nothing left in the window, or the window ended before the answer came.
    let full = Grant {
        granted: 1,
        ttl: 60_000,
        left: 0,
    };
    let ended = Grant {
        granted: 1,
        ttl: 1,
        left: 900,
    };
    for (grant, sent) in [(full, Instant::now()), (ended, l.epoch)] {
        l.slots[0].busy.store(true, SeqCst);
        l.slots[0].batch.store(8, SeqCst);
        lane.word.store(0, SeqCst);
        lane.full_until.store(0, SeqCst);
        l.refilled(0, 1, Ok(vec![grant]), sent, "k1".to_owned());
        assert!(
            !l.slots[0].busy.load(SeqCst),
            "{grant:?}: a refill was sent"
        );
    }
    assert_eq!(reserved(&l, "k1", limit), reserved_before);
}

#[test]
fn a_window_marked_full_refuses_only_once_its_last_tokens_are_spent() {
    // Nothing here reaches Redis: the storage is never started.
    let storage = Handle::new(RedisServer::storage_at(1));
    let limit = A_THOUSAND_A_MINUTE;
    let l = Arc::new(Leased::with_slots(
        vec![limit],
        "binding",
        storage,
        Instant::now(),
        WAYS,
        WAYS,
    ));
    // The last grant of a window lands on one thread while a request that found no token
    // asks on another whether the window is full.
    let last = Grant {
        granted: 1,
        ttl: 60_000,
        left: 0,
    };
    let (start, end) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    const ROUNDS: usize = 10_000;
    let lands = {
        let (l, start, end) = (l.clone(), start.clone(), end.clone());
        std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                start.wait();
                let t = now(&l);
                l.apply(0, 0, &last, t, t);
                end.wait();
            }
        })
    };
    let lane = l.lane(0, 0);
    let mut refused = 0;
    for round in 0..ROUNDS {
        lane.word.store(0, SeqCst);
        lane.full_until.store(0, SeqCst);
        start.wait();
        while lane.word.load(SeqCst) & COUNT_MASK == 0 {
            if l.known_full(0, now(&l)).is_some() {
                refused += 1;
                break;
            }
            std::hint::spin_loop();
        }
        end.wait();
        // Once that token is spent, the window refuses here.
        lane.word.fetch_sub(1, SeqCst);
        assert!(l.known_full(0, now(&l)).is_some(), "round {round}");
    }
    lands.join().expect("the applying thread");
    assert_eq!(refused, 0, "refused with the last token on its way");
}
