//! The answers of the APIs beyond chat: OpenAI's Responses API (create, plain or SSE;
//! retrieve, delete and cancel by id), Anthropic's Messages API (plain or SSE, and
//! `count_tokens`), `/v1/rerank`, `/v1/audio/transcriptions` (a multipart upload, read for
//! its `model` field), and Ollama's `/api/show`, legacy `/api/embeddings` and `/api/ps`.
//!
//! The text is the same sentence as every other answer (one word per chunk, see `chat`), and
//! streams are [`Events`]: pre-rendered SSE events sent one per frame with the chunk delay
//! between them, so a test can tell a gateway that relays events as they come from one that
//! buffers. Response ids carry this process's id (`resp_<pid>_<n>`), so two mock servers never
//! share one, and only the server that created a response can retrieve it (as with real
//! backends): a follow-up on the wrong server gets OpenAI's 404.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body::Frame;
use serde_json::{Value, json};
use tokio::time::Sleep;

use crate::body::{self, RespBody, SSE};
use crate::chat::Gen;

/// The sentence every answer is made of (the same words as `chat`'s).
const WORDS: [&str; 8] = [
    "This", " is", " a", " mock", " reply", " from", " mockllm", ".",
];
/// The most responses one server keeps for retrieval.
const MAX_STORED: usize = 10_000;

fn text(chunks: u32) -> String {
    (0..chunks)
        .map(|i| WORDS[i as usize % WORDS.len()])
        .collect()
}

/// Stored responses by id, for retrieve/delete/cancel.
#[derive(Debug, Default)]
pub struct Stored {
    by_id: Mutex<HashMap<String, Value>>,
}

impl Stored {
    fn put(&self, id: &str, value: Value) {
        let mut map = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_STORED {
            map.clear();
        }
        map.insert(id.to_owned(), value);
    }
}

/// Pre-rendered SSE events, one per frame, `delay` apart; see the module docs.
#[derive(Debug)]
pub struct Events {
    events: std::collections::VecDeque<Bytes>,
    delay: Duration,
    first: bool,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Events {
    fn new(events: Vec<Bytes>, delay_ms: u64) -> Self {
        Self {
            events: events.into(),
            delay: Duration::from_millis(delay_ms),
            first: true,
            sleep: None,
        }
    }

    pub fn is_done(&self) -> bool {
        self.events.is_empty()
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.events.is_empty() {
            return Poll::Ready(None);
        }
        if !self.first && !self.delay.is_zero() {
            let delay = self.delay;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
        }
        self.first = false;
        Poll::Ready(self.events.pop_front().map(|e| Ok(Frame::data(e))))
    }
}

fn event(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

fn events(events: Vec<Bytes>, delay_ms: u64) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::Events(Events::new(events, delay_ms)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(SSE),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    resp
}

fn ok(value: &Value) -> Response<RespBody> {
    body::json(StatusCode::OK, value.to_string())
}

/// `POST /v1/responses`.
pub fn create_response(stored: &Stored, g: &Gen<'_>, stream: bool) -> Response<RespBody> {
    let id = format!("resp_{}_{}", std::process::id(), g.id);
    let msg_id = format!("msg_{}_{}", std::process::id(), g.id);
    let created = g.now_ms / 1000;
    let full = text(g.chunks);
    let message = |status: &str, content: &str| {
        json!({"type": "message", "id": msg_id, "status": status, "role": "assistant",
               "content": [{"type": "output_text", "text": content, "annotations": []}]})
    };
    let object = |status: &str, output: Value| {
        json!({"id": id, "object": "response", "created_at": created, "status": status,
               "model": g.model, "output": output, "parallel_tool_calls": true,
               "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
               "usage": {"input_tokens": g.prompt_tokens, "output_tokens": g.chunks,
                         "total_tokens": g.prompt_tokens + g.chunks,
                         "input_tokens_details": {"cached_tokens": 0},
                         "output_tokens_details": {"reasoning_tokens": 0}}})
    };
    let done = object("completed", json!([message("completed", &full)]));
    stored.put(&id, done.clone());
    if !stream {
        return ok(&done);
    }
    let mut seq = 0_u64;
    let mut next = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        event(kind, &data)
    };
    let mut out = vec![
        next(
            "response.created",
            json!({"response": object("in_progress", json!([]))}),
        ),
        next(
            "response.output_item.added",
            json!({"output_index": 0, "item": message("in_progress", "")}),
        ),
        next(
            "response.content_part.added",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}),
        ),
    ];
    for i in 0..g.chunks {
        out.push(next(
            "response.output_text.delta",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
                   "delta": WORDS[i as usize % WORDS.len()]}),
        ));
    }
    out.push(next(
        "response.output_text.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": full}),
    ));
    out.push(next(
        "response.output_item.done",
        json!({"output_index": 0, "item": message("completed", &full)}),
    ));
    out.push(next("response.completed", json!({"response": done})));
    events(out, g.chunk_delay_ms)
}

