//! What the gateway did, for Prometheus: the `metrics` facade over the Prometheus exporter's
//! recorder, rendered by the admin listener's `GET /metrics` (the exporter runs no listener
//! of its own).
//!
//! The recorder is installed once, before the first snapshot's handles are made, and only
//! when there is an admin listener to scrape it: without one every handle is a no-op. The
//! hot path never names a metric. Handles are registered off it, per snapshot
//! ([`GatewayMetrics`], one [`RouteMetrics`] per route) and per worker ([`WorkerMetrics`]),
//! and a request costs an index and an atomic add on a counter all workers share, contended
//! when several cores serve one route; per-core cells summed at scrape time are the later
//! optimisation. Request durations are kept by the recorder itself ([`Recorder`]), in fixed
//! buckets a sample adds one to: the exporter's histograms keep every sample until a scrape
//! or an upkeep folds them into buckets, and allocate a block per 64 of them, on the
//! request path. No histogram goes through the exporter, so it needs no periodic upkeep
//! (one that did would: its samples are kept until folded). Registering a key again returns
//! the same handle, so a reload keeps every series that survives it.
//!
//! What is already counted elsewhere is read at scrape time ([`Scrape`]): the connection
//! rules' counters (the XDP program's or the accept-time check's) and the generation of the
//! configuration in force.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::formatting::{
    sanitize_label_key, sanitize_label_value, write_help_line, write_type_line,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use ringwall_config::Snapshot;

use crate::error::ProxyError;
use crate::xdp::Counters;

pub const REQUESTS: &str = "ringwall_requests_total";
pub const REQUEST_DURATION: &str = "ringwall_request_duration_seconds";
pub const UPSTREAM_CONNECT_ERRORS: &str = "ringwall_upstream_connect_errors_total";
pub const UPSTREAM_TIMEOUTS: &str = "ringwall_upstream_timeouts_total";
pub const UPSTREAM_CONNECTIONS: &str = "ringwall_upstream_connections_total";
pub const UPSTREAM_RETRIES: &str = "ringwall_upstream_retries_total";
pub const UPSTREAM_EJECTIONS: &str = "ringwall_upstream_ejections_total";
pub const ENDPOINT_HEALTHY: &str = "ringwall_upstream_endpoint_healthy";
pub const ACTIVE_CONNECTIONS: &str = "ringwall_active_connections";
pub const ACCEPT_PAUSED: &str = "ringwall_accept_paused_total";
pub const REFUSED: &str = "ringwall_refused_total";
pub const CONFIG_RELOADS: &str = "ringwall_config_reloads_total";
pub const CONFIG_GENERATION: &str = "ringwall_config_generation";
pub const CONNECTION_RULES: &str = "ringwall_connection_rules_total";
pub const POLICY_DECISIONS: &str = "ringwall_policy_decisions_total";
pub const TLS_HANDSHAKES: &str = "ringwall_tls_handshakes_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "ringwall_tls_handshake_failures_total";
pub const HEAP_FREE: &str = "ringwall_heap_free_bytes";
pub const HEAP_TRIMS: &str = "ringwall_heap_trims_total";

/// Request duration buckets, in seconds: a cached answer is under a millisecond, a slow
/// upstream is seconds, and the default response timeout is 15 s.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const REQUEST_DURATION_HELP: &str = "From a complete request head to the end of the response";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("a metrics recorder is already installed")]
    AlreadyInstalled,
}

/// The recorder: the Prometheus exporter's, with the request durations in fixed buckets of
/// its own.
pub fn recorder() -> Recorder {
    Recorder {
        prometheus: PrometheusBuilder::new().build_recorder(),
        durations: Arc::default(),
    }
}

/// The Prometheus exporter's recorder, but for [`REQUEST_DURATION`], which it keeps itself.
#[derive(Debug)]
pub struct Recorder {
    prometheus: PrometheusRecorder,
    durations: Arc<DurationSeries>,
}

