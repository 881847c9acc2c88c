//! Passive health of upstream endpoints and the retry budget, per worker. An endpoint that
//! refuses or times out a connect, or answers 5xx [`CONSECUTIVE_5XX`] times in a row, is
//! ejected: the worker's choice of address skips it for an interval that doubles with each
//! ejection (1 s up to 30 s) and is forgotten once it answers again. When every endpoint is
//! ejected they are all used anyway, as Envoy's panic threshold does: a guess beats a 502.
//!
//! Retries (a connect that failed, or a reset before any response byte) are bounded per
//! request by the caller and per worker here: over a 10 s window, at most a fifth of the
//! requests (and always 3) may be retries, so a failing upstream is not sent twice the load.
//!
//! Per worker, so plain cells and no lock: each worker learns on its own, which is what a
//! worker that keeps its own upstream connections needs anyway.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

/// Answers of 5xx in a row that eject an endpoint.
pub const CONSECUTIVE_5XX: u32 = 5;
const FIRST_EJECTION: Duration = Duration::from_secs(1);
const LONGEST_EJECTION: Duration = Duration::from_secs(30);
const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// Retries always allowed in a window, whatever the share.
const MIN_RETRIES: u32 = 3;

#[derive(Debug, Default, Clone, Copy)]
struct Endpoint {
    /// Skipped until then.
    until: Option<Instant>,
    /// Ejections so far, for the growing interval.
    ejections: u32,
    /// 5xx answers in a row.
    errors: u32,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    requests: u32,
    retries: u32,
}

#[derive(Debug)]
pub struct Health {
    /// Only endpoints that failed lately: empty while all is well.
    endpoints: RefCell<HashMap<SocketAddr, Endpoint>>,
    window: Cell<Window>,
    next: Cell<usize>,
    /// Requests in flight per endpoint, for Services balanced by least request.
    outstanding: RefCell<HashMap<SocketAddr, u32>>,
    rng: Cell<u64>,
}

/// How a request's endpoint is chosen (a Service's `loadBalancing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    RoundRobin,
    /// At random in proportion to the endpoints' weights.
    Weighted,
    LeastRequest,
    /// Rendezvous hashing on this key: the same endpoint while it stays usable, and only the
    /// keys of an endpoint that goes move.
    Hash(u64),
}

/// A request counted in flight to an endpoint (see [`Health::in_flight`]).
pub struct InFlight<'a> {
    health: &'a Health,
    addr: SocketAddr,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.health.outstanding.borrow_mut().get_mut(&self.addr) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The weight of `addr` for `key` in rendezvous hashing.
fn rendezvous(key: u64, addr: &SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    addr.hash(&mut h);
    h.finish()
}

/// A key for [`Choice::Hash`]: the same for the same bytes in every worker and process.
pub fn hash_key(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

impl Default for Health {
    fn default() -> Self {
        Health {
            endpoints: RefCell::default(),
            window: Cell::new(Window {
                start: Instant::now(),
                requests: 0,
                retries: 0,
            }),
            next: Cell::new(0),
            outstanding: RefCell::default(),
            rng: Cell::new(0x9e37_79b9_7f4a_7c15),
        }
    }
}

/// What became of an exchange with an endpoint, for its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered below 500.
    Answered,
    /// It answered 5xx.
    ServerError,
    /// The connect was refused, reset or timed out.
    Unreachable,
}

impl Health {
    /// An endpoint of `addrs` for a request, chosen `how`, among those neither ejected nor
    /// `down` (health checks) unless all are, and other than `avoid` (the one a retry
    /// leaves, when there is another).
    pub fn pick(
        &self,
        addrs: &[SocketAddr],
        avoid: Option<SocketAddr>,
        how: Choice,
        weights: &[u32],
        down: &dyn Fn(&SocketAddr) -> bool,
        now: Instant,
    ) -> Option<SocketAddr> {
        let turn = self.next.get();
        self.next.set(turn.wrapping_add(1));
        let len = addrs.len();
        if len == 0 {
            return None;
        }
        let nth = |i: usize| addrs[(turn + i) % len];
        let endpoints = self.endpoints.borrow();
        if endpoints.is_empty() && avoid.is_none() && how == Choice::RoundRobin && !down(&nth(0)) {
            return Some(nth(0));
        }
        let usable = |addr: &SocketAddr| {
            Some(*addr) != avoid
                && !down(addr)
                && endpoints
                    .get(addr)
                    .and_then(|e| e.until)
                    .is_none_or(|until| until <= now)
        };
        let candidates = addrs.iter().filter(|a| usable(a));
        let chosen = match how {
            Choice::RoundRobin => (0..len).map(nth).find(|a| usable(a)),
            Choice::Hash(key) => candidates.max_by_key(|a| rendezvous(key, a)).copied(),
            Choice::Weighted => {
                let weight = |a: &SocketAddr| {
                    let i = addrs.iter().position(|x| x == a).unwrap_or(0);
                    u64::from(weights.get(i).copied().unwrap_or(1))
                };
                let total: u64 = candidates.clone().map(weight).sum();
                let mut point = (self.random() as u64) % total.max(1);
                candidates
                    .clone()
                    .find(|a| {
                        let w = weight(a);
                        if point < w {
                            return true;
                        }
                        point -= w;
                        false
                    })
                    .copied()
            }
            Choice::LeastRequest => {
                let count = candidates.clone().count();
                let (first, second) = (self.random(), self.random());
                let a = candidates.clone().nth(first % count.max(1));
                let b = candidates.clone().nth(second % count.max(1));
                let load =
                    |addr: &&SocketAddr| self.outstanding.borrow().get(*addr).copied().unwrap_or(0);
                match (a, b) {
                    (Some(a), Some(b)) => Some(*std::cmp::min_by_key(a, b, |x| load(x))),
                    _ => None,
                }
            }
        };
        chosen
            .or_else(|| (0..len).map(nth).find(|&a| Some(a) != avoid))
            .or(Some(nth(0)))
    }

