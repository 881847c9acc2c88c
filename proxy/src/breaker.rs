//! `circuit-breaker-flex` on a Service: Envoy's circuit-breaking thresholds, which Flex
//! exposes, counted for the whole process (every worker and, as in Flex's Local Mode, every
//! ApiInstance that routes to the Service). Past a threshold the request gets a 503 at once
//! instead of piling onto an upstream that cannot keep up.
//!
//! - `maxRequests`: requests in flight to the Service, from the upstream phase to the end of
//!   the response;
//! - `maxConnections`: open connections to it, idle pooled ones included;
//! - `maxPendingRequests`: requests waiting, at `maxConnections`, for a connection to free
//!   (within `upstreamConnectSeconds`);
//! - `maxRetries`: replays of a request whose pooled connection turned out closed, in
//!   progress at once;
//! - `maxConnectionPools`: accepted for Flex's files; Ringwall has one pool per worker.
//!
//! Defaults are Envoy's: 1024 each, 3 retries. The counters are atomics shared by the
//! workers (a cache line per Service), touched only by Services that have the policy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use ringwall_config::{Diagnostics, LoadErrors, Policy, Scope, Snapshot, Upstream};

use crate::per_route::PerRoute;

/// What `config.thresholds` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_connections: 1024,
            max_pending: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// Which threshold refused, for the 503's body and the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    Requests,
    Pending,
}

impl Open {
    pub fn reason(self) -> &'static str {
        match self {
            Open::Requests => "circuit breaker open: too many requests in flight to the upstream",
            Open::Pending => {
                "circuit breaker open: too many requests waiting for an upstream connection"
            }
        }
    }
}

/// One Service's thresholds and counters.
#[derive(Debug)]
pub struct Breaker {
    pub thresholds: Thresholds,
    requests: AtomicU32,
    connections: AtomicU32,
    pending: AtomicU32,
    retries: AtomicU32,
}

/// Holds one unit of a counter, given back when dropped.
#[derive(Debug)]
pub struct Held {
    breaker: Arc<Breaker>,
    counter: fn(&Breaker) -> &AtomicU32,
}

impl Drop for Held {
    fn drop(&mut self) {
        (self.counter)(&self.breaker).fetch_sub(1, Ordering::AcqRel);
    }
}

impl Breaker {
    pub fn new(thresholds: Thresholds) -> Arc<Breaker> {
        Arc::new(Breaker {
            thresholds,
            requests: AtomicU32::new(0),
            connections: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            retries: AtomicU32::new(0),
        })
    }

    /// Takes one unit of `counter` if it is under `max`.
    fn hold(self: &Arc<Self>, counter: fn(&Breaker) -> &AtomicU32, max: u32) -> Option<Held> {
        counter(self)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Held {
            breaker: Arc::clone(self),
            counter,
        })
    }

    /// A request in flight, or `None` at `maxRequests`.
    pub fn request(self: &Arc<Self>) -> Option<Held> {
        self.hold(|b| &b.requests, self.thresholds.max_requests)
    }

    /// An open connection, or `None` at `maxConnections`.
    pub fn connection(self: &Arc<Self>) -> Option<Held> {
        self.hold(|b| &b.connections, self.thresholds.max_connections)
    }

    /// A request waiting for a connection, or `None` at `maxPendingRequests`.
    pub fn pending(self: &Arc<Self>) -> Option<Held> {
        self.hold(|b| &b.pending, self.thresholds.max_pending)
    }

    /// A retry in progress, or `None` at `maxRetries`.
    pub fn retry(self: &Arc<Self>) -> Option<Held> {
        self.hold(|b| &b.retries, self.thresholds.max_retries)
    }
}

/// The breakers of one configuration.
#[derive(Default)]
pub struct Breakers {
    routes: PerRoute<Breaker>,
    /// By Service name, for the next reload to keep.
    by_name: HashMap<String, Arc<Breaker>>,
}

impl Breakers {
    /// Reads every Service's `circuit-breaker-flex`. A Service whose thresholds are those
    /// it had in `previous` keeps its breaker, so what is in flight stays counted.
    pub fn build(snapshot: &Snapshot, previous: Option<&Breakers>) -> Result<Breakers, LoadErrors> {
        let mut diag = Diagnostics::default();
        let mut by_name = HashMap::new();
        let routes = PerRoute::build(snapshot, |up| {
            let breaker = breaker_of(up, previous, &mut diag)?;
            by_name.insert(up.name.clone(), Arc::clone(&breaker));
            Some(breaker)
        });
        if diag.errors.is_empty() {
            Ok(Breakers { routes, by_name })
        } else {
            Err(LoadErrors(diag.errors))
        }
    }

