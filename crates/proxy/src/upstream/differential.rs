//! Differential property test of the upstream response path against hyper's HTTP/1 client:
//! generated backend answers — valid and broken heads, lengths, codings and chunked bodies,
//! cut short or not, sent in pieces — go byte for byte to Hale's client (over loopback TCP:
//! `Upstream::send`, `head::parse_response`, then `stream::UpstreamBody` with the chunked
//! decoder, as a request would use them) and to `hyper::client::conn::http1` (over a tokio
//! duplex), and both must read the same answer.
//!
//! "The same": both refuse it or cut it short (a refused head and a body that broke off are
//! alike: the client never gets a complete answer), or both read it whole with the same
//! status, the same end-to-end headers (hyper's, put through Hale's forwarding rules:
//! hop-by-hop and `Connection`-named headers out, `Content-Length` only as the length of a
//! length-framed body) and the same body bytes. Whatever hyper says, Hale must also never
//! forward `Content-Length` beside a `Transfer-Encoding` or different from its body, and never
//! pool a connection whose body ran until close.
//!
//! Where the two legitimately differ, the case is recognised and only the safe property is
//! asserted:
//! - `101 Switching Protocols`: hyper hands it over as an upgrade; Hale never asks for one and
//!   refuses it.
//! - A `Transfer-Encoding` line whose list ends in an empty element (`chunked,`): hyper looks
//!   at the text after the last comma, finds no coding and reads until close; Hale skips
//!   empty elements as RFC 9110 §5.6.1 says and decodes the chunked coding. Either way the
//!   answer is complete and carries no length.
//! - Not generated, because the two only differ on limits: heads over 60 KiB or 96 headers
//!   (Hale refuses; hyper takes 400 KiB and 100), chunk-size lines over 4 KiB (Hale refuses;
//!   hyper reads any number of leading zeros) and chunk extensions over 4 KiB in one line
//!   (hyper allows 16 KiB over the whole body), lengths above `u64::MAX - 2` (hyper refuses
//!   the head; Hale waits for the bytes and is cut short: both incomplete anyway).

use super::Framing;
use crate::route::Route;
use crate::runtime::EndpointRuntime;
use crate::stream::UpstreamBody;
use crate::upstream::{Outgoing, Upstream};
use bytes::Bytes;
use hale_core::{EndpointConfig, EndpointKind};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::time::{Instant, timeout};

/// Cases per run: 1.5–4 s measured in a debug build on a shared 2-core machine.
const CASES: u32 = 8000;

// === generated answers ===

/// One generated backend answer, and how it reaches the wire.
#[derive(Debug, Clone)]
struct Answer {
    /// Interim heads before the answer.
    interim: Vec<&'static str>,
    version: &'static str,
    status: u16,
    /// Header lines, CRLF-less (an obs-fold has its own CRLF inside).
    headers: Vec<String>,
    /// `Content-Length`, decided once the body's length is known.
    length: Option<Length>,
    body: Vec<u8>,
    /// Where the wire is cut short (a fraction of the bytes after the head), if it is.
    cut: Option<Index>,
    /// Where the wire is split into separate writes.
    splits: Vec<Index>,
}

/// A `Content-Length` relative to the body actually sent.
#[derive(Debug, Clone, Copy)]
enum Length {
    Exact,
    /// Announces more than is sent: the backend closes early.
    More(u8),
    /// Announces less than is sent: the rest is left unread.
    Less(u8),
    /// Two equal lines.
    TwoLines,
    /// `n, n` and `n,n`.
    List,
    /// Two different lines.
    Conflicting,
    /// `n, n+1`.
    ConflictingList,
    Signed,
    Hex,
    LeadingZeros,
    Empty,
    Negative,
    Overflow,
    /// `u64::MAX`: hyper refuses, Hale waits and is cut short.
    Huge,
    /// Trailing comma.
    TrailingComma,
    /// Spaces inside.
    Spaced,
}

