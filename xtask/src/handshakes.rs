//! The `tls-handshake` scenario's client: `conns` connections at a time, each a full TLS
//! handshake, one `GET /` with `Connection: close`, its response and a close, over and over
//! until the time is up, on one thread (as `wrk -t1`) pinned where wrk would be. Its report
//! has wrk's shape, so that the medians and ratios are computed as for the other scenarios:
//! requests/s are full handshakes/s, and latency runs from `connect` to the end of the response.
//!
//! Why not `wrk -H 'Connection: close'`: wrk 4.1 keeps one OpenSSL `SSL` per connection and,
//! to reconnect, calls `SSL_shutdown` then `SSL_clear`, which keeps the session, so its next
//! handshake resumes it. Checked against nginx with its defaults (session tickets on), logging
//! `$ssl_session_reused` (4 connections, 1 s): 4,552 of 4,556 handshakes were resumptions (the
//! full ones were each connection's first), at 3.4 times the rate nginx managed with resumption
//! off. Turning resumption off in the servers is no way out: Ringwall issues session tickets
//! and Flex's `tls` policy has no setting to refuse them. And wrk would be the limit anyway:
//! against nginx with resumption off it did 1,387 full handshakes/s at 87% of its CPU (it checks
//! the server's signature, and OpenSSL's client costs more). So this client never resumes
//! (`Resumption::disabled()`) and fails the run if a handshake it counted was not a full one
//! (rustls' `handshake_kind`).
//!
//! It checks less than a browser would, on purpose: the probe has verified the chain and the
//! name against the bench's CA, so a handshake here only checks that the peer sent the bench's
//! certificate, byte for byte, and skips the check of the server's signature. That keeps the
//! client's cost per handshake (an X25519 exchange) below the server's (the same, plus an
//! ECDSA signature), so that on two cores the proxy, not the client, runs out of CPU first;
//! the server does all of its work either way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use crate::proc;
use crate::tls::{response_end, REQUEST, SERVER_NAME};
use crate::wrk::{WrkReport, PERCENTILES};

/// An exchange that takes longer is a timeout error (wrk's default timeout).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Drives the peer on 127.0.0.1:`port` for `seconds` with `conns` connections at a time, on
/// `cpu` if given.
pub fn run(
    port: u16,
    conns: u32,
    seconds: u32,
    cpu: Option<u32>,
    leaf: &CertificateDer<'static>,
) -> Result<WrkReport> {
    let connector = TlsConnector::from(client_config(leaf.clone())?);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let duration = Duration::from_secs(seconds.into());
    let load =
        thread::Builder::new()
            .name("handshakes".to_owned())
            .spawn(move || -> Result<Tally> {
                let runtime = runtime_on(cpu)?;
                let cpu_before = thread_cpu_time();
                let mut tally = runtime.block_on(load(connector, addr, conns, duration));
                tally.client_cpu = thread_cpu_time().saturating_sub(cpu_before);
                Ok(tally)
            })?;
    let tally = load
        .join()
        .map_err(|_| anyhow!("the handshake load panicked"))??;
    proc::check_interrupted()?;
    // The client shares its CPU with the upstream when pinned: near 100% together, they and
    // not the peer are the limit (the peer's CPU per handshake still says what it costs).
    let handshakes = tally.latencies_us.len().max(1) as f64;
    eprintln!(
        "  client: {:.0}% of a CPU, {:.0} µs per handshake",
        100.0 * tally.client_cpu.as_secs_f64() / duration.as_secs_f64(),
        tally.client_cpu.as_secs_f64() * 1e6 / handshakes
    );
    tally.report(duration)
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) } != 0 {
        return Duration::ZERO;
    }
    let secs = u64::try_from(time.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(time.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// What the connections did, summed.
#[derive(Debug, Default)]
struct Tally {
    /// Microseconds from `connect` to the end of the response, one per response.
    latencies_us: Vec<u64>,
    non_2xx: u64,
    /// Connects, handshakes, reads and writes that failed, and timeouts.
    errors: u64,
    first_error: Option<String>,
    /// Handshakes that were not full ones: resumed, or with a HelloRetryRequest.
    not_full: u64,
    /// CPU time of the client's thread over the run.
    client_cpu: Duration,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.not_full += other.not_full;
    }

    fn error(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    fn report(mut self, duration: Duration) -> Result<WrkReport> {
        if self.not_full > 0 {
            bail!(
                "{} handshakes were not full ones: the figures would not be comparable",
                self.not_full
            );
        }
        if self.latencies_us.is_empty() {
            bail!(
                "no exchange completed ({} errors; first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("none")
            );
        }
        if let Some(first) = &self.first_error {
            eprintln!("  {} errors, the first: {first}", self.errors);
        }
        self.latencies_us.sort_unstable();
        let requests = self.latencies_us.len() as u64;
        let at = |pct: f64| percentile(&self.latencies_us, pct) as f64;
        Ok(WrkReport {
            requests,
            requests_per_sec: requests as f64 / duration.as_secs_f64(),
            p50_us: at(50.0),
            p99_us: at(99.0),
            p999_us: at(99.9),
            percentiles: PERCENTILES.iter().map(|&pct| (pct, at(pct))).collect(),
            socket_errors: self.errors,
            non_2xx: self.non_2xx,
        })
    }
}

/// The nearest-rank percentile of sorted values (0 for none).
fn percentile(sorted: &[u64], pct: f64) -> u64 {
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len().max(1)) - 1)
        .copied()
        .unwrap_or(0)
}

