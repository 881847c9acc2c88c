//! `cargo xtask bench`: Ringwall beside nginx and HAProxy as reverse proxies on this box, in
//! one run. One upstream (nginx, one worker, `return 200 "hello"` on 127.0.0.1:9000); then,
//! one at a time, each proxy with one worker in front of it, driven by `wrk -t1 --latency`
//! after a warm-up, pinned (proxy on CPU 1, wrk and upstream on CPU 0) and/or unpinned.
//! `direct` is wrk against the upstream itself: the ceiling of this machine.
//!
//! Requests/s on two shared cores measure wrk and the upstream as much as the proxy and
//! drift over an hour, so the figures to read are the ratios measured in the same run.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::peers::{self, placement, Mode, Peer, HELLO, UPSTREAM_PORT};
use crate::report::{self, Run};
use crate::{build, proc, setup, target_dir, wrk};
/// How long a server gets to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(30);

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
        if conns.is_empty() || peers.is_empty() || modes.is_empty() {
            bail!("--conns, --peers and --modes each need at least one value");
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
        })
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
    let mut ports = vec![UPSTREAM_PORT];
    ports.extend(plan.peers.iter().map(|peer| peer.port()));
    if let Some(port) = ports.iter().find(|&&port| port_busy(port)) {
        bail!("port {port} is already in use on 127.0.0.1: stop that process first");
    }
    if plan.modes.contains(&Mode::Pinned) && thread::available_parallelism()?.get() < 2 {
        eprintln!("warning: fewer than 2 CPUs: pinned runs share one CPU");
    }

    raise_open_files_limit();
    proc::catch_signals();
    let work = proc::TempDir::new("ringwall-bench")?;
    peers::write_configs(work.path())?;
    let results = target_dir().join("bench").join("results.json");
    fs::create_dir_all(results.parent().unwrap_or(Path::new(".")))?;
    let settings = json!({
        "duration_s": plan.duration,
        "reps": plan.reps,
        "warmup_s": plan.warmup,
        "conns": plan.conns,
        "peers": plan.peers.iter().map(|p| p.name()).collect::<Vec<_>>(),
        "modes": plan.modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "wrk": "wrk -t1 -cN -dS --latency",
    });

    let mut runs = Vec::new();
    for &mode in &plan.modes {
        let upstream_cpu = placement(mode, Peer::Nginx).upstream;
        let mut upstream = start_nginx("upstream", work.path(), upstream_cpu)?;
        wait_answering(&mut upstream, UPSTREAM_PORT)?;
        for &peer in &plan.peers {
            let measured =
                start_peer(peer, mode, work.path(), ringwall_bin.as_deref()).and_then(|proxy| {
                    measure(&plan, peer, mode, &mut runs, |runs| {
                        // Rewritten after every run: an interrupted bench keeps what it measured.
                        let doc = report::to_json(settings.clone(), runs);
                        fs::write(&results, format!("{doc:#}\n"))
                            .with_context(|| format!("cannot write {}", results.display()))
                    })?;
                    drop(proxy);
                    Ok(())
                });
            if let Err(err) = measured {
                proc::check_interrupted()?;
                eprintln!("skipping {} ({}): {err:#}", peer.name(), mode.name());
            }
        }
        drop(upstream);
    }

    let rows = report::summarize(&runs);
    println!(
        "\nwrk -t1 -d{}s, median of {} runs (spread% = (max-min)/median req/s; errors = socket errors + non-2xx, summed)",
        plan.duration, plan.reps
    );
    print!("{}", report::table(&rows));
    let ratios = report::ratios(&rows);
    if !ratios.is_empty() {
        println!("\nRingwall / peer, same run (req/s: higher is better; p99: lower is better)");
        print!("{}", report::ratio_table(&ratios));
    }
    println!("\nevery run: {}", results.display());
    Ok(())
}

/// The warm-up and the measured runs of one peer in one mode, at every connection count.
fn measure(
    plan: &Plan,
    peer: Peer,
    mode: Mode,
    runs: &mut Vec<Run>,
    mut save: impl FnMut(&[Run]) -> Result<()>,
) -> Result<()> {
    for &conns in &plan.conns {
        if plan.warmup > 0 {
            wrk(peer, mode, conns, plan.warmup)?;
        }
        for rep in 1..=plan.reps {
            let report = wrk::parse(&wrk(peer, mode, conns, plan.duration)?)?;
            eprintln!(
                "  {:<8} {:<8} c={conns:<4} rep {rep}: {:>9.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  errors {}",
                peer.name(),
                mode.name(),
                report.requests_per_sec,
                report.p50_us,
                report.p99_us,
                report.errors()
            );
            runs.push(Run {
                peer: peer.name().to_owned(),
                mode: mode.name().to_owned(),
                conns,
                rep,
                report,
            });
            save(runs)?;
        }
    }
    Ok(())
}

/// One proxy (or none, for `direct`), started and answering through to the upstream.
fn start_peer(
    peer: Peer,
    mode: Mode,
    work: &Path,
    ringwall_bin: Option<&Path>,
) -> Result<Option<proc::Server>> {
    let cpu = placement(mode, peer).proxy;
    let mut server = match peer {
        Peer::Direct => return Ok(None),
        Peer::Nginx => start_nginx(peers::log_name(peer), work, cpu)?,
        Peer::Haproxy => {
            let log = log_file(work, "haproxy")?;
            let mut cmd = on_cpu(cpu, "haproxy");
            cmd.arg("-db")
                .arg("-f")
                .arg(work.join("haproxy.cfg"))
                .stdout(log.try_clone()?)
                .stderr(log);
            proc::Server::spawn("haproxy", &mut cmd)?
        }
        Peer::Ringwall => {
            let bin = ringwall_bin.context("ringwall was not built")?;
            start_ringwall(bin, work, cpu)?
        }
    };
    wait_answering(&mut server, peer.port()).map_err(|err| {
        let log = work.join(format!("{}.log", peers::log_name(peer)));
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

/// Ringwall with one worker, once it has printed `ready`.
fn start_ringwall(bin: &Path, work: &Path, cpu: Option<u32>) -> Result<proc::Server> {
    let mut cmd = on_cpu(cpu, bin);
    cmd.arg("run")
        .arg("--config")
        .arg(work.join("ringwall"))
        // Metrics on, as in production; on a port of its own so 9901 need not be free.
        .args(["--workers", "1", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(log_file(work, "ringwall")?);
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

/// Polls `GET /` until it returns the upstream's hello (through the proxy, if any).
fn wait_answering(server: &mut proc::Server, port: u16) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if get_root(port).is_ok_and(|body| body == HELLO) {
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

/// Runs wrk against a peer and returns its report.
fn wrk(peer: Peer, mode: Mode, conns: u32, seconds: u32) -> Result<String> {
    let mut cmd = on_cpu(placement(mode, peer).wrk, "wrk");
    cmd.args([
        "-t1".to_owned(),
        format!("-c{conns}"),
        format!("-d{seconds}s"),
        "--latency".to_owned(),
        format!("http://127.0.0.1:{}/", peer.port()),
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
    fn plan_rejects_unknown_or_empty_values() {
        assert!(Plan::from_options(&options("64", "envoy", "pinned")).is_err());
        assert!(Plan::from_options(&options("64", "nginx", "sideways")).is_err());
        assert!(Plan::from_options(&options("0", "nginx", "pinned")).is_err());
        assert!(Plan::from_options(&options("", "nginx", "pinned")).is_err());
    }
}