    /// The breaker of route `route` of ApiInstance `api`.
    pub fn of(&self, api: usize, route: usize) -> Option<&Arc<Breaker>> {
        self.routes.get(api, route)
    }
}

/// `up`'s breaker: none without the policy, one policy at most.
fn breaker_of(
    up: &Upstream,
    previous: Option<&Breakers>,
    diag: &mut Diagnostics,
) -> Option<Arc<Breaker>> {
    let mut specs = up.policies.iter().filter(|p| p.name == NAME);
    let spec = specs.next()?;
    if let Some(again) = specs.next() {
        let message = format!(
            "Service `{}` already has a `{NAME}` policy, {} ({}:{})",
            up.name, spec.resource, spec.file, spec.line
        );
        Scope::for_policy(diag, again).error(again.line, "spec.policyRef.name", message);
        return None;
    }
    let thresholds = thresholds(spec, &mut Scope::for_policy(diag, spec))?;
    match previous.and_then(|p| p.by_name.get(&up.name)) {
        Some(kept) if kept.thresholds == thresholds => Some(Arc::clone(kept)),
        _ => Some(Breaker::new(thresholds)),
    }
}

/// The policy's name.
pub const NAME: &str = "circuit-breaker-flex";

const FIELDS: &[&str] = &["thresholds"];
const THRESHOLDS: &[&str] = &[
    "maxConnections",
    "maxPendingRequests",
    "maxRequests",
    "maxRetries",
    "maxConnectionPools",
];

/// Reads a `circuit-breaker-flex` policy; `None` after reporting its errors.
pub fn thresholds(spec: &Policy, scope: &mut Scope<'_>) -> Option<Thresholds> {
    let errors = scope.diag.errors.len();
    let fields = scope.map(&spec.config, &spec.config_path, FIELDS)?;
    let mut thresholds = Thresholds::default();
    if let Some(node) = fields.get("thresholds") {
        let path = fields.path_of("thresholds");
        let t = scope.map(node, &path, THRESHOLDS)?;
        let slots: [(&str, &mut u32); 4] = [
            ("maxConnections", &mut thresholds.max_connections),
            ("maxPendingRequests", &mut thresholds.max_pending),
            ("maxRequests", &mut thresholds.max_requests),
            ("maxRetries", &mut thresholds.max_retries),
        ];
        for (key, slot) in slots {
            if let Some(n) = t.get(key) {
                let value = scope.int_in(n, &t.path_of(key), 0..=i64::from(u32::MAX));
                if let Some(value) = value.and_then(|v| u32::try_from(v).ok()) {
                    *slot = value;
                }
            }
        }
        if let Some(n) = t.get("maxConnectionPools") {
            let _ = scope.int_in(n, &t.path_of("maxConnectionPools"), 0..=i64::from(u32::MAX));
            let message = "not enforced: Ringwall keeps one connection pool per worker";
            scope.warn(n.line, &t.path_of("maxConnectionPools"), message);
        }
    }
    (scope.diag.errors.len() == errors).then_some(thresholds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_holds_up_to_its_threshold_and_gives_back_on_drop() {
        let breaker = Breaker::new(Thresholds {
            max_requests: 2,
            ..Thresholds::default()
        });
        let a = breaker.request().expect("first");
        let b = breaker.request().expect("second");
        assert!(breaker.request().is_none(), "a third is over the threshold");
        drop(a);
        let c = breaker.request().expect("room again");
        drop((b, c));
        assert_eq!(breaker.requests.load(Ordering::Acquire), 0);
        // Zero allows none.
        let closed = Breaker::new(Thresholds {
            max_retries: 0,
            ..Thresholds::default()
        });
        assert!(closed.retry().is_none());
    }

    #[test]
    fn threads_never_take_more_than_the_threshold() {
        let breaker = Breaker::new(Thresholds {
            max_connections: 100,
            ..Thresholds::default()
        });
        let held: Vec<Vec<Held>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let breaker = &breaker;
                    s.spawn(move || (0..1000).filter_map(|_| breaker.connection()).collect())
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("worker"))
                .collect()
        });
        assert_eq!(held.iter().map(Vec::len).sum::<usize>(), 100);
    }
}
