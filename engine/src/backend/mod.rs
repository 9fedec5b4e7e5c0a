//! The backend interface the scheduler drives, and its implementations (CPU here; CUDA later).
//!
//! A step is a batch of sequences, each contributing the tokens whose KV is not cached yet
//! (a whole prompt, a chunk of one, or one decode token), the position of its first new token,
//! and its block table: the physical KV blocks that hold (or will hold) positions
//! `0..start_pos + tokens.len()` in order. The backend writes the new tokens' K/V into those
//! blocks, attends over everything before them, and returns logits for the positions asked for.

pub mod cpu;
pub mod cuda;

use crate::model::LlamaConfig;

/// Which positions of a sequence's new tokens to return logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// None (a prefill chunk that does not reach the end of the prompt).
    None,
    /// The last new token (the usual case: sample the next token).
    Last,
    /// Every new token (prompt logprobs, tests).
    All,
}

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub start_pos: usize,
    pub block_table: &'a [u32],
    pub logits_for: LogitsFor,
}

/// Logits of a step: one row of `vocab_size` per requested position, in batch order.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub vocab_size: usize,
    pub data: Vec<f32>,
}

impl Logits {
    pub fn rows(&self) -> usize {
        self.data.len() / self.vocab_size.max(1)
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab_size..(i + 1) * self.vocab_size]
    }
}

/// A batch the backend refuses (the scheduler's bug, not the user's input).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    #[error("sequence {seq}: token id {token} is outside the vocabulary of {vocab}")]
    TokenOutOfVocab {
        seq: usize,
        token: u32,
        vocab: usize,
    },
    #[error("sequence {seq}: {needed} positions need {blocks} blocks, the block table has {have}")]
    BlockTableTooShort {
        seq: usize,
        needed: usize,
        blocks: usize,
        have: usize,
    },
    #[error("sequence {seq}: block {block} does not exist (the cache has {num_blocks})")]
    BlockOutOfRange {
        seq: usize,
        block: u32,
        num_blocks: usize,
    },
    #[error("sequence {seq}: position {pos} exceeds the model's maximum {max}")]
    PositionTooLarge { seq: usize, pos: usize, max: usize },
}

/// What the scheduler needs from a backend.
pub trait Backend: Send {
    fn name(&self) -> &'static str;
    fn config(&self) -> &LlamaConfig;
    /// Tokens per KV block.
    fn block_size(&self) -> usize;
    /// KV blocks in the cache.
    fn num_blocks(&self) -> usize;
    /// Runs one step over `batch`.
    fn forward(&mut self, batch: &[SeqInput<'_>]) -> Result<Logits, BackendError>;
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
    let table: Vec<u32> = (0..backend.num_blocks() as u32).collect();
    let mut tokens = prompt.to_vec();
    let mut cached = 0;
    for _ in 0..max_new {
        let logits = backend.forward(&[SeqInput {
            tokens: &tokens[cached..],
            start_pos: cached,
            block_table: &table,
            logits_for: LogitsFor::Last,
        }])?;
        cached = tokens.len();
        let next = crate::sampling::argmax(logits.row(0));
        tokens.push(next);
        if stop.contains(&next) {
            break;
        }
    }
    Ok(tokens.split_off(prompt.len()))
}