impl Length {
    fn lines(self, n: usize) -> Vec<String> {
        let v = |s: String| vec![format!("Content-Length: {s}")];
        match self {
            Length::Exact => v(n.to_string()),
            Length::More(k) => v((n + usize::from(k) + 1).to_string()),
            Length::Less(k) => v(n.saturating_sub(usize::from(k) + 1).to_string()),
            Length::TwoLines => vec![
                format!("content-length: {n}"),
                format!("Content-Length:{n}"),
            ],
            Length::List => v(format!("{n}, {n},{n}")),
            Length::Conflicting => vec![
                format!("content-length: {n}"),
                format!("content-length: {}", n + 1),
            ],
            Length::ConflictingList => v(format!("{n}, {}", n + 1)),
            Length::Signed => v(format!("+{n}")),
            Length::Hex => v(format!("0x{n:x}")),
            Length::LeadingZeros => v(format!("000{n}")),
            Length::Empty => v(String::new()),
            Length::Negative => v("-1".into()),
            Length::Overflow => v("18446744073709551616".into()),
            Length::Huge => v(u64::MAX.to_string()),
            Length::TrailingComma => v(format!("{n},")),
            Length::Spaced => v(format!("{} {}", n / 10, n % 10)),
        }
    }
}

fn length() -> impl Strategy<Value = Option<Length>> {
    prop_oneof![
        6 => Just(None),
        6 => Just(Some(Length::Exact)),
        2 => (0_u8..4).prop_map(|k| Some(Length::More(k))),
        1 => (0_u8..4).prop_map(|k| Some(Length::Less(k))),
        4 => prop::sample::select(vec![
            Length::TwoLines,
            Length::List,
            Length::Conflicting,
            Length::ConflictingList,
            Length::Signed,
            Length::Hex,
            Length::LeadingZeros,
            Length::Empty,
            Length::Negative,
            Length::Overflow,
            Length::Huge,
            Length::TrailingComma,
            Length::Spaced,
        ])
        .prop_map(Some),
    ]
}

fn transfer_encoding() -> impl Strategy<Value = Vec<String>> {
    let value = prop::sample::select(vec![
        "chunked",
        "Chunked",
        "CHUNKED",
        "chunked ",
        "gzip, chunked",
        "gzip,chunked",
        "chunked, gzip",
        "gzip",
        "identity",
        "chunked, chunked",
        "chunked,",
        "x-custom",
    ]);
    prop_oneof![
        5 => Just(Vec::new()),
        5 => value.clone().prop_map(|v| vec![format!("Transfer-Encoding: {v}")]),
        1 => (value.clone(), value).prop_map(|(a, b)| vec![
            format!("transfer-encoding: {a}"),
            format!("transfer-encoding: {b}"),
        ]),
    ]
}

/// Other header lines: end-to-end ones, hop-by-hop ones, Hale's own, odd whitespace, and a
/// few that make the head malformed.
fn other_header() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "content-type: application/json",
            "Content-Type: text/event-stream",
            "x-custom:   spaced value   ",
            "x-tab:\tvalue\t",
            "x-empty:",
            "x-ratelimit-remaining: 7",
            "x-dup: 1",
            "X-Dup: 2",
            "set-cookie: a=1; Path=/",
            "connection: keep-alive",
            "Connection: close",
            "connection: x-private, keep-alive",
            "x-private: secret",
            "keep-alive: timeout=5",
            "proxy-authenticate: Basic",
            "trailer: x-sum",
            "upgrade: h2c",
            "x-request-id: from-backend",
            "x-hale-endpoint: forged",
            "x-obs-text: caf\u{e9}",
        ]).prop_map(str::to_owned),
        1 => prop::sample::select(vec![
            // obs-fold, a space before the colon, no colon, a bad name: malformed heads.
            "x-fold: a\r\n b",
            "x-space : v",
            "no colon here",
            "x(bad): v",
        ]).prop_map(str::to_owned),
    ]
}

