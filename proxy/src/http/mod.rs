//! HTTP/1.1 on the wire: request and response heads, body framing, and the few
//! fixed responses the gateway writes itself. Protocol code only: no IO here, so all of
//! it is tested on scripted bytes.

pub mod chunked;
pub mod request;
pub mod response;

use std::mem::MaybeUninit;

use bytes::{BufMut, BytesMut};

/// Room for the header fields of one head, left uninitialised: httparse writes the ones it
/// parses. Filled with `EMPTY_HEADER` first, 128 slots were 4 KiB of stores per head, and
/// the two heads of an exchange 4% of its instructions.
pub type HeaderSlots<'b, const N: usize> = [MaybeUninit<httparse::Header<'b>>; N];

/// [`HeaderSlots`] ready for a parse.
pub fn header_slots<'b, const N: usize>() -> HeaderSlots<'b, N> {
    [const { MaybeUninit::uninit() }; N]
}

/// How a message body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Responses only: the body runs until the upstream closes.
    UntilClose,
}

/// A request the gateway refuses before it reaches an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request header block too large")]
    HeadTooLarge,
    #[error("request target too long")]
    UriTooLong,
    #[error("unsupported expectation")]
    ExpectationFailed,
}

impl HttpError {
    pub fn status(self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::UriTooLong => 414,
            HttpError::ExpectationFailed => 417,
        }
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub fn header_has_token(value: &[u8], token: &[u8]) -> bool {
    list_items(value).any(|item| item.eq_ignore_ascii_case(token))
}

/// The items of a comma-separated header value, trimmed, the empty ones left out.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// The hop-by-hop fields of one message (RFC 9110 §7.6.1): the fixed ones, and those its
/// `Connection` headers name. The framing fields are never among them, whatever
/// `Connection` says: bodies are forwarded in their own framing, so dropping
/// `Content-Length` or `Transfer-Encoding` would let the next hop read the body as another
/// message (request smuggling). Built once per message: the named fields are gathered and
/// sorted, so that asking about each of the message's fields is a binary search rather than
/// a scan of every `Connection` token (quadratic in a head that names all its fields).
pub struct HopByHop<'h> {
    /// Every token of the `Connection` headers, in `cmp_ignoring_case` order, when one of them is
    /// more than the usual `close` or `keep-alive`; empty (and unallocated) otherwise.
    named: Vec<&'h [u8]>,
}

impl<'h> HopByHop<'h> {
    pub fn of(headers: &[httparse::Header<'h>]) -> Self {
        let connection = || headers.iter().filter(|h| is_named(h.name, "connection"));
        // Nested rather than one flattened iterator: this runs for every message.
        let names_fields = connection().any(|h| {
            list_items(h.value).any(|item| {
                !item.eq_ignore_ascii_case(b"close") && !item.eq_ignore_ascii_case(b"keep-alive")
            })
        });
        let mut named = Vec::new();
        if names_fields {
            named.extend(connection().flat_map(|h| list_items(h.value)));
            named.sort_unstable_by(|a, b| cmp_ignoring_case(a, b));
            named.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        }
        HopByHop { named }
    }

    pub fn contains(&self, name: &str) -> bool {
        fixed_hop_by_hop(name)
            || (!self.named.is_empty()
                && !is_framing(name)
                && self
                    .named
                    .binary_search_by(|token| cmp_ignoring_case(token, name.as_bytes()))
                    .is_ok())
    }
}

/// An order of byte strings in which those equal but for ASCII case are equal: by length,
/// which settles most comparisons at once, then by their lower-case forms.
fn cmp_ignoring_case(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| {
        a.iter()
            .map(u8::to_ascii_lowercase)
            .cmp(b.iter().map(u8::to_ascii_lowercase))
    })
}

/// The fields that are hop-by-hop whatever the message says. By length first: most
/// fields are then ruled out without a comparison.
fn fixed_hop_by_hop(name: &str) -> bool {
    match name.len() {
        2 => is_named(name, "te"),
        7 => is_named(name, "trailer") || is_named(name, "upgrade"),
        10 => is_named(name, "connection") || is_named(name, "keep-alive"),
        16 => is_named(name, "proxy-connection"),
        19 => is_named(name, "proxy-authorization"),
        _ => false,
    }
}

/// `Content-Length` or `Transfer-Encoding`.
pub fn is_framing(name: &str) -> bool {
    match name.len() {
        14 => is_named(name, "content-length"),
        17 => is_named(name, "transfer-encoding"),
        _ => false,
    }
}

