//! `POST /v1/completions`.

use std::time::Instant;

use super::dynamo::Route;
use super::error::ApiError;
use super::fields::Endpoint;
use super::generate::{Collected, Delta, GenRequest, PromptIn, TokenLogprob, Usage};
use super::generation_api::GenerationApi;
use super::protocol::{
    CommonParams, CompletionChoice, CompletionChunk, CompletionLogprobs, CompletionRequest,
    CompletionResponse, Head, Prompt, StopReasonOut, MAX_CHOICES, MAX_PROMPTS,
};
use super::{request_id, AppState};

/// The completions endpoint's part of [`GenerationApi`].
pub(super) struct Completions;

impl GenerationApi for Completions {
    type Request = CompletionRequest;
    type Response = CompletionResponse;
    type Chunk = CompletionChunk;
    const ENDPOINT: Endpoint = Endpoint::Completions;
    const ROUTE: Route = Route::Completions;
    const OPERATION: &'static str = "text_completion";

    fn prepare(
        state: &AppState,
        common: &CommonParams,
        request: &CompletionRequest,
        arrival: Instant,
    ) -> Result<GenRequest, ApiError> {
        prepare(state, common, request, arrival)
    }

    fn response(head: Head, out: Collected, usage: Usage, logprobs: bool) -> CompletionResponse {
        let choices = out
            .into_choices()
            .enumerate()
            .map(|(index, choice)| CompletionChoice {
                index,
                text: choice.text,
                logprobs: logprobs.then(|| completion_logprobs(&choice.logprobs, 0)),
                finish_reason: choice.finish_reason,
                stop_reason: choice.stop_reason.as_ref().map(StopReasonOut::from),
            })
            .collect();
        CompletionResponse {
            id: head.id,
            object: OBJECT,
            created: head.created,
            model: head.model,
            choices,
            usage: usage.into(),
        }
    }

    /// A completion stream starts with its first tokens.
    fn preamble(_head: &Head, _n: usize, _usage: Option<Usage>) -> Vec<CompletionChunk> {
        Vec::new()
    }

    fn chunk(head: &mut Head, delta: Delta, usage: Option<Usage>) -> Option<CompletionChunk> {
        let choice = CompletionChoice {
            index: delta.index,
            logprobs: (!delta.logprobs.is_empty()).then(|| completion_logprobs(&delta.logprobs, 0)),
            text: delta.text,
            finish_reason: delta.finish_reason,
            stop_reason: delta.stop_reason.as_ref().map(StopReasonOut::from),
        };
        Some(chunk(head, vec![choice], usage))
    }

    fn usage_chunk(head: &Head, usage: Usage) -> CompletionChunk {
        chunk(head, Vec::new(), Some(usage))
    }
}

/// The `object` of completions and their chunks alike.
const OBJECT: &str = "text_completion";

fn chunk(head: &Head, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> CompletionChunk {
    CompletionChunk {
        id: head.id.clone(),
        object: OBJECT,
        created: head.created,
        model: head.model.clone(),
        choices,
        usage: usage.map(Usage::into),
    }
}

/// Checks the request and turns it into what the engine runs.
fn prepare(
    state: &AppState,
    common: &CommonParams,
    req: &CompletionRequest,
    arrival: Instant,
) -> Result<GenRequest, ApiError> {
    let add_special = common.add_special_tokens.unwrap_or(true);
    let listed = match &req.prompt {
        Prompt::Texts(v) => v.len(),
        Prompt::TokenLists(lists) => lists.len(),
        Prompt::Text(_) | Prompt::Tokens(_) => 1,
    };
    if listed > MAX_PROMPTS {
        return Err(ApiError::bad_request(
            format!(
                "prompt list length {listed} exceeds the maximum allowed count of {MAX_PROMPTS}."
            ),
            Some("prompt"),
        ));
    }
    let n = common.n()?;
    if listed * n > MAX_CHOICES {
        return Err(ApiError::bad_request(
            format!(
                "{listed} prompts with n={n} ask for {} choices: at most {MAX_CHOICES} are accepted in one request.",
                listed * n
            ),
            Some("n"),
        ));
    }
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
    // `echo` with `max_tokens: 0` scores the prompt: vLLM generates one token and drops it.
    let score_only = echo && common.max_tokens == Some(0);
    let max_tokens_asked = if score_only {
        Some(1)
    } else {
        common.max_tokens
    };
    let prompts = prompts
        .into_iter()
        .map(|(tokens, text)| {
            state.check_token_ids(&tokens, "prompt")?;
            let max_tokens = state.output_budget(tokens.len(), max_tokens_asked, "max_tokens")?;
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
                score_only,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let (params, constraint) = state.sampling_params(common, (req.logprobs, "logprobs"), None)?;
    Ok(GenRequest {
        request_id: request_id("cmpl"),
        prompts,
        params,
        constraint,
        constraint_param: None,
        max_tokens_param: common.max_tokens.map(|m| m as usize),
        n,
        stop: common.stop_strings()?,
        include_stop_str_in_output: common.include_stop_str_in_output.unwrap_or(false),
        skip_special_tokens: common.skip_special_tokens.unwrap_or(true),
        arrival,
        tool_calling: None,
    })
}

/// vLLM's completion logprobs: per token its text, log-probability and alternatives (`null`
/// for an echoed prompt's first token), and each token's offset in the choice's text.
fn completion_logprobs(lps: &[TokenLogprob], offset: usize) -> CompletionLogprobs {
    let mut text_offset = Vec::with_capacity(lps.len());
    let mut at = offset;
    for lp in lps {
        text_offset.push(at);
        at += lp.token.len();
    }
    let top = |lp: &TokenLogprob| {
        lp.logprob.map(|_| {
            lp.top
                .iter()
                .map(|(t, p)| (t.clone(), serde_json::Value::from(f64::from(*p))))
                .collect::<serde_json::Map<_, _>>()
        })
    };
    CompletionLogprobs {
        tokens: lps.iter().map(|l| l.token.clone()).collect(),
        token_logprobs: lps.iter().map(|l| l.logprob.map(f64::from)).collect(),
        top_logprobs: lps.iter().map(top).collect(),
        text_offset,
    }
}
