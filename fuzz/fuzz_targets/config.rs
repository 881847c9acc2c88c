//! The configuration loader on any text, as one file of the directory: it never panics,
//! whatever the YAML. Host names resolve to a loopback address without a DNS query, and no
//! environment variable is set.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files = [("fuzz.yaml".to_owned(), text.to_owned())];
    let resolve = |_: &str, port: u16| Ok(vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))]);
    let _ = ringwall_config::load_with(&files, &|_| None, &resolve);
});
