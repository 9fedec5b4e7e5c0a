//! Driving one client request through the engine: submit its `n` choices, turn their token
//! events into text (incremental detokenization, stop strings held back until they cannot
//! match), collect logprobs, and report finish reasons and usage. Dropping a [`Generation`]
//! drops its event receivers, which makes the engine abort what is still running.

use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{select_all, SelectAll, StreamExt};
use tokio::sync::mpsc::unbounded_channel;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::dynamo::RequestRecord;
use super::error::ApiError;
use super::AppState;
use crate::engine_core::{Event, NewRequest};
use crate::sampling::SamplingParams;
use crate::scheduler::FinishReason;
use crate::tokenizer::{DecodeStream, Tokenizer};
use crate::traces::RequestTrace;

/// What a client request asks of the engine.
pub struct GenRequest {
    pub request_id: String,
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub max_tokens_param: Option<usize>,
    pub n: usize,
    pub stop: Vec<String>,
    pub arrival: Instant,
}

/// One generated token's log-probabilities, with token texts.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// New output of one choice.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    pub index: usize,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    /// Set on the choice's last delta.
    pub finish_reason: Option<&'static str>,
}

struct Choice {
    engine_id: String,
    decoder: DecodeStream,
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    pending_logprobs: Vec<TokenLogprob>,
    finished: bool,
    completion_tokens: usize,
}

/// Token counts for the `usage` object.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

impl Usage {
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// Every choice's whole output, for non-streaming responses.
pub struct Collected {
    pub texts: Vec<String>,
    pub logprobs: Vec<Vec<TokenLogprob>>,
    pub finish_reasons: Vec<Option<&'static str>>,
}

pub struct Generation {
    state: Arc<AppState>,
    tokenizer: Arc<Tokenizer>,
    events: SelectAll<futures_util::stream::BoxStream<'static, (usize, Event)>>,
    choices: Vec<Choice>,
    stop: Vec<String>,
    want_logprobs: bool,
    pub usage: Usage,
    /// Dynamo's record of this request; dropped with the generation.
    record: RequestRecord,
    /// The request's span when tracing is on; ended when the generation is dropped.
    trace: Option<RequestTrace>,
}

impl Generation {
    /// Submits every choice to the engine.
    pub fn start(
        state: Arc<AppState>,
        req: GenRequest,
        mut record: RequestRecord,
        trace: Option<RequestTrace>,
    ) -> Result<Generation, ApiError> {
        record.set_input_tokens(req.prompt.len());
        let tokenizer = Arc::clone(&state.tokenizer);
        let mut streams = Vec::new();
        let mut choices = Vec::new();
        for index in 0..req.n {
            let (tx, rx) = unbounded_channel();
            let engine_id = if req.n == 1 {
                req.request_id.clone()
            } else {
                format!("{}-{index}", req.request_id)
            };
            let mut params = req.params.clone();
            if let (Some(seed), true) = (params.seed, index > 0) {
                params.seed = Some(seed.wrapping_add(index as u64));
            }
            state
                .engine
                .submit(NewRequest {
                    id: engine_id.clone(),
                    prompt: req.prompt.clone(),
                    params,
                    max_tokens: req.max_tokens,
                    max_tokens_param: req.max_tokens_param,
                    n: req.n,
                    record_params: index == 0,
                    arrival: req.arrival,
                    trace_id: trace.as_ref().map(|t| t.trace_id().to_owned()),
                    events: tx,
                })
                .map_err(|e| {
                    let err = ApiError::unavailable(e.to_string());
                    record.fail(&err);
                    err
                })?;
            streams.push(
                UnboundedReceiverStream::new(rx)
                    .map(move |e| (index, e))
                    .boxed(),
            );
            choices.push(Choice {
                engine_id,
                decoder: DecodeStream::new(Arc::clone(&tokenizer), true),
                text: String::new(),
                emitted: 0,
                pending_logprobs: Vec::new(),
                finished: false,
                completion_tokens: 0,
            });
        }
        Ok(Generation {
            state,
            tokenizer,
            events: select_all(streams),
            choices,
            stop: req.stop,
            want_logprobs: req.params.logprobs.is_some(),
            usage: Usage {
                prompt_tokens: req.prompt.len(),
                ..Usage::default()
            },
            record,
            trace,
        })
    }

    pub fn n(&self) -> usize {
        self.choices.len()
    }

    pub fn wants_logprobs(&self) -> bool {
        self.want_logprobs
    }

    /// The response went out whole: `bytes` of it.
    pub fn delivered(&mut self, bytes: usize) {
        self.record.sent(bytes);
        self.record.succeed();
    }

    /// `bytes` more of a streamed response went out.
    pub fn sent(&mut self, bytes: usize) {
        self.record.sent(bytes);
    }

