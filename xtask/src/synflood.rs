//! `cargo xtask bench-syn`: the CPU cost of dropping a SYN flood in XDP (native and
//! generic), in nftables and iptables, and of letting it reach TCP (with ringwall enforcing
//! the same blocklist at accept, and with no rule at all), at one packet rate for every case.
//!
//! A generator namespace floods a gateway namespace over a veth pair (see `lab`) with SYNs
//! from random sources in 198.19.0.0/16 to 198.18.0.1:8080, sent by trafgen pinned on CPU 0.
//! The gateway's receive path runs in one NAPI kernel thread pinned on CPU 1, where ringwall
//! listens too. Each case runs alone: its listener and rule are set up, the flood starts,
//! and after a warm-up the bench reads every counter, waits `--seconds`, and reads them
//! again. The cost of a case is the run time of the gateway's threads over that window
//! divided by the SYNs received (see `cpu` for why thread run time rather than `/proc/stat`,
//! which is reported beside it); the drop is verified by the dropping layer's own counter.
//!
//! Spoofed sources never complete a handshake, so in the `accept` case ringwall never sees a
//! connection: what that case measures is the kernel answering every SYN with a SYN cookie,
//! the work XDP spares it.

mod counters;
pub(crate) mod cpu;
mod lab;
mod table;
mod trafgen;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use self::counters::{Announcement, RuleCounters};
use self::cpu::{CpuTimes, SchedStat};
use self::lab::{Lab, GATEWAY_IP};
use self::table::Run;
use crate::{build, proc, target_dir};

/// The CPU trafgen runs on, and that receives the gateway's answers.
const GEN_CPU: usize = 0;
/// The CPU of the gateway's receive path and listener.
const RX_CPU: usize = 1;
/// The listener's port, inside the gateway namespace (which nothing else uses).
const PORT: u16 = 8080;
/// The flood's sources: 198.19.0.0/16, inside the blocklisted 198.18.0.0/15.
const SOURCE_PREFIX: [u8; 2] = [198, 19];
const BLOCKED: &str = "198.18.0.0/15";
/// Flood before the window opens, so that trafgen's rate has settled.
const WARMUP: Duration = Duration::from_secs(1);
const START_TIMEOUT: Duration = Duration::from_secs(30);
const NFT_TABLE: &str = "synbench";

#[derive(clap::Args)]
pub struct Options {
    /// Seconds of measured flood per case.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// SYNs per second, the same for every case.
    #[arg(long, default_value_t = 200_000)]
    pps: u32,
    /// Cases, from: xdp-native xdp-generic nft iptables accept none.
    #[arg(
        long,
        default_value = "xdp-native xdp-generic nft iptables accept none"
    )]
    cases: String,
    /// Rounds over all the cases (alternating their order); medians are reported.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Use target/release/ringwall as it is instead of building it.
    #[arg(long)]
    no_build: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Case {
    XdpNative,
    XdpGeneric,
    Nft,
    Iptables,
    Accept,
    #[default]
    NoRule,
}

impl Case {
    const ALL: [Case; 6] = [
        Case::XdpNative,
        Case::XdpGeneric,
        Case::Nft,
        Case::Iptables,
        Case::Accept,
        Case::NoRule,
    ];

