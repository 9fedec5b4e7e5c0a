//! A step's metadata packed into one buffer, so it reaches the device in a single copy.
//!
//! A step's metadata, flattened on the host into one `u32` buffer so that it reaches the device
//! in a single copy: the token ids, their positions and sequences, the KV slots they write, the
//! block tables, and which rows of the hidden state get logits.
//!
//! Rows that get logits are ordered full rows first ([`LogitsFor::Last`], [`LogitsFor::All`], in
//! batch order), then greedy rows ([`LogitsFor::Greedy`], in batch order): after the LM head the
//! full rows are one contiguous prefix to copy back, and the greedy ones one suffix to reduce on
//! the device.

use std::ops::Range;

use crate::{LogitsFor, SeqInput};

/// The packed metadata of one step and where each part lies in [`StepPlan::packed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    /// New tokens in the step (rows of the hidden state).
    pub tokens: usize,
    /// Sequences in the step.
    pub seqs: usize,
    /// Width of each block table row (the longest table any sequence needs; shorter ones are
    /// padded with block 0, never read).
    pub max_blocks: usize,
    /// The most keys any token of the step attends to (its position + 1).
    pub max_context: usize,
    /// Rows copied back whole, then rows reduced to their argmax.
    pub full_rows: usize,
    /// Rows reduced on the device to a token and its log-probability (they come last).
    pub greedy_rows: usize,
    /// Whether the rows that get logits are every token's, in order (every decode step whose
    /// requests all sample, or all decode greedily): the LM head then reads the hidden state
    /// as it is, without gathering the rows.
    pub logits_in_place: bool,
    /// Rows the LM head computes: those that get logits, or every row of a padded step (whose
    /// graph serves any mix of full and greedy rows).
    pub lm_rows: usize,
    /// Rows reduced to their argmax: the greedy rows, or every row of a padded step. Tokens
    /// land in `[0, n)` of the device's greedy buffer and log-probabilities in `[n, 2n)`.
    pub argmax_rows: Range<usize>,
    /// `ids[tokens] | positions[tokens] | token_seq[tokens] | slots[tokens] |
    /// block_tables[seqs * max_blocks] | logit_rows[lm_rows]`.
    pub packed: Vec<u32>,
}

