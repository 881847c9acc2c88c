//! The access log: one JSON object per exchange, one per line, written to the outputs that
//! `Configuration.spec.logging.accessLogs` names (files and stdout).
//!
//! Each worker has its own `AccessLog`. Recording a line only formats it into an in-memory
//! buffer; a task on the same worker writes the buffer out through io_uring once it holds
//! 64 KiB or its oldest line is 200 ms old, so no request ever waits for a disk or a pipe.
//! Two buffers take turns (one filling, one being written), so once both have grown to the
//! usual flush size a line costs no allocation. If an output cannot keep up, the filling
//! buffer stops at 8 MiB: further lines are dropped and counted, and once writing catches
//! up one `{"time":…,"dropped":N}` line says how many were lost.
//!
//! Every worker opens each file itself with `O_APPEND`. Each write is a whole number of lines,
//! and on Linux's local filesystems an `O_APPEND` write is done under the inode lock, so lines
//! from different workers never interleave (POSIX does not promise this; NFS does not keep it).
//! Stdout may be a pipe or a socket shared with the other workers and the main thread, where
//! only writes of up to `PIPE_BUF` bytes are atomic: stdout gets writes of whole lines cut to
//! at most 4096 bytes, and a longer line is written alone (and could interleave). Stdout
//! redirected to a file wants `>>`: with `>` every writer shares one file position.

use std::cell::{Cell, RefCell};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringwall_config::{LogOutputKind, Logging};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::fs::File;

/// A buffer this full is written out at once.
const FLUSH_AT: usize = 64 * 1024;
/// The longest a line waits in the buffer when traffic is light.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Past this many unwritten bytes, lines are dropped instead of buffered.
const MAX_PENDING: usize = 8 * 1024 * 1024;
/// A buffer that grew past this while an output was slow is shrunk back after its write.
const SHRINK_ABOVE: usize = 1024 * 1024;
/// io_uring's "at the file's current position" offset (-1): appends on an `O_APPEND` file,
/// and is the only offset a pipe or a socket accepts.
const CURRENT_POSITION: u64 = u64::MAX;
/// How long a write on a non-blocking stdout that is full waits before it tries again.
const RETRY_FULL: Duration = Duration::from_millis(10);

// === Entry: one exchange as one JSON line ===

/// What the access log says about one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// When the request started to arrive.
    pub time: SystemTime,
    pub client: SocketAddr,
    /// Empty when the request head could not be parsed.
    pub method: &'a str,
    /// The path and query as the client sent them; empty when the head could not be parsed.
    pub path: &'a str,
    /// The status sent to the client.
    pub status: u16,
    /// Bytes read from the client for this exchange: head and body.
    pub bytes_in: u64,
    /// Bytes written to the client for this exchange: head and body.
    pub bytes_out: u64,
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    /// The ApiInstance's name; `None` when the request matched none.
    pub api: Option<&'a str>,
    /// The route's name; `None` when the request matched none.
    pub route: Option<&'a str>,
    /// The policy that answered instead of the upstream, if one did.
    pub rejected_by: Option<&'a str>,
    /// The client's TLS session: logged as `tls_version`, `tls_sni` and
    /// `tls_client_subject`, fields a plain connection's lines leave out.
    pub tls: Option<&'a crate::tls::Session>,
}