    pub fn parse(name: &str) -> Result<Case> {
        Case::ALL
            .into_iter()
            .find(|case| case.name() == name)
            .with_context(|| {
                let known: Vec<&str> = Case::ALL.iter().map(|c| c.name()).collect();
                format!("unknown case `{name}` (known: {})", known.join(" "))
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            Case::XdpNative => "xdp-native",
            Case::XdpGeneric => "xdp-generic",
            Case::Nft => "nft",
            Case::Iptables => "iptables",
            Case::Accept => "accept",
            Case::NoRule => "none",
        }
    }

    /// Whether ringwall loads the blocklist (everything but the netfilter and no-rule cases).
    fn ringwall_denies(self) -> bool {
        matches!(self, Case::XdpNative | Case::XdpGeneric | Case::Accept)
    }

    /// ringwall's `--xdp*` arguments.
    fn xdp_args(self, iface: &str) -> Vec<String> {
        let mode = match self {
            Case::XdpNative => "native",
            Case::XdpGeneric => "generic",
            _ => return vec!["--xdp".into(), "off".into()],
        };
        [
            "--xdp",
            "required",
            "--xdp-mode",
            mode,
            "--xdp-iface",
            iface,
        ]
        .map(String::from)
        .to_vec()
    }
}

/// What to run, from the options.
#[derive(Debug)]
struct Plan {
    seconds: u32,
    pps: u32,
    rounds: u32,
    cases: Vec<Case>,
}

impl Plan {
    fn from_options(options: &Options) -> Result<Plan> {
        let mut cases = Vec::new();
        for word in options.cases.split([' ', ',']).filter(|w| !w.is_empty()) {
            let case = Case::parse(word)?;
            if !cases.contains(&case) {
                cases.push(case);
            }
        }
        if cases.is_empty() {
            bail!("--cases needs at least one case");
        }
        if options.seconds == 0 || options.pps == 0 || options.rounds == 0 {
            bail!("--seconds, --pps and --rounds must be at least 1");
        }
        Ok(Plan {
            seconds: options.seconds,
            pps: options.pps,
            rounds: options.rounds,
            cases,
        })
    }

    /// The cases of round `round` (from 1): every other round runs them backwards, so that a
    /// drift of the machine weighs on every case alike.
    fn order(&self, round: u32) -> Vec<Case> {
        let mut cases = self.cases.clone();
        if round & 1 == 0 {
            cases.reverse();
        }
        cases
    }
}

pub fn bench_syn(options: &Options) -> Result<()> {
    let plan = Plan::from_options(options)?;
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-syn creates network namespaces and attaches XDP: run it as root");
    }
    if thread::available_parallelism()?.get() <= RX_CPU {
        bail!(
            "bench-syn needs 2 CPUs: the generator on CPU {GEN_CPU}, the gateway on CPU {RX_CPU}"
        );
    }
    let ringwall_bin = if options.no_build {
        target_dir().join("release").join("ringwall")
    } else {
        // The proxy's build script embeds the XDP program where it can; where it cannot, the
        // XDP cases report why and the others still run.
        crate::setup::setup()?;
        build::release()?
    };
    if !ringwall_bin.is_file() {
        bail!("{} is missing: cargo xtask build", ringwall_bin.display());
    }
    let mut tools = vec!["ip", "ethtool", "taskset", "trafgen"];
    if plan.cases.contains(&Case::Nft) {
        tools.push("nft");
    }
    if plan.cases.contains(&Case::Iptables) {
        tools.push("iptables");
    }
    if let Some(missing) = tools.iter().find(|tool| !proc::on_path(tool)) {
        bail!("`{missing}` is not installed (cargo xtask setup installs it)");
    }

    proc::catch_signals();
    // xtask, and the commands it runs to read counters, stay off the receive CPU.
    lab::pin(0, GEN_CPU).context("cannot pin xtask to the generator's CPU")?;
    let work = proc::TempDir::new("ringwall-bench-syn")?;
    for (dir, deny) in [("open", false), ("deny", true)] {
        fs::create_dir(work.path().join(dir))?;
        fs::write(work.path().join(dir).join("edge.yaml"), edge_config(deny))?;
    }
    let lab = Lab::create(GEN_CPU)?;
    let flood = trafgen::SynFlood {
        dst_mac: lab.gw_mac,
        src_mac: lab.gen_mac,
        dst_ip: GATEWAY_IP,
        src_prefix: SOURCE_PREFIX,
        dst_port: PORT,
    };
    fs::write(work.path().join("syn.cfg"), flood.config())?;

