//! Decoding the chunked transfer coding (RFC 9112 §7.1) of a backend's response body, and
//! [`Gathered`], the data one pass over the read buffer yields.
//!
//! The decoder is a small state machine over the connection's read buffer: it consumes every
//! complete piece the buffer holds and appends the chunk data to a [`Gathered`], so all the
//! chunks that arrived in one read leave as one frame (one write to the client) instead of
//! one frame each. A single chunk is handed on without a copy (a slice of the read buffer);
//! several are copied together.
//!
//! Where the body ends decides where the next answer on a kept-alive connection starts, so
//! the framing is read strictly, exactly as hyper's client reads it (the differential test in
//! `differential.rs` holds the two to the same bytes): a chunk-size line is hex digits (at
//! least one; a size that overflows a `u64` is refused), optional spaces or tabs, an optional
//! `;` extension (ignored; no CR in it), and CRLF; chunk data is followed by exactly CRLF;
//! trailer lines end in CRLF up to an empty line, and must parse as header fields (they are
//! then dropped: no client of an LLM API uses them). A bare LF where CRLF belongs is refused
//! (RFC 9112 §2.2 allows either; accepting it is how two parsers come to disagree on where a
//! message ends). Size lines over [`MAX_LINE`] bytes, and trailers over [`MAX_TRAILERS`]
//! bytes or [`MAX_TRAILER_LINES`] lines, are refused, so a broken backend cannot make Hale
//! buffer without bound. Every refusal is a [`ChunkedError`]: the body is malformed and the
//! client's answer is cut.

use bytes::{Buf as _, Bytes, BytesMut};

/// The longest chunk-size line accepted (extensions included).
pub const MAX_LINE: usize = 4096;
/// The most trailer bytes accepted (hyper's limit).
pub const MAX_TRAILERS: usize = 16 * 1024;
/// The most trailer lines accepted (hyper's limit on header fields).
pub const MAX_TRAILER_LINES: usize = 100;

/// Data taken from the read buffer and not yet handed on: nothing, one piece as it came, or
/// several copied together.
#[derive(Debug, Default)]
pub enum Gathered {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Gathered {
    pub fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        *self = match std::mem::take(self) {
            Gathered::Empty => Gathered::One(data),
            Gathered::One(first) => {
                let mut many = BytesMut::with_capacity((first.len() + data.len()).max(1024));
                many.extend_from_slice(&first);
                many.extend_from_slice(&data);
                Gathered::Many(many)
            }
            Gathered::Many(mut many) => {
                many.extend_from_slice(&data);
                Gathered::Many(many)
            }
        };
    }

    pub fn take(&mut self) -> Option<Bytes> {
        match std::mem::take(self) {
            Gathered::Empty => None,
            Gathered::One(b) => Some(b),
            Gathered::Many(b) => Some(b.freeze()),
        }
    }
}

/// A chunked body that does not follow the coding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkedError(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, up to the empty line.
    Trailer,
    Done,
}

/// The decoder; see the module docs.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// The trailer lines read so far (kept only to check them), and how many.
    trailers: Vec<u8>,
    trailer_lines: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: State::Size,
            trailers: Vec::new(),
            trailer_lines: 0,
        }
    }
}

