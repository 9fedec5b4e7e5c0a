//! Linear layers `y = x W^T` with `W` of shape `[out, in]`, in one of two formats:
//!
//! - [`WeightFormat::F32`]: exact; multiplied with the `gemm` crate.
//! - [`WeightFormat::Q8`] (the default): weights in blocks of 32 signed bytes with one `f32`
//!   scale each (llama.cpp's Q8_0), activations quantized the same way per row, and integer dot
//!   products (AVX2 `maddubs` where the CPU has it). A quarter of f32's bytes: decode, which
//!   streams every weight once per token, is bound by memory bandwidth, so this is what makes
//!   it fast.

use rayon::prelude::*;

/// How the CPU backend keeps weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// f32: exact, 4 bytes per weight.
    F32,
    /// Q8_0 blocks: 1.125 bytes per weight, int8 dot products.
    #[default]
    Q8,
}

/// Elements per quantization block.
pub const QK: usize = 32;

pub struct Linear {
    out: usize,
    inp: usize,
    w: Weights,
}

enum Weights {
    F32(Vec<f32>),
    Q8 { qs: Vec<i8>, scales: Vec<f32> },
}

/// Rows quantized to Q8_0 blocks.
struct Quantized {
    qs: Vec<i8>,
    scales: Vec<f32>,
}

fn quantize_rows(x: &[f32], inp: usize) -> Quantized {
    let mut qs = vec![0i8; x.len()];
    let mut scales = vec![0f32; x.len() / QK];
    qs.par_chunks_mut(inp)
        .zip(scales.par_chunks_mut(inp / QK))
        .zip(x.par_chunks(inp))
        .for_each(|((q, s), x)| {
            for ((q, s), x) in q
                .chunks_exact_mut(QK)
                .zip(s.iter_mut())
                .zip(x.chunks_exact(QK))
            {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                *s = d;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                for (q, v) in q.iter_mut().zip(x) {
                    *q = (v * inv).round() as i8;
                }
            }
        });
    Quantized { qs, scales }
}

impl Linear {
    /// Wraps `w` (`out * inp` values, row-major). Q8 needs `inp` to be a multiple of 32; other
    /// shapes stay f32.
    pub fn new(w: Vec<f32>, out: usize, inp: usize, format: WeightFormat) -> Linear {
        assert_eq!(w.len(), out * inp, "linear weight size");
        let w = match format {
            WeightFormat::Q8 if inp.is_multiple_of(QK) => {
                let Quantized { qs, scales } = quantize_rows(&w, inp);
                Weights::Q8 { qs, scales }
            }
            _ => Weights::F32(w),
        };
        Linear { out, inp, w }
    }

    /// Bytes the weights take.
    pub fn weight_bytes(&self) -> usize {
        match &self.w {
            Weights::F32(w) => w.len() * 4,
            Weights::Q8 { qs, scales } => qs.len() + scales.len() * 4,
        }
    }

    /// `y[t, out] = x[t, in] · W^T`.
    pub fn forward(&self, x: &[f32], t: usize, y: &mut [f32]) {
        assert_eq!(x.len(), t * self.inp);
        assert_eq!(y.len(), t * self.out);
        match &self.w {
            Weights::F32(w) => gemm_f32(w, self.out, self.inp, x, t, y),
            Weights::Q8 { qs, scales } => self.forward_q8(qs, scales, x, t, y),
        }
    }

    fn forward_q8(&self, wq: &[i8], ws: &[f32], x: &[f32], t: usize, y: &mut [f32]) {
        let (inp, out) = (self.inp, self.out);
        let bpr = inp / QK;
        let xq = quantize_rows(x, inp);
        let dot = dot_kernel();
        // Rows of W in chunks (a chunk of weights stays in L1 while every activation row passes).
        const ROWS: usize = 16;
        if t == 1 {
            y.par_chunks_mut(ROWS).enumerate().for_each(|(c, yc)| {
                for (i, yo) in yc.iter_mut().enumerate() {
                    let o = c * ROWS + i;
                    *yo = dot(
                        &wq[o * inp..(o + 1) * inp],
                        &ws[o * bpr..(o + 1) * bpr],
                        &xq.qs,
                        &xq.scales,
                    );
                }
            });
            return;
        }
        // Compute y^T chunk by chunk (contiguous per thread), then transpose.
        let mut yt = vec![0f32; out * t];
        let x4 = dot_x4_kernel();
        let xrow = |r: usize| {
            (
                &xq.qs[r * inp..(r + 1) * inp],
                &xq.scales[r * bpr..(r + 1) * bpr],
            )
        };
        yt.par_chunks_mut(ROWS * t)
            .enumerate()
            .for_each(|(c, chunk)| {
                let rows = chunk.len() / t;
                let mut r = 0;
                if let Some(x4) = x4 {
                    while r + 4 <= t {
                        let xs4 = [xrow(r), xrow(r + 1), xrow(r + 2), xrow(r + 3)];
                        for i in 0..rows {
                            let o = c * ROWS + i;
                            let v = x4(
                                &wq[o * inp..(o + 1) * inp],
                                &ws[o * bpr..(o + 1) * bpr],
                                xs4.map(|x| x.0),
                                xs4.map(|x| x.1),
                            );
                            chunk[i * t + r..i * t + r + 4].copy_from_slice(&v);
                        }
                        r += 4;
                    }
                }
                for r in r..t {
                    let (xr, xs) = xrow(r);
                    for i in 0..rows {
                        let o = c * ROWS + i;
                        chunk[i * t + r] = dot(
                            &wq[o * inp..(o + 1) * inp],
                            &ws[o * bpr..(o + 1) * bpr],
                            xr,
                            xs,
                        );
                    }
                }
            });
        y.par_chunks_mut(out).enumerate().for_each(|(r, yr)| {
            for (o, v) in yr.iter_mut().enumerate() {
                *v = yt[o * t + r];
            }
        });
    }
}

