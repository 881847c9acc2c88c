//! Running the real `ringwall` binary.
//!
//! [`Gateway::start`] writes a config directory, starts `ringwall run` on it and waits for the
//! `ready` line of the stdout contract (docs/CONTRACTS.md), remembering which address every
//! ApiInstance got. Both output pipes are drained by threads so the gateway never blocks on a
//! full pipe, and stderr is kept for failure messages.

// The workspace bans std's Mutex to keep locks off the proxy's hot path; this is test code.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long `ringwall run` may take to print `ready`.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// The binary under test: `$RINGWALL_BIN`, else `target/debug/ringwall` of this workspace
/// (or of `$CARGO_TARGET_DIR`).
pub fn ringwall_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("RINGWALL_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "RINGWALL_BIN={} does not exist; build it first: cargo build -p ringwall, or run cargo xtask test",
            bin.display()
        );
        return bin;
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ sits inside the workspace")
            .join("target"),
    };
    let bin = target.join("debug").join("ringwall");
    assert!(
        bin.is_file(),
        "{} does not exist; build it first: cargo build -p ringwall, or run cargo xtask test \
         (or point RINGWALL_BIN at a ringwall binary)",
        bin.display()
    );
    bin
}

/// Writes `files` (name, YAML text) into a fresh temporary directory.
pub fn config_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ringwall-test-")
        .tempdir()
        .expect("create a temporary config directory");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
    dir
}

/// A `ringwall` command with the child killed if the test process dies first.
fn command(args: &[&str]) -> Command {
    command_in(args, None)
}

/// `ringwall ARGS`, run inside the network namespace `netns` when given.
fn command_in(args: &[&str], netns: Option<std::fs::File>) -> Command {
    let mut cmd = Command::new(ringwall_bin());
    cmd.args(args)
        .env("RUST_BACKTRACE", "1")
        // The configuration sets the log level; an inherited RUST_LOG would override it.
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            // A test that times out leaves its Gateway undropped; this reaps the process when
            // the test binary exits.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // setns is a single syscall: safe between fork and exec.
            if let Some(ns) = &netns {
                if libc::setns(std::os::fd::AsRawFd::as_raw_fd(ns), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

/// Collects a pipe into a shared buffer on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&chunk[..n]);
        }
    });
    (buf, handle)
}