/// Appends `entry` to `out` as one JSON object and a newline. Allocates only if `out` has
/// to grow.
pub fn format_line(entry: &Entry, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    push_time(out, entry.time);
    out.extend_from_slice(b"\",\"client\":\"");
    push_addr(out, entry.client);
    out.extend_from_slice(b"\",\"method\":");
    push_str(out, entry.method);
    out.extend_from_slice(b",\"path\":");
    push_str(out, entry.path);
    out.extend_from_slice(b",\"status\":");
    push_u64(out, entry.status.into(), 1);
    out.extend_from_slice(b",\"bytes_in\":");
    push_u64(out, entry.bytes_in, 1);
    out.extend_from_slice(b",\"bytes_out\":");
    push_u64(out, entry.bytes_out, 1);
    out.extend_from_slice(b",\"duration_ms\":");
    let micros = u64::try_from(entry.duration.as_micros()).unwrap_or(u64::MAX);
    push_u64(out, micros / 1000, 1);
    out.push(b'.');
    push_u64(out, micros % 1000, 3);
    out.extend_from_slice(b",\"upstream\":");
    match entry.upstream {
        Some(addr) => {
            out.push(b'"');
            push_addr(out, addr);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"api\":");
    push_opt_str(out, entry.api);
    out.extend_from_slice(b",\"route\":");
    push_opt_str(out, entry.route);
    out.extend_from_slice(b",\"rejected_by\":");
    push_opt_str(out, entry.rejected_by);
    if let Some(tls) = entry.tls {
        out.extend_from_slice(b",\"tls_version\":");
        push_str(out, tls.version);
        out.extend_from_slice(b",\"tls_sni\":");
        push_opt_str(out, tls.sni.as_deref());
        out.extend_from_slice(b",\"tls_client_subject\":");
        push_opt_str(out, tls.client_subject.as_deref());
    }
    out.extend_from_slice(b"}\n");
}

/// The line written in place of the lines that were dropped.
fn format_dropped(time: SystemTime, dropped: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    push_time(out, time);
    out.extend_from_slice(b"\",\"dropped\":");
    push_u64(out, dropped, 1);
    out.extend_from_slice(b"}\n");
}

/// RFC 3339 in UTC with milliseconds: `2023-11-14T22:13:20.123Z`. A clock before 1970
/// reads as 1970.
fn push_time(out: &mut Vec<u8>, time: SystemTime) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    push_u64(out, year, 4);
    out.push(b'-');
    push_u64(out, month, 2);
    out.push(b'-');
    push_u64(out, day, 2);
    out.push(b'T');
    push_u64(out, of_day / 3600, 2);
    out.push(b':');
    push_u64(out, of_day % 3600 / 60, 2);
    out.push(b':');
    push_u64(out, of_day % 60, 2);
    out.push(b'.');
    push_u64(out, since_epoch.subsec_millis().into(), 3);
    out.push(b'Z');
}