async fn load(connector: TlsConnector, addr: SocketAddr, conns: u32, duration: Duration) -> Tally {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(connection(connector.clone(), addr, deadline)))
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        match task.await {
            Ok(one) => tally.add(one),
            Err(err) => tally.error(format!("task: {err}")),
        }
    }
    tally
}

/// One of the `conns` connections, one exchange after the other until the deadline. An
/// exchange the deadline cuts short is not counted, as wrk does not count it.
async fn connection(connector: TlsConnector, addr: SocketAddr, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    loop {
        let start = Instant::now();
        if start >= deadline || proc::check_interrupted().is_err() {
            return tally;
        }
        let limit = deadline.min(start + EXCHANGE_TIMEOUT);
        match tokio::time::timeout_at(limit.into(), exchange(&connector, addr)).await {
            Err(_) if limit == deadline => return tally,
            Err(_) => tally.error("timeout".to_owned()),
            Ok(Err(err)) => tally.error(format!("{err:#}")),
            Ok(Ok(Exchange { status, full })) => {
                let elapsed = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latencies_us.push(elapsed);
                if !(200..400).contains(&status) {
                    tally.non_2xx += 1;
                }
                if !full {
                    tally.not_full += 1;
                }
            }
        }
    }
}

struct Exchange {
    status: u16,
    full: bool,
}

async fn exchange(connector: &TlsConnector, addr: SocketAddr) -> Result<Exchange> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .context("connect")?;
    // wrk sets it too: the request must not wait for the ACK of the client's Finished.
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(SERVER_NAME)?;
    let mut tls = connector.connect(name, tcp).await.context("handshake")?;
    let full = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Full);
    tls.write_all(REQUEST).await.context("write")?;
    let mut answer = Vec::with_capacity(1024);
    let status = loop {
        if let Some((status, _)) = response_end(&answer)? {
            break status;
        }
        if tls.read_buf(&mut answer).await.context("read")? == 0 {
            bail!("the connection closed before the end of the response");
        }
    };
    // A close_notify, as wrk's SSL_shutdown sends; the peer may have closed already.
    let _ = tls.shutdown().await;
    Ok(Exchange { status, full })
}

/// A client that offers what wrk's OpenSSL offers first (TLS 1.3, X25519, AES-256-GCM),
/// never resumes, and accepts the bench's certificate alone without checking signatures.
fn client_config(leaf: CertificateDer<'static>) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(ring::default_provider());
    let verifier = Arc::new(BenchCertificate {
        leaf,
        provider: Arc::clone(&provider),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Accepts the bench's certificate, byte for byte, and nothing else (see the module doc).
#[derive(Debug)]
struct BenchCertificate {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for BenchCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the peer sent another certificate than the bench's".to_owned(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client's runtime on the calling thread, which it first pins to `cpu` if given.
pub(crate) fn runtime_on(cpu: Option<u32>) -> Result<tokio::runtime::Runtime> {
    if let Some(cpu) = cpu {
        pin_this_thread(cpu)?;
    }
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?)
}

/// Runs the calling thread on `cpu` alone, as `taskset -c CPU` runs wrk.
fn pin_this_thread(cpu: u32) -> Result<()> {
    let cpu = usize::try_from(cpu)?;
    // SAFETY: cpu_set_t is plain data that CPU_ZERO and CPU_SET only write into, and
    // sched_setaffinity only reads the set it is given; pid 0 is the calling thread.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("cannot pin to CPU {cpu}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), 50);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[1, 2, 3], 50.0), 2);
        assert_eq!(percentile(&[], 99.0), 0);
    }

    #[test]
    fn a_tally_reports_like_wrk_and_refuses_resumed_handshakes() {
        let mut tally = Tally {
            latencies_us: vec![300, 100, 200, 400],
            non_2xx: 1,
            ..Tally::default()
        };
        tally.add(Tally {
            errors: 2,
            first_error: Some("connect: refused".to_owned()),
            ..Tally::default()
        });
        let report = tally.report(Duration::from_secs(2)).unwrap();
        assert_eq!(report.requests, 4);
        assert_eq!(report.requests_per_sec, 2.0);
        assert_eq!((report.p50_us, report.p99_us), (200.0, 400.0));
        assert_eq!(report.p999_us, 400.0);
        assert_eq!(report.percentiles.len(), PERCENTILES.len());
        assert_eq!(report.percentiles[0], (10.0, 100.0));
        assert_eq!(report.errors(), 3);

        let resumed = Tally {
            latencies_us: vec![100],
            not_full: 1,
            ..Tally::default()
        };
        assert!(resumed.report(Duration::from_secs(1)).is_err());
        let nothing = Tally {
            errors: 5,
            first_error: Some("handshake: refused".to_owned()),
            ..Tally::default()
        };
        let err = nothing.report(Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("handshake: refused"), "{err}");
    }
}
