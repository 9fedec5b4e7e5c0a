//! Attention's head math in AVX2 registers.
//!
//! [`HeadMath`] in AVX2 registers: a 16-lane accumulator of llama.cpp's orders is two `__m256`,
//! and a slot's weighted sum of V stays in registers across its positions.

use std::arch::x86_64::*;

use super::head::{HeadMath, Portable};
use crate::cpu::summation::{SumOrder, DOT_BLOCK, LANES};

/// Needs AVX2 and FMA; inlined into the attention kernel compiled with them.
pub(super) struct Avx2;

impl HeadMath for Avx2 {
    #[inline(always)]
    unsafe fn scores(
        order: SumOrder,
        q: &[f32],
        k: &[f32],
        hd: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        let n = k.len() / hd;
        assert!(scores.len() >= q.len() / hd * n);
        match order {
            SumOrder::Gemm if hd.is_multiple_of(LANES) => {
                for (h, q) in q.chunks_exact(hd).enumerate() {
                    let out = &mut scores[h * n..(h + 1) * n];
                    match hd / LANES {
                        4 => gemm_scores::<4>(q, k, scale, out),
                        8 => gemm_scores::<8>(q, k, scale, out),
                        _ => {
                            for (s, k) in out.iter_mut().zip(k.chunks_exact(hd)) {
                                *s = gemm_dot(q, k) * scale;
                            }
                        }
                    }
                }
            }
            SumOrder::Dot if hd.is_multiple_of(DOT_BLOCK) => {
                for (q, out) in q.chunks_exact(hd).zip(scores.chunks_exact_mut(n)) {
                    for (s, k) in out.iter_mut().zip(k.chunks_exact(hd)) {
                        *s = vec_dot(q, k) * scale;
                    }
                }
            }
            // Tails that llama.cpp sums apart (in f64): rare head sizes, left to the reference.
            _ => Portable::scores(order, q, k, hd, scale, scores),
        }
    }

    #[inline(always)]
    unsafe fn weighted_values(order: SumOrder, w: &[f32], v: &[f32], hd: usize, acc: &mut [f32]) {
        if !hd.is_multiple_of(8) {
            return Portable::weighted_values(order, w, v, hd, acc);
        }
        let (n, slots) = (v.len() / hd, order.slots());
        for (w, acc) in w.chunks_exact(n).zip(acc.chunks_exact_mut(slots * hd)) {
            for (s, acc) in acc.chunks_exact_mut(hd).enumerate() {
                if s >= n {
                    acc.fill(0.0);
                    continue;
                }
                let mut d = 0;
                while d + 64 <= hd {
                    slot_sum::<8>(w, v, hd, s, slots, d, acc);
                    d += 64;
                }
                while d < hd {
                    slot_sum::<1>(w, v, hd, s, slots, d, acc);
                    d += 8;
                }
            }
        }
    }
}

/// `_mm512_reduce_add_ps` of the 16 lanes `lo` (0-7) and `hi` (8-15), as GCC expands it
/// ([`crate::cpu::summation::reduce16`]): upper eight plus lower, upper four plus lower, lanes
/// `0+2` and `1+3`, then the two. (Each step is one addition, so the operands' order within
/// it does not matter.)
#[inline(always)]
unsafe fn reduce16(lo: __m256, hi: __m256) -> f32 {
    let t = _mm256_add_ps(hi, lo);
    let u = _mm_add_ps(_mm256_extractf128_ps::<1>(t), _mm256_castps256_ps128(t));
    let w = _mm_add_ps(u, _mm_movehl_ps(u, u));
    _mm_cvtss_f32(_mm_add_ss(w, _mm_movehdup_ps(w)))
}

/// [`SumOrder::Gemm`]'s dot of `q` and `k` (whole registers): element `i` into lane `i % 16`.
#[inline(always)]
unsafe fn gemm_dot(q: &[f32], k: &[f32]) -> f32 {
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (q, k) in q.chunks_exact(LANES).zip(k.chunks_exact(LANES)) {
        let (q, k) = (q.as_ptr(), k.as_ptr());
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(k), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(8)), _mm256_loadu_ps(k.add(8)), hi);
    }
    reduce16(lo, hi)
}

