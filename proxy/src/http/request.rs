//! The client's request head: parsed with `httparse`, checked for the ambiguities that
//! enable request smuggling, and rewritten into the head sent upstream.
//!
//! Nothing here allocates: the head borrows the connection's read buffer and the
//! rewritten head is appended to the connection's output buffer.

use std::mem::MaybeUninit;
use std::net::IpAddr;

use bytes::{BufMut, BytesMut};

use super::{header_has_token, put_decimal, Framing, HopByHop, HttpError};

/// Most header fields accepted in one request head.
pub const MAX_HEADERS: usize = 128;

/// A parsed request head borrowing the read buffer.
#[derive(Debug)]
pub struct Request<'h, 'b> {
    pub method: &'b str,
    /// The request target as sent upstream: origin-form, path and query.
    pub target: &'b str,
    /// The target's path, without the query.
    pub path: &'b str,
    /// HTTP/1.x minor version.
    pub version: u8,
    pub headers: &'h [httparse::Header<'b>],
    /// Host, from the Host header or an absolute-form target; without the port.
    pub host: Option<&'b str>,
    /// Host as the client sent it, port included.
    pub authority: Option<&'b str>,
    pub head_len: usize,
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

/// Whether the request target in `buf` (a head, complete or not) is longer than `max_uri`:
/// once the request line is complete, its target; before, whether the line has already
/// outgrown any method, target and version that fit.
pub fn uri_too_long(buf: &[u8], target: Option<&str>, max_uri: usize) -> bool {
    /// Room for the method, the version and the spaces and CRLF between them.
    const REST_OF_LINE: usize = 32;
    match target {
        Some(target) => target.len() > max_uri,
        None => !buf.contains(&b'\n') && buf.len() > max_uri + REST_OF_LINE,
    }
}

/// Parses a request head from `buf`. `Ok(None)` means more bytes are needed.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<httparse::Header<'b>>],
    max_head: usize,
) -> Result<Option<Request<'h, 'b>>, HttpError> {
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_head {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(e) => return Err(HttpError::Malformed(parse_error_text(e))),
    };
    if head_len > max_head {
        return Err(HttpError::HeadTooLarge);
    }
    let (Some(method), Some(raw_target), Some(version)) = (req.method, req.path, req.version)
    else {
        return Err(HttpError::Malformed("incomplete request line"));
    };
    let headers: &'h [httparse::Header<'b>] = req.headers;

    // The gateway tunnels nothing. Forwarded, a CONNECT that the upstream answered with a
    // 2xx would turn its pooled connection into a tunnel the gateway would still frame
    // as HTTP. Any case: some upstreams read methods case-insensitively.
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(HttpError::Malformed("CONNECT is not supported"));
    }
    let (target, target_authority) = split_target(method, raw_target)?;
    let path = target.split_once('?').map_or(target, |(p, _)| p);

    let mut host_header = None;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut expect_continue = false;
    let mut authorization = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host_header.is_some() {
                return Err(HttpError::Malformed("more than one Host header"));
            }
            let v = std::str::from_utf8(h.value)
                .map_err(|_| HttpError::Malformed("Host header is not valid text"))?;
            // RFC 9112 §3.2: an invalid Host is a 400. Policies route on it and the
            // upstream sees it in X-Forwarded-Host, where a path or a space could be read
            // as a different authority.
            if !valid_authority(v) {
                return Err(HttpError::Malformed("invalid Host header"));
            }
            host_header = Some(v);
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HttpError::Malformed("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Codings accumulate across repeated headers; only the final one decides
            // the framing, and `chunked` may appear only there.
            for coding in list_items(h.value) {
                if chunked_last {
                    return Err(HttpError::Malformed(
                        "chunked is not the final transfer coding",
                    ));
                }
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
            }
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("authorization") {
            // A singleton field: with two, the gateway's policies and the upstream could
            // each read a different one.
            if authorization {
                return Err(HttpError::Malformed("more than one Authorization header"));
            }
            authorization = true;
        } else if name.eq_ignore_ascii_case("expect") {
            if h.value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(HttpError::ExpectationFailed);
            }
        }
    }

    let framing = match (transfer_encoding, content_length) {
        (true, Some(_)) => {
            return Err(HttpError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ))
        }
        (true, None) if version == 0 => {
            return Err(HttpError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ))
        }
        (true, None) if !chunked_last => {
            return Err(HttpError::Malformed(
                "Transfer-Encoding does not end in chunked",
            ))
        }
        (true, None) => Framing::Chunked,
        (false, Some(0)) | (false, None) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
    };

    if version == 1 && host_header.is_none() && target_authority.is_none() {
        return Err(HttpError::Malformed(
            "HTTP/1.1 request without a Host header",
        ));
    }
    // An absolute-form target's authority overrides the Host header (RFC 9112 §3.2.2).
    let authority = target_authority.or(host_header);
    let host = authority.map(strip_port);

    let close = headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection") && header_has_token(h.value, b"close"));
    let keep_alive = if version == 0 {
        headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("connection") && header_has_token(h.value, b"keep-alive")
        }) && !close
    } else {
        !close
    };

    Ok(Some(Request {
        method,
        target,
        path,
        version,
        headers,
        host,
        authority,
        head_len,
        framing,
        keep_alive,
        expect_continue: expect_continue && version == 1 && framing != Framing::Empty,
    }))
}

