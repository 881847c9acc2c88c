//! One client connection, top to bottom. Every exchange runs the same phases in this
//! order: read the request head → route → policies (request phase) → upstream (pool or
//! connect, write the head, stream the body) → read the response head → policies
//! (response phase) → write it → stream the response body → log → keep-alive or close. Bodies move in the buffers they were read into; the only bytes
//! copied are the rewritten heads (and small bodies coalesced with their head into a
//! single write).

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use tokio::time::timeout;
use tokio_uring::net::TcpStream;

use crate::access_log::Entry;
use crate::breaker::{Breaker, Open};
use crate::buffers::{Buffers, LARGE_BUF};
use crate::deadline::Deadline;
use crate::error::ProxyError;
use crate::gateway::Gateway;
use crate::health::{hash_key, Choice, Outcome};
use crate::http::chunked::ChunkedDecoder;
use crate::http::request::{self, Forward};
use crate::http::response::{self, ToClient};
use crate::http::{write_local_response, Framing, HttpError, CONTINUE};
use crate::io::{ClientStream, Io, IoVecs, Stream};
use crate::metrics::MethodClass;
use crate::policy::{Chain, HeaderLines, Hold, Overrides, RequestCx, ResponseCx, Stop, Verdict};
use crate::pool::{peek, peek_with_next_write, still_open, Peek, PoolKey, UpstreamConn};
use crate::tls::{HandshakeFailure, Session, TlsStream, UpstreamTls};
use crate::worker::{ConnectionGuard, ListenerHandle, Worker};
use ringwall_config::{Balancing, HashOn};

/// The size a read buffer grows to for a large head or a body.
const BUF_SIZE: usize = 16 * 1024;
/// Spare room a read asks for at least.
const MIN_READ: usize = 4 * 1024;
/// A read buffer's size while its connection waits for a request: most heads fit, and a
/// connection left idle holds no more than this.
const IDLE_READ: usize = 2 * 1024;
/// Largest response body copied next to its head so both go out in one write.
const COALESCE_MAX: u64 = 16 * 1024;
/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The shortest wait before a policy that asked for a retry is asked again.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(1);
/// How long a closing connection is drained so the client reads our last response
/// instead of a reset.
const LINGER: Duration = Duration::from_secs(1);

struct Client {
    stream: ClientStream,
    peer: SocketAddr,
    /// What the TLS handshake settled, on a TLS listener.
    tls: Option<Session>,
    buf: BytesMut,
    out: BytesMut,
    /// The exchange under way, for the log phase.
    rec: Record,
    /// The request's method then its target, for the log phase (reused, so logging
    /// allocates nothing once warm).
    meta: String,
    /// Header lines the policies add to the upstream request and to the client's
    /// response, reused across exchanges.
    up_headers: HeaderLines,
    client_headers: HeaderLines,
    /// The request is HTTP/1.0 and asked to keep the connection: its answers must say so.
    keep_alive_10: bool,
    /// Times every read and write of the exchange, client side and upstream alike.
    timer: Deadline,
    /// For writing a response head and body bytes together (see `Stream::write_both`).
    iov: Option<IoVecs>,
}

/// What the log phase records about one exchange (metrics, and the access log when one
/// is configured), filled in by the phases as they go.
#[derive(Default)]
struct Record {
    /// The configuration the exchange ran on: the api and route indices are its.
    /// (`Rc` around the `Arc`: see `Worker::gateway`.)
    #[allow(clippy::redundant_allocation)]
    gateway: Option<Rc<Arc<Gateway>>>,
    /// When the request's first byte arrived.
    head_at: Option<Instant>,
    /// The same, on the wall clock, for the access log only.
    wall: Option<SystemTime>,
    method: Option<MethodClass>,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    upstream: Option<SocketAddr>,
    api: Option<usize>,
    route: Option<usize>,
    /// Where the method ends and the target begins in `Client::meta`.
    method_len: usize,
    /// The policy (an index in the api's chain) that refused the request.
    rejected_by: Option<usize>,
}

/// What happens to the client connection after an exchange.
enum Next {
    KeepAlive,
    /// Close at once: the peer is gone or the stream is unusable.
    Close,
    /// A final response went out with `Connection: close`: half-close and drain.
    Linger,
}

/// What the request-phase decided, owned so that the read buffer is free again.
struct Plan {
    api: usize,
    route: usize,
    /// The policies that applied to the request (a mask of chain indices).
    applied: u64,
    overrides: Overrides,
    framing: Framing,
    keep_alive: bool,
    http10: bool,
    is_head: bool,
    idempotent: bool,
    expect_continue: bool,
    /// How the upstream endpoint is chosen (the Service's `loadBalancing`).
    choice: Choice,
}

pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Rc<ListenerHandle>,
    worker: Rc<Worker>,
    _active: ConnectionGuard,
) {
    // Responses are written whole; Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    // === Phase: TLS handshake ===
    // On the configuration current at accept: a reload changes the certificates of the
    // connections that come after it.
    let (stream, tls) = {
        let gateway = worker.gateway();
        let config = gateway
            .index_of(&listener.key)
            .and_then(|i| gateway.listener_tls(i))
            .cloned();
        let wait = gateway.snapshot.settings.timeouts.tls_handshake;
        drop(gateway);
        match config {
            None => (Stream::Plain(stream), None),
            Some(config) => match accept_tls(stream, config, wait, &worker).await {
                Some((tls, session)) => (Stream::Tls(tls), Some(session)),
                None => return,
            },
        }
    };
    let mut client = Client {
        stream,
        peer,
        tls,
        buf: BytesMut::with_capacity(IDLE_READ),
        // Taken from the worker's spares when a request arrives.
        out: BytesMut::new(),
        rec: Record::default(),
        meta: String::new(),
        up_headers: HeaderLines::default(),
        client_headers: HeaderLines::default(),
        keep_alive_10: false,
        timer: Deadline::default(),
        iov: None,
    };
    loop {
        match exchange(&mut client, &listener, &worker).await {
            Next::KeepAlive => continue,
            Next::Close => {
                // A read abandoned by a select (drain, listener removed) is still in
                // flight on the ring and holds the socket open; shutting it down ends
                // the read and lets the peer see the close now.
                abort(&client.stream);
                break;
            }
            Next::Linger => {
                linger_close(&mut client.stream).await;
                break;
            }
        }
    }
}

/// Runs the server side of a TLS handshake within `wait`, counting its outcome. `None`
/// when it failed (the connection is closed) or the gateway began draining meanwhile.
async fn accept_tls(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    wait: Duration,
    w: &Worker,
) -> Option<(Box<TlsStream<rustls::ServerConnection>>, Session)> {
    let conn = match rustls::ServerConnection::new(config) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a TLS session");
            let _ = stream.shutdown(Shutdown::Both);
            return None;
        }
    };
    let mut tls = Box::new(TlsStream::new(stream, conn));
    let done = tokio::select! {
        done = tls.handshake(wait) => done,
        () = w.draining() => {
            abort_tls(&tls);
            return None;
        }
    };
    match done {
        Ok(()) => {
            let session = Session::of(&tls);
            crate::metrics::tls_handshake(crate::metrics::TlsSide::Client, session.version);
            Some((tls, session))
        }
        Err(e) => {
            tracing::debug!(error = %e, "client TLS handshake failed");
            crate::metrics::tls_failure(crate::metrics::TlsSide::Client, e.reason);
            abort_tls(&tls);
            None
        }
    }
}