/// (year, month, day) of a count of days since 1970-01-01, by Howard Hinnant's
/// `civil_from_days` restricted to dates from 1970 on.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Counted from 0000-03-01, so that the leap day ends each 400-year era's years.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// `n` in decimal, zero-padded to at least `width` digits (at most 20).
fn push_u64(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    while n > 0 {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    start = start.min(digits.len().saturating_sub(width.max(1)));
    out.extend_from_slice(&digits[start..]);
}

fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    // Writing into a Vec cannot fail; an address needs no JSON escaping.
    let _ = write!(out, "{addr}");
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// `s` as a JSON string. Control characters (and DEL, which terminals act on) are escaped;
/// everything else, UTF-8 included, is copied as it is.
fn push_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        if short.is_empty() {
            let hex = [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]];
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&hex);
        } else {
            out.extend_from_slice(short);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

// === AccessLog: the per-worker buffer and its flush task ===

/// One worker's access log. Dropping it writes out what is buffered, in the background.
pub struct AccessLog {
    shared: Rc<Shared>,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    flush_at: usize,
    flush_every: Duration,
    max_pending: usize,
}

const LIMITS: Limits = Limits {
    flush_at: FLUSH_AT,
    flush_every: FLUSH_EVERY,
    max_pending: MAX_PENDING,
};

/// What `AccessLog` and its flush task share.
struct Shared {
    limits: Limits,
    /// What each output is, in the order of `outputs`.
    kinds: Vec<LogOutputKind>,
    /// Lines recorded since the last flush began.
    pending: RefCell<Vec<u8>>,
    /// The other buffer, empty: it becomes `pending` when the next flush begins.
    spare: RefCell<Vec<u8>>,
    /// `None` while a flush or a reopen holds them (see `Lease`).
    outputs: RefCell<Option<Vec<Output>>>,
    outputs_back: Notify,
    /// The flush task has something to do: the first line, a full buffer, or closing.
    wake: Notify,
    dropped: Cell<u64>,
    /// Dropped lines not yet reported in the log itself.
    unreported: Cell<u64>,
    closed: Cell<bool>,
}

impl AccessLog {
    /// Opens the outputs `logging.access` names: `None` if it names none. A file's
    /// directory is created if missing. An output named twice, or two outputs for the
    /// same file, are written once.
    ///
    /// Call it on the worker's thread inside its runtime: it spawns the flush task there
    /// (and panics outside a tokio-uring runtime). It opens the files with blocking calls,
    /// as a worker does once at start.
    pub fn from_config(logging: &Logging) -> io::Result<Option<AccessLog>> {
        AccessLog::with_limits(logging, LIMITS)
    }

    fn with_limits(logging: &Logging, limits: Limits) -> io::Result<Option<AccessLog>> {
        let mut kinds: Vec<LogOutputKind> = Vec::new();
        let mut outputs = Vec::new();
        for name in &logging.access.outputs {
            let Some(output) = logging.outputs.iter().find(|o| &o.name == name) else {
                let message = format!("access log output `{name}` is not defined");
                return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
            };
            if kinds.contains(&output.kind) {
                continue;
            }
            outputs.push(Output::open(&output.name, &output.kind)?);
            kinds.push(output.kind.clone());
        }
        if outputs.is_empty() {
            return Ok(None);
        }
        Ok(Some(AccessLog::start(kinds, outputs, limits)))
    }

    fn start(kinds: Vec<LogOutputKind>, outputs: Vec<Output>, limits: Limits) -> AccessLog {
        let capacity = limits.flush_at * 2;
        let shared = Rc::new(Shared {
            limits,
            kinds,
            pending: RefCell::new(Vec::with_capacity(capacity)),
            spare: RefCell::new(Vec::with_capacity(capacity)),
            outputs: RefCell::new(Some(outputs)),
            outputs_back: Notify::new(),
            wake: Notify::new(),
            dropped: Cell::new(0),
            unreported: Cell::new(0),
            closed: Cell::new(false),
        });
        tokio_uring::spawn(flush_task(shared.clone()));
        AccessLog { shared }
    }

    /// Buffers one line. Never waits and never does IO: when the outputs are more than
    /// 8 MiB behind, the line is dropped and counted instead.
    pub fn record(&self, entry: &Entry) {
        let s = &*self.shared;
        let mut pending = s.pending.borrow_mut();
        let before = pending.len();
        if before >= s.limits.max_pending {
            s.dropped.set(s.dropped.get() + 1);
            s.unreported.set(s.unreported.get() + 1);
            return;
        }
        format_line(entry, &mut pending);
        let crossed = before < s.limits.flush_at && pending.len() >= s.limits.flush_at;
        if before == 0 || crossed {
            s.wake.notify_one();
        }
    }

    /// Lines dropped since start because the outputs could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.get()
    }

    /// Writes out every line recorded so far, after any write already under way. For
    /// shutdown: bound it with a timeout, as a stalled stdout pipe never completes a write.
    pub async fn flush_now(&self) {
        self.shared.flush().await;
    }

    /// Reopens the files by their paths, for log rotation: lines written from now on go to
    /// the file now at each path (created if it was moved away). Stdout is kept as it is. A
    /// file that cannot be reopened keeps its old descriptor; the first such error is
    /// returned.
    pub async fn reopen(&self) -> io::Result<()> {
        let mut error = None;
        let mut fresh = Vec::new();
        for (index, kind) in self.shared.kinds.iter().enumerate() {
            let LogOutputKind::File(path) = kind else {
                continue;
            };
            match open_append(path).await {
                Ok(file) => fresh.push((index, file)),
                Err(e) => {
                    error.get_or_insert(with_path(e, path));
                }
            }
        }
        // Opened before the outputs are taken, so that writing waits only for the swap.
        let mut lease = self.shared.lease().await;
        for (index, file) in fresh {
            if let Some(output) = lease.outputs.get_mut(index) {
                output.file = file;
            }
        }
        error.map_or(Ok(()), Err)
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.closed.set(true);
        self.shared.wake.notify_one();
    }
}

