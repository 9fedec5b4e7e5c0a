//! The scheduler with the executor on a tiny random model: outputs independent of batching.
//!
//! The scheduler with the executor on the tiny random model: outputs do not depend on batching,
//! chunking, preemption or prefix hits, and no block leaks whatever happens. (The scheduler
//! alone, fed made-up outputs, is tested in `unit_tests.rs`.)

use std::collections::HashMap;
use std::time::Instant;

use super::*;
use crate::executor::{ExecuteError, Executor};
use crate::sampling::{Sampled, SamplingParams};
use backend::greedy_generate;
use backend::{Backend, LogitsFor, SeqInput};
use backend::{CpuBackend, CpuOptions, WeightFormat};
use model::testing::{random_weights, tiny_config};
use model::LlamaConfig;

const BLOCK: usize = 4;

fn config() -> LlamaConfig {
    LlamaConfig {
        tie_word_embeddings: false,
        ..tiny_config()
    }
}

fn backend(num_blocks: usize) -> CpuBackend {
    let c = config();
    let options = CpuOptions {
        block_size: BLOCK,
        num_blocks,
        weight_format: WeightFormat::F32,
        kv_dtype: None,
    };
    CpuBackend::from_weights(&c, &random_weights(&c, 21), &options).unwrap()
}

fn executor(num_blocks: usize) -> Executor {
    Executor::new(Box::new(backend(num_blocks)))
}

/// One step as the engine loop runs it: schedule, execute, update.
trait Step {
    fn step(&mut self, executor: &mut Executor) -> Result<StepOutcome, ExecuteError>;
}

impl Step for Scheduler {
    fn step(&mut self, executor: &mut Executor) -> Result<StepOutcome, ExecuteError> {
        let step = self.schedule();
        let out = executor.execute(&step)?;
        Ok(self.update_from_output(&step, out))
    }
}

fn request(id: usize, prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request::new(
        format!("r{id}"),
        prompt,
        max_tokens,
        SamplingParams::greedy(),
        Instant::now(),
    )
}

fn prompts() -> Vec<Vec<u32>> {
    (0..6)
        .map(|i| {
            (0..(3 + i * 5) as u32)
                .map(|t| (t * 31 + i as u32 * 7) % 256)
                .collect()
        })
        .collect()
}

/// Runs every prompt through a scheduler; returns outputs by id and the summed stats.
fn run(
    num_blocks: usize,
    budget: usize,
    max_seqs: usize,
    caching: bool,
    prompts: &[Vec<u32>],
    max_tokens: usize,
) -> (HashMap<String, Vec<u32>>, StepStats, Scheduler) {
    let mut be = executor(num_blocks);
    let cfg = SchedulerConfig {
        max_num_batched_tokens: budget,
        max_num_seqs: max_seqs,
        max_model_len: 512,
        chunked_prefill: true,
    };
    let mut s = Scheduler::new(cfg, KvCacheManager::new(num_blocks, BLOCK, caching), vec![]);
    for (i, p) in prompts.iter().enumerate() {
        s.add(request(i, p.clone(), max_tokens));
    }
    let mut outputs = HashMap::new();
    let mut total = StepStats::default();
    let mut steps = 0;
    while s.has_work() {
        let out = s.step(&mut be).unwrap();
        total.num_tokens += out.stats.num_tokens;
        total.num_prompt_tokens += out.stats.num_prompt_tokens;
        total.num_preempted += out.stats.num_preempted;
        total.prefix_hits += out.stats.prefix_hits;
        total.prefix_queries += out.stats.prefix_queries;
        for (req, reason) in out.finished {
            assert_eq!(reason, FinishReason::Length);
            outputs.insert(req.id.clone(), req.output().to_vec());
        }
        steps += 1;
        assert!(steps < 10_000, "no progress");
    }
    // The next step, empty, tells the executor every request finished: no sampler is left.
    assert!(be.num_samplers() > 0 || prompts.is_empty());
    s.step(&mut be).unwrap();
    assert_eq!(
        be.num_samplers(),
        0,
        "samplers of finished requests dropped"
    );
    (outputs, total, s)
}

fn reference(prompts: &[Vec<u32>], max_tokens: usize) -> HashMap<String, Vec<u32>> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                format!("r{i}"),
                greedy_generate(&mut backend(64), p, max_tokens, &[]).unwrap(),
            )
        })
        .collect()
}

#[test]
fn batching_and_chunked_prefill_do_not_change_outputs() {
    let p = prompts();
    let want = reference(&p, 6);
    for (budget, seqs) in [(512, 16), (7, 16), (16, 2)] {
        let (got, _, s) = run(64, budget, seqs, false, &p, 6);
        assert_eq!(got, want, "budget {budget}, max seqs {seqs}");
        assert_eq!(s.kv().pool().num_free(), 63, "blocks leaked");
    }
}

#[test]
fn preempted_requests_produce_the_same_greedy_output() {
    let p = prompts();
    let want = reference(&p, 8);
    // 20 blocks of 4 tokens cannot hold all six requests at once: preemption is forced.
    let (got, stats, s) = run(20, 64, 16, false, &p, 8);
    assert!(stats.num_preempted > 0, "the test must preempt");
    assert_eq!(got, want);
    assert_eq!(s.kv().pool().num_free(), 19);
}

