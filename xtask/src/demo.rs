//! `cargo xtask run`: Ringwall on `examples/` in front of a demo upstream that lives in this
//! process (std::net and a thread per connection), so that a fresh clone answers `curl`
//! with nothing else to start. The upstream answers every request with 200 and a short JSON
//! body naming the method and path it received, which shows what the gateway forwarded.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{build, proc, root};

/// Where examples/gateway.yaml's `demo-upstream` Service points.
const UPSTREAM_ADDR: &str = "127.0.0.1:9080";
/// The base path of the `demo` ApiInstance in examples/gateway.yaml.
const DEMO_BASE_PATH: &str = "/api";

const MAX_HEAD_BYTES: usize = 32 * 1024;
const MAX_BODY_BYTES: usize = 1024 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(extra_args: &[String]) -> Result<ExitCode> {
    let ringwall_bin = build::all()?;
    let upstream = DemoUpstream::start(UPSTREAM_ADDR)?;
    println!("demo upstream: http://{UPSTREAM_ADDR}");
    proc::catch_signals();

    let mut cmd = Command::new(&ringwall_bin);
    cmd.current_dir(root())
        .args(["run", "--config", "examples/"])
        .args(extra_args)
        .stdout(Stdio::piped());
    let mut ringwall = proc::Server::spawn("ringwall", &mut cmd)?;
    let stdout = ringwall.child().stdout.take();
    let echo = thread::spawn(move || stdout.map(echo_stdout));

    // Ringwall is in its own process group, so each signal reaches it once, from here.
    let status = loop {
        if let Some(signal) = proc::take_signal() {
            proc::kill(ringwall.child().id(), signal);
        }
        if let Some(status) = ringwall.child().try_wait()? {
            break status;
        }
        thread::sleep(proc::POLL);
    };
    let _ = echo.join();
    upstream.stop();
    println!("ringwall exited ({status}); demo upstream stopped");
    let code = status
        .code()
        .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
        .unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Passes ringwall's stdout through and, once it is `ready`, says what to curl.
fn echo_stdout(stdout: impl Read) {
    let mut listening = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        println!("{line}");
        if let Some(addr) = listening_addr(&line) {
            listening.push(addr.to_owned());
        }
        if line.starts_with("ready") {
            for addr in &listening {
                println!("try: curl http://{addr}{DEMO_BASE_PATH}/hello");
            }
        }
        let _ = io::stdout().flush();
    }
}

/// The address of a `listening 127.0.0.1:8081 api1,api2` line.
fn listening_addr(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("listening"), Some(addr)) => Some(addr),
        _ => None,
    }
}

// === impl DemoUpstream ===

struct DemoUpstream {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: JoinHandle<()>,
}

impl DemoUpstream {
    fn start(addr: &str) -> Result<DemoUpstream> {
        let listener = TcpListener::bind(addr).with_context(|| {
            format!("cannot listen on {addr} for the demo upstream (is something else using it?)")
        })?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    thread::spawn(move || serve(stream));
                }
            }
        });
        Ok(DemoUpstream {
            addr,
            stopping,
            acceptor,
        })
    }

    /// Stops accepting; connections still open end with the process.
    fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the blocking accept so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = self.acceptor.join();
    }
}

/// One client connection: keep-alive and pipelining, Content-Length framing.
fn serve(mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        match parse_request(&buf) {
            Ok(Some(request)) if buf.len() >= request.head_len + request.body_len => {
                let response = respond(&request);
                stream.write_all(&response)?;
                if !request.keep_alive {
                    return Ok(());
                }
                buf.drain(..request.head_len + request.body_len);
                continue;
            }
            Ok(_) if buf.len() > MAX_HEAD_BYTES + MAX_BODY_BYTES => {
                return stream.write_all(&error(413, "request too large"));
            }
            Ok(_) => {}
            Err(problem) => return stream.write_all(&error(400, problem)),
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..read]);
    }
}

#[derive(Debug, PartialEq)]
struct Request {
    method: String,
    path: String,
    head_len: usize,
    body_len: usize,
    keep_alive: bool,
}

/// The request at the start of `buf`: `Ok(None)` while its head is incomplete.
fn parse_request(buf: &[u8]) -> Result<Option<Request>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err("request head too large")
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed request"),
    };
    let http10 = parsed.version == Some(0);
    let mut body_len = 0;
    let mut keep_alive = !http10;
    for header in parsed.headers.iter() {
        let value = std::str::from_utf8(header.value).map_err(|_| "malformed header")?;
        if header.name.eq_ignore_ascii_case("content-length") {
            body_len = value.trim().parse().map_err(|_| "bad content-length")?;
            if body_len > MAX_BODY_BYTES {
                return Err("body too large for the demo upstream");
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("the demo upstream reads Content-Length bodies only");
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    Ok(Some(Request {
        method: parsed.method.unwrap_or_default().to_owned(),
        path: parsed.path.unwrap_or_default().to_owned(),
        head_len,
        body_len,
        keep_alive,
    }))
}

fn respond(request: &Request) -> Vec<u8> {
    let body = serde_json::json!({
        "upstream": "demo-upstream",
        "method": request.method,
        "path": request.path,
    })
    .to_string()
        + "\n";
    let connection = if request.keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{connection}\r\n",
        body.len()
    )
    .into_bytes();
    if request.method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

fn error(status: u16, problem: &str) -> Vec<u8> {
    let reason = if status == 413 {
        "Payload Too Large"
    } else {
        "Bad Request"
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{problem}\n",
        problem.len() + 1
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_keep_alive_request_with_a_body() {
        let bytes = b"POST /orders?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET";
        let request = parse_request(bytes).unwrap().unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/orders?x=1");
        assert_eq!(request.body_len, 3);
        assert_eq!(request.head_len, bytes.len() - 6);
        assert!(request.keep_alive);
    }

    #[test]
    fn connection_close_and_http10_end_the_connection() {
        let close = parse_request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!close.unwrap().unwrap().keep_alive);
        let http10 = parse_request(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!http10.unwrap().unwrap().keep_alive);
        let http10_keep = parse_request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(http10_keep.unwrap().unwrap().keep_alive);
    }

    #[test]
    fn incomplete_and_malformed_heads() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost:"), Ok(None));
        assert!(parse_request(b"\x01\x02 nonsense\r\n\r\n").is_err());
        assert!(parse_request(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn answers_with_json_naming_method_and_path() {
        let request = parse_request(b"GET /hello?q=\"x\" HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        let response = String::from_utf8(respond(&request)).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["method"], "GET");
        assert_eq!(json["path"], "/hello?q=\"x\"");
    }

    #[test]
    fn reads_listening_lines() {
        assert_eq!(
            listening_addr("listening 127.0.0.1:8081 demo"),
            Some("127.0.0.1:8081")
        );
        assert_eq!(listening_addr("ready workers=2"), None);
    }

    #[test]
    fn serves_pipelined_requests_over_one_connection() {
        let upstream = DemoUpstream::start("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(upstream.addr).unwrap();
        client
            .write_all(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
        assert!(answer.contains("\"path\":\"/a\"") && answer.contains("\"path\":\"/b\""));
        upstream.stop();
    }
}