/// One chunk of a chunked body, with its size written in one of several ways (some broken)
/// and one of several line ends (some broken).
fn chunk() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(any::<u8>(), 1..24),
        prop_oneof![
            24 => Just("lower"),
            6 => Just("upper"),
            6 => Just("zeros"),
            3 => Just("many-zeros"),
            1 => prop::sample::select(vec!["zz", "-5", " 5", "5 5", "1ffffffffffffffff", "10000000000000000", "ffffffffffffffff", ""]),
        ],
        prop::sample::select(vec!["", "", "", ";a=b", " ;x", "\t; q=\"v\"", ";", "; \u{0}"]),
        prop_oneof![40 => Just("\r\n"), 1 => Just("\n"), 1 => Just("\r")],
        prop_oneof![40 => Just("\r\n"), 1 => Just("\n"), 1 => Just("XY"), 1 => Just("")],
    )
        .prop_map(|(data, size, ext, line_end, data_end)| {
            let n = data.len();
            let size = match size {
                "lower" => format!("{n:x}"),
                "upper" => format!("{n:X}"),
                "zeros" => format!("00{n:x}"),
                "many-zeros" => format!("{}{n:x}", "0".repeat(40)),
                other => other.to_owned(),
            };
            let mut out = format!("{size}{ext}{line_end}").into_bytes();
            out.extend_from_slice(&data);
            out.extend_from_slice(data_end.as_bytes());
            out
        })
}

fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(chunk(), 0..4),
        prop::sample::select(vec!["0", "0", "000", "0;last=1", "0 "]),
        prop::collection::vec(
            prop_oneof![
                12 => Just("x-sum: 1\r\n"),
                6 => Just("X-Other:  two words \r\n"),
                1 => Just("not a field\r\n"),
                1 => Just("x-a: 1\nx-b: 2\r\n"),
                1 => Just("x-bare: lf\n"),
                1 => Just("x-cr: \rX\r\n"),
            ],
            0..3,
        ),
        prop_oneof![30 => Just("\r\n"), 1 => Just("\n"), 1 => Just("")],
        prop_oneof![6 => Just(""), 1 => Just("HTTP/1.1 200 OK\r\n\r\n")],
    )
        .prop_map(|(chunks, last, trailers, end, after)| {
            let mut out: Vec<u8> = chunks.concat();
            out.extend_from_slice(format!("{last}\r\n").as_bytes());
            for t in trailers {
                out.extend_from_slice(t.as_bytes());
            }
            out.extend_from_slice(end.as_bytes());
            out.extend_from_slice(after.as_bytes());
            out
        })
}

fn answer() -> impl Strategy<Value = Answer> {
    (
        prop::collection::vec(
            prop::sample::select(vec![
                "HTTP/1.1 100 Continue\r\n\r\n",
                "HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
            ]),
            0..2,
        ),
        prop_oneof![8 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0")],
        prop_oneof![
            10 => Just(200_u16),
            1 => prop::sample::select(vec![201_u16, 204, 304, 400, 404, 429, 500, 502, 503, 101, 199, 299]),
        ],
        prop::collection::vec(other_header(), 0..5),
        transfer_encoding(),
        length(),
        prop::collection::vec(any::<u8>(), 0..40),
        chunked_body(),
        0_u8..100,
        prop_oneof![4 => Just(None), 1 => any::<Index>().prop_map(Some)],
        prop::collection::vec(any::<Index>(), 0..3),
        any::<Index>(),
    )
        .prop_map(
            |(interim, version, status, mut headers, te, length, raw, chunked, pick, cut, splits, at)| {
                // Mostly a chunked body where a coding is named, a plain one where none is.
                let body = if pick < if te.is_empty() { 20 } else { 85 } {
                    chunked
                } else {
                    raw
                };
                // The framing headers go somewhere among the others.
                let at = at.index(headers.len() + 1);
                for (i, line) in te.into_iter().enumerate() {
                    headers.insert(at.min(headers.len()) + i, line);
                }
                Answer {
                    interim,
                    version,
                    status,
                    headers,
                    length,
                    body,
                    cut,
                    splits,
                }
            },
        )
}

impl Answer {
    /// The bytes the backend writes, in the pieces it writes them.
    fn wire(&self) -> Vec<Vec<u8>> {
        let mut head = self.interim.concat();
        head.push_str(&format!("{} {} Whatever\r\n", self.version, self.status));
        let mut headers = self.headers.clone();
        if let Some(l) = self.length {
            headers.extend(l.lines(self.body.len()));
        }
        for h in &headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut wire = head.into_bytes();
        let head_len = wire.len();
        wire.extend_from_slice(&self.body);
        if let Some(cut) = &self.cut {
            wire.truncate(head_len + cut.index(wire.len() - head_len + 1));
        }
        let mut at: Vec<usize> = self
            .splits
            .iter()
            .map(|i| i.index(wire.len() + 1))
            .collect();
        at.sort_unstable();
        at.dedup();
        let mut pieces = Vec::new();
        let mut from = 0;
        for i in at.into_iter().chain([wire.len()]) {
            if i > from {
                pieces.push(wire[from..i].to_vec());
                from = i;
            }
        }
        pieces
    }
}

// === reading it both ways ===

/// What a client of each side would be given.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// No answer: the head was refused, or the connection ended before one.
    Refused(String),
    Answered {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        /// The body ended where its framing said (not cut short, not malformed).
        complete: bool,
    },
}