fn abort_tls(tls: &TlsStream<rustls::ServerConnection>) {
    let _ = tls.get_ref().shutdown(Shutdown::Both);
}

async fn exchange(c: &mut Client, listener: &ListenerHandle, w: &Worker) -> Next {
    c.rec = Record::default();
    c.meta.clear();
    // Whatever the policies added belongs to one exchange: an error answered before they
    // run must not carry the previous exchange's headers.
    c.up_headers.clear();
    c.client_headers.clear();
    c.keep_alive_10 = false;
    let next = phases(c, listener, w).await;
    if let Next::KeepAlive = next {
        idle_buffers(c, w);
    }
    // === Phase: log ===
    let rec = std::mem::take(&mut c.rec);
    let (Some(gateway), Some(head_at)) = (rec.gateway, rec.head_at) else {
        return next;
    };
    let elapsed = head_at.elapsed();
    let api = rec.api.and_then(|a| gateway.snapshot.apis.get(a));
    let route = api.zip(rec.route).and_then(|(a, r)| a.routes.get(r));
    if let (Some(method), true) = (rec.method, rec.status != 0) {
        match rec
            .api
            .zip(rec.route)
            .and_then(|(a, r)| gateway.metrics.route(a, r))
        {
            Some(m) => m.requests.record(method, rec.status, elapsed),
            None => gateway
                .metrics
                .no_route()
                .record(method, rec.status, elapsed),
        }
    }
    if let Some(time) = rec.wall {
        let (method, path) = c.meta.split_at(rec.method_len.min(c.meta.len()));
        w.log(&Entry {
            time,
            client: c.peer,
            method,
            path,
            status: rec.status,
            bytes_in: rec.bytes_in,
            bytes_out: rec.bytes_out,
            duration: elapsed,
            upstream: rec.upstream,
            api: api.map(|a| a.name.as_str()),
            route: route.map(|r| r.name.as_str()),
            rejected_by: rec
                .api
                .zip(rec.rejected_by)
                .and_then(|(a, i)| gateway.policies.chains.get(a)?.name(i)),
            tls: c.tls.as_ref(),
        });
    }
    next
}

/// The phases of one exchange, in order.
async fn phases(c: &mut Client, listener: &ListenerHandle, w: &Worker) -> Next {
    // === Phase: read and route the request head ===
    // The configuration is taken anew as bytes arrive, so a keep-alive connection
    // idle across a reload serves its next request with the new one; the exchange
    // then keeps that snapshot to its end.
    let mut resume = Resume::default();
    let (gateway, plan) = loop {
        // A request held by a policy resumes on the configuration it started with.
        let gateway = resume.gateway.take().unwrap_or_else(|| w.gateway());
        if !c.buf.is_empty() {
            if c.rec.head_at.is_none() {
                c.rec.head_at = Some(Instant::now());
                if w.logs() {
                    c.rec.wall = Some(SystemTime::now());
                }
            }
            c.rec.gateway = Some(gateway.clone());
            // A listener a reload removed has no index: its requests find no route and
            // the connection closes.
            let index = gateway.index_of(&listener.key).unwrap_or(usize::MAX);
            if resume.from == 0 {
                resume.pick = w.random();
            }
            // The upstream head is written into a pooled buffer rather than grown from
            // nothing, request after request.
            if c.out.capacity() == 0 {
                c.out = w.buffers.take();
            }
            match plan_request(c, &gateway, index, &mut resume, w.logs()) {
                Ok(Planned::Go(plan)) => break (gateway, plan),
                Ok(Planned::More) => {}
                Ok(Planned::Wait { from, after, hold }) => {
                    resume.attempt = if from == resume.from {
                        resume.attempt + 1
                    } else {
                        1
                    };
                    resume.from = from;
                    // The new hold replaces the old one only once taken, so the request
                    // never stops counting while a place is re-taken for it.
                    resume.hold = hold;
                    resume.gateway = Some(gateway);
                    // A zero delay would re-run the chain in a busy loop.
                    let after = after.max(MIN_RETRY_DELAY);
                    tokio::select! {
                        () = tokio::time::sleep(after) => {}
                        () = w.draining() => return Next::Close,
                    }
                    // A client that left while its request waited gives its place up now
                    // rather than after every attempt (pipelined bytes are not a departure).
                    if peek(c.stream.socket()) == Peek::Closed {
                        return Next::Close;
                    }
                    continue;
                }
                Err(r) => {
                    // The policy's decision is final: release what it held.
                    drop(resume);
                    // The gateway's own answers close too while draining or once the
                    // listener is gone, as forwarded responses do.
                    let close = r.close || winding_down(w, listener);
                    if r.answer {
                        return answer(c, r.error.status(), r.is_head, close).await;
                    }
                    return refuse(c, w, &r.error, r.is_head, close).await;
                }
            }
        }
        let idle = c.buf.is_empty();
        if idle && (w.is_draining() || listener.is_closed()) {
            return Next::Close;
        }
        let timeouts = &gateway.snapshot.settings.timeouts;
        // Idle, a keep-alive connection may wait `streamIdleSeconds`; once a head has begun
        // it must be whole within `requestHeaderSeconds` of its first byte, however it
        // trickles in (slowloris).
        let wait = match c.rec.head_at {
            Some(started) if !idle => {
                let left =
                    (started + timeouts.request_header).saturating_duration_since(Instant::now());
                left.min(timeouts.stream_idle)
            }
            _ => timeouts.stream_idle,
        };
        drop(gateway);
        let spare = if idle { IDLE_READ } else { MIN_READ };
        // Idle, the wait ends early when the worker drains or the listener goes.
        let _waiting = idle.then(|| w.idle_wait(c.stream.socket().as_raw_fd(), listener));
        let n = read_more(&mut c.stream, &mut c.buf, &mut c.timer, wait, spare).await;
        match n {
            Ok(0) | Err(_) if idle => return Next::Close,
            Ok(0) => return Next::Close,
            Ok(_) => {}
            Err(Fail::Timeout) => {
                return refuse(c, w, &ProxyError::ClientTimeout, false, true).await;
            }
            Err(Fail::Io(_)) => return Next::Close,
        }
    };
    // Every policy let the request through: release what they held while it waited.
    drop(resume);
    let settings = &gateway.snapshot.settings;
    if let (Framing::Length(n), Some(max)) = (plan.framing, settings.limits.max_body_bytes) {
        if n > max {
            return refuse(c, w, &ProxyError::BodyTooLarge, plan.is_head, true).await;
        }
    }

    // === Phase: upstream ===
    let route = &gateway.snapshot.apis[plan.api].routes[plan.route];
    let result = forward(c, w, listener, &gateway, &plan, route).await;
    match result {
        Ok(next) => next,
        Err(Failure::BeforeResponse(e, body_consumed)) => {
            tracing::debug!(peer = %c.peer, error = %e, "exchange failed");
            if let Some(m) = gateway.metrics.route(plan.api, plan.route) {
                m.upstream.failed(&e);
            }
            let close = !body_consumed || !plan.keep_alive || winding_down(w, listener);
            refuse(c, w, &e, plan.is_head, close).await
        }
        Err(Failure::AfterResponse(e)) => {
            tracing::debug!(peer = %c.peer, error = %e, "response cut short");
            if let Some(m) = gateway.metrics.route(plan.api, plan.route) {
                m.upstream.failed(&e);
            }
            Next::Close
        }
    }
}