impl Recorder {
    /// What renders this recorder's metrics.
    pub fn handle(&self) -> Handle {
        Handle {
            prometheus: self.prometheus.handle(),
            durations: self.durations.clone(),
        }
    }
}

/// What an [`Exporter`] renders from.
#[derive(Debug, Clone)]
pub struct Handle {
    prometheus: PrometheusHandle,
    durations: Arc<DurationSeries>,
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.prometheus.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.prometheus.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if key.name() == REQUEST_DURATION {
            Histogram::from_arc(self.durations.series(key))
        } else {
            self.prometheus.register_histogram(key, metadata)
        }
    }
}

/// Every series of request durations, by key (ApiInstance and route), rendered in key
/// order. Locked only to register a series (per route, per snapshot) and to render them,
/// never per request: a request records through the `Arc<Durations>` its route holds.
#[derive(Debug, Default)]
#[allow(clippy::disallowed_types)]
struct DurationSeries(std::sync::Mutex<BTreeMap<Key, Arc<Durations>>>);

impl DurationSeries {
    fn series(&self, key: &Key) -> Arc<Durations> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(key.clone()).or_default().clone()
    }

    /// Appends the histogram in the text format: each series' cumulative buckets, sum and
    /// count.
    fn render(&self, out: &mut String) {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if all.is_empty() {
            return;
        }
        let name = REQUEST_DURATION;
        write_help_line(out, name, None, None, REQUEST_DURATION_HELP);
        write_type_line(out, name, None, None, "histogram");
        for (key, durations) in all.iter() {
            let mut labels = String::new();
            for label in key.labels() {
                let _ = write!(
                    labels,
                    "{}=\"{}\",",
                    sanitize_label_key(label.key()),
                    sanitize_label_value(label.value())
                );
            }
            let mut cumulative = 0;
            for (i, bucket) in durations.buckets.iter().enumerate() {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = match DURATION_BUCKETS.get(i) {
                    Some(le) => writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}"),
                    None => writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}"),
                };
            }
            let labels = labels.trim_end_matches(',');
            let sum = durations.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
        out.push('\n');
    }
}

/// Request durations of one series in fixed buckets: a sample is two relaxed atomic adds.
#[derive(Debug, Default)]
struct Durations {
    /// Samples up to `DURATION_BUCKETS[i]` and above the bucket before it; the last, above
    /// them all.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl HistogramFn for Durations {
    fn record(&self, seconds: f64) {
        let i = DURATION_BUCKETS.partition_point(|&le| le < seconds);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        // A float-to-int cast saturates: a negative or NaN sample adds nothing.
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }
}

/// Installs the recorder for the whole process and returns what renders it. Call once,
/// before the first [`GatewayMetrics`] and [`WorkerMetrics`] are made: handles made earlier
/// record nothing.
pub fn install() -> Result<Exporter, MetricsError> {
    let recorder = recorder();
    let exporter = metrics::with_local_recorder(&recorder, || Exporter::new(recorder.handle()));
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::AlreadyInstalled)?;
    Ok(exporter)
}

