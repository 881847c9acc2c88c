//! A worker: one thread, one io_uring runtime, its own `SO_REUSEPORT` listeners and its
//! own upstream pool. Everything here is `!Send` and lock-free; the only thing shared
//! with other workers is the immutable `Gateway` and the drain signal.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_uring::net::TcpListener;

use slab::Slab;

use crate::access_log::{AccessLog, Entry};
use crate::admission::{Admission, Verdict};
use crate::conn;
use crate::gateway::{Gateway, ListenerKey};
use crate::pool::Pool;
use ringwall_config::Logging;

/// Submission queue depth of each worker's ring.
const RING_ENTRIES: u32 = 4096;

pub struct Worker {
    id: usize,
    /// How many workers share `limits.maxConnections`.
    workers: usize,
    /// The listeners this worker accepts on, by key.
    listeners: RefCell<hashbrown::HashMap<ListenerKey, Rc<ListenerHandle>>>,
    accepts: RefCell<Vec<tokio::task::JoinHandle<()>>>,
    /// `Rc` around the shared `Arc` on purpose: every exchange clones it, and an `Rc`
    /// clone is a plain increment, where an `Arc` clone would bounce the refcount's
    /// cache line between cores on every request.
    #[allow(clippy::redundant_allocation)]
    gateway: RefCell<Rc<Arc<Gateway>>>,
    /// Connection rules checked at accept, when the kernel plane is not enforcing them.
    admission: RefCell<Option<Arc<Admission>>>,
    /// This worker's access log, when one is configured.
    access_log: RefCell<Option<Rc<AccessLog>>>,
    pub pool: Pool,
    /// Spare write buffers, which idle keep-alive connections give back.
    pub buffers: crate::buffers::Buffers,
    /// Spare buffers for relaying large bodies.
    pub large: crate::buffers::Buffers,
    /// Responses close their connections: the drain period has begun.
    closing: Cell<bool>,
    draining: Cell<bool>,
    drain_started: Notify,
    active: Cell<usize>,
    all_closed: Notify,
    /// A connection closed: an accept loop paused at the limit may go on.
    room: Notify,
    /// Which upstream endpoints answer, and the retry budget.
    pub health: crate::health::Health,
    /// Keep-alive connections waiting for their next request (see [`Worker::idle_wait`]).
    idle: RefCell<Slab<IdleConn>>,
    rng: Cell<u64>,
    pub(crate) metrics: crate::metrics::WorkerMetrics,
}

impl Worker {
    fn new(id: usize, workers: usize, update: &Update) -> Self {
        Self {
            id,
            workers: workers.max(1),
            listeners: RefCell::default(),
            accepts: RefCell::default(),
            gateway: RefCell::new(Rc::new(update.gateway.clone())),
            admission: RefCell::new(update.admission.clone()),
            access_log: RefCell::new(None),
            pool: Pool::default(),
            buffers: crate::buffers::Buffers::write(),
            large: crate::buffers::Buffers::large(),
            closing: Cell::new(false),
            draining: Cell::new(false),
            drain_started: Notify::new(),
            active: Cell::new(0),
            all_closed: Notify::new(),
            room: Notify::new(),
            health: crate::health::Health::default(),
            idle: RefCell::default(),
            rng: Cell::new(seed()),
            metrics: crate::metrics::WorkerMetrics::register(),
        }
    }

    /// The configuration in force. A cheap non-atomic clone: an exchange keeps the
    /// snapshot it started with even if a reload swaps it meanwhile.
    #[allow(clippy::redundant_allocation)]
    pub fn gateway(&self) -> Rc<Arc<Gateway>> {
        self.gateway.borrow().clone()
    }

    /// Takes a new configuration: exchanges already running finish on the snapshot they
    /// started with; the upstream pool is kept; listeners that are new start accepting
    /// and those that are gone stop (their connections finish, then close).
    fn apply(self: &Rc<Self>, update: Update) {
        *self.gateway.borrow_mut() = Rc::new(update.gateway);
        *self.admission.borrow_mut() = update.admission;
        self.sync_listeners(&update.sockets);
    }

