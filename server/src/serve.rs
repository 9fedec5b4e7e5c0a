//! `vigil serve`: launches the engine and serves the API until a signal drains it.
//!
//! `vigil serve`: launches the engine (`engine::launch`: the model, the device, the KV cache and
//! the engine thread) and serves the
//! OpenAI API, `/metrics` (the exporter), `/health` and `/version` until SIGTERM.

use std::sync::Arc;

use anyhow::Context;

use engine::EngineMetrics;
use engine::Grammars;
use exporter::catalog::vllm;
use exporter::Exporter;

use crate::api::{self, AppState};
use crate::config::ServerConfig;
use crate::lifecycle::drain::{self, Drain};
use crate::lifecycle::systemd;
use crate::listener::{ClientAddr, GuardedListener, Timeouts};
use crate::metrics_setup::{cache_config_labels, exporter_config, set_dynamo_model_config};
use crate::routes::app;
use crate::signals::{bind, Signals};
use crate::system_server::{self, SystemState};
use crate::traces;

/// The engine indexes this process serves (`engine` label values).
const ENGINES: &[&str] = &["0"];

/// Runs `vigil serve` until SIGTERM or Ctrl-C.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let process_started = std::time::Instant::now();
    // Listening from the start: a stop while the model loads is a clean exit, not a kill.
    let mut signals = Signals::install();
    let system = SystemState::new();
    start_status_server(&config, &system).await?;
    // Tracing set-up fails fast (a bad URL or protocol), before minutes of model loading.
    let traces = start_traces(&config)?;
    systemd::status(&format!("loading {}", config.engine.model.display()));
    // The device is settled first, so that `--device cuda` fails fast, then the model loads.
    let loaded = {
        let engine_config = config.engine.clone();
        let load = tokio::task::spawn_blocking(move || engine::load(&engine_config));
        tokio::select! {
            loaded = load => loaded??,
            () = signals.next() => {
                tracing::info!("stopped while loading the model; exiting");
                return Ok(());
            }
        }
    };
    let max_model_len = loaded.max_model_len;
    let exporter = Exporter::new(exporter_config(&config, max_model_len)?);
    exporter
        .install()
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
    let model_name = config.model_name();
    exporter.precreate(&model_name, ENGINES);
    let _ = system.exporter.set(exporter.clone());
    api::dynamo::export_uptime(&exporter, process_started);
    // Held for the server's lifetime: dropping them stops the probes.
    let _probes = probes::start(&exporter, &config.probes());

    if !config.engine_stats {
        tracing::info!("--disable-log-stats: no engine statistics are recorded");
    }
    let metrics = config
        .engine_stats
        .then(|| EngineMetrics::new(&model_name, ENGINES[0]));
    let launched = tokio::task::block_in_place(|| loaded.launch(&config.engine, metrics))?;
    let (num_blocks, block_size) = (launched.kv.num_blocks, launched.kv.block_size);
    for engine in ENGINES {
        exporter
            .set_info(
                &vllm::CACHE_CONFIG_INFO,
                &cache_config_labels(&config, engine, num_blocks, max_model_len),
            )
            .map_err(anyhow::Error::msg)?;
    }
    let budget = launched.batch_token_budget;
    let engine = launched.handle;
    systemd::start_watchdog(engine.clone());
    let served_model_names = if config.served_model_names.is_empty() {
        vec![model_name.clone()]
    } else {
        config.served_model_names.clone()
    };
    let tokenizer = Arc::new(launched.tokenizer);
    let grammars = tokio::task::block_in_place(|| {
        structured_outputs(
            &tokenizer,
            &launched.model_config,
            config.structured_objects,
        )
    });
    let dynamo_series = api::dynamo::DynamoSeries::new(&config.dynamo, &served_model_names);
    let state = Arc::new(AppState {
        engine: engine.clone(),
        tokenizer,
        served_model_names,
        max_model_len: max_model_len as usize,
        api_key: config.api_key.clone(),
        created: api::unix_now(),
        dynamo: config.dynamo.clone(),
        dynamo_series,
        drain: Drain::new(),
        traces: traces.clone(),
        cpu: api::cpu_pool::CpuPool::for_requests(),
        grammar_cpu: api::cpu_pool::CpuPool::for_grammars(),
        grammars,
        auto_tool_parser: config.auto_tool_parser,
    });
    let _ = system.engine.set(state.engine.clone());
    let _ = system.endpoint.set(state.dynamo.endpoint.clone());
    set_dynamo_model_config(
        &exporter,
        &state,
        num_blocks,
        block_size,
        &config,
        budget,
        max_model_len,
    )?;

    let listener = bind(config.host, config.port).await?;
    let local = listener.local_addr()?;
    // Ready before the line that says so: whoever reads it (a test, a supervisor) finds the
    // status server agreeing.
    system.readiness.set_ready();
    tracing::info!(%model_name, "listening on http://{local}");
    systemd::ready(&format!("serving {model_name} on http://{local}"));
    let mut router =
        app(exporter, engine.clone(), Arc::clone(&state.drain)).merge(api::router(state.clone()));
    if config.access_log {
        router = router.layer(axum::middleware::from_fn(api::access_log::log_requests));
    }
    router = router.layer(axum::middleware::from_fn(
        crate::listener::mark_request_read,
    ));
    let timeouts = Timeouts {
        idle: config.http_idle_timeout,
        read: config.http_read_timeout,
    };
    tracing::info!(
        max_connections = config.max_connections,
        ?timeouts,
        "connection limits"
    );
    let listener = GuardedListener::new(listener, config.max_connections, timeouts);
    let stop = Stop {
        signals,
        readiness: system.readiness.clone(),
        drain: Arc::clone(&state.drain),
        engine,
        grace: config.shutdown_timeout,
    };
    serve_until_stopped(listener, router, stop).await?;
    if let Some(traces) = &traces {
        traces.shutdown().await;
    }
    tracing::info!("shut down");
    Ok(())
}

