//! Connection rules enforced at accept, when XDP is off or cannot load: the same deny and
//! allow lists and the same token buckets (`ringwall_common::rate`) as the kernel program,
//! decided from the peer address before the gateway reads a byte. The result is the same
//! apart from cost: here a refused connection has already completed its handshake.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hashbrown::HashMap;
use ringwall_common::rate::take_token;
use ringwall_common::{RateKey as BucketKey, TokenBucket, FAMILY_V4, FAMILY_V6};
use ringwall_config::{ConnectionRules, RateKey};

use crate::xdp::Counters;

/// Buckets kept at most; past that, full (idle) buckets are forgotten.
const MAX_BUCKETS: usize = 65_536;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    Denied,
    NotAllowed,
    RateLimited,
}

/// What the accept-time check did, kept across reconfigurations.
#[derive(Debug, Default)]
pub struct AcceptCounters {
    passed: AtomicU64,
    denied: AtomicU64,
    not_allowed: AtomicU64,
    rate_limited: AtomicU64,
}

impl AcceptCounters {
    pub fn read(&self) -> Counters {
        Counters {
            passed: self.passed.load(Ordering::Relaxed),
            drop_deny: self.denied.load(Ordering::Relaxed),
            drop_allow: self.not_allowed.load(Ordering::Relaxed),
            drop_rate: self.rate_limited.load(Ordering::Relaxed),
        }
    }
}

pub struct Admission {
    /// By the gateway's listener index: the port the listener got, and its rules.
    listeners: Vec<(u16, ConnectionRules)>,
    /// Shared by the workers so that a limit of N/s is N/s whatever the worker count.
    /// A lock, taken only here: at accept, for listeners with a rate limit, in the
    /// fallback path, never per request.
    /// Shared with the `Admission` a reload replaces: workers switch one by one, and a
    /// source must not find a fresh burst in between.
    #[allow(clippy::disallowed_types)]
    buckets: Arc<std::sync::Mutex<HashMap<BucketKey, TokenBucket>>>,
    epoch: Instant,
    counters: Arc<AcceptCounters>,
}

impl Admission {
    pub fn new(listeners: Vec<(u16, ConnectionRules)>) -> Self {
        Self {
            listeners,
            buckets: Arc::default(),
            epoch: Instant::now(),
            counters: Arc::default(),
        }
    }

    /// The same check with new rules, keeping the counters and the buckets (a reload
    /// must not hand every source a fresh burst).
    pub fn reconfigured(&self, listeners: Vec<(u16, ConnectionRules)>) -> Self {
        Self {
            listeners,
            buckets: self.buckets.clone(),
            epoch: self.epoch,
            counters: self.counters.clone(),
        }
    }

    pub fn counters(&self) -> Arc<AcceptCounters> {
        self.counters.clone()
    }

    /// Whether any listener has rules at all (otherwise there is nothing to check).
    pub fn is_empty(&self) -> bool {
        self.listeners.iter().all(|(_, r)| r.is_empty())
    }

    /// Decides, and counts, a connection from `peer` to listener `index`.
    pub fn check(&self, index: usize, peer: IpAddr) -> Verdict {
        let Some((port, rules)) = self.listeners.get(index) else {
            return Verdict::Admit;
        };
        if rules.is_empty() {
            return Verdict::Admit;
        }
        let peer = peer.to_canonical();
        let verdict = if rules.deny.iter().any(|n| n.contains(&peer)) {
            Verdict::Denied
        } else if !rules.admits(peer) {
            Verdict::NotAllowed
        } else if rules
            .rate
            .is_some_and(|rate| !self.take(*port, peer, rate.per_second, rate.burst, rate.key))
        {
            Verdict::RateLimited
        } else {
            Verdict::Admit
        };
        let c = &self.counters;
        let counter = match verdict {
            Verdict::Admit => &c.passed,
            Verdict::Denied => &c.denied,
            Verdict::NotAllowed => &c.not_allowed,
            Verdict::RateLimited => &c.rate_limited,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        verdict
    }

    /// A poisoned lock only means another worker panicked mid-update; the table itself
    /// is still a valid set of buckets.
    #[allow(clippy::disallowed_types)]
    fn lock_buckets(&self) -> std::sync::MutexGuard<'_, HashMap<BucketKey, TokenBucket>> {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self, port: u16, peer: IpAddr, rate: u32, burst: u32, key: RateKey) -> bool {
        let (family, addr) = match peer {
            IpAddr::V4(a) => {
                let mut bytes = [0u8; 16];
                bytes[..4].copy_from_slice(&a.octets());
                (FAMILY_V4, bytes)
            }
            IpAddr::V6(a) => (FAMILY_V6, a.octets()),
        };
        let key = BucketKey::new(port, family, addr, key == RateKey::Prefix);
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut buckets = self.lock_buckets();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            forget_idle(&mut buckets, now, rate, burst);
        }
        let bucket = buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::full(now, burst));
        take_token(bucket, now, rate, burst)
    }
}

