//! Driving one client request through the engine, from submission to usage.
//!
//! Driving one client request through the engine: submit its `n` choices, relay the text the
//! engine's detokenizer releases, collect logprobs, and report finish reasons, stop reasons and
//! usage from each choice's finish event. Dropping a [`Generation`] drops its event receivers,
//! which makes the engine abort what is still running.

use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{select_all, SelectAll, StreamExt};
use tokio_stream::wrappers::ReceiverStream;

use super::access_log::{AccessNote, Note};
use super::dynamo::RequestRecord;
use super::error::ApiError;
use super::protocol::{PromptTokensDetails, UsageOut};
use super::AppState;
use crate::traces::RequestTrace;
use engine::{Event, NewRequest};
use engine::{FinishReason, RequestError, StopReason};
use engine::{Sampled, SamplingParams};
use model::Detokenizer;
use model::Tokenizer;

/// One prompt of a client request (a completions request may send a list).
pub(crate) struct PromptIn {
    pub tokens: Vec<u32>,
    /// Tokens to generate at most for it (capped by the context left after it).
    pub max_tokens: usize,
    /// With `echo`: the prompt's text, which leads each of its choices' output (and, with
    /// `logprobs`, its tokens' log-probabilities lead theirs).
    pub echo: Option<String>,
    /// The prompt is only scored (`echo` with `max_tokens: 0`, as evaluation harnesses ask):
    /// as vLLM, one token is generated and not shown, and the choice is the echoed prompt.
    pub score_only: bool,
}

/// What a client request asks of the engine: `n` choices of each prompt, indexed prompt by
/// prompt (choice `i` of prompt `p` is index `p * n + i`), as vLLM indexes them.
pub(crate) struct GenRequest {
    pub request_id: String,
    pub prompts: Vec<PromptIn>,
    pub params: SamplingParams,
    /// The structured-output constraint still to be compiled into `params`.
    pub constraint: Option<super::PendingConstraint>,
    /// The field the constraint came from (`response_format`, `tool_choice`, ...), once compiled.
    pub constraint_param: Option<&'static str>,
    pub max_tokens_param: Option<usize>,
    pub n: usize,
    pub stop: Vec<String>,
    pub include_stop_str_in_output: bool,
    pub skip_special_tokens: bool,
    pub arrival: Instant,
    /// How the output becomes tool calls, when it does (chat with `tools`).
    pub tool_calling: Option<crate::api::tools::ToolCalling>,
}

/// One token's log-probabilities, with token texts. An echoed prompt's first token has none
/// (nothing precedes it): `logprob` is `None` and so is its entry of alternatives.
#[derive(Debug, Clone)]
pub(super) struct TokenLogprob {
    pub token: String,
    pub logprob: Option<f32>,
    pub top: Vec<(String, f32)>,
}

/// New output of one choice.
#[derive(Debug, Clone, Default)]
pub(super) struct Delta {
    pub index: usize,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    /// Set on the choice's last delta.
    pub finish_reason: Option<&'static str>,
    /// With `finish_reason` "stop": the stop token id or stop string that ended the choice.
    pub stop_reason: Option<StopReason>,
    /// Tokens the choice has generated so far, this delta's included.
    pub completion_tokens: usize,
}

struct Choice {
    /// Whether it is its prompt's first choice (which reports the prompt's usage).
    first_of_prompt: bool,
    finished: bool,
    /// Tokens generated so far.
    tokens: usize,
    /// The echoed prompt, until the choice's first delta carries it.
    echo: Option<Echo>,
    /// Its generated output is not shown ([`PromptIn::score_only`]).
    score_only: bool,
}

/// An echoed prompt: its text, and (with logprobs) its tokens' log-probabilities.
struct Echo {
    text: String,
    logprobs: Vec<TokenLogprob>,
}

/// Token counts for the `usage` object.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> UsageOut {
        UsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached_tokens,
            },
        }
    }
}

/// Every choice's whole output, for non-streaming responses, in choice order.
pub(super) struct Collected(Vec<CollectedChoice>);

/// One choice's whole output.
#[derive(Default)]
pub(super) struct CollectedChoice {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish_reason: Option<&'static str>,
    pub stop_reason: Option<StopReason>,
}

impl Collected {
    pub(super) fn into_choices(self) -> impl Iterator<Item = CollectedChoice> {
        self.0.into_iter()
    }
}

pub(super) struct Generation {
    tokenizer: Arc<Tokenizer>,
    events: SelectAll<futures_util::stream::BoxStream<'static, (usize, Event)>>,
    choices: Vec<Choice>,
    want_logprobs: bool,
    pub usage: Usage,
    /// Dynamo's record of this request; dropped with the generation.
    record: RequestRecord,
    /// The request's span when tracing is on; ended when the generation is dropped.
    trace: Option<RequestTrace>,
    request_id: String,
    /// The access log's note of this request, filled when the generation is dropped.
    access: Option<AccessNote>,
    /// The field the request's constraint came from, which a failure of it names.
    constraint_param: Option<&'static str>,
}

