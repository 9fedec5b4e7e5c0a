//! What reducing a vocabulary-sized row of logits costs, against the plain loops.
//!
//! The reductions of a vocabulary-sized row of logits that every generated token pays (its
//! argmax for greedy decoding, the log-sum-exp behind its log-probability), against the plain
//! loops they replace, in the same run: a compare and branch per element, and the C library's
//! f64 `exp` per element.
//!
//! Usage: cargo bench -p vigil-backend --bench row

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

/// SmolLM2's and Llama 2's vocabularies are 49,152 and 32,000 tokens; Llama 3's 128,256.
const VOCAB: usize = 49_152;

fn row() -> Vec<f32> {
    (0..VOCAB)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) as f32 / u32::MAX as f32) * 30.0 - 20.0)
        .collect()
}

fn plain_argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] || x[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

fn plain_logprob(x: &[f32], token: usize) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = (x.iter().map(|v| ((v - max) as f64).exp()).sum::<f64>()).ln() as f32 + max;
    x[token] - lse
}

fn bench(c: &mut Criterion) {
    let x = row();
    let mut g = c.benchmark_group("row_of_49152");
    g.bench_function("argmax/vigil", |b| {
        b.iter(|| backend::argmax(black_box(&x)))
    });
    g.bench_function("argmax/plain_loop", |b| {
        b.iter(|| plain_argmax(black_box(&x)))
    });
    g.bench_function("logprob/vigil", |b| {
        b.iter(|| backend::logprobs(black_box(&x), 123, 0).0)
    });
    g.bench_function("logprob/libm_f64_exp", |b| {
        b.iter(|| plain_logprob(black_box(&x), 123))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