#[test]
fn prefix_hits_skip_compute_and_keep_outputs() {
    let shared: Vec<u32> = (0..16).map(|t| t * 3 % 256).collect();
    let p: Vec<Vec<u32>> = (0..4)
        .map(|i| [shared.clone(), vec![100 + i]].concat())
        .collect();
    let want = reference(&p, 4);
    let (cold, cold_stats, _) = run(64, 512, 1, false, &p, 4);
    let (warm, warm_stats, s) = run(64, 512, 1, true, &p, 4);
    assert_eq!(cold, want);
    assert_eq!(warm, want);
    // Requests after the first hit the 16 shared tokens (4 blocks).
    assert_eq!(warm_stats.prefix_hits, 3 * 16);
    assert_eq!(warm_stats.prefix_queries, 4 * 17);
    assert_eq!(
        cold_stats.num_prompt_tokens - warm_stats.num_prompt_tokens,
        3 * 16
    );
    assert_eq!(s.kv().pool().num_free(), 63);
}

#[test]
fn aborts_free_blocks_wherever_the_request_is() {
    let mut be = executor(32);
    let cfg = SchedulerConfig {
        max_num_batched_tokens: 8,
        max_num_seqs: 2,
        max_model_len: 512,
        chunked_prefill: true,
    };
    let mut s = Scheduler::new(cfg, KvCacheManager::new(32, BLOCK, true), vec![]);
    for (i, p) in prompts().into_iter().enumerate() {
        s.add(request(i, p, 50));
    }
    s.step(&mut be).unwrap();
    s.step(&mut be).unwrap();
    assert!(s.num_running() > 0 && s.num_waiting() > 0);
    // One mid-prefill or decoding, one still waiting, one unknown.
    let running_id = "r0";
    assert!(s.abort(running_id).is_some());
    assert!(s.abort("r5").is_some());
    assert!(s.abort("nope").is_none());
    while s.has_work() {
        let ids: Vec<String> = s.running.iter().map(|r| r.id.clone()).collect();
        if let Some(id) = ids.first() {
            s.abort(id);
        }
        s.step(&mut be).unwrap();
    }
    assert_eq!(s.kv().pool().num_free(), 31);
}

#[test]
fn stop_tokens_finish_with_stop() {
    let p = prompts();
    let first = reference(&p[..1], 3)["r0"].clone();
    let mut be = executor(16);
    let cfg = SchedulerConfig {
        max_num_batched_tokens: 64,
        max_num_seqs: 4,
        max_model_len: 512,
        chunked_prefill: true,
    };
    let mut s = Scheduler::new(cfg, KvCacheManager::new(16, BLOCK, true), vec![first[1]]);
    s.add(request(0, p[0].clone(), 10));
    let mut finished = Vec::new();
    while s.has_work() {
        finished.extend(s.step(&mut be).unwrap().finished);
    }
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].1, FinishReason::Stop);
    assert_eq!(finished[0].0.output(), &first[..2]);
}

/// Prompt log-probabilities (for `echo` with `logprobs`): the row of position `p` scores the
/// prompt token at `p + 1`, as one whole-prompt forward pass gives them, whatever the chunking,
/// the batch, or a preemption; each position is reported once, and such a request reads
/// nothing from the prefix cache.
#[test]
fn prompt_logprobs_match_one_whole_forward_pass_under_chunking_and_preemption() {
    let p = prompts();
    let prompt = p[5].clone(); // 28 tokens
                               // The reference: the model's logits at every prompt position, in one pass.
    let mut be = backend(64);
    let table: Vec<u32> = (1..=(prompt.len() / BLOCK + 1) as u32).collect();
    let all = be
        .forward(&[SeqInput {
            tokens: &prompt,
            start_pos: 0,
            block_table: &table,
            logits_for: LogitsFor::All,
        }])
        .unwrap();
    let want: Vec<Sampled> = (1..prompt.len())
        .map(|k| {
            let (logprob, top_logprobs) = crate::sampling::logprobs(all.row(k - 1), prompt[k], 3);
            Sampled {
                token: prompt[k],
                logprob,
                top_logprobs,
            }
        })
        .collect();

    // Small blocks and budget: the prompt is chunked, and a second request preempts it.
    for (budget, num_blocks) in [(64, 64), (5, 64), (7, 12)] {
        let mut be = executor(num_blocks);
        let cfg = SchedulerConfig {
            max_num_batched_tokens: budget,
            max_num_seqs: 4,
            max_model_len: 512,
            chunked_prefill: true,
        };
        let mut s = Scheduler::new(cfg, KvCacheManager::new(num_blocks, BLOCK, true), vec![]);
        // The same prompt first without prompt logprobs, so its blocks are cached.
        s.add(request(9, prompt.clone(), 1));
        while s.has_work() {
            s.step(&mut be).unwrap();
        }
        let mut req = request(0, prompt.clone(), 6);
        req.prompt_logprobs = Some(3);
        s.add(req);
        s.add(request(1, p[4].clone(), 6));
        let mut got = Vec::new();
        let mut preempted = 0;
        let mut cached = None;
        while s.has_work() {
            let out = s.step(&mut be).unwrap();
            preempted += out.stats.num_preempted;
            for u in out.updates.iter().filter(|u| u.id == "r0") {
                got.extend(u.prompt_logprobs.iter().cloned());
            }
            if let Some((r, _)) = out.finished.iter().find(|(r, _)| r.id == "r0") {
                cached = r.num_cached_tokens;
            }
        }
        assert_eq!(
            cached,
            Some(0),
            "budget {budget}: read nothing from the cache"
        );
        assert_eq!(got.len(), want.len(), "budget {budget}: each position once");
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.token, w.token, "position {}", k + 1);
            assert!((g.logprob - w.logprob).abs() < 1e-4, "position {}", k + 1);
            assert_eq!(g.top_logprobs.len(), 3);
            for ((gt, gl), (wt, wl)) in g.top_logprobs.iter().zip(&w.top_logprobs) {
                assert_eq!(gt, wt);
                assert!((gl - wl).abs() < 1e-4);
            }
        }
        if num_blocks == 12 {
            assert!(preempted > 0, "a 12-block cache preempts");
        }
    }
}

