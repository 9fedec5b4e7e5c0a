//! A request as the scheduler sees it: tokens, cached KV, blocks, stop conditions, timestamps.
//!
//! A request as the scheduler sees it: its tokens, how many have KV in the cache, its blocks,
//! its sampling parameters (for its stop conditions; the executor holds its sampler), and the
//! timestamps the metrics need.

use std::time::Instant;

use crate::kv_cache::manager::RequestBlocks;
use crate::sampling::{Sampled, SamplingParams};

/// Why a request finished, as vLLM's `finished_reason` label spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or string matched.
    Stop,
    /// `max_tokens` or the model's length was reached.
    Length,
    /// The client went away or asked to stop.
    Abort,
    /// The engine failed the request.
    Error,
}

impl FinishReason {
    /// The reason as the OpenAI API and vLLM's `finished_reason` label spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Error => "error",
        }
    }
}

/// Why a request finished with [`FinishReason::Error`], when the engine can say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The KV cache can never hold it (the request's own size).
    CannotFit(String),
    /// Its structured-output constraint failed mid-answer (llguidance hit one of its limits on
    /// this grammar): the output could no longer be held to it, so it ended there rather than
    /// go on unconstrained.
    ConstraintFailed(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::CannotFit(why) => f.write_str(why),
            RequestError::ConstraintFailed(why) => write!(
                f,
                "the output could not be held to its structured-output constraint: {why}"
            ),
        }
    }
}

/// What stopped a request that finished with [`FinishReason::Stop`], as vLLM's `stop_reason`
/// reports it: a stop token id from `stop_token_ids`, or a matched stop string. The model's own
/// EOS token has none (vLLM's `null`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token id.
    Token(u32),
    /// A stop string.
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Waiting,
    Running,
    /// Preempted: back in the waiting queue, to be recomputed.
    Preempted,
}

/// Moments in a request's life (vLLM's `RequestStateStats`).
#[derive(Debug, Clone, Copy)]
pub struct Timestamps {
    /// When the frontend received it (TTFT and e2e are measured from here).
    pub arrival: Instant,
    /// When the engine queued it.
    pub queued: Instant,
    /// When it was first scheduled.
    pub first_scheduled: Option<Instant>,
    /// When its first token was sampled.
    pub first_token: Option<Instant>,
    /// When its latest token was sampled.
    pub last_token: Option<Instant>,
}

pub struct Request {
    pub id: String,
    pub prompt_len: usize,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    pub max_tokens: usize,
    pub params: SamplingParams,
    pub status: Status,
    /// Tokens whose KV is in the request's blocks.
    pub num_computed_tokens: usize,
    pub blocks: RequestBlocks,
    /// Prompt tokens served from the prefix cache at first admission (`None` before it).
    pub num_cached_tokens: Option<usize>,
    pub num_preemptions: u32,
    /// Set when a stop token id or a stop string ended it.
    pub stop_reason: Option<StopReason>,
    /// Why it finished with [`FinishReason::Error`], when the engine can say.
    pub error: Option<RequestError>,
    /// How many alternatives to report with each prompt token's log-probability, when the
    /// client asked for the prompt's log-probabilities (`echo` with `logprobs`).
    pub prompt_logprobs: Option<usize>,
    /// The next prompt position whose log-probability is owed (position 0 has none); a
    /// recomputation after preemption does not report a position twice.
    pub prompt_logprobs_next: usize,
    pub times: Timestamps,
    /// The request's trace id, when tracing is on: its exemplars carry it.
    pub trace_id: Option<String>,
}

impl Request {
    pub fn new(
        id: String,
        prompt: Vec<u32>,
        max_tokens: usize,
        params: SamplingParams,
        arrival: Instant,
    ) -> Request {
        Request {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            max_tokens,
            params,
            status: Status::Waiting,
            num_computed_tokens: 0,
            blocks: RequestBlocks::default(),
            num_cached_tokens: None,
            num_preemptions: 0,
            stop_reason: None,
            error: None,
            prompt_logprobs: None,
            prompt_logprobs_next: 1,
            times: Timestamps {
                arrival,
                queued: Instant::now(),
                first_scheduled: None,
                first_token: None,
                last_token: None,
            },
            trace_id: None,
        }
    }

    pub fn num_output_tokens(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Whether prompt log-probabilities are still owed: such a request reads nothing from the
    /// prefix cache (as in vLLM), since a cached position has no logits.
    pub fn owes_prompt_logprobs(&self) -> bool {
        self.prompt_logprobs.is_some() && self.prompt_logprobs_next < self.prompt_len
    }

    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Appends a sampled token.
    pub fn push_token(&mut self, sampled: &Sampled, now: Instant) {
        self.tokens.push(sampled.token);
        self.times.first_token.get_or_insert(now);
        self.times.last_token = Some(now);
    }
}
