//! What sampling one token costs, against the same steps written plainly.
//!
//! One token sampled from a vocabulary-sized row of logits (`Sampler::sample`: softmax, top-k or
//! top-p, the draw, the token's log-probability), beside the same steps written plainly (a full
//! sort of the row for top-k and top-p, and the C library's f64 `exp` for the log-probability),
//! in the same run. The engine samples one row per sequence per step on its own thread, so
//! this cost adds to every step of a batch.
//!
//! Usage: cargo bench -p vigil-engine --bench sampling

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use engine::{Sampler, SamplingParams};

const VOCAB: usize = 49_152;

/// A language model's row: logits falling with the log of the rank (Zipf-like), the ranks
/// shuffled over the ids.
fn row() -> Vec<f32> {
    (0..VOCAB)
        .map(|i| {
            let rank = (i as u32).wrapping_mul(2_654_435_761) % VOCAB as u32 + 1;
            -1.2 * (rank as f32).ln()
        })
        .collect()
}

/// The plain steps: f64 softmax, a full sort, the top-k and top-p cut, an inverse-CDF draw, and
/// the log-probability from a second f64 pass.
fn plain(x: &[f32], top_k: Option<usize>, top_p: f32, u: f64) -> (u32, f32) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f64> = x.iter().map(|v| ((v - max) as f64).exp()).collect();
    let sum: f64 = p.iter().sum();
    p.iter_mut().for_each(|v| *v /= sum);
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_unstable_by(|a, b| p[*b].total_cmp(&p[*a]).then(a.cmp(b)));
    let keep = top_k.unwrap_or(p.len());
    let (mut cum, mut n) = (0.0, 0);
    for &i in &order[..keep] {
        cum += p[i];
        n += 1;
        if cum >= top_p as f64 {
            break;
        }
    }
    let target = u * cum;
    let mut acc = 0.0;
    let token = order[..n]
        .iter()
        .copied()
        .find(|&i| {
            acc += p[i];
            acc > target
        })
        .unwrap_or(order[n - 1]);
    let lse = (x.iter().map(|v| ((v - max) as f64).exp()).sum::<f64>()).ln() as f32 + max;
    (token as u32, x[token] - lse)
}

fn bench(c: &mut Criterion) {
    let x = row();
    let mut g = c.benchmark_group("sample_of_49152");
    for (name, top_k, top_p) in [("top_p_0.9", None, 0.9f32), ("top_k_50", Some(50), 1.0)] {
        let params = SamplingParams {
            temperature: 1.0,
            top_k,
            top_p,
            seed: Some(1),
            ..Default::default()
        };
        let mut sampler = Sampler::new(params, &[]);
        g.bench_function(format!("{name}/vigil"), |b| {
            b.iter(|| sampler.sample(black_box(&x)).token)
        });
        g.bench_function(format!("{name}/full_sort"), |b| {
            b.iter(|| plain(black_box(&x), top_k, top_p, 0.5))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
