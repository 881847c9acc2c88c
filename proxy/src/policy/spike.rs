//! `spike-control-flex`: at most `maximumRequests` in any `timePeriodInMilliseconds`
//! (a sliding window, as in Flex), for every request the binding applies to. A request over
//! the rate waits `delayTimeInMillis` and is asked again, up to `delayAttempts` times, then
//! refused with 429; at most `queuingLimit` requests wait at once (Flex's default 0: none
//! wait, a request over the rate is refused at once), and one that finds the queue full is
//! refused at once.
//!
//! The window is exact across workers: the admission times of the last `maximumRequests`
//! requests sit in a ring of atomics, and a request passes only by replacing, with one CAS,
//! the time of the request `maximumRequests` before it, once that one is older than the
//! period. That takes 8 bytes per request of the limit, hence the bound on
//! `maximumRequests`.
//!
//! With `exposeHeaders`, the response carries `x-ratelimit-limit`, `x-ratelimit-remaining`
//! (places free now) and `x-ratelimit-reset` (milliseconds until the oldest request leaves
//! the window; 0 while places are free), as Flex documents, and a 429 `Retry-After`. A
//! waiting request gets them with its final answer.
//!
//! The queue is a counter: each waiting request holds a place ([`Queued`], one small
//! allocation when a request starts to wait, never on a request within the rate), given
//! back when its connection gets the final verdict or goes away.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringwall_config::Scope;

use super::optional_bool;
use super::rate_limit::{Decision, EXPOSED, TOO_MANY};
use super::{config_fields, Hold, Policy, RequestCx, Verdict};

/// 8 MB of admission times.
const MAX_REQUESTS: i64 = 1_000_000;
const MAX_MS: i64 = i32::MAX as i64;

struct SpikeControl {
    window: Window,
    delay: Duration,
    attempts: u32,
    queue_limit: u32,
    /// Requests waiting now; each [`Queued`] holds one.
    queued: Arc<AtomicU32>,
    expose: bool,
    epoch: Instant,
}

pub(super) fn build(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    _env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    let fields = config_fields(
        spec,
        scope,
        &[
            "maximumRequests",
            "timePeriodInMilliseconds",
            "delayTimeInMillis",
            "delayAttempts",
            "queuingLimit",
            "exposeHeaders",
        ],
    )?;
    // Flex marks the first four required and gives them defaults: absent takes the default.
    let mut number =
        |key: &str, default: i64, range: std::ops::RangeInclusive<i64>| match fields.get(key) {
            None => Some(default),
            Some(node) => scope.int_in(node, &fields.path_of(key), range),
        };
    let max = number("maximumRequests", 1, 1..=MAX_REQUESTS);
    let period = number("timePeriodInMilliseconds", 1000, 1..=MAX_MS);
    let delay = number("delayTimeInMillis", 1000, 0..=MAX_MS);
    let attempts = number("delayAttempts", 1, 0..=MAX_MS);
    let queue_limit = number("queuingLimit", 0, 0..=MAX_MS);
    let expose = optional_bool(&fields, "exposeHeaders", false, scope);
    let (max, period, delay) = (max?, period?, delay?);
    let (attempts, queue_limit, expose) = (attempts?, queue_limit?, expose?);
    Some(Arc::new(SpikeControl {
        window: Window::new(max.unsigned_abs(), period.unsigned_abs()),
        delay: Duration::from_millis(delay.unsigned_abs()),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        queue_limit: u32::try_from(queue_limit).unwrap_or(u32::MAX),
        queued: Arc::default(),
        expose,
        epoch: Instant::now(),
    }))
}