/// Between requests a keep-alive connection holds only a small read buffer: the write
/// buffer goes back to the worker, and a read buffer a body or a large head grew is freed.
fn idle_buffers(c: &mut Client, w: &Worker) {
    if c.out.capacity() > 0 {
        w.buffers.give(std::mem::take(&mut c.out));
    }
    // The buffer's capacity counts from what was read last: reclaiming (free when it is
    // empty) shows how large its allocation really is.
    if c.buf.is_empty() && c.buf.try_reclaim(IDLE_READ) && c.buf.capacity() > 2 * IDLE_READ {
        c.buf = BytesMut::with_capacity(IDLE_READ);
    }
}

/// The gateway wants this connection to end after its current response: the drain
/// period has begun, or a reload removed the listener it came in on.
fn winding_down(w: &Worker, listener: &ListenerHandle) -> bool {
    w.closes_connections() || listener.is_closed()
}

/// A request the gateway answers itself.
struct Refusal {
    error: ProxyError,
    is_head: bool,
    /// The connection cannot go on: part of the request is unread or unreadable.
    close: bool,
    /// Not a refusal but the answer itself (a CORS preflight): no body.
    answer: bool,
}

/// Where a request held by a policy ([`Verdict::Retry`]) takes up again.
#[derive(Default)]
struct Resume {
    /// The chain index to run from; 0 for a fresh request.
    from: usize,
    attempt: u32,
    /// The route choice, kept so a resumed request goes where it was going.
    pick: u64,
    /// What the policies before `from` set for this request.
    overrides: Overrides,
    hold: Option<Hold>,
    #[allow(clippy::redundant_allocation)]
    gateway: Option<Rc<Arc<Gateway>>>,
}

enum Planned {
    /// The head is not complete yet.
    More,
    Go(Plan),
    /// A policy holds the request: ask it again from chain index `from` after `after`.
    Wait {
        from: usize,
        after: Duration,
        hold: Option<Hold>,
    },
}

