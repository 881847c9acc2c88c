//! A real `redis-server` (installed by `cargo xtask setup`) on a free loopback port, for the
//! shared-storage tests: started, stopped and started again on the same port, killed on drop.
//! Ready means it answered `PING` (a TLS-only one: that it accepts connections, which it does
//! once loaded). Also a Redis Sentinel and a Redis Cluster of real nodes. Certificates for
//! TLS come from [`crate::tls::Pki`].

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::{Leaf, Pki};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// `--tls-*` arguments; empty for plain TCP.
    tls: Vec<String>,
}

impl RedisServer {
    /// A fresh server on a port the OS picked.
    pub fn start() -> RedisServer {
        RedisServer::with_tls(Vec::new())
    }

    /// A server that speaks only TLS, with `server` as its certificate; clients must present
    /// a certificate `ca` signed when `client_auth`.
    pub fn start_tls(ca: &Pki, server: &Leaf, client_auth: bool) -> RedisServer {
        let path = |p: &Path| p.display().to_string();
        RedisServer::with_tls(vec![
            "--tls-cert-file".into(),
            path(&server.crt),
            "--tls-key-file".into(),
            path(&server.key),
            "--tls-ca-cert-file".into(),
            path(&ca.ca_path()),
            "--tls-auth-clients".into(),
            if client_auth { "yes" } else { "no" }.into(),
        ])
    }

    fn with_tls(tls: Vec<String>) -> RedisServer {
        let port = crate::free_port().port();
        let mut server = RedisServer {
            child: None,
            port,
            tls,
        };
        server.restart();
        server
    }

    /// `host:port`, as `sharedStorage.redis.address` wants it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data goes with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        if self.tls.is_empty() {
            command.args(["--port", &port]);
        } else {
            command
                .args(["--port", "0", "--tls-port", &port])
                .args(&self.tls);
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (cargo xtask setup installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = || {
            if self.tls.is_empty() {
                pings(self.port)
            } else {
                TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            }
        };
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether the server on `port` answers `PING`.
fn pings(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut buf = [0u8; 7];
    s.set_read_timeout(Some(Duration::from_secs(1))).is_ok()
        && s.write_all(b"PING\r\n").is_ok()
        && s.read_exact(&mut buf).is_ok()
        && &buf == b"+PONG\r\n"
}

/// One inline command to the plain-TCP server on `port`; its answer as text (empty when it
/// did not answer).
pub fn ask(port: u16, command: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let mut buf = vec![0u8; 4096];
    if s.set_read_timeout(Some(Duration::from_secs(1))).is_err()
        || s.write_all(format!("{command}\r\n").as_bytes()).is_err()
    {
        return String::new();
    }
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real Redis Sentinel (`redis-server --sentinel`) watching one master, on a free loopback
/// port, killed on drop. Ready means it names the master.
pub struct RedisSentinel {
    child: Child,
    pub port: u16,
    /// Sentinel rewrites its configuration file, so it lives in a directory of its own.
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// A sentinel monitoring `master` under the name `name`.
    pub fn start(master: &RedisServer, name: &str) -> RedisSentinel {
        let port = crate::free_port().port();
        let dir = tempfile::tempdir().expect("sentinel dir");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {} 1\n",
                master.port
            ),
        )
        .expect("sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel (cargo xtask setup installs it)");
        let sentinel = RedisSentinel {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let want = format!("{}", master.port);
        while !sentinel.names_master(name, &want) {
            assert!(
                Instant::now() < deadline,
                "redis sentinel on {port} did not name master {name}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        sentinel
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether `SENTINEL get-master-addr-by-name name` answers with port `port`.
    fn names_master(&self, name: &str, port: &str) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let command = format!("SENTINEL get-master-addr-by-name {name}\r\n");
        let mut buf = [0u8; 256];
        if s.set_read_timeout(Some(Duration::from_secs(1))).is_err()
            || s.write_all(command.as_bytes()).is_err()
        {
            return false;
        }
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).contains(port)
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of real nodes (`--cluster-enabled yes`, no replicas) on free loopback
/// ports, joined by `redis-cli --cluster create` (which splits the 16,384 slots evenly);
/// killed on drop. Ready means every node reports `cluster_state:ok`.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    /// The nodes write their `nodes-<port>.conf` here.
    dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start(size: usize) -> RedisCluster {
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir: tempfile::tempdir().expect("cluster dir"),
        };
        for _ in 0..size {
            cluster.add_node();
        }
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.addresses())
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli (cargo xtask setup installs it)");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_until("report cluster_state:ok", |port| {
            ask(port, "CLUSTER INFO").contains("cluster_state:ok")
        });
        cluster
    }

    /// `host:port` of every node, as `sharedStorage.redis.addresses` wants them.
    pub fn addresses(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// How many keys each node holds.
    pub fn key_counts(&self) -> Vec<u64> {
        self.ports
            .iter()
            .map(|&port| {
                let answer = ask(port, "DBSIZE");
                let count = answer.trim().strip_prefix(':').and_then(|n| n.parse().ok());
                count.unwrap_or_else(|| panic!("DBSIZE on {port}: {answer:?}"))
            })
            .collect()
    }

    fn wait_until(&self, what: &str, ready: impl Fn(u16) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for &port in &self.ports {
            while !ready(port) {
                assert!(
                    Instant::now() < deadline,
                    "cluster node {port} did not {what}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts a node on a free port, with its cluster bus on another (by default the bus is
    /// the port plus 10,000, which nothing keeps free), and waits until it answers. Another
    /// process can take a port between the pick and the node's bind, and the node then
    /// exits: it starts again on other ports. A node is kept in `nodes` from its start, so
    /// that a panic here kills it with the others.
    fn add_node(&mut self) {
        let mut exits = Vec::new();
        for _ in 0..5 {
            let held = [0, 1].map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"));
            let [port, bus] = held.map(|l| l.local_addr().expect("local_addr").port());
            let node = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &bus.to_string()])
                .arg("--cluster-config-file")
                .arg(self.dir.path().join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(self.dir.path())
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (cargo xtask setup installs it)");
            self.nodes.push(node);
            let node = self.nodes.last_mut().expect("just pushed");
            // This node's answer, not that of another server that took the port.
            let ours = format!("process_id:{}\r\n", node.id());
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = node.try_wait().expect("the node's status") {
                    exits.push(format!("port {port}, bus {bus}: {status}"));
                    self.nodes.pop();
                    break;
                }
                if ask(port, "INFO server").contains(&ours) {
                    self.ports.push(port);
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster node {port} did not answer"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "no cluster node started in five tries: {}",
            exits.join("; ")
        )
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}
