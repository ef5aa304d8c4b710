//! Message bodies: a streaming decoder for every framing, and chunk encoding.

use super::Error;

/// Most hex digits in a chunk size: 16 fill a `u64`, so no size can overflow.
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;

/// Most bytes of chunk extensions and trailer fields in one body. Both are dropped, so they
/// cost no memory, but without a bound a peer could stream them forever without a body byte.
const MAX_CHUNK_METADATA_BYTES: usize = 16 * 1024;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    Empty,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the connection closes (responses without framing only).
    UntilClose,
}

/// Streaming body decoder: feed it whatever arrived, in any split, and it appends the body
/// bytes to `out` and stops at the end of the body, so pipelined bytes after it stay with the
/// caller. After an error it keeps returning that error.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
    received: u64,
    max_body_bytes: u64,
    /// Chunk extension (and BWS) and trailer bytes so far, against
    /// [`MAX_CHUNK_METADATA_BYTES`].
    metadata: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// `Content-Length` body, this many bytes still to come.
    Length(u64),
    UntilClose,
    /// Hex digits of a chunk size: value and digit count so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size, before `;`: BWS only.
    SizeSpace {
        size: u64,
    },
    /// Inside chunk extensions, until CR.
    Extension {
        size: u64,
    },
    /// CR of the chunk-size line seen.
    SizeLf {
        size: u64,
    },
    /// Chunk data, this many bytes still to come.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final CRLF.
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// CR seen; `last` when it ended the empty line that closes the body.
    TrailerLf {
        last: bool,
    },
    Done,
    Failed(Error),
}

impl BodyDecoder {
    /// A decoder for `body` that fails with [`Error::BodyTooLarge`] past `max_body_bytes` of
    /// body (a `Content-Length` above it fails on the first [`decode`](Self::decode)).
    pub fn new(body: Body, max_body_bytes: u64) -> Self {
        let state = match body {
            Body::Empty | Body::Length(0) => State::Done,
            Body::Length(n) if n > max_body_bytes => State::Failed(Error::BodyTooLarge),
            Body::Length(n) => State::Length(n),
            Body::Chunked => State::Size { size: 0, digits: 0 },
            Body::UntilClose => State::UntilClose,
        };
        Self { state, received: 0, max_body_bytes, metadata: 0 }
    }