    fn sync_listeners(self: &Rc<Self>, sockets: &Sockets) {
        let mut running = self.listeners.borrow_mut();
        running.retain(|key, handle| {
            let keep = sockets.iter().any(|(k, _)| k == key);
            if !keep {
                tracing::debug!(worker = self.id, addr = %key.addr, "listener removed: stop accepting");
                handle.close();
                self.end_idle_waits(|on| std::ptr::eq(on, Rc::as_ptr(handle)));
            }
            keep
        });
        for (key, fds) in sockets.iter() {
            if running.contains_key(key) {
                continue;
            }
            // Each worker has its own SO_REUSEPORT socket; the control thread keeps the
            // originals, the worker accepts on a duplicate.
            let socket = match fds.get(self.id).map(OwnedFd::try_clone) {
                Some(Ok(fd)) => std::net::TcpListener::from(fd),
                Some(Err(e)) => {
                    tracing::error!(addr = %key.addr, error = %e, "cannot take a listening socket");
                    continue;
                }
                None => continue,
            };
            let handle = Rc::new(ListenerHandle {
                key: key.clone(),
                closed: Cell::new(false),
                closed_notify: Notify::new(),
            });
            let listener = TcpListener::from_std(socket);
            let task = tokio_uring::spawn(accept_loop(listener, handle.clone(), self.clone()));
            self.accepts.borrow_mut().push(task);
            running.insert(key.clone(), handle);
        }
    }

    /// Connections close after their current response (`Connection: close`), so that
    /// clients move to other replicas while this one is still serving.
    pub fn closes_connections(&self) -> bool {
        self.closing.get()
    }

    /// No more accepting; idle connections close now.
    /// Whether exchanges are logged (so worth collecting details for).
    pub fn logs(&self) -> bool {
        self.access_log.borrow().is_some()
    }

    /// Appends one access log line; never waits.
    pub fn log(&self, entry: &Entry<'_>) {
        if let Some(log) = self.access_log.borrow().as_ref() {
            log.record(entry);
        }
    }

    /// Follows a reload: a changed logging configuration opens new outputs (the old
    /// ones flush as they go); an unchanged one reopens its files (log rotation).
    async fn reconfigure_log(&self, before: &Logging, after: &Logging) {
        if before != after {
            match AccessLog::from_config(after) {
                Ok(log) => *self.access_log.borrow_mut() = log.map(Rc::new),
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the new access log outputs; keeping the old ones")
                }
            }
            return;
        }
        // Still recording while it reopens: the handle stays in place.
        let log = self.access_log.borrow().clone();
        if let Some(log) = log {
            if let Err(e) = log.reopen().await {
                tracing::warn!(error = %e, "cannot reopen the access log");
            }
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Resolves once the worker starts draining.
    pub async fn draining(&self) {
        while !self.draining.get() {
            self.drain_started.notified().await;
        }
    }

    fn start_drain(&self) {
        self.closing.set(true);
        self.draining.set(true);
        self.drain_started.notify_waiters();
        self.end_idle_waits(|_| true);
    }

    /// Registers a keep-alive connection that waits for its next request on `socket`, until
    /// the guard is dropped. Draining, or a reload removing its listener, ends the wait
    /// by shutting the socket's reading side: the pending read returns the end of the
    /// stream and the connection closes. Cheaper, per request, than having every idle read
    /// also wait on a notification: a slab entry, and no waker or lock.
    pub fn idle_wait(&self, socket: RawFd, listener: &ListenerHandle) -> IdleWait<'_> {
        let slot = self.idle.borrow_mut().insert(IdleConn {
            socket,
            listener: std::ptr::from_ref(listener),
        });
        IdleWait { worker: self, slot }
    }