impl StepPlan {
    /// Lays out `batch` (already validated) for a cache of `block_size`-token blocks.
    pub fn new(batch: &[SeqInput<'_>], block_size: usize) -> StepPlan {
        let tokens: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let blocks_of = |s: &SeqInput| (s.start_pos + s.tokens.len()).div_ceil(block_size);
        let max_blocks = batch.iter().map(blocks_of).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(tokens);
        let mut positions = Vec::with_capacity(tokens);
        let mut token_seq = Vec::with_capacity(tokens);
        let mut slots = Vec::with_capacity(tokens);
        let mut tables = vec![0u32; batch.len() * max_blocks];
        let (mut full, mut greedy) = (Vec::new(), Vec::new());
        for (seq, s) in batch.iter().enumerate() {
            let first_row = ids.len() as u32;
            for (i, &token) in s.tokens.iter().enumerate() {
                let pos = s.start_pos + i;
                ids.push(token);
                positions.push(pos as u32);
                token_seq.push(seq as u32);
                slots.push(
                    s.block_table[pos / block_size] * block_size as u32 + (pos % block_size) as u32,
                );
            }
            let n = blocks_of(s);
            tables[seq * max_blocks..seq * max_blocks + n].copy_from_slice(&s.block_table[..n]);
            let last = first_row + s.tokens.len() as u32;
            let wanted =
                first_row + (s.tokens.len() - s.logits_for.positions(s.tokens.len())) as u32..last;
            match s.logits_for {
                LogitsFor::Greedy => greedy.extend(wanted),
                _ => full.extend(wanted),
            }
        }
        let (full_rows, greedy_rows) = (full.len(), greedy.len());
        let logits_in_place = full_rows + greedy_rows == tokens
            && full
                .iter()
                .chain(&greedy)
                .enumerate()
                .all(|(i, &r)| r as usize == i);
        let mut packed = ids;
        for part in [positions, token_seq, slots, tables, full, greedy] {
            packed.extend(part);
        }
        StepPlan {
            tokens,
            seqs: batch.len(),
            max_blocks,
            max_context: batch
                .iter()
                .map(|s| s.start_pos + s.tokens.len())
                .max()
                .unwrap_or(0),
            full_rows,
            greedy_rows,
            logits_in_place,
            lm_rows: full_rows + greedy_rows,
            argmax_rows: full_rows..full_rows + greedy_rows,
            packed,
        }
    }

    /// Lays out a pure-decode `batch` (one new token a sequence, each getting logits) as a
    /// step of `rows` rows and block tables `max_blocks` wide, whatever the batch: the shape a
    /// CUDA graph was captured for. Rows are the full-logit sequences in batch order, then the
    /// greedy ones, then padding (token 0 at position 0 of an empty table, writing no KV slot),
    /// so that the LM head reads the hidden state in place and the argmax covers every row.
    /// `None` when the batch is not a pure decode or does not fit.
    pub fn padded_decode(
        batch: &[SeqInput<'_>],
        block_size: usize,
        rows: usize,
        max_blocks: usize,
    ) -> Option<StepPlan> {
        let pure = batch.iter().all(|s| {
            s.tokens.len() == 1 && s.logits_for.positions(1) == 1 && {
                let blocks = (s.start_pos + 1).div_ceil(block_size);
                blocks <= max_blocks && blocks <= s.block_table.len()
            }
        });
        if !pure || batch.len() > rows {
            return None;
        }
        let is_full = |s: &&SeqInput| !matches!(s.logits_for, LogitsFor::Greedy);
        let ordered: Vec<&SeqInput> = batch
            .iter()
            .filter(is_full)
            .chain(batch.iter().filter(|s| !is_full(s)))
            .collect();
        let full_rows = batch.iter().filter(is_full).count();
        let mut ids = vec![0u32; rows];
        let mut positions = vec![0u32; rows];
        let token_seq: Vec<u32> = (0..rows as u32).collect();
        // A negative slot (as the kernels read it) writes nothing.
        let mut slots = vec![u32::MAX; rows];
        let mut tables = vec![0u32; rows * max_blocks];
        for (row, s) in ordered.iter().enumerate() {
            let pos = s.start_pos;
            ids[row] = s.tokens[0];
            positions[row] = pos as u32;
            slots[row] =
                s.block_table[pos / block_size] * block_size as u32 + (pos % block_size) as u32;
            let n = (pos + 1).div_ceil(block_size);
            tables[row * max_blocks..row * max_blocks + n].copy_from_slice(&s.block_table[..n]);
        }
        let mut packed = ids;
        for part in [positions, token_seq.clone(), slots, tables, token_seq] {
            packed.extend(part);
        }
        Some(StepPlan {
            tokens: rows,
            seqs: rows,
            max_blocks,
            max_context: batch.iter().map(|s| s.start_pos + 1).max().unwrap_or(0),
            full_rows,
            greedy_rows: batch.len() - full_rows,
            logits_in_place: true,
            lm_rows: rows,
            argmax_rows: 0..rows,
            packed,
        })
    }

    /// Rows of the hidden state that get logits.
    pub fn logit_rows(&self) -> usize {
        self.full_rows + self.greedy_rows
    }

    /// Where the token ids lie in the packed buffer.
    pub fn ids(&self) -> Range<usize> {
        0..self.tokens
    }
    /// Where each token's position lies.
    pub fn positions(&self) -> Range<usize> {
        self.tokens..2 * self.tokens
    }
    /// Where each token's sequence index lies.
    pub fn token_seq(&self) -> Range<usize> {
        2 * self.tokens..3 * self.tokens
    }
    /// Where each token's KV slot lies.
    pub fn slots(&self) -> Range<usize> {
        3 * self.tokens..4 * self.tokens
    }
    /// Where the block tables lie.
    pub fn block_tables(&self) -> Range<usize> {
        4 * self.tokens..4 * self.tokens + self.seqs * self.max_blocks
    }
    /// Where the ids of the rows the LM head computes lie.
    pub fn logit_row_ids(&self) -> Range<usize> {
        let start = self.block_tables().end;
        start..start + self.lm_rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mixed_batch_is_laid_out_part_after_part() {
        let tables: [&[u32]; 3] = [&[7, 3, 9, 9], &[5], &[2, 4]];
        let batch = [
            // Decode at position 5 (block 3, offset 1), greedy.
            SeqInput {
                tokens: &[11],
                start_pos: 5,
                block_table: tables[0],
                logits_for: LogitsFor::Greedy,
            },
            // A prefill chunk short of the end: no logits.
            SeqInput {
                tokens: &[21, 22],
                start_pos: 0,
                block_table: tables[1],
                logits_for: LogitsFor::None,
            },
            // A prefill with every position's logits.
            SeqInput {
                tokens: &[31, 32, 33],
                start_pos: 2,
                block_table: tables[2],
                logits_for: LogitsFor::All,
            },
        ];
        let plan = StepPlan::new(&batch, 4);
        assert_eq!((plan.tokens, plan.seqs, plan.max_blocks), (6, 3, 2));
        assert_eq!((plan.full_rows, plan.greedy_rows), (3, 1));
        let part = |r: Range<usize>| plan.packed[r].to_vec();
        assert_eq!(part(plan.ids()), [11, 21, 22, 31, 32, 33]);
        assert_eq!(part(plan.positions()), [5, 0, 1, 2, 3, 4]);
        assert_eq!(part(plan.token_seq()), [0, 1, 1, 2, 2, 2]);
        // Slot = block * 4 + offset: position 5 of table [7, 3] is block 3 offset 1 = 13.
        assert_eq!(part(plan.slots()), [13, 20, 21, 10, 11, 16]);
        // Only the blocks each sequence reaches, padded with 0.
        assert_eq!(part(plan.block_tables()), [7, 3, 5, 0, 2, 4]);
        // Full rows (sequence 2's three) first, then the greedy row (sequence 0's).
        assert_eq!(part(plan.logit_row_ids()), [3, 4, 5, 0]);
        assert_eq!(plan.logit_row_ids().end, plan.packed.len());
        assert!(!plan.logits_in_place);
    }

    /// A decode step whose sequences all want the same kind of logits asks for every token's
    /// row in order; one that mixes greedy and sampled rows puts the sampled ones first.
    #[test]
    fn decode_rows_of_one_kind_are_the_hidden_state_in_order() {
        let decode = |kinds: &[LogitsFor]| {
            let tables: Vec<[u32; 1]> = (0..kinds.len() as u32).map(|i| [i]).collect();
            let batch: Vec<SeqInput> = kinds
                .iter()
                .zip(&tables)
                .map(|(&logits_for, table)| SeqInput {
                    tokens: &[7],
                    start_pos: 3,
                    block_table: table,
                    logits_for,
                })
                .collect();
            StepPlan::new(&batch, 4).logits_in_place
        };
        assert!(decode(&[LogitsFor::Greedy; 3]));
        assert!(decode(&[LogitsFor::Last; 3]));
        assert!(!decode(&[LogitsFor::Greedy, LogitsFor::Last]));
        assert!(decode(&[LogitsFor::Last, LogitsFor::Greedy]));
        assert!(!decode(&[LogitsFor::Greedy, LogitsFor::None]));
    }

    /// A pure decode padded to a graph's shape: sampled rows first, then greedy ones, in batch
    /// order; padding rows read token 0 at position 0 through an empty table and write no slot;
    /// the LM head and the argmax cover every row. A prefill chunk is not a pure decode.
    #[test]
    fn a_decode_step_pads_to_a_graphs_rows() {
        let batch = [
            SeqInput {
                tokens: &[11],
                start_pos: 5,
                block_table: &[7, 3],
                logits_for: LogitsFor::Greedy,
            },
            SeqInput {
                tokens: &[22],
                start_pos: 0,
                block_table: &[4],
                logits_for: LogitsFor::Last,
            },
        ];
        let plan = StepPlan::padded_decode(&batch, 4, 4, 3).unwrap();
        assert_eq!((plan.tokens, plan.seqs, plan.max_blocks), (4, 4, 3));
        assert_eq!(
            (plan.full_rows, plan.greedy_rows, plan.max_context),
            (1, 1, 6)
        );
        assert_eq!((plan.lm_rows, plan.argmax_rows.clone()), (4, 0..4));
        assert!(plan.logits_in_place);
        let part = |r: Range<usize>| plan.packed[r].to_vec();
        assert_eq!(part(plan.ids()), [22, 11, 0, 0]);
        assert_eq!(part(plan.positions()), [0, 5, 0, 0]);
        assert_eq!(part(plan.token_seq()), [0, 1, 2, 3]);
        assert_eq!(part(plan.slots()), [16, 13, u32::MAX, u32::MAX]);
        assert_eq!(
            part(plan.block_tables()),
            [4, 0, 0, 7, 3, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(part(plan.logit_row_ids()), [0, 1, 2, 3]);
        assert_eq!(plan.logit_row_ids().end, plan.packed.len());

        let prefill = [SeqInput {
            tokens: &[1, 2],
            start_pos: 0,
            block_table: &[0],
            logits_for: LogitsFor::Last,
        }];
        assert_eq!(StepPlan::padded_decode(&prefill, 4, 4, 3), None);
        // More sequences than rows, or a table wider than the graph's, do not fit.
        assert_eq!(StepPlan::padded_decode(&batch, 4, 1, 3), None);
        assert_eq!(StepPlan::padded_decode(&batch, 4, 4, 1), None);
    }

    #[test]
    fn last_rows_are_each_sequences_final_token() {
        let batch = [
            SeqInput {
                tokens: &[1, 2, 3],
                start_pos: 0,
                block_table: &[0],
                logits_for: LogitsFor::Last,
            },
            SeqInput {
                tokens: &[4, 5],
                start_pos: 0,
                block_table: &[1],
                logits_for: LogitsFor::Greedy,
            },
            SeqInput {
                tokens: &[6],
                start_pos: 3,
                block_table: &[2],
                logits_for: LogitsFor::Last,
            },
        ];
        let plan = StepPlan::new(&batch, 16);
        assert_eq!(&plan.packed[plan.logit_row_ids()], &[2, 5, 4]);
        assert_eq!((plan.full_rows, plan.greedy_rows), (2, 1));
    }
}
