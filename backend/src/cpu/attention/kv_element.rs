//! What the KV cache stores (f32, f16 or bf16) and how it becomes f32.
//!
//! What the KV cache stores: f32, f16 or bf16, and how a cache row and the operands that meet it
//! become f32.

use half::{bf16, f16};

/// An element of the KV cache.
///
/// An f16 cache is what llama.cpp and vLLM keep for a half-precision model by default, and
/// half the bytes of f32. With it, attention computes as llama.cpp's does: the query and the
/// softmax weights are rounded to f16 before they meet the cache (llama.cpp converts a
/// matmul's right-hand side to the left-hand side's f16), and the exact products are summed
/// in f32 in llama.cpp's orders (`crate::cpu::summation`).
pub trait KvElement: Copy + Default + Send + Sync + 'static {
    /// `n` zeros, allocated zeroed so that pages no one writes are never touched.
    fn zeroed(n: usize) -> Vec<Self>;
    /// Rounds an f32 to this element type.
    fn store(x: f32) -> Self;
    /// `x` as the operand that meets a cache row: rounded to the element's precision.
    fn operand(x: f32) -> f32;
    /// [`operand`](Self::operand) of each of `xs`, in place.
    #[inline(always)]
    fn operands(xs: &mut [f32]) {
        for x in xs {
            *x = Self::operand(*x);
        }
    }
    /// A cache row as f32.
    fn widen(row: &[Self], out: &mut [f32]);
}

impl KvElement for f32 {
    fn zeroed(n: usize) -> Vec<f32> {
        vec![0f32; n]
    }
    fn store(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn operand(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn operands(_: &mut [f32]) {}
    #[inline(always)]
    fn widen(row: &[f32], out: &mut [f32]) {
        out.copy_from_slice(row);
    }
}

impl KvElement for f16 {
    fn zeroed(n: usize) -> Vec<f16> {
        use half::vec::HalfBitsVecExt;
        vec![0u16; n].reinterpret_into()
    }
    fn store(x: f32) -> f16 {
        f16::from_f32(x)
    }
    #[inline(always)]
    fn operand(x: f32) -> f32 {
        f16::from_f32(x).to_f32()
    }
    #[inline(always)]
    fn operands(xs: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if f16c::available() {
            // SAFETY: the CPU has F16C.
            return unsafe { f16c::round(xs) };
        }
        for x in xs {
            *x = Self::operand(*x);
        }
    }
    #[inline(always)]
    fn widen(row: &[f16], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if f16c::available() {
            // SAFETY: the CPU has F16C; `out` is as long as `row`.
            return unsafe { f16c::widen(row, out) };
        }
        for (o, x) in out.iter_mut().zip(row) {
            *o = x.to_f32();
        }
    }
}

/// bf16 is f32 with the low 16 bits of its mantissa dropped: widening is a shift, which
/// the compiler vectorizes on its own. Operands are rounded to bf16 as for f16.
impl KvElement for bf16 {
    fn zeroed(n: usize) -> Vec<bf16> {
        use half::vec::HalfBitsVecExt;
        vec![0u16; n].reinterpret_into()
    }
    fn store(x: f32) -> bf16 {
        bf16::from_f32(x)
    }
    #[inline(always)]
    fn operand(x: f32) -> f32 {
        bf16::from_f32(x).to_f32()
    }
    #[inline(always)]
    fn widen(row: &[bf16], out: &mut [f32]) {
        for (o, x) in out.iter_mut().zip(row) {
            *o = f32::from_bits((x.to_bits() as u32) << 16);
        }
    }
}

/// f16 conversions eight at a time with F16C (`vcvtph2ps`, `vcvtps2ph`).
#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::*;

    use half::f16;

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("f16c")
    }

    /// Inlined into the attention kernel, which is compiled with F16C: a call per cache row
    /// would cost more than the conversion.
    ///
    /// # Safety
    /// The CPU has F16C and `out.len() >= row.len()`.
    #[inline(always)]
    pub(super) unsafe fn widen(row: &[f16], out: &mut [f32]) {
        let n = row.len();
        assert!(out.len() >= n);
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm_loadu_si128(row.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(x));
            i += 8;
        }
        for j in i..n {
            out[j] = row[j].to_f32();
        }
    }

    /// Each of `xs` rounded to the nearest f16 (ties to even, as `f16::from_f32`) and back.
    ///
    /// # Safety
    /// The CPU has F16C.
    #[inline(always)]
    pub(super) unsafe fn round(xs: &mut [f32]) {
        let n = xs.len();
        let mut i = 0;
        while i + 8 <= n {
            let p = xs.as_mut_ptr().add(i);
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p));
            _mm256_storeu_ps(p, _mm256_cvtph_ps(h));
            i += 8;
        }
        for x in &mut xs[i..] {
            *x = f16::from_f32(*x).to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Widened rows are the elements' own values: 67 elements, so the F16C path's eight-wide
    /// steps and its tail are both taken.
    fn widens_exactly<T: KvElement>(from: fn(f32) -> T, to: fn(T) -> f32) {
        let row: Vec<T> = (0..67).map(|i| from((i as f32 * 0.11).cos())).collect();
        let mut out = vec![0f32; 67];
        T::widen(&row, &mut out);
        for (o, x) in out.iter().zip(&row) {
            assert_eq!(o.to_bits(), to(*x).to_bits());
        }
    }

    #[test]
    fn cache_rows_widen_to_their_values() {
        widens_exactly::<f16>(f16::from_f32, f16::to_f32);
        widens_exactly::<bf16>(bf16::from_f32, bf16::to_f32);
        widens_exactly::<f32>(|x| x, |x| x);
    }

    /// Operands round as the element type's own conversion rounds (to nearest, ties to even):
    /// values at and between f16's halfway points, subnormals and out-of-range values.
    #[test]
    fn operands_round_as_the_element_type_does() {
        let mut xs: Vec<f32> = (0..67)
            .map(|i| (1.0 + i as f32 * 2f32.powi(-11) / 2.0) * if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        xs.extend([3e-8, 6e-5, 70000.0, -0.0, 1e-3 + 1e-7]);
        let mut rounded = xs.clone();
        f16::operands(&mut rounded);
        for (r, x) in rounded.iter().zip(&xs) {
            assert_eq!(r.to_bits(), f16::from_f32(*x).to_f32().to_bits(), "{x:e}");
        }
    }
}