/// `Σ_blocks w_scale * x_scale * Σ w_q * x_q` over one row.
type DotFn = fn(&[i8], &[f32], &[i8], &[f32]) -> f32;

fn dot_kernel() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return |wq, ws, xq, xs| unsafe { avx2::dot_q8(wq, ws, xq, xs) };
        }
    }
    dot_q8_scalar
}

/// One weight row against four activation rows, where the CPU has a kernel for it.
type Dot4Fn = fn(&[i8], &[f32], [&[i8]; 4], [&[f32]; 4]) -> [f32; 4];

fn dot_x4_kernel() -> Option<Dot4Fn> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(|wq, ws, xq, xs| unsafe { avx2::dot_q8_x4(wq, ws, xq, xs) });
        }
    }
    None
}

pub(crate) fn dot_q8_scalar(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, (w, x)) in wq.chunks_exact(QK).zip(xq.chunks_exact(QK)).enumerate() {
        let s: i32 = w.iter().zip(x).map(|(a, b)| *a as i32 * *b as i32).sum();
        acc += s as f32 * ws[b] * xs[b];
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::QK;

    /// llama.cpp's `mul_sum_i8_pairs`: `maddubs` multiplies unsigned by signed bytes, so the
    /// sign of `x` moves onto `w` and `|x|` is used; pairs of products fit in i16 because
    /// quantized values lie in [-127, 127].
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; the slices must hold whole blocks.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q8(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32]) -> f32 {
        let blocks = wq.len() / QK;
        debug_assert!(xq.len() >= blocks * QK && ws.len() >= blocks && xs.len() >= blocks);
        let ones = _mm256_set1_epi16(1);
        // Two accumulators (even and odd blocks) so consecutive FMAs do not wait on each other.
        let mut accs = [_mm256_setzero_ps(); 2];
        for b in 0..blocks {
            let acc = &mut accs[b & 1];
            let w = _mm256_loadu_si256(wq.as_ptr().add(b * QK) as *const __m256i);
            let x = _mm256_loadu_si256(xq.as_ptr().add(b * QK) as *const __m256i);
            let ax = _mm256_sign_epi8(x, x);
            let sw = _mm256_sign_epi8(w, x);
            let dot16 = _mm256_maddubs_epi16(ax, sw);
            let dot32 = _mm256_madd_epi16(dot16, ones);
            let d = _mm256_set1_ps(*ws.get_unchecked(b) * *xs.get_unchecked(b));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot32), d, *acc);
        }
        hsum(_mm256_add_ps(accs[0], accs[1]))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(acc: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(acc, 1);
        let lo = _mm256_castps256_ps128(acc);
        let s = _mm_add_ps(hi, lo);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// One weight row against four activation rows: the weight block is loaded once and the
    /// four accumulators are independent, so the FMAs overlap.
    ///
    /// # Safety
    /// As [`dot_q8`]; every `xq[i]` and `xs[i]` covers the same blocks as `wq`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q8_x4(wq: &[i8], ws: &[f32], xq: [&[i8]; 4], xs: [&[f32]; 4]) -> [f32; 4] {
        let blocks = wq.len() / QK;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        for b in 0..blocks {
            let w = _mm256_loadu_si256(wq.as_ptr().add(b * QK) as *const __m256i);
            let wd = *ws.get_unchecked(b);
            for i in 0..4 {
                let x = _mm256_loadu_si256(xq[i].as_ptr().add(b * QK) as *const __m256i);
                let ax = _mm256_sign_epi8(x, x);
                let sw = _mm256_sign_epi8(w, x);
                let dot32 = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sw), ones);
                let d = _mm256_set1_ps(wd * *xs[i].get_unchecked(b));
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot32), d, acc[i]);
            }
        }
        [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
    }
}

fn gemm_f32(w: &[f32], out: usize, inp: usize, x: &[f32], t: usize, y: &mut [f32]) {
    // SAFETY: the slices hold exactly the elements the strides address (checked by the caller).
    unsafe {
        gemm::gemm(
            t,
            out,
            inp,
            y.as_mut_ptr(),
            1,
            out as isize,
            false,
            x.as_ptr(),
            1,
            inp as isize,
            w.as_ptr(),
            inp as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    #[test]
    fn q8_is_close_to_f32_for_every_batch_shape() {
        let (out, inp) = (37, 96);
        let w = random(out * inp, 1);
        let exact = Linear::new(w.clone(), out, inp, WeightFormat::F32);
        let q8 = Linear::new(w, out, inp, WeightFormat::Q8);
        assert!(q8.weight_bytes() * 3 < exact.weight_bytes());
        for t in [1, 2, 17] {
            let x = random(t * inp, 10 + t as u64);
            let (mut a, mut b) = (vec![0f32; t * out], vec![0f32; t * out]);
            exact.forward(&x, t, &mut a);
            q8.forward(&x, t, &mut b);
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(err / scale < 0.02, "t={t}: {err} vs {scale}");
        }
    }

    #[test]
    fn simd_and_scalar_dots_agree() {
        let inp = 128;
        let q = quantize_rows(&random(2 * inp, 3), inp);
        let (w, x) = (&q.qs[..inp], &q.qs[inp..]);
        let (ws, xs) = (&q.scales[..4], &q.scales[4..]);
        let scalar = dot_q8_scalar(w, ws, x, xs);
        let fast = dot_kernel()(w, ws, x, xs);
        assert!(
            (scalar - fast).abs() <= 1e-4 * scalar.abs().max(1.0),
            "{scalar} vs {fast}"
        );
    }
}
