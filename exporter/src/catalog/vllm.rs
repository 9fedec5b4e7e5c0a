//! vLLM's engine series, with vLLM's exact names, types, HELP, labels and buckets.
//!
//! vLLM's core engine metrics (`vllm/v1/metrics/loggers.py`, v0.33.0), with vLLM's exact names,
//! types, HELP strings, labels and bucket families, plus the legacy names Vigil keeps as
//! deprecated aliases.
//!
//! Every entry is recorded per engine under `model_name` and `engine` (except
//! `vllm:admission_rejections`, which vLLM labels by model only) and pre-created at start-up.

use super::{Deprecation, Kind, Label, MetricDef};
use crate::buckets::BucketFamily;
use crate::version::MinorVersion;

use BucketFamily::*;
use Kind::*;

/// `model_name, engine`: vLLM's base label set.
const L: &[Label] = &[Label::ModelName, Label::Engine];

/// Values of `vllm:request_success`'s `finished_reason` (`FINISH_REASON_STRINGS`).
pub const FINISHED_REASONS: &[&str] = &["stop", "length", "abort", "error", "repetition"];
/// Values of `vllm:num_requests_waiting_by_reason`'s `reason`.
pub const WAITING_REASONS: &[&str] = &["capacity", "deferred"];
/// Values of `vllm:engine_sleep_state`'s `sleep_state`.
pub const SLEEP_STATES: &[&str] = &["awake", "weights_offloaded", "discard_all"];
/// Values of `vllm:prompt_tokens_by_source`'s `source`.
pub const PROMPT_TOKEN_SOURCES: &[&str] =
    &["local_compute", "local_cache_hit", "external_kv_transfer"];
/// Values of `vllm:prompt_tokens_cached_by_source`'s `source` (`CacheHitSource`).
pub const CACHE_HIT_SOURCES: &[&str] = &["device", "host", "p2p", "disk", "external_unspecified"];
/// Values of `vllm:admission_rejections`'s `reason`.
pub const ADMISSION_REJECTION_REASONS: &[&str] = &["max_num_queued_reqs", "max_num_queued_tokens"];

/// The vLLM minor version the legacy names below count as deprecated in. vLLM deprecated them in
/// 0.9 and 0.11 and has since removed them; Vigil keeps them as mirrors, deprecated in the minor
/// before its catalog's release (`crate::gating::VLLM_CATALOG`), so they are hidden and the
/// value a vLLM operator of that release passes, `--show-hidden-metrics-for-version=0.32`,
/// brings them back for dashboards that still read them.
pub const LEGACY_DEPRECATED_IN: MinorVersion = MinorVersion::new(0, 32);

