//! The two products of one KV head's attention, summed in llama.cpp's orders.
//!
//! The two products of one KV head's attention, `q·K` and `softmax·V`, summed in llama.cpp's
//! orders ([`SumOrder`]): written once plainly ([`Portable`]) and once with AVX2 registers
//! (`x86::Avx2`), which must give the same bits.

use crate::cpu::summation::{self, SumOrder};

/// The products of a KV head's attention over `n` positions, for the `heads` query heads that
/// share it. `k` and `v` are the positions' rows, `hd` wide, one after another.
///
/// With f16 or bf16 operands every product is exact in f32, so an implementation may fuse the
/// multiply with the add; the result then depends only on the order, which is the contract.
pub(super) trait HeadMath {
    /// `scores[h * n + j] = dot(order, q_h, k_j) * scale` ([`summation::dot`]).
    ///
    /// # Safety
    /// The CPU has the instructions the implementation uses.
    unsafe fn scores(
        order: SumOrder,
        q: &[f32],
        k: &[f32],
        hd: usize,
        scale: f32,
        scores: &mut [f32],
    );

    /// The weighted sums of V's rows by slot, as [`SumOrder::slots`] says: for each query head
    /// `h` and slot `s`, `acc[(h * slots + s) * hd..][..hd]` is the sum, in order, of `w_h[j] *
    /// v_j` over the positions `j ≡ s (mod slots)`, added to zero (slots no position reaches
    /// are zero). `w` is `heads` rows of `n` weights.
    ///
    /// # Safety
    /// The CPU has the instructions the implementation uses.
    unsafe fn weighted_values(order: SumOrder, w: &[f32], v: &[f32], hd: usize, acc: &mut [f32]);
}

/// The reference: plain loops, for any CPU.
pub(super) struct Portable;

impl HeadMath for Portable {
    #[inline(always)]
    unsafe fn scores(
        order: SumOrder,
        q: &[f32],
        k: &[f32],
        hd: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        let n = k.len() / hd;
        for (q, scores) in q.chunks_exact(hd).zip(scores.chunks_exact_mut(n)) {
            for (s, k) in scores.iter_mut().zip(k.chunks_exact(hd)) {
                *s = summation::dot(order, q, k) * scale;
            }
        }
    }

    #[inline(always)]
    unsafe fn weighted_values(order: SumOrder, w: &[f32], v: &[f32], hd: usize, acc: &mut [f32]) {
        let (n, slots) = (v.len() / hd, order.slots());
        for (w, acc) in w.chunks_exact(n).zip(acc.chunks_exact_mut(slots * hd)) {
            acc.fill(0.0);
            for (j, (w, v)) in w.iter().zip(v.chunks_exact(hd)).enumerate() {
                let slot = &mut acc[(j % slots) * hd..][..hd];
                for (a, v) in slot.iter_mut().zip(v) {
                    *a += w * v;
                }
            }
        }
    }
}
