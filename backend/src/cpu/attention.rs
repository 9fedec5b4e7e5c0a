//! Paged attention on the CPU: K/V writes into blocks and causal attention over block tables,
//! with grouped-query heads, over a cache of f32 or f16 ([`KvElement`]).

use half::f16;
use rayon::prelude::*;

/// An element of the KV cache.
///
/// An f16 cache is what llama.cpp and vLLM keep for a half-precision model by default, and
/// half the bytes of f32. With it, attention computes as llama.cpp's does: the query and the
/// softmax weights are rounded to f16 before they meet the cache (llama.cpp converts a
/// matmul's right-hand side to the left-hand side's f16), and the products are summed in f32.
pub trait KvElement: Copy + Default + Send + Sync + 'static {
    /// `n` zeros, allocated zeroed so that pages no one writes are never touched.
    fn zeroed(n: usize) -> Vec<Self>;
    fn store(x: f32) -> Self;
    /// `src` widened into `out`.
    fn widen(src: &[Self], out: &mut [f32]);
    /// `x` as the operand that meets a cache row.
    fn operand(x: f32) -> f32;
}

impl KvElement for f32 {
    fn zeroed(n: usize) -> Vec<f32> {
        vec![0f32; n]
    }
    fn store(x: f32) -> f32 {
        x
    }
    fn widen(src: &[f32], out: &mut [f32]) {
        out.copy_from_slice(src);
    }
    fn operand(x: f32) -> f32 {
        x
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
    fn widen(src: &[f16], out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(out);
    }
    fn operand(x: f32) -> f32 {
        f16::from_f32(x).to_f32()
    }
}

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
pub fn write_kv<T: KvElement>(
    qkv: &[f32],
    rows: &[Row],
    tables: &[&[u32]],
    g: Geometry,
    k_cache: &mut [T],
    v_cache: &mut [T],
) {
    let (q_w, kv_w) = (g.n_heads * g.head_dim, g.n_kv_heads * g.head_dim);
    let width = q_w + 2 * kv_w;
    for (r, row) in qkv.chunks_exact(width).zip(rows) {
        let at = g.slot(tables[row.seq], row.pos);
        for (c, x) in k_cache[at..at + kv_w].iter_mut().zip(&r[q_w..q_w + kv_w]) {
            *c = T::store(*x);
        }
        for (c, x) in v_cache[at..at + kv_w].iter_mut().zip(&r[q_w + kv_w..]) {
            *c = T::store(*x);
        }
    }
}

/// For every row and head: softmax(q·K^T / sqrt(d)) V over positions `0..=pos` of its sequence.
pub fn paged_attention<T: KvElement>(
    qkv: &[f32],
    rows: &[Row],
    tables: &[&[u32]],
    g: Geometry,
    k_cache: &[T],
    v_cache: &[T],
    out: &mut [f32],
) {
    let hd = g.head_dim;
    let width = (g.n_heads + 2 * g.n_kv_heads) * hd;
    let attend = attend_kernel::<T>();
    out.par_chunks_mut(g.n_heads * hd)
        .zip(rows.par_iter())
        .enumerate()
        .for_each(|(i, (o, row))| {
            let q_all = &qkv[i * width..i * width + g.n_heads * hd];
            attend(q_all, tables[row.seq], row.pos + 1, g, k_cache, v_cache, o);
        });
}

type AttendFn<T> = fn(&[f32], &[u32], usize, Geometry, &[T], &[T], &mut [f32]);

/// The row kernel, compiled for AVX2+FMA when the CPU has them (the same code; the wider
/// instructions roughly halve attention time).
fn attend_kernel<T: KvElement>() -> AttendFn<T> {
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
unsafe fn attend_avx2<T: KvElement>(
    q: &[f32],
    table: &[u32],
    n: usize,
    g: Geometry,
    k: &[T],
    v: &[T],
    o: &mut [f32],
) {
    attend_row(q, table, n, g, k, v, o)
}

/// Attention of one row (all its heads) over the first `n` positions of its sequence.
#[inline(always)]
fn attend_row<T: KvElement>(
    q_all: &[f32],
    table: &[u32],
    n: usize,
    g: Geometry,
    k_cache: &[T],
    v_cache: &[T],
    o: &mut [f32],
) {
    let hd = g.head_dim;
    let group = g.n_heads / g.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores = vec![0f32; n];
    let (mut q, mut cached) = (vec![0f32; hd], vec![0f32; hd]);
    for head in 0..g.n_heads {
        let kvh = head / group;
        for (q, x) in q.iter_mut().zip(&q_all[head * hd..(head + 1) * hd]) {
            *q = T::operand(*x);
        }
        let mut max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate() {
            let at = g.slot(table, j) + kvh * hd;
            T::widen(&k_cache[at..at + hd], &mut cached);
            *s = dot(&q, &cached) * scale;
            max = max.max(*s);
        }
        // As llama.cpp: the sum in f64, then the weights scaled by its reciprocal.
        let mut sum = 0f64;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s as f64;
        }
        let inv = (1.0 / sum) as f32;
        let o = &mut o[head * hd..(head + 1) * hd];
        o.fill(0.0);
        for (j, s) in scores.iter().enumerate() {
            let at = g.slot(table, j) + kvh * hd;
            T::widen(&v_cache[at..at + hd], &mut cached);
            let w = T::operand(s * inv);
            for (o, v) in o.iter_mut().zip(&cached) {
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
