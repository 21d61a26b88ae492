//! The response body Hale hands to the client: read from the backend's connection as it
//! arrives, decoded, and passed on without waiting for more.
//!
//! Every poll first hands on what the read buffer already holds — for a chunked body, all the
//! complete chunks in it at once (see `upstream::chunked`) — and only reads from the socket
//! when the buffer has nothing to give. So SSE events and NDJSON lines keep their timing (a
//! chunk goes out as soon as it is read) while a burst that arrived in one read goes out in one
//! write, and a non-streaming answer that came with its head is passed on in the same turn.
//!
//! Memory: once everything read has been handed on, the body lets go of the connection's read
//! buffer, so a stream between two chunks holds no read memory (reads go through the serving
//! thread's scratch buffer, see `upstream::io`).
//!
//! When the body has been read to its end and the backend did not ask to close, the connection
//! goes back into the endpoint's pool. The body holds the request's [`Claim`], so the endpoint
//! counts the request as outstanding until the last byte, and records
//! `hale_proxy_request_duration_seconds` when the body ends, fails or is dropped.
//!
//! A client that disconnects makes hyper drop this body, which closes the backend connection
//! mid-answer; the backend sees its client gone and stops generating. A backend that breaks
//! off mid-body (reset, closed before the declared length, malformed chunks) ends the body
//! with an error, which makes hyper cut the client's connection too, so a truncated answer
//! never looks complete.
//!
//! Outlier detection: the body carries the request's [`Watch`]. A body read to its end records
//! the answer's outcome; one the backend broke off (reset, truncated, malformed chunks) or
//! left idle past `idle_timeout` records a failure (`stream cut` / `idle timeout`) and asks
//! core for one prompt probe check; one the client dropped records nothing.

use crate::runtime::{Claim, Watch};
use crate::tally::Tally;
use crate::upstream::Conn;
use crate::upstream::chunked::{ChunkedDecoder, Gathered};
use crate::upstream::head::Framing;
use bytes::{Bytes, BytesMut};
use hale_core::Signal;
use http_body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Instant;

/// A backend's body on its way to the client; see the module docs.
#[derive(Debug)]
pub struct UpstreamBody {
    /// The connection, until the body ends (then it is pooled or closed).
    conn: Option<Conn>,
    decoder: Decoder,
    reusable: bool,
    tally: Tally,
}

#[derive(Debug)]
enum Decoder {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl UpstreamBody {
    pub fn new(
        conn: Conn,
        framing: Framing,
        reusable: bool,
        claim: Claim,
        started: Instant,
        watch: Watch,
    ) -> Self {
        let decoder = match framing {
            Framing::Empty | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(ChunkedDecoder::default()),
            Framing::UntilClose => Decoder::UntilClose,
        };
        let mut body = Self {
            conn: Some(conn),
            decoder,
            reusable,
            tally: Tally::new(claim, started, watch),
        };
        if matches!(body.decoder, Decoder::Done) {
            body.release();
        }
        body
    }

    /// The body has ended: the connection goes back to the endpoint's pool (reached through
    /// the claim, which keeps the runtime alive) if it can carry another request (reusable,
    /// nothing unread in its buffer), and the bookkeeping ends.
    fn release(&mut self) {
        self.tally.ended();
        let now = Instant::now();
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.buf.is_empty()
            && let Some(claim) = self.tally.claim()
        {
            claim.runtime().dest.pool.put(conn, now);
        }
        self.tally.finish_at(now);
    }

    /// The body broke off (`signal`): the connection is closed, the client's answer cut, the
    /// failure counted ([`Tally::cut`]).
    fn fail(
        &mut self,
        signal: Signal,
        message: String,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.tally.cut(signal, &message);
        self.conn = None;
        self.decoder = Decoder::Done;
        Poll::Ready(Some(Err(io::Error::other(message))))
    }

    /// The socket had nothing: wait, or fail once `idle_timeout` has passed with nothing new.
    fn wait_idle(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.tally.poll_idle(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(message) => self.fail(Signal::IdleTimeout, message),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                this.tally.finish();
                return Poll::Ready(None);
            };
            // Hand on what the buffer holds.
            let mut out = Gathered::default();
            let done = match &mut this.decoder {
                Decoder::Length(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    if n > 0 {
                        out.push(conn.buf.split_to(n).freeze());
                        *left -= n as u64;
                    }
                    *left == 0
                }
                Decoder::Chunked(d) => {
                    if let Err(e) = d.decode(&mut conn.buf, &mut out) {
                        return this.fail(Signal::StreamCut, e.to_string());
                    }
                    d.is_done()
                }
                Decoder::UntilClose => {
                    if !conn.buf.is_empty() {
                        out.push(conn.buf.split().freeze());
                    }
                    false
                }
                Decoder::Done => true,
            };
            if done {
                this.decoder = Decoder::Done;
                this.release();
                return Poll::Ready(out.take().map(|d| Ok(Frame::data(d))));
            }
            if let Some(data) = out.take() {
                if conn.buf.is_empty() {
                    // Everything read is handed on: let go of the buffer, so a stream
                    // waiting for its next chunk holds no read memory (see `upstream::io`).
                    conn.buf = BytesMut::new();
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            // Nothing buffered: read more.
            let read = conn.io.poll_read_into(cx, &mut conn.buf);
            let Poll::Ready(read) = read else {
                return this.wait_idle(cx);
            };
            match read {
                Ok(0) if matches!(this.decoder, Decoder::UntilClose) => {
                    this.reusable = false;
                    this.decoder = Decoder::Done;
                }
                Ok(0) => {
                    return this.fail(
                        Signal::StreamCut,
                        "the backend closed the connection before the end of the body".into(),
                    );
                }
                Ok(_) => this.tally.progressed(),
                Err(e) => return this.fail(Signal::StreamCut, format!("reading the body: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoder, Decoder::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Chunked(_) | Decoder::UntilClose => SizeHint::default(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Dropped before its end (the client left): the connection closes with it.
        self.tally.finish();
    }
}
