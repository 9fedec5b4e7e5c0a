//! The backend interface the executor drives, with its CPU and CUDA implementations.
//!
//! The backend interface the executor drives, and its implementations: the CPU (`cpu`) and
//! CUDA (`cuda`, through cudarc with the libraries loaded at run time).
//!
//! A step is a batch of sequences, each contributing the tokens whose KV is not cached yet
//! (a whole prompt, a chunk of one, or one decode token), the position of its first new token,
//! and its block table: the physical KV blocks that hold (or will hold) positions
//! `0..start_pos + tokens.len()` in order. The backend writes the new tokens' K/V into those
//! blocks, attends over everything before them, and returns logits for the positions asked for.

mod cpu;
mod cuda;
mod heartbeat;
mod host_weights;
mod llama;
mod row;
mod shape;
/// A scripted backend for tests (the `testing` feature).
#[cfg(feature = "testing")]
pub mod testing;

pub use cpu::host_memory::available_bytes as available_host_memory;
pub use cpu::{CpuBackend, CpuOptions, KvDtype, WeightFormat};
pub use cuda::availability::{probe as probe_cuda, NoCuda};
pub use cuda::{CudaBackend, CudaError, CudaOptions};
pub use heartbeat::Heartbeat;
pub use row::{argmax, logprobs, softmax, sum_probabilities, GreedyToken};
pub use shape::LayerShape;

/// The device pieces `vigil check-gpu` runs one at a time against host references: the kernels
/// with their launcher, cuBLAS GEMMs, the step plan, RoPE tables, and the CPU backend's
/// attention and row operations that serve as the references.
pub mod kernel_check {
    pub use crate::cpu::{attention, ops};
    pub use crate::cuda::attention::{
        launch as launch_attention, Attention, Split, SplitScratch, MAX_GROUP, MIN_PARTITION,
    };
    pub use crate::cuda::gemm::{Matrix, Output};
    pub use crate::cuda::gpu::Gpu;
    pub use crate::cuda::kernels::*;
    pub use crate::cuda::launch::{addr, Kernels};
    pub use crate::cuda::ptxas;
    pub use crate::cuda::quantized::{
        decode_rows, gemv, gemv_lanes, linear as quantized_linear, planes_of, GemvInput, PlaneKind,
        Planes, GEMV_MAX_TOKENS,
    };
    pub use crate::cuda::rope;
    pub use crate::cuda::step_plan::StepPlan;
    pub use crate::cuda::weights::{DEVICE_DECODED, QUANTIZED};
    pub use crate::host_weights::{layer_groups, Group};
}

use model::LlamaConfig;

/// Which positions of a sequence's new tokens to return logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// None (a prefill chunk that does not reach the end of the prompt).
    None,
    /// The last new token (the usual case: sample the next token).
    Last,
    /// Every new token (prompt logprobs, tests).
    All,
    /// The last new token, reduced to its most likely token and that token's log-probability
    /// (a greedy request with no penalties or top log-probabilities). A GPU backend reduces on
    /// the device and copies back two numbers instead of a row of `vocab_size`.
    Greedy,
}

impl LogitsFor {
    /// How many positions of a sequence with `new_tokens` new tokens this asks for.
    pub fn positions(self, new_tokens: usize) -> usize {
        match self {
            LogitsFor::None => 0,
            LogitsFor::Last | LogitsFor::Greedy => new_tokens.min(1),
            LogitsFor::All => new_tokens,
        }
    }
}

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    /// The tokens whose KV is not cached yet.
    pub tokens: &'a [u32],
    /// The position of the first of `tokens`.
    pub start_pos: usize,
    /// The physical KV blocks of positions `0..start_pos + tokens.len()`, in order.
    pub block_table: &'a [u32],
    /// Which positions get logits.
    pub logits_for: LogitsFor,
}

/// Logits of a step: one row of `vocab_size` per position asked for with [`LogitsFor::Last`] or
/// [`LogitsFor::All`], in batch order; and one [`GreedyToken`] per sequence asked for with
/// [`LogitsFor::Greedy`], in batch order.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    /// The width of each row.
    pub vocab_size: usize,
    /// The rows, one after another.
    pub data: Vec<f32>,
    /// The greedy sequences' reductions.
    pub greedy: Vec<GreedyToken>,
}

impl Logits {
    /// From a full row for every position `batch` asks for (a [`LogitsFor::Greedy`] sequence's
    /// row included, in its place), reducing the greedy ones on the host: for backends that
    /// have every row at hand anyway.
    pub fn from_rows(batch: &[SeqInput<'_>], vocab_size: usize, rows: Vec<f32>) -> Logits {
        let wanted: usize = batch
            .iter()
            .map(|s| s.logits_for.positions(s.tokens.len()))
            .sum();
        assert_eq!(
            rows.len(),
            wanted * vocab_size,
            "one row per position asked for"
        );
        if !batch.iter().any(|s| s.logits_for == LogitsFor::Greedy) {
            return Logits {
                vocab_size,
                data: rows,
                greedy: Vec::new(),
            };
        }
        let mut data = Vec::with_capacity(rows.len());
        let mut greedy = Vec::new();
        let mut chunks = rows.chunks_exact(vocab_size.max(1));
        for s in batch {
            for row in chunks.by_ref().take(s.logits_for.positions(s.tokens.len())) {
                match s.logits_for {
                    LogitsFor::Greedy => greedy.push(GreedyToken::of_row(row)),
                    _ => data.extend_from_slice(row),
                }
            }
        }
        Logits {
            vocab_size,
            data,
            greedy,
        }
    }

    /// How many rows `data` holds.
    pub fn rows(&self) -> usize {
        self.data.len() / self.vocab_size.max(1)
    }
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab_size..(i + 1) * self.vocab_size]
    }
}