/// Parses the head in the read buffer, routes it, runs the request phase of the policies
/// and writes the upstream head into the output buffer.
fn plan_request(
    c: &mut Client,
    gateway: &Gateway,
    listener: usize,
    resume: &mut Resume,
    log: bool,
) -> Result<Planned, Refusal> {
    let settings = &gateway.snapshot.settings;
    let limits = &settings.limits;
    let mut headers = crate::http::header_slots::<{ request::MAX_HEADERS }>();
    // More header lines than allowed fail the parse as too many (431).
    let allowed = &mut headers[..limits.max_headers.min(request::MAX_HEADERS)];
    let refused = |e: HttpError| Refusal {
        error: e.into(),
        is_head: false,
        close: true,
        answer: false,
    };
    let req = match request::parse(&c.buf, allowed, limits.max_header_bytes) {
        Ok(Some(req)) if request::uri_too_long(&c.buf, Some(req.target), limits.max_uri_bytes) => {
            return Err(refused(HttpError::UriTooLong));
        }
        Ok(Some(req)) => req,
        Ok(None) if request::uri_too_long(&c.buf, None, limits.max_uri_bytes) => {
            return Err(refused(HttpError::UriTooLong));
        }
        Ok(None) => return Ok(Planned::More),
        Err(e) => return Err(refused(e)),
    };
    let is_head = req.is_head();
    c.rec.bytes_in = req.head_len as u64;
    c.rec.method = Some(MethodClass::of(req.method));
    c.keep_alive_10 = req.version == 0 && req.keep_alive;
    if log {
        c.meta.clear();
        c.meta.push_str(req.method);
        c.meta.push_str(req.target);
        c.rec.method_len = req.method.len();
    }
    // Without a body nothing of the request is left unread: the connection can go on.
    let unread_body = req.framing != Framing::Empty || !req.keep_alive;
    let head_len = req.head_len;
    // The gateway answers this request itself: its head is consumed, its body (if any) is not.
    let answered = |buf: &mut BytesMut, error, answer| {
        buf.advance(head_len);
        Refusal {
            error,
            is_head,
            close: unread_body,
            answer,
        }
    };
    let Some(routed) = gateway.route(listener, &req, resume.pick) else {
        return Err(answered(&mut c.buf, ProxyError::NoRoute, false));
    };
    let (api, route) = (routed.api_index, routed.route_index);
    c.rec.api = Some(api);
    c.rec.route = routed.route.is_some().then_some(route);

    // === Phase: policies, request ===
    let chain = gateway.policies.chains.get(api);
    let mut applied = 0;
    if resume.from == 0 {
        resume.overrides = Overrides::default();
    }
    if let Some(chain) = chain.filter(|ch| !ch.is_empty()) {
        applied = chain.applicable(routed.api, req.method, &routed.path, req.host, |n| {
            req.header(n)
        });
        let mut cx = RequestCx {
            req: &req,
            peer: c.peer,
            tls: c.tls.as_ref(),
            attempt: resume.attempt,
            upstream_headers: &mut c.up_headers,
            client_headers: &mut c.client_headers,
            overrides: &mut resume.overrides,
        };
        match chain.request(applied, resume.from, &mut cx) {
            Stop::Passed | Stop::At(_, Verdict::Continue) => {}
            Stop::At(from, Verdict::Retry { after, hold }) => {
                return Ok(Planned::Wait { from, after, hold });
            }
            Stop::At(i, Verdict::Reject(status, reason)) => {
                c.rec.rejected_by = Some(i);
                let error = ProxyError::Refused(status, reason);
                return Err(answered(&mut c.buf, error, false));
            }
            Stop::At(_, Verdict::Answer(status)) => {
                let error = ProxyError::Refused(status, "");
                return Err(answered(&mut c.buf, error, true));
            }
        }
    }

    let Some(target) = routed.route else {
        return Err(answered(&mut c.buf, ProxyError::NoRoute, false));
    };
    c.out.clear();
    let strip = |name: &str| chain.is_some_and(|ch| ch.strips_request_header(applied, name));
    request::write_upstream_head(
        &req,
        &Forward {
            path_prefix: &target.path_prefix,
            rest: routed.rest,
            upstream_authority: &target.upstream.authority,
            peer: c.peer.ip(),
            scheme: if c.tls.is_some() { "https" } else { "http" },
            extra: c.up_headers.as_bytes(),
            strip: if applied == 0 {
                &request::keep_all
            } else {
                &strip
            },
        },
        &mut c.out,
    );
    let plan = Plan {
        api,
        route,
        applied,
        overrides: resume.overrides,
        framing: req.framing,
        keep_alive: req.keep_alive,
        http10: req.version == 0,
        is_head,
        idempotent: matches!(
            req.method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        expect_continue: req.expect_continue,
        choice: choice(&target.upstream.balancing, &req, c.peer),
    };
    c.buf.advance(head_len);
    Ok(Planned::Go(plan))
}

enum Failure {
    /// Nothing was sent to the client yet; the flag says whether the request body was
    /// read in full (so the connection could be kept).
    BeforeResponse(ProxyError, bool),
    /// The response head went out; the only thing left is to close.
    AfterResponse(ProxyError),
}

async fn forward(
    c: &mut Client,
    w: &Worker,
    listener: &ListenerHandle,
    gateway: &Gateway,
    plan: &Plan,
    route: &ringwall_config::Route,
) -> Result<Next, Failure> {
    let settings = &gateway.snapshot.settings;
    let timeouts = &settings.timeouts;
    // The Configuration's timeouts, unless a policy set its own for this request.
    let response_timeout = plan
        .overrides
        .response_timeout
        .unwrap_or(timeouts.upstream_response);
    let stream_idle = plan.overrides.stream_idle.unwrap_or(timeouts.stream_idle);
    let upstream = &route.upstream;
    let has_body = plan.framing != Framing::Empty;
    let now = Instant::now();
    w.health.request(now);
    let checks = gateway.checks.of(plan.api, plan.route);
    let down = |a: &SocketAddr| checks.is_some_and(|c| c.is_down(a));
    let Some(mut addr) = w.health.pick(
        &upstream.addrs,
        None,
        plan.choice,
        &upstream.weights,
        &down,
        now,
    ) else {
        let e = io::Error::new(io::ErrorKind::AddrNotAvailable, "upstream has no address");
        return Err(Failure::BeforeResponse(ProxyError::Connect(e), !has_body));
    };
    let before = |e| Failure::BeforeResponse(e, !has_body);
    c.rec.upstream = Some(addr);
    let tls = gateway.upstream_tls(plan.api, plan.route);
    let mut key = PoolKey {
        addr,
        tls: tls.map_or(0, |t| t.id),
    };
    let mut attempts = 1;
    let breaker = gateway.breakers.of(plan.api, plan.route);
    let _in_flight = match breaker {
        Some(b) => Some(
            b.request()
                .ok_or(before(ProxyError::CircuitOpen(Open::Requests)))?,
        ),
        None => None,
    };

    // Replaying is safe only for a bodiless idempotent request on a pooled
    // connection that turned out to be closed, once, and within `maxRetries`.
    let mut replayable = !has_body && plan.idempotent;
    let mut retrying = None;
    let mut may_replay = || match breaker {
        None => true,
        Some(b) => {
            retrying = b.retry();
            retrying.is_some()
        }
    };
    let mut _load = None;
    let (mut up, resp) = loop {
        if plan.choice == Choice::LeastRequest {
            // Counted against the endpoint tried now; a retry moves it.
            _load = Some(w.health.in_flight(addr));
        }
        let pooled_idle = plan
            .overrides
            .upstream_idle
            .unwrap_or(timeouts.upstream_idle);
        // A pooled connection must be open and silent: a replay covers a closed one, but
        // bytes nobody asked for would be taken for this request's response. Pooled TLS
        // connections were drained when put back (see the end of this function): anything
        // since is in the socket, where a peek sees it. A request that may be sent again
        // is peeked at on the ring together with its head's write (below); any other
        // before it is sent.
        let mut up = match w.pool.take(key, pooled_idle) {
            Some(up) if replayable => up,
            Some(up) if still_open(up.stream.socket()) => up,
            Some(_) | None => {
                let opened =
                    open_connection(w, key, tls, breaker, timeouts.upstream_connect, pooled_idle)
                        .await;
                match opened {
                    Ok(up) => up,
                    Err(e @ (ProxyError::Connect(_) | ProxyError::ConnectTimeout)) => {
                        // Nothing was sent: any request may try another endpoint.
                        match another_endpoint(
                            w,
                            upstream,
                            plan.choice,
                            &down,
                            addr,
                            &mut attempts,
                            &mut may_replay,
                        ) {
                            Some(next) => {
                                (addr, key.addr) = (next, next);
                                c.rec.upstream = Some(next);
                                continue;
                            }
                            None => return Err(before(e)),
                        }
                    }
                    Err(e) => return Err(before(e)),
                }
            }
        };
        let reused = up.reused;
        if let Some(m) = gateway.metrics.route(plan.api, plan.route) {
            m.upstream.connection(reused);
        }

        // === Phase: request head and body upstream ===
        let peeked = (reused && replayable).then(|| peek_with_next_write(up.stream.socket()));
        // The body bytes that came with the head go with it, in one send. (Only a request
        // with a body, which is never sent twice, so they cannot be needed again.)
        let (with_head, framing) = match plan.expect_continue {
            false => body_with_head(&mut c.buf, plan.framing),
            true => (None, plan.framing),
        };
        c.rec.bytes_in += with_head.as_ref().map_or(0, |part| part.len() as u64);
        let head = std::mem::take(&mut c.out);
        let sends_body = has_body && framing != Framing::Length(0);
        let (res, head, first_read, head_due) = if !sends_body {
            // Nothing follows the head but the body bytes that came with it: the response's
            // first read goes with them, and the response head's one deadline starts now.
            let due = Instant::now() + response_timeout;
            let (res, head, first_read) = write_then_read(
                &mut up,
                head,
                with_head,
                &mut c.iov,
                &mut c.timer,
                response_timeout,
            )
            .await;
            (res, head, first_read, Some(due))
        } else {
            let (res, head) = write_head(
                &mut up.stream,
                head,
                with_head,
                &mut c.timer,
                response_timeout,
                &mut c.iov,
            )
            .await;
            (res, head, None, None)
        };
        c.out = head;
        let found = match peeked {
            Some(peek) if res.is_ok() => peek.await,
            _ => Peek::Silent,
        };
        if found != Peek::Silent {
            // Sent, but on a connection that was closed or held bytes nobody asked for:
            // the request goes again on another, as for a write that failed.
            abort(&up.stream);
            if may_replay() {
                tracing::trace!(?found, "stale pooled connection, sent again");
                replayable = false;
                continue;
            }
            let e = match found {
                Peek::Data => ProxyError::BadResponse(response::BadResponse::Malformed),
                _ => ProxyError::UpstreamClosed,
            };
            return Err(before(e));
        }
        match res {
            Ok(()) => {}
            // A closed pooled connection fails fast with an IO error; a timeout says
            // nothing about staleness (and the head went with the abandoned write).
            Err(e @ Fail::Io(_)) if reused && replayable && may_replay() => {
                tracing::trace!(error = ?e, "stale pooled connection, retrying");
                abort(&up.stream);
                replayable = false;
                continue;
            }
            Err(e) => {
                abort(&up.stream);
                return Err(before(e.upstream()));
            }
        }
        if sends_body {
            if plan.expect_continue {
                let (res, _) = write_all(&mut c.stream, CONTINUE, &mut c.timer, stream_idle).await;
                if let Err(f) = res {
                    abort(&up.stream);
                    return Err(Failure::AfterResponse(f.client()));
                }
                c.rec.bytes_out += CONTINUE.len() as u64;
            }
            let relayed = relay(
                &mut c.stream,
                &mut up.stream,
                &mut c.buf,
                &mut c.timer,
                framing,
                RelayOpts {
                    dechunk: false,
                    limit: settings.limits.max_body_bytes,
                    read_timeout: stream_idle,
                    write_timeout: response_timeout,
                },
                &mut c.rec.bytes_in,
                &w.large,
            )
            .await;
            if let Err(e) = relayed {
                abort(&up.stream);
                let e = e.into_proxy_error(Direction::Request);
                return Err(Failure::BeforeResponse(e, false));
            }
        }

        // === Phase: response head ===
        // `c.out` still holds the request head, for a replay; the client head
        // replaces it once a response head arrives.
        let draining = winding_down(w, listener);
        let policies = ResponsePolicies {
            chain: gateway.policies.chains.get(plan.api),
            applied: plan.applied,
            peer: c.peer,
            tls: c.tls.as_ref(),
            lines: &mut c.client_headers,
        };
        let head_due = head_due.unwrap_or_else(|| Instant::now() + response_timeout);
        match read_response_head(
            &mut up,
            first_read,
            plan,
            draining,
            &mut c.out,
            &mut c.timer,
            head_due,
            policies,
        )
        .await
        {
            Ok(resp) => {
                let outcome = if resp.status >= 500 {
                    Outcome::ServerError
                } else {
                    Outcome::Answered
                };
                w.health.record(addr, outcome, Instant::now());
                break (up, resp);
            }
            // A new connection reset before any response byte: the endpoint is failing,
            // and a request that can be replayed goes to another.
            Err(e) if !reused && replayable && e.is_stale_connection() => {
                abort(&up.stream);
                match another_endpoint(
                    w,
                    upstream,
                    plan.choice,
                    &down,
                    addr,
                    &mut attempts,
                    &mut may_replay,
                ) {
                    Some(next) => {
                        (addr, key.addr) = (next, next);
                        c.rec.upstream = Some(next);
                        replayable = false;
                        continue;
                    }
                    None => return Err(Failure::BeforeResponse(e, true)),
                }
            }
            Err(e) if reused && replayable && e.is_stale_connection() && may_replay() => {
                tracing::trace!(error = %e, "stale pooled connection, retrying");
                abort(&up.stream);
                replayable = false;
                continue;
            }
            Err(e) => {
                abort(&up.stream);
                return Err(Failure::BeforeResponse(e, true));
            }
        }
    };

    // === Phase: response to the client ===
    let (close, dechunk) = (resp.close, resp.dechunk);
    c.rec.status = resp.status;
    let mut body_done = resp.framing == Framing::Empty;
    if let Framing::Length(n) = resp.framing {
        if n <= COALESCE_MAX && up.buf.len() as u64 >= n {
            c.out.extend_from_slice(&up.buf[..n as usize]);
            up.buf.advance(n as usize);
            body_done = true;
        }
    }
    // A larger body's bytes that came with the head go out with it, in one send.
    let (with_head, framing) = match body_done {
        false => body_with_head(&mut up.buf, resp.framing),
        true => (None, resp.framing),
    };
    body_done |= framing == Framing::Length(0);
    let head = std::mem::take(&mut c.out);
    let written = (head.len() + with_head.as_ref().map_or(0, BytesMut::len)) as u64;
    let (res, head) = write_head(
        &mut c.stream,
        head,
        with_head,
        &mut c.timer,
        stream_idle,
        &mut c.iov,
    )
    .await;
    c.out = head;
    c.out.clear();
    if let Err(e) = res {
        abort(&up.stream);
        return Err(Failure::AfterResponse(e.client()));
    }
    c.rec.bytes_out += written;

    if !body_done {
        let relayed = relay(
            &mut up.stream,
            &mut c.stream,
            &mut up.buf,
            &mut c.timer,
            framing,
            RelayOpts {
                dechunk,
                limit: None,
                read_timeout: stream_idle,
                write_timeout: stream_idle,
            },
            &mut c.rec.bytes_out,
            &w.large,
        )
        .await;
        if let Err(e) = relayed {
            abort(&up.stream);
            let e = e.into_proxy_error(Direction::Response);
            return Err(Failure::AfterResponse(e));
        }
    }

    // Bytes past the response, in our buffer or still in TLS, would be read as the next
    // request's response.
    if resp.reusable && up.buf.is_empty() && up.stream.is_drained() {
        w.pool.put(up);
    } else {
        abort(&up.stream);
    }
    Ok(if close { Next::Linger } else { Next::KeepAlive })
}

/// The parts of the response head the later phases need.
struct ResponseHead {
    status: u16,
    framing: Framing,
    reusable: bool,
    /// The client connection closes after this response.
    close: bool,
    /// The chunked body is decoded for an HTTP/1.0 client.
    dechunk: bool,
}

/// The response phase's view of the policies that let the request through.
struct ResponsePolicies<'a> {
    chain: Option<&'a Chain>,
    applied: u64,
    peer: SocketAddr,
    tls: Option<&'a Session>,
    /// Header lines for the client: the request phase's, then the response phase's.
    lines: &'a mut HeaderLines,
}

