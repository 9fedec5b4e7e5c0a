//! Reductions of one row of logits that backends and samplers share.
//!
//! Reductions of one row of logits that backends and samplers share: its argmax, its
//! log-probabilities, and the [`GreedyToken`] a backend hands over instead of the row when
//! that is all the sampler needs.

/// A row of logits reduced to its most likely token (the lowest id on ties) and that token's
/// log-probability under the row: what a backend hands over for a plain greedy request
/// (a plain greedy request: greedy, no penalties, no top log-probabilities) instead of the whole row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GreedyToken {
    /// The most likely token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
}

impl GreedyToken {
    /// The reduction of one row, on the host.
    pub fn of_row(row: &[f32]) -> GreedyToken {
        let token = argmax(row);
        let (logprob, _) = logprobs(row, token, 0);
        GreedyToken { token, logprob }
    }
}

/// Index of the largest value (the first one on ties), ignoring NaN.
///
/// Two passes the compiler vectorizes (a row is a vocabulary long, and a greedy batch reduces
/// one per sequence each step): the largest value, in eight lanes, then its first index.
pub fn argmax(x: &[f32]) -> u32 {
    let max = max_value(x);
    match x.iter().position(|v| *v == max) {
        Some(i) => i as u32,
        // Nothing but NaN.
        None => x.len().saturating_sub(1) as u32,
    }
}

/// Log-softmax of `logits` at `token`, and the `n` best tokens with theirs.
pub fn logprobs(logits: &[f32], token: u32, n: usize) -> (f32, Vec<(u32, f32)>) {
    let max = max_value(logits);
    let lse = sum_exp(logits, max).ln() as f32 + max;
    let chosen = logits[token as usize] - lse;
    if n == 0 {
        return (chosen, Vec::new());
    }
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let n = n.min(idx.len());
    idx.select_nth_unstable_by(n - 1, |a, b| {
        logits[*b as usize].total_cmp(&logits[*a as usize])
    });
    let mut top: Vec<(u32, f32)> = idx[..n]
        .iter()
        .map(|&i| (i, logits[i as usize] - lse))
        .collect();
    top.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    (chosen, top)
}

/// The largest value of a row that is not NaN (-∞ for none), in eight lanes, which the compiler
/// vectorizes where a single running maximum compares one element at a time.
fn max_value(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(*v);
        }
    }
    tail.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, v| m.max(*v))
}

/// `Σ e^(x - max)` over a row, in f64, each exponential taken in f32 as the CPU backend's
/// softmax takes it ([`crate::cpu::ops::exp`], within 2 ulp), eight at a time where the CPU has
/// FMA: every generated token's log-probability sums a whole vocabulary, and with the C
/// library's f64 `exp` that cost a large part of a small model's decode step.
fn sum_exp(x: &[f32], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { sum_exp_fma(x, max) };
    }
    sum_exp_lanes(x, max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_exp_fma(x: &[f32], max: f32) -> f64 {
    sum_exp_lanes(x, max)
}

#[inline(always)]
fn sum_exp_lanes(x: &[f32], max: f32) -> f64 {
    let e = |v: &f32| crate::cpu::ops::exp(v - max) as f64;
    let mut lanes = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(e).sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += e(v);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// The probabilities of a row (its softmax) into `out`, in f64, the exponentials taken as
/// `sum_exp` takes them and scaled by the reciprocal of their sum: what a sampler draws
/// from, for every sampled token.
pub fn softmax(x: &[f32], out: &mut Vec<f64>) {
    let max = max_value(x);
    out.clear();
    out.resize(x.len(), 0.0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { softmax_fma(x, max, out) };
    }
    softmax_lanes(x, max, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_fma(x: &[f32], max: f32, out: &mut [f64]) {
    softmax_lanes(x, max, out)
}

#[inline(always)]
fn softmax_lanes(x: &[f32], max: f32, out: &mut [f64]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = crate::cpu::ops::exp(v - max) as f64;
    }
    let inv = 1.0 / sum_probabilities(out);
    for p in out.iter_mut() {
        *p *= inv;
    }
}

/// The sum of a row of probabilities, in eight lanes, which vectorize where one running sum
/// waits on each addition.
#[inline(always)]
pub fn sum_probabilities(x: &[f64]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::{argmax, logprobs, softmax};

    /// A vocabulary-sized row of logits spread over 30 nats, and its largest value in f64.
    fn vocabulary_row() -> (Vec<f32>, f64) {
        let row: Vec<f32> = (0..49_157)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761) as f32 / u32::MAX as f32) * 30.0 - 20.0
            })
            .collect();
        let max = row
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, |m, v| m.max(v as f64));
        (row, max)
    }

    /// Probabilities are the row's softmax (computed here in f64 from its definition) to f32's
    /// precision (the logit difference rounds to f32: half an ulp of 30 is 1e-6 of e^x), and sum
    /// to one.
    #[test]
    fn softmax_is_the_rows_probabilities() {
        let (row, max) = vocabulary_row();
        let total: f64 = row.iter().map(|v| (*v as f64 - max).exp()).sum();
        let mut p = Vec::new();
        softmax(&row, &mut p);
        for (p, v) in p.iter().zip(&row) {
            let want = (*v as f64 - max).exp() / total;
            assert!((p - want).abs() <= want * 3e-6, "{p} vs {want}");
        }
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    /// Log-probabilities are the log-softmax of the row (computed here in f64 from its
    /// definition) to well within f32's precision, on a vocabulary-sized row.
    #[test]
    fn logprobs_are_the_rows_log_softmax() {
        let (row, max) = vocabulary_row();
        let lse = row
            .iter()
            .map(|v| (*v as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        let (chosen, top) = logprobs(&row, 123, 5);
        assert!(
            (chosen as f64 - (row[123] as f64 - lse)).abs() < 2e-6,
            "{chosen}"
        );
        for (t, lp) in top {
            assert!((lp as f64 - (row[t as usize] as f64 - lse)).abs() < 2e-6);
        }
    }

    /// The largest value's first index, whatever lane or tail it falls in; NaN never wins.
    #[test]
    fn argmax_takes_the_first_largest_value_and_skips_nan() {
        for len in [1, 7, 8, 9, 16, 49_155] {
            for at in [0, len / 2, len - 1] {
                let mut x: Vec<f32> = (0..len)
                    .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
                    .collect();
                x[at] = 5.0;
                assert_eq!(argmax(&x), at as u32, "len {len} at {at}");
                // A tie later on keeps the first; NaN anywhere changes nothing.
                if at + 3 < len {
                    x[at + 3] = 5.0;
                }
                x[(at + 1) % len] = f32::NAN;
                if (at + 1) % len != at {
                    assert_eq!(
                        argmax(&x),
                        at as u32,
                        "len {len} at {at}, with a tie and NaN"
                    );
                }
            }
        }
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[-0.0, 0.0]), 0);
    }
}
