//! Against a real `redis-server` (installed by `cargo xtask setup`) on a free loopback port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ringwall_config::{Redis, SharedStorage};

use super::*;

/// A `redis-server` that is killed when dropped.
pub(crate) struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub(crate) fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
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

    fn pings(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.set_read_timeout(Some(Duration::from_secs(1))).is_ok()
            && s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && &buf == b"+PONG\r\n"
    }

    pub(crate) fn storage(&self) -> SharedStorage {
        SharedStorage::Redis(Redis {
            address: format!("127.0.0.1:{}", self.port),
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
    assert_eq!(
        lease(&handle, vec![window("k", 1, 10)]).expect("up")[0].granted,
        1
    );
    drop(redis);
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
