//! Start-up, reload and shutdown: binds every listener once per worker (`SO_REUSEPORT`),
//! starts one pinned thread per worker, reports readiness on stdout; on SIGHUP loads the
//! configuration again and hands it to the workers; on SIGTERM/SIGINT drains them.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::admin::{self, ConnectionStats, Phase};
use crate::admission::Admission;
use crate::gateway::{Gateway, Listener, ListenerKey};
use crate::worker::{self, DrainPhase, Sockets, Update, WorkerSetup};
use crate::xdp::{self, AttachMode, KernelPlane, XdpError, XdpSetting};

/// Pending connections each listening socket queues.
const BACKLOG: i32 = 4096;

#[derive(Debug, Clone)]
pub struct Options {
    /// The directory the configuration is read from again on SIGHUP.
    pub config_dir: PathBuf,
    /// Also reload when a file in `config_dir` changes.
    pub watch: bool,
    /// [`crate::watch::fingerprint`] of `config_dir`, taken before the initial load.
    pub loaded: Option<u64>,
    pub workers: usize,
    /// After SIGTERM: how long to keep serving, not ready, before draining.
    pub drain_period: Duration,
    pub shutdown_timeout: Duration,
    /// Where the admin endpoints listen, if anywhere.
    pub admin: Option<SocketAddr>,
    /// The Prometheus recorder, installed when there is an admin listener.
    pub metrics: Option<crate::metrics::Exporter>,
    pub xdp: XdpSetting,
    /// Interfaces to attach to; empty: those the listeners' addresses live on.
    pub xdp_ifaces: Vec<String>,
    pub xdp_mode: AttachMode,
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
    #[error("XDP is required (--xdp required) but unavailable: {0}")]
    XdpRequired(XdpError),
}

