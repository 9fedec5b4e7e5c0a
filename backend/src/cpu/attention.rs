//! Paged attention on the CPU: K/V writes into blocks and causal attention over block tables,
//! with grouped-query heads, over a cache of f32 or f16 ([`KvElement`]).

use half::{bf16, f16};
use rayon::prelude::*;

use super::summation::{self, SumOrder};

/// An element of the KV cache.
///
/// An f16 cache is what llama.cpp and vLLM keep for a half-precision model by default, and
/// half the bytes of f32. With it, attention computes as llama.cpp's does: the query and the
/// softmax weights are rounded to f16 before they meet the cache (llama.cpp converts a
/// matmul's right-hand side to the left-hand side's f16), and the exact products are summed
/// in f32 in llama.cpp's orders ([`super::summation`]).
pub trait KvElement: Copy + Default + Send + Sync + 'static {
    /// `n` zeros, allocated zeroed so that pages no one writes are never touched.
    fn zeroed(n: usize) -> Vec<Self>;
    fn store(x: f32) -> Self;
    /// `x` as the operand that meets a cache row.
    fn operand(x: f32) -> f32;
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
    fn operand(x: f32) -> f32 {
        x
    }
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
    fn operand(x: f32) -> f32 {
        f16::from_f32(x).to_f32()
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

/// f16 cache rows widened eight at a time with F16C (`vcvtph2ps`).
#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::*;

    use half::f16;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("f16c")
    }

    /// Inlined into the attention kernel, which is compiled with F16C: a call per cache row
    /// would cost more than the conversion.
    ///
    /// # Safety
    /// The CPU has F16C and `out.len() >= row.len()`.
    #[inline(always)]
    pub unsafe fn widen(row: &[f16], out: &mut [f32]) {
        let n = row.len();
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

/// Which of a head's dimensions (in HF's order, RoPE pairing `i` with `i + head_dim/2`) the
/// cache keeps at index `i`: the pairs interleaved, `0, h, 1, h + 1, ...`, the order of
/// llama.cpp's rows (GGUF's Q and K weights are stored so). K is cached, and the query meets
/// it, in this order, so that `q·k`'s products are summed in llama.cpp's order; V, and the
/// value of the product, are unchanged.
#[inline(always)]
fn interleaved(i: usize, head_dim: usize) -> usize {
    if i.is_multiple_of(2) {
        i / 2
    } else {
        head_dim / 2 + i / 2
    }
}

/// Writes each row's K (its dimensions [`interleaved`]) and V (from the fused QKV
/// activations) into its slot.
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
        for (c, head) in k_cache[at..at + kv_w]
            .chunks_exact_mut(g.head_dim)
            .zip(r[q_w..q_w + kv_w].chunks_exact(g.head_dim))
        {
            for (i, c) in c.iter_mut().enumerate() {
                *c = T::store(head[interleaved(i, g.head_dim)]);
            }
        }
        for (c, x) in v_cache[at..at + kv_w].iter_mut().zip(&r[q_w + kv_w..]) {
            *c = T::store(*x);
        }
    }
}

/// For every row and head: softmax(q·K^T / sqrt(d)) V over positions `0..=pos` of its sequence,
/// summed in llama.cpp's order for a step of this many rows.
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
    let orders = Orders {
        scores: SumOrder::for_step(rows.len(), hd),
        // llama.cpp pads the positions to a multiple of 256, so whole registers.
        values: SumOrder::for_step(rows.len(), 0),
    };
    let attend = attend_kernel::<T>();
    out.par_chunks_mut(g.n_heads * hd)
        .zip(rows.par_iter())
        .enumerate()
        .for_each(|(i, (o, row))| {
            let q_all = &qkv[i * width..i * width + g.n_heads * hd];
            attend(
                q_all,
                tables[row.seq],
                row.pos + 1,
                g,
                orders,
                k_cache,
                v_cache,
                o,
            );
        });
}

/// The summation orders of the two products: `q·K` over the head's dimensions, and
/// `softmax·V` over the positions.
#[derive(Debug, Clone, Copy)]
struct Orders {
    scores: SumOrder,
    values: SumOrder,
}

type AttendFn<T> = fn(&[f32], &[u32], usize, Geometry, Orders, &[T], &[T], &mut [f32]);

