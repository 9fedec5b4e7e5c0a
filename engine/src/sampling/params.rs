//! Sampling parameters, with the same meanings, defaults and limits as vLLM's `SamplingParams`.

use crate::structured::CompiledConstraint;

/// How to pick tokens for one request.
/// Which kind of token ended a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStop {
    /// The model's end of sequence (vLLM reports no `stop_reason`).
    Eos,
    /// One of the request's `stop_token_ids` (its `stop_reason`).
    StopTokenId,
}

/// How a request samples, as vLLM's `SamplingParams` defines each field.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 (or below 1e-5) is greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: none).
    pub min_p: f32,
    /// Seed of the request's own random stream; `None` draws from entropy.
    pub seed: Option<u64>,
    /// > 1 discourages tokens seen in the prompt or output (1: off).
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of every token already generated.
    pub frequency_penalty: f32,
    /// Return this many top log-probabilities per token (`None`: none; the chosen token's own
    /// is always computed).
    pub logprobs: Option<usize>,
    /// Token ids that end generation besides EOS.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past EOS.
    pub ignore_eos: bool,
    /// Hold the output to a schema, expression, choice or grammar (structured outputs).
    pub structured: Option<CompiledConstraint>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logprobs: None,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            structured: None,
        }
    }
}

/// A parameter out of range; names the field as the OpenAI API spells it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SamplingError {
    pub field: &'static str,
    pub message: String,
}

/// The most top log-probabilities a request may ask for (vLLM's default `max_logprobs`).
pub(super) const MAX_LOGPROBS: usize = 20;

impl SamplingParams {
    /// Whether the next token is the raw logits' argmax and nothing else of the row is needed
    /// (greedy, no penalties, no top log-probabilities): then the backend may reduce the row
    /// itself and hand over only the result.
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature < super::GREEDY_EPS
            && self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
            && self.logprobs.unwrap_or(0) == 0
            && self.structured.is_none()
    }

    /// Greedy decoding: temperature 0, no penalties.
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Checks every field against vLLM's limits.
    pub fn validate(&self) -> Result<(), SamplingError> {
        let err = |field, message: String| Err(SamplingError { field, message });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return err(
                "temperature",
                format!("must be non-negative, got {}", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return err("top_p", format!("must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return err("min_p", format!("must be in [0, 1], got {}", self.min_p));
        }
        if self.top_k == Some(0) {
            return err("top_k", "must be at least 1 (or -1 to disable)".into());
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return err(
                "repetition_penalty",
                format!("must be greater than zero, got {}", self.repetition_penalty),
            );
        }
        for (field, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return err(field, format!("must be in [-2, 2], got {v}"));
            }
        }
        if let Some(n) = self.logprobs {
            if n > MAX_LOGPROBS {
                return err(
                    "logprobs",
                    format!("at most {MAX_LOGPROBS} are returned, {n} were asked for"),
                );
            }
        }
        Ok(())
    }

    /// Whether `token` ends generation, given the model's EOS ids, and by what (vLLM's
    /// `check_stop`: the model's EOS first, unless ignored, then `stop_token_ids`).
    pub fn token_stop(&self, token: u32, eos_token_ids: &[u32]) -> Option<TokenStop> {
        if !self.ignore_eos && eos_token_ids.contains(&token) {
            Some(TokenStop::Eos)
        } else if self.stop_token_ids.contains(&token) {
            Some(TokenStop::StopTokenId)
        } else {
            None
        }
    }
}