/// The structured-output compiler for the model's tokenizer; without one (a tokenizer
/// llguidance cannot read), requests that ask for structured output get a 400 saying why.
fn structured_outputs(
    tokenizer: &Arc<model::Tokenizer>,
    config: &model::LlamaConfig,
    objects: engine::ObjectDefault,
) -> Result<Arc<Grammars>, String> {
    let started = std::time::Instant::now();
    match Grammars::new(Arc::clone(tokenizer), config.vocab_size, objects) {
        Ok(grammars) => {
            tracing::info!("structured outputs ready in {:.2?}", started.elapsed());
            Ok(Arc::new(grammars))
        }
        Err(e) => {
            tracing::warn!("structured outputs are off: {e}");
            Err(e.to_string())
        }
    }
}

/// Dynamo's system status server, when its environment asks for one; it comes up before the
/// model loads, so that it says `notready` meanwhile.
async fn start_status_server(config: &ServerConfig, system: &SystemState) -> anyhow::Result<()> {
    let env = |name: &str| config.environment.get(name);
    if let Some(status) = system_server::config_from_env(&env, config.host)? {
        if let Some(clash) = system_server::clash_with_api(&status, config.host, config.port) {
            anyhow::bail!(clash);
        }
        system_server::start(&status, system.clone()).await?;
    }
    Ok(())
}

/// The OTLP exporter, with `--otlp-traces-endpoint`.
fn start_traces(config: &ServerConfig) -> anyhow::Result<Option<Arc<traces::Traces>>> {
    let Some(endpoint) = &config.otlp_traces_endpoint else {
        return Ok(None);
    };
    let env = &config.environment;
    Ok(Some(Arc::new(traces::Traces::start(
        endpoint,
        env.get(traces::PROTOCOL_VAR).as_deref(),
        env.get(traces::QUEUE_SIZE_VAR).as_deref(),
    )?)))
}

/// What a stop needs: the signals, what to tell the status server, the requests in flight and
/// the engine to drain, and how long they get.
struct Stop {
    signals: Signals,
    readiness: system_server::Readiness,
    drain: Arc<Drain>,
    engine: engine::EngineHandle,
    grace: std::time::Duration,
}

/// Serves until a signal, then drains: new requests get 503 while those in flight get `grace`
/// to finish (a second signal cuts it short), and once drained, connections get
/// [`CLOSE_WAIT`] to close (an idle keep-alive client must not hold the stop up; after a second
/// signal, none).
async fn serve_until_stopped(
    listener: GuardedListener,
    router: axum::Router,
    stop: Stop,
) -> anyhow::Result<()> {
    let Stop {
        mut signals,
        readiness,
        drain,
        engine,
        grace,
    } = stop;
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<bool>();
    let service = router.into_make_service_with_connect_info::<ClientAddr>();
    let server = axum::serve(listener, service).with_graceful_shutdown(async move {
        signals.next().await;
        readiness.set_draining();
        systemd::stopping("draining");
        let mut second = false;
        let cut_short = async {
            signals.next().await;
            second = true;
        };
        drain::drain(&drain, &engine, grace, cut_short).await;
        let _ = drained_tx.send(second);
    });
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
    Ok(())
}

/// How long connections may stay open after the drain.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
