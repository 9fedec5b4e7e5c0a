//! The scheduler alone, fed made-up executor outputs, as vLLM tests its scheduler.
//!
//! The scheduler alone, fed made-up executor outputs (no model), as vLLM's
//! `tests/v1/core/test_scheduler.py` tests its scheduler: what it schedules, and what it makes of
//! the results.

use std::time::Instant;

use super::output::{ExecutedBatch, RequestComputed};
use super::*;
use crate::sampling::SamplingParams;

const BLOCK: usize = 4;
const EOS: u32 = 2;

fn scheduler(budget: usize, num_blocks: usize) -> Scheduler {
    let cfg = SchedulerConfig {
        max_num_batched_tokens: budget,
        max_num_seqs: 8,
        max_model_len: 64,
        chunked_prefill: true,
    };
    Scheduler::new(
        cfg,
        KvCacheManager::new(num_blocks, BLOCK, false),
        vec![EOS],
    )
}

fn request(id: &str, prompt_len: u32, max_tokens: usize) -> Request {
    let prompt = (10..10 + prompt_len).collect();
    Request::new(
        id.into(),
        prompt,
        max_tokens,
        SamplingParams::greedy(),
        Instant::now(),
    )
}

fn token(t: u32) -> Sampled {
    Sampled {
        token: t,
        logprob: -0.5,
        top_logprobs: Vec::new(),
    }
}

/// What an executor would answer: `next` for each request that samples, and the prompt
/// log-probabilities asked for.
fn made_up(step: &ScheduledBatch, next: u32) -> ExecutedBatch {
    ExecutedBatch {
        requests: step
            .requests
            .iter()
            .map(|r| RequestComputed {
                sampled: r.samples.then(|| token(next)),
                prompt_logprobs: r
                    .prompt_logprobs
                    .iter()
                    .flat_map(|job| job.targets.iter().map(|t| token(*t)))
                    .collect(),
                constraint_failure: None,
            })
            .collect(),
    }
}

#[test]
fn a_step_admits_within_the_budget_chunking_the_prompt_that_does_not_fit() {
    let mut s = scheduler(12, 16);
    s.add(request("a", 10, 5));
    s.add(request("b", 6, 5));
    let step = s.schedule();
    let shares: Vec<_> = step
        .requests
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                r.start,
                r.tokens.len(),
                r.samples,
                r.logits_for,
            )
        })
        .collect();
    assert_eq!(
        shares,
        [
            ("a", 0, 10, true, LogitsFor::Greedy),
            ("b", 0, 2, false, LogitsFor::None)
        ]
    );
    assert!(step.requests.iter().all(|r| r.new.is_some()), "both new");
    assert_eq!(
        step.requests[0].block_table.len(),
        3,
        "10 tokens in blocks of 4"
    );

    let out = s.update_from_output(&step, made_up(&step, 7));
    assert_eq!(out.updates.len(), 1, "only a sampled");
    let a = &out.updates[0];
    assert_eq!(a.token, Some(token(7)));
    let first = a.first_token.expect("a's first token");
    assert_eq!((first.prompt_tokens, first.cached_tokens), (10, 0));
    assert_eq!(out.stats.num_tokens, 12);
    assert_eq!(out.stats.num_prompt_tokens, 12);
    assert_eq!(out.stats.num_generated, 1);
    // vLLM's iteration tokens: the new token and a's whole prompt, in the step that ends it.
    assert_eq!(out.stats.iteration_tokens, 11);

    // Then a decodes its token while b goes on with its prompt; neither is new.
    let step = s.schedule();
    let shares: Vec<_> = step
        .requests
        .iter()
        .map(|r| (r.id.as_str(), r.start, r.tokens.clone(), r.samples))
        .collect();
    assert_eq!(
        shares,
        [
            ("a", 10, vec![7], true),
            ("b", 2, vec![12, 13, 14, 15], true)
        ]
    );
    assert!(step.requests.iter().all(|r| r.new.is_none()));
    let out = s.update_from_output(&step, made_up(&step, 8));
    assert!(out.updates[0].inter_token.is_some() && out.updates[0].first_token.is_none());
    assert!(out.updates[1].first_token.is_some());
}

