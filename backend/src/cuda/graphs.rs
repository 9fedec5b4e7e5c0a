//! CUDA graphs of pure-decode steps: which shapes are captured, and the captured set.
//!
//! A decode step of a small model is a few hundred short kernels, and enqueueing each costs the
//! host more than the GPU takes to run it; replaying a graph enqueues them all at once. A graph
//! fixes every launch's grid and arguments, so a step replays one only in the shape it was
//! captured for: its rows padded to a capture size (vLLM's sizes: 1, 2, 4, then every 8 up to
//! 256, none above `--max-num-seqs`), its block tables a fixed width, its metadata in the same
//! device buffer, and its attention split fixed. The split is the one thing whose best value
//! depends on the context (a batch-1 step at 64 keys wants one CTA per KV head, at 8k keys dozens),
//! so each size is captured once per power-of-two bucket of context that changes the split;
//! the attention kernel cuts each token's keys into that many partitions itself.

use std::collections::HashMap;

use cudarc::driver::CudaGraph;

use super::attention::{Split, SplitScratch, MIN_PARTITION};
use crate::shape::LayerShape;

/// The largest capture size (vLLM's default largest).
pub(crate) const MAX_CAPTURE_SIZE: usize = 256;

/// The batch sizes graphs are captured for, up to `max_rows`: 1, 2, 4, then multiples of 8
/// (vLLM's `cudagraph_capture_sizes`), and `max_rows` itself when it falls between two.
pub(crate) fn capture_sizes(max_rows: usize) -> Vec<usize> {
    let cap = max_rows.min(MAX_CAPTURE_SIZE);
    let mut sizes: Vec<usize> = [1, 2, 4]
        .into_iter()
        .chain((8..=MAX_CAPTURE_SIZE).step_by(8))
        .filter(|&s| s <= cap)
        .collect();
    if cap > 0 && sizes.last() != Some(&cap) {
        sizes.push(cap);
    }
    sizes
}

/// The context buckets a step's longest context falls in: 64 keys, then doubling, the last
/// `max_context` itself.
fn context_buckets(max_context: usize) -> impl Iterator<Item = usize> {
    let max_context = max_context.max(1);
    (0..)
        .map(|i| MIN_PARTITION << i)
        .take_while(move |&b| b < max_context)
        .chain(std::iter::once(max_context))
}

/// The attention split a graph of `rows` rows uses for steps whose longest context is at most
/// `bucket` keys: as many splits as an eager step of that context would make, partitions of at
/// least [`MIN_PARTITION`] keys (each token sizes its own).
fn split_for(scratch: &SplitScratch, shape: &LayerShape, rows: usize, bucket: usize) -> Split {
    let splits = scratch.plan(shape, rows, bucket).splits;
    Split {
        splits,
        partition: if splits > 1 { MIN_PARTITION } else { bucket },
    }
}

/// A captured graph, movable to another thread with the backend that owns it.
struct OwnedGraph(CudaGraph);

// SAFETY: CUDA forbids concurrent use of a graph, not use from another thread; an `OwnedGraph`
// is reached only through its `DecodeGraphs`, which the backend owns and uses from one thread
// at a time (`&mut self` for replacement, the engine's single step loop for launches).
unsafe impl Send for OwnedGraph {}

/// The captured graphs, by (rows, splits).
#[derive(Default)]
pub(crate) struct DecodeGraphs {
    graphs: HashMap<(usize, usize), OwnedGraph>,
    sizes: Vec<usize>,
    /// Width of every graph's block tables.
    pub(crate) max_blocks: usize,
    /// Contexts up to this many keys are served.
    pub(crate) max_context: usize,
}

impl DecodeGraphs {
    /// An empty set for steps of up to `max_rows` rows and `max_context` keys, tables of
    /// `max_blocks` blocks.
    pub(crate) fn new(max_rows: usize, max_context: usize, max_blocks: usize) -> DecodeGraphs {
        DecodeGraphs {
            graphs: HashMap::new(),
            sizes: capture_sizes(max_rows),
            max_blocks,
            max_context,
        }
    }

    /// Every (rows, split) to capture.
    pub(crate) fn shapes(&self, scratch: &SplitScratch, shape: &LayerShape) -> Vec<(usize, Split)> {
        let mut shapes = Vec::new();
        for &rows in &self.sizes {
            let mut seen = Vec::new();
            for bucket in context_buckets(self.max_context) {
                let split = split_for(scratch, shape, rows, bucket);
                if !seen.contains(&split.splits) {
                    seen.push(split.splits);
                    shapes.push((rows, split));
                }
            }
        }
        shapes
    }

    /// The rows and split a step of `seqs` sequences, the longest `context` keys, replays with.
    pub(crate) fn shape_for(
        &self,
        scratch: &SplitScratch,
        shape: &LayerShape,
        seqs: usize,
        context: usize,
    ) -> Option<(usize, Split)> {
        let rows = *self.sizes.iter().find(|&&s| s >= seqs)?;
        if context > self.max_context {
            return None;
        }
        let bucket = context_buckets(self.max_context).find(|&b| b >= context)?;
        Some((rows, split_for(scratch, shape, rows, bucket)))
    }

    /// Keeps a captured graph.
    pub(crate) fn insert(&mut self, rows: usize, split: Split, graph: CudaGraph) {
        self.graphs.insert((rows, split.splits), OwnedGraph(graph));
    }

    /// The graph of a shape, once captured.
    pub(crate) fn get(&self, rows: usize, split: Split) -> Option<&CudaGraph> {
        self.graphs.get(&(rows, split.splits)).map(|g| &g.0)
    }

    /// Graphs held.
    pub(crate) fn len(&self) -> usize {
        self.graphs.len()
    }

    /// Drops every graph (their buffers are about to move).
    pub(crate) fn clear(&mut self) {
        self.graphs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_vllms_up_to_the_most_sequences() {
        assert_eq!(capture_sizes(1), [1]);
        assert_eq!(capture_sizes(5), [1, 2, 4, 5]);
        assert_eq!(capture_sizes(16), [1, 2, 4, 8, 16]);
        let all = capture_sizes(1024);
        assert_eq!(all.len(), 3 + 32);
        assert_eq!(all.last(), Some(&256));
        assert_eq!(capture_sizes(20), [1, 2, 4, 8, 16, 20]);
    }

    #[test]
    fn buckets_double_from_a_partition_to_the_longest_context() {
        let b: Vec<usize> = context_buckets(1000).collect();
        assert_eq!(b, [64, 128, 256, 512, 1000]);
        let b: Vec<usize> = context_buckets(64).collect();
        assert_eq!(b, [64]);
    }
}
