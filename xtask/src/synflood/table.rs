//! The bench's arithmetic and outputs: per run, what was sent, what dropped it (verified from
//! the dropping layer's own counter) and CPU nanoseconds per SYN; per case, the median over
//! rounds and the ratio to XDP generic (or, without it, to the cheapest case) measured in the
//! same run; then the printed table and the JSON document.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::cpu::CpuTimes;
use super::Case;
use crate::report::median;

/// A drop counter must account for this share of the SYNs for the case to count as verified
/// (the counters are read a few milliseconds apart at each end of the window).
const VERIFIED_SHARE: f64 = 0.99;

/// One case measured once, over a window in which the flood ran at a steady rate.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub case: Case,
    pub round: u32,
    pub window_s: f64,
    /// SYNs the gateway's veth end received in the measured window.
    pub packets: u64,
    /// SYNs it received from the start of the flood to its end (warm-up included): what the
    /// counters below are compared with.
    pub run_packets: u64,
    /// What trafgen says it sent from start to stop.
    pub trafgen_sent: Option<u64>,
    /// SYNs the veth dropped because the receive side fell behind (its ring was full).
    pub rx_dropped: u64,
    /// From here to `accepted`: counts over the whole flood, like `run_packets`.
    /// SYNs the case's own rule counted as dropped (XDP, nft, iptables).
    pub rule_drops: Option<u64>,
    pub reached_ip: u64,
    pub reached_tcp: u64,
    pub syncookies_sent: u64,
    /// Connections ringwall admitted or refused at accept (the accept case).
    pub accepted: Option<u64>,
    /// Run time of the gateway veth's NAPI thread(s): XDP, the stack, netfilter, TCP.
    pub napi_ns: u64,
    /// How many times the NAPI thread was scheduled in (woke to poll the veth).
    pub napi_runs: u64,
    /// Run time of the receive CPU's ksoftirqd (softirqs deferred out of the NAPI thread).
    pub ksoftirqd_ns: u64,
    /// Run time of the listener process (ringwall).
    pub listener_ns: u64,
    /// Run time of trafgen.
    pub generator_ns: u64,
    /// `/proc/stat` deltas of the receive and the generator CPU, in clock ticks.
    pub rx_cpu: CpuTimes,
    pub gen_cpu: CpuTimes,
    pub ticks_per_sec: u64,
}

impl Run {
    /// Everything the gateway spent receiving: NAPI thread, deferred softirqs, listener.
    pub fn receive_ns(&self) -> u64 {
        self.napi_ns + self.ksoftirqd_ns + self.listener_ns
    }

    pub fn receive_ns_per_packet(&self) -> Option<f64> {
        per_packet(self.receive_ns(), self.packets)
    }

    pub fn generator_ns_per_packet(&self) -> Option<f64> {
        per_packet(self.generator_ns, self.packets)
    }

    /// The receive CPU's busy time from `/proc/stat`, any task, per packet.
    pub fn rx_cpu_ns_per_packet(&self) -> Option<f64> {
        per_packet(
            ticks_ns(self.rx_cpu.busy(), self.ticks_per_sec),
            self.packets,
        )
    }

    pub fn gen_cpu_ns_per_packet(&self) -> Option<f64> {
        per_packet(
            ticks_ns(self.gen_cpu.busy(), self.ticks_per_sec),
            self.packets,
        )
    }

    /// Share of the receive CPU's window that `/proc/stat` counts busy beyond the measured
    /// threads: other tasks (a build on a shared machine), and sampling error.
    pub fn rx_cpu_busy_elsewhere(&self) -> f64 {
        let busy = ticks_ns(self.rx_cpu.busy(), self.ticks_per_sec) as f64;
        if self.window_s > 0.0 {
            ((busy - self.receive_ns() as f64) / (self.window_s * 1e9)).max(0.0)
        } else {
            0.0
        }
    }

