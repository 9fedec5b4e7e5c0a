//! The scheduler (vLLM v1's `scheduler.py`): token budget, chunked prefill, preemption.
//!
//! The scheduler (vLLM v1's `scheduler.py`): one token budget per step, running requests first,
//! then waiting ones; chunked prefill; preemption by recompute (the last running request goes
//! back to the front of the queue, and nothing is admitted in a step that preempted). It owns
//! every request and the KV cache manager. A step is [`Scheduler::schedule`] (what to compute,
//! as plain data), the executor's work, then [`Scheduler::update_from_output`] (append the
//! sampled tokens, check stops, retire finished requests, and say what the metrics need).

pub(crate) mod output;
pub(crate) mod request;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub(crate) use output::{ExecutedBatch, ScheduledBatch};
pub use request::{FinishReason, RequestError, StopReason};
pub(crate) use request::{Request, Status};

use crate::kv_cache::manager::{KvCacheManager, PrefixHit};
use crate::sampling::{Sampled, TokenStop};
use backend::LogitsFor;
use output::{NewRequestData, PromptLogprobsJob, ScheduledRequest};

/// The scheduler's budgets and policies (vLLM's `SchedulerConfig`).
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// `--max-num-batched-tokens`: tokens per step across all requests.
    pub max_num_batched_tokens: usize,
    /// `--max-num-seqs`: requests running at once.
    pub max_num_seqs: usize,
    /// `--max-model-len`: prompt plus output.
    pub max_model_len: usize,
    /// `--enable-chunked-prefill`: a prompt may be computed over several steps. Without it, a
    /// waiting request is admitted only when the step's budget has room for its whole prompt
    /// (vLLM's scheduler does the same).
    pub chunked_prefill: bool,
}

/// What happened to one request in a step.
#[derive(Debug, Clone)]
pub struct RequestUpdate {
    pub id: String,
    /// Log-probabilities of the prompt tokens this step computed logits for, in order.
    pub prompt_logprobs: Vec<Sampled>,
    pub token: Option<Sampled>,
    pub finished: Option<FinishReason>,
    /// Set when this is the request's first token (its prefill just completed).
    pub first_token: Option<FirstToken>,
    /// Time since the request's previous token (None for the first).
    pub inter_token: Option<Duration>,
    /// The request's trace id, for the exemplars of its latencies.
    pub trace_id: Option<String>,
}

/// What the metrics record at a request's first token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FirstToken {
    /// From the request's arrival to this token.
    pub ttft: Duration,
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// Statistics of one step, for the metrics.
#[derive(Debug, Default, Clone)]
pub struct StepStats {
    /// Tokens computed this step (prefill chunks and decodes).
    pub num_tokens: usize,
    /// Prompt tokens computed this step (excluding cache hits).
    pub num_prompt_tokens: usize,
    /// Tokens generated this step.
    pub num_generated: usize,
    /// vLLM's iteration tokens (`IterationStats`, `vllm/v1/metrics/stats.py`): the tokens
    /// generated this step, plus the computed (uncached) prompt tokens of each request whose
    /// first token this is. A prompt counts once, whole, in the step that ends its prefill (not
    /// chunk by chunk, and not again when a preempted request is recomputed).
    pub iteration_tokens: usize,
    pub num_preempted: usize,
    /// Prefix-cache lookups of newly admitted, never-preempted requests, in tokens.
    pub prefix_queries: usize,
    pub prefix_hits: usize,
}

/// The result of a step: updates to stream, finished requests (removed, blocks freed) and stats.
pub struct StepOutcome {
    pub updates: Vec<RequestUpdate>,
    pub finished: Vec<(Request, FinishReason)>,
    pub stats: StepStats,
}

/// A running request's share of the step being scheduled.
struct Scheduled {
    /// Index into `running`.
    index: usize,
    start: usize,
    num_tokens: usize,
    /// Scheduled for the first time.
    new: bool,
}

