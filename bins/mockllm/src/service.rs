//! The request handler: admin paths, then hit counting and the failure mode, then the
//! flavour's own answer.
//!
//! The order for a non-admin request is fixed: stamp and count the hit (so `/__stats` sees
//! requests that a failure mode then swallows, at the moment they arrived), wait `slow_ms`,
//! apply the failure (`close`/`refuse` drop the connection, `hang` holds the request until
//! the client leaves, `status` and `loading` answer with an error), and only then route. A
//! generation route reads the body first, and drops the connection if it holds the
//! `close_on` marker (counted in `/__stats` as `closed_on_marker`).
//! Admin paths skip all of that, so a test can always see and change the state.
//!
//! The server state is a process-lifetime `&'static State`, so a request costs no reference
//! count; the mode is one lock-free load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::apis;
use crate::body::{self, NDJSON, RespBody, SSE, TEXT};
use crate::catalog::{Catalog, ModelsRequest};
use crate::chat::{self, ChunkStream, Gen, GenRequest, StreamKind, unix_ms};
use crate::flavor::{self, Admin, Bodies, Flavor, Handler, Known};
use crate::mode::{Failure, ModeCell, ModeRequest, RefuseOrder};
use crate::server::Connections;
use crate::stats::{PathKey, Stats};

/// The largest request body read (generation requests with long prompts fit easily).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Echoed back when a client sends it.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The gateway replica that sent a request, recorded in `/__stats`.
static X_HALE_POD: HeaderName = HeaderName::from_static("x-hale-pod");

/// Everything the handler needs, alive for the whole process.
#[derive(Debug)]
pub struct State {
    pub flavor: Flavor,
    /// Served models, changeable at run time; never empty (the first is the default for
    /// requests without one). Their list bodies live there, not in `bodies`.
    pub catalog: Catalog,
    /// Whether a request for a model not in the catalog gets 404.
    pub strict_models: bool,
    pub bodies: Bodies,
    pub stats: Stats,
    pub mode: ModeCell,
    /// Tells the accept loop to close the listener for a while.
    pub refuse_tx: mpsc::Sender<RefuseOrder>,
    /// Open connections, so `refuse` can close them.
    pub connections: Connections,
    /// The source of answer ids.
    ids: AtomicU64,
    /// Responses created here, for retrieve/delete/cancel by id.
    responses: crate::apis::Stored,
}

impl State {
    /// The state of a fresh server.
    pub fn new(
        flavor: Flavor,
        models: Vec<String>,
        strict_models: bool,
        chunks: u32,
        chunk_delay_ms: u64,
        refuse_tx: mpsc::Sender<RefuseOrder>,
    ) -> anyhow::Result<Self> {
        Ok(State {
            flavor,
            bodies: Bodies::new(flavor, &models)?,
            catalog: Catalog::new(flavor, models)?,
            strict_models,
            stats: Stats::new(),
            mode: ModeCell::new(chunks, chunk_delay_ms),
            refuse_tx,
            connections: Connections::default(),
            ids: AtomicU64::new(1),
            responses: crate::apis::Stored::default(),
        })
    }
}

/// The service "error" that makes hyper drop the connection without answering: the
/// `close` failure mode.
#[derive(Debug)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mockllm drops this connection (failure mode)")
    }
}

impl std::error::Error for DropConnection {}

/// Answers one request; see the module docs.
pub async fn handle(
    st: &'static State,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, DropConnection> {
    let request_id = req.headers().get(&X_REQUEST_ID).cloned();
    let mut resp = match Admin::from_path(req.uri().path()) {
        Some(admin) => admin_route(st, admin, req).await,
        None => serve(st, req).await?,
    };
    if let Some(id) = request_id {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
    }
    Ok(resp)
}

