//! Response bodies and stream chunks, shaped as vLLM serializes them.
//!
//! Response bodies and stream chunks of the OpenAI-compatible endpoints, shaped as vLLM
//! serializes them: every field vLLM sets is present (`null` when empty), and the fields vLLM
//! leaves unset in a chunk are absent. Log-probabilities are computed in f32 and written as the
//! f64 of that f32, as vLLM's Python floats are.

use serde::Serialize;

use engine::StopReason;

/// What every response and chunk of one request carries besides its `object` kind, and what
/// shaping them needs to know of the request.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
    /// How the output becomes tool calls, when it does.
    pub tool_calling: Option<crate::api::tools::ToolCalling>,
    /// Each choice's output so far, for a stream whose tool calls are sent once complete.
    pub held_text: Vec<String>,
    /// How much of each choice's held output a stream has sent as content.
    pub released: Vec<usize>,
}

/// Token counts, with vLLM's `prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct UsageOut {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// vLLM's `stop_reason`: the stop token id or the stop string that ended a choice.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub(crate) enum StopReasonOut {
    Token(u32),
    Text(String),
}

impl From<&StopReason> for StopReasonOut {
    fn from(reason: &StopReason) -> Self {
        match reason {
            StopReason::Token(t) => StopReasonOut::Token(*t),
            StopReason::Text(s) => StopReasonOut::Text(s.clone()),
        }
    }
}

/// `POST /v1/completions`, whole.
#[derive(Debug, Serialize)]
pub(crate) struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: UsageOut,
}

/// One choice of a completion, or its new text in a chunk.
#[derive(Debug, Serialize)]
pub(crate) struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
    pub stop_reason: Option<StopReasonOut>,
}

/// A completion's log-probabilities, in the legacy OpenAI layout: parallel lists of the
/// tokens, their log-probabilities, their alternatives (token text to log-probability; `null`
/// for an echoed prompt's first token) and their offsets in the choice's text.
#[derive(Debug, Serialize)]
pub(crate) struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f64>>,
    pub top_logprobs: Vec<Option<serde_json::Map<String, serde_json::Value>>>,
    pub text_offset: Vec<usize>,
}

/// A chunk of a streamed completion. The last chunk of a stream with `include_usage` has no
/// choices and the usage; with `continuous_usage_stats` every chunk has the usage so far.
#[derive(Debug, Serialize)]
pub(crate) struct CompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
}

/// `POST /v1/chat/completions`, whole.
#[derive(Debug, Serialize)]
pub(crate) struct ChatCompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageOut,
}

#[derive(Debug, Serialize)]
pub(crate) struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
    pub stop_reason: Option<StopReasonOut>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AssistantMessage {
    pub role: &'static str,
    /// `null` when the model only called tools.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

/// A call of one of the request's tools.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FunctionCallOut {
    pub name: String,
    /// The arguments, as a JSON text.
    pub arguments: String,
}

/// A tool call in a stream: the first delta of a call has its id, type and name; the
/// arguments' text may come in pieces.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeltaToolCall {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: DeltaFunctionCall,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeltaFunctionCall {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

/// A chat choice's log-probabilities: one entry per token, with its alternatives.
#[derive(Debug, Serialize)]
pub(crate) struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ChatTokenLogprob {
    pub token: String,
    pub logprob: Option<f64>,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ChatTopLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

/// A chunk of a streamed chat completion (see [`CompletionChunk`] for the usage).
#[derive(Debug, Serialize)]
pub(crate) struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
    /// Absent from the first chunk of a choice (the role chunk), as vLLM leaves it unset there;
    /// `null` or the reason on every other.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<Option<StopReasonOut>>,
}

/// New message content; the first chunk of a choice also names the role. A tool call's chunks
/// carry `tool_calls` instead of content.
#[derive(Debug, Serialize)]
pub(crate) struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<DeltaToolCall>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub(crate) struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

/// One served model, as `/v1/models` lists it.
#[derive(Debug, Serialize)]
pub(crate) struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub root: String,
    pub parent: Option<String>,
    pub max_model_len: usize,
    pub permission: Vec<ModelPermission>,
}

/// vLLM's `ModelPermission`, which its model cards carry (OpenAI's old field), with vLLM's
/// values: sampling, logprobs and viewing allowed, nothing else.
#[derive(Debug, Serialize)]
pub(crate) struct ModelPermission {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub allow_create_engine: bool,
    pub allow_sampling: bool,
    pub allow_logprobs: bool,
    pub allow_search_indices: bool,
    pub allow_view: bool,
    pub allow_fine_tuning: bool,
    pub organization: &'static str,
    pub group: Option<String>,
    pub is_blocking: bool,
}

impl ModelPermission {
    pub(crate) fn new(created: u64) -> ModelPermission {
        ModelPermission {
            id: crate::api::request_id("modelperm"),
            object: "model_permission",
            created,
            allow_create_engine: false,
            allow_sampling: true,
            allow_logprobs: true,
            allow_search_indices: false,
            allow_view: true,
            allow_fine_tuning: false,
            organization: "*",
            group: None,
            is_blocking: false,
        }
    }
}

/// `POST /tokenize`.
#[derive(Debug, Serialize)]
pub(crate) struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
    /// With `return_token_strs`.
    pub token_strs: Option<Vec<String>>,
}

/// `POST /detokenize`.
#[derive(Debug, Serialize)]
pub(crate) struct DetokenizeResponse {
    pub prompt: String,
}
