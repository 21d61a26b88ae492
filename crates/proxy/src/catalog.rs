//! The model catalogs Hale answers itself: OpenAI `GET /v1/models` (and one model,
//! `GET /v1/models/{id}`, 404 when no routable endpoint has it) and Ollama `GET /api/tags`.
//!
//! Each lists the union of the models of the endpoints that are routable now (health state
//! and rate limit), so a client only ever sees models it could use this moment: `/v1/models`
//! over every endpoint, `/api/tags` over `ollama` endpoints only (the routes that can reach
//! them). A model named both `llama3` and `llama3:latest` is listed once, under the first
//! name met in configuration order; the list is sorted by name.
//!
//! Hale does not relay the backends' own catalog bodies, so fields it cannot know are neutral:
//! `created` and `modified_at` are the gateway's start time, `owned_by` is `hale`, Ollama's
//! `size` is 0 and `digest` and `details` are empty. Clients use these lists to pick a model
//! name, which is what they carry exactly.

use crate::proxy::Shared;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hale_core::{EndpointKind, same_model};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use std::sync::Arc;
use tokio::time::Instant;

#[derive(Serialize)]
struct OpenAiList<'a> {
    object: &'static str,
    data: Vec<OpenAiModel<'a>>,
}

#[derive(Serialize)]
struct OpenAiModel<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct OllamaTags<'a> {
    models: Vec<OllamaTag<'a>>,
}

#[derive(Serialize)]
struct OllamaTag<'a> {
    name: &'a str,
    model: &'a str,
    modified_at: &'a str,
    size: u64,
    digest: &'static str,
    details: serde_json::Map<String, serde_json::Value>,
}

/// The models of the routable endpoints that `include` accepts, deduplicated and sorted.
fn routable_models(shared: &Shared, include: impl Fn(EndpointKind) -> bool) -> Vec<Arc<str>> {
    let snapshot = shared.store.snapshot();
    let now = Instant::now();
    let mut names: Vec<Arc<str>> = Vec::new();
    for status in &snapshot.endpoints {
        if !include(status.endpoint.kind) || !status.health.is_routable(now) {
            continue;
        }
        for model in status.models() {
            if !names.iter().any(|n| same_model(n, &model)) {
                names.push(model);
            }
        }
    }
    names.sort_unstable();
    names
}

/// `GET /v1/models`.
pub fn openai_models(shared: &Shared) -> Response {
    let names = routable_models(shared, |_| true);
    let created = shared.started_unix;
    let list = OpenAiList {
        object: "list",
        data: names
            .iter()
            .map(|id| OpenAiModel {
                id,
                object: "model",
                created,
                owned_by: "hale",
            })
            .collect(),
    };
    json(&list)
}

/// `GET /v1/models/{id}`: the model in OpenAI's object shape, under the name the client
/// asked for; a 404 when no routable endpoint has it.
pub fn openai_model(shared: &Shared, id: &str) -> Result<Response, crate::ProxyError> {
    let names = routable_models(shared, |_| true);
    if !names.iter().any(|n| same_model(n, id)) {
        let shown: String = id.chars().take(256).collect();
        return Err(crate::ProxyError::NotFound(format!(
            "The model '{shown}' does not exist"
        )));
    }
    Ok(json(&OpenAiModel {
        id,
        object: "model",
        created: shared.started_unix,
        owned_by: "hale",
    }))
}

/// `GET /api/tags`.
pub fn ollama_tags(shared: &Shared) -> Response {
    let names = routable_models(shared, EndpointKind::speaks_ollama);
    let tags = OllamaTags {
        models: names
            .iter()
            .map(|name| OllamaTag {
                name,
                model: name,
                modified_at: &shared.started_rfc3339,
                size: 0,
                digest: "",
                details: serde_json::Map::new(),
            })
            .collect(),
    };
    json(&tags)
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            Bytes::from(body),
        )
            .into_response(),
        // Plain structs of strings and numbers always serialise.
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
