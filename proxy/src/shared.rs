//! The process's client of `spec.sharedStorage` (Redis, the master a Redis Sentinel names,
//! or a Redis Cluster; over TLS if asked): what replicas share, today the quota of
//! clusterizable rate limits.
//!
//! One thread per process runs a small current-thread tokio runtime with one multiplexed
//! connection (a cluster connection routes each call by its keys' slot: a lease's keys share
//! a hash tag, hence a slot). Workers never wait on it: they hand it a [`Lease`] over a channel and its
//! `done` callback publishes the result (into the policy's atomics). Every call has a
//! [`TIMEOUT`]; a failed or slow call, or a failed health `PING`, counts as an outage: the
//! connection is dropped and, after a backoff that doubles with each failure, made again.
//! A new connection is used only once it passed a [`probe`] (a master, and a lease that
//! succeeds), which is also when the backoff is reset. [`Handle::is_up`] says `false`
//! meanwhile (so policies fall back without asking), one warning is logged when the outage
//! starts and one line when it ends. `ringwall_shared_storage_up` and
//! `ringwall_shared_storage_errors_total` show the same.
//!
//! The thread starts with the first [`Handle::start`] or [`Handle::lease`], so `validate`
//! never connects, and ends when the last handle is dropped (a reload that changed
//! `sharedStorage`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo,
    RedisConnectionInfo, RedisFuture, TlsCertificates, TlsMode,
};
use ringwall_config::{RedisTls, Secret, SharedStorage};
use tokio::sync::mpsc;

pub const UP: &str = "ringwall_shared_storage_up";
pub const ERRORS: &str = "ringwall_shared_storage_errors_total";

/// How long one call may take before the storage counts as unavailable.
pub const TIMEOUT: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often an idle connection is checked, so that an outage shows without traffic.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Reserves quota, for every key at once, atomically. `KEYS[i]` counts a window's requests;
/// `ARGV[3i-2..3i]` are the amount wanted, the window's maximum and its period (ms). A window
/// starts with its first grant (the key is created with the period as its TTL). A grant is at
/// most what is left and at most `max(1, ceil(max / 100))`: what one call can reserve and
/// leave unused is bounded. Returns `{granted, ttl ms, left}` per key.
const LEASE_SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local want = tonumber(ARGV[3 * i - 2])
  local max = tonumber(ARGV[3 * i - 1])
  local period = tonumber(ARGV[3 * i])
  local ttl = redis.call('PTTL', key)
  local used = 0
  if ttl > 0 then used = tonumber(redis.call('GET', key)) or 0 end
  local cap = math.max(1, math.ceil(max / 100))
  local grant = math.max(0, math.min(want, cap, max - used))
  if ttl <= 0 then
    ttl = period
    if grant > 0 then redis.call('SET', key, grant, 'PX', period) end
  elseif grant > 0 then
    redis.call('INCRBY', key, grant)
  end
  out[i] = {grant, ttl, math.max(0, max - used - grant)}
end
return out
";

/// The most one grant reserves of a window of `max`: what [`LEASE_SCRIPT`] caps it at.
pub fn grant_cap(max: u64) -> u64 {
    max.div_ceil(100).max(1)
}

/// A request for quota.
pub struct Window {
    /// The Redis key counting the window.
    pub key: String,
    pub want: u64,
    pub max: u64,
    /// Milliseconds.
    pub period: u64,
}

/// What Redis granted for one [`Window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u64,
    /// Milliseconds left in the window when Redis ran the script.
    pub ttl: u64,
    /// What is left in the window for the whole fleet after this grant.
    pub left: u64,
}

/// The storage did not answer (down, slow, or never reached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// Called once with the grants (in the order of the windows) and the instant the request
/// was sent, which is before Redis ran it.
pub type Done = Box<dyn FnOnce(Result<Vec<Grant>, Unavailable>, Instant) + Send>;

/// A lease request. Its `done` is called exactly once: with the answer, or with
/// [`Unavailable`] however the request is lost (even when it is dropped unsent).
pub struct Lease {
    pub windows: Vec<Window>,
    done: Option<Done>,
}

impl Lease {
    pub fn new(windows: Vec<Window>, done: Done) -> Lease {
        Lease {
            windows,
            done: Some(done),
        }
    }