/// [`gemm_dot`] of one query head of `C` registers' width against every row of `k`, the query
/// held in registers.
#[inline(always)]
unsafe fn gemm_scores<const C: usize>(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
    assert!(q.len() == C * LANES && k.len() >= out.len() * C * LANES);
    let qr: [__m256; C] = std::array::from_fn(|c| _mm256_loadu_ps(q.as_ptr().add(c * LANES)));
    let qr_hi: [__m256; C] =
        std::array::from_fn(|c| _mm256_loadu_ps(q.as_ptr().add(c * LANES + 8)));
    for (j, s) in out.iter_mut().enumerate() {
        let k = k.as_ptr().add(j * C * LANES);
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for c in 0..C {
            lo = _mm256_fmadd_ps(qr[c], _mm256_loadu_ps(k.add(c * LANES)), lo);
            hi = _mm256_fmadd_ps(qr_hi[c], _mm256_loadu_ps(k.add(c * LANES + 8)), hi);
        }
        *s = reduce16(lo, hi) * scale;
    }
}

/// [`SumOrder::Dot`]'s dot of `q` and `k` (whole blocks of 64): four 16-lane accumulators,
/// register `r` of each block into accumulator `r`, then `(0 + 2) + (1 + 3)`.
#[inline(always)]
unsafe fn vec_dot(q: &[f32], k: &[f32]) -> f32 {
    let mut a = [_mm256_setzero_ps(); 8];
    for (q, k) in q.chunks_exact(DOT_BLOCK).zip(k.chunks_exact(DOT_BLOCK)) {
        for (r, a) in a.iter_mut().enumerate() {
            let at = r * 8;
            *a = _mm256_fmadd_ps(
                _mm256_loadu_ps(q.as_ptr().add(at)),
                _mm256_loadu_ps(k.as_ptr().add(at)),
                *a,
            );
        }
    }
    // a[2r] and a[2r + 1] are accumulator r's lanes 0-7 and 8-15.
    let lo = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
    let hi = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
    reduce16(lo, hi)
}

/// Dimensions `d..d + 8R` of slot `s`'s weighted sum: `Σ w[j] v_j` over `j = s, s + slots, ...`,
/// in `R` registers from zero, stored into `acc`.
#[inline(always)]
unsafe fn slot_sum<const R: usize>(
    w: &[f32],
    v: &[f32],
    hd: usize,
    s: usize,
    slots: usize,
    d: usize,
    acc: &mut [f32],
) {
    assert!(d + 8 * R <= hd && acc.len() == hd && w.len() * hd <= v.len());
    let mut a = [_mm256_setzero_ps(); R];
    let mut j = s;
    while j < w.len() {
        let wj = _mm256_set1_ps(*w.get_unchecked(j));
        let row = v.as_ptr().add(j * hd + d);
        for (r, a) in a.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(wj, _mm256_loadu_ps(row.add(r * 8)), *a);
        }
        j += slots;
    }
    for (r, a) in a.iter().enumerate() {
        _mm256_storeu_ps(acc.as_mut_ptr().add(d + r * 8), *a);
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    /// The summation tests' values rounded to f16, so that every product is exact.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        crate::cpu::summation::tests::values(n, seed)
            .into_iter()
            .map(|x| f16::from_f32(x).to_f32())
            .collect()
    }

    fn has_avx2() -> bool {
        use std::arch::is_x86_feature_detected as has;
        has!("avx2") && has!("fma")
    }

    /// The registers' sums are the reference's, to the bit, for both orders, head sizes with
    /// and without the fast paths, and position counts around the slot counts.
    #[test]
    fn registers_sum_as_the_reference_does() {
        if !has_avx2() {
            eprintln!("skipped: no AVX2 and FMA here");
            return;
        }
        let heads = 3;
        for order in [SumOrder::Gemm, SumOrder::Dot] {
            for hd in [32, 48, 64, 80, 128, 136] {
                for n in [1, 5, 16, 17, 63, 64, 65, 130] {
                    let (q, k, v) = (values(heads * hd, 1), values(n * hd, 2), values(n * hd, 3));
                    let w = values(heads * n, 4);
                    let mut got = vec![f32::NAN; heads * n];
                    let mut want = vec![f32::NAN; heads * n];
                    // SAFETY: checked above.
                    unsafe {
                        Avx2::scores(order, &q, &k, hd, 0.125, &mut got);
                        Portable::scores(order, &q, &k, hd, 0.125, &mut want);
                    }
                    let bits = |x: &[f32]| x.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "scores {order:?} hd {hd} n {n}");
                    let len = heads * order.slots() * hd;
                    let (mut got, mut want) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                    // SAFETY: checked above.
                    unsafe {
                        Avx2::weighted_values(order, &w, &v, hd, &mut got);
                        Portable::weighted_values(order, &w, &v, hd, &mut want);
                    }
                    assert_eq!(bits(&got), bits(&want), "values {order:?} hd {hd} n {n}");
                }
            }
        }
    }
}
