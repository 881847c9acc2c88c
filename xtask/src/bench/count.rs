//! `cargo xtask bench --count`: what each proxy does per request, counted over a known number
//! of requests rather than timed, so that it holds on a noisy shared machine without hardware
//! counters. For each (policies, peer, workload), pinned as in the timed runs (proxy on CPU 1,
//! client and upstream on CPU 0), after a warm-up, the bench's own client
//! (`client::fixed_count`) sends `--count-requests` keep-alive requests over
//! [`CONNECTIONS`] connections (a tenth for the 1 MiB workloads):
//!
//! - user-space instructions: the proxy runs under `valgrind --tool=callgrind`; the counters
//!   are zeroed (`callgrind_control -z`) after the warm-up and dumped (`-d`) after the
//!   requests, and the dump's total Ir divided by the requests. nginx runs as one process
//!   (`master_process off`) so that callgrind sees the worker. Envoy is slow enough under
//!   callgrind to get a tenth of the requests again.
//! - syscalls: the proxy runs as usual; `perf stat` counts its `syscalls:sys_enter_*`
//!   tracepoints (and `io_uring:io_uring_submit_req`, the SQEs submitted, where the kernel has
//!   it) in all its processes and threads, switched on and off around the requests through
//!   perf's control FIFO so that nothing before or after is counted.
//!
//! Results: a table, and `target/bench/counts.json`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use super::*;

/// Keep-alive connections of the fixed-count client.
const CONNECTIONS: u32 = 16;
/// How long a proxy under callgrind gets to start.
const CALLGRIND_START: Duration = Duration::from_secs(300);
/// The tracepoint of each SQE io_uring submits.
const IO_URING_SUBMIT: &str = "io_uring:io_uring_submit_req";
/// How long perf gets to acknowledge a command, and callgrind to write a dump.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// What one (policies, peer, workload) counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    pub peer: String,
    pub policies: String,
    pub scenario: String,
    pub instructions: Option<Tally>,
    pub syscalls: Option<Syscalls>,
    pub notes: Vec<String>,
}

/// A total over a number of requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tally {
    pub requests: u32,
    pub total: u64,
}

