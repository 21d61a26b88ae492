//! Generated answers: OpenAI chat/completion/embedding objects, Ollama's native chat,
//! generate and embed objects, and the streams of both (SSE and NDJSON).
//!
//! The text of every answer is the same fixed sentence cut into words, one word per chunk:
//! `chunks` words make up a non-streamed answer and a stream carries exactly `chunks`
//! content chunks, so a test can check that a proxy passed every chunk through and that the
//! streamed text adds up to the non-streamed one. OpenAI streams mark the first chunk with
//! the assistant role and the last with `finish_reason: "stop"`, then send `data: [DONE]`;
//! Ollama streams send one line per word and then the `"done": true` summary line.
//!
//! A stream is a [`ChunkStream`]: it renders each chunk only when hyper asks for the next
//! frame and waits the chunk delay in between on a tokio timer, so chunks leave one by one
//! and nothing is built up front. With `drop_after_chunks` it yields an error after that many
//! chunks, which makes hyper abort the connection mid-body (no terminating chunk, no
//! `[DONE]`), the way a crashed backend looks to a proxy; with `stall_after_chunks` it stops
//! after that many chunks and never produces another frame, holding the connection open, the
//! way a backend stuck mid-generation looks.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::Frame;
use serde::{Deserialize, Serialize, Serializer};
use tokio::time::Sleep;

/// The sentence every answer is cut from, one entry per chunk (repeating if more are asked).
const WORDS: [&str; 8] = [
    "This", " is", " a", " mock", " reply", " from", " mockllm", ".",
];
/// The vector every embedding answer carries.
const EMBEDDING: [f32; 8] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8];

fn word(i: u32) -> &'static str {
    WORDS[i as usize % WORDS.len()]
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The fields of a generation request mockllm looks at; everything else is ignored.
#[derive(Debug, Deserialize)]
pub struct GenRequest<'a> {
    #[serde(default, borrow)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Embedding input: a string, or an array with one entry per input.
    #[serde(default)]
    pub input: Option<serde_json::Value>,
    /// Rerank documents: one score per entry.
    #[serde(default)]
    pub documents: Option<serde_json::Value>,
}

/// OpenAI's `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

impl GenRequest<'_> {
    /// How many embeddings the request asks for: one per array entry, one for a scalar.
    pub fn input_count(&self) -> usize {
        match &self.input {
            Some(serde_json::Value::Array(items))
                if items.first().is_some_and(|v| v.is_string() || v.is_array()) =>
            {
                items.len()
            }
            // An empty array asks for nothing; an array of numbers is one tokenised input.
            Some(serde_json::Value::Array(items)) if items.is_empty() => 0,
            _ => 1,
        }
    }
}

/// Everything a generated answer depends on.
#[derive(Clone, Copy, Debug)]
pub struct Gen<'a> {
    pub model: &'a str,
    /// A process-unique number for the answer's id.
    pub id: u64,
    pub now_ms: u64,
    /// Words in the answer (and chunks in a stream).
    pub chunks: u32,
    pub chunk_delay_ms: u64,
    /// A rough prompt size, from the request body length.
    pub prompt_tokens: u32,
}

impl Gen<'_> {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.chunks,
            total_tokens: self.prompt_tokens.saturating_add(self.chunks),
        }
    }

    fn ollama_timings(&self) -> OllamaTimings {
        // Plausible nanosecond figures: the eval time covers the configured chunk delays.
        let eval = 1_000_000 + u64::from(self.chunks) * self.chunk_delay_ms * 1_000_000;
        OllamaTimings {
            total_duration: Some(2_000_000 + eval),
            load_duration: Some(500_000),
            prompt_eval_count: Some(self.prompt_tokens),
            prompt_eval_duration: Some(500_000),
            eval_count: Some(self.chunks),
            eval_duration: Some(eval),
        }
    }
}

// === small serialisable pieces ===

/// An answer id such as `chatcmpl-mock-42`, written without an intermediate `String`.
#[derive(Clone, Copy)]
struct Id(&'static str, u64);

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}-mock-{}", self.0, self.1))
    }
}

/// The first `n` words of the sentence, as one string.
#[derive(Clone, Copy)]
struct Words(u32);

impl fmt::Display for Words {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (0..self.0).try_for_each(|i| f.write_str(word(i)))
    }
}