impl ChunkedDecoder {
    /// Whether the final chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes what it can from `buf`, appending chunk data to `out`.
    pub fn decode(&mut self, buf: &mut BytesMut, out: &mut Gathered) -> Result<(), ChunkedError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(end) = size_line_end(buf)? else {
                        return Ok(());
                    };
                    let size = chunk_size(&buf[..end - 1])?;
                    // Skipped, not split off: a split of a shared buffer costs two atomic
                    // reference-count updates per chunk for bytes nobody keeps.
                    buf.advance(end + 1);
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(());
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    out.push(buf.split_to(n).freeze());
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => match (buf.first(), buf.get(1)) {
                    (None, _) | (Some(b'\r'), None) => return Ok(()),
                    (Some(b'\r'), Some(b'\n')) => {
                        buf.advance(2);
                        self.state = State::Size;
                    }
                    _ => return Err(ChunkedError("no CRLF after chunk data")),
                },
                State::Trailer => {
                    // A trailer line runs to its CR, which must be followed by LF (a bare LF
                    // inside is the line's content, for the header parser to judge).
                    let Some(cr) = buf.iter().take(MAX_TRAILERS).position(|&b| b == b'\r') else {
                        if buf.len() >= MAX_TRAILERS {
                            return Err(ChunkedError("trailers too long"));
                        }
                        return Ok(());
                    };
                    match buf.get(cr + 1) {
                        None => return Ok(()),
                        Some(b'\n') => {}
                        Some(_) => return Err(ChunkedError("no LF after CR in the trailers")),
                    }
                    let line = buf.split_to(cr + 2);
                    if cr == 0 {
                        check_trailers(&mut self.trailers, self.trailer_lines)?;
                        self.state = State::Done;
                        continue;
                    }
                    self.trailer_lines += 1;
                    if self.trailer_lines > MAX_TRAILER_LINES {
                        return Err(ChunkedError("too many trailer lines"));
                    }
                    if self.trailers.len() + line.len() > MAX_TRAILERS {
                        return Err(ChunkedError("trailers too long"));
                    }
                    self.trailers.extend_from_slice(&line);
                }
                State::Done => return Ok(()),
            }
        }
    }
}

/// The index of the LF ending the chunk-size line at the front of `buf` once it is complete;
/// the line must end in CRLF.
fn size_line_end(buf: &BytesMut) -> Result<Option<usize>, ChunkedError> {
    match buf.iter().take(MAX_LINE).position(|&b| b == b'\n') {
        Some(i) if i > 0 && buf[i - 1] == b'\r' => Ok(Some(i)),
        Some(_) => Err(ChunkedError("chunk-size line not ended by CRLF")),
        None if buf.len() >= MAX_LINE => Err(ChunkedError("chunk-size line too long")),
        None => Ok(None),
    }
}