/// Reads the upstream's response head, runs the response phase of the policies, writes
/// the client's version of the head into `out` and leaves `up.buf` at the start of the
/// body. `first_read` is the outcome of a read the request's write made already (what it
/// read is in `up.buf`). The whole head is due by `due`: interim responses or a trickled
/// head do not extend it.
#[allow(clippy::too_many_arguments)]
async fn read_response_head(
    up: &mut UpstreamConn,
    first_read: Option<Result<usize, Fail>>,
    plan: &Plan,
    draining: bool,
    out: &mut BytesMut,
    timer: &mut Deadline,
    due: Instant,
    policies: ResponsePolicies<'_>,
) -> Result<ResponseHead, ProxyError> {
    let mut received = false;
    let mut read = first_read;
    loop {
        if let Some(read) = read.take() {
            match read {
                Ok(0) if !received => return Err(ProxyError::UpstreamClosed),
                Ok(0) => return Err(ProxyError::BadResponse(response::BadResponse::Malformed)),
                Ok(_) => received = true,
                Err(Fail::Timeout) => return Err(ProxyError::UpstreamTimeout),
                Err(Fail::Io(e)) if !received => return Err(ProxyError::UpstreamIo(e)),
                Err(Fail::Io(_)) => {
                    return Err(ProxyError::BadResponse(response::BadResponse::Malformed))
                }
            }
        }
        if !up.buf.is_empty() {
            let mut headers = crate::http::header_slots::<{ response::MAX_HEADERS }>();
            let parsed = response::parse(&up.buf, &mut headers, MAX_RESPONSE_HEAD, plan.is_head)?;
            match parsed {
                Some(r) if (100..200).contains(&r.status) && r.status != 101 => {
                    // Interim responses (100 Continue, 103 Early Hints) were ours to
                    // produce or are optional: drop them.
                    let len = r.head_len;
                    up.buf.advance(len);
                    continue;
                }
                Some(r) if r.status == 101 => {
                    // We never forward Upgrade, so a switch is a protocol error.
                    return Err(ProxyError::BadResponse(response::BadResponse::Malformed));
                }
                Some(r) => {
                    let dechunk = plan.http10 && r.framing == Framing::Chunked;
                    let close =
                        !plan.keep_alive || draining || r.framing == Framing::UntilClose || dechunk;
                    // === Phase: policies, response ===
                    let (chain, applied) = (policies.chain, policies.applied);
                    if let Some(chain) = chain.filter(|_| applied != 0) {
                        let mut cx = ResponseCx {
                            status: r.status,
                            headers: r.headers,
                            peer: policies.peer,
                            tls: policies.tls,
                            client_headers: policies.lines,
                        };
                        chain.response(applied, usize::MAX, &mut cx);
                    }
                    let strip = |name: &str| {
                        chain.is_some_and(|ch| ch.strips_response_header(applied, name))
                    };
                    out.clear();
                    response::write_client_head(
                        &r,
                        ToClient {
                            close,
                            http10: plan.http10,
                            dechunk,
                            extra: policies.lines.as_bytes(),
                            strip: &strip,
                        },
                        out,
                    );
                    let head = ResponseHead {
                        status: r.status,
                        framing: r.framing,
                        reusable: r.reusable,
                        close,
                        dechunk,
                    };
                    let len = r.head_len;
                    up.buf.advance(len);
                    return Ok(head);
                }
                None => {}
            }
        }
        let left = due.saturating_duration_since(Instant::now());
        read = Some(read_more(&mut up.stream, &mut up.buf, timer, left, MIN_READ).await);
    }
}

