//! `cargo xtask bench`: Ringwall beside nginx and HAProxy as reverse proxies on this box, in
//! one run. One upstream (nginx, one worker, `return 200 "hello"` on 127.0.0.1:9000); then,
//! one at a time, each proxy with one worker in front of it, driven by `wrk -t1 --latency`
//! after a warm-up, pinned (proxy on CPU 1, wrk and upstream on CPU 0) and/or unpinned.
//! `direct` is wrk against the upstream itself: the ceiling of this machine.
//!
//! Requests/s on two shared cores measure wrk and the upstream as much as the proxy and
//! drift over an hour, so the figures to read are the ratios measured in the same run.
//!
//! Scenarios: `plain` (the default) is the above. The TLS ones start each proxy again, now
//! terminating TLS with one certificate made for this run (see `tls`): `tls-keepalive` is wrk
//! over `https://` keep-alive connections, `tls-handshake` a full handshake per request (see
//! `handshakes`, and why it is not wrk). `direct` is then the upstream's own TLS listener.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::peers::{self, placement, Mode, Peer, Scenario, HELLO, UPSTREAM_PORT};
use crate::report::{self, PeerCpu, Run};
use crate::synflood::cpu;
use crate::tls::{self, Pki};
use crate::{build, handshakes, proc, setup, target_dir, wrk};
/// How long a server gets to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Under this share of its one CPU a proxy was not what limited a run.
const SATURATED_PCT: f64 = 90.0;

#[derive(clap::Args)]
pub struct Options {
    /// Seconds per measured wrk run.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Measured runs per (peer, mode, connections); the median is reported.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Seconds of warm-up before the runs of each (peer, mode, connections).
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// wrk connection counts.
    #[arg(long, default_value = "64 256")]
    conns: String,
    /// Peers, from: direct nginx haproxy ringwall.
    #[arg(long, default_value = "direct nginx haproxy ringwall")]
    peers: String,
    /// Modes, from: pinned unpinned.
    #[arg(long, default_value = "pinned unpinned")]
    modes: String,
    /// Scenarios, from: plain tls-keepalive tls-handshake.
    #[arg(long, default_value = "plain")]
    scenarios: String,
    /// The TLS scenarios: short for --scenarios "tls-keepalive tls-handshake".
    #[arg(long, conflicts_with = "scenarios")]
    tls: bool,
}

/// What to run, from the options.
#[derive(Debug)]
struct Plan {
    duration: u32,
    reps: u32,
    warmup: u32,
    conns: Vec<u32>,
    peers: Vec<Peer>,
    modes: Vec<Mode>,
    scenarios: Vec<Scenario>,
}

impl Plan {
    fn from_options(options: &Options) -> Result<Plan> {
        let conns = words(&options.conns)
            .map(|word| {
                word.parse::<u32>()
                    .ok()
                    .filter(|&c| c > 0)
                    .with_context(|| format!("bad connection count `{word}`"))
            })
            .collect::<Result<Vec<_>>>()?;
        let peers = words(&options.peers)
            .map(Peer::parse)
            .collect::<Result<Vec<_>>>()?;
        let modes = words(&options.modes)
            .map(Mode::parse)
            .collect::<Result<Vec<_>>>()?;
        let scenarios = if options.tls {
            vec![Scenario::TlsKeepalive, Scenario::TlsHandshake]
        } else {
            words(&options.scenarios)
                .map(Scenario::parse)
                .collect::<Result<Vec<_>>>()?
        };
        if conns.is_empty() || peers.is_empty() || modes.is_empty() || scenarios.is_empty() {
            bail!("--conns, --peers, --modes and --scenarios each need at least one value");
        }
        if options.duration == 0 || options.reps == 0 {
            bail!("--duration and --reps must be at least 1");
        }
        Ok(Plan {
            duration: options.duration,
            reps: options.reps,
            warmup: options.warmup,
            conns,
            peers,
            modes,
            scenarios,
        })
    }