    fn end_idle_waits(&self, on: impl Fn(*const ListenerHandle) -> bool) {
        for (_, conn) in self.idle.borrow().iter() {
            if on(conn.listener) {
                // SAFETY: shutdown takes no memory from us; the socket is open while its
                // connection is registered (the registration ends before the socket closes).
                unsafe { libc::shutdown(conn.socket, libc::SHUT_RD) };
            }
        }
    }

    /// A cheap per-worker random number (xorshift64*), for weighted choices.
    pub fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn track_connection(self: &Rc<Self>) -> ConnectionGuard {
        self.active.set(self.active.get() + 1);
        self.metrics.connection_opened();
        ConnectionGuard(self.clone())
    }

    /// This worker's share of `limits.maxConnections`, or by default of what the open-files
    /// limit leaves room for.
    fn max_connections(&self) -> usize {
        let limits = &self.gateway.borrow().snapshot.settings.limits;
        let total = limits.max_connections.unwrap_or_else(fd_budget);
        total.div_ceil(self.workers).max(1)
    }

    /// Resolves once this worker may accept another connection. At its limit the accept
    /// loops wait here, and new connections wait in the kernel's accept queue.
    async fn room(&self) {
        let mut paused = false;
        while self.active.get() >= self.max_connections() {
            if !paused {
                paused = true;
                self.metrics.accept_paused();
                tracing::debug!(
                    worker = self.id,
                    open = self.active.get(),
                    "at maxConnections: accepting paused"
                );
            }
            self.room.notified().await;
        }
    }

    async fn all_closed(&self) {
        while self.active.get() > 0 {
            self.all_closed.notified().await;
        }
    }
}

/// The client connections the open-files limit leaves room for: each may hold an upstream
/// connection too, and some descriptors go to listeners, logs and the rings. Read once.
fn fd_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given, which lives across the call.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
        let open_files = if ok { limit.rlim_cur } else { 1024 };
        let open_files = usize::try_from(open_files).unwrap_or(usize::MAX);
        (open_files.saturating_sub(128) / 2).max(16)
    })
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    // Distinct per thread even when started in the same nanosecond; never zero.
    let addr = &nanos as *const u64 as u64;
    (nanos ^ addr.rotate_left(32)) | 1
}

/// Counts a client connection as active for as long as it lives.
pub struct ConnectionGuard(Rc<Worker>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.metrics.connection_closed();
        let left = self.0.active.get() - 1;
        self.0.active.set(left);
        self.0.room.notify_waiters();
        if left == 0 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// A keep-alive connection waiting for its next request: its socket and the listener it
/// came in on (compared by address only).
struct IdleConn {
    socket: RawFd,
    listener: *const ListenerHandle,
}

/// Keeps a connection registered as idle: see [`Worker::idle_wait`].
pub struct IdleWait<'w> {
    worker: &'w Worker,
    slot: usize,
}

impl Drop for IdleWait<'_> {
    fn drop(&mut self) {
        self.worker.idle.borrow_mut().remove(self.slot);
    }
}

/// One listener as a worker runs it. Connections keep it to learn that it was removed
/// by a reload, which closes them once their current exchange is over.
pub struct ListenerHandle {
    pub key: ListenerKey,
    closed: Cell<bool>,
    closed_notify: Notify,
}

impl ListenerHandle {
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Resolves once a reload has removed the listener.
    pub async fn closed(&self) {
        while !self.closed.get() {
            self.closed_notify.notified().await;
        }
    }

    fn close(&self) {
        self.closed.set(true);
        self.closed_notify.notify_waiters();
    }
}

/// Every listener's sockets, one per worker: worker `i` accepts on `fds[i]`.
pub type Sockets = Arc<Vec<(ListenerKey, Arc<Vec<OwnedFd>>)>>;

/// A configuration for the workers: the routing view, the accept-time check and the
/// listeners.
#[derive(Clone)]
pub struct Update {
    pub generation: u64,
    pub gateway: Arc<Gateway>,
    pub admission: Option<Arc<Admission>>,
    pub sockets: Sockets,
}

