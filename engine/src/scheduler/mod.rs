//! The scheduler (vLLM v1's `scheduler.py`): one token budget per step, running requests first,
//! then waiting ones; chunked prefill; preemption by recompute (the last running request goes
//! back to the front of the queue, and nothing is admitted in a step that preempted). It owns
//! every request and the KV cache manager; [`Scheduler::step`] runs one step on a backend.

pub mod request;

use std::collections::VecDeque;
use std::time::Instant;

pub use request::{FinishReason, Request, Status, StopReason};

use crate::backend::{Backend, BackendError, LogitsFor, SeqInput};
use crate::kv_cache::manager::{KvCacheManager, PrefixHit};
use crate::sampling::{Sampled, TokenStop};

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
    /// This is the request's first token (its prefill just completed).
    pub first_token: bool,
    /// Time since the request's previous token (None for the first).
    pub inter_token: Option<std::time::Duration>,
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
pub struct StepOutput {
    pub updates: Vec<RequestUpdate>,
    pub finished: Vec<(Request, FinishReason)>,
    pub stats: StepStats,
}

struct Scheduled {
    /// Index into `running`.
    index: usize,
    start: usize,
    num_tokens: usize,
}

pub struct Scheduler {
    config: SchedulerConfig,
    kv: KvCacheManager,
    waiting: VecDeque<Request>,
    running: Vec<Request>,
    eos_token_ids: Vec<u32>,
    /// Requests the cache can never hold, finished by the last schedule (reported with the
    /// step's finished requests).
    refused: Vec<(Request, FinishReason)>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, kv: KvCacheManager, eos_token_ids: Vec<u32>) -> Scheduler {
        Scheduler {
            config,
            kv,
            waiting: VecDeque::new(),
            running: Vec::new(),
            eos_token_ids,
            refused: Vec::new(),
        }
    }

    pub fn add(&mut self, req: Request) {
        self.waiting.push_back(req);
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

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

    fn schedule(&mut self, stats: &mut StepStats) -> Vec<Scheduled> {
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
                        req.error = Some(format!(
                            "the request needs {} tokens of KV cache and the whole cache holds {}",
                            req.tokens.len(),
                            self.kv.capacity_tokens()
                        ));
                        self.refused.push((req, FinishReason::Error));
                        continue;
                    }
                    break;
                }
                let mut req = self.waiting.pop_front().expect("front exists");
                req.num_computed_tokens = hit.num_tokens;
                req.status = Status::Running;
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

    /// Schedules one step, runs it on `backend`, samples, and retires finished requests.
    pub fn step(&mut self, backend: &mut dyn Backend) -> Result<StepOutput, BackendError> {
        let mut stats = StepStats::default();
        let scheduled = self.schedule(&mut stats);
        let mut updates = Vec::new();
        let mut finished = std::mem::take(&mut self.refused);
        if scheduled.is_empty() {
            return Ok(StepOutput {
                updates,
                finished,
                stats,
            });
        }
        let inputs: Vec<SeqInput> = scheduled
            .iter()
            .map(|s| {
                let req = &self.running[s.index];
                let end = s.start + s.num_tokens;
                SeqInput {
                    tokens: &req.tokens[s.start..end],
                    start_pos: s.start,
                    block_table: &req.blocks.blocks,
                    logits_for: if req.owes_prompt_logprobs() {
                        LogitsFor::All
                    } else if end < req.tokens.len() {
                        LogitsFor::None
                    } else if req.sampler.is_plain_greedy() {
                        LogitsFor::Greedy
                    } else {
                        LogitsFor::Last
                    },
                }
            })
            .collect();
        let logits_for: Vec<LogitsFor> = inputs.iter().map(|i| i.logits_for).collect();
        let logits = backend.forward(&inputs)?;
        let now = Instant::now();
        let mut row = 0;
        let mut greedy = logits.greedy.iter();
        let mut done = Vec::new();
        for (s, &logits_for) in scheduled.iter().zip(&logits_for) {
            let req = &mut self.running[s.index];
            stats.num_tokens += s.num_tokens;
            stats.num_prompt_tokens += (req.prompt_len.saturating_sub(s.start)).min(s.num_tokens);
            req.num_computed_tokens = s.start + s.num_tokens;
            // This sequence's full rows, in position order (none for a greedy reduction).
            let rows = match logits_for {
                LogitsFor::Greedy => 0..0,
                _ => row..row + logits_for.positions(s.num_tokens),
            };
            row = rows.end;
            let prompt_logprobs = if logits_for == LogitsFor::All {
                prompt_logprobs(req, s.start, rows.clone(), &logits)
            } else {
                Vec::new()
            };
            if req.num_computed_tokens < req.tokens.len() {
                // A prefill chunk short of the end: nothing to sample.
                if !prompt_logprobs.is_empty() {
                    updates.push(RequestUpdate {
                        id: req.id.clone(),
                        prompt_logprobs,
                        token: None,
                        finished: None,
                        first_token: false,
                        inter_token: None,
                    });
                }
                continue;
            }
            let sampled = match rows.last() {
                Some(last) => req.sampler.sample(logits.row(last)),
                None => {
                    let reduced = greedy.next().expect("one greedy token per greedy sequence");
                    req.sampler.accept(*reduced)
                }
            };
            let previous = req.times.last_token;
            req.push_token(&sampled, now);
            stats.num_generated += 1;
            stats.iteration_tokens += 1;
            if previous.is_none() {
                let cached = req.num_cached_tokens.unwrap_or(0);
                stats.iteration_tokens += req.prompt_len.saturating_sub(cached);
            }
            let token_stop = req
                .sampler
                .params()
                .token_stop(sampled.token, &self.eos_token_ids);
            if token_stop == Some(TokenStop::StopTokenId) {
                req.stop_reason = Some(StopReason::Token(sampled.token));
            }
            let reason = if token_stop.is_some() {
                Some(FinishReason::Stop)
            } else if req.num_output_tokens() >= req.max_tokens
                || req.tokens.len() >= self.config.max_model_len
            {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = reason {
                done.push((s.index, reason));
            }
            updates.push(RequestUpdate {
                id: req.id.clone(),
                prompt_logprobs,
                token: Some(sampled),
                finished: reason,
                first_token: previous.is_none(),
                inter_token: previous.map(|p| now - p),
            });
        }
        // Remove from the back so the remaining indexes stay valid.
        done.sort_unstable_by_key(|(i, _)| *i);
        for &(i, reason) in done.iter().rev() {
            let mut req = self.running.remove(i);
            self.kv.free(&mut req.blocks);
            finished.push((req, reason));
        }
        Ok(StepOutput {
            updates,
            finished,
            stats,
        })
    }
}

/// The log-probabilities of the prompt tokens whose logits a step computed: the row of position
/// `p` scores the token at `p + 1`. Positions already reported (before a preemption) are skipped.
fn prompt_logprobs(
    req: &mut Request,
    start: usize,
    rows: std::ops::Range<usize>,
    logits: &crate::backend::Logits,
) -> Vec<Sampled> {
    let top = req.prompt_logprobs.unwrap_or(0);
    let mut out = Vec::new();
    for (position, row) in (start..).zip(rows) {
        let next = position + 1;
        if next < req.prompt_logprobs_next || next >= req.prompt_len {
            continue;
        }
        let token = req.tokens[next];
        let (logprob, top_logprobs) = crate::sampling::logprobs(logits.row(row), token, top);
        out.push(Sampled {
            token,
            logprob,
            top_logprobs,
        });
        req.prompt_logprobs_next = next + 1;
    }
    out
}

#[cfg(test)]
mod tests;