/// Decides which requests compute how many tokens each step, and applies what they produced.
pub struct Scheduler {
    config: SchedulerConfig,
    kv: KvCacheManager,
    waiting: VecDeque<Request>,
    running: Vec<Request>,
    eos_token_ids: Vec<u32>,
    /// Requests the cache can never hold, finished by the last schedule (reported with the
    /// step's finished requests).
    refused: Vec<(Request, FinishReason)>,
    /// Requests finished or aborted since the last schedule, for the executor.
    finished_ids: Vec<String>,
}

impl Scheduler {
    /// A scheduler over `kv`, finishing sequences at any of `eos_token_ids`.
    pub fn new(config: SchedulerConfig, kv: KvCacheManager, eos_token_ids: Vec<u32>) -> Scheduler {
        Scheduler {
            config,
            kv,
            waiting: VecDeque::new(),
            running: Vec::new(),
            eos_token_ids,
            refused: Vec::new(),
            finished_ids: Vec::new(),
        }
    }

    /// Queues `req` as waiting.
    pub fn add(&mut self, req: Request) {
        self.waiting.push_back(req);
    }

    /// Requests running.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Requests waiting.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether anything is running or waiting.
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// A running request by id.
    pub fn running_request(&self, id: &str) -> Option<&Request> {
        self.running.iter().find(|r| r.id == id)
    }

    /// Ids of every request, running or waiting.
    pub fn request_ids(&self) -> impl Iterator<Item = &str> {
        self.running
            .iter()
            .chain(self.waiting.iter())
            .map(|r| r.id.as_str())
    }

    /// The KV cache manager.
    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    /// Removes a request wherever it is and frees its blocks.
    pub fn abort(&mut self, id: &str) -> Option<Request> {
        let mut req = if let Some(i) = self.running.iter().position(|r| r.id == id) {
            self.running.remove(i)
        } else {
            let i = self.waiting.iter().position(|r| r.id == id)?;
            self.waiting.remove(i)?
        };
        self.kv.free(&mut req.blocks);
        self.finished_ids.push(req.id.clone());
        Some(req)
    }

    fn preempt_last(&mut self) {
        let mut victim = self.running.pop().expect("a running request to preempt");
        self.kv.free(&mut victim.blocks);
        victim.status = Status::Preempted;
        victim.num_computed_tokens = 0;
        victim.num_preemptions += 1;
        self.waiting.push_front(victim);
    }

    /// Decides the next step: which requests compute how many tokens (admitting, preempting
    /// and refusing as the budget and the cache allow).
    pub fn schedule(&mut self) -> ScheduledBatch {
        let mut stats = StepStats::default();
        let scheduled = self.schedule_slots(&mut stats);
        let requests = scheduled.iter().map(|s| self.describe(s)).collect();
        ScheduledBatch {
            requests,
            finished_ids: std::mem::take(&mut self.finished_ids),
            num_preempted: stats.num_preempted,
            prefix_queries: stats.prefix_queries,
            prefix_hits: stats.prefix_hits,
            slots: scheduled.iter().map(|s| s.index).collect(),
        }
    }

    /// A scheduled request as the executor needs it.
    fn describe(&self, s: &Scheduled) -> ScheduledRequest {
        let req = &self.running[s.index];
        let end = s.start + s.num_tokens;
        let logits_for = if req.owes_prompt_logprobs() {
            LogitsFor::All
        } else if end < req.tokens.len() {
            LogitsFor::None
        } else if req.params.is_plain_greedy() {
            LogitsFor::Greedy
        } else {
            LogitsFor::Last
        };
        let prompt_logprobs = (logits_for == LogitsFor::All).then(|| {
            // The row of position p scores the token at p + 1; positions already reported
            // (before a preemption) are skipped.
            let first = s.start.max(req.prompt_logprobs_next - 1);
            let last = end.min(req.prompt_len.saturating_sub(1));
            PromptLogprobsJob {
                top: req.prompt_logprobs.unwrap_or(0),
                first,
                targets: if last > first {
                    req.tokens[first + 1..last + 1].to_vec()
                } else {
                    Vec::new()
                },
            }
        });
        ScheduledRequest {
            id: req.id.clone(),
            tokens: req.tokens[s.start..end].to_vec(),
            start: s.start,
            block_table: req.blocks.blocks.clone(),
            logits_for,
            samples: end == req.tokens.len(),
            new: s.new.then(|| NewRequestData {
                params: req.params.clone(),
                prompt: req.tokens[..req.prompt_len].to_vec(),
            }),
            prompt_logprobs,
        }
    }