impl Tally {
    pub fn per_request(&self) -> f64 {
        self.total as f64 / f64::from(self.requests.max(1))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Syscalls {
    pub requests: u32,
    /// Each syscall that ran, with its count, most frequent first.
    pub by_name: Vec<(String, u64)>,
    /// SQEs submitted to io_uring, where the tracepoint exists.
    pub io_uring_sqes: Option<u64>,
}

impl Syscalls {
    pub fn total(&self) -> Tally {
        Tally {
            requests: self.requests,
            total: self.by_name.iter().map(|(_, n)| n).sum(),
        }
    }
}

/// What one way of counting runs on: a peer with a policy set, through the workloads.
struct Target<'s, 'a> {
    session: &'s Session<'a>,
    peer: Peer,
    policies: Policies,
    scenarios: &'s [Scenario],
}

/// One way of counting: it fills its part of each workload's row.
type Counter = fn(&Target<'_, '_>, &mut [Counted]) -> Result<()>;

pub(super) fn count(session: &Session<'_>, out: &Path) -> Result<()> {
    let plan = session.plan;
    let callgrind = proc::on_path("valgrind") && proc::on_path("callgrind_control");
    let perf = proc::on_path("perf");
    if !callgrind {
        eprintln!("instructions not counted: valgrind is missing (cargo xtask setup installs it)");
    }
    if !perf {
        eprintln!("syscalls not counted: perf is missing (cargo xtask setup installs linux-perf)");
    }
    if !callgrind && !perf {
        bail!("nothing to count with");
    }
    let scenarios = plan.plain_scenarios();
    if scenarios.is_empty() {
        bail!("--count counts the plain workloads (small 64k 1m upload), not TLS");
    }
    let mode = Mode::Pinned;
    let upstream_cpu = placement(mode, Peer::Nginx).upstream;
    let mut upstream = start_nginx("upstream", session.work, upstream_cpu, 1, &Launch::plain())?;
    wait_answering(&mut upstream, UPSTREAM_PORT, None, &[], START_TIMEOUT)?;
    let mut counted = Vec::new();
    for &policies in &plan.policies {
        let counted_peers = plan.peers.iter().filter(|&&peer| {
            peer != Peer::Direct && (policies == Policies::None || peer.runs_policies())
        });
        for &peer in counted_peers {
            let mut rows: Vec<Counted> = scenarios
                .iter()
                .map(|scenario| Counted {
                    peer: peer.name().to_owned(),
                    policies: policies.name().to_owned(),
                    scenario: scenario.name().to_owned(),
                    instructions: None,
                    syscalls: None,
                    notes: Vec::new(),
                })
                .collect();
            let counters: [(bool, &str, &str, Counter); 2] = [
                (callgrind, "callgrind", "instructions", instructions),
                (perf, "perf", "syscalls", syscalls),
            ];
            for (on, tool, what, counter) in counters {
                if !on {
                    continue;
                }
                let target = Target {
                    session,
                    peer,
                    policies,
                    scenarios: &scenarios,
                };
                if let Err(err) = counter(&target, &mut rows) {
                    proc::check_interrupted()?;
                    let (peer, policies) = (peer.name(), policies.name());
                    eprintln!("  {peer} {policies}: no {what}: {err:#}");
                    for row in &mut rows {
                        row.notes.push(format!("{tool}: {err:#}"));
                    }
                }
            }
            counted.extend(rows);
            save(out, plan, &counted)?;
        }
    }
    drop(upstream);
    println!(
        "\nper request, over a fixed number of keep-alive requests on {CONNECTIONS} connections \
         after a warm-up (instructions: user space, callgrind; syscalls and io_uring SQEs: \
         perf tracepoints, every process and thread of the proxy)"
    );
    print!("{}", table(&counted));
    println!("\ncounts: {}", out.display());
    Ok(())
}

/// The requests of a workload: a tenth for the 1 MiB ones, and a tenth again for Envoy under
/// callgrind.
fn requests_for(plan: &Plan, peer: Peer, scenario: Scenario, under_callgrind: bool) -> u32 {
    let mut n = plan.count_requests;
    if matches!(scenario, Scenario::Get1m | Scenario::Upload) {
        n /= 10;
    }
    if under_callgrind && peer == Peer::Envoy {
        n /= 10;
    }
    n.max(1)
}

/// Enough to open the connections and fill the proxy's pools and caches.
fn warm_up(n: u32) -> u32 {
    (n / 10).max(CONNECTIONS * 4)
}

/// The request of a workload under a policy set, as the fixed-count client sends it.
fn request_of(session: &Session<'_>, scenario: Scenario, policies: Policies) -> Vec<u8> {
    let headers = auth_headers(policies, session.jwt);
    client::request_bytes(&scenario.request(), &as_refs(&headers), false)
}

fn instructions(target: &Target<'_, '_>, rows: &mut [Counted]) -> Result<()> {
    let (session, peer, policies) = (target.session, target.peer, target.policies);
    let scenarios = target.scenarios;
    let dir = session
        .work
        .join(format!("callgrind-{}-{}", peer.name(), policies.name()));
    fs::create_dir_all(&dir)?;
    let launch = Launch {
        wrap: vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            format!("--callgrind-out-file={}/callgrind.out", dir.display()).into(),
        ],
        start_timeout: CALLGRIND_START,
    };
    eprintln!("  {} {}: under callgrind", peer.name(), policies.name());
    let mut proxy = start_peer(session, peer, Mode::Pinned, policies, None, &launch)?
        .context("no proxy to count")?;
    let pid = proxy.child().id();
    let client_cpu = placement(Mode::Pinned, peer).wrk;
    for (row, &scenario) in rows.iter_mut().zip(scenarios) {
        let n = requests_for(session.plan, peer, scenario, true);
        let bytes = request_of(session, scenario, policies);
        client::fixed_count(peer.port(), &bytes, warm_up(n), CONNECTIONS, client_cpu)?;
        callgrind_control("-z", pid)?;
        client::fixed_count(peer.port(), &bytes, n, CONNECTIONS, client_cpu)?;
        let before = dumps(&dir)?;
        callgrind_control("-d", pid)?;
        let total = wait_for_dump(&dir, &before)?;
        let tally = Tally { requests: n, total };
        eprintln!(
            "  {:<8} {:<7} {:<6} {n:>6} requests: {:>9.0} instructions/request",
            peer.name(),
            policies.name(),
            scenario.name(),
            tally.per_request()
        );
        if peer == Peer::Envoy && n < requests_for(session.plan, peer, scenario, false) {
            row.notes
                .push(format!("envoy under callgrind: {n} requests, a tenth"));
        }
        row.instructions = Some(tally);
    }
    drop(proxy);
    Ok(())
}

fn callgrind_control(flag: &str, pid: u32) -> Result<()> {
    let mut cmd = Command::new("callgrind_control");
    cmd.arg(flag).arg(pid.to_string());
    let done = proc::run_captured("callgrind_control", &mut cmd, TOOL_TIMEOUT)?;
    if !done.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            proc::show(&cmd),
            done.status,
            done.stdout,
            done.stderr
        );
    }
    Ok(())
}