    pub fn packets_per_sec(&self) -> f64 {
        if self.window_s > 0.0 {
            self.packets as f64 / self.window_s
        } else {
            0.0
        }
    }

    /// Whether the layer that should have dropped (or answered) the SYNs counted them.
    pub fn verdict(&self) -> Verdict {
        let share = |count: u64| {
            if self.run_packets == 0 {
                0.0
            } else {
                count as f64 / self.run_packets as f64
            }
        };
        let tcp = share(self.reached_tcp);
        let (label, ok) = match self.case {
            Case::XdpNative | Case::XdpGeneric | Case::Nft | Case::Iptables => {
                let dropped = share(self.rule_drops.unwrap_or(0));
                let layer = match self.case {
                    Case::Nft => "nft",
                    Case::Iptables => "iptables",
                    _ => "xdp",
                };
                (
                    format!("{layer} {:.1}%", 100.0 * dropped),
                    dropped >= VERIFIED_SHARE && tcp <= 1.0 - VERIFIED_SHARE,
                )
            }
            Case::Accept => (
                format!(
                    "TCP {:.1}%, {} accepted",
                    100.0 * tcp,
                    self.accepted.map_or("?".to_owned(), |n| n.to_string())
                ),
                tcp >= VERIFIED_SHARE && self.accepted == Some(0),
            ),
            Case::NoRule => (format!("TCP {:.1}%", 100.0 * tcp), tcp >= VERIFIED_SHARE),
        };
        Verdict { label, ok }
    }
}

#[derive(Debug, PartialEq)]
pub struct Verdict {
    pub label: String,
    pub ok: bool,
}

pub fn per_packet(ns: u64, packets: u64) -> Option<f64> {
    (packets > 0).then(|| ns as f64 / packets as f64)
}

fn ticks_ns(ticks: u64, ticks_per_sec: u64) -> u64 {
    super::cpu::ticks_to_ns(ticks, ticks_per_sec)
}

/// One case over all its rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub case: Case,
    pub rounds: usize,
    pub packets_per_sec: f64,
    pub packets: u64,
    pub verdict: String,
    pub verified: bool,
    pub receive_ns: f64,
    /// The lowest round: other tasks only ever add to a thread's run time.
    pub receive_ns_min: f64,
    /// `receive_ns` over the baseline's (see `baseline`).
    pub ratio: f64,
    pub rx_cpu_ns: f64,
    /// Median share of the receive CPU that other tasks used (see `rx_cpu_busy_elsewhere`).
    pub rx_cpu_elsewhere: f64,
    pub generator_ns: f64,
    pub gen_cpu_ns: f64,
}

/// Medians per case, in the order the cases first ran, with their ratio to the baseline.
pub fn summarize(runs: &[Run]) -> Vec<Row> {
    let mut cases: Vec<Case> = Vec::new();
    for run in runs {
        if !cases.contains(&run.case) {
            cases.push(run.case);
        }
    }
    let mut rows: Vec<Row> = cases
        .into_iter()
        .map(|case| {
            let group: Vec<&Run> = runs.iter().filter(|r| r.case == case).collect();
            let med = |value: fn(&Run) -> Option<f64>| {
                let values: Vec<f64> = group.iter().filter_map(|r| value(r)).collect();
                median(&values).unwrap_or(f64::NAN)
            };
            let verdicts: Vec<Verdict> = group.iter().map(|r| r.verdict()).collect();
            Row {
                case,
                rounds: group.len(),
                packets_per_sec: med(|r| Some(r.packets_per_sec())),
                packets: group.iter().map(|r| r.packets).sum(),
                // The first run that failed verification, or else the first run.
                verdict: verdicts
                    .iter()
                    .find(|v| !v.ok)
                    .or(verdicts.first())
                    .map(|v| v.label.clone())
                    .unwrap_or_default(),
                verified: verdicts.iter().all(|v| v.ok),
                receive_ns: med(Run::receive_ns_per_packet),
                receive_ns_min: group
                    .iter()
                    .filter_map(|r| r.receive_ns_per_packet())
                    .fold(f64::NAN, f64::min),
                ratio: f64::NAN,
                rx_cpu_ns: med(Run::rx_cpu_ns_per_packet),
                rx_cpu_elsewhere: med(|r| Some(r.rx_cpu_busy_elsewhere())),
                generator_ns: med(Run::generator_ns_per_packet),
                gen_cpu_ns: med(Run::gen_cpu_ns_per_packet),
            }
        })
        .collect();
    if let Some(base) = baseline(&rows) {
        let base_ns = rows[base].receive_ns;
        for row in &mut rows {
            row.ratio = row.receive_ns / base_ns;
        }
    }
    rows
}