/// Counts one configuration reload. Off the hot path, so the key is built here.
pub fn count_reload(ok: bool) {
    metrics::counter!(CONFIG_RELOADS, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

// === Requests ===

/// The request methods counted apart; anything else is `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodClass {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl MethodClass {
    pub const ALL: [MethodClass; 8] = [
        MethodClass::Get,
        MethodClass::Head,
        MethodClass::Post,
        MethodClass::Put,
        MethodClass::Delete,
        MethodClass::Patch,
        MethodClass::Options,
        MethodClass::Other,
    ];

    /// Methods are case-sensitive (RFC 9110 §9.1): `get` is `other`.
    pub fn of(method: &str) -> Self {
        match method {
            "GET" => MethodClass::Get,
            "HEAD" => MethodClass::Head,
            "POST" => MethodClass::Post,
            "PUT" => MethodClass::Put,
            "DELETE" => MethodClass::Delete,
            "PATCH" => MethodClass::Patch,
            "OPTIONS" => MethodClass::Options,
            _ => MethodClass::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Get => "GET",
            MethodClass::Head => "HEAD",
            MethodClass::Post => "POST",
            MethodClass::Put => "PUT",
            MethodClass::Delete => "DELETE",
            MethodClass::Patch => "PATCH",
            MethodClass::Options => "OPTIONS",
            MethodClass::Other => "other",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of `status`'s class in [`STATUS_CLASSES`]. A status outside 100..=599 is
/// invalid, and RFC 9110 §15 has clients treat it as a 5xx: so does this.
fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 4,
    }
}

/// The `status_class` label of a response status.
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[class_index(status)]
}

/// Requests of one route (or of none): counts by method and status class, and durations.
#[derive(Debug)]
pub struct RequestMetrics {
    /// By `method as usize * STATUS_CLASSES.len() + class_index(status)`.
    counts: [Counter; MethodClass::ALL.len() * STATUS_CLASSES.len()],
    duration: Histogram,
}

impl RequestMetrics {
    fn register(api: &str, route: &str) -> Self {
        let counts = std::array::from_fn(|i| {
            let method = MethodClass::ALL[i / STATUS_CLASSES.len()];
            let class = STATUS_CLASSES[i % STATUS_CLASSES.len()];
            metrics::counter!(REQUESTS, "api" => api.to_owned(), "route" => route.to_owned(),
                "method" => method.as_str(), "status_class" => class)
        });
        let duration = metrics::histogram!(REQUEST_DURATION, "api" => api.to_owned(),
            "route" => route.to_owned());
        Self { counts, duration }
    }

    /// One exchange that ended with `status` after `elapsed`.
    pub fn record(&self, method: MethodClass, status: u16, elapsed: Duration) {
        let i = method as usize * STATUS_CLASSES.len() + class_index(status);
        if let Some(counter) = self.counts.get(i) {
            counter.increment(1);
        }
        self.duration.record(elapsed);
    }
}

// === Upstreams ===

/// What happened on the way to one upstream (by service name; routes to the same service
/// share the counters).
#[derive(Debug)]
pub struct UpstreamMetrics {
    connect_errors: Counter,
    connect_timeouts: Counter,
    response_timeouts: Counter,
    reused: Counter,
    fresh: Counter,
}

impl UpstreamMetrics {
    fn register(service: &str) -> Self {
        let timeouts = |kind: &'static str| metrics::counter!(UPSTREAM_TIMEOUTS, "service" => service.to_owned(), "kind" => kind);
        let connections = |reused: &'static str| {
            metrics::counter!(UPSTREAM_CONNECTIONS, "service" => service.to_owned(),
                "reused" => reused)
        };
        Self {
            connect_errors: metrics::counter!(UPSTREAM_CONNECT_ERRORS,
                "service" => service.to_owned()),
            connect_timeouts: timeouts("connect"),
            response_timeouts: timeouts("response"),
            reused: connections("true"),
            fresh: connections("false"),
        }
    }

    /// A connection taken for a request: from the pool, or newly connected.
    pub fn connection(&self, reused: bool) {
        if reused {
            self.reused.increment(1);
        } else {
            self.fresh.increment(1);
        }
    }

    /// Counts what `e` says about the upstream: a failed connect (refused, unreachable,
    /// reset; a connect timeout is counted apart), or a timeout. Anything else is left to
    /// the request's status.
    pub fn failed(&self, e: &ProxyError) {
        match e {
            ProxyError::Connect(_) | ProxyError::UpstreamTls(_) => self.connect_errors.increment(1),
            ProxyError::ConnectTimeout => self.connect_timeouts.increment(1),
            ProxyError::UpstreamTimeout => self.response_timeouts.increment(1),
            _ => {}
        }
    }
}

// === Per snapshot ===

/// The handles of one route.
#[derive(Debug)]
pub struct RouteMetrics {
    pub requests: RequestMetrics,
    pub upstream: UpstreamMetrics,
}