/// What a worker thread is given.
pub struct WorkerSetup {
    pub id: usize,
    /// The configuration now, and every later one.
    pub updates: watch::Receiver<Update>,
    /// Where the worker says which generation it has taken.
    pub applied: tokio::sync::mpsc::UnboundedSender<u64>,
    pub drain: watch::Receiver<DrainPhase>,
    pub shutdown_timeout: Duration,
    /// How many workers the process runs.
    pub workers: usize,
}

/// How far the gateway is into stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DrainPhase {
    Serving,
    /// Still accepting and serving, every response closing its connection.
    Closing,
    /// Accepting no more; finishing what is in flight.
    Draining,
}

/// The body of a worker thread: reports readiness (or why it could not start) on
/// `ready`, serves until the drain signal, then waits for its connections to finish.
pub fn run(setup: WorkerSetup, ready: mpsc::Sender<Result<usize, String>>) {
    let rt = match ring() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(io_uring_unavailable(&e)));
            return;
        }
    };
    let WorkerSetup {
        id,
        mut updates,
        applied,
        mut drain,
        shutdown_timeout,
        workers,
    } = setup;
    rt.block_on(async move {
        let first = updates.borrow_and_update().clone();
        let worker = Rc::new(Worker::new(id, workers, &first));
        match AccessLog::from_config(&first.gateway.snapshot.settings.logging) {
            Ok(log) => *worker.access_log.borrow_mut() = log.map(Rc::new),
            Err(e) => {
                let _ = ready.send(Err(format!("cannot open the access log: {e}")));
                return;
            }
        }
        worker.sync_listeners(&first.sockets);
        let sweeper = worker.clone();
        tokio_uring::spawn(async move {
            // Idle upstream connections are otherwise only found stale when next taken.
            loop {
                let idle = sweeper.gateway().snapshot.settings.timeouts.upstream_idle;
                let every = (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                tokio::time::sleep(every).await;
                sweeper.pool.evict_expired(idle);
            }
        });
        let follower = worker.clone();
        tokio_uring::spawn(async move {
            let mut logging = first.gateway.snapshot.settings.logging.clone();
            while updates.changed().await.is_ok() {
                let update = updates.borrow_and_update().clone();
                let generation = update.generation;
                let next = update.gateway.snapshot.settings.logging.clone();
                follower.apply(update);
                follower.reconfigure_log(&logging, &next).await;
                logging = next;
                let _ = applied.send(generation);
            }
        });
        let _ = ready.send(Ok(id));
        // A dropped sender (the main thread is gone) drains as well.
        if drain.wait_for(|d| *d >= DrainPhase::Closing).await.is_ok() {
            worker.closing.set(true);
        }
        let _ = drain.wait_for(|d| *d >= DrainPhase::Draining).await;
        worker.start_drain();
        let accepts = std::mem::take(&mut *worker.accepts.borrow_mut());
        for accept in accepts {
            let _ = accept.await;
        }
        if tokio::time::timeout(shutdown_timeout, worker.all_closed())
            .await
            .is_err()
        {
            tracing::warn!(
                worker = id,
                open = worker.active.get(),
                "shutdown timeout: closing connections still in flight"
            );
        }
        let log = worker.access_log.borrow_mut().take();
        if let Some(log) = log {
            // Bounded: a stalled stdout pipe never completes a write.
            let _ = tokio::time::timeout(Duration::from_secs(2), log.flush_now()).await;
        }
    });
}

/// The worker's runtime and ring. Only this thread submits to the ring, and it enters the
/// kernel often (every batch of submissions, every park), so completions need not
/// interrupt it: with `COOP_TASKRUN` the kernel runs the ring's deferred work at the
/// thread's next transition instead of forcing one with an inter-processor interrupt,
/// and `SINGLE_ISSUER` lets it skip the locking a shared ring needs. Kernels before 6.0
/// know neither flag; there the ring is made without them.
fn ring() -> io::Result<tokio_uring::Runtime> {
    let mut flags = tokio_uring::uring_builder();
    flags.setup_coop_taskrun().setup_single_issuer();
    let mut builder = tokio_uring::builder();
    builder.entries(RING_ENTRIES).uring_builder(&flags);
    match tokio_uring::Runtime::new(&builder) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!("io_uring without COOP_TASKRUN and SINGLE_ISSUER: {e}");
            builder.uring_builder(&tokio_uring::uring_builder());
            tokio_uring::Runtime::new(&builder)
        }
        made => made,
    }
}

