//! A real `redis-server` (installed by `cargo xtask setup`) on a free loopback port, for the
//! shared-storage tests: started, stopped and started again on the same port, killed on drop.
//! Ready means it answered `PING`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    /// A fresh server on a port the OS picked.
    pub fn start() -> RedisServer {
        let port = crate::free_port().port();
        let mut server = RedisServer { child: None, port };
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
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (cargo xtask setup installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pings() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
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
