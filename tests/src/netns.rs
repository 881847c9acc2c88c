//! Network labs for the kernel-plane tests: two network namespaces the test creates (the
//! gateway's host and a client host) joined by a veth pair, with addresses from the
//! benchmarking range 198.18.0.0/15 that exist only inside those namespaces. Dropping the
//! lab deletes both namespaces, and the veth pair with them. Needs root.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The gateway's address inside its namespace.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Client source addresses, all on the client host.
pub const CLIENT_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 0, 2),
    Ipv4Addr::new(198, 18, 0, 3),
    Ipv4Addr::new(198, 18, 1, 4),
];

pub struct NetLab {
    pub gateway_ns: String,
    pub client_ns: String,
    /// The gateway side of the veth pair, inside `gateway_ns`.
    pub gateway_if: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetLab {
    pub fn new() -> NetLab {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the kernel-plane tests create network namespaces and attach XDP: run them as root"
        );
        let id = format!(
            "{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let lab = NetLab {
            gateway_ns: format!("rwgw{id}"),
            client_ns: format!("rwcl{id}"),
            gateway_if: format!("rwg{id}"),
        };
        let client_if = format!("rwc{id}");
        ip(&["netns", "add", &lab.gateway_ns]);
        ip(&["netns", "add", &lab.client_ns]);
        ip(&[
            "link",
            "add",
            &lab.gateway_if,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
        ]);
        ip(&["link", "set", &lab.gateway_if, "netns", &lab.gateway_ns]);
        ip(&["link", "set", &client_if, "netns", &lab.client_ns]);
        let gw = format!("{GATEWAY_IP}/16");
        ip(&[
            "-n",
            &lab.gateway_ns,
            "addr",
            "add",
            &gw,
            "dev",
            &lab.gateway_if,
        ]);
        for addr in CLIENT_IPS {
            let a = format!("{addr}/16");
            ip(&["-n", &lab.client_ns, "addr", "add", &a, "dev", &client_if]);
        }
        for (ns, dev) in [
            (&lab.gateway_ns, &lab.gateway_if),
            (&lab.client_ns, &client_if),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        lab
    }

    /// An open handle on a namespace, for `setns`.
    pub fn ns_file(name: &str) -> File {
        File::open(format!("/run/netns/{name}"))
            .unwrap_or_else(|e| panic!("open network namespace {name}: {e}"))
    }

    /// Runs `f` on a thread that lives in the client namespace: every socket it opens
    /// is on the client host.
    pub fn on_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        Self::on(&self.client_ns, f)
    }

    /// Runs `f` on a thread in the gateway's namespace (to start an origin there).
    pub fn on_gateway<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        Self::on(&self.gateway_ns, f)
    }

    fn on<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = Self::ns_file(ns);
        thread::spawn(move || {
            enter(&ns).expect("setns into the client namespace");
            f()
        })
        .join()
        .expect("client thread")
    }
}

impl Default for NetLab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end inside it, and so the pair.
        for ns in [&self.gateway_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Moves the calling thread into the network namespace `ns`.
pub fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: setns on a valid namespace descriptor affects only the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connects to `to` from source address `from` (a client host address), within `timeout`.
pub fn connect_from(from: Ipv4Addr, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    // SAFETY: plain socket(2)/bind(2) on a descriptor created and owned here; the
    // sockaddr is a fully initialised sockaddr_in.
    let fd = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(from).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(owned.as_raw_fd(), (&raw const sa).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        owned
    };
    // Connect with a deadline through std: hand the bound socket over.
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(true)?;
    let SocketAddr::V4(to) = to else {
        return Err(io::Error::other("IPv4 only"));
    };
    connect_nonblocking(&stream, to, timeout)?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn connect_nonblocking(stream: &TcpStream, to: SocketAddrV4, timeout: Duration) -> io::Result<()> {
    // SAFETY: connect(2) and poll(2) on the stream's own descriptor with initialised
    // arguments; getsockopt writes an int into `err`.
    unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(*to.ip()).to_be();
        sa.sin_port = to.port().to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let fd = stream.as_raw_fd();
        if libc::connect(fd, (&raw const sa).cast(), len) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        match libc::poll(&mut pfd, 1, ms) {
            0 => return Err(io::ErrorKind::TimedOut.into()),
            n if n < 0 => return Err(io::Error::last_os_error()),
            _ => {}
        }
        let mut err: libc::c_int = 0;
        let mut elen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &mut elen,
        );
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    Ok(())
}
