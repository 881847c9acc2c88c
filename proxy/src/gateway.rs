//! The routing view of one configuration snapshot: which ApiInstances each listener
//! serves, and the choice of ApiInstance and route for a request. Built once per
//! snapshot, off the hot path, and shared read-only by every worker.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use regex_automata::meta::{self, Cache};
use regex_automata::{PatternID, PatternSet};
use ringwall_config::{ApiInstance, LoadErrors, Route, Snapshot};

use crate::http::request::Request;
use crate::policy::{self, Policies};
use crate::tls::{TlsSetup, UpstreamTls};

pub struct Gateway {
    pub snapshot: Arc<Snapshot>,
    pub listeners: Vec<Listener>,
    /// The per-request policies of each ApiInstance, indexed like `snapshot.apis`.
    pub policies: Policies,
    /// Metric handles for every route, registered off the hot path.
    pub metrics: crate::metrics::GatewayMetrics,
    /// The client of `sharedStorage`, kept across reloads that leave it unchanged. It
    /// connects when started (by the server) or first used, so `validate` never does.
    pub shared: Option<crate::shared::Handle>,
    /// The TLS of each listener (indexed like `listeners`) and of each route's upstream.
    pub tls: TlsSetup,
    /// Each route's Service's `circuit-breaker-flex`.
    pub breakers: crate::breaker::Breakers,
    /// Each route's Service's active health checks; probing starts with [`Gateway::start`].
    pub checks: crate::checks::Checks,
    /// Per ApiInstance with many routes, an index of their path patterns.
    indexes: Vec<Option<RouteIndex>>,
}

/// Routes are tried in order, each with its own regexes: linear in the routes before the
/// match (2.9 ms for the last of 10,000, see the router bench). Past [`INDEXED_FROM`] routes,
/// one `RegexSet` of every path pattern finds in one pass the routes whose path can match;
/// only they are checked whole, still in order, so the result is the same.
const INDEXED_FROM: usize = 16;

struct RouteIndex {
    /// Every pattern, searched for all at once (`MatchKind::All`, as a `RegexSet` is).
    set: meta::Regex,
    /// Alive as long as the index: what a thread's cache for it is found by, and what tells
    /// the thread the index is gone.
    token: Arc<()>,
    /// The patterns of route `i` are `starts[i]..starts[i + 1]` in `set`.
    starts: Vec<usize>,
    /// Routes matched whatever the path: no rules, or a rule without a path.
    any_path: Vec<bool>,
}

thread_local! {
    /// Which patterns of an index matched the path in hand: reused request after request,
    /// so routing through an index allocates nothing once warm (`RegexSet` would make one
    /// per search).
    static HITS: RefCell<PatternSet> = RefCell::new(PatternSet::new(0));

    /// This thread's search cache for each index it has searched. Without one the regex
    /// takes a cache from its shared pool, under a lock on every thread but the first to
    /// search it: a worker keeps its own instead, and drops those of indexes a reload
    /// replaced the next time it meets a new one.
    static CACHES: RefCell<Vec<(Weak<()>, Cache)>> = const { RefCell::new(Vec::new()) };
}

impl RouteIndex {
    fn build(api: &ApiInstance) -> Option<RouteIndex> {
        if api.routes.len() < INDEXED_FROM {
            return None;
        }
        let mut patterns = Vec::new();
        let mut starts = Vec::with_capacity(api.routes.len() + 1);
        let mut any_path = vec![false; api.routes.len()];
        for (i, route) in api.routes.iter().enumerate() {
            starts.push(patterns.len());
            if route.rules.is_empty() {
                any_path[i] = true;
            }
            for rule in &route.rules {
                match rule.path_pattern() {
                    Some(re) => patterns.push(re.as_str().to_owned()),
                    None => any_path[i] = true,
                }
            }
        }
        starts.push(patterns.len());
        // Too large a set for the limits: routing stays linear, and correct.
        let set = meta::Regex::builder()
            .configure(
                meta::Regex::config()
                    .match_kind(regex_automata::MatchKind::All)
                    .nfa_size_limit(Some(256 << 20))
                    .dfa_size_limit(Some(64 << 20)),
            )
            .build_many(&patterns)
            .ok()?;
        Some(RouteIndex {
            set,
            token: Arc::new(()),
            starts,
            any_path,
        })
    }

