//! Child processes, signals and temporary directories. A server that a task starts runs in
//! its own process group (so one signal reaches it and the workers it forks, and a Ctrl-C
//! on the terminal reaches only xtask, which decides what to stop) and is stopped when its
//! guard is dropped: an error, a panic or Ctrl-C in xtask never leaves a server behind.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// How often waits look at a child and at the signal flag.
pub const POLL: Duration = Duration::from_millis(20);

/// How long a stopped server gets to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM only set a flag: the task stops its children itself.
pub fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler) };
    }
}

/// The signal received since the last call, if any (for forwarding it once).
pub fn take_signal() -> Option<i32> {
    match SIGNAL.swap(0, Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// An error once SIGINT or SIGTERM has arrived: long waits call this to give up.
pub fn check_interrupted() -> Result<()> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => Ok(()),
        signal => bail!("interrupted by signal {signal}"),
    }
}

/// Sends `signal` to a process.
pub fn kill(pid: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        send(pid, signal);
    }
}

/// Sends `signal` to every process of the group that `leader` started.
fn kill_group(leader: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(leader) {
        send(-pid, signal);
    }
}

fn send(target: libc::pid_t, signal: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(target, signal) };
}

/// The command line, for messages.
pub fn show(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let _ = write!(line, " {}", arg.to_string_lossy());
    }
    line
}

/// Runs a build or check step with the terminal as its output; an error names the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs a command quietly and returns its output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<std::process::Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", show(cmd)))
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| fs::metadata(dir.join(program)).is_ok_and(|meta| meta.is_file()))
    })
}

// === impl Server ===

/// A child started in its own process group, stopped (group and all) when dropped.
pub struct Server {
    name: String,
    child: Child,
}

impl Server {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Server> {
        cmd.stdin(Stdio::null()).process_group(0);
        // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
        // async-signal-safe. PR_SET_PDEATHSIG stops the child if xtask itself is killed.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} (`{}`)", show(cmd)))?;
        Ok(Server {
            name: name.to_owned(),
            child,
        })
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// An error if the server has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited ({status})", self.name),
        }
    }

    /// SIGTERM to the group, SIGKILL after a grace period, then reap.
    pub fn stop(&mut self) {
        // The group is signalled even when its leader has exited: an nginx worker may remain.
        let leader = self.child.id();
        kill_group(leader, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            thread::sleep(POLL);
        }
        kill_group(leader, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Captured {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command to completion in its own group, capturing its output; gives up (and kills
/// it) after `timeout` or on SIGINT/SIGTERM.
pub fn run_captured(name: &str, cmd: &mut Command, timeout: Duration) -> Result<Captured> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut server = Server::spawn(name, cmd)?;
    let stdout = read_in_background(server.child().stdout.take());
    let stderr = read_in_background(server.child().stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = server.child().try_wait()? {
            break status;
        }
        check_interrupted()?;
        if Instant::now() > deadline {
            bail!("{name} did not finish within {} s", timeout.as_secs());
        }
        thread::sleep(POLL);
    };
    Ok(Captured {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// The last `lines` lines of a log file, for error messages about a server that failed.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// === impl TempDir ===

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let done = run_captured("sh", &mut cmd, Duration::from_secs(10)).unwrap();
        assert_eq!(done.stdout, "out\n");
        assert_eq!(done.stderr, "err\n");
        assert_eq!(done.status.code(), Some(3));
    }

    #[test]
    fn gives_up_after_the_timeout() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = Instant::now();
        let err = run_captured("sleep", &mut cmd, Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn temp_dir_is_removed_on_drop() {
        let dir = TempDir::new("xtask-test").unwrap();
        let path = dir.path().to_owned();
        fs::write(path.join("f"), "x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }
}
