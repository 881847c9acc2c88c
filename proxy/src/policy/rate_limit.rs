//! `rate-limiting-flex`: at most `maximumRequests` per `timePeriodInMilliseconds` for each
//! value of `keySelector`, under every limit of `rateLimits` at once; 429 past that.
//!
//! As in Flex, a window is fixed and starts with the first request of its key (the next one
//! starts with the first request after it ends), a request passes only if every limit has
//! room, and a request whose key is absent (the header is missing) counts under the empty
//! key, shared by all such requests. The count is exact across workers: the counters are
//! shared atomics, never split per core, in a bounded table ([`table`] says what happens
//! when it is full).
//!
//! With `exposeHeaders`, every response to a request the policy decided on carries
//! `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset` (milliseconds until
//! the window ends, as in Flex) of the limit closest to refusing (fewest left; on a tie,
//! the one that ends last), and a 429 also `Retry-After` (whole seconds until that window
//! ends, which Flex does not document). The upstream's own `x-ratelimit-*` headers are dropped
//! then, so the client sees one value.
//!
//! With `clusterizable` (the default) and a Configuration's `sharedStorage`, the replicas
//! share each window: quota is leased from Redis in batches ([`leased`] says how, and what
//! the fleet-wide bound is). While Redis is down or slow, `failOpen` (default true) counts
//! in this process instead (the same limits, per replica); with `failOpen: false` such
//! requests get 503. Without a `sharedStorage` the counters stay in this process.

mod leased;
mod table;

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringwall_config::{item, Node, Scope};

use super::expr::{Expr, HashWriter};
use super::optional_bool;
use super::{config_fields, expression, HeaderLines, Policy, RequestCx, Verdict};

/// The static body of a refusal.
pub(super) const TOO_MANY: &str = "too many requests";
/// The body of a 503 while the shared storage is unavailable and `failOpen` is false.
const UNAVAILABLE: &str = "rate limit storage unavailable";
/// How long a request waiting for a lease waits before look `attempt` + 1: 1, 2, 4 and 8 ms,
/// then 16 ms, so that a refill is seen soon after it lands while a burst of waiting requests
/// does not re-run its chain every millisecond. `None` once about 160 ms have passed, a little
/// over the storage's timeout, so that a lost answer is noticed.
fn lease_wait(attempt: u32) -> Option<Duration> {
    const LOOKS: u32 = 13;
    (attempt < LOOKS).then(|| Duration::from_millis(1 << attempt.min(4)))
}

/// The headers `exposeHeaders` adds.
pub(super) const EXPOSED: [&str; 3] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

/// One entry of `rateLimits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u64,
    /// Milliseconds.
    pub period: u64,
}

/// What a store decided, with the numbers the headers show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub admitted: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Milliseconds until the window reported ends.
    pub reset: u64,
}

impl Decision {
    fn refused(limit: &Limit, ends_in: u64) -> Decision {
        Decision {
            admitted: false,
            limit: limit.max,
            remaining: 0,
            reset: ends_in,
        }
    }

    /// A pass, before any window was considered.
    fn passed() -> Decision {
        Decision {
            admitted: true,
            limit: 0,
            remaining: u64::MAX,
            reset: 0,
        }
    }

    /// Reports the window `limit` (now at `count`, ending in `ends_in`) if it is closer
    /// to refusing than the one reported so far.
    fn consider(&mut self, limit: &Limit, count: u64, ends_in: u64) {
        let remaining = limit.max.saturating_sub(count);
        if (remaining, std::cmp::Reverse(ends_in)) < (self.remaining, std::cmp::Reverse(self.reset))
        {
            self.limit = limit.max;
            self.remaining = remaining;
            self.reset = ends_in;
        }
    }

    /// Writes the exposed headers, and `Retry-After` on a refusal. Several limiting policies
    /// on one request report once: a refusal wins, otherwise the limit with fewest left (the
    /// earlier policy on a tie).
    pub(super) fn write(&self, out: &mut HeaderLines) {
        if let Some(previous) = out.get(EXPOSED[1]) {
            let previous_refused = out.contains("retry-after");
            let previous_left = std::str::from_utf8(previous)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            if previous_refused || (self.admitted && self.remaining >= previous_left) {
                return;
            }
            for name in EXPOSED.into_iter().chain(["retry-after"]) {
                out.remove(name);
            }
        }
        out.add_display(EXPOSED[0], self.limit);
        out.add_display(EXPOSED[1], self.remaining);
        out.add_display(EXPOSED[2], self.reset);
        if !self.admitted {
            out.add_display("retry-after", self.reset.div_ceil(1000).max(1));
        }
    }
}