/// Opens a new upstream connection, with its TLS handshake for an `https://` upstream
/// (both within `wait`). The connect runs on the runtime's epoll reactor rather than on
/// the ring: a connect op on the ring owns its socket until the kernel gives up (minutes
/// of SYN retries), so a timed-out connect there would leave the socket connecting; here
/// dropping the future closes it. Only new connections pay this; pooled ones are reused
/// as they are.
async fn connect(
    key: PoolKey,
    tls: Option<&Arc<UpstreamTls>>,
    wait: Duration,
) -> Result<UpstreamConn, ProxyError> {
    let deadline = Instant::now() + wait;
    let addr = key.addr;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(ProxyError::Connect)?;
    let connected = match timeout(wait, socket.connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ProxyError::Connect(e)),
        Err(_) => return Err(ProxyError::ConnectTimeout),
    };
    let std = connected.into_std().map_err(ProxyError::Connect)?;
    // The ring waits for readiness itself; the socket goes back to blocking mode, as
    // the ring's own connects and accepts leave theirs.
    std.set_nonblocking(false).map_err(ProxyError::Connect)?;
    let stream = TcpStream::from_std(std);
    let _ = stream.set_nodelay(true);
    let stream = match tls {
        None => Stream::Plain(stream),
        Some(tls) => {
            let conn =
                rustls::ClientConnection::new(Arc::clone(&tls.client.config), tls.name.clone())
                    .map_err(|e| ProxyError::Connect(io::Error::other(e)))?;
            let mut stream = Box::new(TlsStream::new(stream, conn));
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = stream.handshake(left).await {
                crate::metrics::tls_failure(crate::metrics::TlsSide::Upstream, e.reason);
                let _ = stream.get_ref().shutdown(Shutdown::Both);
                return Err(match e.reason {
                    HandshakeFailure::Timeout => ProxyError::ConnectTimeout,
                    _ => ProxyError::UpstreamTls(e),
                });
            }
            let version = crate::tls::version_label(stream.version());
            crate::metrics::tls_handshake(crate::metrics::TlsSide::Upstream, version);
            Stream::Tls(stream)
        }
    };
    Ok(UpstreamConn {
        stream,
        buf: BytesMut::with_capacity(BUF_SIZE),
        key,
        reused: false,
        held: None,
    })
}

/// How the endpoint of a request to `balancing`'s Service is chosen.
fn choice(balancing: &Balancing, req: &request::Request<'_, '_>, peer: SocketAddr) -> Choice {
    match balancing {
        Balancing::RoundRobin => Choice::RoundRobin,
        Balancing::Weighted => Choice::Weighted,
        Balancing::LeastRequest => Choice::LeastRequest,
        Balancing::ConsistentHash(HashOn::RemoteAddress) => Choice::Hash(match peer.ip() {
            std::net::IpAddr::V4(ip) => hash_key(&ip.octets()),
            std::net::IpAddr::V6(ip) => hash_key(&ip.octets()),
        }),
        // Without the header, in turn.
        Balancing::ConsistentHash(HashOn::Header(name)) => req
            .header(name)
            .map_or(Choice::RoundRobin, |v| Choice::Hash(hash_key(v.as_bytes()))),
    }
}

/// Tries per request, the first included, when endpoints fail.
const MAX_ATTEMPTS: u32 = 3;

/// Records that `failed` is unreachable, then gives another endpoint of `upstream` when the
/// request may try it: fewer than [`MAX_ATTEMPTS`] so far, the worker's retry budget and the
/// Service's `maxRetries` allow.
fn another_endpoint(
    w: &Worker,
    upstream: &ringwall_config::Upstream,
    choice: Choice,
    down: &dyn Fn(&SocketAddr) -> bool,
    failed: SocketAddr,
    attempts: &mut u32,
    may_retry: &mut impl FnMut() -> bool,
) -> Option<SocketAddr> {
    w.health
        .record(failed, Outcome::Unreachable, Instant::now());
    if *attempts >= MAX_ATTEMPTS || upstream.addrs.len() < 2 {
        return None;
    }
    let now = Instant::now();
    let next = w.health.pick(
        &upstream.addrs,
        Some(failed),
        choice,
        &upstream.weights,
        down,
        now,
    )?;
    if next == failed || !w.health.retry(now) || !may_retry() {
        return None;
    }
    *attempts += 1;
    metrics::counter!(crate::metrics::UPSTREAM_RETRIES).increment(1);
    Some(next)
}