/// The row kernel, compiled for AVX2, FMA and F16C when the CPU has them (the same code; the
/// wider instructions roughly halve attention time).
fn attend_kernel<T: KvElement>() -> AttendFn<T> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            return |q, t, n, g, s, k, v, o| unsafe { attend_avx2(q, t, n, g, s, k, v, o) };
        }
    }
    attend_row
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2<T: KvElement>(
    q: &[f32],
    table: &[u32],
    n: usize,
    g: Geometry,
    orders: Orders,
    k: &[T],
    v: &[T],
    o: &mut [f32],
) {
    attend_row(q, table, n, g, orders, k, v, o)
}

/// Attention of one row (all its heads) over the first `n` positions of its sequence, a KV
/// head at a time: each cache row is widened once for the query heads that share it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_row<T: KvElement>(
    q_all: &[f32],
    table: &[u32],
    n: usize,
    g: Geometry,
    orders: Orders,
    k_cache: &[T],
    v_cache: &[T],
    o: &mut [f32],
) {
    let hd = g.head_dim;
    let group = g.n_heads / g.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let slots = orders.values.slots();
    // Taken out of the thread's slot and put back at the end, rather than used inside a
    // closure: a closure would not be compiled with this kernel's target features.
    let mut scratch = SCRATCH.take();
    {
        let [q, scores, row, acc, lanes] = scratch.take([
            group * hd,
            group * n,
            hd,
            // Per query head, the weighted sum of V's rows by slot (position `j` into
            // `j % slots`).
            group * slots * hd,
            summation::LANES * hd,
        ]);
        // Slots no position reaches hold zeros for the reduction (they may hold another
        // row's sums).
        let used = n.min(slots);
        for acc in acc.chunks_exact_mut(slots * hd) {
            acc[used * hd..].fill(0.0);
        }
        for kvh in 0..g.n_kv_heads {
            let heads = kvh * group * hd..(kvh + 1) * group * hd;
            for (q, head) in q
                .chunks_exact_mut(hd)
                .zip(q_all[heads.clone()].chunks_exact(hd))
            {
                for (i, q) in q.iter_mut().enumerate() {
                    *q = T::operand(head[interleaved(i, hd)]);
                }
            }
            for j in 0..n {
                let at = g.slot(table, j) + kvh * hd;
                T::widen(&k_cache[at..at + hd], row);
                for (h, q) in q.chunks_exact(hd).enumerate() {
                    scores[h * n + j] = summation::dot(orders.scores, q, row) * scale;
                }
            }
            for s in scores.chunks_exact_mut(n) {
                let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                for x in s.iter_mut() {
                    *x = super::ops::exp(*x - max);
                }
                let inv = (1.0 / softmax_sum(s)) as f32;
                for x in s.iter_mut() {
                    *x = T::operand(*x * inv);
                }
            }
            for j in 0..n {
                let at = g.slot(table, j) + kvh * hd;
                T::widen(&v_cache[at..at + hd], row);
                // `j % slots`, slots being a power of two (a division here costs more than
                // the row).
                let slot = j & (slots - 1);
                for h in 0..group {
                    let w = scores[h * n + j];
                    let a = &mut acc[(h * slots + slot) * hd..][..hd];
                    if j < slots {
                        // A slot's first product, added to zero as an accumulator starting
                        // at zero would (0 + -0 is +0), without zeroing the slot first.
                        for (a, v) in a.iter_mut().zip(row.iter()) {
                            *a = 0.0 + w * v;
                        }
                    } else {
                        for (a, v) in a.iter_mut().zip(row.iter()) {
                            *a += w * v;
                        }
                    }
                }
            }
            for (o, acc) in o[heads]
                .chunks_exact_mut(hd)
                .zip(acc.chunks_exact(slots * hd))
            {
                summation::reduce_columns(orders.values, acc, lanes, o);
            }
        }
    }
    SCRATCH.set(scratch);
}

/// Buffers the attention of a row reuses: one set per thread, grown as needed.
#[derive(Default)]
struct Scratch(Vec<f32>);

impl Scratch {
    /// Disjoint buffers of these lengths (contents unspecified).
    fn take<const N: usize>(&mut self, lens: [usize; N]) -> [&mut [f32]; N] {
        let total = lens.iter().sum();
        if self.0.len() < total {
            self.0.resize(total, 0.0);
        }
        let mut rest = &mut self.0[..];
        lens.map(|len| {
            let (buf, tail) = std::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            buf
        })
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
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
}
