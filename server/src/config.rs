//! What `vigil serve` was asked to do, as plain settled values.
//!
//! What `vigil serve` was asked to do, as plain settled values: the command line (or whatever
//! else starts a server) builds a [`ServerConfig`], and nothing in this crate reads flags.

use std::net::IpAddr;
use std::time::Duration;

use exporter::BucketConfig;
use exporter::MinorVersion;

use crate::api::dynamo::DynamoNames;

/// The environment variables a server honours besides its flags, read once by whoever builds
/// the config (the command line takes the process's): OpenTelemetry's
/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` and `OTEL_BSP_MAX_QUEUE_SIZE`, prometheus_client's
/// `PROMETHEUS_DISABLE_CREATED_SERIES`, and Dynamo's `DYN_*` (its system status server and its
/// histogram buckets). Nothing in this crate reads the process's environment itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment(std::collections::BTreeMap<String, String>);

impl Environment {
    /// The variables a server honours, as this process has them (values that are not UTF-8 are
    /// left out, as `std::env::var` would not read them either).
    pub fn from_process() -> Environment {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| Self::honoured(k))
            .collect()
    }

    fn honoured(name: &str) -> bool {
        name.starts_with("DYN_")
            || [
                crate::traces::PROTOCOL_VAR,
                crate::traces::QUEUE_SIZE_VAR,
                crate::metrics_setup::CREATED_SERIES_VAR,
            ]
            .contains(&name)
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

impl FromIterator<(String, String)> for Environment {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(vars: I) -> Self {
        Environment(vars.into_iter().collect())
    }
}

/// Everything a server needs to start. Field names follow the `vllm serve` flags they come from,
/// so that an error message can name the flag.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The engine: the model, the device, the KV cache and the scheduler's limits.
    pub engine: engine::EngineConfig,
    /// The address to listen on.
    pub host: IpAddr,
    /// 0 picks a free port (logged).
    pub port: u16,
    /// The names the model is served under; the first is the `model_name` label. Empty: the
    /// model path.
    pub served_model_names: Vec<String>,
    /// Record engine statistics (the `vllm:` series); vLLM's `--disable-log-stats` turns it off.
    pub engine_stats: bool,
    /// One access-log line per request.
    pub access_log: bool,
    /// `--show-hidden-metrics-for-version`: bring back series deprecated in that version.
    pub show_hidden_metrics_for_version: Option<MinorVersion>,
    /// Attach trace ids to histogram samples in OpenMetrics.
    pub enable_exemplars: bool,
    /// Histogram bucket overrides by family, validated when given.
    pub custom_histogram_buckets: Vec<(String, Vec<f64>)>,
    /// Required as `Authorization: Bearer KEY` on /v1/* when set.
    pub api_key: Option<String>,
    /// Where to send OTLP traces, if anywhere.
    pub otlp_traces_endpoint: Option<String>,
    /// Connections held open at once.
    pub max_connections: usize,
    /// How long a connection may idle, and how long a request may take to arrive.
    pub http_idle_timeout: Duration,
    /// The longest a client may take to send a request's headers and body.
    pub http_read_timeout: Duration,
    /// How long requests in flight get to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// The hardware probes; their target is this process.
    pub probe_interval: Duration,
    /// Run the NVML poller.
    pub nvml_probe: bool,
    /// Run the eBPF scheduler probe.
    pub ebpf_probe: bool,
    /// Dynamo's label values.
    pub dynamo: DynamoNames,
    /// `tool_choice: "auto"` with this parser (`None`: auto tool choice is off, vLLM's 400).
    pub auto_tool_parser: Option<crate::api::ToolParser>,
    /// What a JSON schema's object that does not say `additionalProperties` allows
    /// (`--structured-outputs-config`).
    pub structured_objects: engine::ObjectDefault,
    /// The environment variables it honours.
    pub environment: Environment,
}

impl ServerConfig {
    /// The name the model is served under (the `model_name` label).
    pub fn model_name(&self) -> String {
        match self.served_model_names.first() {
            Some(name) => name.clone(),
            None => self.engine.model.display().to_string(),
        }
    }

    /// The bucket layout: vLLM's, with the custom overrides and Dynamo's environment applied.
    pub fn buckets(&self, mut config: BucketConfig) -> anyhow::Result<BucketConfig> {
        for (family, bounds) in &self.custom_histogram_buckets {
            config = config
                .with_override(family, bounds.clone())
                .map_err(|e| anyhow::anyhow!("--custom-histogram-buckets: {e}"))?;
        }
        Ok(config.with_dynamo_env(&|name| self.environment.get(name)))
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
