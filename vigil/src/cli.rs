//! The command line. Flags are named as `vllm serve` names them wherever vLLM has the flag.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};
use exporter::parse_show_hidden_flag;
use exporter::BucketConfig;
use exporter::MinorVersion;
use server::ServerConfig;

pub(crate) use engine::DEFAULT_MODEL;

/// The `vigil` command line.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about = "An instrumented LLM serving engine.")]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,

    /// Log lines as plain text or as one JSON object each (for journald and log shippers).
    #[arg(long, global = true, value_enum, env = "VIGIL_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// The command line as parsed: [`Cli::command_with_env`], so that a systemd
    /// `EnvironmentFile=` can set any `vigil serve` flag.
    pub fn parse_args() -> Cli {
        let matches = Cli::command_with_env().get_matches();
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// The command line, with every `vigil serve` argument that has no environment variable of
    /// its own (as `VLLM_API_KEY` or `DYN_NAMESPACE`) also read from `VIGIL_<NAME>`
    /// (`serve_env_name`); a flag on the command line wins over the environment.
    pub fn command_with_env() -> clap::Command {
        <Cli as clap::CommandFactory>::command().mut_subcommand("serve", |serve| {
            serve.mut_args(|arg| {
                if arg.get_env().is_some() {
                    return arg;
                }
                let name = serve_env_name(arg.get_id().as_str());
                arg.env(name)
            })
        })
    }
}

