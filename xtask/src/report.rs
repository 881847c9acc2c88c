//! The bench's arithmetic and its outputs: medians per (scenario, policies, peer, mode,
//! connections), of requests/s and of the latency at each percentile wrk reported; the
//! Ringwall/nginx, Ringwall/HAProxy and Ringwall/Envoy ratios (the figures that mean something
//! on a noisy shared machine, because both sides are measured in the same run), and those
//! against the floor: Ringwall/floor (how much of the machine's ceiling Ringwall reaches) and
//! floor/nginx, floor/HAProxy (the most any proxy could reach over them here); each proxy's
//! scaling, two workers over one; the printed tables and the JSON document.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::peers::Mode;
use crate::wrk::WrkReport;

/// One wrk run (or one run of the handshake client, in wrk's shape).
#[derive(Debug, Clone)]
pub struct Run {
    pub scenario: String,
    /// The policy set (`none`, `typical`).
    pub policies: String,
    /// What of it the peer enforces (nginx without njs skips JWT).
    pub applied: Vec<String>,
    pub peer: String,
    pub mode: String,
    pub conns: u32,
    pub rep: u32,
    pub report: WrkReport,
    /// What the proxy's processes ran meanwhile (the TLS scenarios measure it).
    pub peer_cpu: Option<PeerCpu>,
}

/// CPU time the proxy's processes ran during a run: the figure that still says what a proxy
/// costs when the client, not the proxy, is what ran out of CPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerCpu {
    /// Of one CPU, over the run.
    pub busy_pct: f64,
    pub us_per_request: f64,
    /// The share of that time spent in the kernel (`stime` over `utime + stime`).
    pub system_pct: f64,
}

/// The runs of one (scenario, policies, peer, mode, connections), summarised.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub scenario: String,
    pub policies: String,
    pub applied: Vec<String>,
    pub peer: String,
    pub mode: String,
    pub conns: u32,
    pub runs: usize,
    pub requests_per_sec: f64,
    /// (max - min) / median of requests/s, in percent.
    pub spread_pct: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// The median over the runs of the latency at each percentile (the plot's points).
    pub percentiles: Vec<(f64, f64)>,
    /// Socket errors and non-2xx responses, summed over the runs.
    pub errors: u64,
    /// Medians, when the runs measured it.
    pub peer_cpu: Option<PeerCpu>,
}

/// One peer's figures (Ringwall's, or the floor's) divided by another's, for one (scenario,
/// policies, mode, connections).
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    pub subject: String,
    pub scenario: String,
    pub policies: String,
    pub mode: String,
    pub conns: u32,
    pub baseline: String,
    pub requests_per_sec: f64,
    pub p99: f64,
    pub p999: f64,
    /// The subject's CPU per request over the baseline's, when both were measured.
    pub cpu_per_request: Option<f64>,
}

impl Ratio {
    /// `subject/baseline`, as the tables and the JSON name it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.subject, self.baseline)
    }
}

/// A peer with two workers over itself with one (both unpinned), for one (scenario,
/// policies, connections).
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    pub scenario: String,
    pub policies: String,
    pub peer: String,
    pub conns: u32,
    pub requests_per_sec: f64,
    /// CPU per request with two workers over that with one, when both were measured.
    pub cpu_per_request: Option<f64>,
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

pub fn spread_pct(values: &[f64]) -> f64 {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match median(values) {
        Some(median) if median > 0.0 => 100.0 * (max - min) / median,
        _ => 0.0,
    }
}

/// Whether a run belongs to a row's group.
fn same_group(run: &Run, key: &(&str, &str, &str, &str, u32)) -> bool {
    let &(scenario, policies, peer, mode, conns) = key;
    run.scenario == scenario
        && run.policies == policies
        && run.peer == peer
        && run.mode == mode
        && run.conns == conns
}

