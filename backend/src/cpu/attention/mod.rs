//! Paged attention on the CPU: KV writes into blocks and causal attention over block tables.
//!
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
    /// Which sequence of the batch the query belongs to.
    pub seq: usize,
    /// The query's position in its sequence (it attends to positions `0..=pos`).
    pub pos: usize,
}

/// The shape of the paged KV cache and of the heads that read it.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (each serves `n_heads / n_kv_heads` query heads).
    pub n_kv_heads: usize,
    /// Width of one head.
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

/// Writes each row's K (its dimensions `interleaved`) and V (from the fused QKV
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
    let mut widened = WIDENED.take();
    let shared = widen_shared(rows, tables, g, k_cache, v_cache, &mut widened);
    out.par_chunks_mut(g.n_heads * hd)
        .zip(rows.par_iter())
        .enumerate()
        .for_each(|(i, (o, row))| {
            let q_all = &qkv[i * width..i * width + g.n_heads * hd];
            let keys = match shared.get(row.seq).copied().flatten() {
                Some((at, len)) => Keys::Widened {
                    k: &widened[at..at + g.n_kv_heads * len * hd],
                    v: &widened[at + g.n_kv_heads * len * hd..][..g.n_kv_heads * len * hd],
                    len,
                },
                None => Keys::Paged {
                    table: tables[row.seq],
                    k: k_cache,
                    v: v_cache,
                },
            };
            attend(q_all, keys, row.pos + 1, g, orders, o);
        });
    WIDENED.set(widened);
}

/// Where a row's keys and values come from.
#[derive(Clone, Copy)]
enum Keys<'a, T> {
    /// The paged cache: the row widens each position it reads.
    Paged {
        table: &'a [u32],
        k: &'a [T],
        v: &'a [T],
    },
    /// Its sequence's positions, widened once for all the sequence's rows of the step:
    /// `[kv head][position][dimension]`, `len` positions per head.
    Widened {
        k: &'a [f32],
        v: &'a [f32],
        len: usize,
    },
}

/// Most bytes of widened keys and values a step keeps (beyond that, rows widen for
/// themselves): 64 MiB, a few thousand positions of a large model.
const WIDENED_BYTES: usize = 64 << 20;

/// The positions of a step's sequences that have several rows in it (a prompt, or a chunk of
/// one), widened to f32 once and shared by those rows, where each row would otherwise widen
/// every position before it again: in a 512-token prefill, 131,000 widened rows per KV head
/// and layer instead of 512.
///
/// Widens into `buf` the positions of each such sequence, and says per sequence where its keys
/// start in `buf` and how many positions it holds (its values follow its keys).
fn widen_shared<T: KvElement>(
    rows: &[Row],
    tables: &[&[u32]],
    g: Geometry,
    k_cache: &[T],
    v_cache: &[T],
    buf: &mut Vec<f32>,
) -> Vec<Option<(usize, usize)>> {
    let hd = g.head_dim;
    let mut count = vec![0usize; tables.len()];
    let mut len = vec![0usize; tables.len()];
    for row in rows {
        count[row.seq] += 1;
        len[row.seq] = len[row.seq].max(row.pos + 1);
    }
    let mut at = vec![None; tables.len()];
    let mut total = 0;
    for seq in 0..tables.len() {
        let size = 2 * g.n_kv_heads * len[seq] * hd;
        if count[seq] > 1 && (total + size) * 4 <= WIDENED_BYTES {
            at[seq] = Some((total, len[seq]));
            total += size;
        }
    }
    buf.resize(total, 0.0);
    let mut rest = &mut buf[..];
    for (seq, at) in at.iter().enumerate() {
        let Some((_, n)) = *at else { continue };
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(2 * g.n_kv_heads * n * hd);
        rest = tail;
        // K's heads then V's, each `n` rows of one KV head: a task each.
        mine.par_chunks_mut(n * hd)
            .enumerate()
            .for_each(|(i, head)| {
                let (cache, kvh) = if i < g.n_kv_heads {
                    (k_cache, i)
                } else {
                    (v_cache, i - g.n_kv_heads)
                };
                widen_rows(cache, tables[seq], g, kvh, head);
            });
    }
    at
}

/// Positions `0..out.len() / head_dim` of KV head `kvh` from the paged `cache`, as f32 rows.
#[inline(always)]
fn widen_rows<T: KvElement>(cache: &[T], table: &[u32], g: Geometry, kvh: usize, out: &mut [f32]) {
    let hd = g.head_dim;
    for (j, row) in out.chunks_exact_mut(hd).enumerate() {
        let at = g.slot(table, j) + kvh * hd;
        T::widen(&cache[at..at + hd], row);
    }
}