/// A new connection for `key`, within the Service's `maxConnections` when it has a
/// circuit breaker: at that limit the request waits, as one of `maxPendingRequests`, up to
/// `wait` for a connection to come back to this worker's pool or for a place to free.
async fn open_connection(
    w: &Worker,
    key: PoolKey,
    tls: Option<&Arc<UpstreamTls>>,
    breaker: Option<&Arc<Breaker>>,
    wait: Duration,
    pooled_idle: Duration,
) -> Result<UpstreamConn, ProxyError> {
    let Some(breaker) = breaker else {
        return connect(key, tls, wait).await;
    };
    let held = match breaker.connection() {
        Some(held) => held,
        None => {
            let _pending = breaker
                .pending()
                .ok_or(ProxyError::CircuitOpen(Open::Pending))?;
            let deadline = Instant::now() + wait;
            let mut pause = Duration::from_millis(1);
            loop {
                // Places free on any worker, so they are looked for rather than awaited.
                if let Some(up) = w.pool.take(key, pooled_idle) {
                    if still_open(up.stream.socket()) {
                        return Ok(up);
                    }
                }
                if let Some(held) = breaker.connection() {
                    break held;
                }
                if Instant::now() >= deadline {
                    return Err(ProxyError::CircuitOpen(Open::Pending));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(16));
            }
        }
    };
    let mut up = connect(key, tls, wait).await?;
    up.held = Some(held);
    Ok(up)
}

/// Writes the gateway's own response and decides the connection's fate.
async fn refuse(c: &mut Client, w: &Worker, e: &ProxyError, is_head: bool, close: bool) -> Next {
    c.out.clear();
    keep_alive_for_http10(c, close);
    let extra = c.client_headers.as_bytes();
    write_local_response(
        &mut c.out,
        e.status(),
        &e.to_string(),
        extra,
        close,
        is_head,
    );
    w.metrics.refused(e.status());
    send_local(c, e.status(), close).await
}

/// Writes a policy's answer (a CORS preflight): its status and headers, no body.
async fn answer(c: &mut Client, status: u16, is_head: bool, close: bool) -> Next {
    c.out.clear();
    keep_alive_for_http10(c, close);
    let extra = c.client_headers.as_bytes();
    write_local_response(&mut c.out, status, "", extra, close, is_head);
    send_local(c, status, close).await
}

/// An HTTP/1.0 client whose connection stays open needs `Connection: keep-alive` to read
/// past a response the gateway writes itself, as forwarded responses carry.
fn keep_alive_for_http10(c: &mut Client, close: bool) {
    if c.keep_alive_10 && !close {
        c.client_headers.add("Connection", b"keep-alive");
    }
}

/// Sends the response the gateway wrote into `c.out` and decides the connection's fate.
async fn send_local(c: &mut Client, status: u16, close: bool) -> Next {
    c.rec.status = status;
    c.rec.bytes_out += c.out.len() as u64;
    let out = std::mem::take(&mut c.out);
    let (res, out) = write_all(&mut c.stream, out, &mut c.timer, Duration::from_secs(5)).await;
    c.out = out;
    c.out.clear();
    match (res, close) {
        (Err(_), _) => Next::Close,
        (Ok(()), true) => Next::Linger,
        (Ok(()), false) => Next::KeepAlive,
    }
}

/// Half-closes (after `close_notify` over TLS), then reads and discards for a moment, so
/// that a client still sending gets our response rather than a reset.
async fn linger_close(stream: &mut ClientStream) {
    // A client that reads nothing more could hold `close_notify` up forever.
    if timeout(LINGER, stream.close_write()).await.is_err() {
        abort(stream);
        return;
    }
    let socket = stream.socket();
    let mut buf = BytesMut::with_capacity(MIN_READ);
    let drain = async {
        let mut total = 0usize;
        loop {
            buf.clear();
            // Over TLS these are records nobody decrypts: only their end matters.
            let (res, b) = socket.read(buf).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
            if total > 256 * 1024 {
                break;
            }
        }
    };
    let _ = timeout(LINGER, drain).await;
    abort(stream);
}

/// Shuts a socket down so that any read or write still in flight on it completes now
/// and the descriptor is released when the stream is dropped.
fn abort(stream: &impl Io) {
    let _ = stream.socket().shutdown(Shutdown::Both);
}

// === Body relay ===

struct RelayOpts {
    dechunk: bool,
    limit: Option<u64>,
    read_timeout: Duration,
    write_timeout: Duration,
}

enum RelayError {
    Read(Fail),
    Write(Fail),
    Eof,
    Chunk(crate::http::chunked::ChunkError),
    TooLarge,
}

/// Which body a relay moved: the client's request to the upstream, or the upstream's
/// response to the client. It decides which side a failure is blamed on.
#[derive(Clone, Copy)]
enum Direction {
    Request,
    Response,
}

impl RelayError {
    fn into_proxy_error(self, direction: Direction) -> ProxyError {
        match (self, direction) {
            (RelayError::Read(f), Direction::Request)
            | (RelayError::Write(f), Direction::Response) => f.client(),
            (RelayError::Read(f), Direction::Response)
            | (RelayError::Write(f), Direction::Request) => f.upstream(),
            (RelayError::Eof, Direction::Request) => {
                ProxyError::Client(io::ErrorKind::UnexpectedEof.into())
            }
            (RelayError::Eof, Direction::Response) => ProxyError::UpstreamClosed,
            (RelayError::Chunk(e), Direction::Request) => ProxyError::RequestBody(e),
            (RelayError::Chunk(e), Direction::Response) => ProxyError::ResponseBody(e),
            (RelayError::TooLarge, _) => ProxyError::BodyTooLarge,
        }
    }
}

/// Moves one body from `src` to `dst`, starting with what is already in `buf`. Bytes
/// that follow the body (a pipelined request) stay in `buf`. Adds the bytes written to
/// `dst`, framing included, to `written` as it goes, so a body cut short still counts
/// what crossed; `opts.limit` applies to the body's data.
#[allow(clippy::too_many_arguments)]
async fn relay(
    src: &mut impl Io,
    dst: &mut impl Io,
    buf: &mut BytesMut,
    timer: &mut Deadline,
    framing: Framing,
    opts: RelayOpts,
    written: &mut u64,
    large: &Buffers,
) -> Result<(), RelayError> {
    let mut own = None;
    let relayed = relay_body(
        src, dst, buf, timer, framing, opts, written, large, &mut own,
    )
    .await;
    // The connection's own buffer comes back, unless bytes past the body wait in the
    // large one (a pipelined request): they stay where they were read.
    if let Some(own) = own.filter(|_| buf.is_empty()) {
        large.give(std::mem::replace(buf, own));
    }
    relayed
}