impl Outcome {
    fn complete(&self) -> bool {
        matches!(self, Outcome::Answered { complete: true, .. })
    }
}

/// Reads one request (head and `content-length` body) from `io`.
async fn read_request(io: &mut (impl AsyncRead + Unpin)) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut byte = [0_u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        io.read_exact(&mut byte).await?;
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0_u8; len];
    io.read_exact(&mut body).await?;
    Ok(())
}

/// The backend's side: read the request, write the answer piece by piece (letting the reader
/// run in between), close.
async fn serve(mut io: impl AsyncRead + AsyncWrite + Unpin, pieces: &[Vec<u8>]) {
    if read_request(&mut io).await.is_err() {
        return;
    }
    for p in pieces {
        if io.write_all(p).await.is_err() || io.flush().await.is_err() {
            return;
        }
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }
    let _ = io.shutdown().await;
}

const REQUEST_BODY: &[u8] = br#"{"model":"m"}"#;
/// However broken the answer, each side ends within this (a hang fails the case).
const DEADLINE: Duration = Duration::from_secs(10);

/// Hale's client, pointed at a loopback listener that plays the backend.
struct Hale {
    upstream: Upstream,
    rt: Arc<EndpointRuntime>,
    listener: TcpListener,
}

impl Hale {
    async fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let endpoint = EndpointConfig::new("diff", url, EndpointKind::Vllm)
            .resolve("e")
            .unwrap();
        // Where the bodies report to outlier detection (nothing routes by it here).
        let store = Arc::new(hale_core::HealthStore::new(
            "diff",
            vec![endpoint.clone()],
            &hale_core::HealthConfig::default(),
            hale_core::Now::capture(),
        ));
        let rt = Arc::new(EndpointRuntime::new(
            Arc::new(endpoint),
            // Truncated answers count on the breaker; thousands of them must not open it,
            // or later cases could not claim the endpoint.
            &crate::config::ProxyConfig {
                breaker: hale_core::BreakerConfig {
                    failure_threshold: u32::MAX,
                    ..hale_core::BreakerConfig::default()
                },
                ..crate::config::ProxyConfig::default()
            },
            1,
            &store,
        ));
        Self {
            upstream: Upstream::new(Duration::from_secs(2), 1),
            rt,
            listener,
        }
    }

    /// Hale's reading of the answer, and its framing when it read a head.
    async fn read(&self, pieces: &[Vec<u8>]) -> (Outcome, Option<Framing>) {
        let backend = async {
            if let Ok((stream, _)) = self.listener.accept().await {
                serve(stream, pieces).await;
            }
        };
        let client = async {
            let headers = HeaderMap::new();
            let keep = |_: &HeaderName| true;
            let body = Bytes::from_static(REQUEST_BODY);
            let outgoing = Outgoing {
                route: Route::ChatCompletions,
                custom: None,
                query: None,
                headers: &headers,
                keep: &keep,
                added: &[],
                body: &body,
            };
            let now = Instant::now();
            let claim = self.rt.try_claim(false, now).unwrap();
            let (head, conn) = match self.upstream.send(&self.rt.dest, &outgoing, now).await {
                Ok(sent) => sent,
                Err(e) => return (Outcome::Refused(format!("{e:?}")), None),
            };
            let framing = head.framing;
            let body = UpstreamBody::new(
                conn,
                head.framing,
                head.reusable,
                claim,
                now,
                self.rt
                    .watch(Route::ChatCompletions.path(), head.status.as_u16()),
            );
            let (body, complete) = match body.collect().await {
                Ok(b) => (b.to_bytes(), true),
                Err(_) => (Bytes::new(), false),
            };
            let outcome = Outcome::Answered {
                status: head.status,
                headers: head.headers,
                body,
                complete,
            };
            (outcome, Some(framing))
        };
        let ((), read) = tokio::join!(backend, client);
        read
    }
}