/// Runs the gateway until a termination signal, then drains it.
pub fn run(gateway: Arc<Gateway>, opts: &Options) -> Result<(), ServerError> {
    // Connects now, so the first requests find it up; reloads keep or replace it.
    gateway.start();
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Signals)?;
    // Signal handlers go in before anything listens, so a SIGTERM never kills the
    // process half-started.
    let (mut term, mut int, mut hup) = control
        .block_on(async {
            Ok::<_, io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::hangup())?,
            ))
        })
        .map_err(ServerError::Signals)?;

    let (phase_tx, phase_rx) = watch::channel(Phase::Starting);
    let admin_listener = match opts.admin {
        Some(addr) => {
            let err = |source| ServerError::Admin { addr, source };
            let std_listener = admin::bind(addr).map_err(err)?;
            let local = std_listener.local_addr().map_err(err)?;
            let listener = {
                let _guard = control.enter();
                tokio::net::TcpListener::from_std(std_listener).map_err(err)?
            };
            announce(&format!("admin {local}"));
            tracing::info!(addr = %local, "admin endpoints listening");
            Some(listener)
        }
        None => None,
    };

    let mut bound = Vec::with_capacity(gateway.listeners.len());
    for l in &gateway.listeners {
        bound.push(bind_listener(&gateway, l, opts.workers)?);
    }
    // Rules are per listener, and the kernel sees ports: pair each listener's rules with
    // the port it really got (port 0 is resolved only now).
    let port_rules = port_rules(&gateway, &bound);
    let locals: Vec<SocketAddr> = bound.iter().map(|b| b.local).collect();
    // Held until the end of `run`: dropping it detaches the program.
    let (kernel, admission) = connection_plane(opts, &locals, &port_rules)?;
    let (stats_tx, stats) = watch::channel(connection_stats(kernel.as_ref(), admission.as_deref()));
    let (config_tx, config_rx) = watch::channel(admin::Applied {
        generation: 1,
        snapshot: gateway.snapshot.clone(),
    });
    if let Some(listener) = admin_listener {
        control.spawn(admin::serve_with(
            listener,
            admin::AdminState {
                phase: phase_rx,
                stats,
                config: Some(config_rx),
                metrics: opts.metrics.clone(),
            },
        ));
    }
    control.spawn(crate::heap::trim_periodically());
    // Thread per core: with a worker for every allowed CPU, each gets its own. With fewer,
    // which CPUs are best is the scheduler's call (or the operator's, through taskset).
    let cpus = allowed_cpus();
    let cpus = if opts.workers >= cpus.len() {
        cpus
    } else {
        Vec::new()
    };
    let (drain_tx, drain_rx) = watch::channel(DrainPhase::Serving);
    let (applied_tx, mut applied_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let (update_tx, update_rx) = watch::channel(Update {
        generation: 1,
        gateway: gateway.clone(),
        admission: admission.clone(),
        sockets: sockets_of(&bound),
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut threads: Vec<JoinHandle<()>> = Vec::with_capacity(opts.workers);
    for id in 0..opts.workers {
        let setup = WorkerSetup {
            id,
            updates: update_rx.clone(),
            applied: applied_tx.clone(),
            drain: drain_rx.clone(),
            shutdown_timeout: opts.shutdown_timeout,
            workers: opts.workers,
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
                let _ = drain_tx.send(DrainPhase::Draining);
                join_all(threads);
                return Err(ServerError::Worker(message));
            }
            Err(_) => {
                let _ = drain_tx.send(DrainPhase::Draining);
                join_all(threads);
                return Err(ServerError::WorkerPanicked);
            }
        }
    }
    // Saving a file reloads, as in Flex Local Mode; without a watcher SIGHUP still does.
    let (watcher, mut changes) = {
        let _guard = control.enter();
        match crate::watch::watch_dir(&opts.config_dir) {
            _ if !opts.watch => (None, tokio::sync::mpsc::unbounded_channel().1),
            Ok((w, rx)) => (Some(w), rx),
            Err(e) => {
                tracing::warn!(dir = %opts.config_dir.display(), error = %e,
                    "cannot watch the configuration directory; reload with SIGHUP");
                (None, tokio::sync::mpsc::unbounded_channel().1)
            }
        }
    };
    let _ = phase_tx.send(Phase::Ready);
    announce(&format!("ready workers={}", opts.workers));
    tracing::info!(workers = opts.workers, "ready");

    let mut live = Live {
        gateway,
        bound,
        kernel,
        admission,
        generation: 1,
        loaded: opts.loaded,
        config: config_tx,
        stats: stats_tx,
    };
    let (early_exit, panicked) = control.block_on(async {
        // A change between the initial load and the watcher's start raised no event.
        if opts.watch && crate::watch::fingerprint(&opts.config_dir) != live.loaded {
            live.reload(opts, &update_tx, &mut applied_rx).await;
        }
        let (early_exit, drain_period) = loop {
            tokio::select! {
                // SIGTERM is how orchestrators stop a replica: give the load balancer
                // the drain period to take it out. SIGINT is a person: stop now.
                _ = term.recv() => break (false, opts.drain_period),
                _ = int.recv() => break (false, Duration::ZERO),
                _ = exit_rx.recv() => break (true, Duration::ZERO),
                _ = hup.recv() => live.reload(opts, &update_tx, &mut applied_rx).await,
                Some(()) = changes.recv() => {
                    // A save that leaves the directory as it was last loaded (an editor
                    // rewriting the same bytes, or a change SIGHUP already applied) is no
                    // reason to reload.
                    if crate::watch::settle(&mut changes).await
                        && crate::watch::fingerprint(&opts.config_dir) != live.loaded
                    {
                        live.reload(opts, &update_tx, &mut applied_rx).await;
                    }
                }
            }
        };
        drop(watcher);
        let _ = phase_tx.send(Phase::Draining);
        if !drain_period.is_zero() {
            tracing::info!(
                seconds = drain_period.as_secs_f64(),
                "drain period: not ready, still serving"
            );
            let _ = drain_tx.send(DrainPhase::Closing);
            tokio::time::sleep(drain_period).await;
        }
        tracing::info!("draining");
        let _ = drain_tx.send(DrainPhase::Draining);
        // Joined off the control thread, so the admin endpoints answer meanwhile.
        let panicked = tokio::task::spawn_blocking(move || join_all(threads))
            .await
            .unwrap_or(true);
        (early_exit, panicked)
    });
    if early_exit || panicked {
        return Err(ServerError::WorkerPanicked);
    }
    drop(live);
    tracing::info!("stopped");
    Ok(())
}

/// What is in force, as the control thread holds it.
struct Live {
    gateway: Arc<Gateway>,
    /// The listeners, bound.
    bound: Vec<Bound>,
    /// Dropping it detaches the program.
    kernel: Option<KernelPlane>,
    admission: Option<Arc<Admission>>,
    generation: u64,
    /// The directory's content as last loaded, valid or not.
    loaded: Option<u64>,
    /// What `/config` shows.
    config: watch::Sender<admin::Applied>,
    /// Where `/connection-rules` and `/metrics` read the rules' counters.
    stats: watch::Sender<Option<ConnectionStats>>,
}

impl Live {
    /// Loads the configuration again. A valid one replaces routes, services and
    /// connection rules on every worker (XDP maps in place); an invalid one is reported
    /// and the running configuration stays. Says which on stdout.
    async fn reload(
        &mut self,
        opts: &Options,
        updates: &watch::Sender<Update>,
        applied: &mut tokio::sync::mpsc::UnboundedReceiver<u64>,
    ) {
        self.generation += 1;
        let generation = self.generation;
        self.loaded = crate::watch::fingerprint(&opts.config_dir);
        match self.try_reload(opts) {
            Ok(update) => {
                let _ = updates.send(update);
                // Announced once every worker has taken it, so that whoever waits for
                // the line knows the next request sees the new configuration.
                let mut taken = 0;
                while taken < opts.workers {
                    match tokio::time::timeout(Duration::from_secs(5), applied.recv()).await {
                        Ok(Some(g)) if g == generation => taken += 1,
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                if taken < opts.workers {
                    tracing::warn!(
                        generation,
                        confirmed = taken,
                        workers = opts.workers,
                        "not every worker confirmed the new configuration within 5 s; the rest take it when they can"
                    );
                }
                tracing::info!(generation, workers = taken, "configuration reloaded");
                announce(&format!("reloaded generation={generation}"));
                let _ = self.config.send(admin::Applied {
                    generation,
                    snapshot: self.gateway.snapshot.clone(),
                });
                crate::metrics::count_reload(true);
            }
            Err(errors) => {
                crate::metrics::count_reload(false);
                for e in &errors {
                    tracing::error!("reload: {e}");
                }
                tracing::error!(
                    generation,
                    "reload rejected; the running configuration stays"
                );
                announce(&format!(
                    "reload-failed generation={generation} errors={}",
                    errors.len()
                ));
            }
        }
    }

    fn try_reload(&mut self, opts: &Options) -> Result<Update, Vec<String>> {
        let gateway = Gateway::load(&opts.config_dir, Some(&self.gateway))
            .map_err(|errors| errors.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        for w in gateway.warnings() {
            tracing::warn!("reload: {w}");
        }
        let gateway = Arc::new(gateway);
        gateway.start();
        // Listeners that stay keep their sockets; new ones are bound now (a port that
        // cannot be bound fails the reload); removed ones stop accepting once the workers
        // take the update, and their connections close after their current exchange.
        let mut bound = Vec::with_capacity(gateway.listeners.len());
        for l in &gateway.listeners {
            match self.bound.iter().find(|b| b.key == l.key) {
                Some(b) => bound.push(b.clone()),
                None => bound.push(
                    bind_listener(&gateway, l, opts.workers).map_err(|e| vec![e.to_string()])?,
                ),
            }
        }
        let rules = port_rules(&gateway, &bound);
        let locals: Vec<SocketAddr> = bound.iter().map(|b| b.local).collect();
        let admission = match (&mut self.kernel, &self.admission) {
            (Some(kernel), _) => {
                kernel.apply(&rules).map_err(|e| vec![e.to_string()])?;
                None
            }
            (None, Some(old)) => Some(Arc::new(old.reconfigured(rules))),
            (None, None) if rules.iter().any(|(_, r)| !r.is_empty()) => {
                // The first rules after a start without any: choose a plane now.
                let (kernel, admission) =
                    connection_plane(opts, &locals, &rules).map_err(|e| vec![e.to_string()])?;
                self.kernel = kernel;
                admission
            }
            (None, None) => None,
        };
        self.admission.clone_from(&admission);
        let _ = self.stats.send(connection_stats(
            self.kernel.as_ref(),
            self.admission.as_deref(),
        ));
        crate::runtime_log::set_level(gateway.snapshot.settings.logging.runtime.level);
        self.gateway = gateway.clone();
        let sockets = sockets_of(&bound);
        self.bound = bound;
        Ok(Update {
            generation: self.generation,
            gateway,
            admission,
            sockets,
        })
    }
}

/// The counters of whichever plane enforces connection rules.
fn connection_stats(
    kernel: Option<&KernelPlane>,
    admission: Option<&Admission>,
) -> Option<ConnectionStats> {
    match (kernel, admission) {
        (Some(k), _) => Some(ConnectionStats::Kernel(k.counter_reader())),
        (None, Some(a)) => Some(ConnectionStats::Userspace(a.counters())),
        (None, None) => None,
    }
}

/// Each listener's connection rules with the port it really got (port 0 is resolved only
/// once bound; the kernel sees ports).
fn port_rules(gateway: &Gateway, bound: &[Bound]) -> Vec<(u16, ringwall_config::ConnectionRules)> {
    gateway
        .listeners
        .iter()
        .zip(bound)
        .map(|(l, b)| {
            let rules = l
                .apis
                .first()
                .map(|&i| gateway.snapshot.apis[i].connection_rules.clone())
                .unwrap_or_default();
            (b.local.port(), rules)
        })
        .collect()
}

/// Chooses where connection rules are enforced: the kernel when XDP loads (or must), at
/// accept otherwise. Announces the choice on stdout.
fn connection_plane(
    opts: &Options,
    locals: &[SocketAddr],
    port_rules: &[(u16, ringwall_config::ConnectionRules)],
) -> Result<(Option<KernelPlane>, Option<Arc<Admission>>), ServerError> {
    let has_rules = port_rules.iter().any(|(_, r)| !r.is_empty());
    let userspace = || Some(Arc::new(Admission::new(port_rules.to_vec())));
    let want_kernel = match opts.xdp {
        XdpSetting::Off => false,
        XdpSetting::Required => true,
        // Without rules there is nothing for the program to do on every packet.
        XdpSetting::Auto => has_rules,
    };
    if !want_kernel {
        announce(if has_rules {
            "connection-rules accept"
        } else {
            "connection-rules none"
        });
        return Ok((None, has_rules.then(userspace).flatten()));
    }
    let started = (|| {
        let ifaces = if opts.xdp_ifaces.is_empty() {
            xdp::interfaces_for(locals.iter().map(SocketAddr::ip))?
        } else {
            opts.xdp_ifaces.clone()
        };
        let mut plane = KernelPlane::start(&ifaces, opts.xdp_mode)?;
        plane.apply(port_rules)?;
        Ok::<_, XdpError>(plane)
    })();
    match started {
        Ok(plane) => {
            let at: Vec<String> = plane
                .attached
                .iter()
                .map(|(iface, how)| format!("{iface}:{how}"))
                .collect();
            announce(&format!("connection-rules xdp {}", at.join(",")));
            tracing::info!(interfaces = %at.join(","), "XDP program attached");
            Ok((Some(plane), None))
        }
        Err(e) if opts.xdp == XdpSetting::Required => Err(ServerError::XdpRequired(e)),
        Err(e) => {
            tracing::warn!(
                "XDP unavailable, enforcing connection rules at accept instead (same rules, \
                 higher cost): {e}"
            );
            announce("connection-rules accept");
            Ok((None, userspace()))
        }
    }
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

/// A listener's sockets, one per worker, and the address they got.
#[derive(Clone)]
struct Bound {
    key: ListenerKey,
    local: SocketAddr,
    fds: Arc<Vec<OwnedFd>>,
}

fn sockets_of(bound: &[Bound]) -> Sockets {
    Arc::new(
        bound
            .iter()
            .map(|b| (b.key.clone(), b.fds.clone()))
            .collect(),
    )
}

/// One socket per worker on the listener's address. A port of 0 is resolved by the
/// first socket, and the others join it. Announces the address on stdout.
fn bind_listener(gateway: &Gateway, l: &Listener, workers: usize) -> Result<Bound, ServerError> {
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
    let mut fds = Vec::with_capacity(workers);
    for _ in 0..workers {
        let s = reuseport_listener(addr).map_err(err)?;
        addr = s.local_addr().map_err(err)?;
        fds.push(OwnedFd::from(s));
    }
    announce(&format!("listening {addr} {apis}"));
    tracing::info!(%addr, apis, "listening");
    Ok(Bound {
        key: l.key.clone(),
        local: addr,
        fds: Arc::new(fds),
    })
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