/// [`relay`]'s loop. A body known to be large is read through one of the worker's large
/// buffers, swapped in for the connection's own (kept in `own`) once `buf` is empty.
#[allow(clippy::too_many_arguments)]
async fn relay_body(
    src: &mut impl Io,
    dst: &mut impl Io,
    buf: &mut BytesMut,
    timer: &mut Deadline,
    framing: Framing,
    opts: RelayOpts,
    written: &mut u64,
    large: &Buffers,
    own: &mut Option<BytesMut>,
) -> Result<(), RelayError> {
    let mut sent: u64 = 0;
    let mut decoder = ChunkedDecoder::new();
    let mut remaining = match framing {
        Framing::Empty => return Ok(()),
        Framing::Length(n) => n,
        Framing::Chunked | Framing::UntilClose => u64::MAX,
    };
    let mut plain = BytesMut::new();
    loop {
        if !buf.is_empty() {
            let (take, done) = match framing {
                Framing::Length(_) => {
                    let take = remaining.min(buf.len() as u64) as usize;
                    remaining -= take as u64;
                    sent += take as u64;
                    (take, remaining == 0)
                }
                Framing::Chunked => {
                    let mut data = 0u64;
                    let input = &buf[..];
                    let progress = decoder
                        .feed(input, |r| {
                            data += r.len() as u64;
                            if opts.dechunk {
                                plain.extend_from_slice(&input[r]);
                            }
                        })
                        .map_err(RelayError::Chunk)?;
                    sent += data;
                    (progress.consumed, progress.done)
                }
                Framing::UntilClose | Framing::Empty => {
                    sent += buf.len() as u64;
                    (buf.len(), false)
                }
            };
            if opts.limit.is_some_and(|max| sent > max) {
                return Err(RelayError::TooLarge);
            }
            let chunk = buf.split_to(take);
            let chunk = if opts.dechunk {
                std::mem::take(&mut plain)
            } else {
                chunk
            };
            if !chunk.is_empty() {
                let len = chunk.len() as u64;
                let (res, _) = write_all(dst, chunk, timer, opts.write_timeout).await;
                res.map_err(RelayError::Write)?;
                *written += len;
            }
            if done {
                return Ok(());
            }
        }
        let want = match framing {
            Framing::Length(_) if remaining > BUF_SIZE as u64 => LARGE_BUF,
            _ => MIN_READ,
        };
        if want == LARGE_BUF && own.is_none() && buf.is_empty() && buf.capacity() < LARGE_BUF {
            *own = Some(std::mem::replace(buf, large.take()));
        }
        match read_more(src, buf, timer, opts.read_timeout, want).await {
            Ok(0) if framing == Framing::UntilClose => return Ok(()),
            Ok(0) => return Err(RelayError::Eof),
            Ok(_) => {}
            Err(f) => return Err(RelayError::Read(f)),
        }
    }
}

// === IO with deadlines ===

#[derive(Debug)]
enum Fail {
    Io(io::Error),
    Timeout,
}

impl Fail {
    fn client(self) -> ProxyError {
        match self {
            Fail::Io(e) => ProxyError::Client(e),
            Fail::Timeout => ProxyError::ClientTimeout,
        }
    }

    fn upstream(self) -> ProxyError {
        match self {
            Fail::Io(e) => ProxyError::UpstreamIo(e),
            Fail::Timeout => ProxyError::UpstreamTimeout,
        }
    }
}

/// Reads into the spare capacity of `buf`, growing it when less than `spare` is left: by
/// [`BUF_SIZE`] when `spare` is [`MIN_READ`], else by `spare` itself (the idle read's
/// small size, or a large body's [`LARGE_BUF`]).
async fn read_more(
    stream: &mut impl Io,
    buf: &mut BytesMut,
    timer: &mut Deadline,
    wait: Duration,
    spare: usize,
) -> Result<usize, Fail> {
    make_room(buf, spare);
    let owned = std::mem::take(buf);
    match timer.within(wait, stream.read(owned)).await {
        Some((res, owned)) => {
            *buf = owned;
            res.map_err(Fail::Io)
        }
        // The buffer stays with the abandoned read; the caller aborts the stream.
        None => Err(Fail::Timeout),
    }
}

/// Grows `buf` when less than `spare` is left after its bytes, as [`read_more`] says.
fn make_room(buf: &mut BytesMut, spare: usize) {
    if buf.capacity() - buf.len() < spare {
        buf.reserve(if spare == MIN_READ { BUF_SIZE } else { spare });
    }
}

/// The part of a `Content-Length` body already read (into `buf`, after the head), split off
/// to be sent with the head, and the framing of the rest.
fn body_with_head(buf: &mut BytesMut, framing: Framing) -> (Option<BytesMut>, Framing) {
    match framing {
        Framing::Length(n) if n > 0 && !buf.is_empty() => {
            let part = buf.split_to(buf.len().min(usize::try_from(n).unwrap_or(usize::MAX)));
            let rest = Framing::Length(n - part.len() as u64);
            (Some(part), rest)
        }
        _ => (None, framing),
    }
}

/// Writes a message head, and `part` of its body after it in the same send when there is
/// one (see [`Stream::write_both`]); gives the head's buffer back.
async fn write_head<C, D>(
    stream: &mut Stream<C>,
    head: BytesMut,
    part: Option<BytesMut>,
    timer: &mut Deadline,
    wait: Duration,
    iov: &mut Option<IoVecs>,
) -> (Result<(), Fail>, BytesMut)
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData + 'static,
{
    let Some(part) = part else {
        return write_all(stream, head, timer, wait).await;
    };
    let both = stream.write_both(head, part, iov.take().unwrap_or_default());
    match timer.within(wait, both).await {
        Some((res, pair)) => (res.map_err(Fail::Io), pair.keep_vecs(iov)),
        // The buffers stay with the abandoned write; the caller aborts the stream.
        None => (Err(Fail::Timeout), BytesMut::new()),
    }
}

/// Writes a request head, and `part` of its body after it when that is the whole body, and
/// makes the response's first read into `up.buf` with them (see
/// [`Stream::write_then_read`], [`Stream::write_both_then_read`]); gives the head's buffer
/// back. The read's outcome comes only when the write succeeded.
async fn write_then_read(
    up: &mut UpstreamConn,
    head: BytesMut,
    part: Option<BytesMut>,
    iov: &mut Option<IoVecs>,
    timer: &mut Deadline,
    wait: Duration,
) -> (Result<(), Fail>, BytesMut, Option<Result<usize, Fail>>) {
    make_room(&mut up.buf, MIN_READ);
    let into = std::mem::take(&mut up.buf);
    let done = match part {
        None => {
            timer
                .within(wait, up.stream.write_then_read(head, into))
                .await
        }
        Some(part) => {
            let vecs = iov.take().unwrap_or_default();
            let both = up.stream.write_both_then_read(head, part, vecs, into);
            timer
                .within(wait, both)
                .await
                .map(|(wrote, pair, read, into)| (wrote, pair.keep_vecs(iov), read, into))
        }
    };
    match done {
        Some((Ok(()), head, read, into)) => {
            up.buf = into;
            (Ok(()), head, Some(read.map_err(Fail::Io)))
        }
        Some((Err(e), head, _, into)) => {
            up.buf = into;
            (Err(Fail::Io(e)), head, None)
        }
        // The buffers stay with the abandoned operations; the caller aborts the stream.
        None => (Err(Fail::Timeout), BytesMut::new(), None),
    }
}

async fn write_all<B>(
    stream: &mut impl Io,
    buf: B,
    timer: &mut Deadline,
    wait: Duration,
) -> (Result<(), Fail>, B)
where
    B: tokio_uring::buf::BoundedBuf + AsRef<[u8]> + Default,
{
    match timer.within(wait, stream.write_all(buf)).await {
        Some((res, buf)) => (res.map_err(Fail::Io), buf),
        None => (Err(Fail::Timeout), B::default()),
    }
}
