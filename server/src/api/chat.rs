//! `POST /v1/chat/completions`: the chat template renders the messages, then a completion runs.
//!
//! `POST /v1/chat/completions`: the model's chat template renders the messages, then it runs as
//! a completion; answers are chat completions and their chunks.

use std::time::Instant;

use super::dynamo::Route;
use super::error::ApiError;
use super::fields::Endpoint;
use super::generate::{Collected, Delta, GenRequest, PromptIn, TokenLogprob, Usage};
use super::generation_api::GenerationApi;
use super::protocol::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionResponse,
    ChatDelta, ChatLogprobs, ChatRequest, ChatTokenLogprob, ChatTopLogprob, CommonParams,
    DeltaFunctionCall, DeltaToolCall, Head, StopReasonOut, ToolCallOut,
};
use super::tool_parsers::ToolParser;
use super::tools::{self, ToolCalling};
use super::{request_id, AppState};

/// The chat endpoint's part of [`GenerationApi`].
pub(super) struct Chat;

impl GenerationApi for Chat {
    type Request = ChatRequest;
    type Response = ChatCompletionResponse;
    type Chunk = ChatCompletionChunk;
    const ENDPOINT: Endpoint = Endpoint::Chat;
    const ROUTE: Route = Route::ChatCompletions;
    const OPERATION: &'static str = "chat";

    fn prepare(
        state: &AppState,
        common: &CommonParams,
        request: &ChatRequest,
        arrival: Instant,
    ) -> Result<GenRequest, ApiError> {
        prepare(state, common, request, arrival)
    }

    fn response(
        head: Head,
        out: Collected,
        usage: Usage,
        logprobs: bool,
    ) -> ChatCompletionResponse {
        let choices =
            out.into_choices()
                .enumerate()
                .map(|(index, choice)| {
                    let read = head.tool_calling.as_ref().and_then(|calling| {
                        Some((calling, tools::read_calls(calling, &choice.text)?))
                    });
                    let (content, tool_calls, finish_reason) = match read {
                        Some((calling, (content, calls))) => (
                            content,
                            calls,
                            tools::finish_reason(calling, choice.finish_reason),
                        ),
                        None => (Some(choice.text), Vec::new(), choice.finish_reason),
                    };
                    ChatChoice {
                        index,
                        message: AssistantMessage {
                            role: "assistant",
                            content,
                            tool_calls,
                        },
                        logprobs: logprobs.then(|| chat_logprobs(&choice.logprobs)),
                        finish_reason,
                        stop_reason: choice.stop_reason.as_ref().map(StopReasonOut::from),
                    }
                })
                .collect();
        ChatCompletionResponse {
            id: head.id,
            object: "chat.completion",
            created: head.created,
            model: head.model,
            choices,
            usage: usage.into(),
        }
    }

    fn preamble(head: &Head, n: usize, usage: Option<Usage>) -> Vec<ChatCompletionChunk> {
        (0..n)
            .map(|index| {
                let role = ChatChunkChoice {
                    index,
                    delta: ChatDelta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                        tool_calls: Vec::new(),
                    },
                    logprobs: None,
                    finish_reason: None,
                    stop_reason: None,
                };
                chunk(head, vec![role], usage)
            })
            .collect()
    }

    fn chunk(head: &mut Head, delta: Delta, usage: Option<Usage>) -> Option<ChatCompletionChunk> {
        let (content, tool_calls, finish_reason) = match head.tool_calling.clone() {
            None => (Some(delta.text.clone()), Vec::new(), delta.finish_reason),
            Some(calling) => stream_tool_calls(head, &calling, &delta),
        };
        if content.is_none()
            && tool_calls.is_empty()
            && finish_reason.is_none()
            && delta.logprobs.is_empty()
        {
            return None;
        }
        let choice = ChatChunkChoice {
            index: delta.index,
            delta: ChatDelta {
                role: None,
                content,
                tool_calls,
            },
            logprobs: (!delta.logprobs.is_empty()).then(|| chat_logprobs(&delta.logprobs)),
            finish_reason,
            stop_reason: Some(delta.stop_reason.as_ref().map(StopReasonOut::from)),
        };
        Some(chunk(head, vec![choice], usage))
    }

    fn usage_chunk(head: &Head, usage: Usage) -> ChatCompletionChunk {
        chunk(head, Vec::new(), Some(usage))
    }
}