/// The row the others are compared with: XDP generic, as the issue asks, or else the cheapest.
pub fn baseline(rows: &[Row]) -> Option<usize> {
    let usable = |row: &Row| row.receive_ns.is_finite() && row.receive_ns > 0.0;
    rows.iter()
        .position(|row| row.case == Case::XdpGeneric && usable(row))
        .or_else(|| {
            rows.iter()
                .enumerate()
                .filter(|(_, row)| usable(row))
                .min_by(|a, b| a.1.receive_ns.total_cmp(&b.1.receive_ns))
                .map(|(i, _)| i)
        })
}

pub fn table(rows: &[Row]) -> String {
    let base = baseline(rows).map_or("-", |i| rows[i].case.name());
    let ratio_head = format!("x {base}");
    let mut out = format!(
        "{:<11} {:>7} {:>8}  {:<24} {:>11} {:>5} {:>13} {:>10} {:>11} {:>11}\n",
        "case",
        "SYN/s",
        "SYNs",
        "dropped where (verified)",
        "recv ns/SYN",
        "min",
        ratio_head,
        "gen ns/SYN",
        "cpu1 ns/SYN",
        "cpu1 others"
    );
    for row in rows {
        let verdict = format!(
            "{}{}",
            if row.verified { "" } else { "NOT VERIFIED: " },
            row.verdict
        );
        let _ = writeln!(
            out,
            "{:<11} {:>7.0} {:>8}  {:<24} {:>11} {:>5} {:>13} {:>10} {:>11} {:>10}%",
            row.case.name(),
            row.packets_per_sec,
            row.packets,
            verdict,
            number(row.receive_ns, 0),
            number(row.receive_ns_min, 0),
            number(row.ratio, 2),
            number(row.generator_ns, 0),
            number(row.rx_cpu_ns, 0),
            number(100.0 * row.rx_cpu_elsewhere, 0),
        );
    }
    out
}

fn number(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "-".to_owned()
    }
}