impl Drop for Generation {
    fn drop(&mut self) {
        if let Some(access) = &self.access {
            // A choice still running (its client went away) counts the tokens it had produced.
            let unfinished: usize = self
                .choices
                .iter()
                .filter(|c| !c.finished)
                .map(|c| c.tokens)
                .sum();
            access.set(Note {
                request_id: Some(self.request_id.clone()),
                prompt_tokens: self.usage.prompt_tokens,
                completion_tokens: self.usage.completion_tokens + unfinished,
            });
        }
    }
}

impl Generation {
    /// Submits every choice to the engine.
    pub(super) fn start(
        state: Arc<AppState>,
        req: GenRequest,
        mut record: RequestRecord,
        trace: Option<RequestTrace>,
    ) -> Result<Generation, ApiError> {
        let prompt_tokens = req.prompts.iter().map(|p| p.tokens.len()).sum();
        record.set_input_tokens(prompt_tokens);
        let tokenizer = Arc::clone(&state.tokenizer);
        let want_logprobs = req.params.logprobs.is_some();
        let total = req.prompts.len() * req.n;
        let mut streams = Vec::new();
        let mut choices = Vec::new();
        for (p, prompt) in req.prompts.iter().enumerate() {
            for i in 0..req.n {
                let index = p * req.n + i;
                let (tx, rx) = engine::event_channel();
                let engine_id = if total == 1 {
                    req.request_id.clone()
                } else {
                    format!("{}-{index}", req.request_id)
                };
                let mut params = req.params.clone();
                if let (Some(seed), true) = (params.seed, i > 0) {
                    params.seed = Some(seed.wrapping_add(i as u64));
                }
                let echo = prompt.echo.as_ref().map(|text| Echo {
                    text: text.clone(),
                    logprobs: Vec::new(),
                });
                state
                    .engine
                    .submit(NewRequest {
                        id: engine_id,
                        prompt: prompt.tokens.clone(),
                        params,
                        max_tokens: prompt.max_tokens,
                        // vLLM runs each prompt of a list as a request of its own.
                        parent: format!("{}-p{p}", req.request_id),
                        n: req.n,
                        arrival: req.arrival,
                        trace_id: trace.as_ref().map(|t| t.trace_id().to_owned()),
                        detokenizer: Some(Detokenizer::new(
                            Arc::clone(&tokenizer),
                            req.skip_special_tokens,
                            req.stop.clone(),
                            req.include_stop_str_in_output,
                        )),
                        prompt_logprobs: (echo.is_some() && want_logprobs)
                            .then(|| req.params.logprobs.unwrap_or(0)),
                        events: tx,
                    })
                    .map_err(|e| {
                        let err = ApiError::unavailable(e.to_string());
                        record.fail(&err);
                        err
                    })?;
                streams.push(ReceiverStream::new(rx).map(move |e| (index, e)).boxed());
                choices.push(Choice {
                    first_of_prompt: i == 0,
                    finished: false,
                    tokens: 0,
                    echo,
                    score_only: prompt.score_only,
                });
            }
        }
        let mut generation = Generation {
            tokenizer,
            events: select_all(streams),
            choices,
            want_logprobs,
            usage: Usage {
                prompt_tokens,
                ..Usage::default()
            },
            record,
            trace,
            request_id: req.request_id.clone(),
            access: None,
            constraint_param: req.constraint_param,
        };
        // An echoed prompt's first token has no log-probability: it leads the list.
        for (c, prompt) in generation.choices.iter_mut().zip(
            req.prompts
                .iter()
                .flat_map(|p| std::iter::repeat_n(p, req.n)),
        ) {
            if let (Some(echo), true, Some(&first)) =
                (&mut c.echo, want_logprobs, prompt.tokens.first())
            {
                echo.logprobs.push(TokenLogprob {
                    token: generation
                        .tokenizer
                        .decode(&[first], false)
                        .unwrap_or_default(),
                    logprob: None,
                    top: Vec::new(),
                });
            }
        }
        Ok(generation)
    }

    /// Reports this request's id and token counts in the access log's line.
    pub(super) fn note_to(&mut self, access: Option<AccessNote>) {
        self.access = access;
    }

    pub(super) fn n(&self) -> usize {
        self.choices.len()
    }

    pub(super) fn wants_logprobs(&self) -> bool {
        self.want_logprobs
    }

    /// Usage of a stream so far, for a chunk of a choice that has generated `completion_tokens`
    /// (vLLM's `continuous_usage_stats`).
    pub(super) fn usage_so_far(&self, completion_tokens: usize) -> Usage {
        Usage {
            completion_tokens,
            ..self.usage
        }
    }