/// Every route's handles, built with a snapshot and indexed as the snapshot is.
#[derive(Debug)]
pub struct GatewayMetrics {
    /// `[api][route]`.
    routes: Vec<Vec<RouteMetrics>>,
    /// Requests no route matched, labelled `api=""` and `route=""`.
    no_route: RequestMetrics,
}

impl GatewayMetrics {
    /// Registers the handles of every route of `snapshot` with the recorder in force.
    pub fn new(snapshot: &Snapshot) -> Self {
        let routes = snapshot
            .apis
            .iter()
            .map(|api| {
                api.routes
                    .iter()
                    .map(|route| RouteMetrics {
                        requests: RequestMetrics::register(&api.name, &route.name),
                        upstream: UpstreamMetrics::register(&route.upstream.name),
                    })
                    .collect()
            })
            .collect();
        Self {
            routes,
            no_route: RequestMetrics::register("", ""),
        }
    }

    /// The route at the indexes `Gateway::route` gave for the same snapshot.
    pub fn route(&self, api: usize, route: usize) -> Option<&RouteMetrics> {
        self.routes.get(api)?.get(route)
    }

    pub fn no_route(&self) -> &RequestMetrics {
        &self.no_route
    }
}

// === Per worker ===

/// The statuses the gateway answers itself; any other is counted as `other`.
const REFUSED_STATUSES: [(u16, &str); 13] = [
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (408, "408"),
    (413, "413"),
    (414, "414"),
    (417, "417"),
    (429, "429"),
    (431, "431"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

/// Handles a worker keeps for its whole life: they do not depend on the configuration.
#[derive(Debug)]
pub struct WorkerMetrics {
    active: Gauge,
    accept_paused: Counter,
    /// By index in [`REFUSED_STATUSES`], then `other`.
    refused: [Counter; REFUSED_STATUSES.len() + 1],
}

impl WorkerMetrics {
    /// Registers the handles with the recorder in force.
    pub fn register() -> Self {
        Self {
            active: metrics::gauge!(ACTIVE_CONNECTIONS),
            accept_paused: metrics::counter!(ACCEPT_PAUSED),
            refused: std::array::from_fn(|i| {
                let status = REFUSED_STATUSES.get(i).map_or("other", |&(_, s)| s);
                metrics::counter!(REFUSED, "status" => status)
            }),
        }
    }

    pub fn connection_opened(&self) {
        self.active.increment(1.0);
    }

    pub fn connection_closed(&self) {
        self.active.decrement(1.0);
    }

    /// The worker reached its share of `maxConnections` and stopped accepting for a while.
    pub fn accept_paused(&self) {
        self.accept_paused.increment(1);
    }

    /// A response the gateway wrote itself instead of the upstream's.
    pub fn refused(&self, status: u16) {
        let i = REFUSED_STATUSES
            .iter()
            .position(|&(s, _)| s == status)
            .unwrap_or(REFUSED_STATUSES.len());
        if let Some(counter) = self.refused.get(i) {
            counter.increment(1);
        }
    }
}

// === Scraping ===

/// Where connection rules are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// The XDP program: its counters are packets.
    Xdp,
    /// The accept-time check: its counters are connections.
    Accept,
}

impl Plane {
    pub fn as_str(self) -> &'static str {
        match self {
            Plane::Xdp => "xdp",
            Plane::Accept => "accept",
        }
    }

    /// What the plane's counters count.
    pub fn unit(self) -> &'static str {
        match self {
            Plane::Xdp => "packets",
            Plane::Accept => "connections",
        }
    }
}

const OUTCOMES: [&str; 4] = ["passed", "dropped_deny", "dropped_allow", "dropped_rate"];

/// What is read afresh at every scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scrape {
    /// The generation of the configuration in force.
    pub generation: Option<u64>,
    /// The connection rules' counters, where rules are enforced.
    pub connection_rules: Option<(Plane, Counters)>,
}

