//! The OpenAI-compatible API: completions, chat, models, tokenize and detokenize.
//!
//! The OpenAI-compatible API: `/v1/completions`, `/v1/chat/completions` (streaming or not),
//! `/v1/models`, `/tokenize` and `/detokenize`. Handlers parse and validate, then talk to the
//! engine thread through [`engine::EngineHandle`].

pub(crate) mod access_log;
mod admission;
mod chat;
mod completions;
pub(crate) mod cpu_pool;
pub(crate) mod dynamo;
mod endpoint;
pub(crate) mod error;
mod fields;
mod generate;
mod generation_api;
pub(crate) mod protocol;
mod stream;
#[cfg(test)]
mod tests;
mod tool_parsers;
mod tools;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use error::ApiBody;
pub(crate) use error::ApiError;
use protocol::{DetokenizeResponse, ModelCard, ModelList, TokenizeResponse};
pub use tool_parsers::ToolParser;

use engine::EngineHandle;
use model::Tokenizer;

/// How long a request's structured-output constraint may take to compile, from the request's
/// turn to compile (waiting for a free grammar thread included).
pub(crate) const COMPILE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// A request's constraint, not yet compiled, and the field it came from.
pub(crate) struct PendingConstraint {
    spec: engine::ConstraintSpec,
    param: &'static str,
    grammars: Arc<engine::Grammars>,
}

/// Largest request body accepted (as vLLM's default is unbounded, pick a generous limit).
pub(crate) const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

pub(crate) struct AppState {
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
    /// Dynamo's per-request series of each served model name.
    pub dynamo_series: dynamo::DynamoSeries,
    /// Generation requests in flight, and whether the server is draining for a stop.
    pub drain: Arc<crate::lifecycle::drain::Drain>,
    /// The OTLP tracer, with `--otlp-traces-endpoint`.
    pub traces: Option<Arc<crate::traces::Traces>>,
    /// Where requests' CPU work (parsing, templates, tokenization) runs.
    pub cpu: cpu_pool::CpuPool,
    /// Where structured-output constraints compile, apart from `cpu`.
    pub grammar_cpu: cpu_pool::CpuPool,
    /// The compiler of structured-output constraints, or why there is none for this tokenizer.
    pub grammars: Result<Arc<engine::Grammars>, String>,
    /// `tool_choice: "auto"`'s parser (`--enable-auto-tool-choice --tool-call-parser`).
    pub auto_tool_parser: Option<ToolParser>,
}