/// A non-admin request: count, apply the failure mode, route.
async fn serve(
    st: &'static State,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, DropConnection> {
    let arrived_ms = unix_ms();
    let path = req.uri().path();
    let known = Known::from_path(path);
    let key = match known {
        Some(k) => PathKey::Known(k),
        None => PathKey::Other(path.into()),
    };
    let pod = req
        .headers()
        .get(&X_HALE_POD)
        .and_then(|v| v.to_str().ok())
        .map(Box::from);
    st.stats.record(key, arrived_ms, pod);

    let mut mode = st.mode.get();
    if let Some(ms) = mode.slow_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if matches!(mode.failure, Failure::Loading { .. }) {
        mode = mode.effective(Instant::now());
    }
    if mode.generation_only
        && !known
            .and_then(|k| flavor::route(st.flavor, k))
            .is_some_and(|h| h.generates())
    {
        mode.failure = Failure::Healthy;
    }
    match mode.failure {
        Failure::Healthy => {}
        Failure::Close | Failure::Refuse { .. } => return Err(DropConnection),
        Failure::Hang => {
            // Reading the body first lets hyper notice when the client hangs up, which is
            // what finally drops this future.
            let _ = req.into_body().collect().await;
            match std::future::pending::<std::convert::Infallible>().await {}
        }
        Failure::Status {
            code,
            retry_after_s,
        } => return Ok(body::mock_status(code, retry_after_s)),
        Failure::Loading { .. } => {
            return Ok(body::json(
                StatusCode::SERVICE_UNAVAILABLE,
                st.bodies.loading.clone(),
            ));
        }
    }

    if let Some(rest) = req.uri().path().strip_prefix("/v1/responses/") {
        return Ok(apis::follow_up(&st.responses, req.method(), rest));
    }
    let Some(handler) = known.and_then(|k| flavor::route(st.flavor, k)) else {
        return Ok(not_found());
    };
    if req.method() != handler.method() {
        return Ok(method_not_allowed(handler.method()));
    }
    let ok = StatusCode::OK;
    Ok(match handler {
        Handler::OllamaRoot => body::full(ok, TEXT, Bytes::from_static(b"Ollama is running")),
        Handler::Health if st.bodies.health.is_empty() => {
            // vLLM's health answer is a bare 200 without a body or a content type.
            Response::new(RespBody::Full(None))
        }
        Handler::Health => body::json(ok, st.bodies.health.clone()),
        Handler::ModelList => body::json(ok, st.catalog.get().bodies.model_list.clone()),
        Handler::OllamaTags => body::json(ok, st.catalog.get().bodies.ollama_tags.clone()),
        Handler::OllamaVersion => body::json(ok, st.bodies.ollama_version.clone()),
        Handler::VllmVersion => body::json(ok, st.bodies.vllm_version.clone()),
        Handler::OllamaPs => apis::ollama_ps(&st.catalog.get().names),
        Handler::Chat
        | Handler::Completion
        | Handler::Embeddings
        | Handler::OllamaChat
        | Handler::OllamaGenerate
        | Handler::OllamaEmbed
        | Handler::Responses
        | Handler::Messages
        | Handler::CountTokens
        | Handler::Rerank
        | Handler::Transcriptions
        | Handler::OllamaShow
        | Handler::OllamaEmbeddings => generate(st, handler, mode, req).await?,
    })
}

/// A generation route: parse the body, then answer in one piece or as a stream — or, for a
/// body with the `close_on` marker, drop the connection.
async fn generate(
    st: &'static State,
    handler: Handler,
    mode: crate::mode::Mode,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, DropConnection> {
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(resp) => return Ok(resp),
    };
    if let Some(code) = mode.generation_status {
        return Ok(body::mock_status(code, None));
    }
    if let Some(marker) = mode.close_on
        && body.windows(marker.len()).any(|w| w == marker.as_bytes())
    {
        st.stats.closed_on_marker();
        return Err(DropConnection);
    }
    if handler == Handler::Transcriptions {
        // A multipart upload: the model is a form field.
        let model = match apis::multipart_model(&content_type, body.clone()).await {
            Ok(Some(model)) => model,
            Ok(None) => return Ok(bad_request("the form has no `model` field")),
            Err(e) => return Ok(bad_request(&format!("invalid multipart body: {e}"))),
        };
        let json = serde_json::json!({ "model": model }).to_string();
        return Ok(answer(st, handler, mode, &Bytes::from(json)));
    }
    Ok(answer(st, handler, mode, &body))
}

