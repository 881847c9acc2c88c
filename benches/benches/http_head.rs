//! What does the request phase cost before any IO? Parsing a client's head and writing
//! the rewritten upstream head is work every request pays; this measures it for a bare
//! request (as a load generator sends) and for a browser-like one with a dozen
//! headers, so that a regression in either path shows up here first. The third head is a
//! hostile one: 120 fields, each named by its `Connection` header as well, which made the
//! hop-by-hop check scan every `Connection` token once per field.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringwall::http::request::{self, Forward, MAX_HEADERS};

const BARE: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8005\r\n\r\n";
const BROWSER: &[u8] = b"GET /api/orders/12345?expand=items&limit=20 HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
Accept: application/json, text/plain, */*\r\n\
Accept-Language: en-GB,en;q=0.9\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc\r\n\
X-Request-Id: 5f2b7c1e-1d2a-4c3b-9e8f-0a1b2c3d4e5f\r\n\
X-Forwarded-For: 203.0.113.7\r\n\
Cookie: session=abcdef0123456789; theme=dark\r\n\
Cache-Control: no-cache\r\n\
Connection: keep-alive\r\n\
Referer: https://app.example.com/orders\r\n\r\n";

/// `GET /` with `FIELDS` fields `X-Field-N`, all named in its `Connection` header too.
fn connection_named() -> Vec<u8> {
    const FIELDS: usize = 120;
    let mut head = String::from("GET / HTTP/1.1\r\nHost: 127.0.0.1:8005\r\nConnection: ");
    let names: Vec<String> = (0..FIELDS).map(|i| format!("X-Field-{i}")).collect();
    head.push_str(&names.join(", "));
    head.push_str("\r\n");
    for name in &names {
        head.push_str(&format!("{name}: v\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn parse_and_rewrite(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_head");
    let hostile = connection_named();
    for (name, raw) in [
        ("bare", BARE),
        ("browser", BROWSER),
        ("connection-named", &hostile[..]),
    ] {
        group.throughput(Throughput::Bytes(raw.len() as u64));
        let mut out = BytesMut::with_capacity(4096);
        group.bench_with_input(BenchmarkId::new("parse", name), raw, |b, raw| {
            b.iter(|| {
                let mut headers = ringwall::http::header_slots::<MAX_HEADERS>();
                let req = request::parse(raw, &mut headers, 32 * 1024)
                    .unwrap()
                    .unwrap();
                std::hint::black_box(req.framing);
            })
        });
        group.bench_with_input(
            BenchmarkId::new("parse_and_rewrite", name),
            raw,
            |b, raw| {
                b.iter(|| {
                    let mut headers = ringwall::http::header_slots::<MAX_HEADERS>();
                    let req = request::parse(raw, &mut headers, 32 * 1024)
                        .unwrap()
                        .unwrap();
                    out.clear();
                    request::write_upstream_head(
                        &req,
                        &Forward {
                            path_prefix: "/v2/",
                            rest: req.target,
                            upstream_authority: "127.0.0.1:9000",
                            peer: std::net::IpAddr::from([127, 0, 0, 1]),
                            scheme: "http",
                            extra: b"",
                            strip: &request::keep_all,
                        },
                        &mut out,
                    );
                    std::hint::black_box(out.len());
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, parse_and_rewrite);
criterion_main!(benches);
