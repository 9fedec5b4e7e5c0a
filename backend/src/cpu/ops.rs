//! Element-wise kernels: RMSNorm, RoPE (HF's half-split layout), SiLU.

use rayon::prelude::*;

pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    // The sum of squares in f64, as llama.cpp takes it.
    let ms = (x.iter().map(|v| (v * v) as f64).sum::<f64>() / x.len() as f64) as f32;
    let scale = 1.0 / (ms + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * w;
    }
}

pub fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    out.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .for_each(|(o, x)| rms_norm(x, w, eps, o));
}

/// Rotates each of `heads` heads of `x` (laid out head after head) for position `pos`:
/// HF's `rotate_half` form, pairing dimension `i` with `i + head_dim/2`.
pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, pos: usize, inv_freq: &[f32]) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim).take(heads) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (sin, cos) = (pos as f32 * inv_freq[i]).sin_cos();
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos - x2 * sin;
            b[i] = x2 * cos + x1 * sin;
        }
    }
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