/// The answer to a generation request with this `body`.
fn answer(
    st: &'static State,
    handler: Handler,
    mode: crate::mode::Mode,
    body: &Bytes,
) -> Response<RespBody> {
    let parsed: GenRequest<'_> = match parse_object(body) {
        Ok(parsed) => parsed,
        Err(message) => return bad_request(&message),
    };
    let models = st.catalog.get();
    let default_model = models.names.first().map_or("mock-model", String::as_str);
    let model = parsed
        .model
        .as_deref()
        .filter(|m| !m.is_empty())
        .unwrap_or(default_model);
    if st.strict_models && !models.names.iter().any(|m| m == model) {
        return body::error(
            StatusCode::NOT_FOUND,
            &format!("model '{model}' not found"),
            "model_not_found",
        );
    }
    let g = Gen {
        model,
        id: st.ids.fetch_add(1, Ordering::Relaxed),
        now_ms: unix_ms(),
        chunks: mode.chunks,
        chunk_delay_ms: mode.chunk_delay_ms,
        prompt_tokens: u32::try_from(body.len() / 4).unwrap_or(u32::MAX).max(1),
    };
    // OpenAI streams only when asked; Ollama's native routes stream unless told not to.
    let openai_stream = parsed.stream == Some(true);
    let ollama_stream = parsed.stream != Some(false);
    let include_usage = parsed
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let streamed = |kind, content_type| {
        body::stream(
            content_type,
            ChunkStream::new(
                kind,
                &g,
                mode.drop_after_chunks,
                mode.stall_after_chunks,
                include_usage,
            ),
        )
    };
    let rendered = match handler {
        Handler::Chat if openai_stream => return streamed(StreamKind::OpenAiChat, SSE),
        Handler::Completion if openai_stream => {
            return streamed(StreamKind::OpenAiCompletion, SSE);
        }
        Handler::OllamaChat if ollama_stream => return streamed(StreamKind::OllamaChat, NDJSON),
        Handler::OllamaGenerate if ollama_stream => {
            return streamed(StreamKind::OllamaGenerate, NDJSON);
        }
        Handler::Chat => chat::openai_chat(&g),
        Handler::Completion => chat::openai_completion(&g),
        Handler::Embeddings => chat::openai_embeddings(&g, parsed.input_count()),
        Handler::OllamaChat => chat::ollama_chat(&g),
        Handler::OllamaGenerate => chat::ollama_generate(&g),
        Handler::OllamaEmbed => chat::ollama_embed(&g, parsed.input_count()),
        Handler::Responses => return apis::create_response(&st.responses, &g, openai_stream),
        Handler::Messages => return apis::messages(&g, openai_stream),
        Handler::CountTokens => return apis::count_tokens(&g),
        Handler::Rerank => {
            let documents = match &parsed.documents {
                Some(serde_json::Value::Array(d)) => d.len(),
                _ => 0,
            };
            return apis::rerank(&g, documents);
        }
        Handler::Transcriptions => return apis::transcription(&g),
        Handler::OllamaShow => return apis::ollama_show(&g),
        Handler::OllamaEmbeddings => return apis::ollama_embeddings(),
        Handler::OllamaRoot
        | Handler::OllamaPs
        | Handler::Health
        | Handler::ModelList
        | Handler::OllamaTags
        | Handler::OllamaVersion
        | Handler::VllmVersion => return not_found(),
    };
    match rendered {
        Ok(bytes) => body::json(StatusCode::OK, bytes),
        Err(e) => internal_error(&e),
    }
}