    /// Runs `f` with a test of whether route `i` may match `path`.
    fn with_candidates<T>(&self, path: &str, f: impl FnOnce(&dyn Fn(usize) -> bool) -> T) -> T {
        HITS.with_borrow_mut(|hits| {
            if hits.capacity() < self.set.pattern_len() {
                *hits = PatternSet::new(self.set.pattern_len());
            }
            hits.clear();
            self.search(path, hits);
            let hits = &*hits;
            f(&|i| {
                self.any_path[i]
                    || (self.starts[i]..self.starts[i + 1])
                        .any(|p| hits.contains(PatternID::new_unchecked(p)))
            })
        })
    }

    /// Which patterns match `path`, into `hits`, with this thread's cache for the index.
    fn search(&self, path: &str, hits: &mut PatternSet) {
        CACHES.with_borrow_mut(|caches| {
            // Found by address, without touching the token's counts (shared by every
            // worker) on each search. A `Weak` keeps its allocation, so no later index
            // has the address of one a cache here was made for.
            let mine = Arc::as_ptr(&self.token);
            let at = match caches.iter().position(|(token, _)| token.as_ptr() == mine) {
                Some(at) => at,
                None => {
                    caches.retain(|(token, _)| token.strong_count() > 0);
                    let token = Arc::downgrade(&self.token);
                    caches.push((token, self.set.create_cache()));
                    caches.len() - 1
                }
            };
            let input = regex_automata::Input::new(path);
            self.set
                .which_overlapping_matches_with(&mut caches[at].1, &input, hits);
        })
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("snapshot", &self.snapshot)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

/// One listening address and the ApiInstances behind it, longest base path first.
#[derive(Debug)]
pub struct Listener {
    pub key: ListenerKey,
    pub addr: SocketAddr,
    pub apis: Vec<usize>,
}

/// A listener's identity across reloads: its address and, for port 0 (a port of the
/// system's choosing for each ApiInstance), the ApiInstance it serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub addr: SocketAddr,
    pub port0_api: Option<String>,
}

/// Where a request goes: its ApiInstance, and the route that matched if one did. The
/// ApiInstance's policies run either way, so that a CORS preflight is answered and an
/// unauthenticated client cannot probe which paths have routes.
pub struct Routed<'g, 'r> {
    pub api: &'g ApiInstance,
    pub route: Option<&'g Route>,
    /// Indexes of `api` in the snapshot and of `route` in `api.routes`, for finding
    /// them again once the request head's borrow has ended.
    pub api_index: usize,
    pub route_index: usize,
    /// The request path (without the query) after the base path, normalised for matching
    /// rules (see [`normalize_path`]); `/` when empty.
    pub path: Cow<'r, str>,
    /// The request target (path and query) after the base path.
    pub rest: &'r str,
}

impl Gateway {
    /// Loads the configuration directory and builds its gateway: the two halves of a load,
    /// so that `validate`, start-up and reloads judge a configuration alike. The loader's
    /// errors come first; the policies are checked once the resources are valid.
    pub fn load(dir: &std::path::Path, previous: Option<&Gateway>) -> Result<Self, LoadErrors> {
        let snapshot = ringwall_config::load_dir(dir)?;
        Self::build(Arc::new(snapshot), previous)
    }

    /// The gateway of `snapshot`, keeping the policy instances of `previous` whose config is
    /// unchanged. Fails when a policy's `config` is invalid or the policy is not enforced.
    pub fn build(snapshot: Arc<Snapshot>, previous: Option<&Gateway>) -> Result<Self, LoadErrors> {
        let shared = snapshot.settings.shared_storage.as_ref().map(|storage| {
            previous
                .and_then(|g| g.shared.as_ref())
                .filter(|h| h.storage() == storage)
                .cloned()
                .unwrap_or_else(|| crate::shared::Handle::new(storage.clone()))
        });
        let env = policy::Env { shared };
        let policies = policy::compile(&snapshot, previous.map(|g| &g.policies), &env)?;
        let listeners = listeners(&snapshot);
        let tls = crate::tls::setup::build(&snapshot, &listeners, previous.map(|g| &g.tls))?;
        let breakers = crate::breaker::Breakers::build(&snapshot, previous.map(|g| &g.breakers))?;
        let metrics = crate::metrics::GatewayMetrics::new(&snapshot);
        let checks = crate::checks::Checks::build(&snapshot, &tls, previous.map(|g| &g.checks));
        let indexes = snapshot.apis.iter().map(RouteIndex::build).collect();
        Ok(Self {
            snapshot,
            listeners,
            policies,
            metrics,
            shared: env.shared,
            tls,
            breakers,
            checks,
            indexes,
        })
    }