/// The environment variable of a `vigil serve` argument: `--max-model-len` is
/// `VIGIL_MAX_MODEL_LEN`, the model path `VIGIL_MODEL`.
pub(crate) fn serve_env_name(id: &str) -> String {
    format!("VIGIL_{}", id.replace('-', "_").to_uppercase())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model behind an OpenAI-compatible API, with metrics at /metrics.
    Serve(Box<ServeArgs>),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run as a node agent beside an engine Vigil does not run (e.g. vLLM): its metrics passed
    /// through with Dynamo's labels, plus the hardware probes watching its process.
    Probe(Box<ProbeArgs>),
    /// Read every GPU through NVML as the probe does and compare with `nvidia-smi`.
    CheckGpu(CheckGpuArgs),
    /// Predict what a decode step costs on an H100 from the simulated GPU's counts (run it on
    /// the simulator: `cargo xtask gpu-profile`).
    GpuProfile(crate::gpu_profile::GpuProfileArgs),
    /// Print the systemd environment file: every `vigil serve` setting as VIGIL_<FLAG>, with its
    /// help and default (what `cargo xtask install` puts in /etc/vigil/vigil.env).
    EnvFile,
    /// Measure run-queue latency of a process's threads by role with the eBPF probe, print it
    /// like runqlat, and exit.
    SchedLatency(SchedLatencyArgs),
    /// Write the model's tokenizer as a Hugging Face tokenizer folder (tokenizer.json,
    /// tokenizer_config.json with the chat template), for clients that count tokens offline
    /// (aiperf and guidellm's --tokenizer DIR).
    ExportTokenizer(ExportTokenizerArgs),
    /// Serving health at a glance from /metrics endpoints (a Vigil, a vLLM, several): per engine
    /// queue, KV cache, throughput and latency quantiles over the last window, per GPU, per
    /// thread role, and the likeliest reason it is slow.
    Top(TopArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// An endpoint to read (`http://host:port` or its `/metrics` URL); repeat for several.
    /// Default: this node's Vigil (VIGIL_PORT, from the environment or /etc/vigil/vigil.env).
    #[arg(long)]
    pub url: Vec<String>,
    /// Print one window as plain text and exit.
    #[arg(long)]
    pub once: bool,
    /// Seconds between the two scrapes of a window.
    #[arg(long, default_value = "2", value_parser = parse_interval)]
    pub interval: std::time::Duration,
    /// Keep each window's scrapes in this folder (`I-0.prom`, `I-1.prom` and their `.time`).
    #[arg(long)]
    pub save_scrapes: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ExportTokenizerArgs {
    /// The model: an HF folder or a GGUF file.
    pub model: PathBuf,
    /// The folder to write (created if missing).
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct SchedLatencyArgs {
    /// Process to watch (0: every process).
    #[arg(long, default_value_t = 0)]
    pub pid: u32,
    /// Seconds to measure.
    #[arg(long, default_value = "5", value_parser = parse_interval)]
    pub duration: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// The engine's Prometheus endpoint, scraped when the agent's /metrics is (concurrent
    /// scrapes share one fetch).
    #[arg(long, value_name = "URL")]
    pub engine_metrics_url: String,

    /// While a fetch of a slow engine outlasts a scraper's timeout, the agent answers with the
    /// engine's last good scrape if it is at most this old (seconds), else without it.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_stale_after)]
    pub engine_stale_after: std::time::Duration,

    /// Keep the engine's families whose names start with this (repeatable).
    #[arg(long, value_name = "PREFIX", default_values_t = ["vllm:".to_owned()])]
    pub metric_prefix: Vec<String>,

    /// The engine's process, for the eBPF probe (default: the one listening on the URL's port).
    #[arg(long, value_name = "PID")]
    pub engine_pid: Option<u32>,

    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free port and logs it).
    #[arg(long, default_value_t = 8081)]
    pub port: u16,

    #[command(flatten)]
    pub probes: ProbeFlags,

    #[command(flatten)]
    pub dynamo: DynamoFlags,
}

#[derive(Debug, Clone, Args)]
pub struct CheckGpuArgs {
    /// Also write two NVML polls, a second apart, as JSON (the format the probe's tests replay).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// Model for the model, serving and benchmark sections: an HF folder or a GGUF file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,

    /// Run only these sections (repeatable or comma-separated; default: all).
    #[arg(long, value_enum, value_name = "SECTION", value_delimiter = ',')]
    pub only: Vec<CheckSection>,

    /// Python with torch and transformers, for the benchmark's comparison (skipped without).
    #[arg(long, default_value = "python3")]
    pub python: String,
}

/// A section of `vigil check-gpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckSection {
    Nvml,
    Kernels,
    Model,
    Serving,
    Bench,
    KernelTimes,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Load a running server like `vllm bench serve` and report throughput and latencies.
    Serve(Box<crate::bench::BenchServeArgs>),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Model to serve: an HF folder or a GGUF file.
    #[arg(default_value = DEFAULT_MODEL)]
    pub model: PathBuf,

    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free port and logs it).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,

    /// Name(s) the model is served under; the first is the `model_name` metric label. Defaults
    /// to the model path.
    #[arg(long, num_args = 1.., value_name = "NAME", value_parser = parse_served_model_name)]
    pub served_model_name: Vec<String>,

    /// Model context length in tokens (accepts 1k = 1000, 1K = 1024, likewise m/M, g/G). Defaults
    /// to the model's.
    #[arg(long, value_parser = parse_max_model_len)]
    pub max_model_len: Option<u64>,

    /// Do not record engine statistics (no vllm: series), as in vLLM.
    #[arg(long)]
    pub disable_log_stats: bool,

    /// Do not write the access log (one line per request; vLLM's flag for uvicorn's).
    #[arg(long)]
    pub disable_uvicorn_access_log: bool,

    /// Do not log requests (vLLM's flag; here it also turns the access log off).
    #[arg(long)]
    pub disable_log_requests: bool,

    /// Show metrics deprecated in this version (only the minor version before the running one
    /// is accepted).
    #[arg(long, value_name = "X.Y", value_parser = parse_show_hidden)]
    pub show_hidden_metrics_for_version: Option<MinorVersion>,

    /// Attach request ids as exemplars to request-level histograms (OpenMetrics only).
    #[arg(long)]
    pub enable_exemplars: bool,

    /// Override histogram bucket families, as JSON: {"family": [bounds...]}.
    #[arg(long, value_name = "JSON", value_parser = parse_custom_buckets)]
    pub custom_histogram_buckets: Option<CustomBuckets>,

    /// KV-cache block size in tokens.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub block_size: u32,

    /// Fraction of GPU memory the engine may use for weights, activations and KV cache.
    #[arg(long, default_value_t = 0.9, value_parser = parse_fraction)]
    pub gpu_memory_utilization: f64,

    /// Number of KV blocks to allocate, instead of sizing from memory.
    #[arg(long, value_name = "N")]
    pub num_gpu_blocks_override: Option<u64>,

    /// Where to run the model: auto (a GPU when the CUDA backend can run, else the CPU), cpu or
    /// cuda (an error when CUDA cannot run here).
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,

    /// Data type of the KV cache. auto: on the CPU f16 beside quantized weights (llama.cpp's
    /// default), on CUDA bfloat16; float16 and float32 are CPU-only.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bfloat16", "float16", "float32"])]
    pub kv_cache_dtype: String,

    /// Tokens computed per engine step, across all requests (default: 2048 on a GPU, 256 on the
    /// CPU, where a step of 2048 takes seconds and stalls every stream; without chunked
    /// prefill, enough for one whole prompt of --max-model-len, as vLLM).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_num_batched_tokens: Option<u32>,

    /// Requests running at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_num_seqs: u32,

    /// Memory for the KV cache in bytes (accepts 1G, 512M); ignored with --num-gpu-blocks-override.
    #[arg(long, default_value = "1G", value_parser = parse_bytes)]
    pub kv_cache_memory_bytes: u64,

    /// Require `Authorization: Bearer KEY` on /v1/* routes.
    #[arg(long, env = "VLLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Reuse KV blocks of shared prompt prefixes (on by default).
    #[arg(long, overrides_with = "no_enable_prefix_caching", action = ArgAction::SetTrue)]
    pub enable_prefix_caching: bool,

    /// Turn prefix caching off.
    #[arg(long, overrides_with = "enable_prefix_caching", action = ArgAction::SetTrue)]
    pub no_enable_prefix_caching: bool,

    /// Split long prompts into chunks across engine steps (on by default).
    #[arg(long, overrides_with = "no_enable_chunked_prefill", action = ArgAction::SetTrue)]
    pub enable_chunked_prefill: bool,

    /// Turn chunked prefill off: a prompt is computed in one step, and waits until the step's
    /// token budget has room for all of it.
    #[arg(long, overrides_with = "enable_chunked_prefill", action = ArgAction::SetTrue)]
    pub no_enable_chunked_prefill: bool,

    /// Launch every step's kernels one by one: no CUDA graphs of decode steps (vLLM's flag;
    /// without it, pure-decode steps of up to 256 sequences replay graphs captured at start-up).
    #[arg(long)]
    pub enforce_eager: bool,

    /// Export a trace of every request over OTLP to this collector URL (gRPC, or HTTP/protobuf
    /// with OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf and the full .../v1/traces URL).
    #[arg(long, value_name = "URL")]
    pub otlp_traces_endpoint: Option<String>,

    /// Connections held open at once; more are closed at once, logged and counted (default:
    /// the open-file limit less a reserve, at most 10000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// Seconds a connection may stay idle (before its first request, or between requests)
    /// before it is closed.
    #[arg(long, default_value = "30", value_name = "SECONDS", value_parser = parse_grace)]
    pub http_idle_timeout: std::time::Duration,

    /// Seconds a request may take to arrive whole (headers and body, from its first byte)
    /// before its connection is closed.
    #[arg(long, default_value = "30", value_name = "SECONDS", value_parser = parse_grace)]
    pub http_read_timeout: std::time::Duration,

    /// Seconds that requests in flight get to finish after SIGTERM before they are aborted (new
    /// requests get 503 with Retry-After meanwhile).
    #[arg(long, default_value = "30", value_name = "SECONDS", value_parser = parse_grace)]
    pub shutdown_timeout: std::time::Duration,

    /// Let the model call tools on its own (`tool_choice: "auto"`, the default when a request
    /// has tools), read by --tool-call-parser.
    #[arg(long, requires = "tool_call_parser")]
    pub enable_auto_tool_choice: bool,

    /// The format the model calls tools in, for --enable-auto-tool-choice.
    #[arg(long, value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(server::ToolParser::NAMES))]
    pub tool_call_parser: Option<String>,

    /// vLLM's structured-outputs settings, as JSON. `backend` ("auto", "xgrammar" or
    /// "guidance"; Vigil compiles with llguidance whichever is named) and
    /// `disable_additional_properties` decide what a JSON schema's object that does not say
    /// `additionalProperties` allows: nothing beyond its properties (the default, as vLLM's
    /// xgrammar), or any key ('{"backend": "guidance"}', JSON Schema's own default).
    #[arg(long, value_name = "JSON", default_value = "{}", value_parser = parse_structured_outputs_config)]
    pub structured_outputs_config: engine::ObjectDefault,

    #[command(flatten)]
    pub probes: ProbeFlags,

    #[command(flatten)]
    pub dynamo: DynamoFlags,
}