/// Runs `ringwall ARGS` to completion (at most `timeout`), returning its output.
pub fn run_cli(args: &[&str], timeout: Duration) -> Output {
    let mut child = command(args)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn ringwall {args:?}: {e}"));
    let (out, out_thread) = drain(child.stdout.take().expect("stdout piped"));
    let (err, err_thread) = drain(child.stderr.take().expect("stderr piped"));
    let status = wait_deadline(&mut child, timeout);
    let status = match status {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = err_thread.join();
            panic!(
                "ringwall {args:?} did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&err.lock().unwrap_or_else(|p| p.into_inner()))
            );
        }
    };
    let _ = out_thread.join();
    let _ = err_thread.join();
    let stdout = std::mem::take(&mut *out.lock().unwrap_or_else(|p| p.into_inner()));
    let stderr = std::mem::take(&mut *err.lock().unwrap_or_else(|p| p.into_inner()));
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Polls `child` until it exits or `timeout` passes.
fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A running `ringwall run`. Dropping it kills the process.
pub struct Gateway {
    child: Child,
    _dir: TempDir,
    listeners: HashMap<String, SocketAddr>,
    listening: Vec<String>,
    admin: Option<SocketAddr>,
    workers: usize,
    /// Stdout lines after `ready`, as they come.
    lines: Option<mpsc::Receiver<String>>,
    /// The `connection-rules ...` line.
    connection_rules: String,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl Gateway {
    /// Writes `files` into a fresh directory and runs `ringwall run --config DIR --workers 2`
    /// plus `extra_args` (a `--workers` there replaces the default), until it is ready.
    pub fn start(files: &[(&str, &str)], extra_args: &[&str]) -> Gateway {
        Self::start_in(None, files, extra_args)
    }

    /// As [`Gateway::start`], with the gateway inside network namespace `netns` (a name
    /// under /run/netns).
    pub fn start_in(netns: Option<&str>, files: &[(&str, &str)], extra_args: &[&str]) -> Gateway {
        let dir = config_dir(files);
        let dir_arg = dir.path().to_str().expect("utf-8 temp path").to_string();
        let mut args = vec!["run", "--config", dir_arg.as_str()];
        if !extra_args.contains(&"--workers") {
            args.extend(["--workers", "2"]);
        }
        // The default admin port is fixed; parallel tests each take one of their own.
        if !extra_args.contains(&"--admin") && !extra_args.contains(&"--no-admin") {
            args.extend(["--admin", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra_args);
        let ns = netns.map(crate::netns::NetLab::ns_file);
        let mut child = command_in(&args, ns)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ringwall {args:?}: {e}"));
        let (stderr, stderr_thread) = drain(child.stderr.take().expect("stderr piped"));
        let stdout = child.stdout.take().expect("stdout piped");
        let (lines_tx, lines) = mpsc::channel();
        thread::spawn(move || {
            // Keeps reading after `ready`, so the gateway never blocks on stdout.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = lines_tx.send(line);
            }
        });
        let mut gw = Gateway {
            child,
            _dir: dir,
            listeners: HashMap::new(),
            listening: Vec::new(),
            admin: None,
            workers: 0,
            stderr,
            stderr_thread: Some(stderr_thread),
            exit: None,
            lines: None,
            connection_rules: String::new(),
        };
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => gw.fail_start(
                    &format!("no `ready` line within {STARTUP_DEADLINE:?}"),
                    &seen,
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    gw.fail_start("stdout closed before `ready`", &seen)
                }
            };
            seen.push(line.clone());
            let mut words = line.split_whitespace();
            match words.next() {
                Some("listening") => {
                    let addr: SocketAddr = match words.next().and_then(|a| a.parse().ok()) {
                        Some(addr) => addr,
                        None => gw.fail_start("unparsable `listening` line", &seen),
                    };
                    for name in words.next().unwrap_or("").split(',') {
                        if !name.is_empty() {
                            gw.listeners.insert(name.to_string(), addr);
                        }
                    }
                    gw.listening.push(line);
                }
                Some("connection-rules") => gw.connection_rules = line.clone(),
                Some("admin") => match words.next().and_then(|a| a.parse().ok()) {
                    Some(addr) => gw.admin = Some(addr),
                    None => gw.fail_start("unparsable `admin` line", &seen),
                },
                Some("ready") => {
                    let workers = words
                        .next()
                        .and_then(|w| w.strip_prefix("workers="))
                        .and_then(|n| n.parse().ok());
                    match workers {
                        Some(n) => gw.workers = n,
                        None => gw.fail_start("unparsable `ready` line", &seen),
                    }
                    gw.lines = Some(lines);
                    return gw;
                }
                _ => {}
            }
        }
    }

    fn fail_start(&mut self, why: &str, stdout: &[String]) -> ! {
        let _ = self.child.kill();
        let status = self.child.wait();
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        panic!(
            "ringwall run failed to start: {why}\nexit: {status:?}\nstdout:\n{}\nstderr:\n{}",
            stdout.join("\n"),
            self.stderr()
        );
    }

    /// The address of ApiInstance `api`, from its `listening` line.
    pub fn addr(&self, api: &str) -> SocketAddr {
        match self.listeners.get(api) {
            Some(addr) => *addr,
            None => panic!(
                "no `listening` line names {api:?}; got {:?}",
                self.listening
            ),
        }
    }

    /// Where connection rules are enforced, from the `connection-rules` line: `xdp ...`,
    /// `accept` or `none`.
    pub fn connection_rules(&self) -> &str {
        self.connection_rules
            .strip_prefix("connection-rules ")
            .unwrap_or("")
    }