    fn finish(mut self, result: Result<Vec<Grant>, Unavailable>, sent: Instant) {
        if let Some(done) = self.done.take() {
            done(result, sent);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(Err(Unavailable), Instant::now());
        }
    }
}

/// The process's handle on the shared storage; clones share one client.
#[derive(Clone)]
pub struct Handle(Arc<Inner>);

struct Inner {
    storage: SharedStorage,
    jobs: OnceLock<mpsc::UnboundedSender<Lease>>,
    state: Arc<State>,
}

/// What the client thread publishes.
#[derive(Default)]
struct State {
    up: AtomicBool,
    connects: AtomicU64,
    outages: AtomicU64,
    recoveries: AtomicU64,
}

/// What the client has done so far, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Connections attempted.
    pub connects: u64,
    /// Outages begun (one warning each).
    pub outages: u64,
    /// Outages ended (one line each).
    pub recoveries: u64,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("storage", &self.0.storage)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Handle {
    /// A client of `storage` that connects when first used.
    pub fn new(storage: SharedStorage) -> Handle {
        Handle(Arc::new(Inner {
            storage,
            jobs: OnceLock::new(),
            state: Arc::default(),
        }))
    }

    /// Whether `other` is a clone of this handle (one client).
    pub fn same(&self, other: &Handle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub fn storage(&self) -> &SharedStorage {
        &self.0.storage
    }

    /// Starts the client thread, if it is not running yet.
    pub fn start(&self) {
        self.sender();
    }

    /// Whether the last call (or health check) succeeded.
    pub fn is_up(&self) -> bool {
        self.0.state.up.load(SeqCst)
    }

    pub fn stats(&self) -> Stats {
        let state = &self.0.state;
        Stats {
            connects: state.connects.load(SeqCst),
            outages: state.outages.load(SeqCst),
            recoveries: state.recoveries.load(SeqCst),
        }
    }

    /// Sends a lease request; its `done` runs on the client thread.
    pub fn lease(&self, lease: Lease) {
        if let Some(tx) = self.sender() {
            // A send to a stopped thread hands the lease back, and dropping it reports it.
            let _ = tx.send(lease);
        }
    }

    fn sender(&self) -> Option<&mpsc::UnboundedSender<Lease>> {
        let tx = self.0.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let storage = self.0.storage.clone();
            let state = self.0.state.clone();
            let spawned = std::thread::Builder::new()
                .name("ringwall-shared".into())
                .spawn(move || client_thread(&storage, &state, rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the shared-storage client");
            }
            tx
        });
        Some(tx)
    }
}

fn client_thread(storage: &SharedStorage, state: &State, jobs: mpsc::UnboundedReceiver<Lease>) {
    // The redis crate builds its rustls configs from the process's default provider: make it
    // ring, the one the rest of Ringwall uses (a provider already installed stays).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the shared-storage client");
            return;
        }
    };
    runtime.block_on(serve(storage, state, jobs));
}

/// Outage bookkeeping: one log line at each edge, the gauge, the error count and the backoff.
/// The counts change before `up` does, so that whoever sees the new state sees them.
struct Health<'s> {
    storage: &'s SharedStorage,
    state: &'s State,
    /// Whether an outage is under way (so far: the first connect counts as one if it fails).
    outage: bool,
    /// The wait before the next connect; reset only once a connection has proved itself.
    backoff: Duration,
    up: metrics::Gauge,
    errors: metrics::Counter,
}

impl Health<'_> {
    /// A new connection answered its probe: the storage is usable.
    fn proven(&mut self) {
        self.backoff = MIN_BACKOFF;
        let storage = describe(self.storage);
        if self.outage {
            self.state.recoveries.fetch_add(1, SeqCst);
            tracing::info!(%storage, "shared storage is back");
        } else {
            tracing::info!(%storage, "shared storage connected");
        }
        self.outage = false;
        self.up.set(1.0);
        self.state.up.store(true, SeqCst);
    }

    fn failed(&mut self, error: &dyn std::fmt::Display) {
        self.errors.increment(1);
        if !self.outage {
            self.state.outages.fetch_add(1, SeqCst);
            tracing::warn!(storage = %describe(self.storage), %error,
                "shared storage unavailable; policies fall back until it is back");
            self.outage = true;
        }
        self.up.set(0.0);
        self.state.up.store(false, SeqCst);
    }
}