    /// Counts a request in flight to `addr` until the value is dropped, for
    /// [`Choice::LeastRequest`].
    pub fn in_flight(&self, addr: SocketAddr) -> InFlight<'_> {
        *self.outstanding.borrow_mut().entry(addr).or_default() += 1;
        InFlight { health: self, addr }
    }

    /// A cheap random number (xorshift64*), for the two choices of a least-request pick.
    fn random(&self) -> usize {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as usize
    }

    /// Records how an exchange with `addr` went.
    pub fn record(&self, addr: SocketAddr, outcome: Outcome, now: Instant) {
        let mut endpoints = self.endpoints.borrow_mut();
        if outcome == Outcome::Answered {
            if !endpoints.is_empty() {
                endpoints.remove(&addr);
            }
            return;
        }
        let e = endpoints.entry(addr).or_default();
        let eject = match outcome {
            Outcome::Unreachable => true,
            _ => {
                e.errors += 1;
                e.errors >= CONSECUTIVE_5XX
            }
        };
        if eject {
            let interval = FIRST_EJECTION
                .saturating_mul(1 << e.ejections.min(5))
                .min(LONGEST_EJECTION);
            e.until = Some(now + interval);
            e.ejections += 1;
            e.errors = 0;
            metrics::counter!(crate::metrics::UPSTREAM_EJECTIONS).increment(1);
        }
    }

    /// Counts a request against the retry budget.
    pub fn request(&self, now: Instant) {
        let mut w = self.current(now);
        w.requests = w.requests.saturating_add(1);
        self.window.set(w);
    }

    /// Takes a retry from the budget, if there is one left.
    pub fn retry(&self, now: Instant) -> bool {
        let mut w = self.current(now);
        if w.retries >= MIN_RETRIES.max(w.requests / 5) {
            return false;
        }
        w.retries += 1;
        self.window.set(w);
        true
    }

    fn current(&self, now: Instant) -> Window {
        let w = self.window.get();
        if now.duration_since(w.start) < BUDGET_WINDOW {
            return w;
        }
        Window {
            start: now,
            requests: 0,
            retries: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn an_unreachable_endpoint_is_skipped_for_a_growing_interval() {
        let h = Health::default();
        let addrs = [addr(1), addr(2)];
        let t0 = Instant::now();
        h.record(addr(1), Outcome::Unreachable, t0);
        for _ in 0..4 {
            assert_eq!(
                h.pick(&addrs, None, Choice::RoundRobin, &[], &|_| false, t0),
                Some(addr(2))
            );
        }
        // Back after a second, then out for two after a second ejection.
        let t1 = t0 + Duration::from_millis(1001);
        let picks: Vec<_> = (0..2)
            .filter_map(|_| h.pick(&addrs, None, Choice::RoundRobin, &[], &|_| false, t1))
            .collect();
        assert!(picks.contains(&addr(1)));
        h.record(addr(1), Outcome::Unreachable, t1);
        let t2 = t1 + Duration::from_millis(1500);
        assert!((0..4).all(
            |_| h.pick(&addrs, None, Choice::RoundRobin, &[], &|_| false, t2) == Some(addr(2))
        ));
        // An answer forgets it all.
        h.record(addr(1), Outcome::Answered, t2);
        assert!(h.endpoints.borrow().is_empty());
    }

    #[test]
    fn five_server_errors_in_a_row_eject_and_one_answer_resets_the_count() {
        let h = Health::default();
        let addrs = [addr(1), addr(2)];
        let now = Instant::now();
        for _ in 0..CONSECUTIVE_5XX - 1 {
            h.record(addr(1), Outcome::ServerError, now);
        }
        h.record(addr(1), Outcome::Answered, now);
        for _ in 0..CONSECUTIVE_5XX - 1 {
            h.record(addr(1), Outcome::ServerError, now);
        }
        assert!((0..4).any(
            |_| h.pick(&addrs, None, Choice::RoundRobin, &[], &|_| false, now) == Some(addr(1))
        ));
        h.record(addr(1), Outcome::ServerError, now);
        assert!((0..4).all(
            |_| h.pick(&addrs, None, Choice::RoundRobin, &[], &|_| false, now) == Some(addr(2))
        ));
    }

    #[test]
    fn all_ejected_are_used_anyway_and_a_retry_avoids_the_one_it_leaves() {
        let h = Health::default();
        let addrs = [addr(1), addr(2)];
        let now = Instant::now();
        h.record(addr(1), Outcome::Unreachable, now);
        h.record(addr(2), Outcome::Unreachable, now);
        assert!(h
            .pick(&addrs, None, Choice::RoundRobin, &[], &|_| false, now)
            .is_some());
        assert_eq!(
            h.pick(
                &addrs,
                Some(addr(2)),
                Choice::RoundRobin,
                &[],
                &|_| false,
                now
            ),
            Some(addr(1))
        );
        assert_eq!(
            h.pick(
                &[addr(3)],
                Some(addr(3)),
                Choice::RoundRobin,
                &[],
                &|_| false,
                now
            ),
            Some(addr(3))
        );
        assert_eq!(
            h.pick(&[], None, Choice::RoundRobin, &[], &|_| false, now),
            None
        );
    }

    #[test]
    fn retries_stay_within_a_fifth_of_the_requests() {
        let h = Health::default();
        let now = Instant::now();
        assert!((0..3).all(|_| h.retry(now)), "three are always allowed");
        assert!(!h.retry(now));
        for _ in 0..100 {
            h.request(now);
        }
        let more = (0..100).filter(|_| h.retry(now)).count();
        assert_eq!(more, 20 - 3);
        // A new window starts afresh.
        assert!(h.retry(now + BUDGET_WINDOW));
    }
}

#[cfg(test)]
mod balancing {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect()
    }

    #[test]
    fn a_hash_keeps_its_endpoint_and_only_the_lost_endpoints_keys_move() {
        let h = Health::default();
        let all = addrs(4);
        let now = Instant::now();
        let before: Vec<_> = (0..200u64)
            .map(|k| {
                h.pick(&all, None, Choice::Hash(k), &[], &|_| false, now)
                    .expect("one")
            })
            .collect();
        // Stable, and spread over every endpoint.
        for (k, chosen) in before.iter().enumerate() {
            assert_eq!(
                h.pick(&all, None, Choice::Hash(k as u64), &[], &|_| false, now),
                Some(*chosen)
            );
        }
        assert!(all.iter().all(|a| before.contains(a)));
        // Eject one: its keys move, no other key does.
        h.record(all[1], Outcome::Unreachable, now);
        for (k, was) in before.iter().enumerate() {
            let now_on = h
                .pick(&all, None, Choice::Hash(k as u64), &[], &|_| false, now)
                .expect("one");
            if *was == all[1] {
                assert_ne!(now_on, all[1]);
            } else {
                assert_eq!(now_on, *was);
            }
        }
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let h = Health::default();
        let two = addrs(2);
        let now = Instant::now();
        let _busy: Vec<_> = (0..5).map(|_| h.in_flight(two[0])).collect();
        let picks: Vec<_> = (0..50)
            .map(|_| {
                h.pick(&two, None, Choice::LeastRequest, &[], &|_| false, now)
                    .expect("one")
            })
            .collect();
        // Of two random choices, the busy one wins only when both are it.
        let busy = picks.iter().filter(|&&a| a == two[0]).count();
        assert!(busy < 25, "{busy} of 50 went to the busy endpoint");
        drop(_busy);
        assert_eq!(h.outstanding.borrow().get(&two[0]), Some(&0));
    }
}

#[cfg(test)]
mod weights {
    use super::*;

    #[test]
    fn weighted_picks_follow_the_weights() {
        let h = Health::default();
        let addrs: Vec<SocketAddr> = (1..=2)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        let now = Instant::now();
        let heavy = (0..4000)
            .filter(|_| {
                h.pick(&addrs, None, Choice::Weighted, &[3, 1], &|_| false, now) == Some(addrs[0])
            })
            .count();
        // 3 in 4, give or take.
        assert!((2800..3200).contains(&heavy), "{heavy} of 4000");
        // An endpoint out weighs nothing.
        h.record(addrs[0], Outcome::Unreachable, now);
        assert!((0..20).all(
            |_| h.pick(&addrs, None, Choice::Weighted, &[3, 1], &|_| false, now) == Some(addrs[1])
        ));
    }
}