/// Renders the recorder's metrics as Prometheus text.
#[derive(Debug, Clone)]
pub struct Exporter {
    handle: Handle,
    /// `[plane][outcome]`, in the order of [`Plane`] and [`OUTCOMES`].
    connection_rules: [[Counter; OUTCOMES.len()]; 2],
    generation: Gauge,
}

impl Exporter {
    /// Describes the metrics and registers the scrape-time ones with the recorder in force,
    /// which must be the one `handle` reads.
    pub fn new(handle: Handle) -> Self {
        describe();
        // Both results exist from the start, so a rate over them never starts with a gap.
        for result in ["ok", "failed"] {
            metrics::counter!(CONFIG_RELOADS, "result" => result).absolute(0);
        }
        let plane = |plane: Plane| {
            OUTCOMES.map(|outcome| {
                metrics::counter!(CONNECTION_RULES, "plane" => plane.as_str(), "outcome" => outcome)
            })
        };
        Self {
            handle,
            connection_rules: [plane(Plane::Xdp), plane(Plane::Accept)],
            generation: metrics::gauge!(CONFIG_GENERATION),
        }
    }

    /// The metrics in Prometheus text format (version 0.0.4), with `scrape`'s values.
    pub fn render(&self, scrape: &Scrape) -> String {
        if let Some(generation) = scrape.generation {
            self.generation.set(generation as f64);
        }
        if let Some((plane, c)) = scrape.connection_rules {
            let counters = &self.connection_rules[plane as usize];
            for (counter, value) in
                counters
                    .iter()
                    .zip([c.passed, c.drop_deny, c.drop_allow, c.drop_rate])
            {
                // The plane's own counters only grow; `absolute` keeps the highest seen.
                counter.absolute(value);
            }
        }
        let mut out = self.handle.prometheus.render();
        self.handle.durations.render(&mut out);
        out
    }
}

// === TLS handshakes ===

/// Which end of the gateway a handshake was with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSide {
    Client,
    Upstream,
}

impl TlsSide {
    fn label(self) -> &'static str {
        match self {
            TlsSide::Client => "client",
            TlsSide::Upstream => "upstream",
        }
    }
}

/// Counts a completed handshake. The counter is looked up by its labels each time: a
/// handshake costs far more than the lookup, and the labels are few.
pub fn tls_handshake(side: TlsSide, version: &'static str) {
    metrics::counter!(TLS_HANDSHAKES, "side" => side.label(), "version" => version).increment(1);
}