const fn labels_with(extra: &'static [Label; 3]) -> &'static [Label] {
    extra
}

// ---- Scheduler state (gauges) ----

/// `vllm:num_requests_running`: Number of requests in model execution batches.
pub static NUM_REQUESTS_RUNNING: MetricDef = MetricDef::new(
    "vllm:num_requests_running",
    Gauge,
    "Number of requests in model execution batches.",
    L,
)
.precreate()
.engine_stat();

/// `vllm:num_requests_waiting`: Number of requests waiting to be processed.
pub static NUM_REQUESTS_WAITING: MetricDef = MetricDef::new(
    "vllm:num_requests_waiting",
    Gauge,
    "Number of requests waiting to be processed.",
    L,
)
.precreate()
.engine_stat();

/// `vllm:num_requests_waiting_by_reason`: Number of waiting requests by reason. Reason labels:
/// 'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints
/// (LoRA budget, KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.
pub static NUM_REQUESTS_WAITING_BY_REASON: MetricDef = MetricDef::new(
    "vllm:num_requests_waiting_by_reason",
    Gauge,
    "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
    labels_with(&[Label::ModelName, Label::Engine, Label::OneOf { name: "reason", values: WAITING_REASONS }]),
)
.precreate()
.engine_stat();

/// `vllm:engine_sleep_state`: Engine sleep state; awake = 0 means engine is sleeping; awake = 1
/// means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep
/// level 2.
pub static ENGINE_SLEEP_STATE: MetricDef = MetricDef::new(
    "vllm:engine_sleep_state",
    Gauge,
    "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
    labels_with(&[Label::ModelName, Label::Engine, Label::OneOf { name: "sleep_state", values: SLEEP_STATES }]),
)
.precreate()
.initial_one("awake")
.engine_stat();

/// `vllm:kv_cache_usage_perc`: KV-cache usage. 1 means 100 percent usage.
pub static KV_CACHE_USAGE_PERC: MetricDef = MetricDef::new(
    "vllm:kv_cache_usage_perc",
    Gauge,
    "KV-cache usage. 1 means 100 percent usage.",
    L,
)
.precreate()
.engine_stat();

// ---- Caches (counters) ----

/// `vllm:prefix_cache_queries`: Prefix cache queries, in terms of number of queried tokens.
pub static PREFIX_CACHE_QUERIES: MetricDef = MetricDef::new(
    "vllm:prefix_cache_queries",
    Counter,
    "Prefix cache queries, in terms of number of queried tokens.",
    L,
)
.precreate()
.engine_stat();

/// `vllm:prefix_cache_hits`: Prefix cache hits, in terms of number of cached tokens.
pub static PREFIX_CACHE_HITS: MetricDef = MetricDef::new(
    "vllm:prefix_cache_hits",
    Counter,
    "Prefix cache hits, in terms of number of cached tokens.",
    L,
)
.precreate()
.engine_stat();

/// `vllm:external_prefix_cache_queries`: External prefix cache queries from KV connector
/// cross-instance cache sharing, in terms of number of queried tokens.
pub static EXTERNAL_PREFIX_CACHE_QUERIES: MetricDef = MetricDef::new(
    "vllm:external_prefix_cache_queries",
    Counter,
    "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens.",
    L,
)
.precreate()
.engine_stat();

/// `vllm:external_prefix_cache_hits`: External prefix cache hits from KV connector cross-instance
/// cache sharing, in terms of number of cached tokens.
pub static EXTERNAL_PREFIX_CACHE_HITS: MetricDef = MetricDef::new(
    "vllm:external_prefix_cache_hits",
    Counter,
    "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.",
    L,
)
.precreate()
.engine_stat();

/// `vllm:mm_cache_queries`: Multi-modal cache queries, in terms of number of queried items.
pub static MM_CACHE_QUERIES: MetricDef = MetricDef::new(
    "vllm:mm_cache_queries",
    Counter,
    "Multi-modal cache queries, in terms of number of queried items.",
    L,
)
.precreate()
.engine_stat();

/// `vllm:mm_cache_hits`: Multi-modal cache hits, in terms of number of cached items.
pub static MM_CACHE_HITS: MetricDef = MetricDef::new(
    "vllm:mm_cache_hits",
    Counter,
    "Multi-modal cache hits, in terms of number of cached items.",
    L,
)
.precreate()
.engine_stat();

// ---- Throughput and outcomes (counters) ----

/// `vllm:num_preemptions`: Cumulative number of preemption from the engine.
pub static NUM_PREEMPTIONS: MetricDef = MetricDef::new(
    "vllm:num_preemptions",
    Counter,
    "Cumulative number of preemption from the engine.",
    L,
)
.precreate()
.engine_stat();

/// `vllm:prompt_tokens`: Number of prefill tokens processed.
pub static PROMPT_TOKENS: MetricDef = MetricDef::new(
    "vllm:prompt_tokens",
    Counter,
    "Number of prefill tokens processed.",
    L,
)
.precreate()
.engine_stat();

/// `vllm:prompt_tokens_by_source`: Number of prompt tokens by source.
pub static PROMPT_TOKENS_BY_SOURCE: MetricDef = MetricDef::new(
    "vllm:prompt_tokens_by_source",
    Counter,
    "Number of prompt tokens by source.",
    labels_with(&[
        Label::ModelName,
        Label::Engine,
        Label::OneOf {
            name: "source",
            values: PROMPT_TOKEN_SOURCES,
        },
    ]),
)
.precreate()
.engine_stat();

/// `vllm:prompt_tokens_cached`: Number of cached prompt tokens (local + external).
pub static PROMPT_TOKENS_CACHED: MetricDef = MetricDef::new(
    "vllm:prompt_tokens_cached",
    Counter,
    "Number of cached prompt tokens (local + external).",
    L,
)
.precreate()
.engine_stat();

/// `vllm:prompt_tokens_cached_by_source`: Prefix-cache hit tokens by the cache tier that supplied
/// them: device (local HBM), host (offloaded to DRAM), disk, p2p (transferred from another vLLM
/// instance) or external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits +
/// vllm:external_prefix_cache_hits.
pub static PROMPT_TOKENS_CACHED_BY_SOURCE: MetricDef = MetricDef::new(
    "vllm:prompt_tokens_cached_by_source",
    Counter,
    "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.",
    labels_with(&[Label::ModelName, Label::Engine, Label::OneOf { name: "source", values: CACHE_HIT_SOURCES }]),
)
.precreate()
.engine_stat();

/// `vllm:generation_tokens`: Number of generation tokens processed.
pub static GENERATION_TOKENS: MetricDef = MetricDef::new(
    "vllm:generation_tokens",
    Counter,
    "Number of generation tokens processed.",
    L,
)
.precreate()
.engine_stat();

/// `vllm:request_success`: Count of successfully processed requests.
pub static REQUEST_SUCCESS: MetricDef = MetricDef::new(
    "vllm:request_success",
    Counter,
    "Count of successfully processed requests.",
    labels_with(&[
        Label::ModelName,
        Label::Engine,
        Label::OneOf {
            name: "finished_reason",
            values: FINISHED_REASONS,
        },
    ]),
)
.precreate()
.engine_stat();

/// `vllm:admission_rejections`: Number of admission attempts rejected by a queue limit, by reason.
pub static ADMISSION_REJECTIONS: MetricDef = MetricDef::new(
    "vllm:admission_rejections",
    Counter,
    "Number of admission attempts rejected by a queue limit, by reason.",
    &[
        Label::ModelName,
        Label::OneOf {
            name: "reason",
            values: ADMISSION_REJECTION_REASONS,
        },
    ],
)
.precreate()
.engine_stat();

// ---- Per-request histograms ----

/// `vllm:request_prompt_tokens`: Number of prefill tokens processed.
pub static REQUEST_PROMPT_TOKENS: MetricDef = MetricDef::new(
    "vllm:request_prompt_tokens",
    Histogram,
    "Number of prefill tokens processed.",
    L,
)
.buckets(RequestTokens)
.with_exemplars()
.precreate()
.engine_stat();

/// `vllm:request_generation_tokens`: Number of generation tokens processed.
pub static REQUEST_GENERATION_TOKENS: MetricDef = MetricDef::new(
    "vllm:request_generation_tokens",
    Histogram,
    "Number of generation tokens processed.",
    L,
)
.buckets(RequestTokens)
.with_exemplars()
.precreate()
.engine_stat();

/// A histogram, whose name keeps `_total` as vLLM's does.
pub static ITERATION_TOKENS: MetricDef = MetricDef::new(
    "vllm:iteration_tokens_total",
    Histogram,
    "Histogram of number of tokens per engine_step.",
    L,
)
.buckets(IterationTokens)
.precreate()
.engine_stat();

/// `vllm:request_max_num_generation_tokens`: Histogram of maximum number of requested generation
/// tokens.
pub static REQUEST_MAX_NUM_GENERATION_TOKENS: MetricDef = MetricDef::new(
    "vllm:request_max_num_generation_tokens",
    Histogram,
    "Histogram of maximum number of requested generation tokens.",
    L,
)
.buckets(RequestTokens)
.with_exemplars()
.precreate()
.engine_stat();

/// `vllm:request_params_n`: Histogram of the n request parameter.
pub static REQUEST_PARAMS_N: MetricDef = MetricDef::new(
    "vllm:request_params_n",
    Histogram,
    "Histogram of the n request parameter.",
    L,
)
.buckets(RequestParamsN)
.with_exemplars()
.precreate()
.engine_stat();

/// `vllm:request_params_max_tokens`: Histogram of the max_tokens request parameter.
pub static REQUEST_PARAMS_MAX_TOKENS: MetricDef = MetricDef::new(
    "vllm:request_params_max_tokens",
    Histogram,
    "Histogram of the max_tokens request parameter.",
    L,
)
.buckets(RequestTokens)
.with_exemplars()
.precreate()
.engine_stat();

/// `vllm:time_to_first_token_seconds`: Histogram of time to first token in seconds.
pub static TIME_TO_FIRST_TOKEN_SECONDS: MetricDef = MetricDef::new(
    "vllm:time_to_first_token_seconds",
    Histogram,
    "Histogram of time to first token in seconds.",
    L,
)
.buckets(TimeToFirstToken)
.with_exemplars()
.precreate()
.engine_stat();

/// `vllm:inter_token_latency_seconds`: Histogram of inter-token latency in seconds.
pub static INTER_TOKEN_LATENCY_SECONDS: MetricDef = MetricDef::new(
    "vllm:inter_token_latency_seconds",
    Histogram,
    "Histogram of inter-token latency in seconds.",
    L,
)
.buckets(InterTokenLatency)
.with_exemplars()
.precreate()
.engine_stat();

/// `vllm:request_time_per_output_token_seconds`: Histogram of time_per_output_token_seconds per
/// request.
pub static REQUEST_TIME_PER_OUTPUT_TOKEN_SECONDS: MetricDef = MetricDef::new(
    "vllm:request_time_per_output_token_seconds",
    Histogram,
    "Histogram of time_per_output_token_seconds per request.",
    L,
)
.buckets(InterTokenLatency)
.with_exemplars()
.precreate()
.engine_stat();

/// `vllm:e2e_request_latency_seconds`: Histogram of e2e request latency in seconds.
pub static E2E_REQUEST_LATENCY_SECONDS: MetricDef = MetricDef::new(
    "vllm:e2e_request_latency_seconds",
    Histogram,
    "Histogram of e2e request latency in seconds.",
    L,
)
.buckets(RequestLatency)
.with_exemplars()
.precreate()
.engine_stat();

/// `vllm:request_queue_time_seconds`: Histogram of time spent in WAITING phase for request.
pub static REQUEST_QUEUE_TIME_SECONDS: MetricDef = MetricDef::new(
    "vllm:request_queue_time_seconds",
    Histogram,
    "Histogram of time spent in WAITING phase for request.",
    L,
)
.buckets(RequestLatency)
.with_exemplars()
.precreate()
.engine_stat();

/// `vllm:request_inference_time_seconds`: Histogram of time spent in RUNNING phase for request.
pub static REQUEST_INFERENCE_TIME_SECONDS: MetricDef = MetricDef::new(
    "vllm:request_inference_time_seconds",
    Histogram,
    "Histogram of time spent in RUNNING phase for request.",
    L,
)
.buckets(RequestLatency)
.with_exemplars()
.precreate()
.engine_stat();

/// `vllm:request_prefill_time_seconds`: Histogram of time spent in PREFILL phase for request.
pub static REQUEST_PREFILL_TIME_SECONDS: MetricDef = MetricDef::new(
    "vllm:request_prefill_time_seconds",
    Histogram,
    "Histogram of time spent in PREFILL phase for request.",
    L,
)
.buckets(RequestLatency)
.with_exemplars()
.precreate()
.engine_stat();

/// `vllm:request_decode_time_seconds`: Histogram of time spent in DECODE phase for request.
pub static REQUEST_DECODE_TIME_SECONDS: MetricDef = MetricDef::new(
    "vllm:request_decode_time_seconds",
    Histogram,
    "Histogram of time spent in DECODE phase for request.",
    L,
)
.buckets(RequestLatency)
.with_exemplars()
.precreate()
.engine_stat();

/// `vllm:request_num_preemptions`: Histogram of the number of times a request was preempted.
pub static REQUEST_NUM_PREEMPTIONS: MetricDef = MetricDef::new(
    "vllm:request_num_preemptions",
    Histogram,
    "Histogram of the number of times a request was preempted.",
    L,
)
.buckets(RequestNumPreemptions)
.with_exemplars()
.precreate()
.engine_stat();

/// `vllm:request_prefill_kv_computed_tokens`: Histogram of new KV tokens computed during prefill
/// (excluding cached tokens).
pub static REQUEST_PREFILL_KV_COMPUTED_TOKENS: MetricDef = MetricDef::new(
    "vllm:request_prefill_kv_computed_tokens",
    Histogram,
    "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
    L,
)
.buckets(RequestTokens)
.with_exemplars()
.precreate()
.engine_stat();

// ---- Model FLOPs utilisation (registered unconditionally; incremented only when estimated) ----

/// `vllm:estimated_flops_per_gpu`: Estimated number of floating point operations per GPU (for Model
/// Flops Utilization calculations).
pub static ESTIMATED_FLOPS_PER_GPU: MetricDef = MetricDef::new(
    "vllm:estimated_flops_per_gpu",
    Counter,
    "Estimated number of floating point operations per GPU (for Model Flops Utilization calculations).",
    L,
)
.precreate()
.engine_stat();

/// `vllm:estimated_read_bytes_per_gpu`: Estimated number of bytes read from memory per GPU (for
/// Model Flops Utilization calculations).
pub static ESTIMATED_READ_BYTES_PER_GPU: MetricDef = MetricDef::new(
    "vllm:estimated_read_bytes_per_gpu",
    Counter,
    "Estimated number of bytes read from memory per GPU (for Model Flops Utilization calculations).",
    L,
)
.precreate()
.engine_stat();

/// `vllm:estimated_write_bytes_per_gpu`: Estimated number of bytes written to memory per GPU (for
/// Model Flops Utilization calculations).
pub static ESTIMATED_WRITE_BYTES_PER_GPU: MetricDef = MetricDef::new(
    "vllm:estimated_write_bytes_per_gpu",
    Counter,
    "Estimated number of bytes written to memory per GPU (for Model Flops Utilization calculations).",
    L,
)
.precreate()
.engine_stat();

// ---- Configuration ----

/// Label names of `vllm:cache_config_info`: every field of vLLM 0.33's `CacheConfig`
/// (`vllm/config/cache.py`, in declaration order; `CacheConfig.metrics_info()` makes each a
/// label), plus `engine`. The field set changes with vLLM releases; this is the catalog's.
pub const CACHE_CONFIG_LABELS: &[Label] = &[
    Label::Config("block_size"),
    Label::Config("user_specified_block_size"),
    Label::Config("kv_cache_layout"),
    Label::Config("prefix_match_unit"),
    Label::Config("gpu_memory_utilization"),
    Label::Config("cache_dtype"),
    Label::Config("is_attention_free"),
    Label::Config("num_gpu_blocks_override"),
    Label::Config("sliding_window"),
    Label::Config("enable_prefix_caching"),
    Label::Config("prefix_caching_hash_algo"),
    Label::Config("prefix_cache_retention_interval"),
    Label::Config("kv_cache_dtype_skip_layers"),
    Label::Config("mamba_page_size_padded"),
    Label::Config("skip_page_size_padded"),
    Label::Config("mamba_block_size"),
    Label::Config("mamba_cache_dtype"),
    Label::Config("mamba_ssm_cache_dtype"),
    Label::Config("mamba_cache_mode"),
    Label::Config("enable_mamba_shared_prefix_checkpoint"),
    Label::Config("replayssm_buffer_len"),
    Label::Config("use_replayssm"),
    Label::Config("use_kda_recoverssm"),
    Label::Config("num_gpu_blocks"),
    Label::Config("num_cpu_blocks"),
    Label::Config("simple_cpu_offload_num_blocks"),
    Label::Config("effective_attention_block_size"),
    Label::Config("kv_cache_size_tokens"),
    Label::Config("kv_cache_max_concurrency"),
    Label::Config("hash_block_size"),
    Label::Config("cache_hit_alignment_tokens"),
    Label::Config("kv_sharing_fast_prefill"),
    Label::Config("swa_bounded_replay"),
    Label::Config("kv_cache_memory_bytes"),
    Label::Config("kv_offloading_size"),
    Label::Config("kv_offloading_backend"),
    Label::Config("_block_size_resolved"),
    Label::Engine,
];

/// `vllm:cache_config_info`: Information of the LLMEngine CacheConfig.
pub static CACHE_CONFIG_INFO: MetricDef = MetricDef::new(
    "vllm:cache_config_info",
    Gauge,
    "Information of the LLMEngine CacheConfig",
    CACHE_CONFIG_LABELS,
)
.engine_stat();

// ---- Legacy names: deprecated aliases with the values of their replacements ----

/// `vllm:gpu_cache_usage_perc`: GPU KV-cache usage. 1 means 100 percent usage.
pub static GPU_CACHE_USAGE_PERC: MetricDef = MetricDef::new(
    "vllm:gpu_cache_usage_perc",
    Gauge,
    "GPU KV-cache usage. 1 means 100 percent usage.",
    L,
)
.mirror_of(&KV_CACHE_USAGE_PERC)
.deprecated(Deprecation {
    since: LEGACY_DEPRECATED_IN,
    use_instead: &KV_CACHE_USAGE_PERC,
})
.engine_stat();

/// `vllm:gpu_prefix_cache_queries`: GPU prefix cache queries, in terms of number of queried tokens.
pub static GPU_PREFIX_CACHE_QUERIES: MetricDef = MetricDef::new(
    "vllm:gpu_prefix_cache_queries",
    Counter,
    "GPU prefix cache queries, in terms of number of queried tokens.",
    L,
)
.mirror_of(&PREFIX_CACHE_QUERIES)
.deprecated(Deprecation {
    since: LEGACY_DEPRECATED_IN,
    use_instead: &PREFIX_CACHE_QUERIES,
})
.engine_stat();

/// `vllm:gpu_prefix_cache_hits`: GPU prefix cache hits, in terms of number of cached tokens.
pub static GPU_PREFIX_CACHE_HITS: MetricDef = MetricDef::new(
    "vllm:gpu_prefix_cache_hits",
    Counter,
    "GPU prefix cache hits, in terms of number of cached tokens.",
    L,
)
.mirror_of(&PREFIX_CACHE_HITS)
.deprecated(Deprecation {
    since: LEGACY_DEPRECATED_IN,
    use_instead: &PREFIX_CACHE_HITS,
})
.engine_stat();

/// `vllm:time_per_output_token_seconds`: Histogram of time per output token in seconds.
pub static TIME_PER_OUTPUT_TOKEN_SECONDS: MetricDef = MetricDef::new(
    "vllm:time_per_output_token_seconds",
    Histogram,
    "Histogram of time per output token in seconds.",
    L,
)
.buckets(InterTokenLatency)
.with_exemplars()
.mirror_of(&INTER_TOKEN_LATENCY_SECONDS)
.deprecated(Deprecation {
    since: LEGACY_DEPRECATED_IN,
    use_instead: &INTER_TOKEN_LATENCY_SECONDS,
})
.engine_stat();

/// Every vLLM entry, in rendering order.
/// Every series this module defines.
pub static ALL: &[&MetricDef] = &[
    &NUM_REQUESTS_RUNNING,
    &NUM_REQUESTS_WAITING,
    &NUM_REQUESTS_WAITING_BY_REASON,
    &ENGINE_SLEEP_STATE,
    &KV_CACHE_USAGE_PERC,
    &PREFIX_CACHE_QUERIES,
    &PREFIX_CACHE_HITS,
    &EXTERNAL_PREFIX_CACHE_QUERIES,
    &EXTERNAL_PREFIX_CACHE_HITS,
    &MM_CACHE_QUERIES,
    &MM_CACHE_HITS,
    &NUM_PREEMPTIONS,
    &PROMPT_TOKENS,
    &PROMPT_TOKENS_BY_SOURCE,
    &PROMPT_TOKENS_CACHED,
    &PROMPT_TOKENS_CACHED_BY_SOURCE,
    &GENERATION_TOKENS,
    &REQUEST_SUCCESS,
    &ADMISSION_REJECTIONS,
    &REQUEST_PROMPT_TOKENS,
    &REQUEST_GENERATION_TOKENS,
    &ITERATION_TOKENS,
    &REQUEST_MAX_NUM_GENERATION_TOKENS,
    &REQUEST_PARAMS_N,
    &REQUEST_PARAMS_MAX_TOKENS,
    &TIME_TO_FIRST_TOKEN_SECONDS,
    &INTER_TOKEN_LATENCY_SECONDS,
    &REQUEST_TIME_PER_OUTPUT_TOKEN_SECONDS,
    &E2E_REQUEST_LATENCY_SECONDS,
    &REQUEST_QUEUE_TIME_SECONDS,
    &REQUEST_INFERENCE_TIME_SECONDS,
    &REQUEST_PREFILL_TIME_SECONDS,
    &REQUEST_DECODE_TIME_SECONDS,
    &REQUEST_NUM_PREEMPTIONS,
    &REQUEST_PREFILL_KV_COMPUTED_TOKENS,
    &ESTIMATED_FLOPS_PER_GPU,
    &ESTIMATED_READ_BYTES_PER_GPU,
    &ESTIMATED_WRITE_BYTES_PER_GPU,
    &CACHE_CONFIG_INFO,
    &GPU_CACHE_USAGE_PERC,
    &GPU_PREFIX_CACHE_QUERIES,
    &GPU_PREFIX_CACHE_HITS,
    &TIME_PER_OUTPUT_TOKEN_SECONDS,
];

/// vLLM families Vigil does not emit (registered by vLLM only under configurations Vigil lacks).
pub static OMITTED: &[(&str, &str)] = &[
    ("vllm:num_requests_kv_fetch_by_stage", "needs a KV-transfer consumer (disaggregated prefill), which Vigil lacks"),
    ("vllm:corrupted_requests", "vLLM registers it only with VLLM_COMPUTE_NANS_IN_LOGITS; Vigil does not check logits for NaNs yet"),
    ("vllm:watermark_requests", "needs watermarking (watermark_config), which Vigil lacks"),
    ("vllm:kv_block_lifetime_seconds", "vLLM registers it only with --kv-cache-metrics, which Vigil does not offer yet"),
    ("vllm:kv_block_idle_before_evict_seconds", "vLLM registers it only with --kv-cache-metrics, which Vigil does not offer yet"),
    ("vllm:kv_block_reuse_gap_seconds", "vLLM registers it only with --kv-cache-metrics, which Vigil does not offer yet"),
    ("vllm:lora_requests_info", "needs LoRA adapters, which Vigil lacks"),
    ("vllm:spec_decode_num_drafts", "needs speculative decoding, which Vigil lacks"),
    ("vllm:spec_decode_num_draft_tokens", "needs speculative decoding, which Vigil lacks"),
    ("vllm:spec_decode_num_accepted_tokens", "needs speculative decoding, which Vigil lacks"),
    ("vllm:spec_decode_num_accepted_tokens_per_pos", "needs speculative decoding, which Vigil lacks"),
    ("vllm:nixl_*, vllm:mooncake_*, vllm:kv_offload_* and other KV-connector families", "need a KV connector, which Vigil lacks"),
];
