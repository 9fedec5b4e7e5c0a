//! What passes between the scheduler and the executor each step, as plain data.
//!
//! What passes between the scheduler and the executor each step, as plain data: a
//! [`ScheduledBatch`] (vLLM v1's `SchedulerOutput`) and an [`ExecutedBatch`] (its
//! `ModelRunnerOutput`): the scheduler says what to compute, the executor
//! computes and samples it, and the scheduler takes the result back in
//! [`Scheduler::update_from_output`](super::Scheduler::update_from_output). Neither side reaches
//! into the other, so the scheduler is tested by feeding it made-up outputs, with no model.

use crate::sampling::{Sampled, SamplingParams};
use backend::LogitsFor;

/// One step's work.
#[derive(Debug, Clone, Default)]
pub struct ScheduledBatch {
    /// The requests to compute, in batch order.
    pub requests: Vec<ScheduledRequest>,
    /// Requests that finished or were aborted since the last step: the executor drops their
    /// state (vLLM's `finished_req_ids`).
    pub finished_ids: Vec<String>,
    /// Requests preempted to make room this step.
    pub num_preempted: usize,
    /// Prefix-cache lookups of newly admitted, never-preempted requests, in tokens.
    pub prefix_queries: usize,
    pub prefix_hits: usize,
    /// Each request's place among the scheduler's running requests.
    pub(super) slots: Vec<usize>,
}

impl ScheduledBatch {
    /// Whether there is nothing to compute.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

/// One request's share of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledRequest {
    pub id: String,
    /// The tokens to compute, at positions `start..start + tokens.len()`.
    pub tokens: Vec<u32>,
    pub start: usize,
    pub block_table: Vec<u32>,
    pub logits_for: LogitsFor,
    /// Whether this step reaches the end of the request's tokens, so a token is sampled.
    pub samples: bool,
    /// The request the first time it is scheduled: what the executor needs to sample for it.
    pub new: Option<NewRequestData>,
    /// Prompt log-probabilities owed for positions this step computes.
    pub prompt_logprobs: Option<PromptLogprobsJob>,
}

/// What the executor keeps for a request: its sampling parameters and prompt (the repetition
/// penalty counts the prompt's tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct NewRequestData {
    pub params: SamplingParams,
    pub prompt: Vec<u32>,
}

/// Prompt log-probabilities to report: the row of position `p` scores the prompt token at
/// `p + 1`, for the positions `first..first + targets.len()`.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLogprobsJob {
    /// How many alternatives to report with each.
    pub top: usize,
    pub first: usize,
    /// The prompt tokens at `first + 1..`.
    pub targets: Vec<u32>,
}

/// What the executor computed: one entry per scheduled request, in the same order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutedBatch {
    pub requests: Vec<RequestComputed>,
}

/// What the executor computed for one scheduled request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestComputed {
    /// The sampled token, when the request's step reached its end.
    pub sampled: Option<Sampled>,
    /// The prompt log-probabilities its [`PromptLogprobsJob`] asked for.
    pub prompt_logprobs: Vec<Sampled>,
    /// Why its structured-output constraint failed at this token, when it did: the request
    /// ends with an error there.
    pub constraint_failure: Option<String>,
}
