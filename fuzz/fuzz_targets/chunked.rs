//! The chunked-body decoder on any bytes, fed whole and fed in pieces (the first byte picks
//! the piece size): it never panics, and how the bytes arrive changes nothing (the data, the
//! end of the body, or the error), as the relay reads whatever the socket gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwall::http::chunked::ChunkedDecoder;

/// The body's data, where the body ended, or that it failed.
#[derive(Debug, PartialEq)]
enum Outcome {
    Done { data: Vec<u8>, consumed: usize },
    More { data: Vec<u8> },
    Failed,
}

fn decode(input: &[u8], piece: usize) -> Outcome {
    let mut decoder = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut offset = 0;
    for part in input.chunks(piece.max(1)) {
        let progress = decoder.feed(part, |r| data.extend_from_slice(&part[r]));
        match progress {
            Err(_) => return Outcome::Failed,
            Ok(p) if p.done => {
                return Outcome::Done {
                    data,
                    consumed: offset + p.consumed,
                }
            }
            Ok(p) => assert_eq!(
                p.consumed,
                part.len(),
                "an unfinished body takes every byte"
            ),
        }
        offset += part.len();
    }
    Outcome::More { data }
}

fuzz_target!(|input: &[u8]| {
    let Some((&piece, body)) = input.split_first() else {
        return;
    };
    let whole = decode(body, body.len());
    let pieces = decode(body, usize::from(piece % 16) + 1);
    assert_eq!(whole, pieces);
});