/// Counts a failed handshake by its reason.
pub fn tls_failure(side: TlsSide, reason: crate::tls::HandshakeFailure) {
    metrics::counter!(TLS_HANDSHAKE_FAILURES, "side" => side.label(), "reason" => reason.as_str())
        .increment(1);
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        REQUESTS,
        "Requests by ApiInstance, route, method and the status class of the response"
    );
    // REQUEST_DURATION is described where it is rendered (`DurationSeries::render`).
    describe_counter!(
        UPSTREAM_CONNECT_ERRORS,
        "Upstream connects refused, reset or unreachable (timeouts apart)"
    );
    describe_counter!(UPSTREAM_TIMEOUTS, "Upstream connect and response timeouts");
    describe_counter!(
        UPSTREAM_CONNECTIONS,
        "Upstream connections taken for a request: from the pool (reused) or new"
    );
    describe_counter!(
        UPSTREAM_RETRIES,
        "Requests sent again to another endpoint: after a failed connect, or a reset before any response byte"
    );
    describe_counter!(
        UPSTREAM_EJECTIONS,
        "Upstream endpoints set aside for a while after a failed connect or 5 answers of 5xx in a row"
    );
    describe_gauge!(
        ENDPOINT_HEALTHY,
        "Whether a Service's health check has its endpoint in (1) or out (0)"
    );
    describe_gauge!(ACTIVE_CONNECTIONS, "Open client connections");
    describe_counter!(
        ACCEPT_PAUSED,
        "Times a worker stopped accepting at its share of limits.maxConnections"
    );
    describe_counter!(REFUSED, "Responses the gateway wrote itself, by status");
    describe_counter!(
        POLICY_DECISIONS,
        "Per-request policy decisions: pass, reject, or answer (a CORS preflight)"
    );
    describe_counter!(
        TLS_HANDSHAKES,
        "TLS handshakes completed, with clients and with upstreams, by version"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed, with clients and with upstreams, by reason"
    );
    describe_counter!(CONFIG_RELOADS, "Configuration reloads, by result");
    describe_gauge!(
        HEAP_FREE,
        "Bytes the allocator held free (not given back to the kernel) at its last look, every 2 s"
    );
    describe_counter!(
        HEAP_TRIMS,
        "Times the allocator's free memory was given back to the kernel (past 8 MiB free)"
    );
    describe_gauge!(
        CONFIG_GENERATION,
        "Generation of the configuration in force"
    );
    describe_gauge!(
        crate::shared::UP,
        "Whether the shared storage (Redis) answers: 1 or 0"
    );
    describe_counter!(
        crate::shared::ERRORS,
        "Shared-storage calls that failed or timed out, and failed connects"
    );
    describe_counter!(
        CONNECTION_RULES,
        "Connection rules' decisions: packets in XDP, connections at accept"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    use metrics::with_local_recorder;

    /// One sample of the text format: name, labels, value.
    type Sample = (String, BTreeMap<String, String>, f64);

    /// Parses the text format, enough for what this crate renders (no escapes in labels).
    fn parse(text: &str) -> Vec<Sample> {
        text.lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.strip_suffix('}').expect("}")),
                    None => (series, ""),
                };
                let labels = labels
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once('=').expect("=");
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels, value.parse().expect("number"))
            })
            .collect()
    }

    /// The value of the one sample of `name` with exactly `labels`.
    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|s| s.2)
    }

    const CONFIG: &str = "apiVersion: gateway.mulesoft.com/v1alpha1
kind: ApiInstance
metadata: {name: shop}
spec:
  address: http://127.0.0.1:0
  services:
    orders:
      address: http://127.0.0.1:9001
      routes:
        - rules: [{path: /orders/.*}]
    rest: {address: 'http://127.0.0.1:9002'}
