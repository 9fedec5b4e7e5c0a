//! The executor (vLLM v1's model runner): the backend and every request's sampler.
//!
//! The executor (vLLM v1's model runner): owns the backend and every request's sampler, and
//! turns a [`ScheduledBatch`] into sampled tokens. It keeps a request's sampler (its seeded
//! generator, the token counts its penalties need) from the step that first schedules it to the
//! step after it finishes, preemptions included.

use std::collections::HashMap;
use std::sync::Arc;

use crate::sampling::{Sampled, Sampler};
use crate::scheduler::output::{ExecutedBatch, PromptLogprobsJob, RequestComputed};
use crate::scheduler::ScheduledBatch;
use backend::Heartbeat;
use backend::{Backend, BackendError, Logits, LogitsFor, SeqInput, StepTiming};

/// A step the executor could not run: the backend refused the batch, or the scheduler's output
/// broke the executor's contract (both are bugs; the engine fails every request rather than
/// loop on them).
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("request {0} is sampled but was never scheduled as new")]
    NoSampler(String),
    #[error("the backend reduced fewer greedy rows than the batch asked for")]
    MissingGreedyToken,
}

/// Runs scheduled batches on the backend and samples their tokens.
pub struct Executor {
    backend: Box<dyn Backend>,
    samplers: HashMap<String, Sampler>,
    /// The last step's time computing structured-output masks (`None`: no constrained request
    /// sampled in it).
    mask_time: Option<std::time::Duration>,
}

impl Executor {
    /// An executor over `backend`.
    pub fn new(backend: Box<dyn Backend>) -> Executor {
        Executor {
            backend,
            samplers: HashMap::new(),
            mask_time: None,
        }
    }

    /// Runs one step: the forward pass, then sampling.
    pub fn execute(&mut self, step: &ScheduledBatch) -> Result<ExecutedBatch, ExecuteError> {
        self.mask_time = None;
        for id in &step.finished_ids {
            self.samplers.remove(id);
        }
        for r in &step.requests {
            if let Some(new) = &r.new {
                self.samplers
                    .insert(r.id.clone(), Sampler::new(new.params.clone(), &new.prompt));
            }
        }
        if step.requests.is_empty() {
            return Ok(ExecutedBatch::default());
        }
        let inputs: Vec<SeqInput> = step
            .requests
            .iter()
            .map(|r| SeqInput {
                tokens: &r.tokens,
                start_pos: r.start,
                block_table: &r.block_table,
                logits_for: r.logits_for,
            })
            .collect();
        let logits = self.forward_preparing_masks(step, &inputs)?;
        let mut row = 0;
        let mut greedy = logits.greedy.iter();
        let mut out = Vec::with_capacity(step.requests.len());
        for r in &step.requests {
            // This request's full rows, in position order (none for a greedy reduction).
            let rows = match r.logits_for {
                LogitsFor::Greedy => 0..0,
                lf => row..row + lf.positions(r.tokens.len()),
            };
            row = rows.end;
            let prompt_logprobs = match &r.prompt_logprobs {
                Some(job) => prompt_logprobs(job, r.start, rows.start, &logits),
                None => Vec::new(),
            };
            let mut constraint_failure = None;
            let sampled = if r.samples {
                let sampler = self
                    .samplers
                    .get_mut(&r.id)
                    .ok_or_else(|| ExecuteError::NoSampler(r.id.clone()))?;
                let sampled = match rows.last() {
                    Some(last) => sampler.sample(logits.row(last)),
                    None => {
                        let reduced = greedy.next().ok_or(ExecuteError::MissingGreedyToken)?;
                        sampler.accept(*reduced)
                    }
                };
                if sampler.is_constrained() {
                    *self.mask_time.get_or_insert_default() += sampler.take_mask_time();
                }
                constraint_failure = sampler.take_constraint_failure();
                Some(sampled)
            } else {
                None
            };
            out.push(RequestComputed {
                sampled,
                prompt_logprobs,
                constraint_failure,
            });
        }
        Ok(ExecutedBatch { requests: out })
    }

    /// The forward pass, with the masks of the constrained requests that sample in this step
    /// computed on another thread meanwhile: the next token of each is known (it was sampled
    /// last step), so its mask need not wait for the logits. On a GPU the masks cost nothing
    /// then; on the CPU backend they take a share of the cores the pass uses.
    fn forward_preparing_masks(
        &mut self,
        step: &ScheduledBatch,
        inputs: &[SeqInput],
    ) -> Result<Logits, BackendError> {
        if !self.samplers.values().any(Sampler::is_constrained) {
            return self.backend.forward(inputs);
        }
        let sampling: std::collections::HashSet<&str> = step
            .requests
            .iter()
            .filter(|r| r.samples)
            .map(|r| r.id.as_str())
            .collect();
        let mut constrained: Vec<&mut Sampler> = self
            .samplers
            .iter_mut()
            .filter(|(id, s)| s.is_constrained() && sampling.contains(id.as_str()))
            .map(|(_, s)| s)
            .collect();
        if constrained.is_empty() {
            return self.backend.forward(inputs);
        }
        let backend = &mut self.backend;
        std::thread::scope(|scope| {
            let masks = scope.spawn(move || {
                for sampler in &mut constrained {
                    sampler.prepare_mask();
                }
            });
            let logits = backend.forward(inputs);
            // A panic in llguidance is caught inside it (it reports errors); a panic here
            // would be a bug of ours, and the masks are then computed at sampling.
            let _ = masks.join();
            logits
        })
    }

    /// The last step's time computing structured-output masks, once; `None` when no
    /// constrained request sampled in it.
    pub fn take_mask_time(&mut self) -> Option<std::time::Duration> {
        self.mask_time.take()
    }

    /// Samplers held (requests between their first step and the step after they finish).
    pub fn num_samplers(&self) -> usize {
        self.samplers.len()
    }

    /// Lets the backend release what it holds for a burst (the engine is idle).
    pub fn idle(&mut self) {
        self.backend.idle();
    }

    /// The last step's device timing, on backends that measure it.
    pub fn take_step_timing(&mut self) -> Option<StepTiming> {
        self.backend.take_step_timing()
    }

    /// A long step that is moving beats too: it is not a wedged loop.
    pub fn beat_while_working(&mut self, heartbeat: Arc<Heartbeat>) {
        self.backend.beat_while_working(heartbeat);
    }
}

/// The log-probabilities `job` asks for, from the rows of positions `start..` (the first at
/// `first_row`).
fn prompt_logprobs(
    job: &PromptLogprobsJob,
    start: usize,
    first_row: usize,
    logits: &Logits,
) -> Vec<Sampled> {
    job.targets
        .iter()
        .enumerate()
        .map(|(i, &token)| {
            let row = first_row + (job.first - start) + i;
            let (logprob, top_logprobs) =
                crate::sampling::logprobs(logits.row(row), token, job.top);
            Sampled {
                token,
                logprob,
                top_logprobs,
            }
        })
        .collect()
}