/// Connects, serves, and after any failure (of a connect, a probe, a call or a health
/// check) waits out the backoff before connecting again: a Redis that accepts connections
/// but refuses the script (a replica, out of memory) is retried at the backoff's pace, not
/// in a loop.
async fn serve(storage: &SharedStorage, state: &State, mut jobs: mpsc::UnboundedReceiver<Lease>) {
    let mut health = Health {
        storage,
        state,
        outage: false,
        backoff: MIN_BACKOFF,
        up: metrics::gauge!(UP),
        errors: metrics::counter!(ERRORS),
    };
    health.up.set(0.0);
    let script = Arc::new(redis::Script::new(LEASE_SCRIPT));
    loop {
        state.connects.fetch_add(1, SeqCst);
        let error = match connect(storage).await {
            Ok(conn) => match run(conn, &script, &mut jobs, &mut health).await {
                Some(error) => error,
                None => return,
            },
            Err(e) => e.to_string(),
        };
        health.failed(&error);
        // Wait out the backoff, answering requests meanwhile.
        let retry = tokio::time::sleep(health.backoff);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => job.finish(Err(Unavailable), Instant::now()),
                    None => return,
                },
                () = &mut retry => break,
            }
        }
        health.backoff = (health.backoff * 2).min(MAX_BACKOFF);
    }
}

/// Serves on `conn` once it passed [`probe`]; the reason it failed, or `None` when the last
/// handle is gone.
async fn run(
    mut conn: Conn,
    script: &Arc<redis::Script>,
    jobs: &mut mpsc::UnboundedReceiver<Lease>,
    health: &mut Health<'_>,
) -> Option<String> {
    if let Err(e) = probe(&mut conn, script).await {
        return Some(e);
    }
    health.proven();
    let mut calls = tokio::task::JoinSet::new();
    let mut check = tokio::time::interval(HEALTH_INTERVAL);
    check.tick().await;
    let error = loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => {
                    calls.spawn(call(conn.clone(), script.clone(), job));
                }
                None => return None,
            },
            Some(done) = calls.join_next() => match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break e,
                Err(e) => break e.to_string(),
            },
            _ = check.tick() => {
                let ping = redis::cmd("PING");
                match tokio::time::timeout(TIMEOUT, ping.query_async::<()>(&mut conn)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break e.to_string(),
                    Err(_) => break "health check timed out".to_owned(),
                }
            }
        }
    };
    // Calls still in flight finish on their own (their leases report when dropped).
    calls.detach_all();
    Some(error)
}

/// The key a new connection's probe lease counts in (a one-second window), deleted after.
const PROBE_KEY: &str = "ringwall:probe";

/// Whether a new connection can serve leases: a single Redis must be a master (`ROLE`, when
/// the ACL allows it), and a lease on [`PROBE_KEY`] must succeed in time. A connection can
/// succeed where every lease fails (a replica, a Redis out of memory or unable to persist, an
/// ACL without `EVALSHA`): only a lease that writes tells.
async fn probe(conn: &mut Conn, script: &redis::Script) -> Result<(), String> {
    if let Conn::Single(single) = conn {
        let role = redis::cmd("ROLE");
        match tokio::time::timeout(TIMEOUT, role.query_async::<redis::Value>(single)).await {
            Ok(Ok(redis::Value::Array(fields))) => match fields.first() {
                Some(redis::Value::BulkString(role)) if role == b"master" => {}
                Some(redis::Value::BulkString(role)) => {
                    let role = String::from_utf8_lossy(role);
                    return Err(format!("the Redis is a {role}, not a master"));
                }
                _ => return Err("the Redis answered ROLE with no role".to_owned()),
            },
            Ok(Ok(_)) => return Err("the Redis answered ROLE with no role".to_owned()),
            // The ACL may not allow ROLE: the probe lease still finds a replica out.
            Ok(Err(e)) if e.code() == Some("NOPERM") => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("ROLE timed out".to_owned()),
        }
    }
    let mut invocation = script.prepare_invoke();
    invocation.key(PROBE_KEY).arg(1).arg(1_000_000).arg(1000);
    let lease = invocation.invoke_async::<Vec<(i64, i64, i64)>>(conn);
    match tokio::time::timeout(TIMEOUT, lease).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("the probe lease timed out".to_owned()),
    }
    // Leave no key behind; best effort (the ACL may not allow DEL), as it expires in a second.
    let mut del = redis::cmd("DEL");
    del.arg(PROBE_KEY);
    let _ = tokio::time::timeout(TIMEOUT, del.query_async::<()>(conn)).await;
    Ok(())
}

