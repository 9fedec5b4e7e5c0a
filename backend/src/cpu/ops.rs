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

#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `a = silu(g) * u` over one row (SwiGLU), compiled with FMA where the CPU has it: [`exp`]'s
/// fused multiply-adds are then single instructions rather than calls to the C library's `fmaf`.
pub fn swiglu(a: &mut [f32], g: &[f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA.
        return unsafe { swiglu_fma(a, g, u) };
    }
    swiglu_row(a, g, u)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn swiglu_fma(a: &mut [f32], g: &[f32], u: &[f32]) {
    swiglu_row(a, g, u)
}

#[inline(always)]
fn swiglu_row(a: &mut [f32], g: &[f32], u: &[f32]) {
    for ((a, g), u) in a.iter_mut().zip(g).zip(u) {
        *a = silu(*g) * u;
    }
}

/// `e^x` as llama.cpp's CPU backend computes it for SiLU and softmax (`ggml_v_expf`, after
/// ARM's optimized routine: `x = n ln2 + b`, a degree-5 polynomial in `b`, scaled by `2^n`;
/// under 2 ulp from the true value), so that activations follow llama.cpp's to the bit where
/// the rest of the arithmetic does. Inlined, so that a caller compiled with FMA gets it.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 0x1.8p23: adding it rounds to an integer.
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), SHIFT); // log2(e)
    let n = z - SHIFT;
    // b = x - n ln2, with ln2 in two parts.
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3f31_7200), x), // 0x1.62e4p-1
    );
    if n.abs() > 126.0 {
        // Outside the normal range: the library's answer (0 or infinity in practice).
        return x.exp();
    }
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010) // 0x1.0e4020p-7
        .mul_add(b, f32::from_bits(0x3d2b_9f17)) // 0x1.573e2ep-5
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3efffedb)), // 0x1.555e66p-3, 0x1.fffdb6p-2
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0)); // 0x1.ffffecp-1
                                                                  // j * 2^n, exactly (n is an integer in the normal exponent range).
    j * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_two_ulp_of_the_true_value() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (super::exp(x), (x as f64).exp());
            let ulp = (want as f32).to_bits().abs_diff(got.to_bits());
            assert!(ulp <= 2, "exp({x}) = {got}, want {want}");
            x += 0.0137;
        }
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(-200.0), 0.0);
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
    }
}
