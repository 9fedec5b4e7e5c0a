//! The whole forward pass on the GPU against the CPU backend.
//!
//! The whole forward pass against the CPU backend (f32 weights, exact): a tiny random model at
//! the kernels' corner shapes, then the served model: logits of every prompt position, and 64
//! greedy steps on several prompts, which must produce the same tokens.

use backend::{greedy_generate, Backend, LogitsFor, SeqInput};
use backend::{CpuBackend, CpuOptions, WeightFormat};
use backend::{CudaBackend, CudaOptions};
use model::{LlamaConfig, Model, WeightSource};

use super::report::Report;

/// Greedy steps per prompt.
pub(crate) const GREEDY_STEPS: usize = 64;

pub(crate) const PROMPTS: &[&str] = &[
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
    "Q: What is 17 times 23?\nA:",
];

/// Largest logit difference the served model may show: bf16 weights and activations against
/// f32 through every layer. Measured on the simulated device (the same kernels and rounding):
/// 0.62 to 1.38 on the four prompts, of logits up to 39.
const LOGIT_TOL: f32 = 2.0;

/// Greedy decoding on bf16 and f32 may part at a near tie, as vLLM's own comparison with
/// transformers allows (`check_logprobs_close`): where the tokens first differ, the CPU's
/// logit of its token may exceed that of the GPU's token by at most this much; after that the
/// sequences are not compared.
const NEAR_TIE: f32 = 0.5;

/// The logits of the last position of `tokens`, from an empty cache.
fn last_logits(
    backend: &mut dyn Backend,
    tokens: &[u32],
) -> Result<Vec<f32>, backend::BackendError> {
    let table: Vec<u32> = (0..backend.kv_geometry().num_blocks as u32).collect();
    let logits = backend.forward(&[SeqInput {
        tokens,
        start_pos: 0,
        block_table: &table,
        logits_for: LogitsFor::Last,
    }])?;
    Ok(logits.row(0).to_vec())
}

/// Decode steps through CUDA graphs against the same steps launched eagerly: three sequences
/// (prompts 0-2, each in its own blocks) prefilled, then `steps` decode steps of the three at
/// once, the first sequence taking its whole row of logits (as a sampled request does) and the
/// others their argmax. The graphs pad the step to four rows and reorder them; a graph launches
/// the same kernels with the same arguments per row, so everything that comes back must be
/// bit for bit what the eager step returns. `None` when they agree, else what differed.
fn graphs_against_eager(
    graphs: &mut CudaBackend,
    eager: &mut CudaBackend,
    prompts: &[Vec<u32>],
    steps: usize,
) -> anyhow::Result<Option<String>> {
    let per_seq = graphs.kv_geometry().num_blocks / prompts.len();
    let tables: Vec<Vec<u32>> = (0..prompts.len())
        .map(|i| ((i * per_seq) as u32..((i + 1) * per_seq) as u32).collect())
        .collect();
    let kinds = |i: usize| {
        if i == 0 {
            LogitsFor::Last
        } else {
            LogitsFor::Greedy
        }
    };
    let mut last: Vec<Vec<u32>> = prompts.to_vec();
    let mut start = vec![0usize; prompts.len()];
    for step in 0..=steps {
        let batch: Vec<SeqInput> = (0..prompts.len())
            .map(|i| SeqInput {
                tokens: &last[i],
                start_pos: start[i],
                block_table: &tables[i],
                logits_for: kinds(i),
            })
            .collect();
        let (a, b) = (graphs.forward(&batch)?, eager.forward(&batch)?);
        let same_rows = a.data.len() == b.data.len()
            && a.data
                .iter()
                .zip(&b.data)
                .all(|(x, y)| x.to_bits() == y.to_bits());
        let same_greedy = a.greedy.len() == b.greedy.len()
            && a.greedy
                .iter()
                .zip(&b.greedy)
                .all(|(x, y)| x.token == y.token && x.logprob.to_bits() == y.logprob.to_bits());
        if !same_rows || !same_greedy {
            return Ok(Some(format!(
                "step {step}: {} (graphs) and {} (eager)",
                summary(&a),
                summary(&b)
            )));
        }
        let next: Vec<u32> = std::iter::once(engine::argmax(a.row(0)) as u32)
            .chain(a.greedy.iter().map(|g| g.token))
            .collect();
        for i in 0..prompts.len() {
            start[i] += last[i].len();
            last[i] = vec![next[i]];
        }
    }
    Ok(None)
}

