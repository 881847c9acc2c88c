//! The upstream's response head: parsed, its body framing decided (RFC 9112 §6.3), and
//! rewritten for the client.

use std::mem::MaybeUninit;

use bytes::{BufMut, BytesMut};

use super::{header_has_token, is_named, put_decimal, Framing, HopByHop};

/// Most header fields accepted in one response head.
pub const MAX_HEADERS: usize = 128;

/// Why an upstream's response head could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    #[error("malformed response head")]
    Malformed,
    #[error("response head too large")]
    TooLarge,
    #[error("invalid Content-Length in the response")]
    BadLength,
}

#[derive(Debug)]
pub struct Response<'h, 'b> {
    pub status: u16,
    pub reason: &'b str,
    pub headers: &'h [httparse::Header<'b>],
    pub head_len: usize,
    pub framing: Framing,
    /// The upstream lets us reuse the connection after this response.
    pub reusable: bool,
}

/// Parses a response head; `Ok(None)` means more bytes are needed.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<httparse::Header<'b>>],
    max_head: usize,
    request_was_head: bool,
) -> Result<Option<Response<'h, 'b>>, BadResponse> {
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, headers);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(BadResponse::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse::TooLarge),
        Err(_) => return Err(BadResponse::Malformed),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(BadResponse::Malformed);
    };
    let reason = resp.reason.unwrap_or("");
    let headers: &'h [httparse::Header<'b>] = resp.headers;

    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = false;
    let mut keep_alive = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value).ok_or(BadResponse::BadLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse::BadLength);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .map(<[u8]>::trim_ascii)
                .unwrap_or_default();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= header_has_token(h.value, b"close");
            keep_alive |= header_has_token(h.value, b"keep-alive");
        }
    }
    let framing =
        if request_was_head || (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::Empty
        } else {
            match (chunked, length) {
                (Some(true), _) => Framing::Chunked,
                (Some(false), _) => Framing::UntilClose,
                (None, Some(0)) => Framing::Empty,
                (None, Some(n)) => Framing::Length(n),
                (None, None) => Framing::UntilClose,
            }
        };
    let reusable = framing != Framing::UntilClose && !close && (version == 1 || keep_alive);
    Ok(Some(Response {
        status,
        reason,
        headers,
        head_len,
        framing,
        reusable,
    }))
}

/// How the response travels to the client.
#[derive(Clone, Copy)]
pub struct ToClient<'a> {
    /// The client connection closes after this response.
    pub close: bool,
    /// The client speaks HTTP/1.0.
    pub http10: bool,
    /// The chunked body is decoded for a client that cannot read chunked.
    pub dechunk: bool,
    /// Header lines the policies add (`Name: value\r\n` each).
    pub extra: &'a [u8],
    /// Upstream headers the policies drop (or replace with one of `extra`).
    pub strip: &'a dyn Fn(&str) -> bool,
}

/// Appends the head sent to the client: hop-by-hop fields dropped, connection
/// management of our own.
pub fn write_client_head(resp: &Response<'_, '_>, to: ToClient<'_>, out: &mut BytesMut) {
    out.put_slice(b"HTTP/1.1 ");
    put_decimal(out, u64::from(resp.status));
    out.put_u8(b' ');
    out.put_slice(resp.reason.as_bytes());
    out.put_slice(b"\r\n");
    let has_te = resp
        .headers
        .iter()
        .any(|h| is_named(h.name, "transfer-encoding"));
    let hop = HopByHop::of(resp.headers);
    for h in resp.headers {
        let te = is_named(h.name, "transfer-encoding");
        // A message with Transfer-Encoding must not carry Content-Length as well.
        let cl_with_te = has_te && is_named(h.name, "content-length");
        if hop.contains(h.name) || cl_with_te || (te && to.dechunk) {
            continue;
        }
        if (to.strip)(h.name) {
            continue;
        }
        out.put_slice(h.name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(h.value);
        out.put_slice(b"\r\n");
    }
    out.put_slice(to.extra);
    if to.close {
        out.put_slice(b"Connection: close\r\n");
    } else if to.http10 {
        out.put_slice(b"Connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(raw: &'static [u8], head: bool) -> Response<'static, 'static> {
        let headers = Box::leak(Box::new(super::super::header_slots::<MAX_HEADERS>()));
        parse(raw, headers, 64 * 1024, head).unwrap().unwrap()
    }

    #[test]
    fn framing_of_responses() {
        assert_eq!(
            parse_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).framing,
            Framing::Length(5)
        );
        assert_eq!(
            parse_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).framing,
            Framing::Empty
        );
        assert_eq!(
            parse_ok(b"HTTP/1.1 204 No Content\r\n\r\n", false).framing,
            Framing::Empty
        );
        assert_eq!(
            parse_ok(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            )
            .framing,
            Framing::Empty
        );
        let r = parse_ok(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert_eq!(r.framing, Framing::Chunked);
        let r = parse_ok(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(r.framing, Framing::UntilClose);
        assert!(!r.reusable);
    }

    #[test]
    fn reuse_follows_connection_management() {
        assert!(parse_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false).reusable);
        assert!(
            !parse_ok(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                false
            )
            .reusable
        );
        assert!(!parse_ok(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).reusable);
        assert!(
            parse_ok(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                false
            )
            .reusable
        );
    }

    #[test]
    fn bad_heads_are_errors() {
        let mut h = super::super::header_slots::<MAX_HEADERS>();
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                &mut h,
                1024,
                false
            )
            .unwrap_err(),
            BadResponse::BadLength
        );
        let mut h = super::super::header_slots::<MAX_HEADERS>();
        assert_eq!(
            parse(b"SMTP ready\r\n\r\n", &mut h, 1024, false).unwrap_err(),
            BadResponse::Malformed
        );
        let mut h = super::super::header_slots::<MAX_HEADERS>();
        assert!(parse(b"HTTP/1.1 200 OK\r\n", &mut h, 1024, false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn client_head_is_rewritten() {
        let r = parse_ok(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=4\r\n\
              Transfer-Encoding: chunked\r\nContent-Length: 4\r\nServer: origin\r\n\r\n",
            false,
        );
        let mut out = BytesMut::new();
        write_client_head(
            &r,
            ToClient {
                close: false,
                http10: false,
                dechunk: false,
                extra: b"",
                strip: &|_| false,
            },
            &mut out,
        );
        assert_eq!(
            &out[..],
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: origin\r\n\r\n"[..]
        );
        out.clear();
        write_client_head(
            &r,
            ToClient {
                close: true,
                http10: true,
                dechunk: true,
                extra: b"",
                strip: &|_| false,
            },
            &mut out,
        );
        assert_eq!(
            &out[..],
            &b"HTTP/1.1 200 OK\r\nServer: origin\r\nConnection: close\r\n\r\n"[..]
        );
    }
}
