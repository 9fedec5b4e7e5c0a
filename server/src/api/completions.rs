//! `POST /v1/completions`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};

use super::access_log::AccessNote;
use super::dynamo::Route;
use super::error::{ApiBody, ApiError};
use super::fields::Endpoint;
use super::generate::{Delta, GenRequest, Generation, PromptIn, TokenLogprob, Usage};
use super::protocol::CommonParams;
use super::protocol::{CompletionRequest, Prompt};
use super::start;
use super::stream::{delivered, sse, ChunkFormat};
use super::{request_id, unix_now, AppState};
use engine::scheduler::StopReason;

pub async fn handle(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    access: Option<axum::Extension<AccessNote>>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let started = start::start(
        &state,
        &headers,
        access.map(|a| a.0),
        body,
        start::EndpointParts::<CompletionRequest> {
            endpoint: Endpoint::Completions,
            route: Route::Completions,
            operation: "text_completion",
            prepare,
        },
    )
    .await?;
    let (gen, id, model) = (started.generation, started.request_id, started.model);
    let format = Format {
        id,
        model,
        created: unix_now(),
    };
    if let Some(usage) = started.streaming {
        return Ok(sse(gen, format, usage));
    }
    collect(gen, format).await
}

/// Checks the request and turns it into what the engine runs.
fn prepare(
    state: &AppState,
    common: &CommonParams,
    req: &CompletionRequest,
    arrival: Instant,
) -> Result<GenRequest, ApiError> {
    let add_special = common.add_special_tokens.unwrap_or(true);
    let encode = |text: &str| {
        state.check_prompt_bytes(text.len(), "prompt")?;
        state
            .tokenizer
            .encode(text, add_special)
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))
    };
    // Each prompt's tokens, and its text as given (or decoded, for token prompts) for `echo`.
    let prompts: Vec<(Vec<u32>, Option<String>)> = match &req.prompt {
        Prompt::Text(t) => vec![(encode(t)?, Some(t.clone()))],
        Prompt::Texts(v) => v
            .iter()
            .map(|t| Ok((encode(t)?, Some(t.clone()))))
            .collect::<Result<_, ApiError>>()?,
        Prompt::Tokens(ids) => vec![(ids.clone(), None)],
        Prompt::TokenLists(lists) => lists.iter().map(|ids| (ids.clone(), None)).collect(),
    };
    if prompts.is_empty() {
        return Err(ApiError::bad_request(
            "prompt must not be an empty list",
            Some("prompt"),
        ));
    }
    let echo = req.echo == Some(true);
    let prompts = prompts
        .into_iter()
        .map(|(tokens, text)| {
            state.check_token_ids(&tokens, "prompt")?;
            let max_tokens = state.output_budget(tokens.len(), common.max_tokens)?;
            let echo = match (echo, text) {
                (false, _) => None,
                (true, Some(text)) => Some(text),
                (true, None) => Some(
                    state
                        .tokenizer
                        .decode(&tokens, false)
                        .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?,
                ),
            };
            Ok(PromptIn {
                tokens,
                max_tokens,
                echo,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let params = common.sampling(req.logprobs)?;
    let n = common.n()?;
    Ok(GenRequest {
        request_id: request_id("cmpl"),
        prompts,
        params,
        max_tokens_param: common.max_tokens.map(|m| m as usize),
        n,
        stop: common.stop_strings()?,
        include_stop_str_in_output: common.include_stop_str_in_output.unwrap_or(false),
        skip_special_tokens: common.skip_special_tokens.unwrap_or(true),
        arrival,
    })
}

/// vLLM's completion logprobs: per token its text, log-probability and alternatives (`null`
/// for an echoed prompt's first token), and each token's offset in the choice's text.
fn logprobs_json(lps: &[TokenLogprob], offset: usize) -> Value {
    let mut text_offset = Vec::new();
    let mut at = offset;
    for lp in lps {
        text_offset.push(at);
        at += lp.token.len();
    }
    let top = |lp: &TokenLogprob| match lp.logprob {
        None => Value::Null,
        Some(_) => lp
            .top
            .iter()
            .map(|(t, p)| (t.clone(), json!(p)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    };
    json!({
        "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(top).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

async fn collect(mut gen: Generation, f: Format) -> Result<Response, ApiError> {
    let want_logprobs = gen.wants_logprobs();
    let out = gen.collect().await?;
    let choices: Vec<Value> = (0..gen.n())
        .map(|i| {
            let logprobs = if want_logprobs {
                logprobs_json(&out.logprobs[i], 0)
            } else {
                Value::Null
            };
            json!({"index": i, "text": out.texts[i], "logprobs": logprobs,
                   "finish_reason": out.finish_reasons[i], "stop_reason": out.stop_reasons[i].as_ref().map(StopReason::to_json)})
        })
        .collect();
    let body = json!({"id": f.id, "object": "text_completion", "created": f.created, "model": f.model,
                      "choices": choices, "usage": gen.usage.to_json()});
    Ok(delivered(&mut gen, &body))
}

struct Format {
    id: String,
    model: String,
    created: u64,
}

impl ChunkFormat for Format {
    fn preamble(&self, _n: usize) -> Vec<Value> {
        Vec::new()
    }

    fn chunk(&self, d: &Delta) -> Value {
        let logprobs = if d.logprobs.is_empty() {
            Value::Null
        } else {
            logprobs_json(&d.logprobs, 0)
        };
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
               "choices": [{"index": d.index, "text": d.text, "logprobs": logprobs, "finish_reason": d.finish_reason, "stop_reason": d.stop_reason.as_ref().map(StopReason::to_json)}]})
    }

    fn usage_chunk(&self, u: &Usage) -> Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
               "choices": [], "usage": u.to_json()})
    }
}
