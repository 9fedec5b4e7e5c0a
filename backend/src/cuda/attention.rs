//! Paged attention's launch: how a step's keys are split across CTAs, and the splits' merge.
//!
//! The kernel (`kernels/attention.cu`) serves all query heads of a GQA group from one CTA per
//! (token, KV head), so each K/V byte is read once per token. At small batches that is too few
//! CTAs to fill the GPU (a batch-1 decode of Llama-3.1-8B makes 8, on 132 SMs), so the keys are
//! split across CTAs as flash-decoding does when the step has fewer CTAs than SMs: about
//! [`CTAS_PER_SM`] CTAs per SM, partitions of at least [`MIN_PARTITION`] keys, each CTA writing
//! a partial output that the last CTA of its group to finish combines (one launch either way).
//! Steps that fill the SMs (prefill, larger batches) run unsplit.

use cudarc::driver::{CudaSlice, CudaStream};

use super::error::CudaError;
use super::kernels::{Bf16, DevPtr, Grid, HeadDim, Heads, KvHeads, PagedAttention};
use super::launch::{addr, Kernels};
use crate::shape::LayerShape;

/// Query heads one CTA serves at most (`MAX_GROUP` in attention.cu); larger GQA groups take
/// several CTAs, each reading the group's K/V. 4 covers Llama 3, Mistral, Qwen3, Gemma 3 and
/// SmolLM2 in one CTA; at 8 (Qwen2.5-7B's 7 in one) the per-head registers cost half the CTAs
/// an SM holds (ptxas, sm_90: 192 registers, 2 CTAs per SM; at 4: 118, 4 per SM).
pub const MAX_GROUP: usize = 4;
/// Fewest keys a split takes: below this a split's fixed costs (its share of the merge, its
/// partial's writes) outweigh what it adds. 64 rather than 128: at batch 1 and 512 keys the
/// profile predicts an 8B step's attention at 110 us against 187 (twice the CTAs, half the
/// chain of loads each), the merge's cost unchanged.
pub const MIN_PARTITION: usize = 64;

/// The most splits a merge takes (`MERGE_MAX_SPLITS` in `kernels/attention.cu`).
pub(crate) const MAX_SPLITS: usize = 1024;
/// A split step aims at this many CTAs per SM.
const CTAS_PER_SM: usize = 2;
/// The partials' scratch holds this many CTAs per SM.
const SCRATCH_CTAS_PER_SM: usize = 4;

/// How a step's keys are split: `splits` CTAs per (token, KV head), each token's keys cut into
/// partitions of max(`partition`, ceil(keys / `splits`)) (the kernel sizes each token's, so a
/// split fixed in advance for the longest context serves any shorter one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// CTAs per (token, KV head).
    pub splits: usize,
    /// The fewest keys a split takes.
    pub partition: usize,
}

impl Split {
    /// `splits` partitions (at most) of a context of `max_context` keys.
    pub fn fixed(max_context: usize, splits: usize) -> Split {
        let partition = max_context.div_ceil(splits.max(1)).max(1);
        Split {
            splits: max_context.div_ceil(partition).max(1),
            partition,
        }
    }
}

/// The partial outputs of split CTAs: each CTA's heads' normalised outputs and their softmax's
/// (max, sum); and a count per (token, head group) of its CTAs done, which the last resets.
pub struct SplitScratch {
    acc: CudaSlice<f32>,
    ml: CudaSlice<f32>,
    counts: CudaSlice<i32>,
    /// CTAs whose partials fit.
    ctas: usize,
    sms: usize,
}

impl SplitScratch {
    /// Scratch for a device of `sms` multiprocessors and `shape`'s heads.
    pub fn new(
        stream: &std::sync::Arc<CudaStream>,
        shape: &LayerShape,
        sms: usize,
    ) -> Result<SplitScratch, CudaError> {
        SplitScratch::with_ctas(stream, shape, sms, SCRATCH_CTAS_PER_SM * sms.max(1))
    }

    /// Scratch for the partials of `ctas` CTAs (a test's split of a large step).
    pub fn with_ctas(
        stream: &std::sync::Arc<CudaStream>,
        shape: &LayerShape,
        sms: usize,
        ctas: usize,
    ) -> Result<SplitScratch, CudaError> {
        let rows = ctas * MAX_GROUP;
        Ok(SplitScratch {
            acc: stream.alloc_zeros::<f32>(rows * shape.head_dim)?,
            ml: stream.alloc_zeros::<f32>(rows * 2)?,
            // A group has at least 2 CTAs when split: at most half as many groups as CTAs.
            counts: stream.alloc_zeros::<i32>(ctas.div_ceil(2).max(1))?,
            ctas,
            sms,
        })
    }