impl AppState {
    /// The span of a request about to run, when tracing is on; `operation` is GenAI's name
    /// for the route (`text_completion`, `chat`).
    pub(crate) fn start_trace(
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
    pub(crate) fn check_model(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match requested {
            None => Ok(self.served_model_names[0].clone()),
            Some(m) if self.served_model_names.iter().any(|s| s == m) => Ok(m.to_owned()),
            Some(m) => Err(ApiError {
                param: Some("model".into()),
                ..ApiError::not_found(format!(
                    "The model `{m}` does not exist. Valid aliases: {}.",
                    self.served_model_names.join(", ")
                ))
            }),
        }
    }

    /// The request's sampling parameters, and its structured-output constraint, to be compiled
    /// with [`AppState::compile_constraint`] before anything is queued.
    /// `tools` is the constraint tool calling asks for, which excludes any other; `logprobs`
    /// comes from the field `logprobs_param` names.
    pub(crate) fn sampling_params(
        &self,
        common: &protocol::CommonParams,
        (logprobs, logprobs_param): (Option<i64>, &'static str),
        tools: Option<engine::ConstraintSpec>,
    ) -> Result<(engine::SamplingParams, Option<PendingConstraint>), ApiError> {
        let params = common.sampling(logprobs, logprobs_param)?;
        let constraint = match (common.constraint()?, tools) {
            (Some((_, param)), Some(_)) => {
                return Err(ApiError::bad_request(
                    format!("{param} cannot be combined with tool calling (tool_choice \"required\" or a named function)"),
                    Some(param),
                ))
            }
            (Some(c), None) => Some(c),
            (None, Some(spec)) => Some((spec, "tool_choice")),
            (None, None) => None,
        };
        if let Some((spec, param)) = constraint {
            let grammars = self.grammars.as_ref().map_err(|why| {
                ApiError::bad_request(
                    format!("{param}: structured outputs are not available for this model: {why}"),
                    Some(param),
                )
            })?;
            let pending = PendingConstraint {
                spec,
                param,
                grammars: Arc::clone(grammars),
            };
            return Ok((params, Some(pending)));
        }
        Ok((params, None))
    }

    /// Compiles a request's constraint on the grammar threads, within [`COMPILE_DEADLINE`]: an
    /// invalid schema, expression or grammar, one past the compiler's bounds or one whose
    /// compile outlasts the deadline is a 400 naming the field; a compile that found no free
    /// thread by then is a 503.
    pub(crate) async fn compile_constraint(
        &self,
        pending: PendingConstraint,
    ) -> Result<engine::CompiledConstraint, ApiError> {
        use exporter::catalog::structured::COMPILE_SECONDS;
        let PendingConstraint {
            spec,
            param,
            grammars,
        } = pending;
        let kind = spec.kind();
        let submitted = std::time::Instant::now();
        let compiled = self
            .grammar_cpu
            .run_within(COMPILE_DEADLINE, move || {
                let start = std::time::Instant::now();
                let compiled = grammars.compile(&spec);
                let outcome = match &compiled {
                    _ if submitted.elapsed() > COMPILE_DEADLINE => "timed_out",
                    Ok(_) => "compiled",
                    Err(_) => "refused",
                };
                metrics::histogram!(COMPILE_SECONDS.name, "kind" => kind, "outcome" => outcome)
                    .record(start.elapsed());
                compiled
            })
            .await;
        match compiled {
            Ok(Ok(Ok(compiled))) => Ok(compiled),
            Ok(Ok(Err(e))) => Err(ApiError::bad_request(
                format!("{param}: invalid {kind}: {e}"),
                Some(param),
            )),
            Ok(Err(e)) => Err(e),
            Err(cpu_pool::Overdue::Running) => Err(ApiError::bad_request(
                format!(
                    "{param}: compiling the {kind} constraint took longer than {} s; simplify it",
                    COMPILE_DEADLINE.as_secs()
                ),
                Some(param),
            )),
            Err(cpu_pool::Overdue::NotStarted) => Err(ApiError::unavailable(format!(
                "every structured-output compile thread was busy for {} s; retry later",
                COMPILE_DEADLINE.as_secs()
            ))),
        }
    }

    /// Refuses a prompt text longer than any text of `max_model_len` tokens can be (so that one
    /// request cannot cost seconds of tokenization only to be refused for its length).
    pub(crate) fn check_prompt_bytes(&self, bytes: usize, param: &str) -> Result<(), ApiError> {
        let limit = self.max_model_len * self.tokenizer.max_token_bytes();
        if bytes > limit {
            return Err(ApiError::bad_request(
                format!(
                    "The prompt is {bytes} bytes: more than any prompt of this model's maximum context length of {} tokens can be ({limit} bytes).",
                    self.max_model_len
                ),
                Some(param),
            ));
        }
        Ok(())
    }

    /// Checks client-given token ids against the vocabulary; `param` names the field.
    pub(crate) fn check_token_ids(&self, ids: &[u32], param: &str) -> Result<(), ApiError> {
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
    /// number of tokens to generate (`max_tokens`, or whatever room is left); `param` is the
    /// field `max_tokens` came from (chat's `max_completion_tokens`).
    pub(crate) fn output_budget(
        &self,
        prompt_len: usize,
        max_tokens: Option<i64>,
        param: &'static str,
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
                    format!("{param} must be at least 1, got {m}"),
                    Some(param),
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
pub(crate) fn request_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The API routes; `/v1/*` sits behind `--api-key` when one is set, and the generation routes
/// behind the drain's admission gate.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let generate = Router::new()
        .route(
            "/v1/completions",
            post(endpoint::handle::<completions::Completions>),
        )
        .route("/v1/chat/completions", post(endpoint::handle::<chat::Chat>))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state.drain),
            admission::admission,
        ));
    let v1 = Router::new()
        .merge(generate)
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_api_key,
        ));
    Router::new()
        .merge(v1)
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .layer(middleware::from_fn(refuse_oversized_bodies))
        .fallback(|| async { ApiError::route(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async { ApiError::route(StatusCode::METHOD_NOT_ALLOWED) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A body announced larger than [`MAX_BODY_BYTES`] is refused at once (413), before a byte of
/// it is read: waiting for gigabytes that will be refused anyway only holds a connection.
async fn refuse_oversized_bodies(req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = announced.filter(|l| *l > MAX_BODY_BYTES as u64) {
        return ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "The request body is {len} bytes; the largest accepted is {MAX_BODY_BYTES} bytes."
            ),
            param: None,
        }
        .into_response();
    }
    next.run(req).await
}

/// `--api-key` as vLLM checks it: every `/v1` request but `OPTIONS` (CORS preflights carry no
/// credentials) needs `Authorization: Bearer <key>`; the scheme is matched in any case (RFC
/// 9110), the key exactly and in constant time (vLLM's `secrets.compare_digest`), so the time
/// an answer takes says nothing of how much of a guess was right. An empty key is no key (vLLM
/// tests the key's truth).
async fn require_api_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let key = state.api_key.as_deref().filter(|k| !k.is_empty());
    if let (Some(key), false) = (key, req.method() == Method::OPTIONS) {
        let ok = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, given)| {
                use subtle::ConstantTimeEq;
                scheme.eq_ignore_ascii_case("bearer")
                    && bool::from(given.trim_start().as_bytes().ct_eq(key.as_bytes()))
            });
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

fn model_card(state: &AppState, name: &str) -> ModelCard {
    ModelCard {
        id: name.to_owned(),
        object: "model",
        created: state.created,
        owned_by: "vllm",
        root: name.to_owned(),
        parent: None,
        max_model_len: state.max_model_len,
        permission: vec![protocol::ModelPermission::new(state.created)],
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let data = state
        .served_model_names
        .iter()
        .map(|name| model_card(&state, name))
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

/// `GET /v1/models/{id}`: one served model's card, or vLLM's 404.
async fn model(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    let name = state.check_model(Some(&id))?;
    Ok(Json(model_card(&state, &name)))
}

async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiBody(body): ApiBody,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let work_state = Arc::clone(&state);
    let (tokens, token_strs) = state
        .cpu
        .run(move || tokenize_body(&work_state, &body))
        .await??;
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len: state.max_model_len,
        tokens,
        token_strs,
    }))
}