    /// The admin listener's address, from its `admin` line (start with `--admin`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .expect("no `admin` line: start the gateway with --admin 127.0.0.1:0")
    }

    /// The `listening` lines, as printed.
    pub fn listening_lines(&self) -> &[String] {
        &self.listening
    }

    /// N of `ready workers=N`.
    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the gateway.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped child,
        // so it cannot name another process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Asks for a reload (SIGHUP) after replacing the config file `name` with `text`
    /// (`None` removes it), and returns the gateway's verdict line (`reloaded ...` or
    /// `reload-failed ...`). Start the gateway with `--no-watch` so that the file change
    /// itself does not trigger a second reload.
    pub fn reload_with(&mut self, name: &str, text: Option<&str>) -> String {
        match text {
            Some(text) => self.replace_file(name, text),
            None => {
                let path = self.config_path(name);
                std::fs::remove_file(&path)
                    .unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
            }
        }
        self.signal(libc::SIGHUP);
        self.wait_line(
            |l| l.starts_with("reloaded ") || l.starts_with("reload-failed "),
            Duration::from_secs(10),
        )
    }

    /// Replaces the config file `name` atomically (a scratch file renamed over it), so the
    /// gateway never reads it half-written.
    pub fn replace_file(&self, name: &str, text: &str) {
        let scratch = self._dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&scratch, text).expect("write the scratch file");
        std::fs::rename(&scratch, self.config_path(name)).expect("rename over the config file");
    }

    /// Where the config file `name` lives.
    pub fn config_path(&self, name: &str) -> std::path::PathBuf {
        self._dir.path().join(name)
    }

    /// Saves the config file `name` as editors do (write a temporary file, rename it over
    /// the old one), without a signal, and returns the gateway's verdict line.
    pub fn save(&mut self, name: &str, text: &str) -> String {
        self.replace_file(name, text);
        self.wait_line(
            |l| l.starts_with("reloaded ") || l.starts_with("reload-failed "),
            Duration::from_secs(10),
        )
    }

    /// Waits until stderr contains `text` (its reader thread may lag stdout); panics
    /// after `timeout`.
    pub fn wait_stderr(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let stderr = self.stderr();
            if stderr.contains(text) {
                return stderr;
            }
            assert!(
                Instant::now() < deadline,
                "stderr never showed {text:?}:\n{stderr}"
            );
            // Poll interval only: what is awaited is the text itself.
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The next stdout line that `want` accepts, skipping others; panics after `timeout`.
    pub fn wait_line(&mut self, want: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let lines = self.lines.as_ref().expect("stdout lines");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!(
                    "no matching stdout line within {timeout:?}: {e}\nstderr:\n{}",
                    self.stderr()
                ),
            }
        }
    }

    /// The admin listener's `/metrics` text.
    pub fn metrics(&self) -> String {
        crate::Client::connect(self.admin_addr())
            .get("/metrics")
            .text()
    }

    /// Scrapes until `want` accepts the value of series `name` with exactly `labels` (0 while
    /// absent: counters appear on their first increment), or 5 s pass; returns the last value
    /// seen. Handshakes and exchanges are counted just after the client saw them end, so a
    /// single scrape could come too early.
    pub fn metric_until(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let value = metric(&self.metrics(), name, labels).unwrap_or(0.0);
            if want(value) || Instant::now() > deadline {
                return value;
            }
            // Poll interval only: what is awaited is the counter itself.
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the gateway to exit; panics with its stderr if it is still running after
    /// `timeout` (and kills it).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        match wait_deadline(&mut self.child, timeout) {
            Some(status) => {
                self.exit = Some(status);
                status
            }
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "ringwall did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of series `name` whose labels are exactly `labels` (in any order) in the
/// Prometheus text `metrics`.
pub fn metric(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (found, value) = match rest.strip_prefix('{') {
            Some(inner) => {
                let (labels, value) = inner.split_once("} ")?;
                (parse_labels(labels)?, value)
            }
            None => (Vec::new(), rest.strip_prefix(' ')?),
        };
        let same = found.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v));
        same.then(|| value.trim().parse().ok()).flatten()
    })
}

/// `k="v",k2="v2"` as pairs, unescaping `\\`, `\"` and `\n`.
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        pairs.push((key.trim_start_matches(',').to_string(), value));
        rest = &after[end + 1..];
    }
    Some(pairs)
}