/// The hardware probes' flags, shared by `vigil serve` and `vigil probe`.
#[derive(Debug, Clone, Args)]
pub struct ProbeFlags {
    /// Seconds between reads of the hardware probes (NVML, eBPF aggregates).
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = parse_interval)]
    pub probe_interval: std::time::Duration,

    /// Do not poll GPUs through NVML.
    #[arg(long)]
    pub disable_nvml_probe: bool,

    /// Do not load the eBPF scheduling-latency probe.
    #[arg(long)]
    pub disable_ebpf_probe: bool,
}

impl ProbeFlags {
    /// What to start, watching `target` with the eBPF probe.
    pub fn config(&self, target: probes::Target) -> probes::ProbeConfig {
        probes::ProbeConfig {
            interval: self.probe_interval,
            nvml: !self.disable_nvml_probe,
            ebpf: !self.disable_ebpf_probe,
            target,
        }
    }
}

/// The names Dynamo's labels carry, shared by `vigil serve` and `vigil probe`.
#[derive(Debug, Clone, Args)]
pub struct DynamoFlags {
    /// Dynamo namespace of this worker (the `dynamo_namespace` label).
    #[arg(long, env = "DYN_NAMESPACE", default_value = "dynamo")]
    pub dynamo_namespace: String,

    /// Dynamo component name of this worker (`dynamo_component`).
    #[arg(long, default_value = "backend")]
    pub dynamo_component: String,

