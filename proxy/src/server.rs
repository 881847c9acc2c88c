//! Start-up and shutdown: binds every listener once per worker (`SO_REUSEPORT`),
//! starts one pinned thread per worker, reports readiness on stdout, and on
//! SIGTERM/SIGINT drains the workers and returns.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::admin::{self, Phase};
use crate::gateway::Gateway;
use crate::worker::{self, WorkerSetup};

/// Pending connections each listening socket queues.
const BACKLOG: i32 = 4096;

#[derive(Debug, Clone)]
pub struct Options {
    pub workers: usize,
    pub shutdown_timeout: Duration,
    /// Where the admin endpoints listen, if anywhere.
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} (ApiInstance {apis}): {source}")]
    Listen {
        addr: SocketAddr,
        apis: String,
        source: io::Error,
    },
    #[error("cannot start a worker: {0}")]
    Worker(String),
    #[error("cannot set up signal handling: {0}")]
    Signals(io::Error),
    #[error("a worker thread panicked")]
    WorkerPanicked,
    #[error("cannot listen on {addr} for the admin endpoints: {source}")]
    Admin { addr: SocketAddr, source: io::Error },
}

/// Runs the gateway until a termination signal, then drains it.
pub fn run(gateway: Arc<Gateway>, opts: &Options) -> Result<(), ServerError> {
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Signals)?;
    // Signal handlers go in before anything listens, so a SIGTERM never kills the
    // process half-started.
    let (mut term, mut int) = control
        .block_on(async {
            Ok::<_, io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })
        .map_err(ServerError::Signals)?;

    let (phase_tx, phase_rx) = watch::channel(Phase::Starting);
    if let Some(addr) = opts.admin {
        let err = |source| ServerError::Admin { addr, source };
        let std_listener = admin::bind(addr).map_err(err)?;
        let local = std_listener.local_addr().map_err(err)?;
        let listener = {
            let _guard = control.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(err)?
        };
        control.spawn(admin::serve(listener, phase_rx));
        announce(&format!("admin {local}"));
        tracing::info!(addr = %local, "admin endpoints listening");
    }

    let sockets = bind_listeners(&gateway, opts.workers)?;
    // Thread per core: with a worker for every allowed CPU, each gets its own. With fewer,
    // which CPUs are best is the scheduler's call (or the operator's, through taskset).
    let cpus = allowed_cpus();
    let cpus = if opts.workers >= cpus.len() {
        cpus
    } else {
        Vec::new()
    };
    let (drain_tx, drain_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut per_worker: Vec<Vec<(usize, std::net::TcpListener)>> =
        (0..opts.workers).map(|_| Vec::new()).collect();
    for (index, socks) in sockets.into_iter().enumerate() {
        for (w, s) in socks.into_iter().enumerate() {
            per_worker[w].push((index, s));
        }
    }
    let mut threads: Vec<JoinHandle<()>> = Vec::with_capacity(opts.workers);
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let setup = WorkerSetup {
            id,
            gateway: gateway.clone(),
            listeners,
            drain: drain_rx.clone(),
            shutdown_timeout: opts.shutdown_timeout,
        };
        let ready = ready_tx.clone();
        let exit = exit_tx.clone();
        let cpu = (!cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        let handle = std::thread::Builder::new()
            .name(format!("ringwall-w{id}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to_cpu(cpu);
                }
                worker::run(setup, ready);
                let _ = exit.send(id);
            })
            .map_err(|e| ServerError::Worker(e.to_string()))?;
        threads.push(handle);
    }
    drop(ready_tx);

    for _ in 0..opts.workers {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(message)) => {
                let _ = drain_tx.send(true);
                join_all(threads);
                return Err(ServerError::Worker(message));
            }
            Err(_) => {
                let _ = drain_tx.send(true);
                join_all(threads);
                return Err(ServerError::WorkerPanicked);
            }
        }
    }
    let _ = phase_tx.send(Phase::Ready);
    announce(&format!("ready workers={}", opts.workers));
    tracing::info!(workers = opts.workers, "ready");

    let (early_exit, panicked) = control.block_on(async {
        let early_exit = tokio::select! {
            _ = term.recv() => false,
            _ = int.recv() => false,
            _ = exit_rx.recv() => true,
        };
        tracing::info!("draining");
        let _ = phase_tx.send(Phase::Draining);
        let _ = drain_tx.send(true);
        // Joined off the control thread, so the admin endpoints answer meanwhile.
        let panicked = tokio::task::spawn_blocking(move || join_all(threads))
            .await
            .unwrap_or(true);
        (early_exit, panicked)
    });
    if early_exit || panicked {
        return Err(ServerError::WorkerPanicked);
    }
    tracing::info!("stopped");
    Ok(())
}

fn join_all(threads: Vec<JoinHandle<()>>) -> bool {
    let mut panicked = false;
    for t in threads {
        panicked |= t.join().is_err();
    }
    panicked
}

/// One line of the machine-readable start-up protocol on stdout.
fn announce(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// For every listener, one socket per worker on the same address. A port of 0 is
/// resolved by the first socket, and the others join it.
fn bind_listeners(
    gateway: &Gateway,
    workers: usize,
) -> Result<Vec<Vec<std::net::TcpListener>>, ServerError> {
    let mut all = Vec::with_capacity(gateway.listeners.len());
    for l in &gateway.listeners {
        let apis = l
            .apis
            .iter()
            .map(|&i| gateway.snapshot.apis[i].name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let err = |source| ServerError::Listen {
            addr: l.addr,
            apis: apis.clone(),
            source,
        };
        let mut addr = l.addr;
        let mut socks = Vec::with_capacity(workers);
        for _ in 0..workers {
            let s = reuseport_listener(addr).map_err(err)?;
            addr = s.local_addr().map_err(err)?;
            socks.push(s);
        }
        announce(&format!("listening {addr} {apis}"));
        tracing::info!(%addr, apis, "listening");
        all.push(socks);
    }
    Ok(all)
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The CPUs this process may run on (respecting `taskset`), in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data, built here and read by the kernel only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        tracing::debug!(cpu, error = %io::Error::last_os_error(), "could not pin worker");
    }
}
