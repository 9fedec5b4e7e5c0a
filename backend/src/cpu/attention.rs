//! Paged attention on the CPU: K/V writes into blocks and causal attention over block tables,
//! with grouped-query heads, over a cache of f32 or f16 ([`KvElement`]).

use half::{bf16, f16};
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
    /// `x` as the operand that meets a cache row.
    fn operand(x: f32) -> f32;
    /// `q · k` over one cache row, summed in f32.
    fn dot(q: &[f32], k: &[Self]) -> f32;
    /// `o += w v` over one cache row.
    fn axpy(w: f32, v: &[Self], o: &mut [f32]);
}

impl KvElement for f32 {
    fn zeroed(n: usize) -> Vec<f32> {
        vec![0f32; n]
    }
    fn store(x: f32) -> f32 {
        x
    }
    fn operand(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        dot(q, k)
    }
    #[inline(always)]
    fn axpy(w: f32, v: &[f32], o: &mut [f32]) {
        for (o, v) in o.iter_mut().zip(v) {
            *o += w * v;
        }
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
    fn operand(x: f32) -> f32 {
        f16::from_f32(x).to_f32()
    }
    #[inline(always)]
    fn dot(q: &[f32], k: &[f16]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if f16c::available() {
            // SAFETY: the CPU has the features; the slices are read within their lengths.
            return unsafe { f16c::dot(q, k) };
        }
        q.iter().zip(k).map(|(q, k)| q * k.to_f32()).sum()
    }
    #[inline(always)]
    fn axpy(w: f32, v: &[f16], o: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if f16c::available() {
            // SAFETY: as `dot`.
            return unsafe { f16c::axpy(w, v, o) };
        }
        for (o, v) in o.iter_mut().zip(v) {
            *o += w * v.to_f32();
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
    fn operand(x: f32) -> f32 {
        bf16::from_f32(x).to_f32()
    }
    #[inline(always)]
    fn dot(q: &[f32], k: &[bf16]) -> f32 {
        let mut acc = [0f32; 8];
        for (q, k) in q.chunks_exact(8).zip(k.chunks_exact(8)) {
            for i in 0..8 {
                acc[i] += q[i] * f32::from_bits((k[i].to_bits() as u32) << 16);
            }
        }
        let tail = q.len() / 8 * 8;
        let rest: f32 = q[tail..]
            .iter()
            .zip(&k[tail..])
            .map(|(q, k)| q * k.to_f32())
            .sum();
        acc.iter().sum::<f32>() + rest
    }
    #[inline(always)]
    fn axpy(w: f32, v: &[bf16], o: &mut [f32]) {
        for (o, v) in o.iter_mut().zip(v) {
            *o += w * f32::from_bits((v.to_bits() as u32) << 16);
        }
    }
}

/// f16 cache rows widened eight at a time with F16C (`vcvtph2ps`) as they are read.
#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::*;

    use half::f16;

    pub fn available() -> bool {
        use std::arch::is_x86_feature_detected as has;
        has!("avx2") && has!("fma") && has!("f16c")
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(k: &[f16], i: usize) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i) as *const __m128i))
    }

    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(q: &[f32], k: &[f16]) -> f32 {
        let n = q.len().min(k.len());
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 16 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), load(k, i), acc[0]);
            acc[1] = _mm256_fmadd_ps(
                _mm256_loadu_ps(q.as_ptr().add(i + 8)),
                load(k, i + 8),
                acc[1],
            );
            i += 16;
        }
        if i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), load(k, i), acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(acc[0], acc[1]);
        let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        let mut sum = _mm_cvtss_f32(s);
        for j in i..n {
            sum += q[j] * k[j].to_f32();
        }
        sum
    }

    /// # Safety
    /// As [`dot`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy(w: f32, v: &[f16], o: &mut [f32]) {
        let n = o.len().min(v.len());
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        while i + 8 <= n {
            let at = o.as_mut_ptr().add(i);
            _mm256_storeu_ps(at, _mm256_fmadd_ps(wv, load(v, i), _mm256_loadu_ps(at)));
            i += 8;
        }
        for j in i..n {
            o[j] += w * v[j].to_f32();
        }
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
    let mut q = vec![0f32; hd];
    for head in 0..g.n_heads {
        let kvh = head / group;
        for (q, x) in q.iter_mut().zip(&q_all[head * hd..(head + 1) * hd]) {
            *q = T::operand(*x);
        }
        let mut max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate() {
            let at = g.slot(table, j) + kvh * hd;
            *s = T::dot(&q, &k_cache[at..at + hd]) * scale;
            max = max.max(*s);
        }
        for s in scores.iter_mut() {
            *s = super::ops::exp(*s - max);
        }
        let inv = (1.0 / softmax_sum(&scores)) as f32;
        let o = &mut o[head * hd..(head + 1) * hd];
        o.fill(0.0);
        for (j, s) in scores.iter().enumerate() {
            let at = g.slot(table, j) + kvh * hd;
            T::axpy(T::operand(s * inv), &v_cache[at..at + hd], o);
        }
    }
}

/// The sum of a softmax row as llama.cpp's AVX-512 build takes it: in f64 over sums of 16
/// values (its rows are padded with masked zeros to a multiple of 16), each added pairwise in
/// f32 as `_mm512_reduce_add_ps` does. The weights are then scaled by the sum's reciprocal.
fn softmax_sum(e: &[f32]) -> f64 {
    e.chunks(16)
        .map(|c| {
            let mut v = [0f32; 16];
            v[..c.len()].copy_from_slice(c);
            let mut width = 8;
            while width > 0 {
                for i in 0..width {
                    v[i] += v[i + width];
                }
                width /= 2;
            }
            v[0] as f64
        })
        .sum()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rows_are_read_as_their_f32_values() {
        let q: Vec<f32> = (0..67).map(|i| (i as f32 * 0.37).sin()).collect();
        let k: Vec<bf16> = (0..67)
            .map(|i| bf16::from_f32((i as f32 * 0.11).cos()))
            .collect();
        let wide: Vec<f32> = k.iter().map(|k| k.to_f32()).collect();
        let want: f64 = q
            .iter()
            .zip(&wide)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let got = <bf16 as KvElement>::dot(&q, &k);
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        let mut o = q.clone();
        <bf16 as KvElement>::axpy(0.5, &k, &mut o);
        for ((o, q), k) in o.iter().zip(&q).zip(&wide) {
            assert!((o - (q + 0.5 * k)).abs() < 1e-6);
        }
    }

    #[test]
    fn f16_rows_are_read_as_their_f32_values() {
        // 67 elements: two 16-wide steps, one 8-wide, three left over.
        let q: Vec<f32> = (0..67).map(|i| (i as f32 * 0.37).sin()).collect();
        let k: Vec<f16> = (0..67)
            .map(|i| f16::from_f32((i as f32 * 0.11).cos()))
            .collect();
        let wide: Vec<f32> = k.iter().map(|k| k.to_f32()).collect();
        let want: f64 = q
            .iter()
            .zip(&wide)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let got = <f16 as KvElement>::dot(&q, &k);
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        let mut o = q.clone();
        <f16 as KvElement>::axpy(0.5, &k, &mut o);
        for ((o, q), k) in o.iter().zip(&q).zip(&wide) {
            assert!((o - (q + 0.5 * k)).abs() < 1e-6);
        }
    }
}