    /// Decodes from `input`, appending body bytes to `out`; returns how many bytes of `input`
    /// belong to the body (fewer than `input.len()` only once the body is done).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let mut pos = 0;
        while pos < input.len() && self.state != State::Done {
            match self.step(&input[pos..], out) {
                Ok(used) => pos += used,
                Err(e) => {
                    self.state = State::Failed(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(pos)
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Body bytes decoded so far (after dechunking).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The peer closed the connection: completes an [`Body::UntilClose`] body, and is
    /// [`Error::UnexpectedEof`] for a length or chunked body that is not done.
    pub fn finish_at_eof(&mut self) -> Result<(), Error> {
        match &self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            State::Failed(e) => Err(e.clone()),
            _ => {
                self.state = State::Failed(Error::UnexpectedEof);
                Err(Error::UnexpectedEof)
            }
        }
    }

    /// One transition on non-empty `input`; consumes at least one byte.
    fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        let Some(&b) = input.first() else {
            return Ok(0);
        };
        let malformed = |what| Err(Error::Malformed(what));
        self.state = match self.state {
            State::Length(remaining) => {
                let n = self.take(input, remaining, out);
                self.state = match remaining - n as u64 {
                    0 => State::Done,
                    left => State::Length(left),
                };
                return Ok(n);
            }
            State::UntilClose => {
                self.count_body(input.len() as u64)?;
                out.extend_from_slice(input);
                return Ok(input.len());
            }
            State::Data(remaining) => {
                let n = self.take(input, remaining, out);
                self.state = match remaining - n as u64 {
                    0 => State::DataCr,
                    left => State::Data(left),
                };
                return Ok(n);
            }
            State::Size { size, digits } => match hex(b) {
                Some(_) if digits == MAX_CHUNK_SIZE_DIGITS => {
                    return malformed("chunk size too long")
                }
                Some(d) => State::Size { size: (size << 4) | u64::from(d), digits: digits + 1 },
                None if digits == 0 => return malformed("missing chunk size"),
                None => after_size(b, size)?,
            },
            State::SizeSpace { size } => match b {
                b' ' | b'\t' => {
                    self.count_metadata("chunk extensions too long")?;
                    State::SizeSpace { size }
                }
                b';' => State::Extension { size },
                _ => return malformed("invalid byte after chunk size"),
            },
            State::Extension { size } => {
                self.count_metadata("chunk extensions too long")?;
                match b {
                    b'\r' => State::SizeLf { size },
                    b'\t' | b' '..=0x7e | 0x80..=0xff => State::Extension { size },
                    _ => return malformed("invalid byte in chunk extension"),
                }
            }
            State::SizeLf { size } => match b {
                b'\n' if size == 0 => State::TrailerStart,
                b'\n' => {
                    if self.received.checked_add(size).is_none_or(|n| n > self.max_body_bytes) {
                        return Err(Error::BodyTooLarge);
                    }
                    State::Data(size)
                }
                _ => return malformed("chunk size line not ended by CRLF"),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return malformed("chunk data not followed by CRLF"),
            },
            State::DataLf => match b {
                b'\n' => State::Size { size: 0, digits: 0 },
                _ => return malformed("chunk data not followed by CRLF"),
            },
            State::TrailerStart | State::Trailer => {
                let start = self.state == State::TrailerStart;
                self.count_metadata("chunked trailer too long")?;
                match b {
                    b'\r' => State::TrailerLf { last: start },
                    b'\t' | b' '..=0x7e | 0x80..=0xff => State::Trailer,
                    _ => return malformed("invalid byte in chunked trailer"),
                }
            }
            State::TrailerLf { last } => match b {
                b'\n' if last => State::Done,
                b'\n' => State::TrailerStart,
                _ => return malformed("chunked trailer line not ended by CRLF"),
            },
            State::Done => return Ok(0),
            State::Failed(ref e) => return Err(e.clone()),
        };
        Ok(1)
    }

    /// Counts one byte of chunk extensions (with the whitespace before them) or trailers.
    fn count_metadata(&mut self, too_long: &'static str) -> Result<(), Error> {
        self.metadata += 1;
        if self.metadata > MAX_CHUNK_METADATA_BYTES {
            return Err(Error::Malformed(too_long));
        }
        Ok(())
    }

    /// Copies up to `remaining` bytes of `input` to `out`; returns how many.
    fn take(&mut self, input: &[u8], remaining: u64, out: &mut Vec<u8>) -> usize {
        let n = usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
        out.extend_from_slice(&input[..n]);
        // Length bodies are checked against the limit up front, chunks when their size is read.
        self.received += n as u64;
        n
    }

    fn count_body(&mut self, n: u64) -> Result<(), Error> {
        match self.received.checked_add(n) {
            Some(total) if total <= self.max_body_bytes => {
                self.received = total;
                Ok(())
            }
            _ => Err(Error::BodyTooLarge),
        }
    }
}

/// The state after the byte that ends a chunk size's digits.
fn after_size(b: u8, size: u64) -> Result<State, Error> {
    match b {
        b'\r' => Ok(State::SizeLf { size }),
        b';' => Ok(State::Extension { size }),
        b' ' | b'\t' => Ok(State::SizeSpace { size }),
        _ => Err(Error::Malformed("invalid chunk size")),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends `data` as one chunk. Empty `data` appends nothing: an empty chunk would be the last.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk and an empty trailer section.
pub fn encode_last_chunk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(body: Body, max: u64, input: &[u8]) -> (Result<usize, Error>, Vec<u8>, bool) {
        let mut d = BodyDecoder::new(body, max);
        let mut out = Vec::new();
        let r = d.decode(input, &mut out);
        (r, out, d.is_done())
    }

    #[test]
    fn chunk_sizes() {
        let ok: &[(&[u8], &[u8])] = &[
            (b"1\r\na\r\n0\r\n\r\n", b"a"),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (b"0000000000000001\r\nz\r\n0\r\n\r\n", b"z"),
            (b"1 ;ext\r\nz\r\n0 \t; last=\"yes\"\r\n\r\n", b"z"),
        ];
        for (input, want) in ok {
            let (r, out, done) = decode_all(Body::Chunked, 1 << 20, input);
            let shown = input.escape_ascii();
            assert_eq!(r, Ok(input.len()), "input {shown}");
            assert_eq!(out, *want, "input {shown}");
            assert!(done, "input {shown}");
        }
        let bad: &[(&[u8], Error)] = &[
            (b"\r\n", Error::Malformed("missing chunk size")),
            (b";x\r\n", Error::Malformed("missing chunk size")),
            (b"-1\r\n", Error::Malformed("missing chunk size")),
            (b"+1\r\n", Error::Malformed("missing chunk size")),
            (b"0x1\r\n", Error::Malformed("invalid chunk size")),
            (b"00000000000000001\r\n", Error::Malformed("chunk size too long")),
            (b"fffffffffffffffff\r\n", Error::Malformed("chunk size too long")),
            (b"ffffffffffffffff\r\n", Error::BodyTooLarge),
            (b"1 \r\n", Error::Malformed("invalid byte after chunk size")),
            (b"1\n", Error::Malformed("invalid chunk size")),
            (b"1\r\r\n", Error::Malformed("chunk size line not ended by CRLF")),
            (b"1;a\nb\r\n", Error::Malformed("invalid byte in chunk extension")),
            (b"1\r\nab", Error::Malformed("chunk data not followed by CRLF")),
            (b"1\r\na\n", Error::Malformed("chunk data not followed by CRLF")),
            (b"1\r\na\r\r", Error::Malformed("chunk data not followed by CRLF")),
            (b"0\r\nX: 1\n", Error::Malformed("invalid byte in chunked trailer")),
            (b"0\r\n\n", Error::Malformed("invalid byte in chunked trailer")),
            (b"0\r\n\r\r", Error::Malformed("chunked trailer line not ended by CRLF")),
        ];
        for (input, want) in bad {
            let (r, _, _) = decode_all(Body::Chunked, 1 << 20, input);
            assert_eq!(r, Err(want.clone()), "input {}", input.escape_ascii());
        }
    }

    #[test]
    fn errors_stick() {
        let mut d = BodyDecoder::new(Body::Chunked, 10);
        let mut out = Vec::new();
        assert_eq!(d.decode(b"g", &mut out), Err(Error::Malformed("missing chunk size")));
        assert_eq!(d.decode(b"0\r\n\r\n", &mut out), Err(Error::Malformed("missing chunk size")));
        assert_eq!(d.finish_at_eof(), Err(Error::Malformed("missing chunk size")));
        assert!(!d.is_done());
    }

    #[test]
    fn metadata_is_bounded() {
        let mut input = b"1;".to_vec();
        input.resize(2 + MAX_CHUNK_METADATA_BYTES, b'x');
        let (r, _, _) = decode_all(Body::Chunked, 1 << 20, &input);
        assert_eq!(r, Ok(input.len()), "extensions up to the bound pass");
        input.push(b'x');
        let (r, _, _) = decode_all(Body::Chunked, 1 << 20, &input);
        assert_eq!(r, Err(Error::Malformed("chunk extensions too long")));

        // The first space ends the size; the rest count.
        let mut input = b"1".to_vec();
        input.resize(3 + MAX_CHUNK_METADATA_BYTES, b' ');
        let (r, _, _) = decode_all(Body::Chunked, 1 << 20, &input);
        assert_eq!(r, Err(Error::Malformed("chunk extensions too long")), "endless BWS");

        let mut input = b"0\r\n".to_vec();
        for _ in 0..MAX_CHUNK_METADATA_BYTES / 4 {
            input.extend_from_slice(b"X: 123\r\n");
        }
        input.extend_from_slice(b"\r\n");
        let (r, _, _) = decode_all(Body::Chunked, 1 << 20, &input);
        assert_eq!(r, Err(Error::Malformed("chunked trailer too long")));
    }

    #[test]
    fn encode_chunk_skips_empty_data() {
        let mut out = Vec::new();
        encode_chunk(b"", &mut out);
        assert!(out.is_empty());
        encode_chunk(&[7; 300], &mut out);
        encode_last_chunk(&mut out);
        assert_eq!(&out[..5], b"12c\r\n");
        assert_eq!(&out[out.len() - 7..], b"\r\n0\r\n\r\n");
    }
}