/// One row per (scenario, policies, peer, mode, connections), in the order first run.
pub fn summarize(runs: &[Run]) -> Vec<Row> {
    let mut keys: Vec<(&str, &str, &str, &str, u32)> = Vec::new();
    for run in runs {
        let key = (
            run.scenario.as_str(),
            run.policies.as_str(),
            run.peer.as_str(),
            run.mode.as_str(),
            run.conns,
        );
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|key| {
            let (scenario, policies, peer, mode, conns) = key;
            let group: Vec<&Run> = runs.iter().filter(|r| same_group(r, &key)).collect();
            let of = |field: fn(&WrkReport) -> f64| -> Vec<f64> {
                group.iter().map(|r| field(&r.report)).collect()
            };
            let rps = of(|r| r.requests_per_sec);
            let cpus: Vec<PeerCpu> = group.iter().filter_map(|r| r.peer_cpu).collect();
            let peer_cpu = (!cpus.is_empty()).then(|| {
                let of = |field: fn(&PeerCpu) -> f64| -> f64 {
                    median(&cpus.iter().map(field).collect::<Vec<_>>()).unwrap_or(0.0)
                };
                PeerCpu {
                    busy_pct: of(|c| c.busy_pct),
                    us_per_request: of(|c| c.us_per_request),
                    system_pct: of(|c| c.system_pct),
                }
            });
            let reports: Vec<&WrkReport> = group.iter().map(|r| &r.report).collect();
            Row {
                scenario: scenario.to_owned(),
                policies: policies.to_owned(),
                applied: group.first().map(|r| r.applied.clone()).unwrap_or_default(),
                peer: peer.to_owned(),
                mode: mode.to_owned(),
                conns,
                runs: group.len(),
                requests_per_sec: median(&rps).unwrap_or(0.0),
                spread_pct: spread_pct(&rps),
                p50_us: median(&of(|r| r.p50_us)).unwrap_or(0.0),
                p99_us: median(&of(|r| r.p99_us)).unwrap_or(0.0),
                p999_us: median(&of(|r| r.p999_us)).unwrap_or(0.0),
                percentiles: median_percentiles(&reports),
                errors: group.iter().map(|r| r.report.errors()).sum(),
                peer_cpu,
            }
        })
        .collect()
}

/// At each percentile the first run reported, the median of the runs' latencies there.
fn median_percentiles(reports: &[&WrkReport]) -> Vec<(f64, f64)> {
    let Some(first) = reports.first() else {
        return Vec::new();
    };
    first
        .percentiles
        .iter()
        .filter_map(|&(pct, _)| {
            let values: Vec<f64> = reports
                .iter()
                .filter_map(|r| r.percentiles.iter().find(|(p, _)| *p == pct))
                .map(|&(_, us)| us)
                .collect();
            median(&values).map(|us| (pct, us))
        })
        .collect()
}

/// The comparisons, (subject, baseline): Ringwall with each peer, then the floor with the
/// proxies it bounds.
pub const COMPARISONS: [(&str, &str); 6] = [
    ("ringwall", "nginx"),
    ("ringwall", "haproxy"),
    ("ringwall", "envoy"),
    ("ringwall", "floor"),
    ("floor", "nginx"),
    ("floor", "haproxy"),
];

/// Each comparison for every (scenario, policies, mode, connections) where both peers ran,
/// by subject, then in the rows' order, then by baseline.
pub fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let mut ratios = Vec::new();
    for subject_name in ["ringwall", "floor"] {
        for subject in rows.iter().filter(|r| r.peer == subject_name) {
            let baselines = COMPARISONS
                .iter()
                .filter(|(s, _)| *s == subject_name)
                .map(|&(_, baseline)| baseline);
            for baseline in baselines {
                let Some(base) = rows.iter().find(|r| {
                    r.peer == baseline
                        && r.scenario == subject.scenario
                        && r.policies == subject.policies
                        && r.mode == subject.mode
                        && r.conns == subject.conns
                }) else {
                    continue;
                };
                ratios.push(Ratio {
                    subject: subject_name.to_owned(),
                    scenario: subject.scenario.clone(),
                    policies: subject.policies.clone(),
                    mode: subject.mode.clone(),
                    conns: subject.conns,
                    baseline: baseline.to_owned(),
                    requests_per_sec: divide(subject.requests_per_sec, base.requests_per_sec),
                    p99: divide(subject.p99_us, base.p99_us),
                    p999: divide(subject.p999_us, base.p999_us),
                    cpu_per_request: subject
                        .peer_cpu
                        .zip(base.peer_cpu)
                        .map(|(r, b)| divide(r.us_per_request, b.us_per_request)),
                });
            }
        }
    }
    ratios
}