    /// The scenarios by the configuration the peers run: the plain one, then TLS, each
    /// started once per (mode, peer) for the scenarios that need it, in the order given.
    fn stages(&self) -> Vec<(bool, Vec<Scenario>)> {
        [false, true]
            .into_iter()
            .map(|tls| {
                let scenarios = self.scenarios.iter().copied().filter(|s| s.tls() == tls);
                (tls, scenarios.collect::<Vec<_>>())
            })
            .filter(|(_, scenarios)| !scenarios.is_empty())
            .collect()
    }

    /// Every port that must be free: the upstream's and the peers' in each scenario.
    fn ports(&self) -> Vec<u16> {
        let mut ports = vec![UPSTREAM_PORT];
        for &scenario in &self.scenarios {
            for &peer in &self.peers {
                let port = peer.port_in(scenario);
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
        }
        ports
    }
}

/// Space- or comma-separated words.
fn words(list: &str) -> impl Iterator<Item = &str> {
    list.split([' ', ',']).filter(|word| !word.is_empty())
}

pub fn bench(options: &Options) -> Result<()> {
    let plan = Plan::from_options(options)?;
    let ringwall_bin = if plan.peers.contains(&Peer::Ringwall) {
        Some(build::all()?)
    } else {
        setup::setup()?;
        None
    };
    let mut tools = vec!["wrk", "nginx"];
    if plan.peers.contains(&Peer::Haproxy) {
        tools.push("haproxy");
    }
    if plan.modes.contains(&Mode::Pinned) {
        tools.push("taskset");
    }
    if let Some(missing) = tools.iter().find(|tool| !proc::on_path(tool)) {
        bail!("`{missing}` is not installed (cargo xtask setup installs it)");
    }
    if let Some(port) = plan.ports().into_iter().find(|&port| port_busy(port)) {
        bail!("port {port} is already in use on 127.0.0.1: stop that process first");
    }
    if plan.modes.contains(&Mode::Pinned) && thread::available_parallelism()?.get() < 2 {
        eprintln!("warning: fewer than 2 CPUs: pinned runs share one CPU");
    }

    raise_open_files_limit();
    proc::catch_signals();
    let work = proc::TempDir::new("ringwall-bench")?;
    let pki = match plan.scenarios.iter().any(|s| s.tls()) {
        true => Some(Pki::create(&work.path().join("tls"))?),
        false => None,
    };
    peers::write_configs(work.path(), pki.as_ref())?;
    let results = target_dir().join("bench").join("results.json");
    fs::create_dir_all(results.parent().unwrap_or(Path::new(".")))?;
    let mut session = Session {
        plan: &plan,
        work: work.path(),
        ringwall_bin: ringwall_bin.as_deref(),
        results,
        runs: Vec::new(),
        negotiated: Vec::new(),
    };
    for &mode in &plan.modes {
        let upstream_cpu = placement(mode, Peer::Nginx).upstream;
        let mut upstream = start_nginx("upstream", work.path(), upstream_cpu)?;
        wait_answering(&mut upstream, UPSTREAM_PORT, None)?;
        for (tls, scenarios) in plan.stages() {
            let pki = if tls { pki.as_ref() } else { None };
            for &peer in &plan.peers {
                if let Err(err) = session.measure_peer(peer, mode, &scenarios, pki) {
                    proc::check_interrupted()?;
                    let over = if tls { " over TLS" } else { "" };
                    eprintln!("skipping {}{over} ({}): {err:#}", peer.name(), mode.name());
                }
            }
        }
        drop(upstream);
    }
    session.print();
    Ok(())
}

/// One bench under way: what it runs, where, and what it has measured so far.
struct Session<'a> {
    plan: &'a Plan,
    work: &'a Path,
    ringwall_bin: Option<&'a Path>,
    results: PathBuf,
    runs: Vec<Run>,
    /// What each peer's TLS handshake settled on, with the probe.
    negotiated: Vec<(Peer, tls::Negotiated)>,
}