/// Without chunked prefill every prompt is computed in the step that admits it, whole: a step's
/// prompt tokens are exactly the prompts of the requests whose first token it made (with
/// chunking, the same budget splits prompts). Outputs do not change.
#[test]
fn without_chunked_prefill_a_prompt_runs_whole_or_waits() {
    let p: Vec<Vec<u32>> = prompts().into_iter().take(4).collect(); // 3, 8, 13, 18 tokens
    let want = reference(&p, 5);
    for chunked_prefill in [false, true] {
        let mut be = executor(64);
        let cfg = SchedulerConfig {
            max_num_batched_tokens: 20,
            max_num_seqs: 4,
            max_model_len: 512,
            chunked_prefill,
        };
        let mut s = Scheduler::new(cfg, KvCacheManager::new(64, BLOCK, false), vec![]);
        for (i, prompt) in p.iter().enumerate() {
            s.add(request(i, prompt.clone(), 5));
        }
        let mut whole = true;
        let mut outputs = HashMap::new();
        while s.has_work() {
            let out = s.step(&mut be).unwrap();
            let firsts: usize = out
                .updates
                .iter()
                .filter(|u| u.first_token.is_some())
                .map(|u| p[u.id[1..].parse::<usize>().unwrap()].len())
                .sum();
            whole &= out.stats.num_prompt_tokens == firsts;
            for (r, _) in out.finished {
                outputs.insert(r.id.clone(), r.output().to_vec());
            }
        }
        assert_eq!(whole, !chunked_prefill, "chunked_prefill={chunked_prefill}");
        assert_eq!(outputs, want);
    }
}

/// A request the whole cache cannot hold is refused with the numbers, not left waiting (the
/// engine loop would spin on it); one that outgrows the cache while decoding alone finishes
/// with `length`, not preempted into a queue it can never leave. Others still run.
#[test]
fn requests_the_cache_can_never_hold_finish_instead_of_waiting_forever() {
    // 4 blocks of 4 tokens, one reserved: 12 tokens in all.
    let mut be = executor(4);
    let cfg = SchedulerConfig {
        max_num_batched_tokens: 64,
        max_num_seqs: 4,
        max_model_len: 512,
        chunked_prefill: true,
    };
    let mut s = Scheduler::new(cfg, KvCacheManager::new(4, BLOCK, true), vec![]);
    s.add(request(0, (0..20).collect(), 4)); // a 20-token prompt: never fits
    s.add(request(1, (0..10).collect(), 10)); // fits, outgrows the cache after 2 tokens
    s.add(request(2, (0..3).collect(), 2)); // fits
    let mut finished = HashMap::new();
    for _ in 0..20 {
        if !s.has_work() {
            break;
        }
        for (r, reason) in s.step(&mut be).unwrap().finished {
            finished.insert(
                r.id.clone(),
                (reason, r.num_output_tokens(), r.error.clone()),
            );
        }
    }
    assert!(!s.has_work(), "every request finished: {finished:?}");
    let (reason, _, error) = &finished["r0"];
    assert_eq!(*reason, FinishReason::Error);
    assert_eq!(
        error.as_ref().map(ToString::to_string).as_deref(),
        Some("the request needs 20 tokens of KV cache and the whole cache holds 12")
    );
    let (reason, generated, _) = &finished["r1"];
    assert_eq!(*reason, FinishReason::Length);
    // 12 slots hold the KV of the prompt and of 2 outputs; the third output is sampled from
    // them, and its own KV finds no slot.
    assert_eq!(*generated, 3);
    assert_eq!(finished["r2"].0, FinishReason::Length);
    assert_eq!(finished["r2"].1, 2);
    assert_eq!(s.kv().pool().num_free(), 3, "no block leaked");
}