";

    struct Fixture {
        exporter: Exporter,
        gateway: GatewayMetrics,
        worker: WorkerMetrics,
    }

    /// Handles on a recorder of the test's own, so tests never touch the global one.
    fn fixture() -> Fixture {
        let snapshot =
            ringwall_config::load_files(&[("m.yaml".into(), CONFIG.into())]).expect("valid config");
        let recorder = recorder();
        with_local_recorder(&recorder, || Fixture {
            exporter: Exporter::new(recorder.handle()),
            gateway: GatewayMetrics::new(&snapshot),
            worker: WorkerMetrics::register(),
        })
    }

    #[test]
    fn status_classes_follow_the_first_digit() {
        let cases = [
            (100, "1xx"),
            (101, "1xx"),
            (200, "2xx"),
            (204, "2xx"),
            (304, "3xx"),
            (404, "4xx"),
            (499, "4xx"),
            (500, "5xx"),
            (599, "5xx"),
            // Invalid statuses count as server errors, as RFC 9110 has clients treat them.
            (600, "5xx"),
            (99, "5xx"),
            (0, "5xx"),
            (u16::MAX, "5xx"),
        ];
        for (status, class) in cases {
            assert_eq!(status_class(status), class, "{status}");
        }
        assert_eq!(MethodClass::of("PATCH"), MethodClass::Patch);
        assert_eq!(MethodClass::of("get"), MethodClass::Other);
        assert_eq!(MethodClass::of("PROPFIND").as_str(), "other");
    }

    #[test]
    fn route_handles_carry_api_route_method_and_status_class() {
        let f = fixture();
        let orders = f.gateway.route(0, 0).expect("orders route");
        orders
            .requests
            .record(MethodClass::Get, 200, Duration::from_millis(3));
        orders
            .requests
            .record(MethodClass::Get, 204, Duration::from_millis(30));
        orders
            .requests
            .record(MethodClass::Post, 502, Duration::from_secs(20));
        f.gateway
            .no_route()
            .record(MethodClass::Other, 404, Duration::ZERO);
        assert!(f.gateway.route(0, 2).is_none() && f.gateway.route(9, 0).is_none());
        let s = parse(&f.exporter.render(&Scrape::default()));

        let requests = |route: &str, method: &str, class: &str| {
            let api = if route.is_empty() { "" } else { "shop" };
            value(
                &s,
                REQUESTS,
                &[
                    ("api", api),
                    ("route", route),
                    ("method", method),
                    ("status_class", class),
                ],
            )
        };
        assert_eq!(requests("orders", "GET", "2xx"), Some(2.0));
        assert_eq!(requests("orders", "POST", "5xx"), Some(1.0));
        assert_eq!(requests("", "other", "4xx"), Some(1.0));
        // Registered with the snapshot: present at zero before any request.
        assert_eq!(requests("rest", "DELETE", "3xx"), Some(0.0));
        let per_route = s
            .iter()
            .filter(|(n, l, _)| n == REQUESTS && l["route"] == "rest")
            .count();
        assert_eq!(per_route, 8 * 5);
    }

    #[test]
    fn durations_fall_into_the_gateway_buckets() {
        let f = fixture();
        let orders = f.gateway.route(0, 0).expect("orders route");
        for ms in [0.2, 3.0, 30.0, 20_000.0] {
            orders
                .requests
                .record(MethodClass::Get, 200, Duration::from_secs_f64(ms / 1000.0));
        }
        let s = parse(&f.exporter.render(&Scrape::default()));
        let bucket = |le: &str| {
            value(
                &s,
                &format!("{REQUEST_DURATION}_bucket"),
                &[("api", "shop"), ("route", "orders"), ("le", le)],
            )
        };
        let les: Vec<String> = s
            .iter()
            .filter(|(n, l, _)| n.ends_with("_bucket") && l["route"] == "orders")
            .map(|(_, l, _)| l["le"].clone())
            .collect();
        let mut want: Vec<String> = DURATION_BUCKETS.iter().map(f64::to_string).collect();
        want.push("+Inf".into());
        assert_eq!(les, want);
        assert_eq!(bucket("0.0005"), Some(1.0));
        assert_eq!(bucket("0.005"), Some(2.0));
        assert_eq!(bucket("0.05"), Some(3.0));
        assert_eq!(bucket("10"), Some(3.0));
        assert_eq!(bucket("+Inf"), Some(4.0));
        let count = value(
            &s,
            &format!("{REQUEST_DURATION}_count"),
            &[("api", "shop"), ("route", "orders")],
        );
        assert_eq!(count, Some(4.0));
        let sum = value(
            &s,
            &format!("{REQUEST_DURATION}_sum"),
            &[("api", "shop"), ("route", "orders")],
        )
        .expect("a sum");
        assert!((sum - 20.0332).abs() < 1e-6, "{sum}");
        let text = f.exporter.render(&Scrape::default());
        assert!(text.contains(&format!("# TYPE {REQUEST_DURATION} histogram\n")));
        assert!(text.contains(&format!(
            "# HELP {REQUEST_DURATION} {REQUEST_DURATION_HELP}\n"
        )));
    }

    #[test]
    fn a_duration_series_is_one_per_key_and_rendered_in_key_order() {
        let series = DurationSeries::default();
        let key = |route: &'static str| {
            Key::from_parts(REQUEST_DURATION, vec![metrics::Label::new("route", route)])
        };
        let b = series.series(&key("b"));
        let a = series.series(&key("a"));
        assert!(
            Arc::ptr_eq(&b, &series.series(&key("b"))),
            "a reload keeps the series"
        );
        assert!(!Arc::ptr_eq(&a, &b));
        b.record(0.002);
        let mut text = String::new();
        series.render(&mut text);
        let counts: Vec<&str> = text.lines().filter(|l| l.contains("_count")).collect();
        assert_eq!(
            counts,
            [
                format!("{REQUEST_DURATION}_count{{route=\"a\"}} 0"),
                format!("{REQUEST_DURATION}_count{{route=\"b\"}} 1"),
            ]
        );
    }

    #[test]
    fn upstream_worker_and_reload_handles_count_what_they_say() {
        let f = fixture();
        let up = &f.gateway.route(0, 0).expect("orders route").upstream;
        up.connection(true);
        up.connection(true);
        up.connection(false);
        up.failed(&ProxyError::Connect(
            std::io::ErrorKind::ConnectionRefused.into(),
        ));
        up.failed(&ProxyError::ConnectTimeout);
        up.failed(&ProxyError::UpstreamTimeout);
        up.failed(&ProxyError::UpstreamClosed);
        f.worker.connection_opened();
        f.worker.connection_opened();
        f.worker.connection_closed();
        f.worker.refused(404);
        f.worker.refused(431);
        f.worker.refused(418);
        let s = parse(&f.exporter.render(&Scrape {
            generation: Some(7),
            connection_rules: None,
        }));
        let service = ("service", "shop/orders");
        let connections = |reused| value(&s, UPSTREAM_CONNECTIONS, &[service, ("reused", reused)]);
        assert_eq!(connections("true"), Some(2.0));
        assert_eq!(connections("false"), Some(1.0));
        assert_eq!(value(&s, UPSTREAM_CONNECT_ERRORS, &[service]), Some(1.0));
        let timeouts = |kind| value(&s, UPSTREAM_TIMEOUTS, &[service, ("kind", kind)]);
        assert_eq!(timeouts("connect"), Some(1.0));
        assert_eq!(timeouts("response"), Some(1.0));
        assert_eq!(value(&s, ACTIVE_CONNECTIONS, &[]), Some(1.0));
        let refused = |status| value(&s, REFUSED, &[("status", status)]);
        assert_eq!(refused("404"), Some(1.0));
        assert_eq!(refused("431"), Some(1.0));
        assert_eq!(refused("other"), Some(1.0));
        assert_eq!(refused("502"), Some(0.0));
        assert_eq!(value(&s, CONFIG_GENERATION, &[]), Some(7.0));
        assert_eq!(value(&s, CONFIG_RELOADS, &[("result", "ok")]), Some(0.0));
        assert_eq!(
            value(&s, CONFIG_RELOADS, &[("result", "failed")]),
            Some(0.0)
        );
    }

    #[test]
    fn connection_rule_counters_are_read_at_scrape_time() {
        let f = fixture();
        let mut c = Counters {
            passed: 10,
            drop_deny: 2,
            drop_allow: 3,
            drop_rate: 4,
        };
        let scrape = |c| Scrape {
            generation: None,
            connection_rules: Some((Plane::Xdp, c)),
        };
        f.exporter.render(&scrape(c));
        c.passed = 15;
        let s = parse(&f.exporter.render(&scrape(c)));
        let rules = |plane, outcome| {
            value(
                &s,
                CONNECTION_RULES,
                &[("plane", plane), ("outcome", outcome)],
            )
        };
        assert_eq!(rules("xdp", "passed"), Some(15.0));
        assert_eq!(rules("xdp", "dropped_deny"), Some(2.0));
        assert_eq!(rules("xdp", "dropped_allow"), Some(3.0));
        assert_eq!(rules("xdp", "dropped_rate"), Some(4.0));
        assert_eq!(rules("accept", "passed"), Some(0.0));
        let text = f.exporter.render(&Scrape::default());
        assert!(text.contains(&format!("# TYPE {CONNECTION_RULES} counter")));
        assert!(text.contains(&format!("# HELP {REQUESTS} ")));
    }
}
