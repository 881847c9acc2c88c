//! Incremental parser for `Transfer-Encoding: chunked` bodies.
//!
//! The proxy forwards chunked bodies in the framing they arrived in, so all it needs to
//! know is where the body ends; it parses strictly (CRLF only, bounded sizes and
//! extensions, no control bytes, trailers that are field lines) so that what it forwards
//! can be framed only one way downstream. For
//! HTTP/1.0 peers it can also hand out the data spans so the body can be de-chunked.

use std::ops::Range;

/// Longest chunk-size line extension or trailer section accepted, in bytes.
const MAX_META_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    BadSize,
    #[error("chunk size overflows 64 bits")]
    SizeOverflow,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("chunk extension or trailer section too long")]
    MetaTooLong,
    #[error("invalid trailer field line")]
    BadTrailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size; `digits` counts them.
    Size {
        digits: u8,
    },
    /// Whitespace after the size: only more of it or a `;` may follow.
    SizeWs,
    /// After the size: a chunk extension up to CR.
    Extension,
    /// Expecting the LF that ends a size line.
    SizeLf,
    /// Inside chunk data with this many bytes left.
    Data {
        left: u64,
    },
    /// Expecting CR then LF after chunk data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field's name, then its value.
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// Expecting the LF of the final empty line.
    FinalLf,
    Done,
}

/// Progress of one `feed` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to the body (the rest belongs to what follows it).
    pub consumed: usize,
    /// The body's last byte was seen.
    pub done: bool,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    meta: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            meta: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Parses as much of `input` as belongs to the body, calling `on_data` with the
    /// range of every run of chunk data (relative to `input`).
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size { digits } => match hex_value(b) {
                    Some(v) => {
                        if digits >= 16 {
                            return Err(ChunkError::SizeOverflow);
                        }
                        self.size = (self.size << 4) | u64::from(v);
                        self.state = State::Size { digits: digits + 1 };
                    }
                    None if digits == 0 => return Err(ChunkError::BadSize),
                    None => match b {
                        b'\r' => self.state = State::SizeLf,
                        b';' => {
                            self.meta = 0;
                            self.state = State::Extension;
                        }
                        b' ' | b'\t' => {
                            self.meta = 0;
                            self.state = State::SizeWs;
                        }
                        _ => return Err(ChunkError::BadSize),
                    },
                },
                // RFC 9112 §7.1.1 allows whitespace only before an extension's `;`: in
                // `5 junk` or `5 ` one parser reads 5 where another fails or reads on.
                State::SizeWs => match b {
                    b' ' | b'\t' => self.count_meta()?,
                    b';' => {
                        self.count_meta()?;
                        self.state = State::Extension;
                    }
                    _ => return Err(ChunkError::BadSize),
                },
                State::Extension => match b {
                    b'\r' => self.state = State::SizeLf,
                    // No valid extension holds a control byte; a NUL or a bare LF could
                    // end the line early for a parser downstream.
                    _ if is_ctl(b) => return Err(ChunkError::BadSize),
                    _ => self.count_meta()?,
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadSize);
                    }
                    if self.size == 0 {
                        self.meta = 0;
                        self.state = State::TrailerStart;
                    } else {
                        self.state = State::Data { left: self.size };
                    }
                    self.size = 0;
                }
                State::Data { left } => {
                    let available = (input.len() - i) as u64;
                    let take = left.min(available) as usize;
                    on_data(i..i + take);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = State::Size { digits: 0 };
                }
                // Trailers are forwarded as they came, so each line must be a field line
                // (`name: value`) that no parser can take for the end of the section or
                // for a request: no leading whitespace (obs-fold, a blank-looking line),
                // no line without a colon, no control bytes.
                State::TrailerStart => {
                    self.state = if b == b'\r' {
                        State::FinalLf
                    } else if b == b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    } else if is_tchar(b) {
                        State::TrailerName
                    } else {
                        return Err(ChunkError::BadTrailer);
                    };
                    self.count_meta()?;
                }
                State::TrailerName => {
                    if b == b':' {
                        self.state = State::TrailerValue;
                    } else if !is_tchar(b) {
                        return Err(ChunkError::BadTrailer);
                    }
                    self.count_meta()?;
                }
                State::TrailerValue => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else if b == b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    } else if is_ctl(b) {
                        return Err(ChunkError::BadTrailer);
                    }
                    self.count_meta()?;
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = State::TrailerStart;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = State::Done;
                    return Ok(Progress {
                        consumed: i + 1,
                        done: true,
                    });
                }
                State::Done => break,
            }
            i += 1;
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
        })
    }

    fn count_meta(&mut self) -> Result<(), ChunkError> {
        self.meta += 1;
        if self.meta > MAX_META_BYTES {
            return Err(ChunkError::MetaTooLong);
        }
        Ok(())
    }
}

