//! What `vigil serve` was asked to do, as plain settled values: the command line (or whatever
//! else starts a server) builds a [`ServerConfig`], and nothing in this crate reads flags.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use exporter::buckets::BucketConfig;
use exporter::MinorVersion;

use crate::api::dynamo::DynamoNames;

/// The model `vigil serve` serves when none is named.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// vLLM's default token budget per step with chunked prefill (a GPU's).
pub const DEFAULT_MAX_NUM_BATCHED_TOKENS: u32 = 2048;

/// The CPU backend's: a step of 256 tokens takes about half a second on two cores, so a long
/// prompt delays other streams' next tokens by that, not by seconds.
pub const CPU_MAX_NUM_BATCHED_TOKENS: u32 = 256;

/// Where to run the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// A GPU when the CUDA backend can run here, else the CPU.
    Auto,
    Cpu,
    /// The CUDA backend, or a start-up error saying why it cannot run.
    Cuda,
}

/// Everything a server needs to start. Field names follow the `vllm serve` flags they come from,
/// so that an error message can name the flag.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// An HF folder or a GGUF file.
    pub model: PathBuf,
    pub host: IpAddr,
    /// 0 picks a free port (logged).
    pub port: u16,
    /// The names the model is served under; the first is the `model_name` label. Empty: the
    /// model path.
    pub served_model_names: Vec<String>,
    /// The context length asked for; `None` is the model's own.
    pub max_model_len: Option<u64>,
    /// Record engine statistics (the `vllm:` series); vLLM's `--disable-log-stats` turns it off.
    pub engine_stats: bool,
    /// One access-log line per request.
    pub access_log: bool,
    pub show_hidden_metrics_for_version: Option<MinorVersion>,
    pub enable_exemplars: bool,
    /// Histogram bucket overrides by family, validated when given.
    pub custom_histogram_buckets: Vec<(String, Vec<f64>)>,
    /// KV-cache block size in tokens.
    pub block_size: u32,
    pub gpu_memory_utilization: f64,
    pub num_gpu_blocks_override: Option<u64>,
    pub device: Device,
    /// `auto`, `bfloat16`, `float16` or `float32` (reported in `vllm:cache_config_info`).
    pub kv_cache_dtype: String,
    /// The step's token budget asked for; [`ServerConfig::batch_token_budget`] settles it.
    pub max_num_batched_tokens: Option<u32>,
    pub max_num_seqs: u32,
    /// The CPU backend's KV-cache size when no block count is given.
    pub kv_cache_memory_bytes: u64,
    /// Required as `Authorization: Bearer KEY` on /v1/* when set.
    pub api_key: Option<String>,
    pub prefix_caching: bool,
    pub chunked_prefill: bool,
    pub otlp_traces_endpoint: Option<String>,
    /// Connections held open at once.
    pub max_connections: usize,
    /// How long a connection may idle, and how long a request may take to arrive.
    pub http_idle_timeout: Duration,
    pub http_read_timeout: Duration,
    /// How long requests in flight get to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// The hardware probes; their target is this process.
    pub probe_interval: Duration,
    pub nvml_probe: bool,
    pub ebpf_probe: bool,
    /// Dynamo's label values.
    pub dynamo: DynamoNames,
    /// `tool_choice: "auto"` with this parser (`None`: auto tool choice is off, vLLM's 400).
    pub auto_tool_parser: Option<crate::api::ToolParser>,
    /// What a JSON schema's object that does not say `additionalProperties` allows
    /// (`--structured-outputs-config`).
    pub structured_objects: engine::structured::ObjectDefault,
}

impl ServerConfig {
    /// The name the model is served under (the `model_name` label).
    pub fn model_name(&self) -> String {
        match self.served_model_names.first() {
            Some(name) => name.clone(),
            None => self.model.display().to_string(),
        }
    }

    /// The bucket layout: vLLM's, with the custom overrides and Dynamo's environment applied.
    pub fn buckets(&self, mut config: BucketConfig) -> anyhow::Result<BucketConfig> {
        for (family, bounds) in &self.custom_histogram_buckets {
            config = config
                .with_override(family, bounds.clone())
                .map_err(|e| anyhow::anyhow!("--custom-histogram-buckets: {e}"))?;
        }
        Ok(config.with_dynamo_env(&|name| std::env::var(name).ok()))
    }

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

    /// The probes to start, watching this process.
    pub fn probes(&self) -> probes::ProbeConfig {
        probes::ProbeConfig {
            interval: self.probe_interval,
            nvml: self.nvml_probe,
            ebpf: self.ebpf_probe,
            target: probes::Target::Pid(std::process::id()),
        }
    }
}
