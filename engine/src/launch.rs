//! The engine as its own composition root: model, device, KV cache and engine thread.
//!
//! The engine as its own composition root: the model loaded, the device chosen and warmed up,
//! the KV cache sized and the engine thread started (vLLM's `EngineCore.__init__`), so that
//! whoever serves it is handed a running engine and never touches a backend.
//!
//! Two phases, so that a server can install its exporter in between (the engine's handles are
//! resolved against it) and be stopped while the model loads: [`load`] settles the device and
//! reads the model; [`LoadedModel::launch`] builds the backend, the scheduler and the loop.

use std::path::PathBuf;

use anyhow::Context;
use backend::{Backend, KvGeometry};
use backend::{CpuBackend, CpuOptions, KvDtype, WeightFormat};
use backend::{CudaBackend, CudaOptions};
use model::{LlamaConfig, Model, Tokenizer};

use crate::engine_loop::{self, EngineHandle};
use crate::kv_cache::manager::KvCacheManager;
use crate::metrics::EngineMetrics;
use crate::scheduler::{Scheduler, SchedulerConfig};

/// The model served when none is named.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// vLLM's default token budget per step with chunked prefill (a GPU's).
pub(crate) const DEFAULT_MAX_NUM_BATCHED_TOKENS: u32 = 2048;

/// The CPU backend's: a step of 256 tokens takes about half a second on two cores, so a long
/// prompt delays other streams' next tokens by that, not by seconds.
pub(crate) const CPU_MAX_NUM_BATCHED_TOKENS: u32 = 256;

/// Where to run the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// A GPU when the CUDA backend can run here, else the CPU.
    Auto,
    /// The CPU backend.
    Cpu,
    /// The CUDA backend, or a start-up error saying why it cannot run.
    Cuda,
}

/// What the engine is asked to be. Field names follow the `vllm serve` flags they come from,
/// so that an error message can name the flag.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// An HF folder or a GGUF file.
    pub model: PathBuf,
    /// The context length asked for; `None` is the model's own.
    pub max_model_len: Option<u64>,
    /// Where to run the model.
    pub device: Device,
    /// KV-cache block size in tokens.
    pub block_size: u32,
    /// The share of the GPU's memory the engine may take.
    pub gpu_memory_utilization: f64,
    /// A KV cache of this many blocks, instead of one sized from the memory.
    pub num_gpu_blocks_override: Option<u64>,
    /// `auto`, `bfloat16`, `float16` or `float32` (reported in `vllm:cache_config_info`).
    pub kv_cache_dtype: String,
    /// The step's token budget asked for; [`EngineConfig::batch_token_budget`] settles it.
    pub max_num_batched_tokens: Option<u32>,
    /// Requests scheduled at once.
    pub max_num_seqs: u32,
    /// The CPU backend's KV-cache size when no block count is given.
    pub kv_cache_memory_bytes: u64,
    /// Reuse the KV of prompts' shared prefixes.
    pub prefix_caching: bool,
    /// Split long prompts across steps.
    pub chunked_prefill: bool,
    /// `--enforce-eager`: no CUDA graphs; every step's kernels are launched one by one.
    pub enforce_eager: bool,
}

impl EngineConfig {
    /// The token budget per step, settled as vLLM's `SchedulerConfig` settles
    /// `--max-num-batched-tokens` once the context length and the device are known: with chunked
    /// prefill a per-device default (vLLM also picks per-device defaults), else enough for a
    /// whole prompt of `max_model_len` (a budget below that, given without chunked prefill, is
    /// an error: no longer prompt could ever run).
    pub fn batch_token_budget(&self, max_model_len: u64, on_gpu: bool) -> anyhow::Result<u32> {
        let chunked_default = if on_gpu {
            DEFAULT_MAX_NUM_BATCHED_TOKENS
        } else {
            CPU_MAX_NUM_BATCHED_TOKENS
        };
        Ok(match (self.max_num_batched_tokens, self.chunked_prefill) {
            (Some(given), false) if u64::from(given) < max_model_len => anyhow::bail!(
                "--max-num-batched-tokens ({given}) is smaller than --max-model-len ({max_model_len}) \
                 with --no-enable-chunked-prefill: prompts longer than {given} tokens could never \
                 run. Raise --max-num-batched-tokens, lower --max-model-len, or enable chunked prefill"
            ),
            (Some(given), _) => given,
            (None, true) => chunked_default,
            (None, false) => u32::try_from(max_model_len)
                .unwrap_or(u32::MAX)
                .max(chunked_default),
        })
    }
}