impl Request<'_, '_> {
    /// Looks a header up by name (case-insensitive); the first one wins.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// What the upstream head needs beyond the request itself.
pub struct Forward<'a> {
    /// Upstream path prefix and the rest of the client's target after the base path.
    pub path_prefix: &'a str,
    pub rest: &'a str,
    /// `host:port` of the upstream, for the Host header.
    pub upstream_authority: &'a str,
    pub peer: IpAddr,
    /// `http` or `https`: how the client reached us.
    pub scheme: &'a str,
    /// Header lines the policies add (`Name: value\r\n` each).
    pub extra: &'a [u8],
    /// Client headers the policies drop (or replace with one of `extra`).
    pub strip: &'a dyn Fn(&str) -> bool,
}

/// For a [`Forward`] without policies.
pub fn keep_all(_: &str) -> bool {
    false
}

/// Appends the head to send upstream: origin-form target under the upstream's prefix,
/// Host rewritten, hop-by-hop fields dropped, `X-Forwarded-*` added. The body keeps the
/// framing it arrived in, declared in one canonical header (see [`put_framing`]).
pub fn write_upstream_head(req: &Request<'_, '_>, fwd: &Forward<'_>, out: &mut BytesMut) {
    out.put_slice(req.method.as_bytes());
    out.put_u8(b' ');
    for piece in ringwall_config::upstream_path(fwd.path_prefix, fwd.rest) {
        out.put_slice(piece.as_bytes());
    }
    out.put_slice(b" HTTP/1.1\r\nHost: ");
    out.put_slice(fwd.upstream_authority.as_bytes());
    out.put_slice(b"\r\n");

    let hop = HopByHop::of(req.headers);
    for h in req.headers {
        let name = h.name;
        if rewritten_upstream(name) || hop.contains(name) || (fwd.strip)(name) {
            continue;
        }
        put_header(out, name.as_bytes(), h.value);
    }
    put_framing(req, out);
    out.put_slice(fwd.extra);
    // Earlier hops' lists are kept, in order, in the one field we send.
    out.put_slice(b"X-Forwarded-For: ");
    for h in req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
    {
        out.put_slice(h.value);
        out.put_slice(b", ");
    }
    put_ip(out, fwd.peer);
    out.put_slice(b"\r\nX-Forwarded-Proto: ");
    out.put_slice(fwd.scheme.as_bytes());
    out.put_slice(b"\r\n");
    if let Some(authority) = req.authority {
        put_header(out, b"X-Forwarded-Host", authority.as_bytes());
    }
    out.put_slice(b"\r\n");
}

/// Declares the body's framing as the parse settled it, in the one spelling every parser
/// reads the same way. The client's own framing headers are not forwarded: what the parse
/// accepted as `CHUNKED`, `Content-Length: 5, 5` or `chunked` followed by an empty
/// `Transfer-Encoding` could be read by the upstream as another framing, or as none, and the
/// body bytes as the next request (TE.TE smuggling).
fn put_framing(req: &Request<'_, '_>, out: &mut BytesMut) {
    match req.framing {
        Framing::Length(n) => {
            out.put_slice(b"Content-Length: ");
            put_decimal(out, n);
            out.put_slice(b"\r\n");
        }
        Framing::Chunked => {
            out.put_slice(b"Transfer-Encoding: ");
            // The codings under `chunked`, in order; the parse allowed `chunked` only last.
            for h in req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            {
                for coding in list_items(h.value) {
                    if !coding.eq_ignore_ascii_case(b"chunked") {
                        out.put_slice(coding);
                        out.put_slice(b", ");
                    }
                }
            }
            out.put_slice(b"chunked\r\n");
        }
        Framing::Empty => {
            // An explicit zero stays: some upstreams want a length on every POST.
            if req
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("content-length"))
            {
                out.put_slice(b"Content-Length: 0\r\n");
            }
        }
        // Requests are never framed by close.
        Framing::UntilClose => {}
    }
}