    /// The split for `tokens` query tokens attending to at most `max_context` keys.
    pub fn plan(&self, shape: &LayerShape, tokens: usize, max_context: usize) -> Split {
        let base = tokens.max(1) * shape.n_kv_heads * head_chunks(shape);
        if base >= self.sms {
            // Every SM has a CTA already: a split would add a merge and little else.
            return Split::fixed(max_context, 1);
        }
        let wanted = (CTAS_PER_SM * self.sms).div_ceil(base);
        let splits = wanted
            .min(max_context.div_ceil(MIN_PARTITION))
            .min(self.ctas / base)
            .clamp(1, MAX_SPLITS);
        Split::fixed(max_context, splits)
    }

    /// Device bytes held.
    pub fn bytes(&self) -> u64 {
        ((self.acc.len() + self.ml.len() + self.counts.len()) * 4) as u64
    }
}

/// CTAs per KV head: a GQA group larger than [`MAX_GROUP`] takes several.
fn head_chunks(shape: &LayerShape) -> usize {
    (shape.n_heads / shape.n_kv_heads).div_ceil(MAX_GROUP)
}

/// One layer's attention over the paged cache: where its inputs and output lie.
#[derive(Debug, Clone, Copy)]
pub struct Attention {
    /// `[tokens, n_heads, head_dim]`.
    pub out: DevPtr<Bf16>,
    /// The first query row; rows are `q_stride` elements apart.
    pub q: DevPtr<Bf16>,
    /// Query row stride, in elements.
    pub q_stride: usize,
    /// The layer's K cache.
    pub k_cache: DevPtr<Bf16>,
    /// The layer's V cache.
    pub v_cache: DevPtr<Bf16>,
    /// `[seqs, max_blocks_per_seq]` block tables.
    pub block_tables: DevPtr<i32>,
    /// Width of a block table row.
    pub max_blocks_per_seq: usize,
    /// Each token's sequence.
    pub token_seq: DevPtr<i32>,
    /// Each token's position.
    pub token_pos: DevPtr<i32>,
    /// Query tokens.
    pub tokens: usize,
    /// Tokens per KV block.
    pub block_size: usize,
}

/// Launches `a` with `split`.
pub fn launch(
    kernels: &Kernels,
    stream: &CudaStream,
    shape: &LayerShape,
    a: &Attention,
    split: Split,
    scratch: &SplitScratch,
) -> Result<(), CudaError> {
    let (part_acc, part_ml) = (addr(&scratch.acc, stream, 0), addr(&scratch.ml, stream, 0));
    let split_counts = addr(&scratch.counts, stream, 0);
    let ctas_per_token = shape.n_kv_heads * head_chunks(shape);
    if split.splits > MAX_SPLITS {
        return Err(CudaError::Unsupported(format!(
            "split attention: {} splits (the merge takes at most {MAX_SPLITS})",
            split.splits
        )));
    }
    if split.splits > 1 && a.tokens * ctas_per_token * split.splits > scratch.ctas {
        return Err(CudaError::Memory(format!(
            "split attention: {} tokens x {ctas_per_token} CTAs x {} splits exceed the scratch of {} CTAs",
            a.tokens, split.splits, scratch.ctas
        )));
    }
    kernels.run(
        stream,
        Grid::Blocks3(a.tokens as u32, ctas_per_token as u32, split.splits as u32),
        PagedAttention {
            out: a.out,
            part_acc,
            part_ml,
            split_counts,
            q: a.q,
            k_cache: a.k_cache,
            v_cache: a.v_cache,
            block_tables: a.block_tables,
            max_blocks_per_seq: a.max_blocks_per_seq as i32,
            token_seq: a.token_seq,
            token_pos: a.token_pos,
            n_heads: Heads::of(shape),
            n_kv_heads: KvHeads::of(shape),
            head_dim: HeadDim::of(shape),
            block_size: a.block_size as i32,
            scale: 1.0 / (shape.head_dim as f32).sqrt(),
            q_stride: a.q_stride as i32,
            partition: split.partition as i32,
            splits: split.splits as i32,
        },
    )?;
    Ok(())
}