/// Each peer's `2-workers` row over its `unpinned` row, where both ran.
pub fn scaling(rows: &[Row]) -> Vec<Scaling> {
    let two = rows.iter().filter(|r| r.mode == Mode::TwoWorkers.name());
    two.filter_map(|two| {
        let one = rows.iter().find(|r| {
            r.mode == Mode::Unpinned.name()
                && r.peer == two.peer
                && r.scenario == two.scenario
                && r.policies == two.policies
                && r.conns == two.conns
        })?;
        Some(Scaling {
            scenario: two.scenario.clone(),
            policies: two.policies.clone(),
            peer: two.peer.clone(),
            conns: two.conns,
            requests_per_sec: divide(two.requests_per_sec, one.requests_per_sec),
            cpu_per_request: two
                .peer_cpu
                .zip(one.peer_cpu)
                .map(|(t, o)| divide(t.us_per_request, o.us_per_request)),
        })
    })
    .collect()
}

fn divide(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// What a row's peer enforced, short: `rl+hdr+jwt`.
fn applied_short(applied: &[String]) -> String {
    let short: Vec<&str> = applied
        .iter()
        .map(|policy| match policy.as_str() {
            "rate-limit" => "rl",
            "header-injection" => "hdr",
            other => other,
        })
        .collect();
    if short.is_empty() {
        "-".to_owned()
    } else {
        short.join("+")
    }
}

/// The medians; with an `applied` column when some row ran policies, and the proxies' CPU
/// columns when some row measured it.
pub fn table(rows: &[Row]) -> String {
    let cpu = rows.iter().any(|row| row.peer_cpu.is_some());
    let applied = rows.iter().any(|row| !row.applied.is_empty());
    let mut out = format!(
        "{:<9} {:<9} {:>5} {:>11} {:>8} {:>8} {:>9} {:>9} {:>7}",
        "peer", "mode", "conns", "req/s", "spread%", "p50 µs", "p99 µs", "p99.9 µs", "errors"
    );
    if applied {
        let _ = write!(out, " {:<11}", "applied");
    }
    if cpu {
        let _ = write!(
            out,
            " {:>9} {:>10} {:>5}",
            "peer CPU%", "CPU µs/req", "sys%"
        );
    }
    out.truncate(out.trim_end_matches(' ').len());
    out.push('\n');
    for row in rows {
        let _ = write!(
            out,
            "{:<9} {:<9} {:>5} {:>11.0} {:>8.1} {:>8.0} {:>9.0} {:>9.0} {:>7}",
            row.peer,
            row.mode,
            row.conns,
            row.requests_per_sec,
            row.spread_pct,
            row.p50_us,
            row.p99_us,
            row.p999_us,
            row.errors
        );
        if applied {
            let _ = write!(out, " {:<11}", applied_short(&row.applied));
        }
        match (cpu, row.peer_cpu) {
            (true, Some(c)) => {
                let _ = write!(
                    out,
                    " {:>9.0} {:>10.1} {:>5.0}",
                    c.busy_pct, c.us_per_request, c.system_pct
                );
            }
            (true, None) => {
                let _ = write!(out, " {:>9} {:>10} {:>5}", "-", "-", "-");
            }
            (false, _) => {}
        }
        // Trailing spaces from an `applied` column at the end of the line.
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    }
    out
}

/// The ratios; with the subject's CPU per request over the baseline's when it was measured.
pub fn ratio_table(ratios: &[Ratio]) -> String {
    let cpu = ratios.iter().any(|ratio| ratio.cpu_per_request.is_some());
    let mut out = format!(
        "{:<18} {:<9} {:>5} {:>7} {:>7} {:>7}",
        "ratio", "mode", "conns", "req/s", "p99", "p99.9"
    );
    if cpu {
        let _ = write!(out, " {:>7}", "CPU/req");
    }
    out.push('\n');
    for ratio in ratios {
        let _ = write!(
            out,
            "{:<18} {:<9} {:>5} {:>7.2} {:>7.2} {:>7.2}",
            ratio.name(),
            ratio.mode,
            ratio.conns,
            ratio.requests_per_sec,
            ratio.p99,
            ratio.p999
        );
        if cpu {
            let _ = match ratio.cpu_per_request {
                Some(value) => write!(out, " {value:>7.2}"),
                None => write!(out, " {:>7}", "-"),
            };
        }
        out.push('\n');
    }
    out
}

/// The scaling figures: req/s and CPU per request, two workers over one.
pub fn scaling_table(scaling: &[Scaling]) -> String {
    let mut out = format!(
        "{:<9} {:>5} {:>13} {:>13}\n",
        "peer", "conns", "req/s 2w/1w", "CPU/req 2w/1w"
    );
    for s in scaling {
        let _ = write!(
            out,
            "{:<9} {:>5} {:>13.2}",
            s.peer, s.conns, s.requests_per_sec
        );
        let _ = match s.cpu_per_request {
            Some(value) => writeln!(out, " {value:>13.2}"),
            None => writeln!(out, " {:>13}", "-"),
        };
    }
    out
}

/// The whole bench as JSON: its settings, every run, the medians, the ratios and the
/// scaling.
pub fn to_json(settings: Value, runs: &[Run]) -> Value {
    let rows = summarize(runs);
    let ratios = ratios(&rows);
    let scaling = scaling(&rows);
    json!({
        "settings": settings,
        "runs": runs.iter().map(|run| json!({
            "scenario": run.scenario,
            "policies": run.policies,
            "applied": run.applied,
            "peer": run.peer,
            "mode": run.mode,
            "conns": run.conns,
            "rep": run.rep,
            "requests": run.report.requests,
            "requests_per_sec": run.report.requests_per_sec,
            "p50_us": run.report.p50_us,
            "p99_us": run.report.p99_us,
            "p999_us": run.report.p999_us,
            "percentiles": run.report.percentiles,
            "socket_errors": run.report.socket_errors,
            "non_2xx": run.report.non_2xx,
            "peer_cpu_pct": run.peer_cpu.map(|c| c.busy_pct),
            "peer_cpu_us_per_request": run.peer_cpu.map(|c| c.us_per_request),
            "peer_cpu_system_pct": run.peer_cpu.map(|c| c.system_pct),
        })).collect::<Vec<_>>(),
        "medians": rows.iter().map(|row| json!({
            "scenario": row.scenario,
            "policies": row.policies,
            "applied": row.applied,
            "peer": row.peer,
            "mode": row.mode,
            "conns": row.conns,
            "runs": row.runs,
            "requests_per_sec": row.requests_per_sec,
            "spread_pct": row.spread_pct,
            "p50_us": row.p50_us,
            "p99_us": row.p99_us,
            "p999_us": row.p999_us,
            "percentiles": row.percentiles,
            "errors": row.errors,
            "peer_cpu_pct": row.peer_cpu.map(|c| c.busy_pct),
            "peer_cpu_us_per_request": row.peer_cpu.map(|c| c.us_per_request),
            "peer_cpu_system_pct": row.peer_cpu.map(|c| c.system_pct),
        })).collect::<Vec<_>>(),
        // NaN (a zero baseline) becomes null.
        "ratios": ratios.iter().map(|ratio| json!({
            "ratio": ratio.name(),
            "scenario": ratio.scenario,
            "policies": ratio.policies,
            "mode": ratio.mode,
            "conns": ratio.conns,
            "requests_per_sec": ratio.requests_per_sec,
            "p99": ratio.p99,
            "p999": ratio.p999,
            "cpu_per_request": ratio.cpu_per_request,
        })).collect::<Vec<_>>(),
        "scaling": scaling.iter().map(|s| json!({
            "ratio": "2-workers/unpinned",
            "scenario": s.scenario,
            "policies": s.policies,
            "peer": s.peer,
            "conns": s.conns,
            "requests_per_sec": s.requests_per_sec,
            "cpu_per_request": s.cpu_per_request,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(peer: &str, conns: u32, rps: f64, p99_us: f64, errors: u64) -> Run {
        Run {
            scenario: "small".to_owned(),
            policies: "none".to_owned(),
            applied: Vec::new(),
            peer: peer.to_owned(),
            mode: "pinned".to_owned(),
            conns,
            rep: 1,
            report: WrkReport {
                requests: 1000,
                requests_per_sec: rps,
                p50_us: p99_us / 2.0,
                p99_us,
                p999_us: p99_us * 2.0,
                percentiles: vec![(50.0, p99_us / 2.0), (99.0, p99_us), (99.9, p99_us * 2.0)],
                socket_errors: errors,
                non_2xx: 1,
            },
            peer_cpu: None,
        }
    }

    fn with_policies(mut run: Run, applied: &[&str]) -> Run {
        run.policies = "typical".to_owned();
        run.applied = applied.iter().map(|a| (*a).to_owned()).collect();
        run
    }

    #[test]
    fn policy_sets_are_summarised_and_compared_apart_with_every_baseline() {
        let full = ["rate-limit", "header-injection", "jwt"];
        let rows = summarize(&[
            run("nginx", 64, 100.0, 40.0, 0),
            run("envoy", 64, 50.0, 80.0, 0),
            run("ringwall", 64, 100.0, 20.0, 0),
            with_policies(run("nginx", 64, 80.0, 50.0, 0), &full[..2]),
            with_policies(run("envoy", 64, 40.0, 100.0, 0), &full),
            with_policies(run("ringwall", 64, 90.0, 25.0, 0), &full),
        ]);
        assert_eq!(rows.len(), 6, "one row per policy set and peer");
        assert_eq!(rows[3].applied, ["rate-limit", "header-injection"]);
        let ratios = ratios(&rows);
        let pairs: Vec<(&str, &str, f64, f64)> = ratios
            .iter()
            .map(|r| {
                (
                    r.policies.as_str(),
                    r.baseline.as_str(),
                    r.requests_per_sec,
                    r.p999,
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                ("none", "nginx", 1.0, 0.5),
                ("none", "envoy", 2.0, 0.25),
                ("typical", "nginx", 1.125, 0.5),
                ("typical", "envoy", 2.25, 0.25),
            ]
        );
        let table = table(&rows);
        assert!(table.lines().next().unwrap().ends_with("errors applied"));
        assert!(
            table.lines().nth(4).unwrap().ends_with(" rl+hdr"),
            "{table}"
        );
        assert!(table.lines().nth(6).unwrap().ends_with(" rl+hdr+jwt"));
        assert!(table.lines().nth(1).unwrap().ends_with(" -"));
        let doc = to_json(
            json!({}),
            &[with_policies(run("nginx", 64, 1.0, 2.0, 0), &full)],
        );
        assert_eq!(doc["runs"][0]["applied"][2], "jwt");
        assert_eq!(doc["medians"][0]["policies"], "typical");
    }

    #[test]
    fn percentiles_are_the_median_of_the_runs_at_each_point() {
        let mut runs = [
            run("nginx", 64, 100.0, 40.0, 0),
            run("nginx", 64, 100.0, 10.0, 0),
            run("nginx", 64, 100.0, 30.0, 0),
        ];
        // A run that lacks a point leaves it to the others.
        runs[2].report.percentiles.pop();
        let rows = summarize(&runs);
        assert_eq!(
            rows[0].percentiles,
            [(50.0, 15.0), (99.0, 30.0), (99.9, 50.0)]
        );
        assert_eq!(rows[0].p999_us, 60.0);
        let doc = to_json(json!({}), &runs);
        assert_eq!(doc["medians"][0]["percentiles"][1], json!([99.0, 30.0]));
        assert_eq!(doc["runs"][0]["percentiles"][2], json!([99.9, 80.0]));
        assert_eq!(doc["runs"][1]["p999_us"], 20.0);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn spread_is_range_over_median() {
        assert_eq!(spread_pct(&[90.0, 100.0, 110.0]), 20.0);
        assert_eq!(spread_pct(&[5.0]), 0.0);
        assert_eq!(spread_pct(&[]), 0.0);
    }

    #[test]
    fn summarizes_per_peer_mode_and_conns_in_run_order() {
        let runs = [
            run("nginx", 64, 100.0, 10.0, 0),
            run("nginx", 64, 300.0, 30.0, 2),
            run("nginx", 64, 200.0, 20.0, 0),
            run("nginx", 256, 50.0, 90.0, 0),
        ];
        let rows = summarize(&runs);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].conns, rows[0].runs), (64, 3));
        assert_eq!(rows[0].requests_per_sec, 200.0);
        assert_eq!(rows[0].spread_pct, 100.0);
        assert_eq!(rows[0].p99_us, 20.0);
        assert_eq!(rows[0].errors, 2 + 3);
        assert_eq!(rows[1].conns, 256);
    }

    #[test]
    fn ratios_compare_ringwall_within_mode_and_conns() {
        let rows = summarize(&[
            run("nginx", 64, 100.0, 40.0, 0),
            run("haproxy", 64, 200.0, 20.0, 0),
            run("ringwall", 64, 150.0, 30.0, 0),
            run("ringwall", 256, 150.0, 30.0, 0),
        ]);
        let ratios = ratios(&rows);
        assert_eq!(ratios.len(), 2, "no baseline ran at 256 connections");
        assert_eq!(ratios[0].baseline, "nginx");
        assert_eq!(ratios[0].requests_per_sec, 1.5);
        assert_eq!(ratios[0].p99, 0.75);
        assert_eq!(ratios[1].baseline, "haproxy");
        assert_eq!(ratios[1].requests_per_sec, 0.75);
        assert_eq!(ratios[1].p99, 1.5);
    }

    #[test]
    fn the_floor_is_compared_with_ringwall_and_with_the_proxies_it_bounds() {
        let rows = summarize(&[
            run("nginx", 64, 100.0, 40.0, 0),
            run("ringwall", 64, 150.0, 30.0, 0),
            run("floor", 64, 200.0, 20.0, 0),
        ]);
        let named: Vec<(String, f64, f64)> = ratios(&rows)
            .iter()
            .map(|r| (r.name(), r.requests_per_sec, r.p99))
            .collect();
        assert_eq!(
            named,
            [
                ("ringwall/nginx".to_owned(), 1.5, 0.75),
                ("ringwall/floor".to_owned(), 0.75, 1.5),
                ("floor/nginx".to_owned(), 2.0, 0.5),
            ]
        );
        let table = ratio_table(&ratios(&rows));
        assert!(table.lines().any(|line| line.starts_with("floor/nginx ")));
    }

    #[test]
    fn scaling_divides_two_workers_by_one_per_peer_and_conns() {
        let in_mode = |mode: Mode, mut run: Run| {
            run.mode = mode.name().to_owned();
            run
        };
        let rows = summarize(&[
            in_mode(Mode::Unpinned, run("ringwall", 64, 100.0, 40.0, 0)),
            in_mode(Mode::TwoWorkers, run("ringwall", 64, 180.0, 30.0, 0)),
            in_mode(Mode::Unpinned, run("nginx", 64, 100.0, 40.0, 0)),
            in_mode(Mode::TwoWorkers, run("nginx", 256, 150.0, 40.0, 0)),
            run("ringwall", 64, 500.0, 10.0, 0),
        ]);
        let scaling = scaling(&rows);
        assert_eq!(
            scaling.len(),
            1,
            "nginx ran 2 workers at another count; pinned is apart"
        );
        assert_eq!(scaling[0].peer, "ringwall");
        assert_eq!(scaling[0].requests_per_sec, 1.8);
        assert_eq!(scaling[0].cpu_per_request, None);
        let table = scaling_table(&scaling);
        assert_eq!(
            table.lines().nth(1),
            Some("ringwall     64          1.80             -")
        );
    }

    #[test]
    fn scenarios_are_summarised_and_compared_apart() {
        let in_tls = |mut run: Run| {
            run.scenario = "tls-handshake".to_owned();
            run
        };
        let rows = summarize(&[
            run("nginx", 64, 100.0, 40.0, 0),
            run("ringwall", 64, 150.0, 30.0, 0),
            in_tls(run("nginx", 64, 10.0, 400.0, 0)),
            in_tls(run("ringwall", 64, 5.0, 800.0, 0)),
            in_tls(run("ringwall", 64, 7.0, 600.0, 0)),
        ]);
        assert_eq!(rows.len(), 4, "one row per scenario and peer");
        assert_eq!(
            (rows[3].scenario.as_str(), rows[3].runs),
            ("tls-handshake", 2)
        );
        assert_eq!(rows[3].requests_per_sec, 6.0);
        let ratios = ratios(&rows);
        assert_eq!(ratios.len(), 2, "no HAProxy: one ratio per scenario");
        assert_eq!(
            (ratios[0].scenario.as_str(), ratios[0].requests_per_sec),
            ("small", 1.5)
        );
        assert_eq!(
            (
                ratios[1].scenario.as_str(),
                ratios[1].requests_per_sec,
                ratios[1].p99
            ),
            ("tls-handshake", 0.6, 1.75)
        );
    }

    #[test]
    fn peer_cpu_has_its_medians_ratio_and_columns_when_measured() {
        let with_cpu = |mut run: Run, us_per_request: f64| {
            run.peer_cpu = Some(PeerCpu {
                busy_pct: 90.0,
                us_per_request,
                system_pct: 75.0,
            });
            run
        };
        let runs = [
            with_cpu(run("nginx", 64, 100.0, 40.0, 0), 300.0),
            with_cpu(run("nginx", 64, 100.0, 40.0, 0), 100.0),
            with_cpu(run("nginx", 64, 100.0, 40.0, 0), 200.0),
            with_cpu(run("ringwall", 64, 150.0, 30.0, 0), 50.0),
            run("haproxy", 64, 100.0, 40.0, 0),
        ];
        let rows = summarize(&runs);
        assert_eq!(rows[0].peer_cpu.map(|c| c.us_per_request), Some(200.0));
        assert_eq!(rows[2].peer_cpu, None);
        let ratios = ratios(&rows);
        assert_eq!(ratios[0].cpu_per_request, Some(0.25));
        assert_eq!(
            ratios[1].cpu_per_request, None,
            "HAProxy's CPU was not measured"
        );
        let table = table(&rows);
        assert!(table
            .lines()
            .next()
            .unwrap()
            .ends_with("peer CPU% CPU µs/req  sys%"));
        assert!(table
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("       90      200.0    75"));
        assert!(table
            .lines()
            .nth(3)
            .unwrap()
            .ends_with("         -          -     -"));
        let ratio_table = ratio_table(&ratios);
        assert!(ratio_table.lines().nth(1).unwrap().ends_with("    0.25"));
        let doc = to_json(json!({}), &runs);
        assert_eq!(doc["medians"][0]["peer_cpu_us_per_request"], 200.0);
        assert_eq!(doc["medians"][0]["peer_cpu_system_pct"], 75.0);
        assert_eq!(doc["ratios"][0]["cpu_per_request"], 0.25);
        assert!(doc["runs"][4]["peer_cpu_pct"].is_null());
    }

    #[test]
    fn without_cpu_figures_the_tables_keep_their_columns() {
        let rows = summarize(&[
            run("nginx", 64, 100.0, 40.0, 0),
            run("ringwall", 64, 50.0, 80.0, 0),
        ]);
        assert_eq!(
            table(&rows).lines().next().unwrap(),
            "peer      mode      conns       req/s  spread%   p50 µs    p99 µs  p99.9 µs  errors"
        );
        assert_eq!(
            ratio_table(&ratios(&rows)).lines().next().unwrap(),
            "ratio              mode      conns   req/s     p99   p99.9"
        );
    }

    #[test]
    fn json_holds_every_run_and_the_summaries() {
        let runs = [
            run("nginx", 64, 100.0, 40.0, 0),
            run("ringwall", 64, 50.0, 80.0, 0),
        ];
        let doc = to_json(json!({"duration_s": 1}), &runs);
        assert_eq!(doc["runs"].as_array().unwrap().len(), 2);
        assert_eq!(doc["medians"][1]["peer"], "ringwall");
        assert_eq!(doc["ratios"][0]["requests_per_sec"], 0.5);
        assert_eq!(doc["ratios"][0]["scenario"], "small");
        assert_eq!(doc["runs"][1]["scenario"], "small");
        assert_eq!(doc["settings"]["duration_s"], 1);
    }
}