/// The client's fields the gateway writes its own version of (or none): `Host`, the
/// framing, `Expect` (answered here) and the `X-Forwarded-*` it extends. Their spellings
/// with `_` for `-` go too: CGI, WSGI and PHP upstreams read `X_Forwarded_For` and
/// `X-Forwarded-For` as one variable (`HTTP_X_FORWARDED_FOR`), so a client would otherwise
/// set the address, host or framing those upstreams see past the gateway's own. By length
/// first, so most fields are passed without a comparison.
fn rewritten_upstream(name: &str) -> bool {
    let is = |lower: &str| is_named_either_dash(name, lower);
    match name.len() {
        4 => is("host"),
        6 => is("expect"),
        14 => is("content-length"),
        15 => is("x-forwarded-for"),
        16 => is("x-forwarded-host"),
        17 => is("x-forwarded-proto") || is("transfer-encoding"),
        _ => false,
    }
}

/// Whether field `name` is `lower` (lower case, with `-`) as an upstream that reads `_` as
/// `-` would take it.
fn is_named_either_dash(name: &str, lower: &str) -> bool {
    name.len() == lower.len()
        && name
            .bytes()
            .zip(lower.bytes())
            .all(|(n, l)| n.to_ascii_lowercase() == l || (n == b'_' && l == b'-'))
}

fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

fn put_ip(out: &mut BytesMut, ip: IpAddr) {
    match ip {
        // Every request writes one: its octets directly rather than through `fmt`.
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            for (i, octet) in [a, b, c, d].into_iter().enumerate() {
                if i > 0 {
                    out.put_u8(b'.');
                }
                put_decimal(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            // BytesMut's fmt::Write never fails.
            let _ = write!(out, "{v6}");
        }
    }
}

/// Splits an origin-form or absolute-form target into the origin-form part and the
/// authority an absolute-form target names.
fn split_target<'b>(
    method: &str,
    target: &'b str,
) -> Result<(&'b str, Option<&'b str>), HttpError> {
    if target.starts_with('/') {
        return Ok((target, None));
    }
    if target == "*" && method == "OPTIONS" {
        return Ok(("*", None));
    }
    let lower_scheme = target
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"));
    let after = if lower_scheme {
        &target[7..]
    } else if target
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    {
        &target[8..]
    } else {
        return Err(HttpError::Malformed("request target is not a path"));
    };
    let (authority, path) = match after.find(['/', '?']) {
        Some(i) if after.as_bytes()[i] == b'/' => (&after[..i], &after[i..]),
        Some(_) => return Err(HttpError::Malformed("absolute target without a path")),
        None => (after, "/"),
    };
    if authority.is_empty() || !valid_authority(authority) {
        return Err(HttpError::Malformed(
            "invalid authority in the request target",
        ));
    }
    Ok((path, Some(authority)))
}

/// Whether `authority` is made only of what a `host[:port]` may hold (RFC 3986 §3.2.2:
/// reg-name, IP literal, port). No userinfo (`@`), path, query, fragment, whitespace or
/// quote, which parsers downstream would split the authority at.
fn valid_authority(authority: &str) -> bool {
    authority
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b))
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    // A list of identical values is allowed (RFC 9110 §8.6); anything else is not.
    let mut result: Option<u64> = None;
    for item in value.split(|&b| b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return Err(HttpError::Malformed("invalid Content-Length"));
        }
        let n = item
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if result.is_some_and(|prev| prev != n) {
            return Err(HttpError::Malformed("conflicting Content-Length values"));
        }
        result = Some(n);
    }
    result.ok_or(HttpError::Malformed("invalid Content-Length"))
}

fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|s| !s.is_empty())
}

