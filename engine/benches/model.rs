//! CPU model throughput (prefill, decode at batch 1, 8 and 32, peak RSS) as one JSON object.
//!
//! Model throughput on the CPU backend, printed as one JSON object: prefill tokens/s for a
//! 512-token prompt, decode tokens/s at batch 1, 8 and 32, and peak RSS. `cargo xtask
//! bench-model` runs it beside llama.cpp on the same GGUF and prints the ratios.
//!
//! Usage: cargo bench -p vigil-engine --bench model [-- MODEL]
//!
//! With `VIGIL_BENCH_DECODE_ONLY=N` it only decodes N tokens at batch 1 after a 32-token
//! prompt and prints nothing: run under `perf stat` with two values of N, the difference in
//! instructions over the difference in N is the instructions per decoded token.

mod common;

use std::time::Instant;

use backend::{Backend, LogitsFor, SeqInput};
use backend::{CpuBackend, CpuOptions, WeightFormat};
use engine::argmax;
use model::Model;

const BLOCK: usize = 16;
const PREFILL_TOKENS: usize = 512;
const DECODE_PROMPT: usize = 32;
const DECODE_STEPS: usize = 32;

fn main() {
    let path = common::model_path();
    let format = match std::env::var("VIGIL_WEIGHT_FORMAT").as_deref() {
        Ok("f32") => WeightFormat::F32,
        Ok("q8") => WeightFormat::Q8,
        _ => WeightFormat::default(),
    };
    let model = Model::load(&path).expect("load model");
    let per_seq_blocks = (PREFILL_TOKENS + 16).div_ceil(BLOCK);
    let num_blocks = per_seq_blocks.max(32 * (DECODE_PROMPT + DECODE_STEPS).div_ceil(BLOCK));
    let mut be = CpuBackend::new(
        &model,
        &CpuOptions {
            block_size: BLOCK,
            num_blocks,
            weight_format: format,
            kv_dtype: None,
        },
    )
    .expect("backend");
    let text = "The quick brown fox jumps over the lazy dog while the capital of France is Paris. "
        .repeat(64);
    let all = model.tokenizer.encode(&text, false).unwrap();
    let prompt = &all[..PREFILL_TOKENS];
    if let Ok(steps) = std::env::var("VIGIL_BENCH_DECODE_ONLY") {
        let steps: usize = steps
            .parse()
            .expect("VIGIL_BENCH_DECODE_ONLY: a number of tokens");
        let table: Vec<u32> = (0..num_blocks as u32).collect();
        let mut seq = all[..DECODE_PROMPT].to_vec();
        for step in 0..=steps {
            let start = if step == 0 { 0 } else { seq.len() - 1 };
            let logits = be
                .forward(&[SeqInput {
                    tokens: &seq[start..],
                    start_pos: start,
                    block_table: &table,
                    logits_for: LogitsFor::Last,
                }])
                .unwrap();
            seq.push(argmax(logits.row(0)));
        }
        return;
    }

    // Prefill: best of 3.
    let table: Vec<u32> = (0..per_seq_blocks as u32).collect();
    let mut prefill = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        be.forward(&[SeqInput {
            tokens: prompt,
            start_pos: 0,
            block_table: &table,
            logits_for: LogitsFor::Last,
        }])
        .unwrap();
        prefill = prefill.min(t.elapsed().as_secs_f64());
    }

    let mut decode = Vec::new();
    for batch in [1usize, 8, 32] {
        let blocks_per = (DECODE_PROMPT + DECODE_STEPS).div_ceil(BLOCK);
        let tables: Vec<Vec<u32>> = (0..batch)
            .map(|s| ((s * blocks_per) as u32..((s + 1) * blocks_per) as u32).collect())
            .collect();
        let mut seqs: Vec<Vec<u32>> = (0..batch)
            .map(|s| all[s..s + DECODE_PROMPT].to_vec())
            .collect();
        let inputs: Vec<SeqInput> = (0..batch)
            .map(|s| SeqInput {
                tokens: &seqs[s],
                start_pos: 0,
                block_table: &tables[s],
                logits_for: LogitsFor::Last,
            })
            .collect();
        let logits = be.forward(&inputs).unwrap();
        for (s, seq) in seqs.iter_mut().enumerate() {
            seq.push(argmax(logits.row(s)));
        }
        let t = Instant::now();
        for _ in 0..DECODE_STEPS {
            let inputs: Vec<SeqInput> = (0..batch)
                .map(|s| SeqInput {
                    tokens: &seqs[s][seqs[s].len() - 1..],
                    start_pos: seqs[s].len() - 1,
                    block_table: &tables[s],
                    logits_for: LogitsFor::Last,
                })
                .collect();
            let logits = be.forward(&inputs).unwrap();
            for (s, seq) in seqs.iter_mut().enumerate() {
                seq.push(argmax(logits.row(s)));
            }
        }
        decode.push((
            batch,
            (batch * DECODE_STEPS) as f64 / t.elapsed().as_secs_f64(),
        ));
    }
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let decode_json: Vec<String> = decode
        .iter()
        .map(|(b, tps)| format!("\"decode_batch_{b}_tok_s\": {tps:.2}"))
        .collect();
    println!(
        "{{\"weight_format\": \"{format:?}\", \"prefill_{PREFILL_TOKENS}_tok_s\": {:.2}, {}, \"peak_rss_mib\": {:.1}}}",
        PREFILL_TOKENS as f64 / prefill,
        decode_json.join(", "),
        rss as f64 / 1024.0
    );
}
