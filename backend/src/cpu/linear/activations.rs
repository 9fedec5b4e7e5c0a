//! Activation rows quantized per block of 32, as llama.cpp quantizes them for its matmuls.
//!
//! Activation rows quantized per block of 32, as llama.cpp quantizes the right-hand side of
//! a quantized matmul: Q8_0 (`d` as f16, 32 signed bytes) and Q8_1 (also `s = d Σq` as f16).
//!
//! The rounding is llama.cpp's x86 build's (`_mm256_round_ps` to nearest even, `id = 127 /
//! amax`, scales rounded to f16), so the products are those llama.cpp computes.

use half::f16;
use rayon::prelude::*;

use super::panels::QK;

/// Rows of activations in Q8 blocks; scales and sums already rounded through f16.
pub(super) struct QuantizedRows {
    pub qs: Vec<i8>,
    /// Per block: `d`.
    pub d: Vec<f32>,
    /// Per block: `d Σq` (only when asked for).
    pub s: Vec<f32>,
    pub blocks: usize,
}

impl QuantizedRows {
    /// Row `r`'s quants, scales and sums.
    pub(super) fn row(&self, r: usize) -> (&[i8], &[f32], &[f32]) {
        let nb = self.blocks;
        let s = if self.s.is_empty() {
            &self.s[..]
        } else {
            &self.s[r * nb..(r + 1) * nb]
        };
        (
            &self.qs[r * nb * QK..(r + 1) * nb * QK],
            &self.d[r * nb..(r + 1) * nb],
            s,
        )
    }
}

/// Quantizes one block into `qs`; returns its scale `d` before f16 rounding.
pub(super) fn quantize_block(x: &[f32], qs: &mut [i8; QK]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(x) {
        *q = round_ties_even(v * id) as i8;
    }
    d
}

/// `x` rounded to the nearest integer, ties to even, for `|x| <= 2^22`: adding and taking
/// away 1.5 * 2^23 leaves no fraction bits, and the FPU rounds to nearest even. The same as
/// `f32::round_ties_even` here, without a libm call in the loop, so the loop vectorizes.
#[inline(always)]
fn round_ties_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Quantizes `x` (rows of `inp`, a multiple of 32), with per-block sums when `sums`.
pub(super) fn quantize(x: &[f32], inp: usize, sums: bool) -> QuantizedRows {
    let blocks = inp / QK;
    let n = x.len() / QK;
    let mut qs = vec![0i8; x.len()];
    let mut d = vec![0f32; n];
    let mut s = if sums { vec![0f32; n] } else { Vec::new() };
    let quantize_row = |(q, d, s, x): (&mut [i8], &mut [f32], &mut [f32], &[f32])| {
        for (b, (q, x)) in q.chunks_exact_mut(QK).zip(x.chunks_exact(QK)).enumerate() {
            let q: &mut [i8; QK] = q.try_into().unwrap();
            let scale = quantize_block(x, q);
            d[b] = f16::from_f32(scale).to_f32();
            if sums {
                let sum: i32 = q.iter().map(|v| *v as i32).sum();
                s[b] = f16::from_f32(scale * sum as f32).to_f32();
            }
        }
    };
    let rows = x.len() / inp;
    if rows == 1 {
        quantize_row((&mut qs, &mut d, &mut s, x));
    } else {
        let s_rows: Vec<&mut [f32]> = if sums {
            s.chunks_mut(blocks).collect()
        } else {
            (0..rows).map(|_| &mut [][..]).collect()
        };
        qs.par_chunks_mut(inp)
            .zip(d.par_chunks_mut(blocks))
            .zip(s_rows)
            .zip(x.par_chunks(inp))
            .for_each(|(((q, d), s), x)| quantize_row((q, d, s, x)));
    }
    QuantizedRows { qs, d, s, blocks }
}

/// `w` (rows of `inp` f32s) in Q8_0 file blocks, rounded as llama.cpp's quantizer does.
pub(super) fn quantize_q8_0(w: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(w.len() / QK * 34);
    let mut qs = [0i8; QK];
    for block in w.chunks_exact(QK) {
        let d = quantize_block(block, &mut qs);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(qs.iter().map(|q| *q as u8));
    }
    out
}
