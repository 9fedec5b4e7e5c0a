//! `vigil serve`: loads the model, builds the backend and the engine thread, and serves the
//! OpenAI API, `/metrics` (the exporter), `/health` and `/version`.

use std::net::SocketAddr;

use anyhow::Context;
use axum::routing::get;
use axum::{Json, Router};
use exporter::catalog::vllm;
use exporter::render::number::format_float;
use exporter::{Exporter, ExporterConfig};

use std::sync::Arc;

use crate::api::{self, AppState};
use crate::cli::{Device, ServeArgs, DEFAULT_MODEL};
use crate::lifecycle::drain::{self, Drain};
use crate::lifecycle::systemd;
use crate::system_server::{self, SystemState};
use crate::traces;
use backend::cpu::{host_memory, CpuBackend, CpuOptions, WeightFormat};
use backend::cuda::{CudaBackend, CudaOptions};
use backend::Backend;
use engine::engine_loop;
use engine::kv_cache::manager::KvCacheManager;
use engine::metrics::EngineMetrics;
use engine::scheduler::{Scheduler, SchedulerConfig};
use model::Model;

/// The engine indexes this process serves (`engine` label values).
const ENGINES: &[&str] = &["0"];

/// Builds the exporter a `vigil serve` with `args` uses, for a model context of `max_model_len`.
pub fn exporter_config(args: &ServeArgs, max_model_len: u64) -> ExporterConfig {
    let mut config = ExporterConfig::new(max_model_len);
    if let Some(custom) = &args.custom_histogram_buckets {
        config.buckets = custom.apply(config.buckets);
    }
    config.buckets = config
        .buckets
        .with_dynamo_env(&|name| std::env::var(name).ok());
    config.show_hidden_for = args.show_hidden_metrics_for_version;
    config.enable_exemplars = args.enable_exemplars;
    config.engine_stats = !args.disable_log_stats;
    config.created_series = !created_series_disabled();
    config
}

/// prometheus_client's `PROMETHEUS_DISABLE_CREATED_SERIES` (true, 1 or t, any case).
fn created_series_disabled() -> bool {
    std::env::var("PROMETHEUS_DISABLE_CREATED_SERIES")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "t"))
}

/// `vllm:cache_config_info`'s labels: the cache settings of this run (Python's spelling of
/// values, as vLLM prints them; the CPU backend has no separate CPU swap space, hence `None`).
fn cache_config_labels(
    args: &ServeArgs,
    engine: &str,
    num_blocks: usize,
    max_model_len: u64,
) -> Vec<(&'static str, String)> {
    let py_bool = |b: bool| if b { "True" } else { "False" }.to_owned();
    let py_opt = |v: Option<u64>| v.map_or("None".to_owned(), |n| n.to_string());
    let none = || "None".to_owned();
    let block = args.block_size.to_string();
    let kv_tokens = num_blocks.saturating_sub(1) * args.block_size as usize;
    vec![
        ("block_size", block.clone()),
        ("user_specified_block_size", py_bool(args.block_size != 16)),
        ("kv_cache_layout", none()),
        ("prefix_match_unit", block.clone()),
        (
            "gpu_memory_utilization",
            format_float(args.gpu_memory_utilization),
        ),
        ("cache_dtype", args.kv_cache_dtype.clone()),
        ("is_attention_free", py_bool(false)),
        (
            "num_gpu_blocks_override",
            py_opt(args.num_gpu_blocks_override),
        ),
        // Llama has no sliding window.
        ("sliding_window", none()),
        ("enable_prefix_caching", py_bool(args.prefix_caching())),
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
                args.num_gpu_blocks_override
                    .is_none()
                    .then_some(args.kv_cache_memory_bytes),
            ),
        ),
        // No KV offloading.
        ("kv_offloading_size", none()),
        ("kv_offloading_backend", none()),
        ("_block_size_resolved", py_bool(true)),
        ("engine", engine.to_owned()),
    ]
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

