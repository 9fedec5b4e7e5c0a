//! The activations of one step on the device, allocated once for the largest step.
//!
//! The activations of one step, allocated once for the largest step the scheduler makes
//! (`--max-num-batched-tokens` tokens, `--max-num-seqs` rows of logits) and grown only when a
//! step asks for more (e.g. every position's logits), so that steps do not allocate; and the
//! page-locked host buffers its upload and downloads go through.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};

use super::error::CudaError;
use super::pinned::PinnedBuf;
use super::weights::Bf16Buf;
use crate::shape::LayerShape;

pub(crate) struct Workspace {
    /// The widths the buffers are sized for.
    pub shape: LayerShape,
    tokens: usize,
    rows: usize,
    /// The residual stream.
    pub residual: Bf16Buf,
    /// A sub-layer's output, before it is added to the residual.
    pub delta: Bf16Buf,
    /// The normalised residual, input of the next projection.
    pub normed: Bf16Buf,
    pub qkv: Bf16Buf,
    pub attn: Bf16Buf,
    pub gate_up: Bf16Buf,
    pub act: Bf16Buf,
    /// The rows that get logits, gathered from `normed`.
    pub selected: Bf16Buf,
    pub logits: CudaSlice<f32>,
    /// The greedy rows' tokens, then their log-probabilities' bits: `[ids[g] | logprobs[g]]`
    /// for a step of `g` greedy rows, so that one copy brings both back.
    pub greedy: CudaSlice<u32>,
    /// The step's packed metadata (see `step_plan`).
    pub meta: CudaSlice<u32>,
    /// Page-locked staging of the metadata's upload.
    pub host_meta: PinnedBuf<u32>,
    /// Page-locked landing of `greedy`.
    pub host_greedy: PinnedBuf<u32>,
    /// Page-locked landing of the full logit rows.
    pub host_logits: PinnedBuf<f32>,
}

fn alloc<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    n: usize,
) -> Result<CudaSlice<T>, CudaError> {
    Ok(stream.alloc_zeros::<T>(n.max(1))?)
}

impl Workspace {
    pub(crate) fn new(
        stream: &Arc<CudaStream>,
        shape: LayerShape,
        tokens: usize,
        rows: usize,
        meta: usize,
    ) -> Result<Workspace, CudaError> {
        let w = shape;
        Ok(Workspace {
            shape,
            tokens,
            rows,
            residual: alloc(stream, tokens * w.hidden)?,
            delta: alloc(stream, tokens * w.hidden)?,
            normed: alloc(stream, tokens * w.hidden)?,
            qkv: alloc(stream, tokens * w.qkv_width())?,
            attn: alloc(stream, tokens * w.q_width())?,
            gate_up: alloc(stream, tokens * 2 * w.inter)?,
            act: alloc(stream, tokens * w.inter)?,
            selected: alloc(stream, rows * w.hidden)?,
            logits: alloc(stream, rows * w.vocab)?,
            greedy: alloc(stream, 2 * rows)?,
            meta: alloc(stream, meta)?,
            host_meta: PinnedBuf::new(meta)?,
            host_greedy: PinnedBuf::new(2 * rows)?,
            host_logits: PinnedBuf::new(rows * w.vocab)?,
        })
    }

    /// Device bytes of every buffer (for the KV plan's activation share).
    pub(crate) fn bytes(&self) -> u64 {
        let bf16 = [
            &self.residual,
            &self.delta,
            &self.normed,
            &self.qkv,
            &self.attn,
            &self.gate_up,
            &self.act,
            &self.selected,
        ];
        let bytes = bf16.iter().map(|b| b.num_bytes()).sum::<usize>()
            + self.logits.num_bytes()
            + self.greedy.num_bytes()
            + self.meta.num_bytes();
        bytes as u64
    }

    /// Makes room for a step of `tokens` tokens, `rows` logit rows and `meta` metadata words;
    /// true if any buffer moved.
    pub(crate) fn fit(
        &mut self,
        stream: &Arc<CudaStream>,
        tokens: usize,
        rows: usize,
        meta: usize,
    ) -> Result<bool, CudaError> {
        if tokens > self.tokens || rows > self.rows {
            stream.synchronize()?;
            *self = Workspace::new(
                stream,
                self.shape,
                tokens.max(self.tokens),
                rows.max(self.rows),
                meta.max(self.meta.len()),
            )?;
        } else if meta > self.meta.len() {
            stream.synchronize()?;
            self.meta = alloc(stream, meta)?;
            self.host_meta = PinnedBuf::new(meta)?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }
}
