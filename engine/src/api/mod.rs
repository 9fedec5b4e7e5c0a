//! The OpenAI-compatible API: `/v1/completions`, `/v1/chat/completions` (streaming or not),
//! `/v1/models`, `/tokenize` and `/detokenize`. Handlers parse and validate, then talk to the
//! engine thread through [`crate::engine_core::EngineHandle`].

mod chat;
mod completions;
pub mod dynamo;
pub mod error;
mod fields;
mod generate;
pub mod protocol;
mod stream;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use error::ApiBody;
pub use error::ApiError;

use crate::engine_core::EngineHandle;
use crate::tokenizer::Tokenizer;

/// Largest request body accepted (as vLLM's default is unbounded, pick a generous limit).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    /// `--served-model-name` values (the first one is the metrics label).
    pub served_model_names: Vec<String>,
    pub max_model_len: usize,
    pub api_key: Option<String>,
    /// Unix time the server started (`created` of `/v1/models`).
    pub created: u64,
    /// The names Dynamo's component series carry.
    pub dynamo: dynamo::DynamoNames,
    /// Generation requests in flight, and whether the server is draining for a stop.
    pub drain: Arc<crate::lifecycle::drain::Drain>,
    /// The OTLP tracer, with `--otlp-traces-endpoint`.
    pub traces: Option<Arc<crate::traces::Traces>>,
}

impl AppState {
    /// The span of a request about to run, when tracing is on; `operation` is GenAI's name
    /// for the route (`text_completion`, `chat`).
    pub fn start_trace(
        &self,
        headers: &axum::http::HeaderMap,
        model: &str,
        operation: &'static str,
        req: &generate::GenRequest,
    ) -> Option<crate::traces::RequestTrace> {
        let traces = self.traces.as_ref()?;
        Some(crate::traces::RequestTrace::start(
            traces.tracer(),
            headers,
            &crate::traces::TraceRequest {
                request_id: &req.request_id,
                model,
                operation,
                max_tokens: req.max_tokens_param,
                temperature: req.params.temperature,
                top_p: req.params.top_p,
                n: req.n,
                arrival: req.arrival,
            },
        ))
    }

    /// The model name a request addresses, checked against the served names.
    pub fn check_model(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match requested {
            None => Ok(self.served_model_names[0].clone()),
            Some(m) if self.served_model_names.iter().any(|s| s == m) => Ok(m.to_owned()),
            Some(m) => Err(ApiError::not_found(format!(
                "The model `{m}` does not exist."
            ))),
        }
    }

    /// Checks client-given token ids against the vocabulary; `param` names the field.
    pub fn check_token_ids(&self, ids: &[u32], param: &str) -> Result<(), ApiError> {
        let vocab = self.tokenizer.vocab_size() as u32;
        match ids.iter().find(|t| **t >= vocab) {
            Some(t) => Err(ApiError::bad_request(
                format!("token id {t} is outside the vocabulary"),
                Some(param),
            )),
            None => Ok(()),
        }
    }

    /// Checks that `prompt_len` prompt tokens plus `max_tokens` fit the context, and returns the
    /// number of tokens to generate (`max_tokens`, or whatever room is left).
    pub fn output_budget(
        &self,
        prompt_len: usize,
        max_tokens: Option<i64>,
    ) -> Result<usize, ApiError> {
        if prompt_len == 0 {
            return Err(ApiError::bad_request(
                "The prompt is empty.",
                Some("prompt"),
            ));
        }
        let requested = match max_tokens {
            None => 0,
            Some(m) if m >= 1 => m as usize,
            Some(m) => {
                return Err(ApiError::bad_request(
                    format!("max_tokens must be at least 1, got {m}"),
                    Some("max_tokens"),
                ))
            }
        };
        let limit = self.max_model_len;
        if prompt_len + requested > limit || prompt_len >= limit {
            return Err(ApiError::bad_request(
                format!(
                    "This model's maximum context length is {limit} tokens. However, you requested {requested} output tokens and your prompt contains at least {prompt_len} input tokens, for a total of at least {} tokens. Please reduce the length of the input prompt or the number of requested output tokens. (parameter=input_tokens, value={prompt_len})",
                    prompt_len + requested
                ),
                Some("input_tokens"),
            ));
        }
        Ok(if requested == 0 {
            limit - prompt_len
        } else {
            requested
        })
    }
}

/// A fresh request id with `prefix` (`cmpl`, `chatcmpl`).
pub fn request_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The API routes; `/v1/*` sits behind `--api-key` when one is set, and the generation routes
/// behind the drain's admission gate.
pub fn router(state: Arc<AppState>) -> Router {
    let generate = Router::new()
        .route("/v1/completions", post(completions::handle))
        .route("/v1/chat/completions", post(chat::handle))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state.drain),
            crate::lifecycle::drain::admission,
        ));
    let v1 = Router::new()
        .merge(generate)
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_api_key,
        ));
    Router::new()
        .merge(v1)
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn require_api_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let ok = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| given == key);
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let data: Vec<_> = state
        .served_model_names
        .iter()
        .map(|name| {
            json!({"id": name, "object": "model", "created": state.created, "owned_by": "vigil",
                   "root": name, "parent": null, "max_model_len": state.max_model_len})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiBody(body): ApiBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Req {
        model: Option<String>,
        prompt: String,
        add_special_tokens: Option<bool>,
    }
    let req: Req = error::parse_json(&body)?;
    state.check_model(req.model.as_deref())?;
    let tokens = state
        .tokenizer
        .encode(&req.prompt, req.add_special_tokens.unwrap_or(true))
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?;
    Ok(Json(
        json!({"count": tokens.len(), "max_model_len": state.max_model_len, "tokens": tokens}),
    ))
}

async fn detokenize(
    State(state): State<Arc<AppState>>,
    ApiBody(body): ApiBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Req {
        model: Option<String>,
        tokens: Vec<u32>,
    }
    let req: Req = error::parse_json(&body)?;
    state.check_model(req.model.as_deref())?;
    state.check_token_ids(&req.tokens, "tokens")?;
    let text = state
        .tokenizer
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("tokens")))?;
    Ok(Json(json!({"prompt": text})))
}