/// `/tokenize`'s work: parse, render, encode; with `return_token_strs`, each token's own
/// string in the vocabulary too (as vLLM's `convert_ids_to_tokens`).
fn tokenize_body(
    state: &AppState,
    body: &[u8],
) -> Result<(Vec<u32>, Option<Vec<String>>), ApiError> {
    /// vLLM's `TokenizeCompletionRequest` (`prompt`) or `TokenizeChatRequest` (`messages`,
    /// rendered by the chat template first; special tokens then default to off, as the
    /// template writes them).
    #[derive(serde::Deserialize)]
    struct Req {
        model: Option<String>,
        prompt: Option<String>,
        messages: Option<Vec<protocol::ChatMessageIn>>,
        add_generation_prompt: Option<bool>,
        add_special_tokens: Option<bool>,
        return_token_strs: Option<bool>,
    }
    let req: Req = error::parse_json(body)?;
    state.check_model(req.model.as_deref())?;
    let (text, param, special_default) = match (req.prompt, req.messages) {
        (Some(prompt), None) => (prompt, "prompt", true),
        (None, Some(messages)) => {
            let messages = protocol::chat_messages(&messages)?;
            let text = state
                .tokenizer
                .apply_chat_template(&messages, req.add_generation_prompt.unwrap_or(true))
                .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
            (text, "messages", false)
        }
        _ => {
            return Err(ApiError::bad_request(
                "give either `prompt` or `messages`",
                None,
            ))
        }
    };
    state.check_prompt_bytes(text.len(), param)?;
    let tokens = state
        .tokenizer
        .encode(&text, req.add_special_tokens.unwrap_or(special_default))
        .map_err(|e| ApiError::bad_request(e.to_string(), Some(param)))?;
    let token_strs = (req.return_token_strs == Some(true)).then(|| {
        tokens
            .iter()
            .map(|t| state.tokenizer.id_to_token(*t).unwrap_or_default())
            .collect()
    });
    Ok((tokens, token_strs))
}

async fn detokenize(
    State(state): State<Arc<AppState>>,
    ApiBody(body): ApiBody,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Req {
        model: Option<String>,
        tokens: Vec<u32>,
    }
    let work_state = Arc::clone(&state);
    let text = state
        .cpu
        .run(move || {
            let state = work_state;
            let req: Req = error::parse_json(&body)?;
            state.check_model(req.model.as_deref())?;
            state.check_token_ids(&req.tokens, "tokens")?;
            state
                .tokenizer
                .decode(&req.tokens, false)
                .map_err(|e| ApiError::bad_request(e.to_string(), Some("tokens")))
        })
        .await??;
    Ok(Json(DetokenizeResponse { prompt: text }))
}
