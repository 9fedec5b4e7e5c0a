//! `POST /v1/completions`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};

use super::dynamo::{RequestRecord, Route};
use super::error::{parse_json, ApiBody, ApiError};
use super::fields::{self, Endpoint};
use super::generate::{Delta, GenRequest, Generation, TokenLogprob, Usage};
use super::protocol::CommonParams;
use super::protocol::{CompletionRequest, Prompt};
use super::stream::{delivered, sse, ChunkFormat};
use super::{request_id, unix_now, AppState};
use crate::scheduler::StopReason;

pub async fn handle(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let fields: serde_json::Value = parse_json(&body)?;
    let common: CommonParams = parse_json(&body)?;
    let req: CompletionRequest = parse_json(&body)?;
    fields::check(&fields, Endpoint::Completions)?;
    let model = state.check_model(common.model.as_deref())?;
    let mut record = RequestRecord::start(
        &state.dynamo,
        &model,
        Route::Completions,
        common.is_stream(),
        body.len(),
    );
    let prepared = common
        .streaming()
        .and_then(|s| Ok((s, prepare(&state, &common, &req, arrival)?)));
    let (streaming, request) = match prepared {
        Ok(p) => p,
        Err(e) => {
            record.fail(&e);
            return Err(e);
        }
    };
    let id = request.request_id.clone();
    let trace = state.start_trace(&headers, &model, "text_completion", &request);
    let gen = Generation::start(Arc::clone(&state), request, record, trace)?;
    let format = Format {
        id,
        model,
        created: unix_now(),
    };
    if let Some(usage) = streaming {
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
    let prompt = match &req.prompt {
        Prompt::Text(t) => state
            .tokenizer
            .encode(t, true)
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?,
        Prompt::Texts(v) if v.len() == 1 => state
            .tokenizer
            .encode(&v[0], true)
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?,
        Prompt::Texts(_) => {
            return Err(ApiError::bad_request(
                "only one prompt per request is supported",
                Some("prompt"),
            ))
        }
        Prompt::Tokens(ids) => {
            state.check_token_ids(ids, "prompt")?;
            ids.clone()
        }
    };
    if req.echo == Some(true) {
        return Err(ApiError::bad_request("echo is not supported", Some("echo")));
    }
    let params = common.sampling(req.logprobs)?;
    let max_tokens = state.output_budget(prompt.len(), common.max_tokens)?;
    let n = common.n()?;
    let id = request_id("cmpl");
    Ok(GenRequest {
        request_id: id.clone(),
        prompt,
        params,
        max_tokens,
        max_tokens_param: common.max_tokens.map(|m| m as usize),
        n,
        stop: common.stop_strings()?,
        include_stop_str_in_output: common.include_stop_str_in_output.unwrap_or(false),
        skip_special_tokens: common.skip_special_tokens.unwrap_or(true),
        arrival,
    })
}

fn logprobs_json(lps: &[TokenLogprob], offset: usize) -> Value {
    let mut text_offset = Vec::new();
    let mut at = offset;
    for lp in lps {
        text_offset.push(at);
        at += lp.token.len();
    }
    json!({
        "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|l| l.top.iter().map(|(t, p)| (t.clone(), json!(p))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
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