/// A control byte other than HTAB (RFC 9110 §5.5): never part of a field or an extension.
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// A byte of a token (RFC 9110 §5.6.2), as field names are.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Progress), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let p = d.feed(input, |r| out.extend_from_slice(&input[r]))?;
        Ok((out, p))
    }

    #[test]
    fn decodes_a_whole_body_and_stops_at_its_end() {
        let input = b"5\r\nhello\r\n6;name=v\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (data, p) = decode_all(input).unwrap();
        assert_eq!(data, b"hello world");
        assert!(p.done);
        assert_eq!(&input[p.consumed..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn accepts_trailers() {
        let (data, p) = decode_all(b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n").unwrap();
        assert_eq!(data, b"abc");
        assert!(p.done);
    }

    #[test]
    fn same_result_when_fed_one_byte_at_a_time() {
        let input = b"A\r\n0123456789\r\n1\r\nx\r\n0\r\nT: v\r\n\r\n";
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        for (k, b) in input.iter().enumerate() {
            let one = [*b];
            let p = d.feed(&one, |r| out.extend_from_slice(&one[r])).unwrap();
            assert_eq!(p.consumed, 1);
            assert_eq!(p.done, k == input.len() - 1);
        }
        assert_eq!(out, b"0123456789x");
    }

    #[test]
    fn rejects_what_could_be_framed_two_ways() {
        assert_eq!(
            decode_all(b"5\nhello\r\n0\r\n\r\n").unwrap_err(),
            ChunkError::BadSize
        );
        assert_eq!(
            decode_all(b"5\r\nhello\n0\r\n\r\n").unwrap_err(),
            ChunkError::MissingCrlf
        );
        assert_eq!(
            decode_all(b"5\r\nhelloXX").unwrap_err(),
            ChunkError::MissingCrlf
        );
        assert_eq!(decode_all(b"-5\r\n").unwrap_err(), ChunkError::BadSize);
        assert_eq!(decode_all(b"0x5\r\n").unwrap_err(), ChunkError::BadSize);
        assert_eq!(decode_all(b"\r\n").unwrap_err(), ChunkError::BadSize);
        assert_eq!(
            decode_all(b"11111111111111111\r\n").unwrap_err(),
            ChunkError::SizeOverflow
        );
        assert_eq!(decode_all(b"0\r\n\n").unwrap_err(), ChunkError::MissingCrlf);
    }

    #[test]
    fn whitespace_after_the_size_leads_only_to_an_extension() {
        let (data, p) = decode_all(b"5 \t;a=b\r\nhello\r\n0\r\n\r\n").unwrap();
        assert_eq!((data.as_slice(), p.done), (b"hello".as_slice(), true));
        for bad in [&b"5 junk\r\n"[..], b"5 \r\n", b"5\t\r\n", b"5 6\r\n"] {
            assert_eq!(
                decode_all(bad).unwrap_err(),
                ChunkError::BadSize,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn extensions_hold_no_control_bytes() {
        let (data, _) = decode_all(b"5;n=\"q;\\\"x\"\t;m\r\nhello\r\n0\r\n\r\n").unwrap();
        assert_eq!(data, b"hello");
        for bad in [
            &b"5;a=\x00\r\n"[..],
            b"5;\x1b\r\n",
            b"5;a\x7f\r\n",
            b"5;a\rb\r\n",
        ] {
            assert_eq!(
                decode_all(bad).unwrap_err(),
                ChunkError::BadSize,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn trailers_must_be_field_lines() {
        let (data, p) =
            decode_all(b"1\r\nx\r\n0\r\nContent-Length: 50\r\nX-Empty:\r\nX: a\tb\r\n\r\n")
                .unwrap();
        assert_eq!((data.as_slice(), p.done), (b"x".as_slice(), true));
        for bad in [
            // What a lenient parser could end the trailers at, then read a request from.
            &b"0\r\n \r\nGET /smuggled HTTP/1.1\r\n\r\n"[..],
            b"0\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            b"0\r\nX: v\r\n folded\r\n\r\n",
            b"0\r\n\tX: v\r\n\r\n",
            b"0\r\n: v\r\n\r\n",
            b"0\r\nX : v\r\n\r\n",
            b"0\r\nX: a\x00b\r\n\r\n",
            b"0\r\nX\x7f: v\r\n\r\n",
        ] {
            assert_eq!(
                decode_all(bad).unwrap_err(),
                ChunkError::BadTrailer,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bounds_extensions_and_trailers() {
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_META_BYTES + 1));
        assert_eq!(decode_all(&long).unwrap_err(), ChunkError::MetaTooLong);
        let mut trailer = b"0\r\nX: ".to_vec();
        trailer.extend(std::iter::repeat_n(b'a', MAX_META_BYTES + 1));
        assert_eq!(decode_all(&trailer).unwrap_err(), ChunkError::MetaTooLong);
    }

    #[test]
    fn partial_input_is_all_consumed_and_not_done() {
        let (data, p) = decode_all(b"10\r\nabc").unwrap();
        assert_eq!(data, b"abc");
        assert_eq!(
            p,
            Progress {
                consumed: 7,
                done: false
            }
        );
    }
}