    let results = target_dir().join("bench").join("synflood.json");
    fs::create_dir_all(results.parent().unwrap_or(Path::new(".")))?;
    let settings = settings(&plan, &flood);
    let bench = Bench {
        lab: &lab,
        plan: &plan,
        ringwall_bin: &ringwall_bin,
        work: work.path(),
        ticks_per_sec: cpu::ticks_per_sec(),
    };
    let mut runs: Vec<Run> = Vec::new();
    let mut skipped: Vec<(Case, String)> = Vec::new();
    for round in 1..=plan.rounds {
        for case in plan.order(round) {
            if skipped.iter().any(|(c, _)| *c == case) {
                continue;
            }
            match bench.measure(case, round) {
                Ok(run) => {
                    eprintln!("{}", progress(&run, plan.pps));
                    runs.push(run);
                }
                Err(err) => {
                    proc::check_interrupted()?;
                    eprintln!("  {:<11} skipped: {err:#}", case.name());
                    skipped.push((case, format!("{err:#}")));
                }
            }
            // Rewritten after every case: an interrupted bench keeps what it measured.
            let doc = table::to_json(settings.clone(), &runs, &skipped);
            fs::write(&results, format!("{doc:#}\n"))
                .with_context(|| format!("cannot write {}", results.display()))?;
        }
    }
    drop(lab);

    let rows = table::summarize(&runs);
    println!(
        "\n{} SYN/s for {} s per case ({} round{}), TCP SYNs from random sources in {}.{}.0.0/16 \
         to {GATEWAY_IP}:{PORT}",
        plan.pps,
        plan.seconds,
        plan.rounds,
        if plan.rounds == 1 { "" } else { "s" },
        SOURCE_PREFIX[0],
        SOURCE_PREFIX[1],
    );
    println!(
        "recv = run time of the gateway's NAPI thread + ksoftirqd/{RX_CPU} + ringwall, all on CPU {RX_CPU} \
         (generator NOT included); gen = trafgen's run time, on CPU {GEN_CPU}; cpu{RX_CPU} = /proc/stat busy \
         time of CPU {RX_CPU}, every task on it; others = the share of CPU {RX_CPU} other tasks used. \
         Medians over rounds; min = the lowest round."
    );
    if rows.is_empty() {
        println!("nothing measured");
    } else {
        print!("{}", table::table(&rows));
    }
    if rows.iter().any(|row| row.rx_cpu_elsewhere > 0.1) {
        println!(
            "note: other tasks shared CPU {RX_CPU}; they make every thread on it slower (caches, the \
             hypervisor), recv included: compare cases measured when \"others\" was low"
        );
    }
    for (case, why) in &skipped {
        println!("{} not measured: {why}", case.name());
    }
    println!("\nevery run: {}", results.display());
    Ok(())
}

fn settings(plan: &Plan, flood: &trafgen::SynFlood) -> serde_json::Value {
    let iptables = proc::output(std::process::Command::new("iptables").arg("--version"))
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "pps": plan.pps,
        "seconds": plan.seconds,
        "warmup_s": WARMUP.as_secs_f64(),
        "rounds": plan.rounds,
        "cases": plan.cases.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "generator": format!(
            "trafgen -P 1 -b {}pps, pinned on CPU {GEN_CPU}, in its own namespace", plan.pps
        ),
        "packet": format!(
            "{}-byte TCP SYN with MSS option, random source in {}.{}.0.0/16 and source port, to {GATEWAY_IP}:{PORT}",
            flood.frame_len(), SOURCE_PREFIX[0], SOURCE_PREFIX[1]
        ),
        "receive": format!(
            "veth in NAPI mode (GRO on), threaded NAPI pinned on CPU {RX_CPU}; ringwall --workers 1 pinned on CPU {RX_CPU}"
        ),
        "receive_cost": "run time (schedstat) of the NAPI thread + ksoftirqd of the receive CPU + the listener; generator not included",
        "nft": format!("table ip {NFT_TABLE}, chain at hook prerouting priority raw (-300): ip saddr {BLOCKED} tcp dport {PORT} counter drop"),
        "iptables": format!("{iptables}: -t raw -A PREROUTING -s {BLOCKED} -p tcp --dport {PORT} -j DROP"),
        "blocklist": format!("ip-blocklist-flex ips: [{BLOCKED}] on the ApiInstance at {GATEWAY_IP}:{PORT}"),
    })
}