/// The model read and the device settled: what [`load`] gives.
pub struct LoadedModel {
    model: Model,
    /// The context length served.
    pub max_model_len: u64,
    /// Whether the CUDA backend is to be tried.
    cuda: bool,
}

/// A running engine and what its server needs to know of it.
pub struct Engine {
    /// The engine thread.
    pub handle: EngineHandle,
    /// The model's tokenizer (requests are tokenized outside the engine).
    pub tokenizer: Tokenizer,
    /// The model's configuration.
    pub model_config: LlamaConfig,
    /// The KV cache the backend holds.
    pub kv: KvGeometry,
    /// The step's token budget, settled for the device the engine runs on.
    pub batch_token_budget: u32,
    /// The context length served.
    pub max_model_len: u64,
}

/// Settles `--device` (fast: before minutes of loading) and loads the model.
pub fn load(config: &EngineConfig) -> anyhow::Result<LoadedModel> {
    let cuda = wants_cuda(config.device)?;
    let model = load_model(&config.model)?;
    let max_model_len = max_model_len(config, &model)?;
    Ok(LoadedModel {
        model,
        max_model_len,
        cuda,
    })
}

impl LoadedModel {
    /// Builds and warms up the backend, sizes the scheduler to its KV cache and starts the
    /// engine thread, recording into `metrics` when given.
    pub fn launch(
        self,
        config: &EngineConfig,
        metrics: Option<EngineMetrics>,
    ) -> anyhow::Result<Engine> {
        let LoadedModel {
            model,
            max_model_len,
            cuda,
        } = self;
        let mut budget = config.batch_token_budget(max_model_len, cuda)?;
        let backend = build_backend(config, &model, max_model_len, budget, cuda)?;
        if backend.name() == "cpu" {
            // --device auto fell back to the CPU: its budget.
            budget = config.batch_token_budget(max_model_len, false)?;
        }
        let kv = backend.kv_geometry();
        let scheduler = Scheduler::new(
            SchedulerConfig {
                max_num_batched_tokens: budget as usize,
                max_num_seqs: config.max_num_seqs as usize,
                max_model_len: max_model_len as usize,
                chunked_prefill: config.chunked_prefill,
            },
            KvCacheManager::new(kv.num_blocks, kv.block_size, config.prefix_caching),
            model.tokenizer.eos_token_ids.clone(),
        );
        let handle = engine_loop::spawn(backend, scheduler, metrics);
        Ok(Engine {
            handle,
            tokenizer: model.tokenizer,
            model_config: model.config,
            kv,
            batch_token_budget: budget,
            max_model_len,
        })
    }
}

/// Loads the model at `path`, saying where it looked when it is missing.
fn load_model(path: &std::path::Path) -> anyhow::Result<Model> {
    if !path.exists() {
        let looked = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let hint = if path == std::path::Path::new(DEFAULT_MODEL) {
            "run `cargo xtask fetch-model` to fetch the default model, or name a GGUF file or HF folder"
        } else {
            "name a GGUF file or an HF model folder"
        };
        anyhow::bail!("model not found: looked at {}; {hint}", looked.display());
    }
    let started = std::time::Instant::now();
    let model = Model::load(path).with_context(|| format!("loading model {}", path.display()))?;
    let c = &model.config;
    tracing::info!(
        model = %path.display(),
        layers = c.num_hidden_layers,
        hidden = c.hidden_size,
        heads = c.num_attention_heads,
        kv_heads = c.num_key_value_heads,
        vocab = c.vocab_size,
        context = c.max_position_embeddings,
        "model loaded in {:.2?}",
        started.elapsed()
    );
    Ok(model)
}