impl Serialize for Words {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A UTC timestamp in RFC 3339 with milliseconds, as Ollama's `created_at`.
#[derive(Clone, Copy)]
struct Rfc3339(u64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0 % 1000;
        let secs = self.0 / 1000;
        let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
        let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[derive(Clone, Copy, Serialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

#[derive(Serialize)]
struct Message<C> {
    role: &'static str,
    content: C,
}

// === OpenAI objects ===

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: Id,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: [ChatChoice; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct ChatChoice {
    index: u32,
    message: Message<Words>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: Id,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: &'a [ChunkChoice],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ChunkChoice {
    index: u32,
    delta: Delta,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    content: &'static str,
}

#[derive(Serialize)]
struct TextCompletion<'a, T> {
    id: Id,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [TextChoice<T>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct TextChoice<T> {
    text: T,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: [f32; 8],
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u32,
    total_tokens: u32,
}

/// A non-streamed `chat.completion`.
pub fn openai_chat(g: &Gen<'_>) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&ChatCompletion {
        id: Id("chatcmpl", g.id),
        object: "chat.completion",
        created: g.now_ms / 1000,
        model: g.model,
        system_fingerprint: "mockllm",
        choices: [ChatChoice {
            index: 0,
            message: Message {
                role: "assistant",
                content: Words(g.chunks),
            },
            logprobs: None,
            finish_reason: "stop",
        }],
        usage: g.usage(),
    })
}

/// A non-streamed `text_completion`.
pub fn openai_completion(g: &Gen<'_>) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&TextCompletion {
        id: Id("cmpl", g.id),
        object: "text_completion",
        created: g.now_ms / 1000,
        model: g.model,
        choices: &[TextChoice {
            text: Words(g.chunks),
            index: 0,
            logprobs: None,
            finish_reason: Some("stop"),
        }],
        usage: Some(g.usage()),
    })
}

/// An OpenAI embedding list with one fixed vector per input.
pub fn openai_embeddings(g: &Gen<'_>, inputs: usize) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&EmbeddingList {
        object: "list",
        data: (0..inputs)
            .map(|index| EmbeddingItem {
                object: "embedding",
                index,
                embedding: EMBEDDING,
            })
            .collect(),
        model: g.model,
        usage: EmbeddingUsage {
            prompt_tokens: g.prompt_tokens,
            total_tokens: g.prompt_tokens,
        },
    })
}

// === Ollama objects ===

#[derive(Default, Serialize)]
struct OllamaTimings {
    #[serde(skip_serializing_if = "Option::is_none")]
    total_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    load_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_eval_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_eval_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_duration: Option<u64>,
}

#[derive(Serialize)]
struct OllamaChat<'a, C> {
    model: &'a str,
    created_at: Rfc3339,
    message: Message<C>,
    #[serde(skip_serializing_if = "Option::is_none")]
    done_reason: Option<&'static str>,
    done: bool,
    #[serde(flatten)]
    timings: OllamaTimings,
}

#[derive(Serialize)]
struct OllamaGenerate<'a, C> {
    model: &'a str,
    created_at: Rfc3339,
    response: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    done_reason: Option<&'static str>,
    done: bool,
    #[serde(flatten)]
    timings: OllamaTimings,
}

#[derive(Serialize)]
struct OllamaEmbed<'a> {
    model: &'a str,
    embeddings: Vec<[f32; 8]>,
    total_duration: u64,
    load_duration: u64,
    prompt_eval_count: u32,
}

/// Ollama's non-streamed `/api/chat` answer.
pub fn ollama_chat(g: &Gen<'_>) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&OllamaChat {
        model: g.model,
        created_at: Rfc3339(g.now_ms),
        message: Message {
            role: "assistant",
            content: Words(g.chunks),
        },
        done_reason: Some("stop"),
        done: true,
        timings: g.ollama_timings(),
    })
}

/// Ollama's non-streamed `/api/generate` answer.
pub fn ollama_generate(g: &Gen<'_>) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&OllamaGenerate {
        model: g.model,
        created_at: Rfc3339(g.now_ms),
        response: Words(g.chunks),
        done_reason: Some("stop"),
        done: true,
        timings: g.ollama_timings(),
    })
}

/// Ollama's `/api/embed` answer with one fixed vector per input.
pub fn ollama_embed(g: &Gen<'_>, inputs: usize) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&OllamaEmbed {
        model: g.model,
        embeddings: vec![EMBEDDING; inputs],
        total_duration: 1_000_000,
        load_duration: 100_000,
        prompt_eval_count: g.prompt_tokens,
    })
}

// === streams ===

/// Which protocol a [`ChunkStream`] speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// SSE `chat.completion.chunk` events.
    OpenAiChat,
    /// SSE `text_completion` events.
    OpenAiCompletion,
    /// NDJSON `/api/chat` lines.
    OllamaChat,
    /// NDJSON `/api/generate` lines.
    OllamaGenerate,
}