/// A step's result in brief, for a failure's message.
fn summary(l: &backend::Logits) -> String {
    let tokens: Vec<u32> = l.greedy.iter().map(|g| g.token).collect();
    let head: Vec<f32> = l.data.iter().take(3).copied().collect();
    format!("greedy tokens {tokens:?}, first logits {head:?}")
}

fn options(num_blocks: usize) -> CudaOptions {
    CudaOptions {
        ordinal: 0,
        block_size: 16,
        gpu_memory_utilization: 0.5,
        num_blocks_override: Some(num_blocks),
        max_num_batched_tokens: 2048,
        max_num_seqs: 64,
        max_model_len: 0,
        enforce_eager: false,
    }
}

/// The reference: the CPU backend with exact f32 weights.
pub(super) fn cpu(
    config: &LlamaConfig,
    w: &dyn WeightSource,
    num_blocks: usize,
) -> anyhow::Result<CpuBackend> {
    Ok(CpuBackend::from_weights(
        config,
        w,
        &CpuOptions {
            block_size: 16,
            num_blocks,
            weight_format: WeightFormat::F32,
            kv_dtype: None,
        },
    )?)
}

/// Logits of every position of `prompt` on both backends: (max |difference|, max |logit|,
/// positions where the argmax differs).
fn compare_prompt(
    gpu: &mut dyn Backend,
    cpu: &mut dyn Backend,
    prompt: &[u32],
) -> anyhow::Result<(f32, f32, usize)> {
    let table: Vec<u32> = (0..gpu.kv_geometry().num_blocks as u32).collect();
    let input = [SeqInput {
        tokens: prompt,
        start_pos: 0,
        block_table: &table,
        logits_for: LogitsFor::All,
    }];
    let (a, b) = (gpu.forward(&input)?, cpu.forward(&input)?);
    let diff = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.data.iter().map(|v| v.abs()).fold(0f32, f32::max);
    let flips = (0..b.rows())
        .filter(|&r| engine::argmax(a.row(r)) != engine::argmax(b.row(r)))
        .count();
    Ok((diff, scale, flips))
}

/// The tiny random model of the unit tests (2 layers, GQA 4/2, head_dim 16).
pub(crate) fn run_tiny(report: &mut Report) {
    let name = "tiny random model logits vs CPU";
    let result = (|| -> anyhow::Result<(f32, f32, usize)> {
        let config = LlamaConfig {
            tie_word_embeddings: false,
            ..model::testing::tiny_config()
        };
        let w = model::testing::random_weights(&config, 11);
        let mut gpu = CudaBackend::from_weights(&config, &w, &options(32))?;
        let mut cpu = cpu(&config, &w, 32)?;
        let prompt: Vec<u32> = (0..100).map(|i| (i * 37 % 256) as u32).collect();
        compare_prompt(&mut gpu, &mut cpu, &prompt)
    })();
    match result {
        Ok((diff, scale, flips)) => report.check(
            name,
            diff <= 0.02 * scale.max(1.0),
            format!(
                "max |diff| {diff:.4} of logits up to {scale:.2}; argmax differs at {flips}/100"
            ),
        ),
        Err(e) => report.error(name, e),
    }
}