/// Writes the buffer out once it is full, or `flush_every` after its first line; ends
/// once the `AccessLog` is dropped and everything is written.
async fn flush_task(shared: Rc<Shared>) {
    loop {
        if shared.pending.borrow().is_empty() {
            if shared.closed.get() {
                return;
            }
            shared.wake.notified().await;
            continue;
        }
        let deadline = Instant::now() + shared.limits.flush_every;
        while shared.pending.borrow().len() < shared.limits.flush_at && !shared.closed.get() {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                () = shared.wake.notified() => {}
            }
        }
        shared.flush().await;
    }
}

impl Shared {
    /// Swaps the buffers and writes the full one to every output, one after the other.
    async fn flush(&self) {
        let mut lease = self.lease().await;
        let mut buf = self.spare.take();
        std::mem::swap(&mut buf, &mut *self.pending.borrow_mut());
        // Lines are dropped only while `pending` is full, so they all came after the lines
        // in `buf`: the note goes at its end.
        let unreported = self.unreported.replace(0);
        if unreported > 0 {
            format_dropped(SystemTime::now(), unreported, &mut buf);
        }
        if !buf.is_empty() {
            for output in &mut lease.outputs {
                buf = output.write(buf).await;
            }
        }
        buf.clear();
        if buf.capacity() > SHRINK_ABOVE {
            buf.shrink_to(self.limits.flush_at * 2);
        }
        *self.spare.borrow_mut() = buf;
    }

    /// Takes the outputs, waiting while a flush or a reopen has them.
    async fn lease(&self) -> Lease<'_> {
        loop {
            if let Some(outputs) = self.outputs.borrow_mut().take() {
                return Lease {
                    shared: self,
                    outputs,
                };
            }
            self.outputs_back.notified().await;
        }
    }
}

/// The outputs, held by one flush or reopen at a time so that each file has one write in
/// flight and lines keep their order. Given back when dropped, even if the holder's future
/// is dropped mid-write.
struct Lease<'a> {
    shared: &'a Shared,
    outputs: Vec<Output>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let outputs = std::mem::take(&mut self.outputs);
        *self.shared.outputs.borrow_mut() = Some(outputs);
        self.shared.outputs_back.notify_waiters();
    }
}

// === Output: one file or stdout ===

struct Output {
    name: String,
    file: File,
    /// Largest write: `PIPE_BUF` where only that much is atomic, else unbounded.
    max_write: usize,
    /// The last write failed; logged once until a write succeeds again.
    failing: bool,
}

impl Output {
    fn open(name: &str, kind: &LogOutputKind) -> io::Result<Output> {
        let (file, max_write) = match kind {
            LogOutputKind::Stdout => {
                // A descriptor of our own, so that dropping the output never closes fd 1.
                let fd = io::stdout().as_fd().try_clone_to_owned()?;
                (std::fs::File::from(fd), libc::PIPE_BUF)
            }
            LogOutputKind::File(path) => {
                let open = || {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir)?;
                    }
                    std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(path)
                };
                let file = open().map_err(|e| {
                    let kind = e.kind();
                    let message = format!("access log output `{name}`: {}", with_path(e, path));
                    io::Error::new(kind, message)
                })?;
                (file, usize::MAX)
            }
        };
        Ok(Output {
            name: name.to_owned(),
            file: File::from_std(file),
            max_write,
            failing: false,
        })
    }

    /// Writes all of `buf`, in pieces of whole lines no larger than `max_write`. On an
    /// error the rest is lost for this output (and the error logged once).
    async fn write(&mut self, mut buf: Vec<u8>) -> Vec<u8> {
        let len = buf.len();
        let mut start = 0;
        while start < len {
            let end = chunk_end(&buf, start, self.max_write);
            let (result, back) = write_range(&self.file, buf, start, end).await;
            buf = back;
            if let Err(e) = result {
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(output = %self.name, error = %e,
                        "access log output failing: its lines are lost until it recovers");
                }
                return buf;
            }
            start = end;
        }
        if self.failing {
            self.failing = false;
            tracing::info!(output = %self.name, "access log output writing again");
        }
        buf
    }
}