/// One line per measured case, with what makes its figures suspect.
fn progress(run: &Run, pps: u32) -> String {
    let verdict = run.verdict();
    let mut line = format!(
        "  {:<11} round {}: {:>7.0} SYN/s, receive {:>5} ns/SYN, generator {:>5} ns/SYN, \
         other tasks on CPU {RX_CPU} {:>3.0}%, {}",
        run.case.name(),
        run.round,
        run.packets_per_sec(),
        show_ns(run.receive_ns_per_packet()),
        show_ns(run.generator_ns_per_packet()),
        100.0 * run.rx_cpu_busy_elsewhere(),
        verdict.label,
    );
    if !verdict.ok {
        line.push_str(" (NOT VERIFIED)");
    }
    if run.packets_per_sec() < 0.95 * f64::from(pps) {
        line.push_str(
            "; below --pps: the generator, or a receive side holding it back, did not keep up",
        );
    }
    if run.rx_dropped > 0 {
        line.push_str(&format!(
            "; the veth dropped {} SYNs: the receive side fell behind",
            run.rx_dropped
        ));
    }
    line
}

fn show_ns(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |ns| format!("{ns:.0}"))
}

/// The gateway's configuration: one ApiInstance on the flooded address, with or without the
/// blocklist that denies every source of the flood. Its upstream is never reached.
fn edge_config(deny: bool) -> String {
    const HEADER: &str = "apiVersion: gateway.mulesoft.com/v1alpha1\n";
    let mut yaml = format!(
        "{HEADER}kind: ApiInstance\nmetadata:\n  name: edge\nspec:\n  address: http://{GATEWAY_IP}:{PORT}\n  \
         services:\n    down:\n      address: http://127.0.0.1:9\n"
    );
    if deny {
        yaml.push_str(&format!(
            "---\n{HEADER}kind: PolicyBinding\nmetadata:\n  name: deny-flood\nspec:\n  targetRef:\n    \
             name: edge\n  policyRef:\n    name: ip-blocklist-flex\n  config:\n    ips:\n      - {BLOCKED}\n"
        ));
    }
    yaml
}

// === impl Bench ===

/// What every case needs.
struct Bench<'a> {
    lab: &'a Lab,
    plan: &'a Plan,
    ringwall_bin: &'a Path,
    work: &'a Path,
    ticks_per_sec: u64,
}

