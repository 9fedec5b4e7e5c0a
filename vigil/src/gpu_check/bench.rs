//! Throughput of the CUDA backend at batch 1, 16, 64 and 256, and its memory bandwidth.
//!
//! Throughput of the CUDA backend at batch 1, 16, 64 and 256: prefill tokens/s (prompts of
//! [`PROMPT_LEN`] random tokens) and decode tokens/s ([`NEW_TOKENS`] greedy steps), and the
//! memory bandwidth a decode step achieves (weights plus the KV it reads) as a fraction of the
//! device's peak. Timed on the host around steps that end in a synchronising copy.

use std::time::{Duration, Instant};

use backend::{Backend, LogitsFor, SeqInput};
use backend::{CudaBackend, CudaOptions};
use model::Model;

use super::report::Report;

pub(crate) const BATCHES: &[usize] = &[1, 16, 64, 256];
pub(crate) const PROMPT_LEN: usize = 128;
pub(crate) const NEW_TOKENS: usize = 64;
/// Prefill steps take at most this many tokens (as `--max-num-batched-tokens` would).
const PREFILL_CHUNK: usize = 8192;
const BLOCK_SIZE: usize = 16;

/// Batch-1 decode must reach this share of the memory-bandwidth limit (the CUDA backend's
/// latency target).
const BATCH1_BANDWIDTH_TARGET: f64 = 0.30;

#[derive(Debug, Clone)]
pub(crate) struct BenchRow {
    pub batch: usize,
    pub prefill: Duration,
    pub decode: Duration,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub bandwidth_fraction: f64,
}

pub(crate) fn run(model: &Model, report: &mut Report) -> anyhow::Result<Vec<BenchRow>> {
    let c = &model.config;
    let max_batch = *BATCHES.iter().max().expect("batches");
    let per_seq_blocks = (PROMPT_LEN + NEW_TOKENS).div_ceil(BLOCK_SIZE);
    let mut gpu = CudaBackend::new(
        model,
        &CudaOptions {
            ordinal: 0,
            block_size: BLOCK_SIZE,
            gpu_memory_utilization: 0.9,
            num_blocks_override: Some(max_batch * per_seq_blocks),
            max_num_batched_tokens: PREFILL_CHUNK,
            max_num_seqs: max_batch,
            max_model_len: 0,
            enforce_eager: false,
        },
    )?;
    let info = gpu.device().clone();
    // The driver's memory clock, else NVML's (CUDA 13 drivers stopped reporting it); without
    // either, the fraction is not known and the bandwidth check fails saying so.
    let peak = info
        .memory_bandwidth
        .or_else(|| probes::peak_memory_bandwidth(0))
        .unwrap_or(f64::NAN);
    let kv_bytes_per_token =
        (2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2) as f64;
    println!(
        "bench: {} ({}), peak memory bandwidth {:.0} GB/s; weights {:.1} MB bf16; prompts of {PROMPT_LEN} tokens, {NEW_TOKENS} new",
        info.name,
        info.arch,
        peak / 1e9,
        gpu.weight_bytes() as f64 / 1e6
    );
    println!(
        "{:>6} {:>14} {:>14} {:>12} {:>10}",
        "batch", "prefill tok/s", "decode tok/s", "step ms", "bandwidth"
    );
    let mut rows = Vec::new();
    for &batch in BATCHES {
        let tables: Vec<Vec<u32>> = (0..batch)
            .map(|s| ((s * per_seq_blocks) as u32..((s + 1) * per_seq_blocks) as u32).collect())
            .collect();
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|s| {
                (0..PROMPT_LEN)
                    .map(|i| ((s * 7919 + i * 104729) % c.vocab_size) as u32)
                    .collect()
            })
            .collect();
        let per_step = (PREFILL_CHUNK / PROMPT_LEN).max(1);
        let started = Instant::now();
        let mut next: Vec<u32> = Vec::with_capacity(batch);
        for group in (0..batch).collect::<Vec<_>>().chunks(per_step) {
            let inputs: Vec<SeqInput> = group
                .iter()
                .map(|&s| SeqInput {
                    tokens: &prompts[s],
                    start_pos: 0,
                    block_table: &tables[s],
                    logits_for: LogitsFor::Greedy,
                })
                .collect();
            next.extend(gpu.forward(&inputs)?.greedy.iter().map(|g| g.token));
        }
        let prefill = started.elapsed();
        let started = Instant::now();
        for step in 0..NEW_TOKENS {
            let tokens: Vec<[u32; 1]> = next.iter().map(|t| [*t]).collect();
            let inputs: Vec<SeqInput> = (0..batch)
                .map(|s| SeqInput {
                    tokens: &tokens[s],
                    start_pos: PROMPT_LEN + step,
                    block_table: &tables[s],
                    logits_for: LogitsFor::Greedy,
                })
                .collect();
            next = gpu
                .forward(&inputs)?
                .greedy
                .iter()
                .map(|g| g.token)
                .collect();
        }
        let decode = started.elapsed();
        let step = decode.as_secs_f64() / NEW_TOKENS as f64;
        let kv_read =
            batch as f64 * (PROMPT_LEN as f64 + NEW_TOKENS as f64 / 2.0) * kv_bytes_per_token;
        let bandwidth_fraction = (gpu.weight_bytes() as f64 + kv_read) / step / peak;
        let row = BenchRow {
            batch,
            prefill,
            decode,
            prefill_tokens_per_s: (batch * PROMPT_LEN) as f64 / prefill.as_secs_f64(),
            decode_tokens_per_s: (batch * NEW_TOKENS) as f64 / decode.as_secs_f64(),
            bandwidth_fraction,
        };
        println!(
            "{:>6} {:>14.0} {:>14.0} {:>12.3} {:>9.1}%",
            batch,
            row.prefill_tokens_per_s,
            row.decode_tokens_per_s,
            step * 1e3,
            100.0 * bandwidth_fraction
        );
        rows.push(row);
    }
    if let Some(one) = rows.iter().find(|r| r.batch == 1) {
        report.check(
            "batch-1 decode bandwidth >= 30% of peak",
            one.bandwidth_fraction >= BATCH1_BANDWIDTH_TARGET,
            format!(
                "{:.1}% of {:.0} GB/s ({:.0} tok/s)",
                100.0 * one.bandwidth_fraction,
                peak / 1e9,
                one.decode_tokens_per_s
            ),
        );
    }
    Ok(rows)
}