    /// Starts what a serving gateway runs beside its workers (never `validate`): the shared
    /// storage client and the health checks.
    pub fn start(&self) {
        if let Some(shared) = &self.shared {
            shared.start();
        }
        self.checks.start();
    }

    /// The loader's warnings, then the policies' and the TLS settings'.
    pub fn warnings(&self) -> impl Iterator<Item = &ringwall_config::ConfigError> {
        self.snapshot
            .warnings
            .iter()
            .chain(&self.policies.warnings)
            .chain(&self.tls.warnings)
    }

    /// The listener with `key` in this configuration, if it still has one.
    pub fn index_of(&self, key: &ListenerKey) -> Option<usize> {
        self.listeners.iter().position(|l| l.key == *key)
    }

    /// The server TLS configuration of the listener at `index`; `None` for a plain one.
    pub fn listener_tls(&self, index: usize) -> Option<&Arc<rustls::ServerConfig>> {
        self.tls.listeners.get(index)?.as_ref()
    }

    /// How to reach route `route` of ApiInstance `api` over TLS; `None` for `http://`.
    pub fn upstream_tls(&self, api: usize, route: usize) -> Option<&Arc<UpstreamTls>> {
        self.tls.routes.get(api, route)
    }

    /// The ApiInstance with the longest base path the request falls under, then its
    /// first route whose rules match. When that route is weighted (`route-weighted`),
    /// the choice is among every weighted route that matches, in proportion to the
    /// weights, using `pick` (a random number) to choose. `None` when no ApiInstance
    /// takes the request.
    pub fn route<'g, 'r>(
        &'g self,
        listener: usize,
        req: &Request<'_, 'r>,
        pick: u64,
    ) -> Option<Routed<'g, 'r>> {
        // Asterisk-form (`OPTIONS *`) asks about the server, not a resource under a base
        // path: no ApiInstance serves it, and forwarding it would name a path (`/*`) the
        // client never asked for.
        if !req.path.starts_with('/') {
            return None;
        }
        let listener = self.listeners.get(listener)?;
        let (api_index, api, path) = listener.apis.iter().find_map(|&i| {
            let api = &self.snapshot.apis[i];
            api.strip_base(req.path).map(|rest| (i, api, rest))
        })?;
        let path = normalize_path(if path.is_empty() { "/" } else { path });
        let rest = api.strip_base(req.target)?;
        // With an index, only routes whose path pattern matched (or that have a rule with
        // none) are checked whole, in their order.
        let matches = |r: &Route| r.matches(req.method, &path, req.host, |name| req.header(name));
        let chosen = match self.indexes.get(api_index).and_then(Option::as_ref) {
            Some(index) => {
                index.with_candidates(&path, |may| choose_route(api, may, &matches, pick))
            }
            None => choose_route(api, &|_| true, &matches, pick),
        };
        let Some(route_index) = chosen else {
            return Some(Routed {
                api,
                route: None,
                api_index,
                route_index: 0,
                path,
                rest,
            });
        };
        Some(Routed {
            api,
            route: api.routes.get(route_index),
            api_index,
            route_index,
            path,
            rest,
        })
    }
}

/// Each listening address with its ApiInstances, longest base path first.
fn listeners(snapshot: &Snapshot) -> Vec<Listener> {
    let mut listeners: Vec<Listener> = Vec::new();
    for (i, api) in snapshot.apis.iter().enumerate() {
        // Port 0 asks for a port of the system's choosing: each such ApiInstance
        // gets a listener of its own.
        let shared = api.listen.port() != 0;
        match listeners
            .iter_mut()
            .find(|l| shared && l.addr == api.listen)
        {
            Some(l) => l.apis.push(i),
            None => listeners.push(Listener {
                key: ListenerKey {
                    addr: api.listen,
                    port0_api: (!shared).then(|| api.name.clone()),
                },
                addr: api.listen,
                apis: vec![i],
            }),
        }
    }
    for l in &mut listeners {
        l.apis
            .sort_by_key(|&i| std::cmp::Reverse(snapshot.apis[i].base_path.len()));
    }
    listeners
}

/// The path rules are matched against: percent-encoded unreserved characters decoded
/// (`%61dmin` is `admin`), runs of slashes merged, and `.` and `..` segments resolved, as most
/// upstream frameworks do before routing, so that `/%61dmin` or `//admin/./x` cannot slip
/// past a policy bound to `/admin/.*`. Other escapes (`%2F`) stay as they are. The request
/// goes upstream as the client sent it. Borrowed unless there is something to normalise.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let dot_segment = |i: usize| {
        bytes[i] == b'.'
            && (i == 0 || bytes[i - 1] == b'/')
            && matches!(
                bytes.get(i + 1..),
                Some([] | [b'/', ..] | [b'.'] | [b'.', b'/', ..])
            )
    };
    let needs = bytes.contains(&b'%')
        || bytes.windows(2).any(|w| w == b"//")
        || (0..bytes.len()).any(dot_segment);
    if !needs {
        return Cow::Borrowed(path);
    }
    // Decode the unreserved escapes first, so `%2e%2e` is a `..` segment too.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        match escape {
            Some(b) => {
                decoded.push(b);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/').skip(1) {
        match segment {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    let mut normal = String::with_capacity(decoded.len());
    for segment in &out {
        normal.push('/');
        // Only ASCII was decoded, so the bytes are still the text they came from.
        normal.push_str(&String::from_utf8_lossy(segment));
    }
    if normal.is_empty() || trailing {
        normal.push('/');
    }
    Cow::Owned(normal)
}

/// Picks one of the (index, route) pairs with probability proportional to its weight.
/// The first route of `api` that `may` match and `matches`; when it is weighted, one of
/// every weighted route that does, chosen by `pick` (see [`Gateway::route`]).
fn choose_route(
    api: &ApiInstance,
    may: &dyn Fn(usize) -> bool,
    matches: &dyn Fn(&Route) -> bool,
    pick: u64,
) -> Option<usize> {
    let hit = |i: usize, r: &Route| may(i) && matches(r);
    let first = api.routes.iter().enumerate().position(|(i, r)| hit(i, r))?;
    if api.routes[first].weight.is_none() {
        return Some(first);
    }
    let weighted = api
        .routes
        .iter()
        .enumerate()
        .filter(|&(i, r)| r.weight.is_some() && hit(i, r));
    Some(weighted_choice(weighted, pick).unwrap_or(first))
}

fn weighted_choice<'g>(
    routes: impl Iterator<Item = (usize, &'g Route)> + Clone,
    pick: u64,
) -> Option<usize> {
    let total: u64 = routes
        .clone()
        .map(|(_, r)| u64::from(r.weight.unwrap_or(0)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = pick % total;
    for (i, r) in routes {
        let w = u64::from(r.weight.unwrap_or(0));
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request;

    const CONFIG: &str = "apiVersion: gateway.mulesoft.com/v1alpha1
kind: ApiInstance
metadata: {name: wide}
spec:
  address: http://127.0.0.1:8081
  services:
    catchall: {address: 'http://127.0.0.1:9001'}
---
apiVersion: gateway.mulesoft.com/v1alpha1
kind: ApiInstance
metadata: {name: narrow}
spec:
  address: http://127.0.0.1:8081/api
  services:
    orders:
      address: http://127.0.0.1:9002
      routes:
        - rules: [{path: /orders/.*, methods: GET}]
---
apiVersion: gateway.mulesoft.com/v1alpha1
kind: Service
metadata: {name: blue}
spec: {address: 'http://127.0.0.1:9003'}
---
apiVersion: gateway.mulesoft.com/v1alpha1
kind: Service
metadata: {name: green}
spec: {address: 'http://127.0.0.1:9004'}
---
apiVersion: gateway.mulesoft.com/v1alpha1
kind: PolicyBinding
metadata: {name: to-blue}
spec:
  targetRef: {name: narrow}
  policyRef: {name: route-weighted}
  rules: [{path: /canary/.*}]
  config: {destinationRef: {name: blue}, weight: 90}
---
apiVersion: gateway.mulesoft.com/v1alpha1
kind: PolicyBinding
metadata: {name: to-green}
spec:
  targetRef: {name: narrow}
  policyRef: {name: route-weighted}
  rules: [{path: /canary/.*}]
  config: {destinationRef: {name: green}, weight: 10}
";

    fn gateway() -> Gateway {
        let snapshot =
            ringwall_config::load_files(&[("g.yaml".into(), CONFIG.into())]).expect("valid config");
        Gateway::build(Arc::new(snapshot), None).expect("valid policies")
    }

    /// Many routes of every shape: the index must pick what trying them in order picks.
    #[test]
    fn indexed_routing_picks_what_the_routes_in_order_pick() {
        let mut yaml = String::from(
            "apiVersion: gateway.mulesoft.com/v1alpha1\nkind: ApiInstance\nmetadata: {name: a}\n\
             spec:\n  address: http://127.0.0.1:0/base\n---\n\
             apiVersion: gateway.mulesoft.com/v1alpha1\nkind: Service\nmetadata: {name: s}\n\
             spec:\n  address: http://127.0.0.1:9\n",
        );
        let rules = |i: usize| match i % 5 {
            0 => format!("[{{path: /r{i}/.*}}]"),
            1 => format!("[{{path: /r{}/.*, methods: POST}}]", i - 1),
            2 => format!("[{{path: /x/.*}}, {{host: h{i}.test}}]"),
            3 => format!("[{{path: '/r{i}|/same'}}]"),
            _ if i == 34 => "[]".to_owned(),
            _ => format!("[{{methods: DELETE, headers: {{x-r: '{i}'}}}}]"),
        };
        for i in 0..40 {
            yaml.push_str(&format!(
                "---\napiVersion: gateway.mulesoft.com/v1alpha1\nkind: PolicyBinding\n\
                 metadata: {{name: r{i}}}\nspec:\n  targetRef: {{name: a}}\n  \
                 policyRef: {{name: route}}\n  order: {i}\n  rules: {}\n  \
                 config: {{destinationRef: {{name: s}}}}\n",
                rules(i)
            ));
        }
        let snapshot =
            ringwall_config::load_files(&[("g.yaml".into(), yaml)]).expect("valid config");
        let g = Gateway::build(Arc::new(snapshot), None).expect("valid policies");
        assert!(g.indexes[0].is_some(), "40 routes are indexed");
        let api = &g.snapshot.apis[0];
        let requests = [
            "GET /base/r0/a",
            "POST /base/r0/a",
            "POST /base/r10/x",
            "GET /base/x/1",
            "GET /base/same",
            "DELETE /base/nothing",
            "GET /base/r23",
            "GET /base/r38/z",
            "GET /base/unknown",
            "GET /base",
        ];
        for line in requests {
            for extra in ["", "Host: h7.test\r\n", "X-R: 9\r\n"] {
                let raw = format!("{line} HTTP/1.1\r\nHost: a\r\n{extra}\r\n");
                let raw = raw.replacen("Host: a\r\nHost:", "Host:", 1);
                let mut headers = crate::http::header_slots::<{ request::MAX_HEADERS }>();
                let req = request::parse(raw.as_bytes(), &mut headers, 8192)
                    .expect("parses")
                    .expect("complete");
                let routed = g.route(0, &req, 0).expect("the ApiInstance");
                let path = normalize_path(
                    api.strip_base(req.path)
                        .filter(|p| !p.is_empty())
                        .unwrap_or("/"),
                );
                let linear = api
                    .routes
                    .iter()
                    .position(|r| r.matches(req.method, &path, req.host, |n| req.header(n)));
                assert_eq!(routed.route.map(|_| routed.route_index), linear, "{raw:?}");
            }
        }
    }

    /// An ApiInstance with 20 routes, `/{prefix}{i}/...` to route `i`.
    fn indexed(prefix: &str) -> Gateway {
        let mut yaml = String::from(
            "apiVersion: gateway.mulesoft.com/v1alpha1\nkind: ApiInstance\nmetadata: {name: a}\n\
             spec:\n  address: http://127.0.0.1:0\n---\n\
             apiVersion: gateway.mulesoft.com/v1alpha1\nkind: Service\nmetadata: {name: s}\n\
             spec:\n  address: http://127.0.0.1:9\n",
        );
        for i in 0..20 {
            yaml.push_str(&format!(
                "---\napiVersion: gateway.mulesoft.com/v1alpha1\nkind: PolicyBinding\n\
                 metadata: {{name: r{i}}}\nspec:\n  targetRef: {{name: a}}\n  \
                 policyRef: {{name: route}}\n  order: {i}\n  rules: [{{path: /{prefix}{i}/.*}}]\n  \
                 config: {{destinationRef: {{name: s}}}}\n"
            ));
        }
        let snapshot =
            ringwall_config::load_files(&[("g.yaml".into(), yaml)]).expect("valid config");
        Gateway::build(Arc::new(snapshot), None).expect("valid policies")
    }

    fn routed_index(g: &Gateway, path: &str) -> Option<usize> {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut headers = crate::http::header_slots::<{ request::MAX_HEADERS }>();
        let req = request::parse(raw.as_bytes(), &mut headers, 8192).ok()??;
        let routed = g.route(0, &req, 0)?;
        routed.route.map(|_| routed.route_index)
    }

    /// Each thread searches an index with a cache of its own, and a reload's new index
    /// never gets the cache of the one it replaced.
    #[test]
    fn each_thread_keeps_a_search_cache_per_live_index() {
        let cached = || CACHES.with_borrow(|caches| caches.len());
        let before = indexed("a");
        assert!(before.indexes[0].is_some());
        assert_eq!(routed_index(&before, "/a7/x"), Some(7));
        assert_eq!(cached(), 1);
        assert_eq!(routed_index(&before, "/a19/x"), Some(19));
        assert_eq!(cached(), 1, "the same index, the same cache");
        drop(before);
        let after = indexed("b");
        assert_eq!(routed_index(&after, "/a7/x"), None);
        assert_eq!(routed_index(&after, "/b3/x"), Some(3));
        assert_eq!(cached(), 1, "the replaced index's cache was dropped");
        std::thread::scope(|scope| {
            scope.spawn(|| {
                assert_eq!(routed_index(&after, "/b12/y"), Some(12));
                assert_eq!(cached(), 1, "a cache of this thread's own");
            });
        });
    }

    fn route_of(g: &Gateway, raw: &[u8], pick: u64) -> Option<String> {
        let mut headers = crate::http::header_slots::<{ request::MAX_HEADERS }>();
        let req = request::parse(raw, &mut headers, 8192).ok()??;
        let routed = g.route(0, &req, pick)?;
        routed
            .route
            .map(|r| format!("{} {}", r.upstream.name, routed.rest))
    }

    #[test]
    fn one_listener_serves_both_apis_longest_base_path_first() {
        let g = gateway();
        assert_eq!(g.listeners.len(), 1);
        assert_eq!(
            route_of(&g, b"GET /api/orders/7?x HTTP/1.1\r\nHost: a\r\n\r\n", 0).as_deref(),
            Some("narrow/orders /orders/7?x")
        );
        // Under /api but matching no route of the narrower API: no fallback to the wider one.
        assert_eq!(
            route_of(&g, b"POST /api/orders/7 HTTP/1.1\r\nHost: a\r\n\r\n", 0),
            None
        );
        assert_eq!(
            route_of(&g, b"GET /apix HTTP/1.1\r\nHost: a\r\n\r\n", 0).as_deref(),
            Some("wide/catchall /apix")
        );
    }

    #[test]
    fn asterisk_form_matches_no_api() {
        let g = gateway();
        // The wide API has an empty base path: it would take `*` as a path of its own.
        assert_eq!(
            route_of(&g, b"OPTIONS / HTTP/1.1\r\nHost: a\r\n\r\n", 0).as_deref(),
            Some("wide/catchall /")
        );
        assert!(g
            .route(0, &parsed(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 0)
            .is_none());
    }

    fn parsed(raw: &'static [u8]) -> request::Request<'static, 'static> {
        let headers = Box::leak(Box::new(crate::http::header_slots::<
            { request::MAX_HEADERS },
        >()));
        request::parse(raw, headers, 8192)
            .expect("a valid head")
            .expect("a complete head")
    }

    #[test]
    fn paths_are_normalised_for_matching() {
        for (raw, normal) in [
            ("/admin/users", "/admin/users"),
            ("/%61dmin/users", "/admin/users"),
            ("//admin//users", "/admin/users"),
            ("/x/../admin/./users", "/admin/users"),
            ("/%2e%2e/admin", "/admin"),
            ("/a/%2Fb", "/a/%2Fb"),
            ("/a/b/", "/a/b/"),
            ("/a/..", "/"),
            ("/../..", "/"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/..b/", "/a/..b/"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/%zz", "/%zz"),
        ] {
            assert_eq!(normalize_path(raw), normal, "{raw}");
        }
        assert!(matches!(normalize_path("/a/b.c/d"), Cow::Borrowed(_)));
    }

    #[test]
    fn weighted_routes_split_by_weight() {
        let g = gateway();
        let mut blue = 0;
        for pick in 0..1000 {
            let r = route_of(&g, b"GET /api/canary/x HTTP/1.1\r\nHost: a\r\n\r\n", pick).unwrap();
            if r.starts_with("blue") {
                blue += 1;
            } else {
                assert!(r.starts_with("green"), "{r}");
            }
        }
        assert_eq!(blue, 900);
    }
}