/// Dynamo's model configuration gauges for every served name (lower-cased, as Dynamo labels
/// them).
fn set_dynamo_model_config(
    exporter: &Exporter,
    state: &AppState,
    num_blocks: usize,
    block_size: usize,
    args: &ServeArgs,
    max_model_len: u64,
) -> anyhow::Result<()> {
    use exporter::catalog::dynamo::*;
    for name in &state.served_model_names {
        let labels = [("model", name.to_lowercase())];
        for (def, value) in [
            (&MODEL_TOTAL_KV_BLOCKS, num_blocks as f64),
            (&MODEL_MAX_NUM_SEQS, f64::from(args.max_num_seqs)),
            (
                &MODEL_MAX_NUM_BATCHED_TOKENS,
                f64::from(args.batch_token_budget()),
            ),
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

/// The application's routes. `/health` answers 503 once the engine thread has died or while
/// the server drains for a stop, so that load balancers move on.
pub fn app(exporter: Exporter, engine: engine_loop::EngineHandle, drain: Arc<Drain>) -> Router {
    let health = move || {
        let healthy = engine.is_alive() && !drain.is_draining();
        async move {
            if healthy {
                axum::http::StatusCode::OK
            } else {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            }
        }
    };
    Router::new()
        .route("/health", get(health))
        .route(
            "/version",
            get(|| async { Json(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") })) }),
        )
        .merge(exporter::route::router(exporter))
}

/// Loads the model `args` names, saying where it looked when it is missing.
pub fn load_model(args: &ServeArgs) -> anyhow::Result<Model> {
    let path = &args.model;
    if !path.exists() {
        let looked = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        let hint = if args.model == std::path::Path::new(DEFAULT_MODEL) {
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
pub fn max_model_len(args: &ServeArgs, model: &Model) -> anyhow::Result<u64> {
    let derived = model.config.max_position_embeddings as u64;
    match args.max_model_len {
        None => Ok(derived),
        Some(n) if n <= derived => Ok(n),
        Some(n) => anyhow::bail!(
            "--max-model-len {n} is greater than the model's maximum context length {derived} ({})",
            args.model.display()
        ),
    }
}

/// Settles `--device`: whether to try the CUDA backend. `auto` tries it when the host has a GPU
/// and the libraries it needs, and logs why not otherwise; `--device cuda` turns a "no" into a
/// start-up error naming the reason.
fn wants_cuda(requested: Device) -> anyhow::Result<bool> {
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
fn build_backend(
    args: &ServeArgs,
    model: &Model,
    max_model_len: u64,
    cuda: bool,
) -> anyhow::Result<Box<dyn Backend>> {
    let started = std::time::Instant::now();
    if cuda {
        let options = CudaOptions {
            ordinal: 0,
            block_size: args.block_size as usize,
            gpu_memory_utilization: args.gpu_memory_utilization,
            num_blocks_override: args.num_gpu_blocks_override.map(|n| n as usize),
            max_num_batched_tokens: args.batch_token_budget() as usize,
            max_num_seqs: args.max_num_seqs as usize,
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
            Err(e) if args.device == Device::Auto => {
                tracing::error!("the CUDA backend could not start ({e}); serving on the CPU");
            }
            Err(e) => anyhow::bail!("--device cuda: {e}"),
        }
    }
    let block_size = args.block_size as usize;
    let per_block = block_size * CpuBackend::kv_bytes_per_token(&model.config);
    let num_blocks = match args.num_gpu_blocks_override {
        Some(n) => n as usize,
        None => args.kv_cache_memory_bytes as usize / per_block,
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
        weight_format: WeightFormat::default(),
    };
    let mut backend = CpuBackend::new(model, &options)
        .with_context(|| format!("preparing the weights of {}", args.model.display()))?;
    warm_up(&mut backend)?;
    tracing::info!(
        num_blocks,
        block_size,
        kv_cache_tokens = num_blocks * block_size,
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

/// Runs `vigil serve` until SIGTERM or Ctrl-C.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let process_started = std::time::Instant::now();
    // Listening from the start: a stop while the model loads is a clean exit, not a kill.
    let mut signals = Signals::install();
    // Dynamo's system status server comes up first, so that it says `notready` while loading.
    let system = SystemState::new();
    if let Some(config) =
        system_server::config_from_env(&|name| std::env::var(name).ok(), args.host)?
    {
        if let Some(clash) = system_server::clash_with_api(&config, args.host, args.port) {
            anyhow::bail!(clash);
        }
        system_server::start(&config, system.clone()).await?;
    }
    // Tracing set-up fails fast (a bad URL or protocol), before minutes of model loading.
    let traces = match &args.otlp_traces_endpoint {
        Some(endpoint) => {
            let protocol = std::env::var(traces::PROTOCOL_VAR).ok();
            Some(Arc::new(traces::Traces::start(
                endpoint,
                protocol.as_deref(),
            )?))
        }
        None => None,
    };
    // Settled before minutes of model loading, so that `--device cuda` fails fast.
    let cuda = wants_cuda(args.device)?;
    systemd::status(&format!("loading {}", args.model.display()));
    let model = {
        let args = args.clone();
        let load = tokio::task::spawn_blocking(move || load_model(&args));
        tokio::select! {
            model = load => model??,
            () = signals.next() => {
                tracing::info!("stopped while loading the model; exiting");
                return Ok(());
            }
        }
    };
    let max_model_len = max_model_len(&args, &model)?;
    let mut args = args;
    args.settle_batch_token_budget(max_model_len, cuda)?;
    let exporter = Exporter::new(exporter_config(&args, max_model_len));
    exporter
        .install()
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
    let model_name = args.model_name();
    exporter.precreate(&model_name, ENGINES);
    let _ = system.exporter.set(exporter.clone());
    api::dynamo::export_uptime(&exporter, process_started);
    // Held for the server's lifetime: dropping them stops the probes.
    let _probes = probes::start(
        &exporter,
        &args.probes.config(probes::Target::Pid(std::process::id())),
    );

    let backend =
        tokio::task::block_in_place(|| build_backend(&args, &model, max_model_len, cuda))?;
    if backend.name() == "cpu" {
        // --device auto fell back to the CPU: its budget.
        args.settle_batch_token_budget(max_model_len, false)?;
    }
    let backend::KvGeometry {
        num_blocks,
        block_size,
    } = backend.kv_geometry();
    for engine in ENGINES {
        exporter
            .set_info(
                &vllm::CACHE_CONFIG_INFO,
                &cache_config_labels(&args, engine, num_blocks, max_model_len),
            )
            .map_err(anyhow::Error::msg)?;
    }
    if args.disable_log_stats {
        tracing::info!("--disable-log-stats: no engine statistics are recorded");
    }
    let scheduler = Scheduler::new(
        SchedulerConfig {
            max_num_batched_tokens: args.batch_token_budget() as usize,
            max_num_seqs: args.max_num_seqs as usize,
            max_model_len: max_model_len as usize,
            chunked_prefill: args.chunked_prefill(),
        },
        KvCacheManager::new(num_blocks, block_size, args.prefix_caching()),
        model.tokenizer.eos_token_ids.clone(),
    );
    let metrics = (!args.disable_log_stats).then(|| EngineMetrics::new(&model_name, ENGINES[0]));
    let engine = engine_loop::spawn(backend, scheduler, metrics);
    systemd::start_watchdog(engine.clone());
    let served_model_names = if args.served_model_name.is_empty() {
        vec![model_name.clone()]
    } else {
        args.served_model_name.clone()
    };
    let state = Arc::new(AppState {
        engine: engine.clone(),
        tokenizer: Arc::new(model.tokenizer),
        served_model_names,
        max_model_len: max_model_len as usize,
        api_key: args.api_key.clone(),
        created: api::unix_now(),
        dynamo: args.dynamo.names(),
        drain: Drain::new(),
        traces: traces.clone(),
        cpu: api::cpu_pool::CpuPool::for_this_host(),
    });
    let _ = system.engine.set(state.engine.clone());
    let _ = system.endpoint.set(state.dynamo.endpoint.clone());
    set_dynamo_model_config(
        &exporter,
        &state,
        num_blocks,
        block_size,
        &args,
        max_model_len,
    )?;

    let listener = bind(args.host, args.port).await?;
    let local = listener.local_addr()?;
    // Ready before the line that says so: whoever reads it (a test, a supervisor) finds the
    // status server agreeing.
    system.readiness.set_ready();
    tracing::info!(%model_name, "listening on http://{local}");
    systemd::ready(&format!("serving {model_name} on http://{local}"));
    let readiness = system.readiness.clone();
    let mut router =
        app(exporter, engine.clone(), Arc::clone(&state.drain)).merge(api::router(state.clone()));
    if args.access_log() {
        router = router.layer(axum::middleware::from_fn(api::access_log::log_requests));
    }
    router = router.layer(axum::middleware::from_fn(
        crate::listener::mark_request_read,
    ));
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<bool>();
    let grace = args.shutdown_timeout;
    let service = router.into_make_service_with_connect_info::<crate::listener::ClientAddr>();
    let max_connections = args.connection_limit();
    let timeouts = crate::listener::Timeouts {
        idle: args.http_idle_timeout,
        read: args.http_read_timeout,
    };
    tracing::info!(max_connections, ?timeouts, "connection limits");
    let listener = crate::listener::GuardedListener::new(listener, max_connections, timeouts);
    let server = axum::serve(listener, service).with_graceful_shutdown(async move {
        signals.next().await;
        readiness.set_draining();
        systemd::stopping("draining");
        let mut second = false;
        let cut_short = async {
            signals.next().await;
            second = true;
        };
        drain::drain(&state.drain, &engine, grace, cut_short).await;
        let _ = drained_tx.send(second);
    });
    // Once drained, connections get a few seconds to close (an idle keep-alive client must not
    // hold the stop up); after a second signal, none.
    let closing = async {
        match drained_rx.await {
            Ok(false) => {
                tokio::time::sleep(CLOSE_WAIT).await;
                tracing::warn!("connections still open {CLOSE_WAIT:?} after the drain; exiting");
            }
            Ok(true) => {}
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        res = server => res.context("HTTP server failed")?,
        () = closing => {}
    }
    if let Some(traces) = &traces {
        traces.shutdown().await;
    }
    tracing::info!("shut down");
    Ok(())
}

/// The base URL in the line `vigil serve` logs once it listens (`listening on http://ADDR`,
/// in text or JSON logs), for tools that start a server and wait for it.
pub fn listening_url(log_line: &str) -> Option<String> {
    let rest = log_line.split("listening on http://").nth(1)?;
    // Plain text ends the address at a space, a JSON log line at a quote.
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    Some(format!("http://{addr}"))
}

/// How long connections may stay open after the drain.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Listens on `--host`/`--port`; the error names both flags.
pub async fn bind(host: std::net::IpAddr, port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = SocketAddr::new(host, port);
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--host {host} --port {port}: cannot listen on {addr}"))
}

/// SIGTERM and SIGINT (Ctrl-C), as a stream: the first starts the drain, a second cuts it
/// short, as vLLM's server does.
pub struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    pub fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Signals {
                    unix: Some((term, int)),
                },
                _ => {
                    tracing::warn!("cannot install the SIGTERM/SIGINT handlers; Ctrl-C only");
                    Signals { unix: None }
                }
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves at the next SIGTERM or SIGINT.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.unix {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod listening_url_tests {
    use super::listening_url;

    #[test]
    fn the_url_is_read_from_text_and_json_log_lines() {
        assert_eq!(
            listening_url("2026-11-23T00:00:00Z  INFO vigil::server: listening on http://127.0.0.1:4000 model_name=m").as_deref(),
            Some("http://127.0.0.1:4000")
        );
        assert_eq!(
            listening_url(
                r#"{"fields":{"message":"listening on http://[::1]:80","model_name":"m"}}"#
            )
            .as_deref(),
            Some("http://[::1]:80")
        );
        assert_eq!(listening_url("loading model"), None);
    }
}