impl Session<'_> {
    /// Starts `peer` in `mode` (from its TLS configuration with `pki`) and measures it through
    /// `scenarios`.
    fn measure_peer(
        &mut self,
        peer: Peer,
        mode: Mode,
        scenarios: &[Scenario],
        pki: Option<&Pki>,
    ) -> Result<()> {
        let mut proxy = start_peer(peer, mode, self.work, self.ringwall_bin, pki)?;
        // The proxy's process group: a server runs in one of its own, with what it forks.
        let group = proxy.as_mut().map(|server| server.child().id());
        if let Some(pki) = pki {
            let (_, negotiated) = tls::get_root(pki, peer.tls_port())?;
            eprintln!("  {:<8} {:<8} TLS: {negotiated}", peer.name(), mode.name());
            self.negotiated.retain(|(known, _)| *known != peer);
            self.negotiated.push((peer, negotiated));
        }
        for &scenario in scenarios {
            let stage = Stage {
                peer,
                mode,
                scenario,
                pki,
            };
            // Only where it adds to the figures: the plain scenario stays as it was.
            self.measure(stage, group.filter(|_| scenario.tls()))?;
        }
        drop(proxy);
        Ok(())
    }

    /// The warm-up and the measured runs of one stage, at every connection count; with
    /// `group`, the CPU time of that process group in each run.
    fn measure(&mut self, stage: Stage<'_>, group: Option<u32>) -> Result<()> {
        let plan = self.plan;
        let Stage {
            peer,
            mode,
            scenario,
            ..
        } = stage;
        // The plain lines as they always read; the TLS ones say which scenario.
        let label = match scenario {
            Scenario::Plain => String::new(),
            _ => format!("{:<14}", scenario.name()),
        };
        for &conns in &plan.conns {
            if plan.warmup > 0 {
                drive(stage, conns, plan.warmup)?;
            }
            for rep in 1..=plan.reps {
                let cpu_before = group.map(cpu::group_runtime_ns);
                let report = drive(stage, conns, plan.duration)?;
                let peer_cpu = group.zip(cpu_before).map(|(group, before)| {
                    let ran_ns = cpu::group_runtime_ns(group).saturating_sub(before) as f64;
                    PeerCpu {
                        busy_pct: ran_ns / 1e7 / f64::from(plan.duration),
                        us_per_request: ran_ns / 1e3 / report.requests.max(1) as f64,
                    }
                });
                let cpu_note = peer_cpu.map_or(String::new(), |c| {
                    format!(
                        "  {} CPU {:.0}%, {:.0} µs/req",
                        peer.name(),
                        c.busy_pct,
                        c.us_per_request
                    )
                });
                eprintln!(
                    "  {:<8} {:<8} {label}c={conns:<4} rep {rep}: {:>9.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  errors {}{cpu_note}",
                    peer.name(),
                    mode.name(),
                    report.requests_per_sec,
                    report.p50_us,
                    report.p99_us,
                    report.errors()
                );
                if let Some(c) = peer_cpu.filter(|c| c.busy_pct < SATURATED_PCT) {
                    eprintln!(
                        "  note: {} used {:.0}% of its CPU: the client side was the limit, so \
                         compare CPU µs/req rather than req/s here",
                        peer.name(),
                        c.busy_pct
                    );
                }
                self.runs.push(Run {
                    scenario: scenario.name().to_owned(),
                    peer: peer.name().to_owned(),
                    mode: mode.name().to_owned(),
                    conns,
                    rep,
                    report,
                    peer_cpu,
                });
                // Rewritten after every run: an interrupted bench keeps what it measured.
                self.save()?;
            }
        }
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let plan = self.plan;
        let mut settings = json!({
            "duration_s": plan.duration,
            "reps": plan.reps,
            "warmup_s": plan.warmup,
            "conns": plan.conns,
            "peers": plan.peers.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "modes": plan.modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "scenarios": plan.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "wrk": "wrk -t1 -cN -dS --latency",
        });
        if plan.scenarios.iter().any(|s| s.tls()) {
            let negotiated: serde_json::Map<_, _> = self
                .negotiated
                .iter()
                .map(|(peer, what)| (peer.name().to_owned(), json!(what.to_string())))
                .collect();
            settings["tls"] = json!({
                "certificate": certificate_note(),
                "negotiated": negotiated,
                "handshake_client": "xtask's own (rustls, resumption disabled): see xtask/src/handshakes.rs",
            });
        }
        let doc = report::to_json(settings, &self.runs);
        fs::write(&self.results, format!("{doc:#}\n"))
            .with_context(|| format!("cannot write {}", self.results.display()))
    }

    /// The medians and ratios of each scenario, then what TLS settled on.
    fn print(&self) {
        let rows = report::summarize(&self.runs);
        for &scenario in &self.plan.scenarios {
            let rows: Vec<_> = rows
                .iter()
                .filter(|row| row.scenario == scenario.name())
                .cloned()
                .collect();
            println!("\n{}", scenario_heading(scenario, self.plan));
            print!("{}", report::table(&rows));
            let ratios = report::ratios(&rows);
            if !ratios.is_empty() {
                println!(
                    "\nRingwall / peer, same run (req/s: higher is better; p99: lower is better)"
                );
                print!("{}", report::ratio_table(&ratios));
            }
        }
        if self.plan.scenarios.iter().any(|s| s.tls()) {
            println!(
                "\nTLS: {}; what each settled on with the probe:",
                certificate_note()
            );
            for (peer, negotiated) in &self.negotiated {
                println!("  {:<9} {negotiated}", peer.name());
            }
        }
        println!("\nevery run: {}", self.results.display());
    }
}

