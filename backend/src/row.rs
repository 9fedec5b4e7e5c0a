//! Reductions of one row of logits that backends and samplers share: its argmax, its
//! log-probabilities, and the [`GreedyToken`] a backend hands over instead of the row when
//! that is all the sampler needs.

/// A row of logits reduced to its most likely token (the lowest id on ties) and that token's
/// log-probability under the row: what a backend hands over for a plain greedy request
/// (a plain greedy request: greedy, no penalties, no top log-probabilities) instead of the whole row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GreedyToken {
    pub token: u32,
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
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] || x[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Softmax of `x`, then top-k, top-p and min-p filtering; returns unnormalised kept
/// probabilities (zero where filtered out).
/// Log-softmax of `logits` at `token`, and the `n` best tokens with theirs.
pub fn logprobs(logits: &[f32], token: u32, n: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = (logits.iter().map(|v| ((v - max) as f64).exp()).sum::<f64>()).ln() as f32 + max;
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
