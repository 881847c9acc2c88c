//! Against a real `redis-server` (installed by `cargo xtask setup`) on a free loopback port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ringwall_config::{Redis, Secret, SharedStorage};

use super::*;

/// A `redis-server` that is killed when dropped.
pub(crate) struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub(crate) fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with more command-line settings (`--requirepass x`).
    fn start_with(settings: &[&str]) -> RedisServer {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(settings)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (cargo xtask setup installs it)");
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.pings() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    /// Whether it answers (`-NOAUTH` counts: it is up).
    fn pings(&self) -> bool {
        let answer = ask(self.port, "PING");
        answer == "+PONG\r\n" || answer.starts_with("-NOAUTH")
    }

    pub(crate) fn storage(&self) -> SharedStorage {
        RedisServer::storage_at(self.port)
    }

    /// The settings of a plain Redis on `port` of 127.0.0.1.
    pub(crate) fn storage_at(port: u16) -> SharedStorage {
        SharedStorage::Redis(Redis {
            address: format!("127.0.0.1:{port}"),
            username: None,
            password: None,
            db: 0,
            tls: None,
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One inline command to the server on `port`; its answer (empty when it did not answer).
fn ask(port: u16, command: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let mut buf = [0u8; 1024];
    if s.set_read_timeout(Some(Duration::from_secs(1))).is_err()
        || s.write_all(format!("{command}\r\n").as_bytes()).is_err()
    {
        return String::new();
    }
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A Redis Sentinel watching `master` as `mymaster`, with `settings` (configuration lines);
/// killed on drop. Ready means it names the master.
struct Sentinel {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Sentinel {
    fn start(master: &RedisServer, settings: &str) -> Sentinel {
        let port = free_port();
        // Sentinel rewrites its configuration file: it gets a directory of its own.
        let dir = std::env::temp_dir().join(format!("ringwall-sentinel-{port}"));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let conf = dir.join("sentinel.conf");
        let monitor = format!(
            "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {} 1\n{settings}",
            master.port
        );
        std::fs::write(&conf, monitor).expect("sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        Sentinel { child, port, dir }
    }

    fn storage(&self, password: Option<&str>) -> SharedStorage {
        SharedStorage::Sentinel(ringwall_config::Sentinel {
            addresses: vec![format!("127.0.0.1:{}", self.port)],
            master_name: "mymaster".into(),
            username: None,
            password: password.map(|p| Secret(p.into())),
            db: 0,
        })
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `handle` reports `up`.
pub(crate) fn wait_up(handle: &Handle, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.is_up() != up {
        assert!(Instant::now() < deadline, "storage never became up={up}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One lease, waited for.
fn lease(handle: &Handle, windows: Vec<Window>) -> Result<Vec<Grant>, Unavailable> {
    let (tx, rx) = mpsc::channel();
    handle.lease(Lease::new(
        windows,
        Box::new(move |result, _| {
            let _ = tx.send(result);
        }),
    ));
    rx.recv_timeout(Duration::from_secs(5)).expect("an answer")
}

fn window(key: &str, want: u64, max: u64) -> Window {
    Window {
        key: key.into(),
        want,
        max,
        period: 60_000,
    }
}

#[test]
fn grants_are_capped_and_never_exceed_the_window() {
    let redis = RedisServer::start();
    let handle = Handle::new(redis.storage());
    handle.start();
    wait_up(&handle, true);
    // A grant is at most 1% of the window (at least 1) and at most what is left.
    let first = lease(&handle, vec![window("w", 50, 1000), window("v", 5, 3)]).expect("up");
    assert_eq!((first[0].granted, first[0].left), (10, 990));
    assert!((59_000..=60_000).contains(&first[0].ttl), "{first:?}");
    assert_eq!((first[1].granted, first[1].left), (1, 2));
    for _ in 0..2 {
        assert_eq!(
            lease(&handle, vec![window("v", 5, 3)]).expect("up")[0].granted,
            1
        );
    }
    let full = lease(&handle, vec![window("v", 5, 3)]).expect("up");
    assert_eq!((full[0].granted, full[0].left), (0, 0));
}

/// Many threads leasing at once from one window are granted exactly its maximum.
#[test]
fn concurrent_leases_never_grant_more_than_the_maximum() {
    let redis = RedisServer::start();
    let handles: Vec<Handle> = (0..3).map(|_| Handle::new(redis.storage())).collect();
    for h in &handles {
        h.start();
        wait_up(h, true);
    }
    let granted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let (handle, granted) = (handles[i % 3].clone(), granted.clone());
            std::thread::spawn(move || {
                for _ in 0..60 {
                    let g = lease(&handle, vec![window("race", 7, 500)]).expect("up");
                    granted.fetch_add(g[0].granted, SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(granted.load(SeqCst), 500);
}

#[test]
fn an_outage_is_reported_and_recovery_needs_no_restart() {
    let redis = RedisServer::start();
    let port = redis.port;
    let handle = Handle::new(redis.storage());
    handle.start();
    wait_up(&handle, true);
    drop(redis);
    // The next call (or the health check) notices.
    let _ = lease(&handle, vec![window("k", 1, 10)]);
    wait_up(&handle, false);
    assert_eq!(lease(&handle, vec![window("k", 1, 10)]), Err(Unavailable));
    // Back on the same port: the client reconnects by itself.
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let redis = RedisServer { child, port };
    wait_up(&handle, true);
    let stats = handle.stats();
    assert_eq!((stats.outages, stats.recoveries), (1, 1), "{stats:?}");
    assert_eq!(
        lease(&handle, vec![window("k", 1, 10)]).expect("up")[0].granted,
        1
    );
    drop(redis);
}

/// Watches `handle` for `window`: how many connects it made.
fn connects_during(handle: &Handle, window: Duration) -> u64 {
    let before = handle.stats().connects;
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert!(!handle.is_up(), "up against a Redis that refuses leases");
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.stats().connects - before
}

/// A Redis that accepts connections but refuses every write (out of memory): one outage,
/// reconnects at the backoff's pace (50 ms doubling: 5 or 6 in 1.5 s), never up; once it
/// has memory again, one recovery.
#[test]
fn a_redis_that_refuses_leases_is_one_outage_retried_with_backoff() {
    let redis = RedisServer::start();
    assert!(ask(redis.port, "CONFIG SET maxmemory-policy noeviction").starts_with("+OK"));
    assert!(ask(redis.port, "CONFIG SET maxmemory 1").starts_with("+OK"));
    let handle = Handle::new(redis.storage());
    handle.start();
    assert_eq!(lease(&handle, vec![window("k", 1, 10)]), Err(Unavailable));
    let connects = connects_during(&handle, Duration::from_millis(1500));
    assert!((2..=8).contains(&connects), "{connects} connects in 1.5 s");
    let stats = handle.stats();
    assert_eq!((stats.outages, stats.recoveries), (1, 0), "{stats:?}");

    assert!(ask(redis.port, "CONFIG SET maxmemory 0").starts_with("+OK"));
    wait_up(&handle, true);
    let stats = handle.stats();
    assert_eq!((stats.outages, stats.recoveries), (1, 1), "{stats:?}");
    let granted = lease(&handle, vec![window("k", 1, 10)]).expect("up");
    assert_eq!(granted[0].granted, 1);
}

/// A replica (say, an `address` that names the wrong node) is refused by its `ROLE`: one
/// outage, retried with backoff, never up.
#[test]
fn a_replica_is_not_used() {
    let master = RedisServer::start();
    let replica = RedisServer::start();
    let command = format!("REPLICAOF 127.0.0.1 {}", master.port);
    assert!(ask(replica.port, &command).starts_with("+OK"));
    let handle = Handle::new(replica.storage());
    handle.start();
    let connects = connects_during(&handle, Duration::from_millis(1500));
    assert!((2..=8).contains(&connects), "{connects} connects in 1.5 s");
    let stats = handle.stats();
    assert_eq!((stats.outages, stats.recoveries), (1, 0), "{stats:?}");
}

/// An ACL that refuses `ROLE` (and `DEL`) but allows the script and what it calls does not
/// keep the storage down.
#[test]
fn an_acl_without_role_is_enough() {
    let redis = RedisServer::start();
    let user = "ACL SETUSER ringwall on >pw ~* +ping +eval +evalsha +script +client +hello \
                +pttl +get +set +incrby";
    assert!(ask(redis.port, user).starts_with("+OK"));
    let SharedStorage::Redis(mut settings) = redis.storage() else {
        unreachable!("a single Redis");
    };
    settings.username = Some("ringwall".into());
    settings.password = Some(Secret("pw".into()));
    let handle = Handle::new(SharedStorage::Redis(settings));
    handle.start();
    wait_up(&handle, true);
    let granted = lease(&handle, vec![window("k", 1, 10)]).expect("up");
    assert_eq!(granted[0].granted, 1);
}

/// A sentinel with `requirepass` is asked with the configured credentials, which the master
/// shares.
#[test]
fn a_sentinel_that_requires_a_password_gets_it() {
    let master = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let sentinel = Sentinel::start(
        &master,
        "sentinel auth-pass mymaster s3cret\nrequirepass s3cret\n",
    );
    let handle = Handle::new(sentinel.storage(Some("s3cret")));
    handle.start();
    wait_up(&handle, true);
    let granted = lease(&handle, vec![window("k", 1, 10)]).expect("up");
    assert_eq!(granted[0].granted, 1);
    // Without the password, the sentinel refuses: an outage, not a panic or a spin.
    let refused = Handle::new(sentinel.storage(None));
    refused.start();
    assert_eq!(lease(&refused, vec![window("k", 1, 10)]), Err(Unavailable));
    assert!(!refused.is_up());
}

#[test]
fn addresses_split_into_host_and_port() {
    assert_eq!(host_port("redis:6379"), Some(("redis".into(), 6379)));
    assert_eq!(host_port("[::1]:7000"), Some(("::1".into(), 7000)));
    assert_eq!(host_port("redis"), None);
    assert_eq!(grant_cap(1), 1);
    assert_eq!(grant_cap(300), 3);
    assert_eq!(grant_cap(301), 4);
}
