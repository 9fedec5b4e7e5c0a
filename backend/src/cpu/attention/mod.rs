//! Paged attention on the CPU: K/V writes into blocks and causal attention over block tables,
//! with grouped-query heads, over a cache of f32, f16 or bf16 ([`KvElement`]).

use rayon::prelude::*;

use super::summation::{self, SumOrder};
use head::HeadMath;
pub use kv_element::KvElement;

mod head;
mod kv_element;
#[cfg(target_arch = "x86_64")]
mod x86;

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

/// The row kernel, compiled for AVX2, FMA and F16C with [`HeadMath`] in registers when the CPU
/// has them, else the portable reference (the same sums, in the same order).
fn attend_kernel<T: KvElement>() -> AttendFn<T> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            return |q, t, n, g, s, k, v, o| unsafe { attend_avx2(q, t, n, g, s, k, v, o) };
        }
    }
    // SAFETY: the portable math needs nothing of the CPU.
    |q, t, n, g, s, k, v, o| unsafe { attend_row::<T, head::Portable>(q, t, n, g, s, k, v, o) }
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
    attend_row::<T, x86::Avx2>(q, table, n, g, orders, k, v, o)
}

/// Attention of one row (all its heads) over the first `n` positions of its sequence, a KV
/// head at a time: the head's cache rows are widened once for the query heads that share them.
///
/// # Safety
/// The CPU has what `M` needs.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_row<T: KvElement, M: HeadMath>(
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
        let [q, scores, k, v, acc, lanes] = scratch.take([
            group * hd,
            group * n,
            n * hd,
            n * hd,
            // Per query head, the weighted sum of V's rows by slot.
            group * slots * hd,
            summation::LANES * hd,
        ]);
        for kvh in 0..g.n_kv_heads {
            let heads = kvh * group * hd..(kvh + 1) * group * hd;
            for (q, head) in q
                .chunks_exact_mut(hd)
                .zip(q_all[heads.clone()].chunks_exact(hd))
            {
                for (i, q) in q.iter_mut().enumerate() {
                    *q = head[interleaved(i, hd)];
                }
            }
            T::operands(q);
            for (j, (k, v)) in k
                .chunks_exact_mut(hd)
                .zip(v.chunks_exact_mut(hd))
                .enumerate()
            {
                let at = g.slot(table, j) + kvh * hd;
                T::widen(&k_cache[at..at + hd], k);
                T::widen(&v_cache[at..at + hd], v);
            }
            M::scores(orders.scores, q, k, hd, scale, scores);
            for s in scores.chunks_exact_mut(n) {
                let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                for x in s.iter_mut() {
                    *x = super::ops::exp(*x - max);
                }
                let inv = (1.0 / softmax_sum(s)) as f32;
                for x in s.iter_mut() {
                    *x *= inv;
                }
                T::operands(s);
            }
            M::weighted_values(orders.values, scores, v, hd, acc);
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