/// The served model: logits on each prompt, then greedy decoding on each.
pub(crate) fn run_model(model: &Model, report: &mut Report) {
    let c = &model.config;
    let blocks = (2048usize).div_ceil(16);
    let backends = (|| -> anyhow::Result<(CudaBackend, CpuBackend)> {
        Ok((
            CudaBackend::new(model, &options(blocks))?,
            cpu(c, model.weights.as_ref(), blocks)?,
        ))
    })();
    let (mut gpu, mut cpu) = match backends {
        Ok(b) => b,
        Err(e) => return report.error("model on the GPU", e),
    };
    let eos = &model.tokenizer.eos_token_ids;
    graphs_check(model, &mut gpu, blocks, report);
    for (i, text) in PROMPTS.iter().enumerate() {
        let prompt = match model.tokenizer.encode(text, true) {
            Ok(p) => p,
            Err(e) => return report.error("tokenizing the prompts", e),
        };
        match compare_prompt(&mut gpu, &mut cpu, &prompt) {
            Ok((diff, scale, flips)) => report.check(
                format!("prompt {i} logits vs CPU"),
                // Argmax flips at near-ties are reported, not failed: the greedy check below is
                // the one that must agree.
                diff <= LOGIT_TOL,
                format!(
                    "{} positions: max |diff| {diff:.3} (logits up to {scale:.1}); argmax differs at {flips}",
                    prompt.len()
                ),
            ),
            Err(e) => report.error(&format!("prompt {i} logits"), e),
        }
        let generated = greedy_generate(&mut gpu, &prompt, GREEDY_STEPS, &[])
            .and_then(|g| Ok((g, greedy_generate(&mut cpu, &prompt, GREEDY_STEPS, &[])?)));
        let generated = generated.and_then(|(g, c)| {
            let same = g.iter().zip(&c).take_while(|(a, b)| a == b).count();
            let gap = match (g.get(same), c.get(same)) {
                (Some(&gt), Some(&ct)) => {
                    let mut context = prompt.clone();
                    context.extend(&c[..same]);
                    let row = last_logits(&mut cpu, &context)?;
                    Some(row[ct as usize] - row[gt as usize])
                }
                _ => None,
            };
            Ok((g, c, same, gap))
        });
        match generated {
            Ok((g, c, same, gap)) => {
                let text = model.tokenizer.decode(&g, true).unwrap_or_default();
                report.check(
                    format!("prompt {i} greedy {GREEDY_STEPS} steps = CPU"),
                    g == c || gap.is_some_and(|gap| gap <= NEAR_TIE),
                    format!(
                        "first {same} tokens agree{}{}; GPU: {:?}",
                        match gap {
                            Some(gap) => format!(
                                ", then a near tie: the CPU's logit of its token was {gap:.3} \
                                 above the GPU's token's"
                            ),
                            None => String::new(),
                        },
                        if eos.iter().any(|e| g.contains(e)) {
                            " (EOS reached)"
                        } else {
                            ""
                        },
                        text.chars().take(60).collect::<String>()
                    ),
                );
            }
            Err(e) => report.error(&format!("prompt {i} greedy"), e),
        }
    }
}

/// Decode steps replayed from CUDA graphs return what the same steps launched one by one do.
fn graphs_check(model: &Model, gpu: &mut CudaBackend, blocks: usize, report: &mut Report) {
    const STEPS: usize = 16;
    let name = "decode steps through CUDA graphs = eager";
    let result = (|| -> anyhow::Result<Option<String>> {
        if gpu.graph_capture().is_none() {
            return Ok(Some("no graphs were captured".into()));
        }
        let mut eager = CudaBackend::new(
            model,
            &CudaOptions {
                enforce_eager: true,
                ..options(blocks)
            },
        )?;
        let prompts = PROMPTS[..3]
            .iter()
            .map(|t| model.tokenizer.encode(t, true))
            .collect::<Result<Vec<_>, _>>()?;
        graphs_against_eager(gpu, &mut eager, &prompts, STEPS)
    })();
    match result {
        Ok(differs) => report.check(
            name,
            differs.is_none(),
            differs.unwrap_or_else(|| {
                format!(
                    "{STEPS} steps of 3 sequences (one sampled, two greedy; padded to 4 rows): \
                     tokens, log-probabilities and the sampled row identical"
                )
            }),
        ),
        Err(e) => report.error(name, e),
    }
}