/// An admin path; these work whatever the mode and are never counted.
async fn admin_route(
    st: &'static State,
    admin: Admin,
    req: Request<Incoming>,
) -> Response<RespBody> {
    match (admin, req.method()) {
        (Admin::Stats, &Method::GET) => match st.stats.render() {
            Ok(bytes) => body::json(StatusCode::OK, bytes),
            Err(e) => internal_error(&e),
        },
        (Admin::Reset, &Method::POST) => {
            // The body (if any) is read only to keep the connection reusable.
            if let Err(resp) = read_body(req).await {
                return resp;
            }
            st.stats.reset();
            st.mode.reset();
            st.catalog.reset();
            body::json(StatusCode::OK, Bytes::from_static(br#"{"ok":true}"#))
        }
        (Admin::Mode, &Method::GET) => echo_mode(st.mode.get()),
        (Admin::Mode, &Method::POST) => {
            let body = match read_body(req).await {
                Ok(body) => body,
                Err(resp) => return resp,
            };
            let parsed: ModeRequest = match parse_object(&body) {
                Ok(parsed) => parsed,
                Err(message) => return bad_request(&message),
            };
            match st.mode.apply(&parsed, Instant::now()) {
                Ok((mode, None)) => echo_mode(mode),
                Ok((mode, Some(order))) => {
                    if st.refuse_tx.try_send(order).is_err() {
                        // The accept loop is still busy with an earlier refuse; undo this
                        // one rather than leave a refuse mode that nothing will end.
                        st.mode.end_refuse(order.generation);
                        return body::error(
                            StatusCode::CONFLICT,
                            "a refuse is already in progress",
                            "invalid_mode",
                        );
                    }
                    echo_mode(mode)
                }
                Err(message) => body::error(StatusCode::BAD_REQUEST, &message, "invalid_mode"),
            }
        }
        (Admin::Models, &Method::GET) => match st.catalog.render() {
            Ok(bytes) => body::json(StatusCode::OK, bytes),
            Err(e) => internal_error(&e),
        },
        (Admin::Models, &Method::POST) => {
            let body = match read_body(req).await {
                Ok(body) => body,
                Err(resp) => return resp,
            };
            let parsed: ModelsRequest = match parse_object(&body) {
                Ok(parsed) => parsed,
                Err(message) => return bad_request(&message),
            };
            match st.catalog.set(parsed.models) {
                Ok(_) => match st.catalog.render() {
                    Ok(bytes) => body::json(StatusCode::OK, bytes),
                    Err(e) => internal_error(&e),
                },
                Err(message) => bad_request(&message),
            }
        }
        (Admin::Stats, _) => method_not_allowed(Method::GET),
        (Admin::Reset, _) => method_not_allowed(Method::POST),
        (Admin::Mode | Admin::Models, _) => {
            let mut resp = method_not_allowed(Method::POST);
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, POST"));
            resp
        }
    }
}

fn echo_mode(mode: crate::mode::Mode) -> Response<RespBody> {
    match mode.render(Instant::now()) {
        Ok(bytes) => body::json(StatusCode::OK, bytes),
        Err(e) => internal_error(&e),
    }
}

/// Reads a request body of at most [`MAX_BODY`] bytes.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<RespBody>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(body::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body larger than {MAX_BODY} bytes"),
            "invalid_request_error",
        )),
        Err(e) => Err(body::error(
            StatusCode::BAD_REQUEST,
            &format!("could not read the request body: {e}"),
            "invalid_request_error",
        )),
    }
}

/// Parses a body that must be one JSON object (not an array, not empty); the error is the
/// message for a 400.
fn parse_object<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err("the request body must be a JSON object".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

fn bad_request(message: &str) -> Response<RespBody> {
    body::error(StatusCode::BAD_REQUEST, message, "invalid_request_error")
}

fn not_found() -> Response<RespBody> {
    body::json(
        StatusCode::NOT_FOUND,
        Bytes::from_static(flavor::NOT_FOUND.as_bytes()),
    )
}

fn method_not_allowed(allowed: Method) -> Response<RespBody> {
    let mut resp = body::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
        "method_not_allowed",
    );
    if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
        resp.headers_mut().insert(ALLOW, value);
    }
    resp
}

fn internal_error(e: &dyn std::fmt::Display) -> Response<RespBody> {
    body::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("mockllm could not render the answer: {e}"),
        "server_error",
    )
}
