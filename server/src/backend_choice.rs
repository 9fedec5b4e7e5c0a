//! The model, and the backend `--device` asks for, sized and warmed up before the server says it
//! is ready.

use anyhow::Context;
use backend::cpu::{host_memory, CpuBackend, CpuOptions, KvDtype, WeightFormat};
use backend::cuda::{CudaBackend, CudaOptions};
use backend::Backend;
use model::Model;

use crate::config::{Device, ServerConfig, DEFAULT_MODEL};

/// Loads the model `config` names, saying where it looked when it is missing.
pub fn load_model(config: &ServerConfig) -> anyhow::Result<Model> {
    let path = &config.model;
    if !path.exists() {
        let looked = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        let hint = if config.model == std::path::Path::new(DEFAULT_MODEL) {
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
pub fn max_model_len(config: &ServerConfig, model: &Model) -> anyhow::Result<u64> {
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
pub fn wants_cuda(requested: Device) -> anyhow::Result<bool> {
    use backend::cuda::availability::probe;
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
pub fn build_backend(
    config: &ServerConfig,
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
    if let Some(available) = host_memory::available_bytes().filter(|a| kv_bytes > *a) {
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
