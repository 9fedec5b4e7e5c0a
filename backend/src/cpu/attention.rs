//! Paged attention on the CPU: K/V writes into blocks and causal attention over block tables,
//! with grouped-query heads.

use rayon::prelude::*;

/// One new token of the step: its sequence (index into the batch) and position.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub seq: usize,
    pub pos: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub block_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Geometry {
    /// Offset of (position `pos` of the sequence with `table`, kv head 0) in a layer's cache.
    #[inline]
    fn slot(&self, table: &[u32], pos: usize) -> usize {
        let block = table[pos / self.block_size] as usize;
        (block * self.block_size + pos % self.block_size) * self.n_kv_heads * self.head_dim
    }
}

/// Writes each row's K and V (from the fused QKV activations) into its slot.
pub fn write_kv(
    qkv: &[f32],
    rows: &[Row],
    tables: &[&[u32]],
    g: Geometry,
    k_cache: &mut [f32],
    v_cache: &mut [f32],
) {
    let (q_w, kv_w) = (g.n_heads * g.head_dim, g.n_kv_heads * g.head_dim);
    let width = q_w + 2 * kv_w;
    for (r, row) in qkv.chunks_exact(width).zip(rows) {
        let at = g.slot(tables[row.seq], row.pos);
        k_cache[at..at + kv_w].copy_from_slice(&r[q_w..q_w + kv_w]);
        v_cache[at..at + kv_w].copy_from_slice(&r[q_w + kv_w..]);
    }
}

/// For every row and head: softmax(q·K^T / sqrt(d)) V over positions `0..=pos` of its sequence.
pub fn paged_attention(
    qkv: &[f32],
    rows: &[Row],
    tables: &[&[u32]],
    g: Geometry,
    k_cache: &[f32],
    v_cache: &[f32],
    out: &mut [f32],
) {
    let hd = g.head_dim;
    let width = (g.n_heads + 2 * g.n_kv_heads) * hd;
    let attend = attend_kernel();
    out.par_chunks_mut(g.n_heads * hd)
        .zip(rows.par_iter())
        .enumerate()
        .for_each(|(i, (o, row))| {
            let q_all = &qkv[i * width..i * width + g.n_heads * hd];
            attend(q_all, tables[row.seq], row.pos + 1, g, k_cache, v_cache, o);
        });
}

type AttendFn = fn(&[f32], &[u32], usize, Geometry, &[f32], &[f32], &mut [f32]);

/// The row kernel, compiled for AVX2+FMA when the CPU has them (the same code; the wider
/// instructions roughly halve attention time).
fn attend_kernel() -> AttendFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return |q, t, n, g, k, v, o| unsafe { attend_avx2(q, t, n, g, k, v, o) };
        }
    }
    attend_row
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    q: &[f32],
    table: &[u32],
    n: usize,
    g: Geometry,
    k: &[f32],
    v: &[f32],
    o: &mut [f32],
) {
    attend_row(q, table, n, g, k, v, o)
}

/// Attention of one row (all its heads) over the first `n` positions of its sequence.
#[inline(always)]
fn attend_row(
    q_all: &[f32],
    table: &[u32],
    n: usize,
    g: Geometry,
    k_cache: &[f32],
    v_cache: &[f32],
    o: &mut [f32],
) {
    let hd = g.head_dim;
    let group = g.n_heads / g.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores = vec![0f32; n];
    for head in 0..g.n_heads {
        let kvh = head / group;
        let q = &q_all[head * hd..(head + 1) * hd];
        let mut max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate() {
            let at = g.slot(table, j) + kvh * hd;
            *s = dot(q, &k_cache[at..at + hd]) * scale;
            max = max.max(*s);
        }
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let o = &mut o[head * hd..(head + 1) * hd];
        o.fill(0.0);
        for (j, s) in scores.iter().enumerate() {
            let at = g.slot(table, j) + kvh * hd;
            let w = s / sum;
            for (o, v) in o.iter_mut().zip(&v_cache[at..at + hd]) {
                *o += w * v;
            }
        }
    }
}

#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise without reassociating.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}