/// A streamed answer, rendered chunk by chunk; see the module docs.
#[derive(Debug)]
pub struct ChunkStream {
    kind: StreamKind,
    model: Box<str>,
    id: u64,
    created_ms: u64,
    total: u32,
    delay: Duration,
    prompt_tokens: u32,
    drop_after: Option<u32>,
    stall_after: Option<u32>,
    include_usage: bool,
    /// The index of the next content chunk; `total` means the trailer is next.
    next: u32,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Set once the stream has yielded to let hyper flush before a `drop_after` cut.
    cut_pending: bool,
    done: bool,
}

impl ChunkStream {
    /// A stream of `g.chunks` chunks, cut after `drop_after` of them or stalled after
    /// `stall_after` of them if that is fewer.
    pub fn new(
        kind: StreamKind,
        g: &Gen<'_>,
        drop_after: Option<u32>,
        stall_after: Option<u32>,
        include_usage: bool,
    ) -> Self {
        ChunkStream {
            kind,
            model: g.model.into(),
            id: g.id,
            created_ms: g.now_ms,
            total: g.chunks,
            delay: Duration::from_millis(g.chunk_delay_ms),
            prompt_tokens: g.prompt_tokens,
            drop_after,
            stall_after,
            include_usage,
            next: 0,
            sleep: None,
            cut_pending: false,
            done: false,
        }
    }

    /// Whether the last frame has been produced.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next frame: a chunk after the configured delay, the trailer, or the cut.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.next >= self.total {
            self.done = true;
            return Poll::Ready(Some(self.trailer().map(Frame::data).map_err(io_error)));
        }
        if self.next > 0 && !self.delay.is_zero() && !self.cut_pending {
            let delay = self.delay;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
        }
        if let Some(k) = self.drop_after
            && self.next >= k
        {
            // hyper writes the chunks it is given into a buffer and flushes when the body
            // has nothing more for now; erroring straight away would discard the last
            // chunks unsent. So yield once (hyper flushes), then cut the connection.
            if !self.cut_pending {
                self.cut_pending = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.done = true;
            return Poll::Ready(Some(Err(std::io::Error::other(format!(
                "mockllm drops the stream after {k} chunks"
            )))));
        }
        if self.stall_after.is_some_and(|k| self.next >= k) {
            // Nothing will ever wake this body: hyper flushes what it has and waits for good.
            return Poll::Pending;
        }
        let chunk = self.chunk(self.next);
        self.next += 1;
        Poll::Ready(Some(chunk.map(Frame::data).map_err(io_error)))
    }

    fn gen_at(&self, now_ms: u64) -> Gen<'_> {
        Gen {
            model: &self.model,
            id: self.id,
            now_ms,
            chunks: self.total,
            chunk_delay_ms: self.delay.as_millis() as u64,
            prompt_tokens: self.prompt_tokens,
        }
    }

    /// Content chunk `i`.
    fn chunk(&self, i: u32) -> serde_json::Result<Bytes> {
        let last = i + 1 == self.total;
        let finish_reason = last.then_some("stop");
        match self.kind {
            StreamKind::OpenAiChat => sse(&ChatChunk {
                id: Id("chatcmpl", self.id),
                object: "chat.completion.chunk",
                created: self.created_ms / 1000,
                model: &self.model,
                system_fingerprint: "mockllm",
                choices: &[ChunkChoice {
                    index: 0,
                    delta: Delta {
                        role: (i == 0).then_some("assistant"),
                        content: word(i),
                    },
                    logprobs: None,
                    finish_reason,
                }],
                usage: None,
            }),
            StreamKind::OpenAiCompletion => sse(&TextCompletion {
                id: Id("cmpl", self.id),
                object: "text_completion",
                created: self.created_ms / 1000,
                model: &self.model,
                choices: &[TextChoice {
                    text: word(i),
                    index: 0,
                    logprobs: None,
                    finish_reason,
                }],
                usage: None,
            }),
            StreamKind::OllamaChat => ndjson(&OllamaChat {
                model: &self.model,
                created_at: Rfc3339(unix_ms()),
                message: Message {
                    role: "assistant",
                    content: word(i),
                },
                done_reason: None,
                done: false,
                timings: OllamaTimings::default(),
            }),
            StreamKind::OllamaGenerate => ndjson(&OllamaGenerate {
                model: &self.model,
                created_at: Rfc3339(unix_ms()),
                response: word(i),
                done_reason: None,
                done: false,
                timings: OllamaTimings::default(),
            }),
        }
    }

    /// What follows the last content chunk: `[DONE]` (after a usage chunk when asked) or
    /// Ollama's summary line.
    fn trailer(&self) -> serde_json::Result<Bytes> {
        const DONE: &[u8] = b"data: [DONE]\n\n";
        match self.kind {
            StreamKind::OpenAiChat | StreamKind::OpenAiCompletion if self.include_usage => {
                let usage = Some(self.gen_at(self.created_ms).usage());
                let mut out = if self.kind == StreamKind::OpenAiChat {
                    sse_vec(&ChatChunk {
                        id: Id("chatcmpl", self.id),
                        object: "chat.completion.chunk",
                        created: self.created_ms / 1000,
                        model: &self.model,
                        system_fingerprint: "mockllm",
                        choices: &[],
                        usage,
                    })?
                } else {
                    sse_vec(&TextCompletion::<&str> {
                        id: Id("cmpl", self.id),
                        object: "text_completion",
                        created: self.created_ms / 1000,
                        model: &self.model,
                        choices: &[],
                        usage,
                    })?
                };
                out.extend_from_slice(DONE);
                Ok(out.into())
            }
            StreamKind::OpenAiChat | StreamKind::OpenAiCompletion => Ok(Bytes::from_static(DONE)),
            StreamKind::OllamaChat => {
                let now = unix_ms();
                ndjson(&OllamaChat {
                    model: &self.model,
                    created_at: Rfc3339(now),
                    message: Message {
                        role: "assistant",
                        content: "",
                    },
                    done_reason: Some("stop"),
                    done: true,
                    timings: self.gen_at(now).ollama_timings(),
                })
            }
            StreamKind::OllamaGenerate => {
                let now = unix_ms();
                ndjson(&OllamaGenerate {
                    model: &self.model,
                    created_at: Rfc3339(now),
                    response: "",
                    done_reason: Some("stop"),
                    done: true,
                    timings: self.gen_at(now).ollama_timings(),
                })
            }
        }
    }
}