    /// The response went out whole: `bytes` of it.
    pub(super) fn delivered(&mut self, bytes: usize) {
        self.record.sent(bytes);
        self.record.succeed();
    }

    /// `bytes` more of a streamed response went out.
    pub(super) fn sent(&mut self, bytes: usize) {
        self.record.sent(bytes);
    }

    /// Runs every choice to the end.
    pub(super) async fn collect(&mut self) -> Result<Collected, ApiError> {
        let n = self.n();
        let mut out: Vec<CollectedChoice> = (0..n).map(|_| CollectedChoice::default()).collect();
        while let Some(delta) = self.next().await {
            let d = delta?;
            let choice = &mut out[d.index];
            choice.text.push_str(&d.text);
            choice.logprobs.extend(d.logprobs);
            if d.finish_reason.is_some() {
                choice.finish_reason = d.finish_reason;
                choice.stop_reason = d.stop_reason;
            }
        }
        Ok(Collected(out))
    }

    fn token_text(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// The next piece of output of any choice; `None` when every choice has finished.
    pub(super) async fn next(&mut self) -> Option<Result<Delta, ApiError>> {
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
                Event::PromptLogprobs(lps) => {
                    let lps: Vec<TokenLogprob> =
                        lps.iter().filter_map(|s| self.logprob(s)).collect();
                    if let Some(echo) = &mut self.choices[index].echo {
                        echo.logprobs.extend(lps);
                    }
                }
                Event::Token { sampled, text } => {
                    let logprobs = self.logprob(&sampled).into_iter().collect::<Vec<_>>();
                    self.record.tokens(1);
                    self.choices[index].tokens += 1;
                    if !text.is_empty() || !logprobs.is_empty() {
                        return Some(Ok(self.delta(index, text, logprobs, None, None)));
                    }
                }
                Event::Finished(f) => {
                    let logprobs = f
                        .last
                        .as_ref()
                        .and_then(|s| self.logprob(s))
                        .into_iter()
                        .collect();
                    if f.last.is_some() {
                        self.record.tokens(1);
                    }
                    if let Some(t) = &mut self.trace {
                        t.choice_finished(
                            index,
                            f.reason,
                            Some(f.times),
                            f.prompt_tokens,
                            f.completion_tokens,
                        );
                    }
                    let c = &mut self.choices[index];
                    c.finished = true;
                    c.tokens = f.completion_tokens;
                    // A prompt's usage counts once, however many choices it has (vLLM).
                    if c.first_of_prompt {
                        self.usage.cached_tokens += f.cached_tokens;
                        self.record.set_cached_tokens(self.usage.cached_tokens);
                    }
                    self.usage.completion_tokens += f.completion_tokens;
                    if f.reason == FinishReason::Error {
                        let err = match f.error {
                            // The engine refused it (it can never fit): the request's fault.
                            Some(why @ RequestError::CannotFit(_)) => {
                                let err =
                                    ApiError::bad_request(why.to_string(), Some("input_tokens"));
                                self.record.fail(&err);
                                err
                            }
                            // Its grammar took llguidance past a limit: the request's too.
                            Some(why @ RequestError::ConstraintFailed(_)) => {
                                let err =
                                    ApiError::bad_request(why.to_string(), self.constraint_param);
                                self.record.fail(&err);
                                err
                            }
                            None => {
                                self.record.fail_in_backend();
                                ApiError::unavailable(
                                    "the engine failed while running this request",
                                )
                            }
                        };
                        return Some(Err(err));
                    }
                    return Some(Ok(self.delta(
                        index,
                        f.text,
                        logprobs,
                        Some(f.reason.as_str()),
                        f.stop_reason,
                    )));
                }
            }
        }
    }

    /// A choice's next delta; its first carries the echoed prompt ahead of the output.
    fn delta(
        &mut self,
        index: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
        finish_reason: Option<&'static str>,
        stop_reason: Option<StopReason>,
    ) -> Delta {
        let c = &mut self.choices[index];
        let (text, logprobs) = if c.score_only {
            (String::new(), Vec::new())
        } else {
            (text, logprobs)
        };
        let (text, logprobs) = match c.echo.take() {
            Some(mut echo) => {
                echo.text.push_str(&text);
                echo.logprobs.extend(logprobs);
                (echo.text, echo.logprobs)
            }
            None => (text, logprobs),
        };
        Delta {
            index,
            text,
            logprobs,
            finish_reason,
            stop_reason,
            completion_tokens: c.tokens,
        }
    }

    /// A token's log-probabilities with token texts, when the client asked for them.
    fn logprob(&self, sampled: &Sampled) -> Option<TokenLogprob> {
        self.want_logprobs.then(|| TokenLogprob {
            token: self.token_text(sampled.token),
            logprob: Some(sampled.logprob),
            top: sampled
                .top_logprobs
                .iter()
                .map(|(t, l)| (self.token_text(*t), *l))
                .collect(),
        })
    }
}