/// A stream's tool calls. A named function's arguments are the output itself, so they stream
/// as they come (the first piece with the call's id and name); `required`'s list of calls is
/// held until the choice ends, then sent whole. An output cut short is sent as content.
fn stream_tool_calls(head: &mut Head, calling: &ToolCalling, delta: &Delta) -> StreamedPart {
    let i = delta.index;
    if head.held_text.len() <= i {
        head.held_text.resize(i + 1, String::new());
        head.released.resize(i + 1, 0);
    }
    let first = head.held_text[i].is_empty();
    head.held_text[i].push_str(&delta.text);
    match calling {
        ToolCalling::Auto(parser) => stream_auto(head, calling, *parser, delta),
        ToolCalling::Named(name) => {
            let finish = tools::finish_reason(calling, delta.finish_reason);
            if delta.text.is_empty() {
                return (None, Vec::new(), finish);
            }
            let piece = DeltaToolCall {
                index: 0,
                id: first.then(tools::call_id),
                kind: first.then_some("function"),
                function: DeltaFunctionCall {
                    name: first.then(|| name.clone()),
                    arguments: delta.text.clone(),
                },
            };
            (None, vec![piece], finish)
        }
        ToolCalling::Required => {
            if delta.finish_reason.is_none() {
                return (None, Vec::new(), None);
            }
            let text = std::mem::take(&mut head.held_text[i]);
            match tools::read_calls(calling, &text) {
                Some((_, calls)) => (
                    None,
                    whole_calls(calls),
                    tools::finish_reason(calling, delta.finish_reason),
                ),
                None => (Some(text), Vec::new(), delta.finish_reason),
            }
        }
    }
}

/// A chunk's content, tool calls and finish reason.
type StreamedPart = (Option<String>, Vec<DeltaToolCall>, Option<&'static str>);

/// `auto`: content as soon as it cannot be the start of a call; at the end, the rest of the
/// content and the calls the parser reads.
fn stream_auto(
    head: &mut Head,
    calling: &ToolCalling,
    parser: ToolParser,
    delta: &Delta,
) -> StreamedPart {
    let i = delta.index;
    let (held, from) = (&head.held_text[i], head.released[i]);
    if delta.finish_reason.is_none() {
        let settled = parser.settled_content(held);
        if settled <= from {
            return (None, Vec::new(), None);
        }
        head.released[i] = settled;
        return (Some(held[from..settled].to_owned()), Vec::new(), None);
    }
    match tools::read_calls(calling, held) {
        None => (
            Some(held[from..].to_owned()),
            Vec::new(),
            delta.finish_reason,
        ),
        Some((content, calls)) => (
            content
                .filter(|c| c.len() > from)
                .map(|c| c[from..].to_owned()),
            whole_calls(calls),
            tools::finish_reason(calling, delta.finish_reason),
        ),
    }
}

/// Complete calls as stream deltas: each with its id, type, name and all its arguments.
fn whole_calls(calls: Vec<ToolCallOut>) -> Vec<DeltaToolCall> {
    calls
        .into_iter()
        .enumerate()
        .map(|(index, c)| DeltaToolCall {
            index,
            id: Some(c.id),
            kind: Some("function"),
            function: DeltaFunctionCall {
                name: Some(c.function.name),
                arguments: c.function.arguments,
            },
        })
        .collect()
}

fn chunk(head: &Head, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
    ChatCompletionChunk {
        id: head.id.clone(),
        object: "chat.completion.chunk",
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
    req: &ChatRequest,
    arrival: Instant,
) -> Result<GenRequest, ApiError> {
    let messages = req.messages()?;
    let bytes = messages.iter().map(|m| m.content.len()).sum();
    state.check_prompt_bytes(bytes, "messages")?;
    let text = state
        .tokenizer
        .apply_chat_template_with_tools(
            &messages,
            req.add_generation_prompt.unwrap_or(true),
            req.tool_definitions().as_deref(),
        )
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
    let tools = tools::plan(
        req.tools.as_deref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
        state.auto_tool_parser,
    )?;
    let (tool_spec, tool_calling) = tools.unzip();
    let tool_spec = tool_spec.flatten();
    let (params, constraint) =
        state.sampling_params(common, (logprobs, "top_logprobs"), tool_spec)?;
    let max_param = req.max_completion_tokens.or(common.max_tokens);
    let max_field = if req.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = state.output_budget(prompt.len(), max_param, max_field)?;
    let n = common.n()?;
    let id = request_id("chatcmpl");
    Ok(GenRequest {
        request_id: id.clone(),
        prompts: vec![PromptIn {
            tokens: prompt,
            max_tokens,
            echo: None,
            score_only: false,
        }],
        params,
        constraint,
        constraint_param: None,
        max_tokens_param: max_param.map(|m| m as usize),
        n,
        stop: common.stop_strings()?,
        include_stop_str_in_output: common.include_stop_str_in_output.unwrap_or(false),
        skip_special_tokens: common.skip_special_tokens.unwrap_or(true),
        arrival,
        tool_calling,
    })
}

/// A chat choice's log-probabilities. Only an echoed prompt's first token lacks one, and chat
/// does not echo.
fn chat_logprobs(lps: &[TokenLogprob]) -> ChatLogprobs {
    ChatLogprobs {
        content: lps
            .iter()
            .map(|lp| ChatTokenLogprob {
                token: lp.token.clone(),
                logprob: lp.logprob.map(f64::from),
                bytes: lp.token.as_bytes().to_vec(),
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|(token, logprob)| ChatTopLogprob {
                        token: token.clone(),
                        logprob: f64::from(*logprob),
                        bytes: token.as_bytes().to_vec(),
                    })
                    .collect(),
            })
            .collect(),
    }
}