/// The dump files in `dir`.
fn dumps(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect())
}

/// The total Ir of the dump that appears in `dir` beside `before`, once written whole.
fn wait_for_dump(dir: &Path, before: &[PathBuf]) -> Result<u64> {
    let deadline = Instant::now() + TOOL_TIMEOUT;
    loop {
        for path in dumps(dir)? {
            if before.contains(&path) {
                continue;
            }
            if let Some(total) = fs::read_to_string(&path)
                .ok()
                .and_then(|text| callgrind_total(&text))
            {
                return Ok(total);
            }
        }
        proc::check_interrupted()?;
        if Instant::now() > deadline {
            bail!("callgrind wrote no dump in {}", dir.display());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The total of the first event (Ir) in a callgrind dump: its `summary:` line, the run's
/// total as callgrind counted it (`totals:`, the sum of the cost lines written, when there
/// is no summary).
pub fn callgrind_total(dump: &str) -> Option<u64> {
    let line = |key: &str| {
        dump.lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    line("summary:").or_else(|| line("totals:"))
}

fn syscalls(target: &Target<'_, '_>, rows: &mut [Counted]) -> Result<()> {
    let (session, peer, policies) = (target.session, target.peer, target.policies);
    let scenarios = target.scenarios;
    let mut proxy = start_peer(
        session,
        peer,
        Mode::Pinned,
        policies,
        None,
        &Launch::plain(),
    )?
    .context("no proxy to count")?;
    let pids = cpu::group_members(proxy.child().id());
    let client_cpu = placement(Mode::Pinned, peer).wrk;
    for (row, &scenario) in rows.iter_mut().zip(scenarios) {
        let n = requests_for(session.plan, peer, scenario, false);
        let bytes = request_of(session, scenario, policies);
        client::fixed_count(peer.port(), &bytes, warm_up(n), CONNECTIONS, client_cpu)?;
        let name = format!(
            "perf-{}-{}-{}",
            peer.name(),
            policies.name(),
            scenario.name()
        );
        let text = perf_stat(session.work, &name, &pids, || {
            client::fixed_count(peer.port(), &bytes, n, CONNECTIONS, client_cpu).map(|_| ())
        })?;
        let counted = parse_perf_stat(&text, n)?;
        eprintln!(
            "  {:<8} {:<7} {:<6} {n:>6} requests: {:>6.2} syscalls/request",
            peer.name(),
            policies.name(),
            scenario.name(),
            counted.total().per_request()
        );
        row.syscalls = Some(counted);
    }
    drop(proxy);
    Ok(())
}

/// Runs `perf stat` on `pids`, counting only while `during` runs; returns perf's CSV.
fn perf_stat(
    work: &Path,
    name: &str,
    pids: &[u32],
    during: impl FnOnce() -> Result<()>,
) -> Result<String> {
    let (ctl_path, ack_path) = (
        work.join(format!("{name}.ctl")),
        work.join(format!("{name}.ack")),
    );
    for path in [&ctl_path, &ack_path] {
        let _ = fs::remove_file(path);
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: mkfifo only reads the NUL-terminated path it is given.
        if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mkfifo {}", path.display()));
        }
    }
    // Read and write on both, so that opening never blocks on perf's side.
    let open = |path: &Path| OpenOptions::new().read(true).write(true).open(path);
    let (mut ctl, ack) = (open(&ctl_path)?, open(&ack_path)?);
    let csv = work.join(format!("{name}.csv"));
    let log = log_file(work, name)?;
    let pid_list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut cmd = Command::new("perf");
    cmd.args(["stat", "-x,", "-o"])
        .arg(&csv)
        .arg("--control")
        .arg(format!(
            "fifo:{},{}",
            ctl_path.display(),
            ack_path.display()
        ))
        .args(["-D", "-1", "-e", "syscalls:sys_enter_*"]);
    if Path::new("/sys/kernel/tracing/events/io_uring/io_uring_submit_req").exists()
        || Path::new("/sys/kernel/debug/tracing/events/io_uring/io_uring_submit_req").exists()
    {
        cmd.args(["-e", IO_URING_SUBMIT]);
    }
    cmd.arg("-p")
        .arg(pid_list.join(","))
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut perf = proc::Server::spawn("perf", &mut cmd)?;
    let command = |ctl: &mut File, what: &str, perf: &mut proc::Server| -> Result<()> {
        ctl.write_all(format!("{what}\n").as_bytes())?;
        wait_ack(&ack, perf).with_context(|| {
            format!(
                "perf did not acknowledge `{what}`: {}",
                proc::log_tail(&work.join(format!("{name}.log")), 5)
            )
        })
    };
    command(&mut ctl, "enable", &mut perf)?;
    during()?;
    command(&mut ctl, "disable", &mut perf)?;
    proc::kill(perf.child().id(), libc::SIGINT);
    let deadline = Instant::now() + TOOL_TIMEOUT;
    while perf.child().try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!("perf did not stop");
        }
        thread::sleep(proc::POLL);
    }
    fs::read_to_string(&csv).with_context(|| format!("cannot read {}", csv.display()))
}

/// Waits for perf's `ack` on its acknowledgement FIFO.
fn wait_ack(mut ack: &File, perf: &mut proc::Server) -> Result<()> {
    let deadline = Instant::now() + TOOL_TIMEOUT;
    loop {
        let mut poll = libc::pollfd {
            fd: ack.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes only the one pollfd it is given.
        let ready = unsafe { libc::poll(&mut poll, 1, 100) };
        if ready > 0 {
            let mut buf = [0; 16];
            let n = ack.read(&mut buf)?;
            if buf[..n].starts_with(b"ack") {
                return Ok(());
            }
        }
        perf.check_running()?;
        proc::check_interrupted()?;
        if Instant::now() > deadline {
            bail!("no ack within {} s", TOOL_TIMEOUT.as_secs());
        }
    }
}

/// `perf stat -x,` output over `requests`: each syscall that ran with its count, most
/// frequent first, and the io_uring SQEs when that event was counted. `<not counted>` is an
/// event whose task never ran while it was on: none.
pub fn parse_perf_stat(csv: &str, requests: u32) -> Result<Syscalls> {
    let mut by_name = Vec::new();
    let mut sqes = None;
    let mut events = 0;
    for line in csv.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(count), Some(event)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        let count: u64 = match *count {
            "<not counted>" => 0,
            "<not supported>" => bail!("perf cannot count {event} here"),
            number => number
                .parse()
                .with_context(|| format!("bad count in `{line}`"))?,
        };
        events += 1;
        if let Some(name) = event.strip_prefix("syscalls:sys_enter_") {
            if count > 0 {
                by_name.push((name.to_owned(), count));
            }
        } else if *event == IO_URING_SUBMIT {
            sqes = Some(count);
        }
    }
    if events == 0 {
        bail!("no counts in perf's output");
    }
    by_name.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(Syscalls {
        requests,
        by_name,
        io_uring_sqes: sqes,
    })
}

/// The table: per (policies, peer, workload), instructions, syscalls and SQEs per request,
/// and the syscalls that make up most of them.
pub fn table(rows: &[Counted]) -> String {
    let mut out = format!(
        "{:<9} {:<8} {:<8} {:>8} {:>12} {:>8} {:>12} {:>9}  {}\n",
        "peer",
        "policies",
        "workload",
        "Ir reqs",
        "instr/req",
        "sys reqs",
        "syscalls/req",
        "SQEs/req",
        "top syscalls/req"
    );
    for row in rows {
        let (ir_reqs, ir) = match row.instructions {
            Some(t) => (t.requests.to_string(), format!("{:.0}", t.per_request())),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let (sys_reqs, sys, sqes, top) = match &row.syscalls {
            Some(s) => {
                let per = |n: u64| n as f64 / f64::from(s.requests.max(1));
                let top: Vec<String> = s
                    .by_name
                    .iter()
                    .take(4)
                    .map(|(name, n)| format!("{name} {:.2}", per(*n)))
                    .collect();
                (
                    s.requests.to_string(),
                    format!("{:.2}", s.total().per_request()),
                    s.io_uring_sqes
                        .map_or("-".to_owned(), |n| format!("{:.2}", per(n))),
                    top.join(", "),
                )
            }
            None => ("-".into(), "-".into(), "-".into(), String::new()),
        };
        let line = format!(
            "{:<9} {:<8} {:<8} {:>8} {:>12} {:>8} {:>12} {:>9}  {top}",
            row.peer, row.policies, row.scenario, ir_reqs, ir, sys_reqs, sys, sqes
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn to_json(rows: &[Counted]) -> serde_json::Value {
    json!(rows
        .iter()
        .map(|row| json!({
            "peer": row.peer,
            "policies": row.policies,
            "scenario": row.scenario,
            "instructions": row.instructions.map(|t| json!({
                "requests": t.requests,
                "total": t.total,
                "per_request": t.per_request(),
            })),
            "syscalls": row.syscalls.as_ref().map(|s| {
                let per = |n: u64| n as f64 / f64::from(s.requests.max(1));
                json!({
                    "requests": s.requests,
                    "total": s.total().total,
                    "per_request": s.total().per_request(),
                    "io_uring_sqes_per_request": s.io_uring_sqes.map(per),
                    "by_syscall_per_request": s.by_name.iter()
                        .map(|(name, n)| (name.clone(), json!(per(*n))))
                        .collect::<serde_json::Map<_, _>>(),
                })
            }),
            "notes": row.notes,
        }))
        .collect::<Vec<_>>())
}

fn save(out: &Path, plan: &Plan, rows: &[Counted]) -> Result<()> {
    let doc = json!({
        "settings": {
            "count_requests": plan.count_requests,
            "connections": CONNECTIONS,
            "note": "a tenth of the requests for 1m and upload, and a tenth again for Envoy under callgrind",
            "peers": plan.peers.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "policies": plan.policies.iter().map(|p| p.name()).collect::<Vec<_>>(),
        },
        "counts": to_json(rows),
    });
    fs::write(out, format!("{doc:#}\n")).with_context(|| format!("cannot write {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_the_first_event_of_the_totals_line() {
        let dump = include_str!("../testdata/callgrind-dump.txt");
        assert_eq!(callgrind_total(dump), Some(TOTAL_IN_DUMP));
        assert_eq!(callgrind_total("events: Ir\ntotals: 42\n"), Some(42));
        assert_eq!(callgrind_total("events: Ir\nfn=main\n"), None);
    }

    #[test]
    fn perf_stat_csv_gives_syscalls_and_sqes() {
        let counted = parse_perf_stat(include_str!("../testdata/perf-stat.csv"), 100).unwrap();
        assert_eq!(counted.by_name, PERF_TOP.map(|(n, c)| (n.to_owned(), c)));
        assert_eq!(counted.io_uring_sqes, PERF_SQES);
        assert_eq!(counted.total().per_request(), 9.99);
        assert!(parse_perf_stat("# started on Mon\n\n", 1).is_err());
        let unsupported = "<not supported>,,syscalls:sys_enter_read,0,100.00,,\n";
        assert!(parse_perf_stat(unsupported, 1).is_err());
        let idle = "<not counted>,,syscalls:sys_enter_read,0,100.00,,\n";
        let idle = parse_perf_stat(idle, 1).unwrap();
        assert!(idle.by_name.is_empty() && idle.io_uring_sqes.is_none());
    }

    #[test]
    fn requests_shrink_for_large_bodies_and_envoy_under_callgrind() {
        let plan = Plan {
            count_requests: 20_000,
            ..crate::bench::tests::parse(&[]).unwrap()
        };
        assert_eq!(
            requests_for(&plan, Peer::Nginx, Scenario::Small, true),
            20_000
        );
        assert_eq!(
            requests_for(&plan, Peer::Nginx, Scenario::Upload, true),
            2_000
        );
        assert_eq!(requests_for(&plan, Peer::Envoy, Scenario::Get1m, true), 200);
        assert_eq!(
            requests_for(&plan, Peer::Envoy, Scenario::Get1m, false),
            2_000
        );
        assert_eq!(warm_up(20_000), 2_000);
        assert_eq!(warm_up(10), 64);
    }

    #[test]
    fn the_table_and_json_divide_by_each_counts_requests() {
        let rows = [
            Counted {
                peer: "ringwall".to_owned(),
                policies: "none".to_owned(),
                scenario: "small".to_owned(),
                instructions: Some(Tally {
                    requests: 1000,
                    total: 25_000_000,
                }),
                syscalls: Some(Syscalls {
                    requests: 2000,
                    by_name: vec![("io_uring_enter".to_owned(), 1000), ("read".to_owned(), 10)],
                    io_uring_sqes: Some(8000),
                }),
                notes: Vec::new(),
            },
            Counted {
                peer: "envoy".to_owned(),
                policies: "typical".to_owned(),
                scenario: "1m".to_owned(),
                instructions: None,
                syscalls: None,
                notes: vec!["callgrind: did not start".to_owned()],
            },
        ];
        let table = table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[1].starts_with(
                "ringwall  none     small        1000        25000     2000         0.51      4.00"
            ),
            "{table}"
        );
        assert!(lines[1].ends_with("io_uring_enter 0.50, read 0.01"));
        let header = lines[0];
        let column = |line: &str, name: &str| line.find(name).map(|at| at + name.len());
        // Each figure ends where its heading does.
        assert_eq!(column(header, "syscalls/req"), column(lines[1], "0.51"));
        assert_eq!(column(header, "SQEs/req"), column(lines[1], "4.00"));
        assert!(
            lines[2].ends_with("       -            -        -            -         -"),
            "{table}"
        );
        let doc = to_json(&rows);
        assert_eq!(doc[0]["instructions"]["per_request"], 25_000.0);
        assert_eq!(doc[0]["syscalls"]["per_request"], 0.505);
        assert_eq!(doc[0]["syscalls"]["io_uring_sqes_per_request"], 4.0);
        assert_eq!(doc[0]["syscalls"]["by_syscall_per_request"]["read"], 0.005);
        assert!(doc[1]["instructions"].is_null());
        assert_eq!(doc[1]["notes"][0], "callgrind: did not start");
    }

    // What the captured files in testdata hold: callgrind 3.19 on nginx (`master_process off`)
    // dumped after 200 curl requests, and perf 6.1 on nginx's master and worker over 100 curl
    // requests (a connection each: accept4, recvfrom twice, writev, close...).
    const TOTAL_IN_DUMP: u64 = 2_372_680;
    const PERF_TOP: [(&str, u64); 7] = [
        ("epoll_wait", 299),
        ("recvfrom", 200),
        ("accept4", 100),
        ("close", 100),
        ("epoll_ctl", 100),
        ("setsockopt", 100),
        ("writev", 100),
    ];
    const PERF_SQES: Option<u64> = Some(0);
}