/// `GET`/`DELETE /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`.
pub fn follow_up(stored: &Stored, method: &Method, rest: &str) -> Response<RespBody> {
    let (id, cancel) = match rest.strip_suffix("/cancel") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    let mut map = stored.by_id.lock().unwrap_or_else(PoisonError::into_inner);
    let allowed = if cancel {
        *method == Method::POST
    } else {
        *method == Method::GET || *method == Method::DELETE
    };
    if !allowed {
        return body::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
            "method_not_allowed",
        );
    }
    let Some(found) = map.get_mut(id) else {
        return body::json(
            StatusCode::NOT_FOUND,
            json!({"error": {"message": format!("No response found with id '{id}'."),
                             "type": "invalid_request_error", "param": null, "code": null}})
            .to_string(),
        );
    };
    if cancel {
        found["status"] = json!("cancelled");
        return ok(found);
    }
    if *method == Method::DELETE {
        map.remove(id);
        return ok(&json!({"id": id, "object": "response.deleted", "deleted": true}));
    }
    ok(found)
}

/// `POST /v1/messages`.
pub fn messages(g: &Gen<'_>, stream: bool) -> Response<RespBody> {
    let id = format!("msg_{}_{}", std::process::id(), g.id);
    let full = text(g.chunks);
    let usage = json!({"input_tokens": g.prompt_tokens, "output_tokens": g.chunks});
    if !stream {
        return ok(
            &json!({"id": id, "type": "message", "role": "assistant", "model": g.model,
                          "content": [{"type": "text", "text": full}],
                          "stop_reason": "end_turn", "stop_sequence": null, "usage": usage}),
        );
    }
    let mut out = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": g.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": g.prompt_tokens, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", &json!({"type": "ping"})),
    ];
    for i in 0..g.chunks {
        out.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": WORDS[i as usize % WORDS.len()]}}),
        ));
    }
    out.push(event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(event(
        "message_delta",
        &json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": g.chunks}}),
    ));
    out.push(event("message_stop", &json!({"type": "message_stop"})));
    events(out, g.chunk_delay_ms)
}

/// `POST /v1/messages/count_tokens`.
pub fn count_tokens(g: &Gen<'_>) -> Response<RespBody> {
    ok(&json!({"input_tokens": g.prompt_tokens}))
}

/// `POST /v1/rerank`: every document scored, best first.
pub fn rerank(g: &Gen<'_>, documents: usize) -> Response<RespBody> {
    let results: Vec<Value> = (0..documents)
        .map(|i| json!({"index": i, "relevance_score": 1.0 / (1.0 + i as f64)}))
        .collect();
    ok(
        &json!({"id": format!("rerank-{}", g.id), "model": g.model, "results": results,
               "usage": {"total_tokens": g.prompt_tokens}}),
    )
}

/// `POST /v1/audio/transcriptions`.
pub fn transcription(g: &Gen<'_>) -> Response<RespBody> {
    ok(&json!({"text": text(g.chunks), "model": g.model}))
}

/// Ollama's `POST /api/show`.
pub fn ollama_show(g: &Gen<'_>) -> Response<RespBody> {
    ok(&json!({
        "modelfile": format!("FROM {}\n", g.model),
        "parameters": "stop \"<|eot_id|>\"",
        "template": "{{ .Prompt }}",
        "details": {"parent_model": "", "format": "gguf", "family": "llama",
                    "families": ["llama"], "parameter_size": "1B", "quantization_level": "Q4_0"},
        "model_info": {"general.architecture": "llama", "general.parameter_count": 1_000_000_000_u64},
        "capabilities": ["completion"],
        "modified_at": "2024-01-01T00:00:00Z"
    }))
}

/// Ollama's legacy `POST /api/embeddings`: one vector for `prompt`.
pub fn ollama_embeddings() -> Response<RespBody> {
    ok(&json!({"embedding": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}))
}

/// Ollama's `GET /api/ps`: every served model, loaded.
pub fn ollama_ps(models: &[String]) -> Response<RespBody> {
    let running: Vec<Value> = models
        .iter()
        .map(|m| {
            json!({"name": m, "model": m, "size": 1, "digest": "", "size_vram": 1,
                   "expires_at": "2099-01-01T00:00:00Z",
                   "details": {"parent_model": "", "format": "gguf", "family": "llama",
                               "families": ["llama"], "parameter_size": "1B",
                               "quantization_level": "Q4_0"}})
        })
        .collect();
    ok(&json!({ "models": running }))
}

/// The `model` form field of a multipart body, if it has one.
pub async fn multipart_model(content_type: &str, body: Bytes) -> Result<Option<String>, String> {
    let boundary = multer::parse_boundary(content_type).map_err(|e| e.to_string())?;
    let stream =
        futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    while let Some(field) = form.next_field().await.map_err(|e| e.to_string())? {
        if field.name() == Some("model") {
            return field.text().await.map(Some).map_err(|e| e.to_string());
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(chunks: u32) -> Gen<'static> {
        Gen {
            model: "m",
            id: 1,
            now_ms: 1_700_000_000_000,
            chunks,
            chunk_delay_ms: 0,
            prompt_tokens: 3,
        }
    }

    #[test]
    fn stored_responses_follow_up_by_id() {
        let stored = Stored::default();
        let resp = create_response(&stored, &g(3), false);
        assert_eq!(resp.status(), 200);
        let id = format!("resp_{}_1", std::process::id());
        assert_eq!(follow_up(&stored, &Method::GET, &id).status(), 200);
        assert_eq!(
            follow_up(&stored, &Method::POST, &format!("{id}/cancel")).status(),
            200
        );
        assert_eq!(follow_up(&stored, &Method::DELETE, &id).status(), 200);
        assert_eq!(follow_up(&stored, &Method::GET, &id).status(), 404);
        assert_eq!(follow_up(&stored, &Method::PUT, &id).status(), 405);
        assert_eq!(text(3), "This is a");
    }
}
