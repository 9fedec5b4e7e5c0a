//! Turning a row of logits into the next token, as vLLM's sampler does: penalties, then
//! temperature (greedy below 1e-5), then top-k, top-p and min-p, then a draw from the remaining
//! distribution with the request's own seeded generator. Log-probabilities are reported from the
//! raw logits (vLLM v1's default `raw_logprobs`).

mod params;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use backend::{argmax, logprobs, GreedyToken};

use crate::structured::{CompiledConstraint, Constraint};
pub use params::{SamplingError, SamplingParams, TokenStop};

/// Temperatures below this are greedy (vLLM's `_SAMPLING_EPS`).
pub const GREEDY_EPS: f32 = 1e-5;

/// The token chosen at one step, with log-probabilities when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// Log-probability of `token` under the raw logits.
    pub logprob: f32,
    /// The `n` most likely tokens and their log-probabilities, best first (empty unless asked).
    pub top_logprobs: Vec<(u32, f32)>,
}

/// One request's sampling state: its parameters, its random generator, and the token counts the
/// penalties need.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Occurrences of each token in the generated output.
    output_counts: std::collections::HashMap<u32, u32>,
    /// Tokens of the prompt (the repetition penalty covers prompt and output).
    prompt_tokens: std::collections::HashSet<u32>,
    /// The output's constraint, advanced with every token (kept across preemptions, since the
    /// sampler is).
    constraint: Option<Constraint>,
    /// Time spent computing the constraint's masks since [`Sampler::take_mask_time`].
    mask_time: std::time::Duration,
    scratch: Vec<f32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Sampler {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let constraint = params.structured.as_ref().map(CompiledConstraint::start);
        Sampler {
            params,
            rng,
            output_counts: Default::default(),
            prompt_tokens: prompt.iter().copied().collect(),
            constraint,
            mask_time: std::time::Duration::ZERO,
            scratch: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a generated token (for the penalties). [`Sampler::sample`] does this itself; call
    /// it for tokens produced elsewhere (e.g. replayed after preemption).
    pub fn observe(&mut self, token: u32) {
        *self.output_counts.entry(token).or_default() += 1;
    }

    /// Whether the next token is the raw logits' argmax and nothing else of the row is needed
    /// (greedy, no penalties, no top log-probabilities): then the backend may reduce the row
    /// itself and hand over only the result, a [`GreedyToken`].
    pub fn is_plain_greedy(&self) -> bool {
        self.params.is_plain_greedy()
    }

    /// Takes a token the backend reduced to (for a [`Sampler::is_plain_greedy`] request) and
    /// records it, as [`Sampler::sample`] would have.
    pub fn accept(&mut self, greedy: GreedyToken) -> Sampled {
        self.observe(greedy.token);
        Sampled {
            token: greedy.token,
            logprob: greedy.logprob,
            top_logprobs: Vec::new(),
        }
    }

    /// Picks the next token from `logits` and records it.
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let p = &self.params;
        let mut x = std::mem::take(&mut self.scratch);
        x.clear();
        x.extend_from_slice(logits);
        self.apply_penalties(&mut x);
        if let Some(constraint) = &mut self.constraint {
            let started = std::time::Instant::now();
            if let Err(e) = constraint.mask(&mut x) {
                tracing::warn!("structured output: {e}; sampling this token unconstrained");
            }
            self.mask_time += started.elapsed();
        }
        let p_temp = p.temperature;
        let token = if p_temp < GREEDY_EPS {
            argmax(&x)
        } else {
            for v in x.iter_mut() {
                *v /= p_temp;
            }
            let probs = filtered_probs(&x, p.top_k, p.top_p, p.min_p);
            draw(&probs, self.rng.random::<f64>())
        };
        self.scratch = x;
        let (logprob, top_logprobs) = logprobs(logits, token, self.params.logprobs.unwrap_or(0));
        self.observe(token);
        if let Some(constraint) = &mut self.constraint {
            if let Err(e) = constraint.consume(token) {
                tracing::warn!("structured output: {e}; the rest of the output is unconstrained");
                self.constraint = None;
            }
        }
        Sampled {
            token,
            logprob,
            top_logprobs,
        }
    }

    /// Computes the constraint's mask for the next token now (while the step's forward pass
    /// runs), so that [`Sampler::sample`] only applies it.
    pub fn prepare_mask(&mut self) {
        if let Some(constraint) = &mut self.constraint {
            let started = std::time::Instant::now();
            constraint.prepare();
            self.mask_time += started.elapsed();
        }
    }

    /// Whether the output is held to a constraint.
    pub fn is_constrained(&self) -> bool {
        self.constraint.is_some()
    }

    /// The time spent computing masks since the last call.
    pub fn take_mask_time(&mut self) -> std::time::Duration {
        std::mem::take(&mut self.mask_time)
    }

    fn apply_penalties(&self, x: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let seen = self.prompt_tokens.iter().chain(self.output_counts.keys());
            for &t in seen {
                if let Some(v) = x.get_mut(t as usize) {
                    *v = if *v > 0.0 {
                        *v / p.repetition_penalty
                    } else {
                        *v * p.repetition_penalty
                    };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &n) in &self.output_counts {
                if let Some(v) = x.get_mut(t as usize) {
                    *v -= p.frequency_penalty * n as f32 + p.presence_penalty;
                }
            }
        }
    }
}

fn filtered_probs(x: &[f32], top_k: Option<usize>, top_p: f32, min_p: f32) -> Vec<f64> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<f64> = x.iter().map(|v| ((v - max) as f64).exp()).collect();
    let sum: f64 = probs.iter().sum();
    for p in probs.iter_mut() {
        *p /= sum;
    }
    let needs_order = top_k.is_some_and(|k| k < probs.len()) || top_p < 1.0;
    if needs_order {
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_unstable_by(|a, b| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b)));
        let mut keep = top_k.map_or(order.len(), |k| k.clamp(1, order.len()));
        if top_p < 1.0 {
            let mut cum = 0.0;
            let mut n = 0;
            for &i in &order[..keep] {
                cum += probs[i];
                n += 1;
                if cum >= top_p as f64 {
                    break;
                }
            }
            keep = n.max(1);
        }
        for &i in &order[keep..] {
            probs[i] = 0.0;
        }
    }
    if min_p > 0.0 {
        let max_p = probs.iter().copied().fold(0.0, f64::max);
        for p in probs.iter_mut() {
            if *p < min_p as f64 * max_p {
                *p = 0.0;
            }
        }
    }
    probs
}

/// Inverse-CDF draw with `u` uniform in [0, 1).
fn draw(probs: &[f64], u: f64) -> u32 {
    let total: f64 = probs.iter().sum();
    let target = u * total;
    let mut cum = 0.0;
    let mut last_kept = 0;
    for (i, p) in probs.iter().enumerate() {
        if *p > 0.0 {
            cum += p;
            last_kept = i;
            if cum > target {
                return i as u32;
            }
        }
    }
    last_kept as u32
}

#[cfg(test)]
mod tests;