/// hyper's reading of the same bytes.
async fn hyper_reads(pieces: &[Vec<u8>]) -> Outcome {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let backend = serve(server, pieces);
    let client = async {
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(client)).await {
                Ok(pair) => pair,
                Err(e) => return Outcome::Refused(e.to_string()),
            };
        let driver = tokio::spawn(conn);
        let request = http::Request::post("/v1/chat/completions")
            .header("host", "backend")
            .body(Full::new(Bytes::from_static(REQUEST_BODY)))
            .unwrap();
        let outcome = match sender.send_request(request).await {
            Err(e) => Outcome::Refused(e.to_string()),
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let (body, complete) = match body.collect().await {
                    Ok(b) => (b.to_bytes(), true),
                    Err(_) => (Bytes::new(), false),
                };
                Outcome::Answered {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                    complete,
                }
            }
        };
        drop(sender);
        let _ = driver.await;
        outcome
    };
    let ((), outcome) = tokio::join!(backend, client);
    outcome
}

// === comparing ===

/// The headers of `hyper`'s answer that Hale forwards, `Content-Length` aside.
fn end_to_end(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let named = crate::hygiene::connection_named(headers.get_all(http::header::CONNECTION));
    let mut kept: Vec<(HeaderName, HeaderValue)> = headers
        .iter()
        .filter(|(n, _)| {
            crate::hygiene::forwards_downstream(n)
                && *n != http::header::CONTENT_LENGTH
                && !named.contains(n)
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    kept.sort_by(|a, b| (a.0.as_str(), a.1.as_bytes()).cmp(&(b.0.as_str(), b.1.as_bytes())));
    kept
}

fn lengths(headers: &HeaderMap) -> Vec<&HeaderValue> {
    headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .collect()
}

/// Whether a `Transfer-Encoding` line ends in an empty list element (see the module docs).
fn te_ends_empty(answer: &Answer) -> bool {
    answer.headers.iter().any(|h| {
        h.to_ascii_lowercase().starts_with("transfer-encoding:") && h.trim_end().ends_with(',')
    })
}

fn check(
    answer: &Answer,
    hale: &Outcome,
    framing: Option<Framing>,
    hyper: &Outcome,
) -> Result<(), TestCaseError> {
    // Whatever hyper says: what Hale forwards is consistent with what it reads.
    if let Outcome::Answered {
        headers,
        body,
        complete,
        ..
    } = hale
    {
        prop_assert!(headers.get(http::header::TRANSFER_ENCODING).is_none());
        let cl = lengths(headers);
        match framing {
            Some(Framing::Length(n)) => {
                prop_assert_eq!(cl.len(), 1, "one content-length");
                let value = super::digits(cl[0].as_bytes());
                prop_assert_eq!(value, Some(n), "the length forwarded is the body's");
                if *complete {
                    prop_assert_eq!(body.len() as u64, n);
                }
            }
            _ => prop_assert!(
                cl.is_empty(),
                "content-length without a length-framed body: {:?}",
                cl
            ),
        }
    }
    if answer.status == 101 {
        prop_assert!(matches!(hale, Outcome::Refused(_)), "101 is refused");
        return Ok(());
    }
    if te_ends_empty(answer) && framing != Some(Framing::Empty) {
        // hyper reads until close, Hale decodes the chunked coding: only the safe properties.
        if hale.complete() {
            prop_assert!(matches!(
                framing,
                Some(Framing::Chunked | Framing::UntilClose)
            ));
        }
        return Ok(());
    }
    match (hale, hyper) {
        (
            Outcome::Answered {
                status,
                headers,
                body,
                complete,
            },
            Outcome::Answered {
                status: h_status,
                headers: h_headers,
                body: h_body,
                complete: h_complete,
            },
        ) => {
            prop_assert_eq!(
                complete,
                h_complete,
                "complete: hale {:?}, hyper {:?}",
                hale,
                hyper
            );
            prop_assert_eq!(status, h_status);
            prop_assert_eq!(end_to_end(headers), end_to_end(h_headers));
            if *complete {
                prop_assert_eq!(body, h_body);
                // A length goes on exactly when hyper framed the body by one.
                let by_length = h_headers.get(http::header::TRANSFER_ENCODING).is_none()
                    && !matches!(h_status.as_u16(), 204 | 304)
                    && h_headers.contains_key(http::header::CONTENT_LENGTH);
                prop_assert_eq!(!lengths(headers).is_empty(), by_length);
            }
        }
        (hale, hyper) => prop_assert!(
            !hale.complete() && !hyper.complete(),
            "one read a complete answer, the other did not: hale {:?}, hyper {:?}",
            hale,
            hyper
        ),
    }
    Ok(())
}

#[test]
fn hale_reads_answers_as_hyper_does() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hale = runtime.block_on(Hale::new());
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let seen: [Cell<usize>; 4] = Default::default();
    let result = runner.run(&answer(), |answer| {
        let pieces = answer.wire();
        let (hale_read, framing, hyper_read) = runtime.block_on(async {
            let (hale_read, framing) = timeout(DEADLINE, hale.read(&pieces))
                .await
                .map_err(|_| TestCaseError::fail("Hale hung"))?;
            let hyper_read = timeout(DEADLINE, hyper_reads(&pieces))
                .await
                .map_err(|_| TestCaseError::fail("hyper hung"))?;
            Ok::<_, TestCaseError>((hale_read, framing, hyper_read))
        })?;
        // Never pooled after a body that ran until close; the next case starts afresh.
        let pooled = hale.rt.dest.pool.idle_count();
        if framing == Some(Framing::UntilClose) {
            prop_assert_eq!(pooled, 0, "a read-until-close connection was pooled");
        }
        hale.rt.dest.pool.clear();
        let kind = match (&hale_read, hale_read.complete()) {
            (Outcome::Refused(_), _) => 0,
            (_, false) => 1,
            (_, true) if framing == Some(Framing::Chunked) => 2,
            _ => 3,
        };
        seen[kind].set(seen[kind].get() + 1);
        check(&answer, &hale_read, framing, &hyper_read)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generators reach every kind of outcome, each in a fair share of the cases.
    let [refused, cut, chunked, other] = seen.map(Cell::into_inner);
    eprintln!(
        "{CASES} answers: refused {refused}, cut short {cut}, complete chunked {chunked}, complete otherwise {other}"
    );
    assert!(
        [refused, cut, chunked, other]
            .iter()
            .all(|&n| n >= CASES as usize / 20),
        "refused {refused}, cut short {cut}, complete chunked {chunked}, complete otherwise {other}"
    );
}