async fn accept_loop(listener: TcpListener, handle: Rc<ListenerHandle>, worker: Rc<Worker>) {
    loop {
        // No accept is in flight while the worker is at its limit.
        tokio::select! {
            () = worker.room() => {}
            () = worker.draining() => break,
            () = handle.closed() => break,
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let index = worker.gateway().index_of(&handle.key);
                    let verdict = index.and_then(|i| {
                        worker.admission.borrow().as_ref().map(|a| a.check(i, peer.ip()))
                    });
                    if let Some(verdict) = verdict {
                        if verdict != Verdict::Admit {
                            tracing::debug!(%peer, ?verdict, "connection refused at accept");
                            // Closed before a byte is read; dropping releases it.
                            let _ = stream.shutdown(std::net::Shutdown::Both);
                            continue;
                        }
                    }
                    // Counted now, not when the task first runs, so that the next turn of
                    // this loop sees it against the limit.
                    let active = worker.track_connection();
                    tokio_uring::spawn(conn::serve(stream, peer, handle.clone(), worker.clone(), active));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) {
                        // Out of descriptors or memory: give closing connections a moment.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            },
            () = worker.draining() => break,
            () = handle.closed() => break,
        }
    }
    // SAFETY: the descriptor is owned by `listener`, which is alive here. Shutting a
    // listening socket down makes the accept still in flight on the ring complete, so
    // the socket is really closed when `listener` drops and no new connection lands
    // in its queue.
    unsafe {
        libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// Names the likely cause when a ring cannot be created.
fn io_uring_unavailable(e: &io::Error) -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok());
    format!("{}: {e}", ring_failure_cause(e.raw_os_error(), sysctl))
}

/// The cause of an `io_uring_setup` failure, from its errno and the value of the
/// `kernel.io_uring_disabled` sysctl (absent on kernels before 6.6).
fn ring_failure_cause(errno: Option<i32>, disabled_sysctl: Option<u8>) -> &'static str {
    match (errno, disabled_sysctl) {
        (_, Some(2)) => "io_uring is disabled on this system (sysctl kernel.io_uring_disabled = 2)",
        (Some(libc::EPERM), Some(1)) => {
            "io_uring is restricted to the io_uring_group (sysctl kernel.io_uring_disabled = 1) and this process is not in it"
        }
        (Some(libc::ENOSYS), _) => "the kernel has no io_uring (older than 5.1, or built without it)",
        (Some(libc::EPERM), _) => {
            "io_uring_setup is forbidden, most likely by a seccomp filter (containers often block it)"
        }
        (Some(libc::ENOMEM), _) => "not enough locked memory for the ring (raise RLIMIT_MEMLOCK)",
        _ => "io_uring could not be set up",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_failures_name_their_cause() {
        assert!(ring_failure_cause(Some(libc::EPERM), Some(2)).contains("io_uring_disabled = 2"));
        assert!(ring_failure_cause(Some(libc::EPERM), Some(1)).contains("io_uring_group"));
        assert!(ring_failure_cause(Some(libc::EPERM), Some(0)).contains("seccomp"));
        assert!(ring_failure_cause(Some(libc::EPERM), None).contains("seccomp"));
        assert!(ring_failure_cause(Some(libc::ENOSYS), None).contains("older than 5.1"));
        assert!(ring_failure_cause(Some(libc::ENOMEM), Some(0)).contains("RLIMIT_MEMLOCK"));
        let e = io::Error::from_raw_os_error(libc::ENOSYS);
        assert!(io_uring_unavailable(&e).ends_with(&e.to_string()));
    }
}