thread_local! {
    /// The step's widened positions, kept for the next step of the calling thread.
    static WIDENED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The summation orders of the two products: `q·K` over the head's dimensions, and
/// `softmax·V` over the positions.
#[derive(Debug, Clone, Copy)]
struct Orders {
    scores: SumOrder,
    values: SumOrder,
}

type AttendFn<T> = for<'a> fn(&[f32], Keys<'a, T>, usize, Geometry, Orders, &mut [f32]);

/// The row kernel, compiled for AVX2, FMA and F16C with [`HeadMath`] in registers when the CPU
/// has them, else the portable reference (the same sums, in the same order).
fn attend_kernel<T: KvElement>() -> AttendFn<T> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            return |q, keys, n, g, s, o| unsafe { attend_avx2(q, keys, n, g, s, o) };
        }
    }
    // SAFETY: the portable math needs nothing of the CPU.
    |q, keys, n, g, s, o| unsafe { attend_row::<T, head::Portable>(q, keys, n, g, s, o) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2<T: KvElement>(
    q: &[f32],
    keys: Keys<T>,
    n: usize,
    g: Geometry,
    orders: Orders,
    o: &mut [f32],
) {
    attend_row::<T, x86::Avx2>(q, keys, n, g, orders, o)
}

/// Attention of one row (all its heads) over the first `n` positions of its sequence, a KV
/// head at a time, for the query heads that share it.
///
/// # Safety
/// The CPU has what `M` needs.
#[inline(always)]
unsafe fn attend_row<T: KvElement, M: HeadMath>(
    q_all: &[f32],
    keys: Keys<T>,
    n: usize,
    g: Geometry,
    orders: Orders,
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
        let widen = matches!(keys, Keys::Paged { .. });
        let [q, scores, k_rows, v_rows, acc, lanes] = scratch.take([
            group * hd,
            group * n,
            if widen { n * hd } else { 0 },
            if widen { n * hd } else { 0 },
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
            let (k, v): (&[f32], &[f32]) = match keys {
                Keys::Paged { table, k, v } => {
                    widen_rows(k, table, g, kvh, k_rows);
                    widen_rows(v, table, g, kvh, v_rows);
                    (k_rows, v_rows)
                }
                Keys::Widened { k, v, len } => {
                    let head = kvh * len * hd;
                    (&k[head..head + n * hd], &v[head..head + n * hd])
                }
            };
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

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    /// A step of three sequences (a chunk of 5 rows, one decoding row, a prompt of 4): rows of a
    /// sequence with several rows read its positions widened once, and give the bits each row
    /// gives reading the paged cache for itself, in the step's summation orders.
    #[test]
    fn rows_sharing_widened_positions_equal_rows_that_widen_their_own() {
        let g = Geometry {
            block_size: 4,
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 32,
        };
        let value = |i: usize, seed: usize| {
            let x = (i.wrapping_mul(2_654_435_761) ^ seed) as u32 as f32 / u32::MAX as f32;
            x * 2.0 - 1.0
        };
        let cache_len = 8 * g.block_size * g.n_kv_heads * g.head_dim;
        let k: Vec<f16> = (0..cache_len).map(|i| f16::from_f32(value(i, 1))).collect();
        let v: Vec<f16> = (0..cache_len).map(|i| f16::from_f32(value(i, 2))).collect();
        let tables: [&[u32]; 3] = [&[3, 0, 5], &[1, 6], &[2, 4, 7]];
        let rows: Vec<Row> = (4..9)
            .map(|pos| Row { seq: 0, pos })
            .chain([Row { seq: 1, pos: 6 }])
            .chain((0..4).map(|pos| Row { seq: 2, pos }))
            .collect();
        let width = (g.n_heads + 2 * g.n_kv_heads) * g.head_dim;
        let qkv: Vec<f32> = (0..rows.len() * width).map(|i| value(i, 3)).collect();
        let q_w = g.n_heads * g.head_dim;
        let mut out = vec![f32::NAN; rows.len() * q_w];
        paged_attention(&qkv, &rows, &tables, g, &k, &v, &mut out);

        let orders = Orders {
            scores: SumOrder::for_step(rows.len(), g.head_dim),
            values: SumOrder::for_step(rows.len(), 0),
        };
        let attend = attend_kernel::<f16>();
        for (i, row) in rows.iter().enumerate() {
            let mut alone = vec![f32::NAN; q_w];
            let keys = Keys::Paged {
                table: tables[row.seq],
                k: &k,
                v: &v,
            };
            attend(
                &qkv[i * width..][..q_w],
                keys,
                row.pos + 1,
                g,
                orders,
                &mut alone,
            );
            let bits = |x: &[f32]| x.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&out[i * q_w..][..q_w]),
                bits(&alone),
                "row {i}: {row:?}"
            );
        }
    }
}