#[test]
fn eos_stop_tokens_and_length_finish_and_free_the_blocks() {
    let mut s = scheduler(64, 16);
    let mut stop = request("stop", 3, 10);
    stop.params.stop_token_ids = vec![99];
    s.add(request("eos", 3, 10));
    s.add(stop);
    s.add(request("length", 3, 2));
    let mut ignores = request("ignores_eos", 3, 2);
    ignores.params.ignore_eos = true;
    s.add(ignores);
    let step = s.schedule();
    let mut out = made_up(&step, 5);
    out.requests[0].sampled = Some(token(EOS));
    out.requests[1].sampled = Some(token(99));
    let step_out = s.update_from_output(&step, out);
    let mut finished: Vec<_> = step_out
        .finished
        .iter()
        .map(|(r, reason)| (r.id.as_str(), *reason, r.stop_reason.clone()))
        .collect();
    finished.sort_by_key(|f| f.0);
    assert_eq!(
        finished,
        [
            ("eos", FinishReason::Stop, None),
            ("stop", FinishReason::Stop, Some(StopReason::Token(99)))
        ]
    );
    let step = s.schedule();
    // The executor hears of both, to drop their samplers.
    let mut ids = step.finished_ids.clone();
    ids.sort();
    assert_eq!(ids, ["eos", "stop"]);
    // EOS for both: one stops, one ignores it and reaches its length anyway.
    let out = s.update_from_output(&step, made_up(&step, EOS));
    let mut lengths: Vec<_> = out
        .finished
        .iter()
        .map(|(r, f)| (r.id.as_str(), *f))
        .collect();
    lengths.sort_by_key(|f| f.0);
    assert_eq!(
        lengths,
        [
            ("ignores_eos", FinishReason::Length),
            ("length", FinishReason::Stop)
        ]
    );
    assert!(!s.has_work());
    assert_eq!(
        s.kv().pool().num_free(),
        15,
        "every block back (one is the null block)"
    );
}

#[test]
fn a_request_short_of_blocks_preempts_the_last_and_is_recomputed_not_renewed() {
    // 3 usable blocks: two requests of 4 tokens each fill two; growing needs a third, then more.
    let mut s = scheduler(64, 4);
    s.add(request("first", 4, 8));
    s.add(request("second", 4, 8));
    let mut preempted = 0;
    let mut resumed = None;
    for round in 0..12 {
        let step = s.schedule();
        preempted += step.num_preempted;
        if preempted > 0 && resumed.is_none() {
            if let Some(r) = step.requests.iter().find(|r| r.id == "second") {
                resumed = Some((round, r.start, r.tokens.len(), r.new.is_some()));
            }
        }
        let _ = s.update_from_output(&step, made_up(&step, 5));
        if !s.has_work() {
            break;
        }
    }
    assert!(preempted >= 1, "the cache is too small for both to grow");
    let (_, start, len, new) = resumed.expect("the preempted request came back");
    assert_eq!(start, 0, "recomputed from the start");
    assert!(len > 4, "its prompt and the tokens it had made");
    assert!(!new, "its sampler lives on in the executor");
}

#[test]
fn prompt_logprobs_are_asked_for_each_position_once_under_chunking() {
    let mut s = scheduler(4, 16);
    let mut r = request("echo", 9, 1);
    r.prompt_logprobs = Some(2);
    s.add(r);
    let mut asked = Vec::new();
    while s.has_work() {
        let step = s.schedule();
        for r in &step.requests {
            assert_eq!(r.logits_for == LogitsFor::All, r.prompt_logprobs.is_some());
            if let Some(job) = &r.prompt_logprobs {
                assert_eq!(job.top, 2);
                asked.extend((job.first..).zip(job.targets.iter().copied()));
            }
        }
        let _ = s.update_from_output(&step, made_up(&step, 5));
    }
    // Positions 0..8 score the prompt tokens at 1..9, each once.
    let want: Vec<(usize, u32)> = (0..8).map(|p| (p, 10 + p as u32 + 1)).collect();
    assert_eq!(asked, want);
}

#[test]
fn an_abort_reaches_the_executor_and_frees_the_blocks() {
    let mut s = scheduler(64, 16);
    s.add(request("a", 5, 10));
    let step = s.schedule();
    let _ = s.update_from_output(&step, made_up(&step, 5));
    assert!(s.abort("a").is_some());
    assert_eq!(s.kv().pool().num_free(), 15);
    let step = s.schedule();
    assert!(step.is_empty());
    assert_eq!(step.finished_ids, ["a"]);
}
