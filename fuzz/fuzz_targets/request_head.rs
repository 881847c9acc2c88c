//! The request-head parser on any bytes: it never panics, and a head it accepts is
//! forwarded as a head that parses back alone, whole, with the same method and framing, so
//! the gateway and the upstream agree on where the request ends (no smuggling).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringwall::http::request::{self, Forward};

fuzz_target!(|data: &[u8]| {
    let mut headers = ringwall::http::header_slots::<{ request::MAX_HEADERS }>();
    let Ok(Some(req)) = request::parse(data, &mut headers, 64 * 1024) else {
        return;
    };
    let _ = request::uri_too_long(data, Some(req.target), 8192);
    let mut out = BytesMut::new();
    let forward = Forward {
        path_prefix: "/up",
        rest: req.target,
        upstream_authority: "127.0.0.1:9000",
        peer: [192, 0, 2, 1].into(),
        scheme: "http",
        extra: b"x-policy: 1\r\n",
        strip: &request::keep_all,
    };
    request::write_upstream_head(&req, &forward, &mut out);
    let mut again = ringwall::http::header_slots::<{ request::MAX_HEADERS + 8 }>();
    let parsed = request::parse(&out, &mut again, usize::MAX);
    let Ok(Some(up)) = parsed else {
        panic!(
            "the upstream head does not parse: {parsed:?}\n{}",
            String::from_utf8_lossy(&out)
        );
    };
    assert_eq!(
        up.head_len,
        out.len(),
        "the upstream head has bytes after its end"
    );
    assert_eq!(up.method, req.method);
    assert_eq!(up.framing, req.framing, "{}", String::from_utf8_lossy(&out));
});