fn io_error(e: serde_json::Error) -> std::io::Error {
    std::io::Error::other(e)
}

/// One SSE event, `data: {json}\n\n`, as a buffer that can still be appended to.
fn sse_vec<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(320);
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut out, value)?;
    out.extend_from_slice(b"\n\n");
    Ok(out)
}

/// One SSE event.
fn sse<T: Serialize>(value: &T) -> serde_json::Result<Bytes> {
    sse_vec(value).map(Bytes::from)
}

/// One NDJSON line.
fn ndjson<T: Serialize>(value: &T) -> serde_json::Result<Bytes> {
    let mut out = Vec::with_capacity(256);
    serde_json::to_writer(&mut out, value)?;
    out.push(b'\n');
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen_(chunks: u32) -> Gen<'static> {
        Gen {
            model: "m",
            id: 7,
            now_ms: 1_704_067_200_123,
            chunks,
            chunk_delay_ms: 0,
            prompt_tokens: 3,
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(
            Rfc3339(1_704_067_200_123).to_string(),
            "2024-01-01T00:00:00.123Z"
        );
        assert_eq!(
            Rfc3339(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn chat_completion_shape() {
        let v: serde_json::Value = serde_json::from_slice(&openai_chat(&gen_(5)).unwrap()).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-mock-7");
        assert_eq!(v["model"], "m");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "This is a mock reply"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 8);
    }

    #[test]
    fn streamed_text_adds_up_to_the_whole() {
        let s = ChunkStream::new(StreamKind::OpenAiChat, &gen_(3), None, None, false);
        let mut text = String::new();
        for i in 0..3 {
            let b = s.chunk(i).unwrap();
            let json = b
                .strip_prefix(b"data: ")
                .unwrap()
                .strip_suffix(b"\n\n")
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(json).unwrap();
            text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap());
            assert_eq!(v["choices"][0]["delta"]["role"].is_string(), i == 0);
            assert_eq!(v["choices"][0]["finish_reason"].is_string(), i == 2);
        }
        assert_eq!(text, Words(3).to_string());
        assert_eq!(&s.trailer().unwrap()[..], b"data: [DONE]\n\n");
    }

    #[test]
    fn embedding_input_counts() {
        let count = |json: &str| {
            serde_json::from_str::<GenRequest<'_>>(json)
                .unwrap()
                .input_count()
        };
        assert_eq!(count(r#"{"input":"a"}"#), 1);
        assert_eq!(count(r#"{"input":["a","b"]}"#), 2);
        assert_eq!(count(r#"{"input":[1,2,3]}"#), 1);
        assert_eq!(count(r#"{"input":[]}"#), 0);
    }
}