/// The line above a scenario's table; the plain one as it always read.
fn scenario_heading(scenario: Scenario, plan: &Plan) -> String {
    let medians = format!(
        "median of {} runs (spread% = (max-min)/median req/s; errors = socket errors + non-2xx, summed)",
        plan.reps
    );
    match scenario {
        Scenario::Plain => format!("wrk -t1 -d{}s, {medians}", plan.duration),
        Scenario::TlsKeepalive => format!(
            "tls-keepalive: wrk -t1 -d{}s over https:// keep-alive connections, {medians}; {CPU_NOTE}",
            plan.duration
        ),
        Scenario::TlsHandshake => format!(
            "tls-handshake: a full TLS handshake per request (Connection: close, no resumption), \
             one thread, {}s; req/s = handshakes/s, latency from connect to the end of the \
             response; {medians}; {CPU_NOTE}",
            plan.duration
        ),
    }
}

/// What the CPU columns of the TLS tables are.
const CPU_NOTE: &str = "peer CPU% = the proxy's CPU time over the run (100 = its one CPU), \
     CPU µs/req = per request: the figure to compare where a proxy stayed under 90%";

/// The certificate every peer serves, for the output.
fn certificate_note() -> String {
    format!(
        "one {} certificate for {} and 127.0.0.1, made for this run and served alone (no chain) \
         by every peer, which offers TLS 1.2 and 1.3",
        tls::KEY_TYPE,
        tls::SERVER_NAME
    )
}

/// What is measured: a peer, in a mode, through a scenario (with the certificate, for TLS).
#[derive(Clone, Copy)]
struct Stage<'a> {
    peer: Peer,
    mode: Mode,
    scenario: Scenario,
    pki: Option<&'a Pki>,
}

/// One run of a stage's client: wrk, or for full handshakes the bench's own client.
fn drive(stage: Stage<'_>, conns: u32, seconds: u32) -> Result<wrk::WrkReport> {
    let Stage {
        peer,
        mode,
        scenario,
        pki,
    } = stage;
    let port = peer.port_in(scenario);
    match scenario {
        Scenario::Plain => wrk::parse(&wrk(peer, mode, conns, seconds, "http", port)?),
        Scenario::TlsKeepalive => wrk::parse(&wrk(peer, mode, conns, seconds, "https", port)?),
        Scenario::TlsHandshake => {
            let pki = pki.context("no certificate for the TLS scenarios")?;
            handshakes::run(port, conns, seconds, placement(mode, peer).wrk, pki.leaf())
        }
    }
}