/// One lease call; `Err` (with the reason) when the connection should be made again.
async fn call(mut conn: Conn, script: Arc<redis::Script>, lease: Lease) -> Result<(), String> {
    let sent = Instant::now();
    let mut invocation = script.prepare_invoke();
    for w in &lease.windows {
        invocation.key(&w.key).arg(w.want).arg(w.max).arg(w.period);
    }
    let answer = tokio::time::timeout(
        TIMEOUT,
        invocation.invoke_async::<Vec<(i64, i64, i64)>>(&mut conn),
    )
    .await;
    match answer {
        Ok(Ok(grants)) if grants.len() == lease.windows.len() => {
            let grants = grants
                .into_iter()
                .map(|(granted, ttl, left)| Grant {
                    granted: granted.max(0).unsigned_abs(),
                    ttl: ttl.max(0).unsigned_abs(),
                    left: left.max(0).unsigned_abs(),
                })
                .collect();
            lease.finish(Ok(grants), sent);
            Ok(())
        }
        Ok(Ok(_)) => {
            lease.finish(Err(Unavailable), sent);
            Err("the lease script answered with the wrong number of grants".to_owned())
        }
        Ok(Err(e)) => {
            lease.finish(Err(Unavailable), sent);
            Err(e.to_string())
        }
        Err(_) => {
            lease.finish(Err(Unavailable), sent);
            Err("a lease timed out".to_owned())
        }
    }
}

/// Where the storage is, for log lines (no credentials).
fn describe(storage: &SharedStorage) -> String {
    match storage {
        SharedStorage::Redis(r) => format!("redis {}", r.address),
        SharedStorage::Sentinel(s) => {
            format!("sentinel {} {}", s.master_name, s.addresses.join(","))
        }
        SharedStorage::Cluster(c) => format!("redis cluster {}", c.addresses.join(",")),
    }
}

/// A connection to a single Redis or to a cluster; the rest of the client does not tell.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("`{0}` is not a host:port address")]
    Address(String),
    #[error("cannot read `{0}`: {1}")]
    File(String, std::io::Error),
    #[error("no sentinel knows master `{0}`")]
    NoMaster(String),
    #[error("timed out")]
    Timeout,
}

async fn connect(storage: &SharedStorage) -> Result<Conn, ConnectError> {
    let (address, username, password, db, tls) = match storage {
        SharedStorage::Redis(r) => (
            r.address.clone(),
            &r.username,
            &r.password,
            r.db,
            r.tls.as_ref(),
        ),
        SharedStorage::Sentinel(s) => (master_of(s).await?, &s.username, &s.password, s.db, None),
        SharedStorage::Cluster(c) => return cluster(c).await.map(Conn::Cluster),
    };
    let settings = credentials(username, password).set_db(i64::from(db));
    open(&address, settings, tls).await.map(Conn::Single)
}

fn credentials(username: &Option<String>, password: &Option<Secret>) -> RedisConnectionInfo {
    let mut settings = RedisConnectionInfo::default();
    if let Some(user) = username {
        settings = settings.set_username(user);
    }
    if let Some(password) = password {
        settings = settings.set_password(&password.0);
    }
    settings
}

