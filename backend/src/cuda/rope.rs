//! The RoPE cos/sin tables the `rope` kernel reads.
//!
//! The cos/sin tables the `rope` kernel reads, computed on the host from the model's inverse
//! frequencies (where Llama-3 and linear rope scaling are already applied, see
//! `LlamaConfig::rope_inv_freq`): row `pos` holds `cos(pos * inv_freq[i])` for each `i` below
//! head_dim/2, likewise sin. The same angles the CPU backend computes per token.

/// `(cos, sin)`, each `[max_positions, inv_freq.len()]` row-major.
pub fn tables(inv_freq: &[f32], max_positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(max_positions * half);
    let mut sin = Vec::with_capacity(max_positions * half);
    for pos in 0..max_positions {
        for f in inv_freq {
            let (s, c) = (pos as f32 * f).sin_cos();
            cos.push(c);
            sin.push(s);
        }
    }
    (cos, sin)
}

/// CTAs `rope_kv_write` gives each token: enough that each of its 128 threads takes about one
/// unit of work (8 pairs of a q or k head, or 8 values of v), at most 8; a batch-1 decode of
/// Llama-3.1-8B (40 heads of 8 units, and 128 of v) takes 4, the default model 1. At one CTA a
/// token the profile predicts the 8B step's 32 launches at 3.2 us each, bound by one thread's
/// chain of loads; at 4, at the 2 us a kernel takes at least.
pub fn ctas_per_token(shape: &crate::LayerShape) -> usize {
    const THREADS: usize = 128;
    let units = (shape.n_heads + shape.n_kv_heads) * (shape.head_dim / 2).div_ceil(8)
        + shape.n_kv_heads * shape.head_dim / 8;
    units.div_ceil(THREADS).clamp(1, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's rotation, on the host, from the tables: what `kernels/rope.cu` computes.
    fn rotate_with_tables(x: &mut [f32], head_dim: usize, pos: usize, cos: &[f32], sin: &[f32]) {
        let half = head_dim / 2;
        for head in x.chunks_exact_mut(head_dim) {
            for j in 0..half {
                let (c, s) = (cos[pos * half + j], sin[pos * half + j]);
                let (x1, x2) = (head[j], head[j + half]);
                head[j] = x1 * c - x2 * s;
                head[j + half] = x2 * c + x1 * s;
            }
        }
    }

    /// The CPU backend computes its angles as llama.cpp does (a product of f32 powers rather
    /// than `pos * inv_freq`), so the two agree to the angles' last bits: within `1e-6`
    /// relative to the angle, the larger for a larger position.
    #[test]
    fn tables_rotate_as_the_cpu_backend_does_with_llama3_scaling() {
        let mut config = model::testing::tiny_config();
        config.rope_scaling = Some(model::RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 32.0,
        });
        let inv_freq = config.rope_inv_freq();
        let head_dim = config.head_dim;
        let (cos, sin) = tables(&inv_freq, 64);
        let angles = crate::cpu::ops::RopeAngles::new(&config);
        for pos in [0, 1, 17, 63] {
            let x: Vec<f32> = (0..2 * head_dim).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut cos_sin = vec![0f32; head_dim];
            angles.at(pos, &mut cos_sin);
            let mut by_cpu = x.clone();
            crate::cpu::ops::rope(&mut by_cpu, 2, head_dim, &cos_sin);
            let mut by_tables = x;
            rotate_with_tables(&mut by_tables, head_dim, pos, &cos, &sin);
            let tolerance = 1e-6 * (pos as f32 + 1.0);
            for (a, b) in by_cpu.iter().zip(&by_tables) {
                assert!((a - b).abs() <= tolerance, "position {pos}: {a} vs {b}");
            }
        }
    }
}