/// A batch the backend refuses (the scheduler's bug, not the user's input).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// A token id the vocabulary does not have.
    #[error("sequence {seq}: token id {token} is outside the vocabulary of {vocab}")]
    TokenOutOfVocab {
        /// The sequence's index in the batch.
        seq: usize,
        /// The token id.
        token: u32,
        /// The vocabulary's size.
        vocab: usize,
    },
    /// A block table too short for the sequence's positions.
    #[error("sequence {seq}: {needed} positions need {blocks} blocks, the block table has {have}")]
    BlockTableTooShort {
        /// The sequence's index in the batch.
        seq: usize,
        /// Positions the step needs.
        needed: usize,
        /// Blocks they need.
        blocks: usize,
        /// Blocks the table has.
        have: usize,
    },
    /// A block the cache does not have.
    #[error("sequence {seq}: block {block} does not exist (the cache has {num_blocks})")]
    BlockOutOfRange {
        /// The sequence's index in the batch.
        seq: usize,
        /// The block.
        block: u32,
        /// Blocks in the cache.
        num_blocks: usize,
    },
    /// The sequence reaches past the model's longest context.
    #[error("sequence {seq}: position {pos} exceeds the model's maximum {max}")]
    PositionTooLarge {
        /// The sequence's index in the batch.
        seq: usize,
        /// The position past its last new token.
        pos: usize,
        /// The model's maximum.
        max: usize,
    },
    /// The device failed (a CUDA or cuBLAS error).
    #[error("device error: {0}")]
    Device(String),
}

/// The KV cache a backend holds, in blocks: the scheduler's block pool mirrors it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks in the cache.
    pub num_blocks: usize,
}

/// What the executor needs from a backend.
pub trait Backend: Send {
    /// The backend's name, for logs and `vigil_device_*` series.
    fn name(&self) -> &'static str;
    /// The model's configuration.
    fn config(&self) -> &LlamaConfig;
    /// The KV cache it holds.
    fn kv_geometry(&self) -> KvGeometry;
    /// Runs one step over `batch`.
    fn forward(&mut self, batch: &[SeqInput<'_>]) -> Result<Logits, BackendError>;
    /// The device's timing of the last step, once (backends that measure it).
    fn take_step_timing(&mut self) -> Option<StepTiming> {
        None
    }
    /// The engine ran out of work: the time until the next step is idleness, not a host gap.
    fn idle(&mut self) {}
    /// Beat `heartbeat` as a step makes progress (each layer), so that a long step that is
    /// moving keeps the watchdog fed. Backends whose steps are short need not.
    fn beat_while_working(&mut self, _heartbeat: std::sync::Arc<crate::heartbeat::Heartbeat>) {}
}

/// How a device spent one step, by its own clock (CUDA events).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTiming {
    /// From the step's first upload to its last copy back.
    pub busy: std::time::Duration,
    /// From the end of the previous step to the start of this one, when the engine had work
    /// throughout (none after [`Backend::idle`]).
    pub gap: Option<std::time::Duration>,
}

/// Checks a batch against the cache's geometry and the model's limits.
pub fn validate_batch(
    batch: &[SeqInput<'_>],
    config: &LlamaConfig,
    block_size: usize,
    num_blocks: usize,
) -> Result<(), BackendError> {
    for (seq, s) in batch.iter().enumerate() {
        if let Some(&token) = s.tokens.iter().find(|t| **t as usize >= config.vocab_size) {
            return Err(BackendError::TokenOutOfVocab {
                seq,
                token,
                vocab: config.vocab_size,
            });
        }
        let end = s.start_pos + s.tokens.len();
        if end > config.max_position_embeddings {
            return Err(BackendError::PositionTooLarge {
                seq,
                pos: end,
                max: config.max_position_embeddings,
            });
        }
        let blocks = end.div_ceil(block_size);
        if s.block_table.len() < blocks {
            return Err(BackendError::BlockTableTooShort {
                seq,
                needed: end,
                blocks,
                have: s.block_table.len(),
            });
        }
        if let Some(&block) = s.block_table[..blocks]
            .iter()
            .find(|b| **b as usize >= num_blocks)
        {
            return Err(BackendError::BlockOutOfRange {
                seq,
                block,
                num_blocks,
            });
        }
    }
    Ok(())
}

/// Greedy generation of one sequence on an otherwise idle backend, in blocks `0..`: for tests,
/// benchmarks and smoke checks (serving goes through the scheduler). Returns the new tokens,
/// ending early at any of `stop`.
pub fn greedy_generate(
    backend: &mut dyn Backend,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
) -> Result<Vec<u32>, BackendError> {
    let table: Vec<u32> = (0..backend.kv_geometry().num_blocks as u32).collect();
    let mut tokens = prompt.to_vec();
    let mut cached = 0;
    for _ in 0..max_new {
        let logits = backend.forward(&[SeqInput {
            tokens: &tokens[cached..],
            start_pos: cached,
            block_table: &table,
            logits_for: LogitsFor::Greedy,
        }])?;
        cached = tokens.len();
        let next = logits.greedy[0].token;
        tokens.push(next);
        if stop.contains(&next) {
            break;
        }
    }
    Ok(tokens.split_off(prompt.len()))
}
