//! Element-wise kernels: RMSNorm, RoPE (HF's half-split layout), SiLU.

use rayon::prelude::*;

/// RMSNorm of one row: `out = x / rms(x) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    // The sum of squares in f64, as llama.cpp takes it.
    let ms = (x.iter().map(|v| (v * v) as f64).sum::<f64>() / x.len() as f64) as f32;
    let scale = 1.0 / (ms + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * w;
    }
}

/// RMSNorm of each row of `x` (rows of `w.len()`).
pub fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    out.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .for_each(|(o, x)| rms_norm(x, w, eps, o));
}

/// RoPE's angle for each pair of dimensions at a position: `pos * inv_freq[i]`, computed as
/// llama.cpp computes it, so that the rotated queries and keys agree with llama.cpp's to the bit:
/// `pos * theta_scale^i` by repeated f32 multiplication (`theta_scale = base^(-2/head_dim)`),
/// then linear scaling's `1/factor` multiplied in, or Llama 3's per-pair factor divided out.
#[derive(Debug, Clone)]
pub struct RopeAngles {
    theta_scale: f32,
    freq_scale: f32,
    factors: Option<Vec<f32>>,
}

impl RopeAngles {
    /// The model's inverse frequencies, with its RoPE scaling applied.
    pub fn new(c: &model::LlamaConfig) -> RopeAngles {
        let freq_scale = match c.rope_scaling {
            Some(model::RopeScaling::Linear { factor }) => 1.0 / factor,
            _ => 1.0,
        };
        RopeAngles {
            theta_scale: c.rope_theta.powf(-2.0 / c.head_dim as f32),
            freq_scale,
            factors: c.rope_freq_factors(),
        }
    }

    /// Fills `cos_sin` (`head_dim` long) with the cosines of position `pos`'s angles, one per
    /// pair of dimensions, then their sines: what [`rope`] takes.
    pub fn at(&self, pos: usize, cos_sin: &mut [f32]) {
        let (cos, sin) = cos_sin.split_at_mut(cos_sin.len() / 2);
        let mut theta = pos as f32;
        for (i, (cos, sin)) in cos.iter_mut().zip(sin).enumerate() {
            let extrapolated = match &self.factors {
                Some(f) => theta / f[i],
                None => theta,
            };
            let angle = self.freq_scale * extrapolated;
            (*cos, *sin) = (angle.cos(), angle.sin());
            theta *= self.theta_scale;
        }
    }
}

/// Rotates each of `heads` heads of `x` (laid out head after head) by the angles whose cosines
/// and sines `cos_sin` holds ([`RopeAngles::at`]): HF's `rotate_half` form, pairing dimension
/// `i` with `i + head_dim/2`. Each output is one product fused with the other's rounded
/// product, as llama.cpp's compiled rotation is.
pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, cos_sin: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA.
        return unsafe { rope_fma(x, heads, head_dim, cos_sin) };
    }
    rope_heads(x, heads, head_dim, cos_sin)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn rope_fma(x: &mut [f32], heads: usize, head_dim: usize, cos_sin: &[f32]) {
    rope_heads(x, heads, head_dim, cos_sin)
}

#[inline(always)]
fn rope_heads(x: &mut [f32], heads: usize, head_dim: usize, cos_sin: &[f32]) {
    let half = head_dim / 2;
    let (cos, sin) = cos_sin.split_at(half);
    for head in x.chunks_exact_mut(head_dim).take(heads) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (sin, cos) = (sin[i], cos[i]);
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1.mul_add(cos, -(x2 * sin));
            b[i] = x1.mul_add(sin, x2 * cos);
        }
    }
}

/// SiLU: `x * sigmoid(x)`.
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
/// the rest of the arithmetic does. Inlined and without branches, so that a caller compiled
/// with FMA gets it, in vectors.
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
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010) // 0x1.0e4020p-7
        .mul_add(b, f32::from_bits(0x3d2b_9f17)) // 0x1.573e2ep-5
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3efffedb)), // 0x1.555e66p-3, 0x1.fffdb6p-2
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0)); // 0x1.ffffecp-1
    scale_by_power_of_two(j, n)
}