/// Where the counters live: this process's memory ([`table::Table`]) until a store shared
/// by replicas (`clusterizable` with a `sharedStorage`) implements the same call. Such a
/// store needs key hashes the replicas agree on, so it will bring its own hasher.
trait Store: Send + Sync {
    /// Counts a request of `key` at `now` (milliseconds of the policy's clock) if every
    /// window has room.
    fn take(&self, key: u64, now: u64) -> Decision;
}

struct RateLimit {
    key: Option<Expr>,
    expose: bool,
    /// Per process: a client cannot aim its keys at one bucket of the table.
    hasher: RandomState,
    store: Box<dyn Store>,
    /// Quota leased from the shared storage, for a clusterizable limit with one.
    leased: Option<Arc<leased::Leased>>,
    fail_open: bool,
    epoch: Instant,
}

pub(super) fn build(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    let fields = config_fields(
        spec,
        scope,
        &[
            "rateLimits",
            "keySelector",
            "exposeHeaders",
            "clusterizable",
            "blockOnUnknownQuota",
            "failOpen",
        ],
    )?;
    let limits = scope
        .require(&fields, "rateLimits")
        .and_then(|node| limits(node, &fields.path_of("rateLimits"), scope));
    let key = match fields.get("keySelector") {
        None => Some(None),
        Some(node) => {
            let path = fields.path_of("keySelector");
            expression(node, &path, scope).and_then(|e| {
                if e.reads_response() {
                    let message = "the key is read before there is a response: it cannot use \
                                   attributes.statusCode";
                    scope.error(node.line, &path, message);
                    None
                } else {
                    Some(Some(e))
                }
            })
        }
    };
    let expose = optional_bool(&fields, "exposeHeaders", false, scope);
    let clusterizable = optional_bool(&fields, "clusterizable", true, scope);
    // Accepted as Flex documents it; `failOpen` is what decides here (see the README).
    let block_on_unknown = optional_bool(&fields, "blockOnUnknownQuota", true, scope);
    let fail_open = optional_bool(&fields, "failOpen", true, scope);
    let (limits, key, expose) = (limits?, key?, expose?);
    let (clusterizable, _, fail_open) = (clusterizable?, block_on_unknown?, fail_open?);
    let epoch = Instant::now();
    let leased = match (&env.shared, clusterizable) {
        (Some(storage), true) => Some(Arc::new(leased::Leased::new(
            limits.clone(),
            &spec.binding,
            storage.clone(),
            epoch,
        ))),
        _ => None,
    };
    let store = table::Table::new(limits, key.is_some());
    Some(Arc::new(RateLimit {
        key,
        expose,
        hasher: RandomState::new(),
        store: Box::new(store),
        leased,
        fail_open,
        epoch,
    }))
}