/// `--max-model-len`, checked against the model's own context length (which it defaults to).
fn max_model_len(config: &EngineConfig, model: &Model) -> anyhow::Result<u64> {
    let derived = model.config.max_position_embeddings as u64;
    match config.max_model_len {
        None => Ok(derived),
        Some(n) if n <= derived => Ok(n),
        Some(n) => anyhow::bail!(
            "--max-model-len {n} is greater than the model's maximum context length {derived} ({})",
            config.model.display()
        ),
    }
}
/// Settles `--device`: whether to try the CUDA backend. `auto` tries it when the host has a GPU
/// and the libraries it needs, and logs why not otherwise; `--device cuda` turns a "no" into a
/// start-up error naming the reason.
fn wants_cuda(requested: Device) -> anyhow::Result<bool> {
    use backend::probe_cuda as probe;
    match (requested, probe()) {
        (Device::Cpu, _) => {
            tracing::info!("--device cpu: serving on the CPU");
            Ok(false)
        }
        (Device::Auto, Err(why)) => {
            tracing::info!("no CUDA: {why}; serving on the CPU");
            Ok(false)
        }
        (Device::Cuda, Err(why)) => anyhow::bail!("--device cuda: {why}"),
        (_, Ok(n)) => {
            tracing::info!("{n} CUDA device(s) found; serving on device 0");
            Ok(true)
        }
    }
}

/// Builds the backend `--device` settled on ([`wants_cuda`]), warmed up. With `--device auto`, a CUDA backend
/// that fails to start (an unsupported model, too little free memory) falls back to the CPU
/// with the reason logged; with `--device cuda` it is a start-up error.
fn build_backend(
    config: &EngineConfig,
    model: &Model,
    max_model_len: u64,
    batch_token_budget: u32,
    cuda: bool,
) -> anyhow::Result<Box<dyn Backend>> {
    let started = std::time::Instant::now();
    let cuda_kv_dtype = matches!(config.kv_cache_dtype.as_str(), "auto" | "bfloat16");
    if cuda && !cuda_kv_dtype {
        let why = format!(
            "--kv-cache-dtype {}: the CUDA backend keeps its KV cache in bfloat16 (auto or \
             bfloat16)",
            config.kv_cache_dtype
        );
        if config.device == Device::Cuda {
            anyhow::bail!(why);
        }
        tracing::error!("{why}; serving on the CPU");
    }
    if cuda && cuda_kv_dtype {
        let options = CudaOptions {
            ordinal: 0,
            block_size: config.block_size as usize,
            gpu_memory_utilization: config.gpu_memory_utilization,
            num_blocks_override: config.num_gpu_blocks_override.map(|n| n as usize),
            max_num_batched_tokens: batch_token_budget as usize,
            max_num_seqs: config.max_num_seqs as usize,
            max_model_len: max_model_len as usize,
            enforce_eager: config.enforce_eager,
        };
        match CudaBackend::new(model, &options) {
            Ok(mut backend) => {
                warm_up(&mut backend)?;
                let (d, plan) = (backend.device().clone(), backend.kv_plan().clone());
                tracing::info!(
                    device = %d.name,
                    arch = %d.arch,
                    weights_gib = backend.weight_bytes() as f64 / GIB,
                    kv_cache_gib = plan.kv_bytes as f64 / GIB,
                    num_blocks = plan.num_blocks,
                    block_size = options.block_size,
                    kv_cache_tokens = plan.num_blocks * options.block_size,
                    "CUDA backend ready in {:.2?}",
                    started.elapsed()
                );
                match backend.graph_capture() {
                    Some(g) => tracing::info!(
                        graphs = g.graphs,
                        max_batch = g.max_batch,
                        memory_mib = g.bytes as f64 / (1 << 20) as f64,
                        "captured CUDA graphs of decode steps in {:.2} s",
                        g.seconds
                    ),
                    None if config.enforce_eager => {
                        tracing::info!("--enforce-eager: decode steps run without CUDA graphs")
                    }
                    None => {}
                }
                check_cache_holds_a_request(
                    plan.num_blocks,
                    options.block_size,
                    max_model_len,
                    "--gpu-memory-utilization or --num-gpu-blocks-override",
                )?;
                return Ok(Box::new(backend));
            }
            Err(e) if config.device == Device::Auto => {
                tracing::error!("the CUDA backend could not start ({e}); serving on the CPU");
            }
            Err(e) => anyhow::bail!("--device cuda: {e}"),
        }
    }
    let block_size = config.block_size as usize;
    let weight_format = WeightFormat::default();
    let kv_dtype = match config.kv_cache_dtype.as_str() {
        "float32" => KvDtype::F32,
        "float16" => KvDtype::F16,
        "bfloat16" => KvDtype::Bf16,
        _ => KvDtype::auto(weight_format),
    };
    let per_block = block_size * CpuBackend::kv_bytes_per_token(&model.config, kv_dtype);
    let num_blocks = match config.num_gpu_blocks_override {
        Some(n) => n as usize,
        None => config.kv_cache_memory_bytes as usize / per_block,
    };
    check_cache_holds_a_request(
        num_blocks,
        block_size,
        max_model_len,
        "--kv-cache-memory-bytes or --num-gpu-blocks-override",
    )?;
    let kv_bytes = (num_blocks * per_block) as u64;
    if let Some(available) = backend::available_host_memory().filter(|a| kv_bytes > *a) {
        anyhow::bail!(
            "the KV cache needs {:.2} GiB ({num_blocks} blocks of {block_size} tokens), but this \
             process can take only {:.2} GiB more on this host (MemAvailable, and ulimit -v if \
             set); lower --kv-cache-memory-bytes (or --num-gpu-blocks-override)",
            kv_bytes as f64 / GIB,
            available as f64 / GIB
        );
    }
    let options = CpuOptions {
        block_size,
        num_blocks,
        weight_format,
        kv_dtype: Some(kv_dtype),
    };
    let mut backend = CpuBackend::new(model, &options)
        .with_context(|| format!("preparing the weights of {}", config.model.display()))?;
    warm_up(&mut backend)?;
    tracing::info!(
        num_blocks,
        block_size,
        kv_cache_tokens = num_blocks * block_size,
        kv_cache_dtype = ?kv_dtype,
        "CPU backend ready in {:.2?}",
        started.elapsed()
    );
    Ok(Box::new(backend))
}