/// One proxy (or none, for `direct`), started and answering through to the upstream; with
/// `tls`, from its TLS configuration and answering over TLS.
fn start_peer(
    peer: Peer,
    mode: Mode,
    work: &Path,
    ringwall_bin: Option<&Path>,
    tls: Option<&Pki>,
) -> Result<Option<proc::Server>> {
    let cpu = placement(mode, peer).proxy;
    let name = peers::log_name(peer, tls.is_some());
    let mut server = match peer {
        Peer::Direct => return Ok(None),
        Peer::Nginx => start_nginx(name, work, cpu)?,
        Peer::Haproxy => {
            let log = log_file(work, name)?;
            let mut cmd = on_cpu(cpu, "haproxy");
            cmd.arg("-db")
                .arg("-f")
                .arg(work.join(format!("{name}.cfg")))
                .stdout(log.try_clone()?)
                .stderr(log);
            proc::Server::spawn("haproxy", &mut cmd)?
        }
        Peer::Ringwall => {
            let bin = ringwall_bin.context("ringwall was not built")?;
            start_ringwall(bin, work, name, cpu)?
        }
    };
    let port = if tls.is_some() {
        peer.tls_port()
    } else {
        peer.port()
    };
    wait_answering(&mut server, port, tls).map_err(|err| {
        let log = work.join(format!("{name}.log"));
        err.context(proc::log_tail(&log, 10))
    })?;
    Ok(Some(server))
}

/// `NAME.log` in the work dir, emptied, shared by a server's stdout, stderr and own log.
fn log_file(work: &Path, name: &str) -> Result<fs::File> {
    let path = work.join(format!("{name}.log"));
    fs::write(&path, "")?;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))
}

fn start_nginx(name: &str, work: &Path, cpu: Option<u32>) -> Result<proc::Server> {
    let log = log_file(work, name)?;
    let mut cmd = on_cpu(cpu, "nginx");
    cmd.arg("-c")
        .arg(work.join(format!("{name}.conf")))
        .arg("-p")
        .arg(work)
        .arg("-e")
        .arg(work.join(format!("{name}.log")))
        .stdout(log.try_clone()?)
        .stderr(log);
    proc::Server::spawn(name, &mut cmd)
}