    fn schedule_slots(&mut self, stats: &mut StepStats) -> Vec<Scheduled> {
        let mut budget = self.config.max_num_batched_tokens;
        let mut out = Vec::new();
        let mut i = 0;
        'running: while i < self.running.len() && budget > 0 {
            let req = &self.running[i];
            let n = (req.tokens.len() - req.num_computed_tokens).min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            loop {
                let req = &mut self.running[i];
                let (tokens, computed) = (&req.tokens, req.num_computed_tokens);
                if self.kv.allocate_slots(
                    &mut req.blocks,
                    tokens,
                    computed,
                    n,
                    &PrefixHit::default(),
                ) {
                    out.push(Scheduled {
                        index: i,
                        start: computed,
                        num_tokens: n,
                        new: false,
                    });
                    budget -= n;
                    i += 1;
                    break;
                }
                if self.running.len() == 1 {
                    // Alone and still short of blocks: the whole cache cannot hold it. Preempting
                    // it would only requeue a request that can never be admitted.
                    let mut req = self.running.remove(0);
                    self.kv.free(&mut req.blocks);
                    self.finished_ids.push(req.id.clone());
                    self.refused.push((req, FinishReason::Length));
                    break 'running;
                }
                let victim_is_self = i == self.running.len() - 1;
                self.preempt_last();
                stats.num_preempted += 1;
                if victim_is_self {
                    break 'running;
                }
            }
        }
        if stats.num_preempted == 0 {
            while budget > 0 && self.running.len() < self.config.max_num_seqs {
                let Some(req) = self.waiting.front_mut() else {
                    break;
                };
                let skip_cache = req.owes_prompt_logprobs();
                let hit = if skip_cache {
                    PrefixHit::default()
                } else {
                    self.kv.get_computed_blocks(&mut req.blocks, &req.tokens)
                };
                let needed = req.tokens.len() - hit.num_tokens;
                if !self.config.chunked_prefill && needed > budget {
                    break;
                }
                let n = needed.min(budget);
                if !self
                    .kv
                    .allocate_slots(&mut req.blocks, &req.tokens, 0, n, &hit)
                {
                    if self.running.is_empty() {
                        // Nothing holds a block, and still it does not fit: it never will.
                        let mut req = self.waiting.pop_front().expect("front exists");
                        req.error = Some(RequestError::CannotFit(format!(
                            "the request needs {} tokens of KV cache and the whole cache holds {}",
                            req.tokens.len(),
                            self.kv.capacity_tokens()
                        )));
                        self.finished_ids.push(req.id.clone());
                        self.refused.push((req, FinishReason::Error));
                        continue;
                    }
                    break;
                }
                let mut req = self.waiting.pop_front().expect("front exists");
                req.num_computed_tokens = hit.num_tokens;
                req.status = Status::Running;
                let new = req.times.first_scheduled.is_none();
                req.times.first_scheduled.get_or_insert_with(Instant::now);
                if req.num_cached_tokens.is_none() {
                    req.num_cached_tokens = Some(hit.num_tokens);
                    if req.num_preemptions == 0 && !skip_cache {
                        stats.prefix_queries += req.tokens.len();
                        stats.prefix_hits += hit.num_tokens;
                    }
                }
                out.push(Scheduled {
                    index: self.running.len(),
                    start: hit.num_tokens,
                    num_tokens: n,
                    new,
                });
                self.running.push(req);
                budget -= n;
            }
        }
        debug_assert!(
            out.iter().map(|s| s.num_tokens).sum::<usize>() <= self.config.max_num_batched_tokens
        );
        out
    }

    /// Takes a step's results back: appends the sampled tokens, checks stops and lengths,
    /// retires finished requests (their blocks freed), and returns what to stream and record.
    /// `step` is the last [`Scheduler::schedule`]'s output and `out` the executor's for it.
    pub fn update_from_output(&mut self, step: &ScheduledBatch, out: ExecutedBatch) -> StepOutcome {
        let mut stats = StepStats {
            num_preempted: step.num_preempted,
            prefix_queries: step.prefix_queries,
            prefix_hits: step.prefix_hits,
            ..StepStats::default()
        };
        let mut updates = Vec::new();
        let mut finished = std::mem::take(&mut self.refused);
        let now = Instant::now();
        let mut done = Vec::new();
        for ((s, &index), o) in step.requests.iter().zip(&step.slots).zip(out.requests) {
            let req = &mut self.running[index];
            debug_assert_eq!(
                req.id, s.id,
                "update_from_output takes the last schedule's output"
            );
            let num_tokens = s.tokens.len();
            stats.num_tokens += num_tokens;
            stats.num_prompt_tokens += (req.prompt_len.saturating_sub(s.start)).min(num_tokens);
            req.num_computed_tokens = s.start + num_tokens;
            if let Some(job) = &s.prompt_logprobs {
                if !job.targets.is_empty() {
                    req.prompt_logprobs_next = job.first + job.targets.len() + 1;
                }
            }
            let prompt_logprobs = o.prompt_logprobs;
            let Some(sampled) = o.sampled else {
                // A prefill chunk short of the end: nothing sampled.
                if !prompt_logprobs.is_empty() {
                    updates.push(RequestUpdate {
                        id: req.id.clone(),
                        prompt_logprobs,
                        token: None,
                        finished: None,
                        first_token: None,
                        inter_token: None,
                        trace_id: req.trace_id.clone(),
                    });
                }
                continue;
            };
            let previous = req.times.last_token;
            req.push_token(&sampled, now);
            stats.num_generated += 1;
            stats.iteration_tokens += 1;
            let cached = req.num_cached_tokens.unwrap_or(0);
            if previous.is_none() {
                stats.iteration_tokens += req.prompt_len.saturating_sub(cached);
            }
            let token_stop = req.params.token_stop(sampled.token, &self.eos_token_ids);
            if token_stop == Some(TokenStop::StopTokenId) {
                req.stop_reason = Some(StopReason::Token(sampled.token));
            }
            let reason = if let Some(why) = o.constraint_failure {
                req.error = Some(RequestError::ConstraintFailed(why));
                Some(FinishReason::Error)
            } else if token_stop.is_some() {
                Some(FinishReason::Stop)
            } else if req.num_output_tokens() >= req.max_tokens
                || req.tokens.len() >= self.config.max_model_len
            {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = reason {
                done.push((index, reason));
            }
            updates.push(RequestUpdate {
                id: req.id.clone(),
                prompt_logprobs,
                token: Some(sampled),
                finished: reason,
                first_token: previous.is_none().then(|| FirstToken {
                    ttft: now - req.times.arrival,
                    prompt_tokens: req.prompt_len,
                    cached_tokens: cached,
                }),
                inter_token: previous.map(|p| now - p),
                trace_id: req.trace_id.clone(),
            });
        }
        // Remove from the back so the remaining indexes stay valid.
        done.sort_unstable_by_key(|(i, _)| *i);
        for &(i, reason) in done.iter().rev() {
            let mut req = self.running.remove(i);
            self.kv.free(&mut req.blocks);
            self.finished_ids.push(req.id.clone());
            finished.push((req, reason));
        }
        StepOutcome {
            updates,
            finished,
            stats,
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod unit_tests;