    /// Runs every choice to the end.
    pub async fn collect(&mut self) -> Result<Collected, ApiError> {
        let n = self.n();
        let mut out = Collected {
            texts: vec![String::new(); n],
            logprobs: vec![Vec::new(); n],
            finish_reasons: vec![None; n],
        };
        while let Some(delta) = self.next().await {
            let d = delta?;
            out.texts[d.index].push_str(&d.text);
            out.logprobs[d.index].extend(d.logprobs);
            if d.finish_reason.is_some() {
                out.finish_reasons[d.index] = d.finish_reason;
            }
        }
        Ok(out)
    }

    fn token_text(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// The next piece of output of any choice; `None` when every choice has finished.
    pub async fn next(&mut self) -> Option<Result<Delta, ApiError>> {
        loop {
            if self.choices.iter().all(|c| c.finished) {
                return None;
            }
            let Some((index, event)) = self.events.next().await else {
                // The engine dropped the channels without finishing: it stopped.
                let err = ApiError::unavailable("the engine stopped");
                self.record.fail(&err);
                return Some(Err(err));
            };
            if self.choices[index].finished {
                continue;
            }
            match event {
                Event::Token(sampled) => {
                    self.record.tokens(1);
                    let lp = self.want_logprobs.then(|| TokenLogprob {
                        token: self.token_text(sampled.token),
                        logprob: sampled.logprob,
                        top: sampled
                            .top_logprobs
                            .iter()
                            .map(|(t, l)| (self.token_text(*t), *l))
                            .collect(),
                    });
                    let c = &mut self.choices[index];
                    c.completion_tokens += 1;
                    if let Some(piece) = c.decoder.step(sampled.token).ok().flatten() {
                        c.text.push_str(&piece);
                    }
                    c.pending_logprobs.extend(lp);
                    if let Some(cut) = find_stop(&c.text, &self.stop, c.emitted) {
                        c.text.truncate(cut);
                        c.finished = true;
                        self.state.engine.finish(&c.engine_id, FinishReason::Stop);
                        self.usage.completion_tokens += c.completion_tokens;
                        if let Some(t) = &mut self.trace {
                            let n = c.completion_tokens;
                            t.choice_finished(
                                index,
                                FinishReason::Stop,
                                None,
                                self.usage.prompt_tokens,
                                n,
                            );
                        }
                        return Some(Ok(self.take(index, Some("stop"))));
                    }
                    let delta = self.take(index, None);
                    if !delta.text.is_empty() || !delta.logprobs.is_empty() {
                        return Some(Ok(delta));
                    }
                }
                Event::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                    times,
                } => {
                    if let Some(t) = &mut self.trace {
                        t.choice_finished(
                            index,
                            reason,
                            Some(times),
                            prompt_tokens,
                            completion_tokens,
                        );
                    }
                    let c = &mut self.choices[index];
                    c.finished = true;
                    self.usage.prompt_tokens = prompt_tokens;
                    self.usage.cached_tokens = cached_tokens;
                    self.usage.completion_tokens += completion_tokens;
                    self.record.set_cached_tokens(cached_tokens);
                    if reason == FinishReason::Error {
                        self.record.fail_in_backend();
                        return Some(Err(ApiError::unavailable(
                            "the engine failed while running this request",
                        )));
                    }
                    return Some(Ok(self.take(index, Some(reason.as_str()))));
                }
            }
        }
    }

    /// Hands out the text of choice `index` that no stop string can still claim (all of it
    /// once finished).
    fn take(&mut self, index: usize, finish_reason: Option<&'static str>) -> Delta {
        let hold = if finish_reason.is_some() {
            0
        } else {
            self.stop
                .iter()
                .map(|s| s.len().saturating_sub(1))
                .max()
                .unwrap_or(0)
        };
        let c = &mut self.choices[index];
        let mut end = c.text.len().saturating_sub(hold).max(c.emitted);
        while !c.text.is_char_boundary(end) {
            end -= 1;
        }
        let text = c.text[c.emitted..end].to_owned();
        c.emitted = end;
        Delta {
            index,
            text,
            logprobs: std::mem::take(&mut c.pending_logprobs),
            finish_reason,
        }
    }
}

/// Byte offset where the first stop string starts in `text`, searching from a little before
/// `from` (a stop string may straddle what was already emitted... but never what was emitted
/// entirely, since emission holds back enough).
fn find_stop(text: &str, stop: &[String], from: usize) -> Option<usize> {
    stop.iter()
        .filter_map(|s| {
            let mut start = from.saturating_sub(s.len());
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            text[start..].find(s.as_str()).map(|i| start + i)
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::find_stop;

    #[test]
    fn stop_strings_are_found_after_the_emitted_part() {
        let stop = vec!["\n\n".to_owned(), "END".to_owned()];
        assert_eq!(find_stop("abc\n\nd", &stop, 0), Some(3));
        assert_eq!(find_stop("abcEN", &stop, 0), None);
        assert_eq!(find_stop("abcEND", &stop, 4), Some(3));
        assert_eq!(find_stop("é END", &stop, 1), Some(3));
    }
}