/// Drops buckets that have refilled completely: they behave exactly like absent ones.
/// If every bucket is still refilling (a flood from as many real sources), the table is
/// cleared rather than allowed to grow without bound.
fn forget_idle(buckets: &mut HashMap<BucketKey, TokenBucket>, now: u64, rate: u32, burst: u32) {
    let capacity = u128::from(burst.max(1)) * 1000;
    buckets.retain(|_, b| {
        let elapsed = u128::from(now.saturating_sub(b.last_ns));
        let refilled = u128::from(b.tokens_milli) + elapsed * u128::from(rate) / 1_000_000;
        refilled < capacity
    });
    if buckets.len() >= MAX_BUCKETS {
        buckets.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringwall_config::ConnectionRate;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lists_decide_before_the_rate() {
        let rules = ConnectionRules::default()
            .with_deny(["10.0.0.7/32".parse().unwrap()])
            .with_allow(["10.0.0.0/24".parse().unwrap()]);
        let a = Admission::new(vec![(8081, rules), (8082, ConnectionRules::default())]);
        assert_eq!(a.check(0, ip("10.0.0.7")), Verdict::Denied);
        assert_eq!(a.check(0, ip("10.0.1.1")), Verdict::NotAllowed);
        assert_eq!(a.check(0, ip("10.0.0.8")), Verdict::Admit);
        assert_eq!(a.check(0, ip("::ffff:10.0.0.7")), Verdict::Denied);
        // Another listener's rules are its own.
        assert_eq!(a.check(1, ip("10.0.0.7")), Verdict::Admit);
        let c = a.counters().read();
        assert_eq!((c.passed, c.drop_deny, c.drop_allow), (1, 2, 1));
        // New rules keep the counters.
        let deny_other = ConnectionRules::default().with_deny(["10.9.9.9/32".parse().unwrap()]);
        let b = a.reconfigured(vec![(8081, deny_other)]);
        assert_eq!(b.check(0, ip("10.0.0.7")), Verdict::Admit);
        assert_eq!(b.counters().read().passed, 2);
    }

    #[test]
    fn rate_limits_per_source_or_prefix() {
        let rate = |key| {
            ConnectionRules::default().with_rate(ConnectionRate {
                per_second: 1,
                burst: 3,
                key,
            })
        };
        let a = Admission::new(vec![(1, rate(RateKey::Source)), (2, rate(RateKey::Prefix))]);
        let admitted = |l, s: &str| {
            (0..10)
                .filter(|_| a.check(l, ip(s)) == Verdict::Admit)
                .count()
        };
        // The burst, then (within the test's milliseconds) nothing more.
        assert_eq!(admitted(0, "192.0.2.1"), 3);
        assert_eq!(admitted(0, "192.0.2.2"), 3);
        // Per /24: the second address shares the first one's bucket.
        assert_eq!(admitted(1, "192.0.2.1"), 3);
        assert_eq!(admitted(1, "192.0.2.2"), 0);
        assert_eq!(admitted(1, "192.0.3.1"), 3);
        assert_eq!(a.counters().read().drop_rate, 7 + 7 + 7 + 10 + 7);
        // A reload keeps the buckets: no fresh burst.
        let b = a.reconfigured(vec![(1, rate(RateKey::Source))]);
        assert_eq!(b.check(0, ip("192.0.2.1")), Verdict::RateLimited);
    }

    /// Workers keep checking with the old `Admission` until they take the update, but
    /// `reconfigured` moves the buckets out of it (`std::mem::take`): in that window every
    /// source starts from a full bucket again, and what it spends there is thrown away.
    #[test]
    fn the_old_rules_keep_their_buckets_until_the_workers_switch() {
        let rate = ConnectionRules::default().with_rate(ConnectionRate {
            per_second: 1,
            burst: 2,
            key: RateKey::Source,
        });
        let old = Admission::new(vec![(1, rate.clone())]);
        assert_eq!(old.check(0, ip("192.0.2.1")), Verdict::Admit);
        assert_eq!(old.check(0, ip("192.0.2.1")), Verdict::Admit);
        assert_eq!(old.check(0, ip("192.0.2.1")), Verdict::RateLimited);
        let _new = old.reconfigured(vec![(1, rate)]);
        // A worker that has not applied the update yet still asks `old`.
        assert_eq!(
            old.check(0, ip("192.0.2.1")),
            Verdict::RateLimited,
            "a reload handed the source a fresh burst on the rules still in force"
        );
    }

    #[test]
    fn idle_buckets_are_forgotten_first() {
        let mut buckets = HashMap::new();
        let key = |n: u8| BucketKey::new(1, FAMILY_V4, [n; 16], false);
        buckets.insert(
            key(1),
            TokenBucket {
                tokens_milli: 0,
                last_ns: 0,
            },
        );
        buckets.insert(
            key(2),
            TokenBucket {
                tokens_milli: 0,
                last_ns: 4_000_000_000,
            },
        );
        // At 5 s, rate 1/s, burst 2: the first has refilled, the second has not.
        forget_idle(&mut buckets, 5_000_000_000, 1, 2);
        assert!(!buckets.contains_key(&key(1)));
        assert!(buckets.contains_key(&key(2)));
    }
}