    /// Dynamo endpoint name of the engine (`dynamo_endpoint`).
    #[arg(long, default_value = "generate")]
    pub dynamo_endpoint: String,
}

impl DynamoFlags {
    /// The names, sanitized as Dynamo sanitizes label values.
    pub fn names(&self) -> server::DynamoNames {
        server::DynamoNames::new(
            &self.dynamo_namespace,
            &self.dynamo_component,
            &self.dynamo_endpoint,
        )
    }
}

impl ServeArgs {
    /// The server's configuration: the flags settled into plain values.
    pub fn into_config(self) -> ServerConfig {
        let max_connections = self.connection_limit();
        ServerConfig {
            served_model_names: self.served_model_name,
            engine: engine::EngineConfig {
                model: self.model,
                max_model_len: self.max_model_len,
                device: match self.device {
                    Device::Auto => engine::Device::Auto,
                    Device::Cpu => engine::Device::Cpu,
                    Device::Cuda => engine::Device::Cuda,
                },
                block_size: self.block_size,
                gpu_memory_utilization: self.gpu_memory_utilization,
                num_gpu_blocks_override: self.num_gpu_blocks_override,
                kv_cache_dtype: self.kv_cache_dtype,
                max_num_batched_tokens: self.max_num_batched_tokens,
                max_num_seqs: self.max_num_seqs,
                kv_cache_memory_bytes: self.kv_cache_memory_bytes,
                prefix_caching: !self.no_enable_prefix_caching,
                chunked_prefill: !self.no_enable_chunked_prefill,
                enforce_eager: self.enforce_eager,
            },
            engine_stats: !self.disable_log_stats,
            access_log: !(self.disable_uvicorn_access_log || self.disable_log_requests),
            show_hidden_metrics_for_version: self.show_hidden_metrics_for_version,
            enable_exemplars: self.enable_exemplars,
            custom_histogram_buckets: self.custom_histogram_buckets.map_or(Vec::new(), |c| c.0),
            api_key: self.api_key,
            otlp_traces_endpoint: self.otlp_traces_endpoint,
            max_connections,
            http_idle_timeout: self.http_idle_timeout,
            http_read_timeout: self.http_read_timeout,
            shutdown_timeout: self.shutdown_timeout,
            probe_interval: self.probes.probe_interval,
            nvml_probe: !self.probes.disable_nvml_probe,
            ebpf_probe: !self.probes.disable_ebpf_probe,
            dynamo: self.dynamo.names(),
            auto_tool_parser: self
                .tool_call_parser
                .as_deref()
                .filter(|_| self.enable_auto_tool_choice)
                .and_then(server::ToolParser::from_name),
            structured_objects: self.structured_outputs_config,
            environment: server::Environment::from_process(),
            host: self.host,
            port: self.port,
        }
    }