async fn open(
    address: &str,
    settings: RedisConnectionInfo,
    tls: Option<&RedisTls>,
) -> Result<MultiplexedConnection, ConnectError> {
    let (host, port) = host_port(address).ok_or_else(|| ConnectError::Address(address.into()))?;
    let mut config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    let client = match tls {
        None => {
            let info = ConnectionAddr::Tcp(host, port).into_connection_info()?;
            redis::Client::open(info.set_redis_settings(settings))?
        }
        Some(tls) => {
            // The crate checks the certificate against the host it connects to: to check it
            // against `serverName`, connect to that name and resolve it to the address.
            let name = match &tls.server_name {
                Some(name) if *name != host => {
                    config = config.set_dns_resolver(Alias {
                        name: name.clone(),
                        address: (host, port),
                    });
                    name.clone()
                }
                _ => host,
            };
            let addr = ConnectionAddr::TcpTls {
                host: name,
                port,
                insecure: tls.skip_verify,
                tls_params: None,
            };
            let info = addr.into_connection_info()?.set_redis_settings(settings);
            redis::Client::build_with_tls(info, certificates(tls)?)?
        }
    };
    let connecting = client.get_multiplexed_async_connection_with_config(&config);
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(ConnectError::Timeout),
    }
}

/// A connection to a Redis Cluster through its seed nodes; it follows the slots itself.
async fn cluster(cluster: &ringwall_config::Cluster) -> Result<ClusterConnection, ConnectError> {
    let mut seeds = Vec::with_capacity(cluster.addresses.len());
    for address in &cluster.addresses {
        let (host, port) =
            host_port(address).ok_or_else(|| ConnectError::Address(address.clone()))?;
        seeds.push(ConnectionAddr::Tcp(host, port).into_connection_info()?);
    }
    let mut builder = ClusterClient::builder(seeds)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(TIMEOUT);
    if let Some(user) = &cluster.username {
        builder = builder.username(user);
    }
    if let Some(password) = &cluster.password {
        builder = builder.password(&password.0);
    }
    if let Some(tls) = &cluster.tls {
        let mode = if tls.skip_verify {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        };
        builder = builder.tls(mode).certs(certificates(tls)?);
    }
    let client = builder.build()?;
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection()).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(ConnectError::Timeout),
    }
}

/// `trustedCA` and the client certificate, read at every connect (so a renewed file is
/// picked up at the next reconnect). Without `trustedCA` the system's roots are trusted.
fn certificates(tls: &RedisTls) -> Result<TlsCertificates, ConnectError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| ConnectError::File(path.display().to_string(), e))
    };
    let root_cert = tls.trusted_ca.as_deref().map(read).transpose()?;
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// Resolves `name` to `address`, and any other host as usual.
struct Alias {
    name: String,
    address: (String, u16),
}

impl redis::io::AsyncDNSResolver for Alias {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let target = if host == self.name {
                (self.address.0.as_str(), self.address.1)
            } else {
                (host, port)
            };
            let found = tokio::net::lookup_host(target).await?;
            Ok(Box::new(found) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

/// The master's address, from the first sentinel that knows it. A sentinel is asked
/// without credentials, and again with the master's `username` and `password` if it
/// requires them (`NOAUTH`): Flex's sentinel block has no credentials of its own.
async fn master_of(sentinel: &ringwall_config::Sentinel) -> Result<String, ConnectError> {
    let mut last = ConnectError::NoMaster(sentinel.master_name.clone());
    for address in &sentinel.addresses {
        let mut answer = ask_master(address, sentinel, RedisConnectionInfo::default()).await;
        let refused = matches!(&answer, Err(ConnectError::Redis(e)) if e.code() == Some("NOAUTH"));
        if refused && sentinel.password.is_some() {
            let settings = credentials(&sentinel.username, &sentinel.password);
            answer = ask_master(address, sentinel, settings).await;
        }
        match answer {
            Ok(Some((host, port))) if host.contains(':') => return Ok(format!("[{host}]:{port}")),
            Ok(Some((host, port))) => return Ok(format!("{host}:{port}")),
            Ok(None) => last = ConnectError::NoMaster(sentinel.master_name.clone()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `SENTINEL get-master-addr-by-name` to the sentinel at `address`.
async fn ask_master(
    address: &str,
    sentinel: &ringwall_config::Sentinel,
    settings: RedisConnectionInfo,
) -> Result<Option<(String, u16)>, ConnectError> {
    let mut conn = open(address, settings, None).await?;
    let mut ask = redis::cmd("SENTINEL");
    ask.arg("get-master-addr-by-name")
        .arg(&sentinel.master_name);
    Ok(ask.query_async(&mut conn).await?)
}

/// `host:port` or `[v6]:port`.
fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host.to_owned(), port.parse().ok()?))
}

#[cfg(test)]
pub(crate) mod tests;