fn parse_error_text(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in the request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(raw: &[u8]) -> Request<'static, 'static> {
        let raw: &'static [u8] = Box::leak(raw.to_vec().into_boxed_slice());
        let headers = Box::leak(Box::new(super::super::header_slots::<MAX_HEADERS>()));
        parse(raw, headers, 32 * 1024).unwrap().unwrap()
    }

    fn parse_err(raw: &[u8]) -> HttpError {
        let mut headers = super::super::header_slots::<MAX_HEADERS>();
        parse(raw, &mut headers, 32 * 1024).unwrap_err()
    }

    fn upstream_head(raw: &[u8], prefix: &str, rest: &str) -> String {
        let req = parse_ok(raw);
        let mut out = BytesMut::new();
        write_upstream_head(
            &req,
            &Forward {
                path_prefix: prefix,
                rest,
                upstream_authority: "10.0.0.1:9000",
                peer: "127.0.0.9".parse().unwrap(),
                scheme: "http",
                extra: b"",
                strip: &keep_all,
            },
            &mut out,
        );
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn parses_a_simple_get() {
        let r = parse_ok(b"GET /a/b?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n");
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/a/b?x=1");
        assert_eq!(r.path, "/a/b");
        assert_eq!(r.host, Some("example.com"));
        assert_eq!(r.authority, Some("example.com:8080"));
        assert_eq!(r.framing, Framing::Empty);
        assert!(r.keep_alive);
    }

    #[test]
    fn long_targets_are_caught_before_the_line_ends() {
        assert!(!uri_too_long(b"GET /abc HTTP/1.1\r\n", Some("/abc"), 4));
        assert!(uri_too_long(b"GET /abcd HTTP/1.1\r\n", Some("/abcd"), 4));
        // No line end yet: only once the line cannot fit any more.
        let partial = [b"GET /".as_slice(), &[b'a'; 100]].concat();
        assert!(!uri_too_long(&partial, None, 100));
        let longer = [b"GET /".as_slice(), &[b'a'; 200]].concat();
        assert!(uri_too_long(&longer, None, 100));
        // A line that ended is judged on its target, whatever follows.
        let headers = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'v'; 300]].concat();
        assert!(!uri_too_long(&headers, None, 100));
    }

    #[test]
    fn partial_head_needs_more_and_oversize_head_is_431() {
        let mut headers = super::super::header_slots::<MAX_HEADERS>();
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut headers, 1024)
            .unwrap()
            .is_none());
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2000));
        let mut headers = super::super::header_slots::<MAX_HEADERS>();
        assert_eq!(
            parse(&big, &mut headers, 1024).unwrap_err(),
            HttpError::HeadTooLarge
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            parse_ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").framing,
            Framing::Length(12)
        );
        assert_eq!(
            parse_ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
                .framing,
            Framing::Chunked
        );
        assert_eq!(
            parse_ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n").framing,
            Framing::Length(5)
        );
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"GET http://user@evil/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(
                matches!(parse_err(raw), HttpError::Malformed(_)),
                "accepted {:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            parse_err(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n"),
            HttpError::ExpectationFailed
        );
    }

    #[test]
    fn host_and_target_authorities_must_be_host_and_port() {
        for host in [
            "gateway test",
            "gateway\ttest",
            "gateway.test/evil",
            "gateway.test?x",
            "gateway.test#x",
            "user@gateway.test",
            "gateway.test\\evil",
            "\"gateway.test\"",
        ] {
            assert_eq!(
                parse_err(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()),
                HttpError::Malformed("invalid Host header"),
                "{host:?}"
            );
        }
        for host in [
            "gateway.test",
            "gateway.test:8080",
            "[::1]:80",
            "10.0.0.1",
            "",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(parse_ok(raw.as_bytes()).authority, Some(host), "{host:?}");
        }
        assert_eq!(
            parse_err(b"GET http://gate\"way/ HTTP/1.1\r\nHost: a\r\n\r\n"),
            HttpError::Malformed("invalid authority in the request target")
        );
    }

    #[test]
    fn connect_is_refused_whatever_its_target() {
        for line in [
            "CONNECT gateway.test:443 HTTP/1.1",
            "CONNECT /tunnel HTTP/1.1",
            "CONNECT http://gateway.test/ HTTP/1.1",
            "connect /tunnel HTTP/1.1",
        ] {
            assert_eq!(
                parse_err(format!("{line}\r\nHost: a\r\n\r\n").as_bytes()),
                HttpError::Malformed("CONNECT is not supported"),
                "{line}"
            );
        }
    }

    #[test]
    fn a_second_authorization_header_is_refused() {
        assert_eq!(
            parse_err(b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer a\r\nauthorization: Bearer b\r\n\r\n"),
            HttpError::Malformed("more than one Authorization header")
        );
        assert!(
            parse_ok(b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic eA==\r\n\r\n")
                .header("authorization")
                .is_some()
        );
    }

    #[test]
    fn keep_alive_defaults_differ_by_version() {
        assert!(!parse_ok(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(parse_ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!parse_ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
    }

    #[test]
    fn expect_continue_only_matters_with_a_body() {
        assert!(
            parse_ok(
                b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
            )
            .expect_continue
        );
        assert!(
            !parse_ok(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n").expect_continue
        );
    }

    #[test]
    fn absolute_form_targets_become_origin_form() {
        let r = parse_ok(b"GET http://api.example:81/x?y HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(r.target, "/x?y");
        assert_eq!(r.authority, Some("api.example:81"));
        assert_eq!(r.host, Some("api.example"));
    }

    #[test]
    fn upstream_head_is_rewritten() {
        let head = upstream_head(
            b"GET /api/orders?x=1 HTTP/1.1\r\nHost: gw.example\r\nConnection: keep-alive, X-Hop\r\n\
              X-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: x\r\n\
              Upgrade: h2c\r\nX-Forwarded-For: 1.2.3.4\r\nAccept: */*\r\nX-Forwarded-Proto: https\r\n\
              X-Forwarded-For: 5.6.7.8\r\n\r\n",
            "/anything/echo/",
            "/orders?x=1",
        );
        assert_eq!(
            head,
            "GET /anything/echo/orders?x=1 HTTP/1.1\r\nHost: 10.0.0.1:9000\r\n\
             Accept: */*\r\nX-Forwarded-For: 1.2.3.4, 5.6.7.8, 127.0.0.9\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: gw.example\r\n\r\n"
        );
    }

    #[test]
    fn upstream_framing_is_one_canonical_header() {
        for (framing, canonical) in [
            ("Content-Length: 5, 5", "Content-Length: 5"),
            (
                "Content-Length: 5\r\ncontent-length: 005",
                "Content-Length: 5",
            ),
            (
                "Connection: content-length\r\nContent-Length: 5",
                "Content-Length: 5",
            ),
            ("Content-Length: 0", "Content-Length: 0"),
            ("Transfer-Encoding: CHUNKED", "Transfer-Encoding: chunked"),
            (
                "Transfer-Encoding:\tchunked ,",
                "Transfer-Encoding: chunked",
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: ",
                "Transfer-Encoding: chunked",
            ),
            (
                "Transfer-Encoding: gzip\r\ntransfer-encoding: Chunked",
                "Transfer-Encoding: gzip, chunked",
            ),
        ] {
            let head = upstream_head(
                format!("POST /u HTTP/1.1\r\nHost: gw\r\n{framing}\r\n\r\n").as_bytes(),
                "/",
                "/u",
            );
            assert_eq!(
                head,
                format!(
                    "POST /u HTTP/1.1\r\nHost: 10.0.0.1:9000\r\n{canonical}\r\n\
                     X-Forwarded-For: 127.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: gw\r\n\r\n"
                ),
                "{framing:?}"
            );
        }
    }

    #[test]
    fn underscore_spellings_of_the_rewritten_fields_are_not_forwarded() {
        // Read by a CGI or WSGI upstream as X-Forwarded-For, X-Forwarded-Host and the
        // framing: the client's own values would stand beside (or over) the gateway's.
        let head = upstream_head(
            b"POST /u HTTP/1.1\r\nHost: gw\r\nX_Forwarded_For: 6.6.6.6\r\nx_forwarded_host: evil\r\n\
              X_Forwarded-Proto: https\r\nContent_Length: 99\r\nTransfer_Encoding: chunked\r\n\
              client_id: abc\r\nContent-Length: 2\r\n\r\n",
            "/",
            "/u",
        );
        assert_eq!(
            head,
            "POST /u HTTP/1.1\r\nHost: 10.0.0.1:9000\r\nclient_id: abc\r\nContent-Length: 2\r\n\
             X-Forwarded-For: 127.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: gw\r\n\r\n"
        );
    }

    #[test]
    fn upstream_head_keeps_body_framing_and_drops_expect() {
        let head = upstream_head(
            b"POST /u HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
            "/",
            "/u",
        );
        assert_eq!(
            head,
            "POST /u HTTP/1.1\r\nHost: 10.0.0.1:9000\r\nTransfer-Encoding: chunked\r\n\
             X-Forwarded-For: 127.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: gw\r\n\r\n"
        );
    }
}
