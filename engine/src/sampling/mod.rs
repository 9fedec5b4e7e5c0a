//! Turning a row of logits into the next token, as vLLM's sampler does.
//!
//! Turning a row of logits into the next token, as vLLM's sampler does: penalties, then
//! temperature (greedy below 1e-5), then top-k, top-p and min-p, then a draw from the remaining
//! distribution with the request's own seeded generator. Log-probabilities are reported from the
//! raw logits (vLLM v1's default `raw_logprobs`).

mod params;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use backend::argmax;
pub(crate) use backend::{logprobs, GreedyToken};

use crate::structured::{CompiledConstraint, Constraint};
pub use params::SamplingParams;
pub(crate) use params::TokenStop;

/// Temperatures below this are greedy (vLLM's `_SAMPLING_EPS`).
pub(crate) const GREEDY_EPS: f32 = 1e-5;

/// The token chosen at one step, with log-probabilities when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token id.
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
    /// Why the constraint failed, until [`Sampler::take_constraint_failure`] takes it.
    constraint_failure: Option<String>,
    /// Buffers reused from token to token (each a vocabulary long).
    scratch: Scratch,
}

#[derive(Default)]
struct Scratch {
    logits: Vec<f32>,
    probs: Vec<f64>,
    order: Vec<u32>,
}

impl Sampler {
    /// A sampler for one sequence of `prompt` (penalties count its tokens).
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
            constraint_failure: None,
            scratch: Scratch::default(),
        }
    }

    /// Its parameters.
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
        let mut x = std::mem::take(&mut self.scratch.logits);
        x.clear();
        x.extend_from_slice(logits);
        self.apply_penalties(&mut x);
        if let Some(constraint) = &mut self.constraint {
            let started = std::time::Instant::now();
            if let Err(e) = constraint.mask(&mut x) {
                self.constraint_failure = Some(e.0);
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
            let Scratch { probs, order, .. } = &mut self.scratch;
            filtered_probs(&x, (p.top_k, p.top_p, p.min_p), probs, order);
            draw(probs, self.rng.random::<f64>())
        };
        self.scratch.logits = x;
        let (logprob, top_logprobs) = logprobs(logits, token, self.params.logprobs.unwrap_or(0));
        self.observe(token);
        if let Some(constraint) = &mut self.constraint {
            if let Err(e) = constraint.consume(token) {
                self.constraint_failure.get_or_insert(e.0);
            }
        }
        if self.constraint_failure.is_some() {
            // The constraint is of no more use; the request ends with the failure.
            self.constraint = None;
        }
        Sampled {
            token,
            logprob,
            top_logprobs,
        }
    }

    /// Why the request's constraint failed (llguidance reached one of its limits on it), once:
    /// the token just sampled is not held to it, and the request must end with the failure
    /// rather than go on unconstrained.
    pub fn take_constraint_failure(&mut self) -> Option<String> {
        self.constraint_failure.take()
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

/// The softmax of `x` into `probs`, then top-k, top-p and min-p applied: filtered tokens are
/// zero, the others keep their probabilities (not renormalised). `order` is scratch.
fn filtered_probs(
    x: &[f32],
    (top_k, top_p, min_p): (Option<usize>, f32, f32),
    probs: &mut Vec<f64>,
    order: &mut Vec<u32>,
) {
    backend::softmax(x, probs);
    if most_likely(probs, top_k, top_p, order) {
        let kept: Vec<f64> = order.iter().map(|&i| probs[i as usize]).collect();
        probs.fill(0.0);
        for (&i, p) in order.iter().zip(kept) {
            probs[i as usize] = p;
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
}

/// Puts into `kept` the tokens top-k and top-p keep, and says whether they drop any: in order
/// of probability (ties to the lower id), the first `top_k`, cut after the first whose
/// cumulative probability reaches `top_p` (at least one).
///
/// A vocabulary is tens of thousands of tokens and the nucleus usually far fewer, so the order
/// is taken for the `m` most likely only (an O(n) selection, then a sort of `m`), with `m`
/// grown eightfold until the nucleus closes inside it or `top_k` is reached: sorting the whole
/// row cost milliseconds per token, on the engine's thread, for every request that sets top-k
/// or top-p.
fn most_likely(probs: &[f64], top_k: Option<usize>, top_p: f32, kept: &mut Vec<u32>) -> bool {
    let len = probs.len();
    let limit = top_k.map_or(len, |k| k.clamp(1, len));
    if limit == len && top_p >= 1.0 {
        return false;
    }
    let order = |a: &u32, b: &u32| {
        probs[*b as usize]
            .total_cmp(&probs[*a as usize])
            .then(a.cmp(b))
    };
    let mut m = limit.min(64);
    loop {
        candidates(probs, m, kept);
        if m < kept.len() {
            kept.select_nth_unstable_by(m - 1, order);
            kept.truncate(m);
        }
        kept.sort_unstable_by(order);
        if top_p >= 1.0 {
            return true;
        }
        let mut cum = 0.0;
        let reached = kept.iter().position(|&i| {
            cum += probs[i as usize];
            cum >= top_p as f64
        });
        match reached {
            Some(n) => {
                kept.truncate(n + 1);
                return true;
            }
            None if m == limit => return true,
            None => m = (m * 8).min(limit),
        }
    }
}

/// Puts into `out` the tokens whose probability's binary exponent is at least that of the
/// `m`-th most likely: every one of the `m` most likely, and those that share the `m`-th's
/// exponent (few in a peaked row; in a flat one, nearly all), found in two passes over the row
/// (a histogram of exponents, then the filter) so that the selection and the sort only see
/// those.
fn candidates(probs: &[f64], m: usize, out: &mut Vec<u32>) {
    // Probabilities are at least zero, so their bits, and the exponent in the top 12, grow with
    // them.
    let exponent = |p: f64| (p.to_bits() >> 52) as usize & 0x7ff;
    let mut counts = [0u32; 2048];
    for p in probs {
        counts[exponent(*p)] += 1;
    }
    let (mut lowest, mut seen) = (counts.len(), 0);
    while lowest > 0 && seen < m {
        lowest -= 1;
        seen += counts[lowest] as usize;
    }
    out.clear();
    out.extend(
        probs
            .iter()
            .enumerate()
            .filter(|(_, p)| exponent(**p) >= lowest)
            .map(|(i, _)| i as u32),
    );
}

/// Inverse-CDF draw with `u` uniform in [0, 1).
fn draw(probs: &[f64], u: f64) -> u32 {
    let total = backend::sum_probabilities(probs);
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