/// Appends `n` in decimal, without `fmt`'s machinery: heads carry a status and a length each.
pub fn put_decimal(out: &mut BytesMut, n: u64) {
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Whether field `name` is `lower` (a lower-case field name), as HTTP compares them.
#[inline]
pub fn is_named(name: &str, lower: &str) -> bool {
    name.len() == lower.len() && name.eq_ignore_ascii_case(lower)
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Appends a complete response the gateway produces itself: a short plain-text body, or
/// none when `message` is empty. `extra` holds header lines (`Name: value\r\n` each) the
/// policies add.
pub fn write_local_response(
    out: &mut BytesMut,
    status: u16,
    message: &str,
    extra: &[u8],
    close: bool,
    head_only: bool,
) {
    let body_len = if message.is_empty() {
        0
    } else {
        message.len() + 1
    };
    out.put_slice(b"HTTP/1.1 ");
    put_decimal(out, u64::from(status));
    out.put_u8(b' ');
    out.put_slice(reason(status).as_bytes());
    out.put_slice(b"\r\n");
    if body_len > 0 {
        out.put_slice(b"Content-Type: text/plain\r\n");
    }
    out.put_slice(b"Content-Length: ");
    put_decimal(out, body_len as u64);
    out.put_slice(b"\r\n");
    out.put_slice(extra);
    if close {
        out.put_slice(b"Connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    if !head_only && body_len > 0 {
        out.put_slice(message.as_bytes());
        out.put_u8(b'\n');
    }
}

pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_matched_whole_and_case_insensitively() {
        assert!(header_has_token(b"keep-alive, Close", b"close"));
        assert!(!header_has_token(b"closed", b"close"));
    }

    #[test]
    fn connection_named_fields_are_hop_by_hop() {
        let headers = [httparse::Header {
            name: "Connection",
            value: b"x-secret",
        }];
        let hop = HopByHop::of(&headers);
        assert!(hop.contains("X-Secret"));
        assert!(hop.contains("Keep-Alive"));
        assert!(!hop.contains("Transfer-Encoding"));
        assert!(!hop.contains("Accept"));
        // Naming a framing field in Connection must not strip it.
        let framing = [httparse::Header {
            name: "Connection",
            value: b"content-length, Transfer-Encoding",
        }];
        let hop = HopByHop::of(&framing);
        assert!(!hop.contains("Content-Length"));
        assert!(!hop.contains("transfer-encoding"));
    }

    #[test]
    fn every_named_field_is_found_whatever_its_case_and_only_those() {
        let names: Vec<String> = (0..50).map(|i| format!("X-Field-{i}")).collect();
        let list = names.join(" ,");
        let headers = [
            httparse::Header {
                name: "Connection",
                value: list.as_bytes(),
            },
            httparse::Header {
                name: "connection",
                value: b"close, x-field-7,X-Other",
            },
        ];
        let hop = HopByHop::of(&headers);
        for name in &names {
            assert!(hop.contains(name), "{name}");
            assert!(hop.contains(&name.to_ascii_lowercase()), "{name}");
        }
        assert!(hop.contains("x-other") && hop.contains("Close"));
        assert!(!hop.contains("X-Field-50") && !hop.contains("X-Field-") && !hop.contains("Y"));
        // Only the usual options: nothing gathered, nothing allocated.
        let usual = [httparse::Header {
            name: "Connection",
            value: b"keep-alive, close",
        }];
        let hop = HopByHop::of(&usual);
        assert_eq!(hop.named.capacity(), 0);
        assert!(!hop.contains("Close"));
    }

    /// Asks about each field of a head whose `Connection` header names all `n` of them, and
    /// returns the least time of a few tries.
    fn time_to_check_each_field(n: usize) -> std::time::Duration {
        let names: Vec<String> = (0..n).map(|i| format!("x-field-{i}")).collect();
        let list = names.join(", ");
        let mut headers = vec![httparse::Header {
            name: "Connection",
            value: list.as_bytes(),
        }];
        headers.extend(
            names
                .iter()
                .map(|name| httparse::Header { name, value: b"v" }),
        );
        (0..7)
            .map(|_| {
                let started = std::time::Instant::now();
                let hop = HopByHop::of(&headers);
                let found = headers.iter().filter(|h| hop.contains(h.name)).count();
                assert_eq!(found, n + 1);
                started.elapsed()
            })
            .min()
            .expect("seven tries")
    }

    #[test]
    fn checking_every_field_of_a_head_grows_about_linearly_with_the_named_fields() {
        // 16 times the fields: about 16 x 1.5 times the time when each check is a search of
        // the sorted names, 256 times when each scans every name.
        let small = time_to_check_each_field(128);
        let large = time_to_check_each_field(2048);
        let ratio = large.as_secs_f64() / small.as_secs_f64().max(1e-9);
        assert!(
            ratio < 100.0,
            "2048 named fields took {ratio:.0} times as long as 128"
        );
    }

    #[test]
    fn the_fixed_hop_by_hop_fields_whatever_connection_says() {
        let plain = [httparse::Header {
            name: "connection",
            value: b"Keep-Alive",
        }];
        let hop = HopByHop::of(&plain);
        for name in [
            "TE",
            "Trailer",
            "upgrade",
            "Connection",
            "keep-alive",
            "Proxy-Connection",
            "proxy-authorization",
        ] {
            assert!(hop.contains(name), "{name}");
            assert!(HopByHop::of(&[]).contains(name), "{name}");
        }
        for name in [
            "Tf",
            "Trailers",
            "Accept",
            "X-Connection",
            "Content-Length",
            "Host",
        ] {
            assert!(!hop.contains(name), "{name}");
        }
    }

    #[test]
    fn local_responses_are_complete() {
        let mut out = BytesMut::new();
        write_local_response(&mut out, 404, "no route", b"", false, false);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nno route\n"
        );
        out.clear();
        write_local_response(&mut out, 400, "bad", true_extra(), true, true);
        assert!(out.ends_with(b"X-A: 1\r\nConnection: close\r\n\r\n"));
        out.clear();
        write_local_response(&mut out, 204, "", b"", false, false);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
        );
    }

    fn true_extra() -> &'static [u8] {
        b"X-A: 1\r\n"
    }
}