/// `rateLimits`: one or more `{maximumRequests, timePeriodInMilliseconds}`.
fn limits(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<Vec<Limit>> {
    let items = scope.seq(node, path)?;
    if items.is_empty() {
        scope.error(node.line, path, "must list at least one limit");
        return None;
    }
    if items.len() > table::MAX_LIMITS {
        let message = format!("at most {} limits are supported", table::MAX_LIMITS);
        scope.error(node.line, path, message);
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, entry) in items.iter().enumerate() {
        let path = item(path, i);
        let Some(fields) = scope.map(
            entry,
            &path,
            &["maximumRequests", "timePeriodInMilliseconds"],
        ) else {
            ok = false;
            continue;
        };
        let mut number = |key: &str, max: u64| {
            let node = scope.require(&fields, key)?;
            let max = i64::try_from(max).unwrap_or(i64::MAX);
            scope
                .int_in(node, &fields.path_of(key), 1..=max)
                .and_then(|n| u64::try_from(n).ok())
        };
        let max = number("maximumRequests", table::MAX_REQUESTS);
        let period = number("timePeriodInMilliseconds", table::MAX_PERIOD_MS);
        match (max, period) {
            (Some(max), Some(period)) => out.push(Limit { max, period }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

impl RateLimit {
    /// The key's hash: what the expression writes, fed to the hasher as it goes.
    fn key_hash(&self, cx: &RequestCx<'_>) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        if let Some(key) = &self.key {
            key.write(cx, &mut HashWriter(&mut hasher));
        }
        hasher.finish()
    }

    /// The key's text, as every replica writes it (only when a lease is asked for).
    fn key_text(&self, cx: &RequestCx<'_>) -> Vec<u8> {
        let mut text = String::new();
        if let Some(key) = &self.key {
            key.write(cx, &mut text);
        }
        text.into_bytes()
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Policy for RateLimit {
    fn request(&self, cx: &mut RequestCx<'_>) -> Verdict {
        let key = self.key_hash(cx);
        let now = self.now();
        let decision = match &self.leased {
            None => self.store.take(key, now),
            Some(leased) => match leased.take(key, now, || self.key_text(cx)) {
                leased::Outcome::Decided(decision) => decision,
                leased::Outcome::Wait => match lease_wait(cx.attempt) {
                    Some(after) => return Verdict::Retry { after, hold: None },
                    // Redis is up but this replica could not reserve quota in time (a burst
                    // beyond what one refill at a time delivers): refused, since counting it
                    // in memory would let the fleet pass more than the limit.
                    None => {
                        if self.expose {
                            cx.client_headers.add("retry-after", b"1");
                        }
                        return Verdict::Reject(429, TOO_MANY);
                    }
                },
                leased::Outcome::Unavailable if self.fail_open => self.store.take(key, now),
                leased::Outcome::Unavailable => return Verdict::Reject(503, UNAVAILABLE),
            },
        };
        if self.expose {
            decision.write(cx.client_headers);
        }
        if decision.admitted {
            Verdict::Continue
        } else {
            Verdict::Reject(429, TOO_MANY)
        }
    }

    fn strips_response_header(&self, name: &str) -> bool {
        self.expose && EXPOSED.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{compiled, error_of, run, with_policy};
    use super::lease_wait;

    #[test]
    fn lease_waits_back_off_to_16_ms_and_end_a_little_after_the_storage_timeout() {
        let waits: Vec<u64> = (0..)
            .map_while(lease_wait)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .collect();
        assert_eq!(&waits[..6], &[1, 2, 4, 8, 16, 16]);
        let total: u64 = waits.iter().sum();
        assert!((150..=200).contains(&total), "{total} ms");
    }

    const BY_CLIENT: &str =
        "    rateLimits:\n      - {maximumRequests: 2, timePeriodInMilliseconds: 60000}\n    \
                             keySelector: \"#[attributes.headers['x-client-id']]\"\n    \
                             exposeHeaders: true\n";

    fn get(client: Option<&str>) -> Vec<u8> {
        let header = client.map_or(String::new(), |c| format!("X-Client-Id: {c}\r\n"));
        format!("GET /orders HTTP/1.1\r\nHost: a\r\n{header}\r\n").into_bytes()
    }

    /// `(limit, remaining, reset)` from the client headers, and whether Retry-After is there.
    fn exposed(client: &str) -> (u64, u64, u64, Option<u64>) {
        let value = |name: &str| {
            client
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(|v| v.parse::<u64>().expect("a number"))
        };
        (
            value("x-ratelimit-limit").expect("limit"),
            value("x-ratelimit-remaining").expect("remaining"),
            value("x-ratelimit-reset").expect("reset"),
            value("retry-after"),
        )
    }

    #[test]
    fn each_key_has_its_quota_and_the_headers_say_so() {
        let (snapshot, policies) =
            compiled(&with_policy("rate-limiting-flex", BY_CLIENT)).expect("valid");
        let peer = "192.0.2.1:1";
        let first = run(&policies, &snapshot, &get(Some("a")), peer);
        assert!(first.verdict.is_none());
        let (limit, remaining, reset, retry) = exposed(&first.client);
        assert_eq!((limit, remaining, retry), (2, 1, None));
        assert!((59_000..=60_000).contains(&reset), "{reset}");
        assert!(run(&policies, &snapshot, &get(Some("a")), peer)
            .verdict
            .is_none());
        let third = run(&policies, &snapshot, &get(Some("a")), peer);
        assert_eq!(third.verdict, Some((429, "too many requests")));
        let (limit, remaining, _, retry) = exposed(&third.client);
        assert_eq!((limit, remaining, retry), (2, 0, Some(60)));
        // Another client, and the requests without the header (one shared empty key).
        assert!(run(&policies, &snapshot, &get(Some("b")), peer)
            .verdict
            .is_none());
        assert!(run(&policies, &snapshot, &get(None), peer)
            .verdict
            .is_none());
        assert!(run(&policies, &snapshot, &get(None), peer)
            .verdict
            .is_none());
        assert_eq!(
            run(&policies, &snapshot, &get(None), peer).verdict,
            Some((429, "too many requests"))
        );
        // An empty header value is the same key as no header, as in Flex.
        assert_eq!(
            run(&policies, &snapshot, &get(Some("")), peer).verdict,
            Some((429, "too many requests"))
        );
        let chain = &policies.chains[0];
        assert!(chain.strips_response_header(first.applied, "X-RateLimit-Remaining"));
        assert!(!chain.strips_response_header(first.applied, "retry-after"));
    }

    #[test]
    fn without_a_key_every_request_shares_one_quota_and_no_headers_by_default() {
        let yaml = with_policy(
            "rate-limiting-flex",
            "    rateLimits:\n      - maximumRequests: 1\n        timePeriodInMilliseconds: 60000\n",
        );
        let (snapshot, policies) = compiled(&yaml).expect("valid");
        let out = run(&policies, &snapshot, &get(Some("a")), "192.0.2.1:1");
        assert!(out.verdict.is_none());
        assert_eq!(out.client, "");
        let out = run(&policies, &snapshot, &get(Some("b")), "192.0.2.2:1");
        assert_eq!(out.verdict, Some((429, "too many requests")));
        assert_eq!(out.client, "");
        assert!(!policies.chains[0].strips_response_header(out.applied, "x-ratelimit-limit"));
    }

    #[test]
    fn keys_may_join_several_attributes() {
        let yaml = with_policy(
            "rate-limiting-flex",
            "    rateLimits: [{maximumRequests: 1, timePeriodInMilliseconds: 60000}]\n    \
             keySelector: \"#[attributes.method ++ ':' ++ attributes.remoteAddress]\"\n",
        );
        let (snapshot, policies) = compiled(&yaml).expect("valid");
        assert!(run(&policies, &snapshot, &get(None), "192.0.2.1:1")
            .verdict
            .is_none());
        assert!(run(&policies, &snapshot, &get(None), "192.0.2.1:2")
            .verdict
            .is_some());
        assert!(run(&policies, &snapshot, &get(None), "192.0.2.2:1")
            .verdict
            .is_none());
    }

    #[test]
    fn every_field_is_checked() {
        let policy = |config: &str| error_of(&with_policy("rate-limiting-flex", config));
        assert_eq!(
            policy("    exposeHeaders: true\n"),
            "15: spec.config.rateLimits: missing required field `rateLimits`"
        );
        assert_eq!(
            policy("    rateLimits: []\n"),
            "16: spec.config.rateLimits: must list at least one limit"
        );
        assert_eq!(
            policy("    rateLimits:\n      - {maximumRequests: 0, timePeriodInMilliseconds: 1000}\n"),
            "17: spec.config.rateLimits[0].maximumRequests: must be between 1 and 67108863, found 0"
        );
        assert_eq!(
            policy("    rateLimits:\n      - {maximumRequests: 1}\n"),
            "17: spec.config.rateLimits[0].timePeriodInMilliseconds: missing required field \
             `timePeriodInMilliseconds`"
        );
        assert_eq!(
            policy(
                "    rateLimits:\n      - {maximumRequests: 1, timePeriodInMilliseconds: 3000000000}\n"
            ),
            "17: spec.config.rateLimits[0].timePeriodInMilliseconds: must be between 1 and \
             2147483647, found 3000000000"
        );
        assert_eq!(
            policy("    rateLimits:\n      - {maximumRequests: 1, timePeriodInMilliseconds: 10, windowSize: 3}\n"),
            "17: spec.config.rateLimits[0].windowSize: unknown field `windowSize`; accepted fields: \
             `maximumRequests`, `timePeriodInMilliseconds`"
        );
        let limits = "    rateLimits: [{maximumRequests: 1, timePeriodInMilliseconds: 10}]\n";
        assert_eq!(
            policy(&format!("{limits}    exposeHeaders: 'yes'\n")),
            "17: spec.config.exposeHeaders: expected a boolean, found a string"
        );
        assert_eq!(
            policy(&format!("{limits}    clusterizable: 1\n")),
            "17: spec.config.clusterizable: expected a boolean, found an integer"
        );
        assert_eq!(
            policy(&format!("{limits}    failOpen: 'no'\n")),
            "17: spec.config.failOpen: expected a boolean, found a string"
        );
        assert_eq!(
            policy(&format!(
                "{limits}    keySelector: \"#[attributes.statusCode]\"\n"
            )),
            "17: spec.config.keySelector: the key is read before there is a response: it cannot \
             use attributes.statusCode"
        );
        assert!(
            policy(&format!("{limits}    keySelector: \"#[payload.id]\"\n"))
                .starts_with("17: spec.config.keySelector: unsupported expression `#[payload.id]`")
        );
        let seventeen = "      - {maximumRequests: 1, timePeriodInMilliseconds: 10}\n".repeat(17);
        assert_eq!(
            policy(&format!("    rateLimits:\n{seventeen}")),
            "16: spec.config.rateLimits: at most 16 limits are supported"
        );
        // The documented optional fields load.
        let all = format!(
            "{limits}    keySelector: \"#[attributes.method]\"\n    exposeHeaders: false\n    \
             clusterizable: false\n    blockOnUnknownQuota: false\n    failOpen: false\n"
        );
        assert!(compiled(&with_policy("rate-limiting-flex", &all)).is_ok());
    }
}
