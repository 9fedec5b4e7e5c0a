//! The metrics a server sets up before it serves.
//!
//! The metrics a server sets up before it serves: the exporter's configuration, the cache
//! settings in `vllm:cache_config_info`, Dynamo's model configuration gauges.

use exporter::format_float;
use exporter::{Exporter, ExporterConfig};

use crate::api::AppState;
use crate::config::ServerConfig;

/// The exporter's configuration for a server with `config`, for a model context of
/// `max_model_len`.
pub(crate) fn exporter_config(
    config: &ServerConfig,
    max_model_len: u64,
) -> anyhow::Result<ExporterConfig> {
    let mut exporter = ExporterConfig::new(max_model_len);
    exporter.buckets = config.buckets(exporter.buckets)?;
    exporter.show_hidden_for = config.show_hidden_metrics_for_version;
    exporter.enable_exemplars = config.enable_exemplars;
    exporter.engine_stats = config.engine_stats;
    exporter.created_series = !created_series_disabled(config);
    Ok(exporter)
}

/// prometheus_client's variable that turns the `_created` series off.
pub(crate) const CREATED_SERIES_VAR: &str = "PROMETHEUS_DISABLE_CREATED_SERIES";

/// Whether [`CREATED_SERIES_VAR`] says so (true, 1 or t, any case).
fn created_series_disabled(config: &ServerConfig) -> bool {
    config
        .environment
        .get(CREATED_SERIES_VAR)
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "t"))
}

/// `vllm:cache_config_info`'s labels: the cache settings of this run (Python's spelling of
/// values, as vLLM prints them; the CPU backend has no separate CPU swap space, hence `None`).
pub(crate) fn cache_config_labels(
    config: &ServerConfig,
    engine: &str,
    num_blocks: usize,
    max_model_len: u64,
) -> Vec<(&'static str, String)> {
    let py_bool = |b: bool| if b { "True" } else { "False" }.to_owned();
    let py_opt = |v: Option<u64>| v.map_or("None".to_owned(), |n| n.to_string());
    let none = || "None".to_owned();
    let block = config.engine.block_size.to_string();
    let kv_tokens = num_blocks.saturating_sub(1) * config.engine.block_size as usize;
    vec![
        ("block_size", block.clone()),
        (
            "user_specified_block_size",
            py_bool(config.engine.block_size != 16),
        ),
        ("kv_cache_layout", none()),
        ("prefix_match_unit", block.clone()),
        (
            "gpu_memory_utilization",
            format_float(config.engine.gpu_memory_utilization),
        ),
        ("cache_dtype", config.engine.kv_cache_dtype.clone()),
        ("is_attention_free", py_bool(false)),
        (
            "num_gpu_blocks_override",
            py_opt(config.engine.num_gpu_blocks_override),
        ),
        // Llama has no sliding window.
        ("sliding_window", none()),
        (
            "enable_prefix_caching",
            py_bool(config.engine.prefix_caching),
        ),
        // Vigil's block hashes are SHA-256 (kv_cache/block_hash.rs).
        ("prefix_caching_hash_algo", "sha256".to_owned()),
        ("prefix_cache_retention_interval", none()),
        ("kv_cache_dtype_skip_layers", "[]".to_owned()),
        // The Mamba and hybrid-model settings: vLLM's defaults (Vigil serves Llama only).
        ("mamba_page_size_padded", none()),
        ("skip_page_size_padded", py_bool(false)),
        ("mamba_block_size", none()),
        ("mamba_cache_dtype", "auto".to_owned()),
        ("mamba_ssm_cache_dtype", "auto".to_owned()),
        ("mamba_cache_mode", "none".to_owned()),
        ("enable_mamba_shared_prefix_checkpoint", py_bool(false)),
        ("replayssm_buffer_len", none()),
        ("use_replayssm", py_bool(false)),
        ("use_kda_recoverssm", py_bool(false)),
        ("num_gpu_blocks", num_blocks.to_string()),
        // No CPU offloading.
        ("num_cpu_blocks", none()),
        ("simple_cpu_offload_num_blocks", none()),
        ("effective_attention_block_size", block.clone()),
        ("kv_cache_size_tokens", kv_tokens.to_string()),
        (
            "kv_cache_max_concurrency",
            format_float(kv_tokens as f64 / max_model_len.max(1) as f64),
        ),
        ("hash_block_size", block.clone()),
        ("cache_hit_alignment_tokens", block),
        ("kv_sharing_fast_prefill", py_bool(false)),
        ("swa_bounded_replay", py_bool(false)),
        (
            "kv_cache_memory_bytes",
            py_opt(
                config
                    .engine
                    .num_gpu_blocks_override
                    .is_none()
                    .then_some(config.engine.kv_cache_memory_bytes),
            ),
        ),
        // No KV offloading.
        ("kv_offloading_size", none()),
        ("kv_offloading_backend", none()),
        ("_block_size_resolved", py_bool(true)),
        ("engine", engine.to_owned()),
    ]
}

/// Dynamo's model configuration gauges for every served name (lower-cased, as Dynamo labels
/// them).
pub(crate) fn set_dynamo_model_config(
    exporter: &Exporter,
    state: &AppState,
    num_blocks: usize,
    block_size: usize,
    config: &ServerConfig,
    batch_token_budget: u32,
    max_model_len: u64,
) -> anyhow::Result<()> {
    use exporter::catalog::dynamo::*;
    for name in &state.served_model_names {
        let labels = [("model", name.to_lowercase())];
        for (def, value) in [
            (&MODEL_TOTAL_KV_BLOCKS, num_blocks as f64),
            (&MODEL_MAX_NUM_SEQS, f64::from(config.engine.max_num_seqs)),
            (&MODEL_MAX_NUM_BATCHED_TOKENS, f64::from(batch_token_budget)),
            (&MODEL_CONTEXT_LENGTH, max_model_len as f64),
            (&MODEL_KV_CACHE_BLOCK_SIZE, block_size as f64),
            // One engine: a request is never migrated.
            (&MODEL_MIGRATION_LIMIT, 0.0),
        ] {
            exporter
                .set_gauge(def, &labels, value)
                .map_err(anyhow::Error::msg)?;
        }
    }
    Ok(())
}