impl Bench<'_> {
    /// One case: listener and rule, the flood, the measured window, then clean-up.
    ///
    /// Two sets of readings: the drop counters from before the flood starts to after it has
    /// stopped, so that they are compared with the SYNs received without any skew between
    /// the moments each is read; and CPU run times over a window of steady flood.
    fn measure(&self, case: Case, round: u32) -> Result<Run> {
        let mut receiver = Receiver::start(self, case)?;
        let napi = self.lab.pin_napi_threads(RX_CPU)?;
        let totals_before = self.totals(&receiver)?;
        let log = self.work.join(format!("trafgen-{}.log", case.name()));
        let mut flood = self.start_flood(&log)?;
        let ksoftirqd_name = format!("ksoftirqd/{RX_CPU}");
        let threads = Threads {
            napi,
            ksoftirqd: lab::threads_named(|comm| comm == ksoftirqd_name),
            listener: receiver.ringwall.child().id(),
            generator: flood.child().id(),
        };

        self.wait(WARMUP, &mut flood, &mut receiver)?;
        let start = self.sample(&threads)?;
        let window = Duration::from_secs(u64::from(self.plan.seconds));
        self.wait(window, &mut flood, &mut receiver)?;
        let end = self.sample(&threads)?;
        stop_flood(&mut flood, threads.generator);
        // What is still in the veth's ring is received in microseconds.
        thread::sleep(Duration::from_millis(100));
        let totals_after = self.totals(&receiver)?;
        drop(receiver);
        let trafgen_sent = trafgen::packets_sent(&fs::read_to_string(&log).unwrap_or_default());

        let (before, after) = (&totals_before, &totals_after);
        let net = |name: &str| {
            let at = |t: &Totals| t.net.get(name).copied().unwrap_or(0);
            at(after).saturating_sub(at(before))
        };
        let (rule_drops, accepted) = match (&before.rules, &after.rules) {
            (Some(b), Some(a)) if case == Case::Accept => (
                None,
                Some((a.passed + a.dropped_deny).saturating_sub(b.passed + b.dropped_deny)),
            ),
            (Some(b), Some(a)) => (Some(a.dropped_deny.saturating_sub(b.dropped_deny)), None),
            _ => (
                after
                    .rule_packets
                    .zip(before.rule_packets)
                    .map(|(a, b)| a.saturating_sub(b)),
                None,
            ),
        };
        let cpu = |s: &Sample, index: usize| s.cpus.get(index).copied().unwrap_or_default();
        Ok(Run {
            case,
            round,
            window_s: end.at.duration_since(start.at).as_secs_f64(),
            packets: end.rx_packets.saturating_sub(start.rx_packets),
            run_packets: after.rx_packets.saturating_sub(before.rx_packets),
            trafgen_sent,
            rx_dropped: after.rx_dropped.saturating_sub(before.rx_dropped),
            rule_drops,
            reached_ip: net("Ip.InReceives"),
            reached_tcp: net("Tcp.InSegs"),
            syncookies_sent: net("TcpExt.SyncookiesSent"),
            accepted,
            napi_ns: end.napi_ns.saturating_sub(start.napi_ns),
            napi_runs: end.napi_runs.saturating_sub(start.napi_runs),
            ksoftirqd_ns: end.ksoftirqd_ns.saturating_sub(start.ksoftirqd_ns),
            listener_ns: end.listener_ns.saturating_sub(start.listener_ns),
            generator_ns: end.generator_ns.saturating_sub(start.generator_ns),
            rx_cpu: cpu(&end, RX_CPU).since(&cpu(&start, RX_CPU)),
            gen_cpu: cpu(&end, GEN_CPU).since(&cpu(&start, GEN_CPU)),
            ticks_per_sec: self.ticks_per_sec,
        })
    }

    /// trafgen, one process pinned on the generator CPU, flooding until stopped. It is told
    /// to leave the host's socket memory sysctls (`--no-sock-mem`) and IRQ affinity (`-Q`) alone.
    fn start_flood(&self, log: &Path) -> Result<proc::Server> {
        let out = fs::File::create(log)?;
        let mut cmd = self.lab.command(&self.lab.gen_ns, "taskset");
        cmd.args(["-c", &GEN_CPU.to_string(), "trafgen", "-i"])
            .arg(self.work.join("syn.cfg"))
            .args(["-o", &self.lab.gen_if, "-P", "1", "--no-sock-mem", "-Q"])
            .args(["-b", &format!("{}pps", self.plan.pps)])
            .stdout(out.try_clone()?)
            .stderr(out);
        proc::Server::spawn("trafgen", &mut cmd)
    }

    /// Waits, giving up if either process exits or a signal arrives.
    fn wait(
        &self,
        duration: Duration,
        flood: &mut proc::Server,
        receiver: &mut Receiver,
    ) -> Result<()> {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            proc::check_interrupted()?;
            flood.check_running()?;
            receiver.ringwall.check_running()?;
            thread::sleep(proc::POLL);
        }
        Ok(())
    }

    /// The counters that say where SYNs went.
    fn totals(&self, receiver: &Receiver) -> Result<Totals> {
        let rules = match receiver.admin {
            Some(admin) => Some(self.rule_counters(admin)?),
            None => None,
        };
        let net = self.lab.in_ns(&self.lab.gw_ns, || {
            let mut text = fs::read_to_string("/proc/thread-self/net/snmp")?;
            text.push_str(&fs::read_to_string("/proc/thread-self/net/netstat")?);
            Ok(counters::parse_net_counters(&text))
        })?;
        let (rx_packets, rx_dropped) = self.lab.gateway_rx()?;
        Ok(Totals {
            rx_packets,
            rx_dropped,
            net,
            rules,
            rule_packets: receiver.rule_packets()?,
        })
    }

    /// The packet count, then the CPU times, read within a few milliseconds of each other.
    fn sample(&self, threads: &Threads) -> Result<Sample> {
        let (rx_packets, _) = self.lab.gateway_rx()?;
        let stat = |tids: &[u32]| {
            tids.iter()
                .map(|&t| cpu::thread_schedstat(t))
                .fold(SchedStat::default(), |sum, s| SchedStat {
                    run_ns: sum.run_ns + s.run_ns,
                    timeslices: sum.timeslices + s.timeslices,
                })
        };
        let napi = stat(&threads.napi);
        Ok(Sample {
            at: Instant::now(),
            rx_packets,
            napi_ns: napi.run_ns,
            napi_runs: napi.timeslices,
            ksoftirqd_ns: stat(&threads.ksoftirqd).run_ns,
            listener_ns: cpu::process_runtime_ns(threads.listener),
            generator_ns: cpu::group_runtime_ns(threads.generator),
            cpus: cpu::read_proc_stat(),
        })
    }

    /// `GET /connection-rules` on ringwall's admin listener, from inside its namespace.
    fn rule_counters(&self, admin: SocketAddr) -> Result<RuleCounters> {
        let body = self
            .lab
            .in_ns(&self.lab.gw_ns, || http_get(admin, "/connection-rules"))?;
        counters::parse_rule_counters(&body)
    }
}

