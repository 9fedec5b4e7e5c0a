//! The profiled cases: a model, a batch, a context, greedy or sampled rows.
//!
//! Each case is one decode step: `batch` sequences, each with `ctx - 1` tokens already in the
//! KV cache and one new token at position `ctx - 1`, in blocks of its own. A decode step's
//! accesses do not depend on what the cache holds, so the cache is not filled by a prefill (on
//! the simulator that would take far longer than the step). The step runs twice, on the model
//! cut to one layer and to two: the second run less the first is one layer, and the model's
//! whole depth is predicted as `one-layer step + (layers - 1) x one layer`.

use std::path::Path;

use backend::{Backend, CudaBackend, CudaOptions, LogitsFor, SeqInput};
use model::Model;

use super::sim::{Profile, Profiler};

/// Tokens per KV block (vLLM's default on CUDA).
pub(crate) const BLOCK_SIZE: usize = 16;

/// Which model a case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModelKind {
    /// The served default model (SmolLM2-135M-Instruct, Q4_1 GGUF).
    Default,
    /// Llama-3.1-8B's shapes, random Q4_0 weights ([`super::llama8b`]).
    Llama8b,
}

impl ModelKind {
    fn prefix(self) -> &'static str {
        match self {
            ModelKind::Default => "default",
            ModelKind::Llama8b => "llama8b",
        }
    }
}

/// One profiled decode step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Case {
    pub model: ModelKind,
    pub batch: usize,
    pub ctx: usize,
    /// Rows sampled on the host (temperature 1) rather than reduced to a greedy token.
    pub sampled: bool,
}

impl Case {
    pub(crate) fn name(&self) -> String {
        format!(
            "{}-b{}-ctx{}{}",
            self.model.prefix(),
            self.batch,
            self.ctx,
            if self.sampled { "-sampled" } else { "" }
        )
    }

    pub(crate) fn blocks_per_seq(&self) -> usize {
        self.ctx.div_ceil(BLOCK_SIZE)
    }
}

/// Every case, greedy then sampled.
pub(crate) fn all() -> Vec<Case> {
    let shapes = [
        (ModelKind::Default, 1, 512),
        (ModelKind::Default, 64, 1024),
        (ModelKind::Llama8b, 1, 512),
        (ModelKind::Llama8b, 1, 8192),
        (ModelKind::Llama8b, 64, 1024),
    ];
    shapes
        .iter()
        .flat_map(|&(model, batch, ctx)| {
            [false, true].map(|sampled| Case {
                model,
                batch,
                ctx,
                sampled,
            })
        })
        .collect()
}

/// A case's step on one layer and on two, and what the profile needs of the backend.
pub(crate) struct Measured {
    pub one_layer: Profile,
    pub two_layers: Profile,
    /// Device addresses of the KV cache, per run (`(start, bytes)`).
    pub kv_ranges: [KvRanges; 2],
}

/// Device addresses and sizes of the KV cache's buffers.
pub(crate) type KvRanges = Vec<(u64, u64)>;

/// Runs `cases` (all of one model) on `model` cut to one layer and to two; with `raw_dir`,
/// writes each run's profile there as the simulator gave it.
pub(crate) fn measure(
    profiler: &Profiler,
    model_path: &Path,
    cases: &[Case],
    raw_dir: Option<&Path>,
) -> anyhow::Result<Vec<Measured>> {
    let mut runs: Vec<Vec<(Profile, KvRanges)>> = vec![Vec::new(); cases.len()];
    for layers in [1, 2] {
        let mut model = Model::load(model_path)?;
        anyhow::ensure!(
            model.config.num_hidden_layers >= 2,
            "{} has fewer than 2 layers",
            model_path.display()
        );
        model.config.num_hidden_layers = layers;
        let max_batch = cases.iter().map(|c| c.batch).max().unwrap_or(1);
        let blocks = cases
            .iter()
            .map(|c| c.batch * c.blocks_per_seq())
            .max()
            .unwrap_or(1);
        // Loading runs the fast kernels; only the steps are profiled.
        profiler.enable(false);
        let mut gpu = decode_backend(&model, blocks, max_batch)?;
        let vocab = model.config.vocab_size;
        // A first step may do what later ones do not (the driver's lazy work).
        let warm_up = Case {
            ctx: BLOCK_SIZE,
            batch: 1,
            ..cases[0].clone()
        };
        step(&mut gpu, &warm_up, vocab)?;
        for (case, run) in cases.iter().zip(&mut runs) {
            eprintln!("profiling {} on {layers} layer(s)", case.name());
            profiler.enable(true);
            profiler.take()?;
            let result = step(&mut gpu, case, vocab);
            let profile = profiler.take_raw();
            profiler.enable(false);
            result?;
            let (profile, raw) = profile?;
            if let Some(dir) = raw_dir {
                std::fs::create_dir_all(dir)?;
                std::fs::write(
                    dir.join(format!("{}-{layers}-layers.json", case.name())),
                    raw,
                )?;
            }
            run.push((profile, gpu.kv_cache_ranges()));
        }
    }
    Ok(runs
        .into_iter()
        .map(|mut run| {
            let (two_layers, kv2) = run.pop().expect("two runs");
            let (one_layer, kv1) = run.pop().expect("two runs");
            Measured {
                one_layer,
                two_layers,
                kv_ranges: [kv1, kv2],
            }
        })
        .collect())
}

/// A backend on device 0 for decode steps of up to `batch` sequences over `blocks` KV blocks.
pub(crate) fn decode_backend(
    model: &Model,
    blocks: usize,
    batch: usize,
) -> anyhow::Result<CudaBackend> {
    Ok(CudaBackend::new(
        model,
        &CudaOptions {
            ordinal: 0,
            block_size: BLOCK_SIZE,
            gpu_memory_utilization: 0.9,
            num_blocks_override: Some(blocks),
            max_num_batched_tokens: batch,
            max_num_seqs: batch,
            max_model_len: 0,
            enforce_eager: false,
        },
    )?)
}

/// One decode step of `case`: sequence `s` holds blocks `s * n .. (s + 1) * n` (a cache of
/// `case.batch * case.ctx / BLOCK_SIZE` blocks at least).
pub(crate) fn step(gpu: &mut CudaBackend, case: &Case, vocab: usize) -> anyhow::Result<()> {
    let n = case.blocks_per_seq();
    let tables: Vec<Vec<u32>> = (0..case.batch)
        .map(|s| ((s * n) as u32..((s + 1) * n) as u32).collect())
        .collect();
    let tokens: Vec<[u32; 1]> = (0..case.batch)
        .map(|s| [((s * 7919 + 13) % vocab) as u32])
        .collect();
    let inputs: Vec<SeqInput> = (0..case.batch)
        .map(|s| SeqInput {
            tokens: &tokens[s],
            start_pos: case.ctx - 1,
            block_table: &tables[s],
            logits_for: if case.sampled {
                LogitsFor::Last
            } else {
                LogitsFor::Greedy
            },
        })
        .collect();
    gpu.forward(&inputs)?;
    Ok(())
}