/// The size in a chunk-size line without its CRLF: `1a`, `1a  ;ext=1`.
fn chunk_size(line: &[u8]) -> Result<u64, ChunkedError> {
    let hex = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if hex == 0 {
        return Err(ChunkedError("no chunk size"));
    }
    let size = line[..hex].iter().try_fold(0_u64, |acc, &b| {
        // Hex digits only, as just counted.
        let d = (b as char).to_digit(16).unwrap_or(0);
        acc.checked_mul(16)
            .and_then(|a| a.checked_add(u64::from(d)))
            .ok_or(ChunkedError("chunk size overflows"))
    })?;
    let rest = &line[hex..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    match rest.first() {
        None => Ok(size),
        Some(b';') if !rest.contains(&b'\r') => Ok(size),
        Some(_) => Err(ChunkedError("bad chunk-size line")),
    }
}

/// Checks the trailer section read (`lines` CRLF-ended lines; the empty line is not in it)
/// parses as header fields, and forgets it.
fn check_trailers(section: &mut Vec<u8>, lines: usize) -> Result<(), ChunkedError> {
    if section.is_empty() {
        return Ok(());
    }
    section.extend_from_slice(b"\r\n");
    let mut fields = vec![httparse::EMPTY_HEADER; lines];
    let valid = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => fields.iter().all(|f| {
            http::HeaderName::from_bytes(f.name.as_bytes()).is_ok()
                && http::HeaderValue::from_bytes(f.value).is_ok()
        }),
        _ => false,
    };
    *section = Vec::new();
    if valid {
        Ok(())
    } else {
        Err(ChunkedError("malformed trailers"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool, usize), ChunkedError> {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut frames = 0;
        for p in pieces {
            buf.extend_from_slice(p);
            let mut out = Gathered::default();
            d.decode(&mut buf, &mut out)?;
            if let Some(b) = out.take() {
                frames += 1;
                data.extend_from_slice(&b);
            }
        }
        Ok((data, d.is_done(), frames))
    }

    #[test]
    fn decodes_whole_and_split_bodies() {
        let body: &[u8] = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        let (data, done, frames) = decode_all(&[body]).unwrap();
        assert_eq!(
            (data.as_slice(), done, frames),
            (&b"hello world"[..], true, 1)
        );
        // Byte by byte: same data, the decoder waits at every boundary.
        let pieces: Vec<&[u8]> = body.chunks(1).collect();
        let (data, done, _) = decode_all(&pieces).unwrap();
        assert_eq!((data.as_slice(), done), (&b"hello world"[..], true));
        // Upper-case hex, spaces before an extension, a size with leading zeros.
        let (data, done, _) =
            decode_all(&[b"A \t;x\r\nabcdefghij\r\n000000000000000000001\r\nk\r\n0\r\n\r\n"])
                .unwrap();
        assert_eq!((data.as_slice(), done), (&b"abcdefghijk"[..], true));
        // Not done until the empty line after the last chunk.
        let (_, done, _) = decode_all(&[b"3\r\nabc\r\n0\r\n"]).unwrap();
        assert!(!done);
    }

    #[test]
    fn one_chunk_is_not_copied() {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n"[..]);
        let mut out = Gathered::default();
        d.decode(&mut buf, &mut out).unwrap();
        assert!(matches!(out, Gathered::One(_)));
    }

    #[test]
    fn refuses_malformed_bodies() {
        for (body, why) in [
            (&b"zz\r\n"[..], "no chunk size"),
            (b"\r\n", "no chunk size"),
            (b" 3\r\nabc\r\n", "no chunk size"),
            (b"-3\r\nabc\r\n", "no chunk size"),
            (b"3 4\r\n", "bad chunk-size line"),
            (b"3x\r\n", "bad chunk-size line"),
            (b"3\r\r\n", "bad chunk-size line"),
            (b"3;a\rb\r\n", "bad chunk-size line"),
            (b"3\nabc\r\n", "chunk-size line not ended by CRLF"),
            (b"3;ext\nabc\r\n", "chunk-size line not ended by CRLF"),
            (b"3\r\nabcX", "no CRLF after chunk data"),
            (b"3\r\nabc\n0\r\n\r\n", "no CRLF after chunk data"),
            (b"3\r\nabc\rX", "no CRLF after chunk data"),
            (b"10000000000000000\r\n", "chunk size overflows"),
            (b"0\r\nx: 1\rX", "no LF after CR in the trailers"),
            (b"0\r\nnot a field\r\n\r\n", "malformed trailers"),
            (b"0\r\nx: 1\ny\r\n\r\n", "malformed trailers"),
        ] {
            assert_eq!(
                decode_all(&[body]).map(|(d, done, _)| (d, done)),
                Err(ChunkedError(why)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // The largest size that fits is a size, not an error (the body is then short).
        let (_, done, _) = decode_all(&[b"ffffffffffffffff\r\nab"]).unwrap();
        assert!(!done);
        let long = vec![b'1'; MAX_LINE + 1];
        assert_eq!(
            decode_all(&[&long]).map(|_| ()),
            Err(ChunkedError("chunk-size line too long"))
        );
        let mut trailers = b"0\r\n".to_vec();
        trailers.extend(std::iter::repeat_n(b'x', MAX_TRAILERS));
        assert_eq!(
            decode_all(&[&trailers]).map(|_| ()),
            Err(ChunkedError("trailers too long"))
        );
        let many = format!("0\r\n{}\r\n", "x: 1\r\n".repeat(MAX_TRAILER_LINES + 1));
        assert_eq!(
            decode_all(&[many.as_bytes()]).map(|_| ()),
            Err(ChunkedError("too many trailer lines"))
        );
    }

    #[test]
    fn trailers_are_checked_and_dropped() {
        let body: &[u8] = b"2\r\nhi\r\n0\r\nx-a: 1\r\nx-b:  two words \r\n\r\nNEXT";
        let pieces: Vec<&[u8]> = body.chunks(1).collect();
        for split in [vec![body], pieces] {
            let mut d = ChunkedDecoder::default();
            let mut buf = BytesMut::new();
            let mut data = Vec::new();
            for p in split {
                buf.extend_from_slice(p);
                let mut out = Gathered::default();
                d.decode(&mut buf, &mut out).unwrap();
                if let Some(b) = out.take() {
                    data.extend_from_slice(&b);
                }
            }
            assert!(d.is_done());
            assert_eq!(data, b"hi");
            assert_eq!(&buf[..], b"NEXT", "the body ends exactly at the empty line");
        }
    }
}