/// The threads whose run time is measured.
struct Threads {
    napi: Vec<u32>,
    ksoftirqd: Vec<u32>,
    /// ringwall (every thread of it).
    listener: u32,
    /// trafgen's process group.
    generator: u32,
}

/// Where the SYNs went, read before the flood and after it.
struct Totals {
    rx_packets: u64,
    rx_dropped: u64,
    /// The gateway namespace's `/proc/net/snmp` and `/proc/net/netstat`.
    net: std::collections::BTreeMap<String, u64>,
    /// ringwall's counters (the XDP and accept cases).
    rules: Option<RuleCounters>,
    /// The nft or iptables rule's packet counter.
    rule_packets: Option<u64>,
}

/// One end of the measured window.
struct Sample {
    at: Instant,
    rx_packets: u64,
    napi_ns: u64,
    napi_runs: u64,
    ksoftirqd_ns: u64,
    listener_ns: u64,
    generator_ns: u64,
    cpus: Vec<CpuTimes>,
}

/// SIGINT to trafgen (it prints its summary and exits); the guard kills what is left.
fn stop_flood(flood: &mut proc::Server, group: u32) {
    for pid in cpu::group_members(group) {
        proc::kill(pid, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && matches!(flood.child().try_wait(), Ok(None)) {
        thread::sleep(proc::POLL);
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").context("no end of head")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

// === impl Receiver ===

/// The gateway side of one case: ringwall listening (with its rules, for the ringwall cases)
/// and the nft or iptables rule. Dropping it removes the rule and stops ringwall.
struct Receiver<'a> {
    lab: &'a Lab,
    case: Case,
    ringwall: proc::Server,
    /// ringwall's admin listener, inside the gateway namespace, when ringwall has rules.
    admin: Option<SocketAddr>,
}

impl<'a> Receiver<'a> {
    fn start(bench: &Bench<'a>, case: Case) -> Result<Receiver<'a>> {
        let lab = bench.lab;
        let config = bench.work.join(if case.ringwall_denies() {
            "deny"
        } else {
            "open"
        });
        let log_path = bench.work.join(format!("ringwall-{}.log", case.name()));
        let mut cmd = lab.command(&lab.gw_ns, "taskset");
        cmd.args(["-c", &RX_CPU.to_string()])
            .arg(bench.ringwall_bin)
            .args(["run", "--config"])
            .arg(&config)
            .args(["--workers", "1", "--admin", "127.0.0.1:0"])
            .args(case.xdp_args(&lab.gw_if))
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log_path)?);
        let mut ringwall = proc::Server::spawn("ringwall", &mut cmd)?;
        let announced = wait_ready(&mut ringwall).map_err(|err| {
            err.context(ringwall_error(
                &fs::read_to_string(&log_path).unwrap_or_default(),
            ))
        })?;
        let expected = match case {
            Case::XdpNative => "xdp native",
            Case::XdpGeneric => "xdp generic",
            Case::Accept => "accept",
            _ => "none",
        };
        let rules = announced.rules.unwrap_or_default();
        let enforced_as_expected = match case {
            Case::XdpNative | Case::XdpGeneric => {
                let mode = expected.trim_start_matches("xdp ");
                rules.starts_with("xdp ") && rules.ends_with(&format!(":{mode}"))
            }
            _ => rules == expected,
        };
        if !enforced_as_expected {
            bail!("ringwall says `connection-rules {rules}`, the case needs {expected}");
        }
        let receiver = Receiver {
            lab,
            case,
            ringwall,
            admin: case.ringwall_denies().then_some(announced.admin).flatten(),
        };
        if case.ringwall_denies() && receiver.admin.is_none() {
            bail!("ringwall printed no `admin ADDR` line");
        }
        receiver.add_rule()?;
        Ok(receiver)
    }

    fn add_rule(&self) -> Result<()> {
        let ns = &self.lab.gw_ns;
        match self.case {
            Case::Nft => {
                let ruleset = format!(
                    "table ip {NFT_TABLE} {{\n  chain prerouting {{\n    type filter hook prerouting priority raw; policy accept;\n    \
                     ip saddr {BLOCKED} tcp dport {PORT} counter drop\n  }}\n}}\n"
                );
                let mut cmd = self.lab.command(ns, "sh");
                cmd.args(["-c", "printf '%s' \"$1\" | nft -f -", "sh", &ruleset]);
                let out = proc::output(&mut cmd)?;
                if !out.status.success() {
                    bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr).trim());
                }
            }
            Case::Iptables => {
                self.lab.exec(ns, "iptables", &iptables_rule("-A"))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The nft or iptables rule's packet counter.
    fn rule_packets(&self) -> Result<Option<u64>> {
        let ns = &self.lab.gw_ns;
        Ok(match self.case {
            Case::Nft => {
                let listing = self
                    .lab
                    .exec(ns, "nft", &["list", "table", "ip", NFT_TABLE])?;
                Some(
                    counters::nft_counter_packets(&listing)
                        .context("no counter in the nft rule")?,
                )
            }
            Case::Iptables => {
                let listing = self.lab.exec(
                    ns,
                    "iptables",
                    &["-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"],
                )?;
                Some(
                    counters::iptables_drop_packets(&listing)
                        .context("no DROP rule in raw PREROUTING")?,
                )
            }
            _ => None,
        })
    }
}

impl Drop for Receiver<'_> {
    fn drop(&mut self) {
        // The namespace outlives the case: the next case must not find this rule.
        let ns = &self.lab.gw_ns;
        let _ = match self.case {
            Case::Nft => self
                .lab
                .exec(ns, "nft", &["delete", "table", "ip", NFT_TABLE]),
            Case::Iptables => self.lab.exec(ns, "iptables", &iptables_rule("-D")),
            _ => Ok(String::new()),
        };
        // `ringwall` stops when the field is dropped, after this.
    }
}

/// Why ringwall stopped, from its stderr: its own error line (`ringwall: ...`), else the last
/// line it logged.
fn ringwall_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .rev()
        .find(|line| line.starts_with("ringwall:"))
        .or(lines.last())
        .map_or("ringwall logged nothing".to_owned(), |line| {
            (*line).to_owned()
        })
}

/// The iptables rule, for `-A` (append) or `-D` (delete); `-w` waits for the xtables lock.
fn iptables_rule(action: &str) -> Vec<String> {
    let port = PORT.to_string();
    [
        "-w",
        "-t",
        "raw",
        action,
        "PREROUTING",
        "-s",
        BLOCKED,
        "-p",
        "tcp",
        "--dport",
        &port,
        "-j",
        "DROP",
    ]
    .map(String::from)
    .to_vec()
}

/// What ringwall announced before `ready`.
#[derive(Default)]
struct Announced {
    admin: Option<SocketAddr>,
    rules: Option<String>,
}

/// Reads ringwall's stdout until `ready` (and keeps reading it, so ringwall never blocks on
/// a full pipe).
fn wait_ready(ringwall: &mut proc::Server) -> Result<Announced> {
    let (lines_tx, lines) = mpsc::channel();
    if let Some(stdout) = ringwall.child().stdout.take() {
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|line| line.ok()) {
                let _ = lines_tx.send(line);
            }
        });
    }
    let mut announced = Announced::default();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match lines.recv_timeout(proc::POLL) {
            Ok(line) => match counters::parse_announcement(&line) {
                Some(Announcement::Ready) => return Ok(announced),
                Some(Announcement::Admin(addr)) => announced.admin = Some(addr),
                Some(Announcement::Rules(rules)) => announced.rules = Some(rules),
                None => {}
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Give it a moment to exit, so the error says how.
                thread::sleep(Duration::from_millis(200));
                ringwall.check_running()?;
                bail!("ringwall closed its stdout without printing `ready`");
            }
        }
        ringwall.check_running()?;
        proc::check_interrupted()?;
        if Instant::now() > deadline {
            bail!(
                "ringwall did not print `ready` within {} s",
                START_TIMEOUT.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(cases: &str) -> Options {
        Options {
            seconds: 5,
            pps: 200_000,
            cases: cases.to_owned(),
            rounds: 2,
            no_build: false,
        }
    }

    #[test]
    fn plan_reads_the_cases_once_each() {
        let plan = Plan::from_options(&options("xdp-native,nft none nft")).unwrap();
        assert_eq!(plan.cases, [Case::XdpNative, Case::Nft, Case::NoRule]);
        assert_eq!(plan.order(1), [Case::XdpNative, Case::Nft, Case::NoRule]);
        assert_eq!(plan.order(2), [Case::NoRule, Case::Nft, Case::XdpNative]);
    }

    #[test]
    fn plan_rejects_unknown_or_empty_values() {
        assert!(Plan::from_options(&options("xdp")).is_err());
        assert!(Plan::from_options(&options("")).is_err());
        let zero = Options {
            pps: 0,
            ..options("none")
        };
        assert!(Plan::from_options(&zero).is_err());
    }

    #[test]
    fn every_case_has_a_name_that_parses_back() {
        for case in Case::ALL {
            assert_eq!(Case::parse(case.name()).unwrap(), case);
        }
    }

    #[test]
    fn ringwall_arguments_per_case() {
        assert_eq!(
            Case::XdpGeneric.xdp_args("synbw1"),
            [
                "--xdp",
                "required",
                "--xdp-mode",
                "generic",
                "--xdp-iface",
                "synbw1"
            ]
        );
        assert_eq!(Case::Accept.xdp_args("synbw1"), ["--xdp", "off"]);
        assert!(Case::Accept.ringwall_denies());
        assert!(!Case::Nft.ringwall_denies());
    }

    #[test]
    fn ringwall_errors_come_from_its_own_error_line() {
        let stderr =
            "2026-11-23T11:28:03Z  INFO ringwall::server: listening addr=198.18.0.1:8080\n\
                      ringwall: XDP is required (--xdp required) but unavailable: no program\n";
        assert_eq!(
            ringwall_error(stderr),
            "ringwall: XDP is required (--xdp required) but unavailable: no program"
        );
        assert_eq!(ringwall_error("a\nlast words\n\n"), "last words");
        assert_eq!(ringwall_error(""), "ringwall logged nothing");
    }

    #[test]
    fn the_deny_config_blocks_the_whole_flood_range() {
        let open = edge_config(false);
        assert!(open.contains("address: http://198.18.0.1:8080"));
        assert!(!open.contains("ip-blocklist-flex"));
        let deny = edge_config(true);
        assert!(deny.contains("name: ip-blocklist-flex"));
        assert!(deny.contains("- 198.18.0.0/15"));
    }
}