/// `j * 2^n` for `j` in `[0.7, 1.5]` and an integral `n`, rounded once, as AVX-512's `scalef`
/// (which `ggml_v_expf` ends with) rounds it, including to a subnormal or to infinity; past
/// `|n| > 192`, zero or infinity by `n`'s sign, as `ggml_v_expf` answers there. Two exact
/// steps: `j * 2^n1` with `n1` clamped to where the product stays normal, then one rounding
/// in the multiplication by the rest.
#[inline(always)]
fn scale_by_power_of_two(j: f32, n: f32) -> f32 {
    // 2^k for an integral k in the normal exponents, built from k's bits: adding 1.5 * 2^23
    // puts k in the low bits of the sum's mantissa (a float-to-integer cast would not
    // vectorize).
    const SHIFT: f32 = 12_582_912.0;
    let pow2 = |k: f32| {
        let k = (k + SHIFT).to_bits().wrapping_sub(SHIFT.to_bits());
        f32::from_bits(k.wrapping_add(127) << 23)
    };
    // max and min rather than clamp: they vectorize, where clamp (which keeps a NaN) measured
    // twice as slow; a NaN `x` is still NaN, carried by `j`.
    #[allow(clippy::manual_clamp)]
    let (n1, n2) = {
        let n1 = n.max(-125.0).min(127.0);
        (n1, (n - n1).max(-126.0).min(127.0))
    };
    let scaled = j * pow2(n1) * pow2(n2);
    let beyond = if n > 0.0 { f32::INFINITY } else { 0.0 };
    if n.abs() > 192.0 {
        beyond
    } else {
        scaled
    }
}

/// `x += y`, element by element.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::{rope, RopeAngles};

    /// HF's RoPE: angle `pos / base^(2i/d)` (scaled as the config says), in f64.
    fn hf_angle(c: &model::LlamaConfig, pos: usize, i: usize) -> f64 {
        let unscaled = 1.0 / (c.rope_theta as f64).powf(2.0 * i as f64 / c.head_dim as f64);
        let scaled = match c.rope_scaling {
            None => unscaled,
            Some(model::RopeScaling::Linear { factor }) => unscaled / factor as f64,
            // The band-wise scaling's frequencies are the config's own (tested with it).
            Some(model::RopeScaling::Llama3 { .. }) => c.rope_inv_freq()[i] as f64,
        };
        pos as f64 * scaled
    }

    #[test]
    fn rope_angles_are_hf_angles_to_float_precision() {
        let mut c = model::testing::tiny_config();
        c.head_dim = 64;
        c.rope_theta = 100_000.0;
        let scalings = [
            None,
            Some(model::RopeScaling::Linear { factor: 4.0 }),
            Some(model::RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64.0,
            }),
        ];
        for scaling in scalings {
            c.rope_scaling = scaling;
            let angles = RopeAngles::new(&c);
            for pos in [0, 1, 17, 500, 4095] {
                let mut cos_sin = vec![0f32; 64];
                angles.at(pos, &mut cos_sin);
                for i in 0..32 {
                    let want = hf_angle(&c, pos, i);
                    // f32 angles: a few ulp of the angle per multiplication of the power.
                    let tolerance = 4e-6 * want + 1e-6;
                    let (cos, sin) = (cos_sin[i] as f64, cos_sin[32 + i] as f64);
                    assert!(
                        (cos - want.cos()).abs() <= tolerance
                            && (sin - want.sin()).abs() <= tolerance,
                        "{:?} pos {pos} pair {i}: ({cos}, {sin}) vs angle {want}",
                        c.rope_scaling
                    );
                }
            }
        }
    }

    #[test]
    fn rope_rotates_each_pair_by_its_angle() {
        // Head dim 4: pairs (0, 2) and (1, 3); angles 0.5 and 2.0.
        let cos_sin = [0.5f32.cos(), 2f32.cos(), 0.5f32.sin(), 2f32.sin()];
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope(&mut x, 1, 4, &cos_sin);
        let rotate =
            |a: f64, b: f64, t: f64| (a * t.cos() - b * t.sin(), a * t.sin() + b * t.cos());
        let ((a0, a2), (a1, a3)) = (rotate(1.0, 3.0, 0.5), rotate(2.0, 4.0, 2.0));
        for (got, want) in x.iter().zip([a0, a1, a2, a3]) {
            assert!((*got as f64 - want).abs() < 1e-6, "{x:?}");
        }
    }

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
        assert_eq!(super::exp(89.0), f32::INFINITY);
        assert_eq!(super::exp(200.0), f32::INFINITY);
        assert!(super::exp(f32::NAN).is_nan());
    }

    /// Below `e^-87` the result is subnormal: rounded once from the polynomial's value, so still
    /// within two units of the last place (subnormal bit patterns count up as the values do),
    /// and zero where even the smallest subnormal is more than twice the true value.
    #[test]
    fn exp_rounds_into_the_subnormals_once() {
        let mut x = -104.0f32;
        while x < -87.0 {
            let (got, want) = (super::exp(x), (x as f64).exp());
            let ulp = (want as f32).to_bits().abs_diff(got.to_bits());
            assert!(ulp <= 2, "exp({x}) = {got:e}, want {want:e}");
            x += 0.0137;
        }
        assert_eq!(super::exp(-104.5), 0.0);
    }
}