/// The bench as JSON: its settings, every run with its raw figures, the medians, and the
/// cases that could not run.
pub fn to_json(settings: Value, runs: &[Run], skipped: &[(Case, String)]) -> Value {
    let rows = summarize(runs);
    // NaN (nothing to divide by) becomes null.
    let cpu = |t: &CpuTimes| {
        json!({"user": t.user, "nice": t.nice, "system": t.system, "idle": t.idle,
               "iowait": t.iowait, "irq": t.irq, "softirq": t.softirq, "steal": t.steal})
    };
    json!({
        "settings": settings,
        "runs": runs.iter().map(|r| json!({
            "case": r.case.name(),
            "round": r.round,
            "window_s": r.window_s,
            "packets": r.packets,
            "packets_per_sec": r.packets_per_sec(),
            "run_packets": r.run_packets,
            "trafgen_sent": r.trafgen_sent,
            "rx_dropped_by_veth": r.rx_dropped,
            "rule_drops": r.rule_drops,
            "reached_ip": r.reached_ip,
            "reached_tcp": r.reached_tcp,
            "syncookies_sent": r.syncookies_sent,
            "accepted": r.accepted,
            "verified": r.verdict().ok,
            "verdict": r.verdict().label,
            "napi_thread_ns": r.napi_ns,
            "napi_thread_runs": r.napi_runs,
            "ksoftirqd_ns": r.ksoftirqd_ns,
            "listener_ns": r.listener_ns,
            "receive_ns_per_packet": r.receive_ns_per_packet(),
            "generator_ns": r.generator_ns,
            "generator_ns_per_packet": r.generator_ns_per_packet(),
            "receive_cpu_proc_stat_ticks": cpu(&r.rx_cpu),
            "receive_cpu_proc_stat_ns_per_packet": r.rx_cpu_ns_per_packet(),
            "receive_cpu_busy_elsewhere": r.rx_cpu_busy_elsewhere(),
            "generator_cpu_proc_stat_ticks": cpu(&r.gen_cpu),
            "generator_cpu_proc_stat_ns_per_packet": r.gen_cpu_ns_per_packet(),
            "ticks_per_sec": r.ticks_per_sec,
        })).collect::<Vec<_>>(),
        "baseline": baseline(&rows).map(|i| rows[i].case.name()),
        "medians": rows.iter().map(|row| json!({
            "case": row.case.name(),
            "rounds": row.rounds,
            "packets_per_sec": row.packets_per_sec,
            "packets": row.packets,
            "verified": row.verified,
            "verdict": row.verdict,
            "receive_ns_per_packet": row.receive_ns,
            "receive_ns_per_packet_min": row.receive_ns_min,
            "ratio_to_baseline": row.ratio,
            "receive_cpu_proc_stat_ns_per_packet": row.rx_cpu_ns,
            "receive_cpu_busy_elsewhere": row.rx_cpu_elsewhere,
            "generator_ns_per_packet": row.generator_ns,
            "generator_cpu_proc_stat_ns_per_packet": row.gen_cpu_ns,
        })).collect::<Vec<_>>(),
        "skipped": skipped.iter().map(|(case, why)| json!({
            "case": case.name(), "reason": why,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(case: Case, packets: u64, receive_ns: u64) -> Run {
        let dropped = matches!(
            case,
            Case::XdpNative | Case::XdpGeneric | Case::Nft | Case::Iptables
        );
        Run {
            case,
            round: 1,
            window_s: 5.0,
            packets,
            run_packets: packets,
            rule_drops: dropped.then_some(packets),
            reached_ip: packets,
            reached_tcp: if dropped { 0 } else { packets },
            accepted: (case == Case::Accept).then_some(0),
            napi_ns: receive_ns,
            generator_ns: 2 * receive_ns,
            rx_cpu: CpuTimes {
                system: 50,
                softirq: 10,
                idle: 440,
                ..CpuTimes::default()
            },
            ticks_per_sec: 100,
            ..Run::default()
        }
    }

    #[test]
    fn nanoseconds_per_packet() {
        let r = Run {
            napi_ns: 700,
            ksoftirqd_ns: 200,
            listener_ns: 100,
            ..run(Case::NoRule, 10, 0)
        };
        assert_eq!(r.receive_ns(), 1000);
        assert_eq!(r.receive_ns_per_packet(), Some(100.0));
        assert_eq!(r.packets_per_sec(), 2.0);
        // 60 ticks at 100 Hz = 0.6 s over 10 packets.
        assert_eq!(r.rx_cpu_ns_per_packet(), Some(60_000_000.0));
        assert_eq!(per_packet(5, 0), None);
    }

    #[test]
    fn busy_elsewhere_is_what_proc_stat_counts_beyond_the_threads() {
        // 60 ticks at 100 Hz = 0.6 s busy in a 5 s window, 0.1 s of it measured threads.
        let r = run(Case::NoRule, 10, 100_000_000);
        assert!((r.rx_cpu_busy_elsewhere() - 0.1).abs() < 1e-9);
        let all_ours = run(Case::NoRule, 10, 900_000_000);
        assert_eq!(all_ours.rx_cpu_busy_elsewhere(), 0.0);
    }

    #[test]
    fn verdicts_need_the_dropping_layer_to_count_the_syns() {
        assert_eq!(
            run(Case::Nft, 1000, 1).verdict(),
            Verdict {
                label: "nft 100.0%".to_owned(),
                ok: true
            }
        );
        let missed = Run {
            rule_drops: Some(900),
            ..run(Case::XdpGeneric, 1000, 1)
        };
        assert!(!missed.verdict().ok);
        assert_eq!(missed.verdict().label, "xdp 90.0%");
        let leaked = Run {
            reached_tcp: 50,
            ..run(Case::Iptables, 1000, 1)
        };
        assert!(!leaked.verdict().ok, "SYNs reached TCP past the rule");
        assert!(run(Case::NoRule, 1000, 1).verdict().ok);
        let accept = run(Case::Accept, 1000, 1).verdict();
        assert_eq!(accept.label, "TCP 100.0%, 0 accepted");
        assert!(accept.ok);
        let unknown = Run {
            accepted: None,
            ..run(Case::Accept, 1000, 1)
        };
        assert!(!unknown.verdict().ok);
        let nothing = Run {
            run_packets: 0,
            ..run(Case::NoRule, 1000, 1)
        };
        assert!(!nothing.verdict().ok, "nothing sent");
    }

    #[test]
    fn medians_per_case_and_ratios_to_xdp_generic() {
        let runs = [
            run(Case::XdpNative, 1000, 800_000),
            run(Case::XdpGeneric, 1000, 1_000_000),
            run(Case::NoRule, 1000, 3_000_000),
            run(Case::XdpGeneric, 1000, 1_200_000),
            run(Case::XdpGeneric, 1000, 1_100_000),
        ];
        let rows = summarize(&runs);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].case, Case::XdpGeneric);
        assert_eq!(rows[1].rounds, 3);
        assert_eq!(rows[1].packets, 3000);
        assert_eq!(rows[1].receive_ns, 1100.0);
        assert_eq!(rows[1].receive_ns_min, 1000.0);
        assert_eq!(rows[1].ratio, 1.0);
        assert!((rows[0].ratio - 800.0 / 1100.0).abs() < 1e-9);
        assert!((rows[2].ratio - 3000.0 / 1100.0).abs() < 1e-9);
        assert_eq!(rows[1].generator_ns, 2200.0);
    }

    #[test]
    fn without_xdp_generic_the_cheapest_case_is_the_baseline() {
        let rows = summarize(&[
            run(Case::NoRule, 1000, 3_000_000),
            run(Case::Nft, 1000, 1_500_000),
            run(Case::Accept, 0, 0),
        ]);
        assert_eq!(baseline(&rows), Some(1));
        assert_eq!(rows[0].ratio, 2.0);
        assert!(rows[2].ratio.is_nan(), "no packets, no figure");
        let text = table(&rows);
        assert!(text.lines().next().unwrap().contains("x nft"), "{text}");
        assert!(text.contains("NOT VERIFIED"), "{text}");
    }

    #[test]
    fn json_holds_runs_medians_and_skipped_cases() {
        let runs = [
            run(Case::XdpGeneric, 1000, 1_000_000),
            run(Case::NoRule, 1000, 2_000_000),
        ];
        let skipped = [(Case::XdpNative, "no XDP".to_owned())];
        let doc = to_json(json!({"pps": 1}), &runs, &skipped);
        assert_eq!(doc["runs"][0]["case"], "xdp-generic");
        assert_eq!(doc["runs"][1]["receive_ns_per_packet"], 2000.0);
        assert_eq!(doc["medians"][1]["ratio_to_baseline"], 2.0);
        assert_eq!(doc["baseline"], "xdp-generic");
        assert_eq!(doc["skipped"][0]["reason"], "no XDP");
        assert_eq!(doc["settings"]["pps"], 1);
    }
}