const GIB: f64 = (1u64 << 30) as f64;

/// Refuses a KV cache that cannot hold one request of `max_model_len`, as vLLM refuses to
/// start then: such a request could never be scheduled. One block is the null block.
fn check_cache_holds_a_request(
    num_blocks: usize,
    block_size: usize,
    max_model_len: u64,
    sizing_flags: &str,
) -> anyhow::Result<()> {
    if num_blocks < 2 {
        anyhow::bail!(
            "a KV cache of {num_blocks} blocks holds nothing: one block is reserved, so it needs \
             at least 2 (raise {sizing_flags})"
        );
    }
    let tokens = (num_blocks - 1) * block_size;
    if (tokens as u64) < max_model_len {
        anyhow::bail!(
            "the KV cache holds {tokens} tokens ({num_blocks} blocks of {block_size}, one of them \
             reserved), fewer than one request of --max-model-len {max_model_len} needs: raise \
             {sizing_flags}, or lower --max-model-len to at most {tokens}"
        );
    }
    Ok(())
}

/// One forward step outside the engine (not counted in any metric), so that the first request
/// does not pay for first-touch page faults and so that `ready` means a step has run. The KV it
/// writes lands in block 0, which every sequence overwrites before reading.
fn warm_up(backend: &mut dyn Backend) -> anyhow::Result<()> {
    use backend::{LogitsFor, SeqInput};
    let started = std::time::Instant::now();
    backend
        .forward(&[SeqInput {
            tokens: &[0],
            start_pos: 0,
            block_table: &[0],
            logits_for: LogitsFor::Last,
        }])
        .context("warm-up step")?;
    tracing::info!("warm-up step ran in {:.2?}", started.elapsed());
    Ok(())
}
