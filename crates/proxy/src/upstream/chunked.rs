//! Decoding the chunked transfer coding (RFC 9112 §7.1) of a backend's response body, and
//! [`Gathered`], the data one pass over the read buffer yields.
//!
//! The decoder is a small state machine over the connection's read buffer: it consumes every
//! complete piece the buffer holds and appends the chunk data to a [`Gathered`], so all the
//! chunks that arrived in one read leave as one frame (one write to the client) instead of
//! one frame each. A single chunk is handed on without a copy (a slice of the read buffer);
//! several are copied together. Chunk extensions are ignored, trailers are read and dropped
//! (no client of an LLM API uses them), a bare `\n` is accepted where `\r\n` belongs, and
//! size lines or trailers that grow past [`MAX_LINE`] are refused, so a broken backend cannot
//! make Hale buffer without bound.

use bytes::{Bytes, BytesMut};

/// The longest chunk-size line or trailer line accepted.
pub const MAX_LINE: usize = 4096;

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
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: State::Size,
            trailer_bytes: 0,
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
                    let Some(end) = line_end(buf)? else {
                        return Ok(());
                    };
                    let line = buf.split_to(end + 1);
                    let size = chunk_size(&line)?;
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
                State::DataEnd => match buf.first() {
                    None => return Ok(()),
                    Some(b'\n') => {
                        let _ = buf.split_to(1);
                        self.state = State::Size;
                    }
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(()),
                        Some(b'\n') => {
                            let _ = buf.split_to(2);
                            self.state = State::Size;
                        }
                        Some(_) => return Err(ChunkedError("no CRLF after chunk data")),
                    },
                    Some(_) => return Err(ChunkedError("no CRLF after chunk data")),
                },
                State::Trailer => {
                    let Some(end) = line_end(buf)? else {
                        return Ok(());
                    };
                    let line = buf.split_to(end + 1);
                    self.trailer_bytes += line.len();
                    if self.trailer_bytes > MAX_LINE {
                        return Err(ChunkedError("trailers too long"));
                    }
                    if line.as_ref() == b"\r\n" || line.as_ref() == b"\n" {
                        self.state = State::Done;
                    }
                }
                State::Done => return Ok(()),
            }
        }
    }
}

/// The index of the `\n` ending the line at the front of `buf`, if it is complete.
fn line_end(buf: &BytesMut) -> Result<Option<usize>, ChunkedError> {
    match buf.iter().take(MAX_LINE).position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i)),
        None if buf.len() >= MAX_LINE => Err(ChunkedError("line too long")),
        None => Ok(None),
    }
}

/// The size in a chunk-size line (`1a;ext=1\r\n`).
fn chunk_size(line: &[u8]) -> Result<u64, ChunkedError> {
    let digits: &[u8] = line
        .split(|&b| b == b';' || b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(ChunkedError("bad chunk size"));
    }
    digits.iter().try_fold(0_u64, |acc, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(ChunkedError("bad chunk size")),
        };
        Ok(acc * 16 + u64::from(d))
    })
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
        // Bare LF line ends and upper-case hex.
        let (data, done, _) = decode_all(&[b"A\nabcdefghij\n0\n\n"]).unwrap();
        assert_eq!((data.as_slice(), done), (&b"abcdefghij"[..], true));
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
        assert!(decode_all(&[b"zz\r\n"]).is_err());
        assert!(decode_all(&[b"\r\n"]).is_err());
        assert!(decode_all(&[b"3\r\nabcX"]).is_err());
        assert!(decode_all(&[b"fffffffffffffffff\r\n"]).is_err());
        let long = vec![b'1'; MAX_LINE + 1];
        assert!(decode_all(&[&long]).is_err());
    }
}