    /// `--max-connections`, or what the open-file limit leaves room for.
    fn connection_limit(&self) -> usize {
        if let Some(n) = self.max_connections {
            return n as usize;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit through a valid pointer to a local.
        let files = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            limit.rlim_cur.min(1 << 20) as usize
        } else {
            1024
        };
        // Descriptors for the model, logs, probes and the engine: kept out of the pool.
        files.saturating_sub(FILE_RESERVE).clamp(16, 10_000)
    }
}

/// `--custom-histogram-buckets`, validated family by family.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomBuckets(pub Vec<(String, Vec<f64>)>);

fn parse_custom_buckets(s: &str) -> Result<CustomBuckets, String> {
    let value: serde_json::Value = serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or("expected a JSON object {\"family\": [bounds...]}")?;
    let mut out = Vec::new();
    let mut check = BucketConfig::new(1);
    for (family, bounds) in object {
        let list = bounds
            .as_array()
            .ok_or_else(|| format!("{family:?}: expected a list of numbers"))?;
        let bounds = list
            .iter()
            .map(|b| {
                b.as_f64()
                    .ok_or_else(|| format!("{family:?}: {b} is not a number"))
            })
            .collect::<Result<Vec<f64>, String>>()?;
        check = check
            .with_override(family, bounds.clone())
            .map_err(|e| e.to_string())?;
        out.push((family.clone(), bounds));
    }
    Ok(CustomBuckets(out))
}

/// Reads `--structured-outputs-config` as vLLM's `StructuredOutputsConfig`: the keys Vigil
/// acts on, and a clear refusal of the others (none is ignored silently).
fn parse_structured_outputs_config(text: &str) -> Result<engine::ObjectDefault, String> {
    use engine::ObjectDefault;
    let config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
    let mut guidance = false;
    let mut disable_additional_properties = false;
    for (key, value) in &config {
        match (key.as_str(), value) {
            ("backend", serde_json::Value::String(backend)) => match backend.as_str() {
                "auto" | "xgrammar" => guidance = false,
                "guidance" => guidance = true,
                "outlines" | "lm-format-enforcer" => {
                    return Err(format!(
                        "backend {backend:?} is not available: Vigil compiles constraints with llguidance (\"auto\", \"xgrammar\" and \"guidance\" are accepted)"
                    ))
                }
                other => return Err(format!("unknown backend {other:?}")),
            },
            ("disable_additional_properties", serde_json::Value::Bool(b)) => {
                disable_additional_properties = *b
            }
            ("backend" | "disable_additional_properties", _) => {
                return Err(format!("{key} has the wrong type: {value}"))
            }
            (
                "disable_fallback"
                | "disable_any_whitespace"
                | "reasoning_parser"
                | "reasoning_parser_plugin"
                | "enable_in_reasoning",
                _,
            ) => return Err(format!("{key} is not supported by Vigil")),
            _ => return Err(format!("unknown key {key:?}")),
        }
    }
    Ok(if guidance && !disable_additional_properties {
        ObjectDefault::Open
    } else {
        ObjectDefault::Closed
    })
}

fn parse_show_hidden(s: &str) -> Result<MinorVersion, String> {
    parse_show_hidden_flag(s, exporter::Running::current()).map_err(|e| e.to_string())
}

fn parse_seconds(s: &str, min: f64, max: f64) -> Result<std::time::Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_finite() && (min..=max).contains(&v) {
        Ok(std::time::Duration::from_secs_f64(v))
    } else {
        Err(format!("{v} must be between {min} and {max} seconds"))
    }
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    parse_seconds(s, 0.01, 3600.0)
}

/// How old an engine scrape the node agent may serve: 0 serves none from memory.
fn parse_stale_after(s: &str) -> Result<std::time::Duration, String> {
    parse_seconds(s, 0.0, 86400.0)
}

/// A shutdown grace period: 0 aborts requests in flight at once.
fn parse_grace(s: &str) -> Result<std::time::Duration, String> {
    parse_seconds(s, 0.0, 3600.0)
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{v} must be in (0, 1]"))
    }
}