/// One place in the queue, given back when the request stops waiting.
struct Queued(Arc<AtomicU32>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl SpikeControl {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A place for a request that starts waiting, if the queue has one.
    fn enqueue(&self) -> Option<Hold> {
        let limit = self.queue_limit;
        self.queued
            .fetch_update(SeqCst, SeqCst, |q| (q < limit).then_some(q + 1))
            .ok()?;
        Some(Box::new(Queued(self.queued.clone())))
    }

    /// The place of a request that waits again: the hold it replaces is dropped just after.
    fn requeue(&self) -> Hold {
        self.queued.fetch_add(1, SeqCst);
        Box::new(Queued(self.queued.clone()))
    }
}

impl Policy for SpikeControl {
    fn request(&self, cx: &mut RequestCx<'_>) -> Verdict {
        let now = self.now();
        let waited = self.window.admit(now);
        if waited.is_err() && cx.attempt < self.attempts {
            let hold = if cx.attempt == 0 {
                self.enqueue()
            } else {
                Some(self.requeue())
            };
            if let Some(hold) = hold {
                return Verdict::Retry {
                    after: self.delay,
                    hold: Some(hold),
                };
            }
        }
        if self.expose {
            let (remaining, reset) = self.window.free(now);
            let decision = Decision {
                admitted: waited.is_ok(),
                limit: self.window.max(),
                remaining,
                reset,
            };
            decision.write(cx.client_headers);
        }
        match waited {
            Ok(()) => Verdict::Continue,
            Err(_) => Verdict::Reject(429, TOO_MANY),
        }
    }

    fn strips_response_header(&self, name: &str) -> bool {
        self.expose && EXPOSED.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

// === The sliding window ===

const LAP_BITS: u32 = 24;
const TIME_BITS: u32 = 64 - LAP_BITS;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const LAP_MASK: u64 = (1 << LAP_BITS) - 1;

/// The admission times of the last `max` requests. Admission `n` (counted from 0) writes
/// slot `n % max` with its lap `n / max + 1` (mod 2^24) and its time + 1 (0: never used); it
/// may do so only while the slot still holds admission `n - max`, older than the period.
struct Window {
    period: u64,
    /// The next admission's number.
    head: AtomicU64,
    slots: Box<[AtomicU64]>,
}

impl Window {
    fn new(max: u64, period: u64) -> Window {
        Window {
            period,
            head: AtomicU64::new(0),
            slots: (0..max.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn max(&self) -> u64 {
        self.slots.len() as u64
    }

    fn slot(&self, n: u64) -> &AtomicU64 {
        // In range: n % len < len.
        &self.slots[(n % self.max()) as usize]
    }

    /// Takes a place at `now`, or says in how many milliseconds one frees up.
    fn admit(&self, now: u64) -> Result<(), u64> {
        let len = self.max();
        loop {
            let n = self.head.load(SeqCst);
            let cell = self.slot(n);
            let s = cell.load(SeqCst);
            let lap = n / len;
            let mine = (lap + 1) & LAP_MASK;
            if s != 0 && s >> TIME_BITS == mine {
                // Taken by another thread that has not moved the head yet: help it.
                let _ = self.head.compare_exchange(n, n + 1, SeqCst, SeqCst);
                continue;
            }
            if s >> TIME_BITS != lap & LAP_MASK {
                // The head moved on since it was read.
                continue;
            }
            if s != 0 {
                let age = now.saturating_sub((s & TIME_MASK) - 1);
                if age < self.period {
                    return Err(self.period - age);
                }
            }
            let taken = (mine << TIME_BITS) | ((now + 1) & TIME_MASK);
            if cell.compare_exchange(s, taken, SeqCst, SeqCst).is_ok() {
                let _ = self.head.compare_exchange(n, n + 1, SeqCst, SeqCst);
                return Ok(());
            }
        }
    }

    /// Places free at `now`, and milliseconds until one frees up when none is (for the
    /// headers: read without stopping the others, so approximate while they run).
    fn free(&self, now: u64) -> (u64, u64) {
        let n = self.head.load(SeqCst);
        let age = |i: u64| {
            let s = self.slot(n + i).load(SeqCst);
            (s != 0).then(|| now.saturating_sub((s & TIME_MASK) - 1))
        };
        let expired = |i: u64| age(i).is_none_or(|a| a >= self.period);
        // From the head on, slots go from the oldest admission to the newest: the expired
        // ones come first.
        let (mut lo, mut hi) = (0, self.max());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if expired(mid) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let reset = match lo {
            0 => age(0).map_or(0, |a| self.period.saturating_sub(a)),
            _ => 0,
        };
        (lo, reset)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::super::tests::{compiled, error_of, run, with_policy};
    use super::*;

    #[test]
    fn the_window_slides() {
        let w = Window::new(2, 1000);
        assert_eq!(w.free(0), (2, 0));
        assert_eq!(w.admit(0), Ok(()));
        assert_eq!(w.admit(400), Ok(()));
        assert_eq!(w.free(400), (0, 600));
        assert_eq!(w.admit(999), Err(1));
        // The first admission leaves the window at 1000; the second at 1400.
        assert_eq!(w.admit(1000), Ok(()));
        assert_eq!(w.admit(1001), Err(399));
        assert_eq!(w.free(1400), (1, 0));
        assert_eq!(w.admit(1400), Ok(()));
        assert_eq!(w.admit(1999), Err(1));
    }

    #[test]
    fn threads_pass_exactly_the_limit() {
        let w = Arc::new(Window::new(1000, 60_000));
        let passed = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (w, passed) = (w.clone(), passed.clone());
                std::thread::spawn(move || {
                    for n in 0..1000u64 {
                        if w.admit(10 + (n + i) % 3).is_ok() {
                            passed.fetch_add(1, SeqCst);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(passed.load(SeqCst), 1000);
        let (free, reset) = w.free(20);
        assert_eq!(free, 0);
        assert!((59_990..=59_992).contains(&reset), "{reset}");
        // Laps go round: one period later the ring takes the next thousand.
        let later = (0..2000).filter(|_| w.admit(60_100).is_ok()).count();
        assert_eq!(later, 1000);
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    fn spike(config: &str) -> super::super::Policies {
        compiled(&with_policy("spike-control-flex", config))
            .expect("valid")
            .1
    }

    /// Runs the request phase as the connection does on a retry: `attempt` and the hold
    /// of the previous ask kept until this one answers.
    fn ask(policies: &super::super::Policies, attempt: u32) -> Verdict {
        let mut headers = crate::http::header_slots::<16>();
        let req = crate::http::request::parse(GET, &mut headers, 65536)
            .expect("valid")
            .expect("complete");
        let (mut up, mut client, mut overrides) = Default::default();
        let mut cx = RequestCx {
            req: &req,
            peer: "192.0.2.1:1".parse().expect("peer"),
            tls: None,
            attempt,
            upstream_headers: &mut up,
            client_headers: &mut client,
            overrides: &mut overrides,
        };
        match policies.chains[0].request(1, 0, &mut cx) {
            super::super::Stop::At(_, v) => v,
            super::super::Stop::Passed => Verdict::Continue,
        }
    }

    fn is_refusal(v: &Verdict) -> bool {
        matches!(v, Verdict::Reject(429, "too many requests"))
    }

    fn is_retry(v: &Verdict) -> bool {
        matches!(v, Verdict::Retry { after, hold: Some(_) } if *after == Duration::from_millis(250))
    }

    #[test]
    fn requests_over_the_rate_wait_then_are_refused() {
        let policies = spike(
            "    maximumRequests: 1\n    timePeriodInMilliseconds: 60000\n    delayTimeInMillis: 250\n    \
             delayAttempts: 2\n    queuingLimit: 2\n",
        );
        assert!(matches!(ask(&policies, 0), Verdict::Continue));
        // Over the rate: the first two wait, the third finds the queue full.
        let mut first = ask(&policies, 0);
        let second = ask(&policies, 0);
        assert!(is_retry(&first) && is_retry(&second));
        assert!(is_refusal(&ask(&policies, 0)));
        // Asked again, a waiting request keeps its place: the new hold replaces the old one,
        // as the connection does.
        first = ask(&policies, 1);
        assert!(is_retry(&first));
        assert!(is_refusal(&ask(&policies, 0)));
        // After its last attempt it is refused, and the connection lets go of its place.
        assert!(is_refusal(&ask(&policies, 2)));
        drop(first);
        assert!(is_retry(&ask(&policies, 0)));
        drop(second);
    }

    #[test]
    fn without_a_queue_over_the_rate_is_refused_at_once() {
        let yaml = with_policy(
            "spike-control-flex",
            "    maximumRequests: 2\n    exposeHeaders: true\n",
        );
        let (snapshot, policies) = compiled(&yaml).expect("valid");
        let peer = "192.0.2.1:1";
        let out = run(&policies, &snapshot, GET, peer);
        assert!(out.verdict.is_none());
        assert_eq!(
            out.client,
            "x-ratelimit-limit: 2\r\nx-ratelimit-remaining: 1\r\nx-ratelimit-reset: 0\r\n"
        );
        assert!(run(&policies, &snapshot, GET, peer).verdict.is_none());
        let out = run(&policies, &snapshot, GET, peer);
        assert_eq!(out.verdict, Some((429, "too many requests")));
        assert!(
            out.client.contains("x-ratelimit-remaining: 0\r\n"),
            "{}",
            out.client
        );
        assert!(out.client.contains("retry-after: 1\r\n"), "{}", out.client);
        let chain = &policies.chains[0];
        assert!(chain.strips_response_header(out.applied, "X-RateLimit-Reset"));
    }

    #[test]
    fn every_field_is_checked() {
        let policy = |config: &str| error_of(&with_policy("spike-control-flex", config));
        assert_eq!(
            policy("    maximumRequests: 0\n"),
            "16: spec.config.maximumRequests: must be between 1 and 1000000, found 0"
        );
        assert_eq!(
            policy("    timePeriodInMilliseconds: -5\n"),
            "16: spec.config.timePeriodInMilliseconds: must be between 1 and 2147483647, found -5"
        );
        assert_eq!(
            policy("    delayTimeInMillis: 1.5\n"),
            "16: spec.config.delayTimeInMillis: expected an integer, found a number"
        );
        assert_eq!(
            policy("    delayAttempts: -1\n"),
            "16: spec.config.delayAttempts: must be between 0 and 2147483647, found -1"
        );
        assert_eq!(
            policy("    queuingLimit: many\n"),
            "16: spec.config.queuingLimit: expected an integer, found a string"
        );
        assert_eq!(
            policy("    keySelector: x\n"),
            "16: spec.config.keySelector: unknown field `keySelector`; accepted fields: \
             `maximumRequests`, `timePeriodInMilliseconds`, `delayTimeInMillis`, \
             `delayAttempts`, `queuingLimit`, `exposeHeaders`"
        );
        // Everything has a default: an empty config loads.
        assert!(compiled(&with_policy("spike-control-flex", "    {}\n")).is_ok());
    }
}
