//! `POST /v1/chat/completions`: the model's chat template renders the messages, then it runs as
//! a completion.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};

use super::access_log::AccessNote;
use super::dynamo::Route;
use super::error::{ApiBody, ApiError};
use super::fields::Endpoint;
use super::generate::{Delta, GenRequest, PromptIn, TokenLogprob, Usage};
use super::protocol::ChatRequest;
use super::protocol::CommonParams;
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
        start::EndpointParts::<ChatRequest> {
            endpoint: Endpoint::Chat,
            route: Route::ChatCompletions,
            operation: "chat",
            prepare,
        },
    )
    .await?;
    let (mut gen, id, model) = (started.generation, started.request_id, started.model);
    let format = Format {
        id,
        model,
        created: unix_now(),
    };
    if let Some(usage) = started.streaming {
        return Ok(sse(gen, format, usage));
    }
    let want_logprobs = gen.wants_logprobs();
    let out = gen.collect().await?;
    let choices: Vec<Value> = (0..gen.n())
        .map(|i| {
            json!({"index": i, "message": {"role": "assistant", "content": out.texts[i]},
                   "logprobs": if want_logprobs { logprobs_json(&out.logprobs[i]) } else { Value::Null },
                   "finish_reason": out.finish_reasons[i], "stop_reason": out.stop_reasons[i].as_ref().map(StopReason::to_json)})
        })
        .collect();
    let body = json!({"id": format.id, "object": "chat.completion", "created": format.created, "model": format.model,
                       "choices": choices, "usage": gen.usage.to_json()});
    Ok(delivered(&mut gen, &body))
}

/// Checks the request and turns it into what the engine runs.
fn prepare(
    state: &AppState,
    common: &CommonParams,
    req: &ChatRequest,
    arrival: Instant,
) -> Result<GenRequest, ApiError> {
    let messages = req.messages()?;
    let bytes = messages.iter().map(|m| m.content.len()).sum();
    state.check_prompt_bytes(bytes, "messages")?;
    let text = state
        .tokenizer
        .apply_chat_template(&messages, req.add_generation_prompt.unwrap_or(true))
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    let prompt = state
        .tokenizer
        .encode(&text, common.add_special_tokens.unwrap_or(false))
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (Some(true), top) => Some(top.unwrap_or(0)),
        (_, Some(_)) => {
            return Err(ApiError::bad_request(
                "top_logprobs needs logprobs to be true",
                Some("top_logprobs"),
            ))
        }
        _ => None,
    };
    let params = common.sampling(logprobs)?;
    let max_param = req.max_completion_tokens.or(common.max_tokens);
    let max_tokens = state.output_budget(prompt.len(), max_param)?;
    let n = common.n()?;
    let id = request_id("chatcmpl");
    Ok(GenRequest {
        request_id: id.clone(),
        prompts: vec![PromptIn {
            tokens: prompt,
            max_tokens,
            echo: None,
        }],
        params,
        max_tokens_param: max_param.map(|m| m as usize),
        n,
        stop: common.stop_strings()?,
        include_stop_str_in_output: common.include_stop_str_in_output.unwrap_or(false),
        skip_special_tokens: common.skip_special_tokens.unwrap_or(true),
        arrival,
    })
}

fn logprobs_json(lps: &[TokenLogprob]) -> Value {
    // Only an echoed prompt's first token lacks a log-probability, and chat does not echo.
    let entry = |t: &str, l: Option<f32>| json!({"token": t, "logprob": l, "bytes": t.as_bytes()});
    json!({"content": lps.iter().map(|lp| {
        let mut e = entry(&lp.token, lp.logprob);
        e["top_logprobs"] = lp.top.iter().map(|(t, l)| entry(t, Some(*l))).collect::<Vec<_>>().into();
        e
    }).collect::<Vec<_>>()})
}

struct Format {
    id: String,
    model: String,
    created: u64,
}

impl Format {
    fn envelope(&self, choices: Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": choices})
    }
}

impl ChunkFormat for Format {
    fn preamble(&self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| {
                self.envelope(json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]))
            })
            .collect()
    }

    fn chunk(&self, d: &Delta) -> Value {
        let delta = json!({"content": d.text});
        let logprobs = if d.logprobs.is_empty() {
            Value::Null
        } else {
            logprobs_json(&d.logprobs)
        };
        self.envelope(json!([{"index": d.index, "delta": delta, "logprobs": logprobs, "finish_reason": d.finish_reason, "stop_reason": d.stop_reason.as_ref().map(StopReason::to_json)}]))
    }

    fn usage_chunk(&self, u: &Usage) -> Value {
        let mut v = self.envelope(json!([]));
        v["usage"] = u.to_json();
        v
    }
}
