//! The orders in which llama.cpp sums attention's products, to agree with it to the bit.
//!
//! The orders in which llama.cpp's x86 build (AVX-512, compiled by GCC) sums attention's
//! products, so that Vigil's attention over an f16 cache agrees with it to the bit.
//!
//! With f16 operands every product is exact in f32 (11 + 11 significant bits), so the result
//! depends only on the order of the additions. llama.cpp takes two orders, depending on the
//! matmul that computes `q·K` and `softmax·V`:
//! - [`SumOrder::Gemm`], llamafile's tinyBLAS, for a step of several tokens: one accumulator of
//!   16 lanes, element `i` added into lane `i % 16` in order, then the lanes reduced.
//! - [`SumOrder::Dot`], `ggml_vec_dot_f16`, for a step of one token: four accumulators of 16
//!   lanes over blocks of 64 elements, added pairwise (`0+2`, `1+3`, then the two), then the
//!   lanes reduced; elements past the last whole block are added one by one in f64.
//!
//! Both reduce 16 lanes as GCC's `_mm512_reduce_add_ps` does ([`reduce16`]).

/// Which of llama.cpp's summation orders a reduction follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SumOrder {
    Gemm,
    Dot,
}

/// Lanes of an AVX-512 register of f32.
pub(super) const LANES: usize = 16;
/// Elements `ggml_vec_dot_f16` takes per step: four registers.
pub(super) const DOT_BLOCK: usize = 4 * LANES;

impl SumOrder {
    /// llama.cpp's order for a reduction of `len` elements in a step of `tokens` tokens:
    /// tinyBLAS takes several tokens when the length is whole registers, else the vector dot.
    pub(super) fn for_step(tokens: usize, len: usize) -> SumOrder {
        if tokens > 1 && len.is_multiple_of(LANES) {
            SumOrder::Gemm
        } else {
            SumOrder::Dot
        }
    }

    /// Accumulators a weighted sum in this order keeps (a power of two): element `j` goes into
    /// `j % slots()`.
    pub(super) fn slots(self) -> usize {
        match self {
            SumOrder::Gemm => LANES,
            SumOrder::Dot => DOT_BLOCK,
        }
    }

    /// Reduces accumulators filled as [`slots`](Self::slots) says (`acc[s]` holds the sum of
    /// elements `j` with `j % slots == s`; missing slots are zero) to the order's result: one
    /// column of [`reduce_columns`], written apart as the tests' reference.
    #[cfg(test)]
    fn reduce(self, acc: &[f32]) -> f32 {
        let mut lanes = [0f32; LANES];
        match self {
            SumOrder::Gemm => lanes[..acc.len()].copy_from_slice(acc),
            SumOrder::Dot => {
                let at = |i: usize| acc.get(i).copied().unwrap_or(0.0);
                for (l, lane) in lanes.iter_mut().enumerate() {
                    *lane = (at(l) + at(2 * LANES + l)) + (at(LANES + l) + at(3 * LANES + l));
                }
            }
        }
        reduce16(lanes)
    }
}

/// Column by column, what [`reduce`](Self::reduce) gives: `acc` holds [`slots`](Self::slots)
/// rows of `out.len()` (row `s` the accumulator of slot `s`); `lanes` is scratch for
/// [`LANES`] rows.
#[inline(always)]
pub(super) fn reduce_columns(order: SumOrder, acc: &[f32], lanes: &mut [f32], out: &mut [f32]) {
    let w = out.len();
    assert_eq!(acc.len(), order.slots() * w);
    assert_eq!(lanes.len(), LANES * w);
    let row = |r: usize| &acc[r * w..(r + 1) * w];
    // `_mm512_reduce_add_ps`'s tree over the 16 lanes, in `lanes`: its first step (upper eight
    // plus lower) reads Gemm's lanes from `acc`, Dot's once its registers are paired.
    match order {
        SumOrder::Gemm => {
            for (i, lane) in lanes.chunks_exact_mut(w).take(8).enumerate() {
                let (a, b) = (row(8 + i), row(i));
                for d in 0..w {
                    lane[d] = a[d] + b[d];
                }
            }
        }
        SumOrder::Dot => {
            for (l, lane) in lanes.chunks_exact_mut(w).enumerate() {
                let (a, b) = (row(l), row(2 * LANES + l));
                let (c, d) = (row(LANES + l), row(3 * LANES + l));
                for i in 0..w {
                    lane[i] = (a[i] + b[i]) + (c[i] + d[i]);
                }
            }
            let (low, high) = lanes.split_at_mut(8 * w);
            for (l, h) in low.iter_mut().zip(high.iter()) {
                *l += *h;
            }
        }
    }
    // The rest of the tree, in place: each step reads only rows it does not write.
    let mut add = |dst: usize, a: usize, b: usize| {
        for i in 0..w {
            lanes[dst * w + i] = lanes[a * w + i] + lanes[b * w + i];
        }
    };
    for i in 0..4 {
        add(i, 4 + i, i);
    }
    add(0, 0, 2);
    add(1, 1, 3);
    for (i, o) in out.iter_mut().enumerate() {
        *o = lanes[i] + lanes[w + i];
    }
}