/// Byte sizes: a plain number, or with K/M/G (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let (digits, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a byte size (e.g. 1073741824, 512M, 2G)"))?;
    n.checked_mul(mult)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{s:?} must be a positive size"))
}

/// File descriptors kept for everything but client connections.
const FILE_RESERVE: usize = 64;

/// The longest model name accepted: a Hugging Face repository id is at most 96 characters a
/// part; the name is a label of every series, so it is bounded.
pub(crate) const MAX_MODEL_NAME_CHARS: usize = 256;

/// A model name: not empty, at most [`MAX_MODEL_NAME_CHARS`] characters, no control characters
/// (a newline in a label value would forge log lines and break the exposition).
fn parse_served_model_name(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("a model name cannot be empty".into());
    }
    let chars = s.chars().count();
    if chars > MAX_MODEL_NAME_CHARS {
        return Err(format!(
            "a model name of {chars} characters is longer than {MAX_MODEL_NAME_CHARS}"
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!(
            "a model name cannot contain control characters ({c:?})"
        ));
    }
    Ok(s.to_owned())
}

/// vLLM's human-readable lengths: `32k` = 32000, `32K` = 32768.
fn parse_max_model_len(s: &str) -> Result<u64, String> {
    let (digits, multiplier) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1_000),
        Some('K') => (&s[..s.len() - 1], 1 << 10),
        Some('m') => (&s[..s.len() - 1], 1_000_000),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1_000_000_000),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: f64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a token count (e.g. 4096, 32k, 32K)"))?;
    let tokens = n * multiplier as f64;
    if !(tokens >= 1.0 && tokens <= u32::MAX as f64 && tokens.fract() == 0.0) {
        return Err(format!(
            "{s:?} must be a whole number of tokens between 1 and {}",
            u32::MAX
        ));
    }
    Ok(tokens as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn structured_outputs_config_reads_as_vllm_backends_do() {
        use engine::ObjectDefault::{Closed, Open};
        for (json, objects) in [
            ("{}", Closed),
            (r#"{"backend": "auto"}"#, Closed),
            (r#"{"backend": "xgrammar"}"#, Closed),
            (r#"{"backend": "guidance"}"#, Open),
            (
                r#"{"backend": "guidance", "disable_additional_properties": true}"#,
                Closed,
            ),
        ] {
            assert_eq!(parse_structured_outputs_config(json), Ok(objects), "{json}");
        }
    }

    #[test]
    fn max_model_len_suffixes() {
        assert_eq!(parse_max_model_len("4096"), Ok(4096));
        assert_eq!(parse_max_model_len("32k"), Ok(32000));
        assert_eq!(parse_max_model_len("32K"), Ok(32768));
        assert_eq!(parse_max_model_len("1.5k"), Ok(1500));
        assert_eq!(parse_max_model_len("1M"), Ok(1 << 20));
        for bad in ["", "0", "-5", "abc", "1.5", "k", "99999999999"] {
            assert!(parse_max_model_len(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefix_caching_flags_toggle() {
        let parse = |args: &[&str]| {
            let mut v = vec!["vigil", "serve"];
            v.extend_from_slice(args);
            match Cli::try_parse_from(v).unwrap().command {
                Command::Serve(a) => a.into_config().engine.prefix_caching,
                _ => unreachable!(),
            }
        };
        assert!(parse(&[]));
        assert!(!parse(&["--no-enable-prefix-caching"]));
        assert!(parse(&[
            "--no-enable-prefix-caching",
            "--enable-prefix-caching"
        ]));
    }

    #[test]
    fn custom_buckets_are_validated() {
        let ok = parse_custom_buckets(r#"{"request_latency": [0.1, 1, 10]}"#).unwrap();
        assert_eq!(
            ok.0,
            vec![("request_latency".to_owned(), vec![0.1, 1.0, 10.0])]
        );
        assert!(parse_custom_buckets(r#"{"nope": [1]}"#)
            .unwrap_err()
            .contains("unknown"));
        assert!(parse_custom_buckets(r#"{"request_latency": [true]}"#).is_err());
        assert!(parse_custom_buckets(r#"{"request_latency": [2, 1]}"#).is_err());
        assert!(parse_custom_buckets("[1]").is_err());
    }
}