/// Ringwall with one worker on the configuration directory `name`, once it has printed
/// `ready`.
fn start_ringwall(bin: &Path, work: &Path, name: &str, cpu: Option<u32>) -> Result<proc::Server> {
    let mut cmd = on_cpu(cpu, bin);
    cmd.arg("run")
        .arg("--config")
        .arg(work.join(name))
        // Metrics on, as in production; on a port of its own so 9901 need not be free.
        .args(["--workers", "1", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(log_file(work, name)?);
    let mut server = proc::Server::spawn("ringwall", &mut cmd)?;
    let (lines_tx, lines) = mpsc::channel();
    if let Some(stdout) = server.child().stdout.take() {
        // Keeps reading to the end, so that ringwall never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|line| line.ok()) {
                let _ = lines_tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match lines.recv_timeout(proc::POLL) {
            Ok(line) if line.starts_with("ready") => return Ok(server),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                server.check_running()?;
                bail!("ringwall closed its stdout without printing `ready`");
            }
        }
        server.check_running()?;
        proc::check_interrupted()?;
        if Instant::now() > deadline {
            bail!(
                "ringwall did not print `ready` within {} s",
                START_TIMEOUT.as_secs()
            );
        }
    }
}

/// Polls `GET /` until it returns the upstream's hello (through the proxy, if any), over TLS
/// with the bench's certificate verified when `tls` is given.
fn wait_answering(server: &mut proc::Server, port: u16, tls: Option<&Pki>) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let body = match tls {
            None => get_root(port),
            Some(pki) => tls::get_root(pki, port).map(|(body, _)| body),
        };
        if body.is_ok_and(|body| body == HELLO) {
            return Ok(());
        }
        server.check_running()?;
        proc::check_interrupted()?;
        if Instant::now() > deadline {
            bail!(
                "nothing answered `{HELLO}` on 127.0.0.1:{port} within {} s",
                START_TIMEOUT.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The body of `GET /` on a 200 answer.
fn get_root(port: u16) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").context("no end of head")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// Runs wrk against a peer on `scheme://127.0.0.1:port/` and returns its report.
fn wrk(
    peer: Peer,
    mode: Mode,
    conns: u32,
    seconds: u32,
    scheme: &str,
    port: u16,
) -> Result<String> {
    let mut cmd = on_cpu(placement(mode, peer).wrk, "wrk");
    cmd.args([
        "-t1".to_owned(),
        format!("-c{conns}"),
        format!("-d{seconds}s"),
        "--latency".to_owned(),
        format!("{scheme}://127.0.0.1:{port}/"),
    ]);
    let timeout = Duration::from_secs(u64::from(seconds) + 20);
    let done = proc::run_captured("wrk", &mut cmd, timeout)?;
    if !done.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            done.status,
            done.stdout,
            done.stderr
        );
    }
    Ok(done.stdout)
}

/// A command, under `taskset -c CPU` when it is pinned.
fn on_cpu(cpu: Option<u32>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpu.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Something already listening would take the load meant for the peer.
fn port_busy(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

/// 256 connections per peer, plus the upstream side: more than the usual 1024 descriptors.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_cur.max(limit.rlim_max.min(65536));
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(conns: &str, peers: &str, modes: &str) -> Options {
        Options {
            duration: 10,
            reps: 3,
            warmup: 2,
            conns: conns.to_owned(),
            peers: peers.to_owned(),
            modes: modes.to_owned(),
            scenarios: "plain".to_owned(),
            tls: false,
        }
    }

    #[test]
    fn plan_reads_space_or_comma_separated_lists() {
        let plan =
            Plan::from_options(&options("64 256", "direct,nginx ringwall", "pinned")).unwrap();
        assert_eq!(plan.conns, [64, 256]);
        assert_eq!(plan.peers, [Peer::Direct, Peer::Nginx, Peer::Ringwall]);
        assert_eq!(plan.modes, [Mode::Pinned]);
    }

    #[test]
    fn plain_is_the_default_and_tls_names_both_tls_scenarios() {
        let plain = Plan::from_options(&options("64", "nginx", "pinned")).unwrap();
        assert_eq!(plain.scenarios, [Scenario::Plain]);
        assert_eq!(plain.stages(), [(false, vec![Scenario::Plain])]);
        assert_eq!(plain.ports(), [9000, 8001]);

        let tls = Plan::from_options(&Options {
            tls: true,
            ..options("64", "direct ringwall", "pinned")
        })
        .unwrap();
        assert_eq!(
            tls.scenarios,
            [Scenario::TlsKeepalive, Scenario::TlsHandshake]
        );
        assert_eq!(tls.ports(), [9000, 9443, 8405]);
    }

    #[test]
    fn scenarios_group_by_the_configuration_the_peers_run() {
        let plan = Plan::from_options(&Options {
            scenarios: "tls-handshake,plain tls-keepalive".to_owned(),
            ..options("64", "nginx haproxy", "pinned")
        })
        .unwrap();
        assert_eq!(
            plan.stages(),
            [
                (false, vec![Scenario::Plain]),
                (true, vec![Scenario::TlsHandshake, Scenario::TlsKeepalive]),
            ]
        );
        assert_eq!(plan.ports(), [9000, 8401, 8402, 8001, 8002]);
        let bad = Options {
            scenarios: "plain tls".to_owned(),
            ..options("64", "nginx", "pinned")
        };
        assert!(Plan::from_options(&bad).is_err());
        let none = Options {
            scenarios: " ".to_owned(),
            ..options("64", "nginx", "pinned")
        };
        assert!(Plan::from_options(&none).is_err());
    }

    #[test]
    fn tls_and_scenarios_are_exclusive_on_the_command_line() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        let cli = Cli::try_parse_from(["bench", "--tls", "--peers", "nginx haproxy"]).unwrap();
        assert!(cli.options.tls);
        assert!(Cli::try_parse_from(["bench", "--tls", "--scenarios", "plain"]).is_err());
        let cli = Cli::try_parse_from(["bench"]).unwrap();
        assert_eq!(
            (cli.options.scenarios.as_str(), cli.options.tls),
            ("plain", false)
        );
    }

    #[test]
    fn plan_rejects_unknown_or_empty_values() {
        assert!(Plan::from_options(&options("64", "envoy", "pinned")).is_err());
        assert!(Plan::from_options(&options("64", "nginx", "sideways")).is_err());
        assert!(Plan::from_options(&options("0", "nginx", "pinned")).is_err());
        assert!(Plan::from_options(&options("", "nginx", "pinned")).is_err());
    }
}