/// Where the piece of `buf` that starts at `start` ends: after the last newline within
/// `max` bytes, or after the first newline if one line alone is longer.
fn chunk_end(buf: &[u8], start: usize, max: usize) -> usize {
    let rest = &buf[start..];
    if rest.len() <= max {
        return buf.len();
    }
    let line_end = |bytes: &[u8]| bytes.iter().position(|&b| b == b'\n');
    let within = rest[..max].iter().rposition(|&b| b == b'\n');
    let cut = within
        .or_else(|| line_end(rest))
        .map_or(rest.len(), |i| i + 1);
    start + cut
}

/// Writes `buf[start..end]`, continuing after short writes.
async fn write_range(
    file: &File,
    mut buf: Vec<u8>,
    mut start: usize,
    end: usize,
) -> (io::Result<()>, Vec<u8>) {
    while start < end {
        let (result, slice) = file
            .write_at(buf.slice(start..end), CURRENT_POSITION)
            .submit()
            .await;
        buf = slice.into_inner();
        match result {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
            Ok(n) => start += n,
            // A stdout some other process made non-blocking, and full: wait for it as a
            // blocking one would be waited for.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::sleep(RETRY_FULL).await;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

/// Opens `path` for appending through the ring, creating it (and its directory) if missing.
async fn open_append(path: &Path) -> io::Result<File> {
    let mut options = tokio_uring::fs::OpenOptions::new();
    options.append(true).create(true);
    match options.open(path).await {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio_uring::fs::create_dir_all(dir).await?;
            }
            options.open(path).await
        }
        result => result,
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::os::fd::OwnedFd;
    use std::path::PathBuf;

    use ringwall_config::LogOutput;

    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 7), 51_234)),
            method: "GET",
            path: "/api/items?x=1",
            status: 200,
            bytes_in: 87,
            bytes_out: 1_024,
            duration: Duration::from_micros(12_345),
            upstream: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9000))),
            api: Some("orders"),
            route: Some("orders-route"),
            rejected_by: None,
            tls: None,
        }
    }

    fn line(entry: &Entry) -> String {
        let mut out = Vec::new();
        format_line(entry, &mut out);
        String::from_utf8(out).expect("the formatter writes UTF-8")
    }

    fn json_str(s: &str) -> String {
        let mut out = Vec::new();
        push_str(&mut out, s);
        String::from_utf8(out).expect("the escaper writes UTF-8")
    }

    fn time(t: SystemTime) -> String {
        let mut out = Vec::new();
        push_time(&mut out, t);
        String::from_utf8(out).expect("times are ASCII")
    }

    /// A fresh directory path (not created) for one test.
    fn scratch(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ringwall-access-log-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn logging(outputs: &[(&str, LogOutputKind)], access: &[&str]) -> Logging {
        let mut logging = Logging::default();
        for (name, kind) in outputs {
            logging.outputs.push(LogOutput {
                name: (*name).to_owned(),
                kind: kind.clone(),
            });
        }
        logging.access.outputs = access.iter().map(|&n| n.to_owned()).collect();
        logging
    }

    fn file_log(path: &Path, limits: Limits) -> AccessLog {
        let config = logging(&[("file", LogOutputKind::File(path.to_owned()))], &["file"]);
        AccessLog::with_limits(&config, limits)
            .expect("the file opens")
            .expect("an output is configured")
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Polls `done` until it holds, for the tests that watch the flush task work alone.
    async fn eventually(mut done: impl FnMut() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < give_up, "condition never held");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    const SLOW: Limits = Limits {
        flush_at: FLUSH_AT,
        flush_every: Duration::from_secs(3600),
        max_pending: MAX_PENDING,
    };

    #[test]
    fn a_line_is_one_json_object() {
        assert_eq!(
            line(&entry()),
            "{\"time\":\"2023-11-14T22:13:20.123Z\",\"client\":\"10.0.0.7:51234\",\
             \"method\":\"GET\",\"path\":\"/api/items?x=1\",\"status\":200,\"bytes_in\":87,\
             \"bytes_out\":1024,\"duration_ms\":12.345,\"upstream\":\"127.0.0.1:9000\",\
             \"api\":\"orders\",\"route\":\"orders-route\",\"rejected_by\":null}\n"
        );
    }

    #[test]
    fn absent_values_are_null() {
        let refused = Entry {
            client: SocketAddr::from((Ipv6Addr::LOCALHOST, 8080)),
            method: "",
            path: "",
            status: 400,
            upstream: None,
            api: None,
            route: None,
            rejected_by: Some("ip-allowlist"),
            ..entry()
        };
        let text = line(&refused);
        assert!(text.contains("\"client\":\"[::1]:8080\",\"method\":\"\",\"path\":\"\","));
        assert!(text.ends_with(
            "\"upstream\":null,\"api\":null,\"route\":null,\"rejected_by\":\"ip-allowlist\"}\n"
        ));
    }

    #[test]
    fn tls_connections_add_their_session() {
        let session = crate::tls::Session {
            version: "1.3",
            sni: Some("api.example.com".into()),
            client_subject: Some("CN=client \"7\", O=Example".into()),
        };
        let text = line(&Entry {
            tls: Some(&session),
            ..entry()
        });
        assert!(
            text.ends_with(
                "\"rejected_by\":null,\"tls_version\":\"1.3\",\"tls_sni\":\"api.example.com\",\
                 \"tls_client_subject\":\"CN=client \\\"7\\\", O=Example\"}\n"
            ),
            "{text}"
        );
        let anonymous = crate::tls::Session {
            version: "1.2",
            ..Default::default()
        };
        let text = line(&Entry {
            tls: Some(&anonymous),
            ..entry()
        });
        assert!(text
            .ends_with("\"tls_version\":\"1.2\",\"tls_sni\":null,\"tls_client_subject\":null}\n"));
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(json_str("plain/path?a=1"), "\"plain/path?a=1\"");
        assert_eq!(json_str("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(json_str("\n\r\t"), r#""\n\r\t""#);
        assert_eq!(json_str("\u{0}\u{1f}\u{7f}x"), r#""\u0000\u001f\u007fx""#);
        assert_eq!(json_str("/caf\u{e9}/%22"), "\"/caf\u{e9}/%22\"");
        assert_eq!(json_str(""), "\"\"");
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let at = |secs: u64, millis: u64| {
            time(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.001Z");
        assert_eq!(at(1_078_012_800, 0), "2004-02-29T00:00:00.000Z");
        assert_eq!(at(1_700_000_000, 123), "2023-11-14T22:13:20.123Z");
        assert_eq!(at(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
        // 2100 is no leap year: March follows February 28th.
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000Z");
        // Sub-millisecond digits are cut, not rounded.
        let t = UNIX_EPOCH + Duration::from_nanos(1_999_999);
        assert_eq!(time(t), "1970-01-01T00:00:00.001Z");
        let before_epoch = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(time(before_epoch), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn durations_have_three_decimals() {
        let ms = |duration: Duration| {
            let text = line(&Entry {
                duration,
                ..entry()
            });
            let from = text.find("\"duration_ms\":").expect("the key is there") + 14;
            let to = from + text[from..].find(',').expect("a field follows");
            text[from..to].to_owned()
        };
        assert_eq!(ms(Duration::ZERO), "0.000");
        assert_eq!(ms(Duration::from_nanos(999)), "0.000");
        assert_eq!(ms(Duration::from_micros(7)), "0.007");
        assert_eq!(ms(Duration::from_micros(1_234_567)), "1234.567");
        assert_eq!(ms(Duration::from_secs(30)), "30000.000");
    }

    #[test]
    fn numbers_are_padded_only_when_asked() {
        let digits = |n: u64, width: usize| {
            let mut out = Vec::new();
            push_u64(&mut out, n, width);
            String::from_utf8(out).expect("digits are ASCII")
        };
        assert_eq!(digits(0, 1), "0");
        assert_eq!(digits(0, 3), "000");
        assert_eq!(digits(42, 4), "0042");
        assert_eq!(digits(12_345, 2), "12345");
        assert_eq!(digits(u64::MAX, 1), u64::MAX.to_string());
    }

    #[test]
    fn pieces_are_whole_lines_of_at_most_max_bytes() {
        let buf = b"aaa\nbbb\ncccccccccc\nd\n";
        assert_eq!(chunk_end(buf, 0, 100), buf.len());
        assert_eq!(chunk_end(buf, 0, 8), 8);
        assert_eq!(chunk_end(buf, 0, 7), 4);
        // A line longer than `max` goes alone.
        assert_eq!(chunk_end(buf, 8, 5), 19);
        assert_eq!(chunk_end(buf, 19, 5), buf.len());
        // Without a final newline the rest goes whole.
        assert_eq!(chunk_end(b"xxxxxxxx", 0, 4), 8);
    }

    #[test]
    fn no_access_outputs_no_log() {
        let config = logging(&[("out", LogOutputKind::Stdout)], &[]);
        assert!(matches!(AccessLog::from_config(&config), Ok(None)));
        let dangling = logging(&[], &["nowhere"]);
        let error = AccessLog::from_config(&dangling)
            .err()
            .expect("an undefined output");
        assert!(error.to_string().contains("nowhere"));
    }

    #[test]
    fn lines_wait_in_memory_until_flushed() {
        let dir = scratch("flush");
        let path = dir.join("logs/access.log");
        tokio_uring::start(async {
            let log = file_log(&path, SLOW);
            assert!(
                path.exists(),
                "the file and its directory are created at once"
            );
            let refused = Entry {
                path: "/a\"b",
                ..entry()
            };
            log.record(&entry());
            log.record(&refused);
            assert_eq!(read(&path), "", "record does no IO");
            log.flush_now().await;
            assert_eq!(read(&path), line(&entry()) + &line(&refused));
            log.flush_now().await;
            assert_eq!(read(&path).lines().count(), 2, "nothing is written twice");
        });
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn existing_files_are_appended_to() {
        let dir = scratch("append");
        std::fs::create_dir_all(&dir).expect("the scratch directory");
        let path = dir.join("access.log");
        std::fs::write(&path, "earlier\n").expect("a file with a line");
        tokio_uring::start(async {
            let log = file_log(&path, SLOW);
            log.record(&entry());
            log.flush_now().await;
            log.record(&entry());
            log.flush_now().await;
        });
        assert_eq!(
            read(&path),
            "earlier\n".to_owned() + &line(&entry()) + &line(&entry())
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_full_buffer_is_written_without_waiting_for_the_timer() {
        let dir = scratch("full");
        let path = dir.join("access.log");
        let one = line(&entry()).len();
        tokio_uring::start(async {
            let limits = Limits {
                flush_at: one * 3,
                ..SLOW
            };
            let log = file_log(&path, limits);
            for _ in 0..3 {
                log.record(&entry());
            }
            eventually(|| read(&path).len() == one * 3).await;
        });
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_lone_line_is_written_after_flush_every() {
        let dir = scratch("timer");
        let path = dir.join("access.log");
        tokio_uring::start(async {
            let limits = Limits {
                flush_every: Duration::from_millis(20),
                ..SLOW
            };
            let log = file_log(&path, limits);
            log.record(&entry());
            eventually(|| read(&path) == line(&entry())).await;
        });
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn dropping_the_log_writes_what_it_holds() {
        let dir = scratch("drop");
        let path = dir.join("access.log");
        tokio_uring::start(async {
            let log = file_log(&path, SLOW);
            log.record(&entry());
            drop(log);
            eventually(|| read(&path) == line(&entry())).await;
        });
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn lines_past_the_cap_are_dropped_then_reported() {
        let dir = scratch("cap");
        let path = dir.join("access.log");
        let one = line(&entry()).len();
        tokio_uring::start(async {
            let limits = Limits {
                max_pending: one * 4,
                ..SLOW
            };
            let log = file_log(&path, limits);
            // Nothing yields to the flush task meanwhile: an output that never keeps up.
            for _ in 0..10 {
                log.record(&entry());
            }
            assert_eq!(log.dropped(), 6);
            log.flush_now().await;
            let text = read(&path);
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 5);
            assert!(lines[..4].iter().all(|l| l.contains("\"status\":200")));
            assert!(lines[4].starts_with("{\"time\":\""));
            assert!(lines[4].ends_with("Z\",\"dropped\":6}"));
            log.record(&entry());
            log.flush_now().await;
            assert_eq!(read(&path).lines().count(), 6, "the drop is reported once");
            assert_eq!(log.dropped(), 6);
        });
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn every_output_gets_every_line_once() {
        let dir = scratch("two");
        let (a, b) = (dir.join("a.log"), dir.join("b.log"));
        tokio_uring::start(async {
            let config = logging(
                &[
                    ("a", LogOutputKind::File(a.clone())),
                    ("b", LogOutputKind::File(b.clone())),
                    ("a-again", LogOutputKind::File(a.clone())),
                ],
                &["a", "b", "a", "a-again"],
            );
            let log = AccessLog::with_limits(&config, SLOW)
                .expect("the files open")
                .expect("outputs are configured");
            log.record(&entry());
            log.flush_now().await;
        });
        assert_eq!(read(&a), line(&entry()));
        assert_eq!(read(&b), line(&entry()));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = scratch("rotate");
        let path = dir.join("access.log");
        let rotated = dir.join("access.log.1");
        let second = Entry {
            status: 503,
            ..entry()
        };
        tokio_uring::start(async {
            let log = file_log(&path, SLOW);
            log.record(&entry());
            log.flush_now().await;
            std::fs::rename(&path, &rotated).expect("rotation");
            log.reopen().await.expect("the path can be opened again");
            log.record(&second);
            log.flush_now().await;
        });
        assert_eq!(read(&rotated), line(&entry()));
        assert_eq!(read(&path), line(&second));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn buffers_are_reused_once_warm() {
        let dir = scratch("reuse");
        let path = dir.join("access.log");
        tokio_uring::start(async {
            let log = file_log(&path, SLOW);
            let buffers = |log: &AccessLog| {
                let mut ptrs = [
                    log.shared.pending.borrow().as_ptr(),
                    log.shared.spare.borrow().as_ptr(),
                ];
                ptrs.sort();
                ptrs
            };
            let warm = buffers(&log);
            for _ in 0..3 {
                for _ in 0..100 {
                    log.record(&entry());
                }
                log.flush_now().await;
                assert_eq!(buffers(&log), warm);
            }
        });
        assert_eq!(read(&path).lines().count(), 300);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_pipe_gets_whole_lines() {
        let (mut reader, writer) = std::io::pipe().expect("a pipe");
        let mut buf = Vec::new();
        for i in 0..40u16 {
            let path = "/p".repeat(usize::from(i) * 10);
            format_line(
                &Entry {
                    path: &path,
                    ..entry()
                },
                &mut buf,
            );
        }
        let long = "/x".repeat(5_000);
        format_line(
            &Entry {
                path: &long,
                ..entry()
            },
            &mut buf,
        );
        // Within the pipe's 64 KiB, so the writes complete with nobody reading yet.
        assert!(buf.len() < 60 * 1024);
        let expected = buf.clone();
        tokio_uring::start(async {
            let mut output = Output {
                name: "stdout".to_owned(),
                file: File::from_std(std::fs::File::from(OwnedFd::from(writer))),
                max_write: libc::PIPE_BUF,
                failing: false,
            };
            let back = output.write(buf).await;
            assert_eq!(back, expected, "the buffer comes back whole");
            assert!(!output.failing);
        });
        let mut received = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut received).expect("the pipe reads");
        assert_eq!(received, expected);
    }
}