/// `_mm512_reduce_add_ps` as GCC expands it: the upper eight lanes added to the lower, then
/// the upper four of those to the lower, then lanes `0+2` and `1+3`, then the two.
#[inline(always)]
pub(super) fn reduce16(v: [f32; LANES]) -> f32 {
    let mut t = [0f32; 8];
    for i in 0..8 {
        t[i] = v[8 + i] + v[i];
    }
    let u = [t[4] + t[0], t[5] + t[1], t[6] + t[2], t[7] + t[3]];
    (u[0] + u[2]) + (u[1] + u[3])
}

/// `Σ a_i b_i` in `order` (the products taken in f32; exact for f16 operands).
#[inline(always)]
pub(super) fn dot(order: SumOrder, a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    match order {
        SumOrder::Gemm => {
            let mut lanes = [0f32; LANES];
            for (x, y) in a[..n].chunks_exact(LANES).zip(b[..n].chunks_exact(LANES)) {
                for l in 0..LANES {
                    lanes[l] += x[l] * y[l];
                }
            }
            reduce16(lanes)
        }
        SumOrder::Dot => {
            let whole = n / DOT_BLOCK * DOT_BLOCK;
            let mut acc = [0f32; DOT_BLOCK];
            for (x, y) in a[..whole]
                .chunks_exact(DOT_BLOCK)
                .zip(b[..whole].chunks_exact(DOT_BLOCK))
            {
                for i in 0..DOT_BLOCK {
                    acc[i] += x[i] * y[i];
                }
            }
            let lanes = std::array::from_fn(|l| {
                (acc[l] + acc[2 * LANES + l]) + (acc[LANES + l] + acc[3 * LANES + l])
            });
            let mut sum = reduce16(lanes) as f64;
            for i in whole..n {
                sum += (a[i] * b[i]) as f64;
            }
            sum as f32
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Values whose sums round differently in different orders: large and small magnitudes.
    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32;
                (x - 0.5) * if i % 7 == 0 { 3e3 } else { 1.0 }
            })
            .collect()
    }

    #[test]
    fn reduce16_is_the_documented_tree() {
        let v: [f32; 16] = values(16, 1).try_into().unwrap();
        let t: Vec<f32> = (0..8).map(|i| v[8 + i] + v[i]).collect();
        let u: Vec<f32> = (0..4).map(|i| t[4 + i] + t[i]).collect();
        assert_eq!(reduce16(v), (u[0] + u[2]) + (u[1] + u[3]));
    }

    #[test]
    fn gemm_order_adds_each_lane_in_element_order() {
        let (a, b) = (values(64, 2), values(64, 3));
        let mut lanes = [0f32; 16];
        for l in 0..16 {
            lanes[l] = ((a[l] * b[l] + a[16 + l] * b[16 + l]) + a[32 + l] * b[32 + l])
                + a[48 + l] * b[48 + l];
        }
        assert_eq!(dot(SumOrder::Gemm, &a, &b), reduce16(lanes));
    }

    #[test]
    fn dot_order_pairs_its_four_registers_and_adds_the_tail_in_f64() {
        let (a, b) = (values(70, 4), values(70, 5));
        let p = |i: usize| a[i] * b[i];
        let lanes = std::array::from_fn(|l| (p(l) + p(32 + l)) + (p(16 + l) + p(48 + l)));
        let mut want = reduce16(lanes) as f64;
        for i in 64..70 {
            want += p(i) as f64;
        }
        assert_eq!(dot(SumOrder::Dot, &a, &b), want as f32);
    }

    #[test]
    fn a_weighted_sum_reduced_from_slots_equals_the_dot_in_the_same_order() {
        for order in [SumOrder::Gemm, SumOrder::Dot] {
            let (w, v) = (values(256, 6), values(256, 7));
            let mut acc = vec![0f32; order.slots()];
            for (j, (w, v)) in w.iter().zip(&v).enumerate() {
                acc[j % order.slots()] += w * v;
            }
            assert_eq!(order.reduce(&acc), dot(order, &w, &v), "{order:?}");
        }
    }

    #[test]
    fn columns_reduce_as_single_accumulators_do() {
        for order in [SumOrder::Gemm, SumOrder::Dot] {
            let w = 5;
            let acc = values(order.slots() * w, 8);
            let mut out = vec![0f32; w];
            reduce_columns(order, &acc, &mut vec![0f32; LANES * w], &mut out);
            for (d, o) in out.iter().enumerate() {
                let column: Vec<f32> = (0..order.slots()).map(|s| acc[s * w + d]).collect();
                assert_eq!(*o, order.reduce(&column), "{order:?} column {d}");
            }
        }
    }

    #[test]
    fn the_order_follows_the_step() {
        assert_eq!(SumOrder::for_step(5, 64), SumOrder::Gemm);
        assert_eq!(SumOrder::for_step(1, 64), SumOrder::Dot);
        assert_eq!(SumOrder::for_step(5, 72), SumOrder::Dot);
    }
}
